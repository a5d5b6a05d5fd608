"""Atomic file writes: nothing half-written ever looks finished (make would trust it).

An atomic write goes to `.<name>.<8 random characters>.tmp` beside its target and is renamed onto it. A
kill mid-write leaves that file behind; `remove_partial_writes` deletes such leftovers. The writer holds an
exclusive `flock` on its temporary file until the rename, so a leftover is told from a write in progress in
another process (a dead process holds no lock).
"""

from __future__ import annotations

import fcntl
import os
import re
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

_UMASK = os.umask(0)  # read once at import (os.umask can only be read by setting it)
os.umask(_UMASK)


def _temporary_pattern(name: str | None) -> re.Pattern:
    """What `tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp")` makes (any name when None)."""
    stem = re.escape(name) if name is not None else ".+"
    return re.compile(rf"\.{stem}\.[a-z0-9_]{{8}}\.tmp")


def _unlink_if_abandoned(path: Path) -> bool:
    """Delete `path` unless a live writer holds its lock; True when deleted."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # gone meanwhile, or not ours to read
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # locked: a write in progress
        return False
    else:
        path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def remove_partial_writes(folder: str | Path, name: str | None = None) -> list[Path]:
    """Delete the temporary files that interrupted atomic writes left in `folder` (only those of the target
    `name` when given); writes still in progress are left alone. Returns the files deleted."""
    folder, pattern = Path(folder), _temporary_pattern(name)
    try:
        candidates = sorted(entry.path for entry in os.scandir(folder) if pattern.fullmatch(entry.name))
    except FileNotFoundError:
        return []
    return [Path(path) for path in candidates if _unlink_if_abandoned(Path(path))]


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    An interrupted or failed stage thus never leaves a file that looks finished (make would trust it); what a
    kill leaves of an earlier write of the same file is deleted first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_partial_writes(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by the close below, or by the kernel if this process dies
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes it owner-only; the renamed file gets open()'s usual mode
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        os.close(fd)


def write_atomic(path: str | Path, writer: Callable[[Path], object]) -> Path:
    """Call `writer(tmp_path)` and rename the result onto `path`."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
