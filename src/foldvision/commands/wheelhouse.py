"""The wheels an offline notebook needs to install foldvision for inference.

    foldvision wheelhouse wheelhouse/ [--python-version 3.11] [--platform manylinux_2_28_x86_64] [--with-torch]
                          [--constraints constraints.txt] [--source .]
    make wheelhouse [WHEELHOUSE=wheelhouse] [PYTHON_VERSION=3.11] [PLATFORM=manylinux_2_28_x86_64] [WITH_TORCH=1]

The folder gets foldvision's own wheel, built from the source tree (`pip wheel --no-deps`), and every wheel its
base dependencies need (the inference ones: training's are the `train` extra), at the versions the constraints
file pins, for the notebook image's Python and platform (default: this machine's). pip resolves the set
(`pip install --dry-run --report`), then `pip download --no-deps` fetches exactly it. Without --with-torch,
torch, torchvision and what only they need (CUDA libraries, triton, sympy...) stay out: competition images ship
torch, and those wheels weigh gigabytes. In the notebook:

    pip install --no-index --find-links <wheelhouse> foldvision

The folder is written whole or not at all (built beside it, then renamed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from foldvision.errors import UserError

PROJECT = "foldvision"
TORCH = ("torch", "torchvision")  # optional: left out, with what only they need, unless --with-torch
# a manylinux_2_N wheel runs on any newer glibc: pip takes --platform literally, so a named glibc brings the
# older tags with it (back to manylinux2014 = 2_17, and the legacy aliases pip itself expands)
MANYLINUX = re.compile(r"manylinux_2_(\d+)_(\w+)")
OLDEST_GLIBC = 17
LINUX_TAG = re.compile(r"(?:manylinux_\d+_\d+|manylinux\d+|musllinux_\d+_\d+|linux)_(\w+)")


def canonical(name: str) -> str:
    """A distribution's name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def platform_tags(platform: str) -> list[str]:
    """The --platform values for a notebook image of this platform: a manylinux_2_N tag also takes older glibcs."""
    match = MANYLINUX.fullmatch(platform)
    if not match:
        return [platform]
    glibc, arch = int(match.group(1)), match.group(2)
    tags = [f"manylinux_2_{n}_{arch}" for n in range(glibc, OLDEST_GLIBC - 1, -1)]
    return tags + ([f"manylinux2014_{arch}"] if glibc >= OLDEST_GLIBC else [])


def target_args(python_version: str, platform: str) -> list[str]:
    """pip's options that pick wheels for the notebook image (none named: this machine's)."""
    args = ["--only-binary=:all:"]  # the notebook has no compiler and no index: wheels only
    if python_version:
        if not re.fullmatch(r"3\.\d+", python_version):
            raise UserError(f"PYTHON_VERSION={python_version!r}: write the notebook image's Python as 3.N, e.g. 3.11")
        args += ["--python-version", python_version, "--implementation", "cp"]
    if platform:
        if not re.fullmatch(r"\w+", platform):
            raise UserError(f"PLATFORM={platform!r}: write a wheel platform tag, e.g. manylinux_2_28_x86_64")
        args += [arg for tag in platform_tags(platform) for arg in ("--platform", tag)]
    return args


def marker_environment(python_version: str, platform: str) -> dict[str, str]:
    """The environment markers (`python_version < "3.12"`, `platform_system == "Linux"`) of the notebook image,
    for reading which requirements apply there."""
    from packaging.markers import default_environment  # noqa: PLC0415 - pip's own marker reader, only here

    env = dict(default_environment())
    if python_version:
        env.update(python_version=python_version, python_full_version=f"{python_version}.0",
                   implementation_name="cpython", platform_python_implementation="CPython")
    linux = LINUX_TAG.fullmatch(platform) if platform else None
    if linux:
        env.update(sys_platform="linux", platform_system="Linux", os_name="posix", platform_machine=linux.group(1))
    return env


def pip(*args: str, cwd: Path | None = None) -> None:
    """Run this interpreter's pip; its failure becomes one error with pip's last words."""
    result = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        said = [line for line in (result.stderr + result.stdout).splitlines() if line.startswith("ERROR")]
        raise UserError(f"pip {args[0]} failed: {' / '.join(said[-3:]) or result.stderr.strip()[-500:]}")


