"""Time a small campaign on this machine: make -j1, make -j2 and make -j2 with the Ray launcher, in one run.

    .venv/bin/python benchmarks/campaign.py [--variants 2] [--folds 5] [--epochs 2] [--cpus 2]
                                            [--modes make-j1 make-j2 ray-each ray-all] [--keep DIR]

The campaign is the digits experiment (configs/digits.yaml: resnet10t at 32 px on scikit-learn's digits)
at --epochs epochs, in --variants variants (train.lr = 3e-3, 1e-3, ...) of --folds folds each. Every mode gets
a fresh run folder and a fresh image cache (a new campaign pays its decode once), and is timed from its first
command (config resolution included) to its scores:

    make-j1    make -j1 train, variant after variant (each variant's folds in one process, torch on every core)
    make-j2    make -j2 train, variant after variant (a process per fold, two at a time, 1 thread each)
    ray-each   make -j2 train LAUNCHER=ray, RAY_ADDRESS unset: each fold job a task on a local cluster of its own
               (--cpus / 2 CPUs), which it starts and stops
    ray-all    make -j2 train LAUNCHER=ray with RAY_ADDRESS set to one --cpus-CPU cluster this script started:
               every fold job joins it

Then, on their own: Ray's start-up (a local cluster), and a no-op task's round trip on it. The launcher's
overhead per task is (ray-each − make-j2) / tasks: the two run the same processes in the same waves, so what
is left is Ray's start-ups and its per-task cost. Every figure is a wall time, so each mode also prints the
load average before and after it: wait for an idle machine (`uptime` load under ~1.5); --repeat N runs the
modes N times in turn and keeps each mode's fastest run. (CPU seconds would not compare: the Ray workers are
the raylet's children, not this process's, and are never reaped into its accounting.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
MODES = ("make-j1", "make-j2", "ray-each", "ray-all")
NOOP = """
import time, ray
start = time.perf_counter(); ray.init(num_cpus={cpus}, include_dashboard=False); up = time.perf_counter() - start
noop = ray.remote(lambda: None)
ray.get([noop.remote() for _ in range(20)])  # the workers started
start = time.perf_counter()
for _ in range(100):
    ray.get(noop.remote())
