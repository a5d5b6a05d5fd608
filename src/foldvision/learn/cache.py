"""The decoded-image cache: each image is decoded and resized once, kept as uint8 on disk, read back per item.

Five folds × N epochs would otherwise decode and resize every training image 5N times (and every test image
once per fold model). The first stage that needs an image at a given preprocessing (size, channels,
interpolation) decodes it with `data.load_image`, resizes it with albumentations' own `Resize` (the step the
pipeline used to start with, so cached pixels equal a fresh decode + resize) and writes it to the cache;
every later epoch, fold, experiment and the predict stage with the same preprocessing read it from there.
The preprocessing is a `transforms.Preprocessing` (the model's input spec, at `data.cache_size` when larger);
the records depend on its `key` alone, since mean and std are applied later, on the device.

    <data.cache_dir>/<corpus>-<hash of its absolute path>/<size>px-<channels>ch-<interpolation>-v<FORMAT>-<libs>/
        pixels.u8    one fixed-size record per image: size × size × channels uint8 in C order
                     (np.memmap(path, np.uint8, "r").reshape(-1, size, size, channels) opens it)
        index.json   relative image path -> [record, size, mtime_ns, ctime_ns, inode]: which file each record
                     holds; and the
                     versions of Pillow, OpenCV and albumentations that made the pixels
        .lock        held while the cache is brought up to date, so two runs never build the same records

`<libs>` is a hash of those versions: another Pillow (decoder), OpenCV or albumentations (resizer) may give
other pixels, so a cache made by other versions is not reused; a new one is built beside it. A damaged index
(not JSON, not the expected layout, a pixels file shorter than it says) is named, set aside as
`index.json.corrupt` and rebuilt.

An image whose file size, mtime, ctime or inode changed is decoded again into its own record (ctime and inode
catch a same-size replacement whose mtime was kept, `cp -p` or `rsync -a`, as the run's content stamps do); new images get new records;
nothing else is touched. Records are read with `os.preadv` straight into a fresh array, not through a memmap:
pages of a mapped file count towards the reading process's resident memory until the kernel drops them, so
a memmap makes RSS grow with the corpus, while a read leaves the bytes in the kernel's page cache and keeps
each process's memory flat. Reading one record costs microseconds; a decode costs milliseconds.

Train and test images of a corpus share one cache per preprocessing (their paths are relative to the corpus
folder). `data.cache: false` decodes and resizes on the fly instead, with the same function.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import PIL
import torch

from foldvision.console import console
from foldvision.learn.images import load_image
from foldvision.errors import UserError
from foldvision.files import write_text_atomic
from foldvision.learn.transforms import INTERPOLATION, Preprocessing

FORMAT = 2  # bump when load_image, the resize or the index changes: old caches are then not reused (2: ctime, inode)
CHECKPOINT_EVERY = 2000  # images between index writes while building, so an interrupted build keeps its work


def library_versions() -> dict[str, str]:
    """The decoder's and the resizer's versions: what besides the file and the settings decides the pixels."""
    return {"pillow": PIL.__version__, "opencv": cv2.__version__, "albumentations": A.__version__}


class Decoder:
    """Decode + resize: the one function behind both the cache and `data.cache: false`."""

    def __init__(self, prep: Preprocessing):
        self.prep = prep
        interpolation = INTERPOLATION.get(prep.interpolation, INTERPOLATION["bilinear"])
        self.resize = A.Resize(prep.size, prep.size, interpolation=interpolation, p=1.0)

    def __call__(self, path: Path) -> np.ndarray:
        image = self.resize(image=load_image(path, self.prep.channels))["image"]
        return np.require(image.reshape(self.prep.shape), requirements=("C", "W"))  # PIL's arrays are read-only


class DecodedImages:
    """Images decoded and resized on every read (the cache turned off): `images[relative_path]`."""

    def __init__(self, root: Path, prep: Preprocessing):
        self.root, self.prep, self.decode = root, prep, Decoder(prep)

    def __getitem__(self, rel: str) -> np.ndarray:
        return self.decode(self.root / rel)


class CachedImages:
    """Images read from the cache's records: `images[relative_path]` is a fresh, writable uint8 array.

    The file is opened lazily in each process (loader workers included) and never pickled open.
    """

    def __init__(self, pixels: Path, rows: dict[str, int], prep: Preprocessing):
        self.pixels, self.rows, self.prep = pixels, rows, prep
        self.record = int(np.prod(prep.shape))
        self._fd: int | None = None
        self._pid: int | None = None

    def __getitem__(self, rel: str) -> np.ndarray:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.pixels, os.O_RDONLY), os.getpid()
        image = np.empty(self.prep.shape, dtype=np.uint8)
        if os.preadv(self._fd, [image], self.rows[rel] * self.record) != self.record:  # straight into the array
            raise UserError(f"{self.pixels}: record of '{rel}' is cut short; delete {self.pixels.parent} to rebuild")
        return image

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


def _writable(folder: Path) -> bool:
    # the permission bits too: root passes os.access even where the owner marked the folder read-only
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & stat.S_IWUSR)


def cache_folder(cache_dir: str | Path, root: Path, prep: Preprocessing) -> Path:
    """`<cache_dir>/<corpus>-<hash>/<preprocessing>`; refused inside a read-only corpus folder."""
    base = Path(cache_dir)
    corpus = root.resolve()
    if base.resolve().is_relative_to(corpus) and not _writable(corpus):
        raise UserError(f"data.cache_dir={cache_dir} is inside the read-only corpus folder {root}; "
                        "point it elsewhere (the default is inputs/.cache)")
    digest = hashlib.sha1(str(corpus).encode()).hexdigest()[:8]
    libs = hashlib.sha1(json.dumps(library_versions(), sort_keys=True).encode()).hexdigest()[:8]
    return base / f"{corpus.name}-{digest}" / f"{prep.key}-v{FORMAT}-{libs}"


class _Build(torch.utils.data.Dataset):
    """Decode + resize + write one record per item; a DataLoader runs it on every core."""

    def __init__(self, root: Path, pixels: Path, todo: list[tuple[str, int]], prep: Preprocessing):
        self.root, self.pixels, self.todo, self.decode = root, pixels, todo, Decoder(prep)
        self.record = int(np.prod(prep.shape))

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, i: int) -> int:
        rel, row = self.todo[i]
        image = self.decode(self.root / rel)
        fd = os.open(self.pixels, os.O_WRONLY)
        try:
            os.pwrite(fd, image.tobytes(), row * self.record)
        finally:
            os.close(fd)
        return i


class ImageCache:
    """One corpus at one preprocessing: brings records up to date and hands out `CachedImages`."""

    def __init__(self, folder: Path, root: Path, prep: Preprocessing):
        self.folder, self.root, self.prep = folder, root, prep
        self.pixels, self.index_path = folder / "pixels.u8", folder / "index.json"
        self.record = int(np.prod(prep.shape))

    @contextmanager
    def _locked(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another run building the same cache: wait for it, then reuse
            yield

    def _read_index(self) -> dict[str, list[int]]:
        """The records the index vouches for; {} (rebuild everything) when it is missing or damaged."""
        if not self.index_path.is_file():
            return {}
        try:
            files = self._parse_index(self.index_path.read_text(encoding="utf-8"))
        except ValueError as e:  # a kill or a full disk mid-write, or another tool's file
            aside = self.index_path.with_name(self.index_path.name + ".corrupt")
            self.index_path.replace(aside)
            console.print(f"cache: {self.index_path} is damaged ({e}); set aside as {aside.name}, rebuilding")
            return {}
        rows = max((entry[0] for entry in files.values()), default=-1) + 1
        size = self.pixels.stat().st_size if self.pixels.is_file() else 0
        if size < rows * self.record:
            console.print(f"cache: {self.pixels} is shorter than its index says ({size:,} of {rows * self.record:,} "
                          "bytes); rebuilding")
            return {}
        return files

    def _parse_index(self, text: str) -> dict[str, list[int]]:
        """index.json's `files`, checked record by record.

        Raises:
            ValueError: what is wrong with it, in a few words.
        """
        try:
            saved = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"not JSON: {e.msg} at character {e.pos}") from None
        if not isinstance(saved, dict) or not isinstance(saved.get("files"), dict):
            raise ValueError("no table of files")
        if saved.get("shape") != list(self.prep.shape):
            raise ValueError(f"records of shape {saved.get('shape')}, not {list(self.prep.shape)}")
        for rel, entry in saved["files"].items():
            if not (isinstance(entry, list) and len(entry) == 5 and all(type(v) is int and v >= 0 for v in entry)):
                raise ValueError(f"the entry of '{rel}' is not [record, size, mtime, ctime, inode]")
        return saved["files"]

    def _write_index(self, files: dict[str, list[int]]) -> None:
        if self.pixels.exists():
            with open(self.pixels, "rb+") as f:
                os.fsync(f.fileno())  # records on disk before the index that vouches for them
        index = {"shape": list(self.prep.shape), "versions": library_versions(), "files": files}
        write_text_atomic(self.index_path, json.dumps(index))

    def stale(self, files: dict[str, list[int]], paths: Iterable[str]) -> list[tuple[str, list[int]]]:
        """(path, [record, size, mtime_ns, ctime_ns, inode]) of every image not cached as its file is now."""
        out, next_row = [], max((entry[0] for entry in files.values()), default=-1) + 1
        for rel in dict.fromkeys(paths):
            try:
                st = os.stat(self.root / rel)
            except OSError as e:
                raise UserError(f"{self.root / rel}: cannot read the image ({e.strerror})") from None
            entry, key = files.get(rel), [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
            if entry is not None and entry[1:] == key:
                continue
            if entry is None:
                row, next_row = next_row, next_row + 1
            else:
                row = entry[0]  # a changed file is rewritten in its own record
            out.append((rel, [row, *key]))
        return out

    def update(self, paths: Iterable[str], workers: int, progress=None) -> CachedImages:
        """Decode whatever of `paths` is missing or changed, on `workers` processes; return the images."""
        paths = list(paths)
        with self._locked():
            files = self._read_index()
            todo = self.stale(files, paths)
            if todo:
                console.print(f"[dim]cache: decoding {len(todo)} of {len(set(paths))} images into {self.folder}[/]")
                self._build(files, todo, workers, progress)
        return CachedImages(self.pixels, {rel: files[rel][0] for rel in paths}, self.prep)

    def _build(self, files: dict, todo: list[tuple[str, list[int]]], workers: int, progress) -> None:
        if any(rel in files for rel, _ in todo):  # changed images: forget their old pixels before overwriting
            for rel, _ in todo:
                files.pop(rel, None)
            self._write_index(files)
        rows = max(entry[0] for _, entry in todo) + 1
        self.pixels.touch()
        if os.path.getsize(self.pixels) < rows * self.record:
            os.truncate(self.pixels, rows * self.record)
        job = _Build(self.root, self.pixels, [(rel, entry[0]) for rel, entry in todo], self.prep)
        loader = torch.utils.data.DataLoader(job, batch_size=None, num_workers=workers,
                                             prefetch_factor=8 if workers else None)
        task = progress.add_task(f"cache {self.prep.key}", total=len(todo), rate=0.0, info="") if progress else None
        try:
            for n, i in enumerate(loader, 1):
                rel, entry = todo[i]
                files[rel] = entry
                if n % CHECKPOINT_EVERY == 0:
                    self._write_index(files)
                if task is not None:
                    progress.update(task, advance=1)
        finally:  # an unreadable image or an interruption keeps the records finished so far
            self._write_index(files)
            if task is not None:
                progress.remove_task(task)


def open_images(cache_dir: str | Path | None, root: Path, paths: Iterable[str], prep: Preprocessing, workers: int,
                progress=None) -> CachedImages | DecodedImages:
    """`images[path]` for `paths` (relative to the corpus folder `root`): from the cache under `cache_dir`
    (data.cache_dir), built first where an image is missing or changed, or decoded on every read when
    `cache_dir` is None (data.cache: false)."""
    if cache_dir is None:
        return DecodedImages(root, prep)
    return ImageCache(cache_folder(cache_dir, root, prep), root, prep).update(paths, workers, progress)