def build_own_wheel(source: Path, out: Path) -> Path:
    """foldvision's wheel, built from a copy of the tree: setuptools writes build/ and *.egg-info where it
    builds, and a stale build/lib would carry deleted modules into the wheel."""
    if not (source / "pyproject.toml").is_file():
        raise UserError(f"{source}: no pyproject.toml; run make wheelhouse from foldvision's source tree")
    with tempfile.TemporaryDirectory(prefix="foldvision-build-") as scratch:
        tree = Path(scratch)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(source / name, tree / name)
        shutil.copytree(source / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        # the build backend is installed here: no index is needed to build
        pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out), str(tree))
    return next(out.glob(f"{PROJECT}-*.whl"))


def resolve(wheel: Path, target: list[str], constraints: Path) -> list[dict]:
    """Every distribution that installing the wheel brings, as pip resolves it for the target (the items of
    pip's installation report, with their metadata)."""
    with tempfile.TemporaryDirectory(prefix="foldvision-resolve-") as scratch:
        report = Path(scratch) / "report.json"
        pip("install", "--quiet", "--dry-run", "--ignore-installed", "--report", str(report), *target,
            "-c", str(constraints), str(wheel))
        return json.loads(report.read_text())["install"]


def needed(items: list[dict], env: dict[str, str], with_torch: bool) -> list[tuple[str, str]]:
    """(name, version) of the resolved distributions reached from foldvision through requirements that apply
    in `env`; without torch, the walk does not enter torch or torchvision, so what only they need stays out."""
    from packaging.requirements import Requirement  # noqa: PLC0415

    by_name = {canonical(item["metadata"]["name"]): item["metadata"] for item in items}
    stop = set() if with_torch else {canonical(name) for name in TORCH}
    seen: dict[str, set[str]] = {}  # name -> the extras it was required with
    todo = [(PROJECT, frozenset())]
    while todo:
        name, extras = todo.pop()
        if name in stop or name not in by_name or (name in seen and extras <= seen[name]):
            continue
        seen[name] = seen.get(name, set()) | extras
        for text in by_name[name].get("requires_dist", []):
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in seen[name] | {""}):
                todo.append((canonical(req.name), frozenset(req.extras)))
    return sorted((by_name[name]["name"], by_name[name]["version"]) for name in seen)


def gather(out: Path, source: Path, constraints: Path, python_version: str, platform: str,
           with_torch: bool) -> list[Path]:
    """Write the wheelhouse folder `out` (replacing it whole); returns its wheels."""
    if not constraints.is_file():
        raise UserError(f"{constraints}: no such constraints file; name the pins with --constraints FILE")
    target = target_args(python_version, platform)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        own = build_own_wheel(source, staging)
        pins = needed(resolve(own, target, constraints), marker_environment(python_version, platform), with_torch)
        others = [f"{name}=={version}" for name, version in pins if canonical(name) != PROJECT]
        pip("download", "--quiet", "--no-deps", *target, "-d", str(staging), *others)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(out.glob("*.whl"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision wheelhouse",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the wheelhouse folder (replaced whole)")
    parser.add_argument("--python-version", default="", help="the notebook image's Python, e.g. 3.11 "
                        "(default: this interpreter's)")
    parser.add_argument("--platform", default="", help="its wheel platform tag, e.g. manylinux_2_28_x86_64 "
                        "(default: this machine's)")
    parser.add_argument("--with-torch", action="store_true", help="also torch, torchvision and their CUDA wheels")
    parser.add_argument("--constraints", type=Path, default=Path("constraints.txt"))
    parser.add_argument("--source", type=Path, default=Path("."), help="foldvision's source tree")
    args = parser.parse_args(argv)
    wheels = gather(args.out, args.source, args.constraints, args.python_version, args.platform, args.with_torch)
    total = sum(wheel.stat().st_size for wheel in wheels)
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:9.1f} MiB  {wheel.name}")
    print(f"{args.out}: {len(wheels)} wheels, {total / 2**20:.1f} MiB"
          f"{'' if args.with_torch else ' (torch left out: the notebook image has it)'}")


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