print(up, (time.perf_counter() - start) / 100)
ray.shutdown()
"""


HOLD = ("import sys, ray; ray.init(address='local', num_cpus={cpus}, include_dashboard=False); "
        "print(ray.get_runtime_context().gcs_address, flush=True); sys.stdin.read()")


def variants(n: int) -> list[tuple[str, str]]:
    lrs = ["3e-3", "1e-3", "3e-4", "1e-4", "3e-5"]
    if n > len(lrs):
        raise SystemExit(f"--variants: at most {len(lrs)}")
    return [(f"digits-lr{lr}", f"train.lr={lr}") for lr in lrs[:n]]


def overrides(corpus: Path, cache: Path, args, variant: str) -> list[str]:
    return [f"data.dir={corpus}", f"data.cache_dir={cache}", f"train.epochs={args.epochs}",
            f"cv.n_folds={args.folds}", "tracking=none", variant]


def sh(cmd: list[str], **kw) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if result.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def run_make(ws: Path, corpus: Path, args, jobs: int, *launcher: str, env: dict | None = None) -> float:
    start = time.perf_counter()
    for name, variant in variants(args.variants):
        sh(["make", "--no-print-directory", "-C", str(ROOT), f"-j{jobs}", "train", "EXP=digits", f"NAME={name}",
            f"RUNS={ws / 'runs'}", f"CONFIGS={ROOT / 'configs'}", f"PY={PY}", *launcher,
            "ARGS=" + " ".join(overrides(corpus, ws / "cache", args, variant))], env=env)
    return time.perf_counter() - start


def run_ray(ws: Path, corpus: Path, args, together: bool) -> float:
    """make -j2 train LAUNCHER=ray: each fold job on a local cluster of its own, or all joining one."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    if not together:
        return run_make(ws, corpus, args, 2, "LAUNCHER=ray", f"LAUNCH_ARGS=--num-cpus {max(1, args.cpus // 2)}",
                        env=env)
    holder = subprocess.Popen([PY, "-c", HOLD.format(cpus=args.cpus)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=env)
    try:  # the cluster's start-up counts: ray-each pays it in every fold job
        start = time.perf_counter()
        address = holder.stdout.readline().strip()
        joining = {**env, "RAY_ADDRESS": address, "RAY_AUTH_MODE": "token"}  # ray.init's clusters use token auth
        return time.perf_counter() - start + run_make(ws, corpus, args, 2, "LAUNCHER=ray", env=joining)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def oof_scores(ws: Path, args) -> list[float]:
    return [json.loads((ws / "runs" / name / "scores.json").read_text())["oof"]["accuracy"]
            for name, _ in variants(args.variants)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", type=int, default=2)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every mode; the fastest of each is kept")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()

    ws = args.keep or Path(tempfile.mkdtemp(prefix="campaign-"))
    try:
        from foldvision.commands.demo_data import build

        corpus = ws / "digits"
        if not (corpus / "train.csv").is_file():
            build(corpus)
        tasks = args.variants * args.folds
        load = os.getloadavg()[0]
        print(f"campaign: {args.variants} variants x {args.folds} folds x {args.epochs} epochs of configs/digits.yaml "
              f"on {os.cpu_count()} cores (load {load:.2f} at the start{'; busy: figures are noisy' * (load > 1.5)})",
              flush=True)
        walls, scores = {}, {}
        for round_ in range(args.repeat):
            for mode in args.modes:
                mode_ws = ws / mode
                shutil.rmtree(mode_ws, ignore_errors=True)
                load_before = os.getloadavg()[0]
                if mode.startswith("make"):
                    wall = run_make(mode_ws, corpus, args, jobs=int(mode[-1]))
                else:
                    wall = run_ray(mode_ws, corpus, args, together=mode == "ray-all")
                walls[mode] = min(wall, walls.get(mode, wall))
                scores[mode] = oof_scores(mode_ws, args)
                print(f"  round {round_ + 1} {mode:<9} {wall:8.1f} s   load "
                      f"{load_before:.2f} -> {os.getloadavg()[0]:.2f}   OOF accuracy "
                      f"{' '.join(f'{s:.4f}' for s in scores[mode])}", flush=True)
        probe = subprocess.run([PY, "-c", NOOP.format(cpus=args.cpus)], capture_output=True, text=True,
                               env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
        startup, round_trip = map(float, probe.stdout.split()[-2:])
    finally:
        if args.keep is None:
            shutil.rmtree(ws, ignore_errors=True)

    base = walls.get("make-j1")
    print(f"\n{'mode':<12}{'wall s':>9}{'s/fold':>9}{'x make -j1':>12}")
    for mode, wall in walls.items():
        print(f"{mode:<12}{wall:9.1f}{wall / tasks:9.2f}{wall / base if base else float('nan'):12.2f}")
    print(f"\nray start-up (local {args.cpus}-CPU cluster): {startup:.2f} s; no-op task round trip: "
          f"{round_trip * 1000:.1f} ms")
    if "ray-each" in walls and "make-j2" in walls:
        per_task = (walls["ray-each"] - walls["make-j2"]) / tasks
        print(f"launcher overhead per task (ray-each - make-j2) / {tasks} tasks: {per_task:.2f} s, of which "
              f"start-ups {args.variants * startup / tasks:.2f} s; ray-each / make-j2 = "
              f"{walls['ray-each'] / walls['make-j2']:.2f}")
    if "ray-all" in walls and "ray-each" in walls:
        print(f"one cluster for the whole campaign / one per fold job = {walls['ray-all'] / walls['ray-each']:.2f}")


if __name__ == "__main__":
    main()
