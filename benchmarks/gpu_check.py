"""Every CUDA-only path of foldvision, run once on one GPU in under 8 minutes: one JSON of results and a summary.

On the GPU machine (no network; its image has torch, torchvision, timm, pandas, scikit-learn, OpenCV, pytest):

    make gpu-wheels      # here, with a network: the packages that machine lacks, as wheels in .whl/
    make gpu-check       # there, in the tree's root (the tree and .whl/ carried); it runs
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    PYTHONPATH=src:/tmp/site python3 benchmarks/gpu_check.py --keep-going --out gpu_check.json

and on any machine, the same steps at a tiny size on the CPU (what `make test` runs, tests/test_gpu_check.py):

    python benchmarks/gpu_check.py --cpu-dry-run --out gpu_check.json

The steps, each under a time limit (`LIMITS`), in this order; the corpus is the built-in digits
(`foldvision demo-data`), every fold a BatchNorm CNN (resnet10t; timm's test_resnet in the dry run), tracking off
(wandb is not needed):

    corpus                the digits corpus (a stratified 50 of them in the dry run)
    fold_fp16, fold_bf16  `foldvision train` of one fold in fp16 (GradScaler) and in bf16, cut by a SIGINT once
                          epoch 1's last.pt exists and run again: it must resume (the fp16 scaler's state from
                          last.pt), finish every epoch, and (on the GPU) learn
    compile               a fold with train.compile=true (dry run: TORCH_COMPILE_DISABLE=1, only foldvision's side
                          of it: inductor needs minutes on 2 CPU cores)
    loader_channels_last  the prefetch loader's device path (pinned memory, non-blocking copies, normalising and
                          on-device flips) delivers channels_last batches that give the contiguous batches' logits
    make_slots            `make -j2 train GPUS="0"`: two fold jobs taking turns on one GPU slot (dry run: a stand-in
                          nvidia-smi that lists GPU 0)
    ddp                   a fold under torchrun with foldvision's DDP path on NCCL (gloo in the dry run): one rank
                          on one GPU (NPROC=1 itself never starts torchrun, and NCCL refuses two ranks on one
                          GPU: 'Duplicate GPU detected'), and `--nproc 2` as well where two GPUs are visible
    throughput_eva02,     benchmarks/bench.py's figures for eva02_base_patch14_224 and convnext_base at 224 px in
    throughput_convnext   bf16, random weights (dry run: timm's test_vit and test_convnext at 32 px): model-only
                          steps against the full loop with the loader, plus FLOPs per image, MFU and peak memory

A step passes, is skipped with its reason, or fails; the first failure ends the check (exit status 1) unless
--keep-going. The JSON is rewritten after each step, so a check cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("corpus", "fold_fp16", "fold_bf16", "compile", "loader_channels_last", "make_slots", "ddp",
         "throughput_eva02", "throughput_convnext")
# seconds per step on the GPU, and in the dry run: limits that catch a hang, not budgets (the GPU's steps are
# expected to take 5-6 minutes in all, compiling included)
# (the dry run's are for a 2-core machine shared with other jobs: they catch hangs, not slowness)
LIMITS = {"corpus": (60, 60), "fold_fp16": (90, 150), "fold_bf16": (90, 120), "compile": (240, 120),
          "loader_channels_last": (60, 60), "make_slots": (120, 180), "ddp": (90, 120),
          "throughput_eva02": (120, 120), "throughput_convnext": (120, 120)}
# the models the throughput steps time, and their dry-run stand-ins
THROUGHPUT_MODELS = {"throughput_eva02": ("eva02_base_patch14_224", "test_vit"),
                     "throughput_convnext": ("convnext_base", "test_convnext")}
# dense bf16 tensor-core peaks (TFLOP/s) by a device name's part; the first match wins (PCIe before plain H100)
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("GH200", 989.0), ("A100", 312.0), ("L40S", 362.0), ("A10G", 70.0), ("L4", 121.0))
CUT_POLL_SECONDS = 0.005  # how often the cut looks for last.pt: far shorter than the epochs left after it


class Skip(Exception):
    """A step that cannot run here, for the reason given (recorded, not a failure)."""


class StepFailed(Exception):
    """A step whose result is wrong: the message says what was expected and what came."""


class StepTimeout(Exception):
    pass


# ---- the check's parts ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Check:
    """Where the check runs and at which size; each step reads it and returns its figures."""

    dry: bool
    work: Path
    peak_tflops: float | None
    step: str = ""
    logs: list[Path] = dataclasses.field(default_factory=list)

    @property
    def corpus(self) -> Path:
        return self.work / "digits"

    def env(self, **extra: str) -> dict:
        """The subprocesses' environment: no network (HF hub, albumentations' update check), no W&B, no outer
        make's flags (its jobserver is not ours)."""
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
        env.update(HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
        return {**env, **extra}

    def log_file(self) -> Path:
        path = self.work / "logs" / f"{self.step}-{len(self.logs)}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.logs.append(path)
        return path

    def start(self, argv: list[str], **env: str) -> tuple[subprocess.Popen, Path]:
        """A command in a process group of its own (a time-out ends its children too), output to a log."""
        log = self.log_file()
        with log.open("w") as handle:
            handle.write("$ " + " ".join(argv) + "\n")
            handle.flush()
            proc = subprocess.Popen(argv, cwd=ROOT, env=self.env(**env), stdout=handle, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        return proc, log

    def run(self, argv: list[str], expect: int = 0, **env: str) -> str:
        """Run a command to its end; its output, or StepFailed naming its exit status and last lines."""
        proc, log = self.start(argv, **env)
        code = wait(proc)
        text = log.read_text(errors="replace")
        if code != expect:
            raise StepFailed(f"`{' '.join(argv[-6:])}` exited {code}, not {expect}: {tail(text)}")
        return text

    def foldvision(self, *args: str, expect: int = 0, **env: str) -> str:
        return self.run([sys.executable, "-m", "foldvision", *args], expect, **env)


@contextlib.contextmanager
def killed_on_error(proc: subprocess.Popen):
    """On any interruption (the step's time-out), the process's whole group is killed."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def wait(proc: subprocess.Popen) -> int:
    with killed_on_error(proc):
        return proc.wait()


def tail(text: str, lines: int = 4) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


@contextlib.contextmanager
def time_limit(seconds: float):
    """StepTimeout after `seconds` (SIGALRM: also while waiting on a subprocess, which `wait` then kills)."""
    def expire(signum, frame):
        raise StepTimeout(f"over its {seconds:.0f} s limit")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def sync() -> None:
    """Wait for the GPU's queued work: a timing must not end (or start) with kernels still in flight."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def experiment(check: Check, name: str, **sections: dict) -> Path:
    """runs/<name> resolved from configs/digits.yaml on the check's corpus with `sections` on top (written as
    <work>/configs/<name>.yaml, which make reads too), and its folds made, through the stages' own mains."""
    from foldvision.config import yaml_load
    from foldvision.run import main as resolve
    from foldvision.stages.folds import main as make_folds

    body = yaml_load((ROOT / "configs" / "digits.yaml").read_text())
    base = {"data": {"dir": str(check.corpus), "cache_dir": str(check.work / "cache"),
                     "folds_dir": str(check.work / "folds")},
            "cv": {"n_folds": 2}, "tracking": "none"}
    if check.dry:  # one optimizer step per epoch of timm's smallest BatchNorm CNN
        base |= {"model": {"name": "test_resnet"}, "train": {"batch_size": 16, "num_workers": 0, "precise_bn": 1}}
    for extra in (base, sections):
        for key, value in extra.items():
            body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    configs = check.work / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    (configs / f"{name}.yaml").write_text(json.dumps(body, indent=1))  # JSON is YAML
    run_dir = check.work / "runs" / name
    resolve([name, "--configs", str(configs), "--run-dir", str(run_dir)])
    make_folds([str(run_dir)])
    return run_dir


def history(run_dir: Path, fold: int):
    import pandas as pd

    return pd.read_csv(run_dir / f"fold{fold}" / "history.csv")


def fold_line_checks(check: Check, output: str, amp: str) -> None:
    """The fold's first line says what it ran on: the mode asked for, on the GPU outside the dry run."""
    if f"amp {amp}" not in output:
        raise StepFailed(f"the fold did not run in {amp}: {tail(output)}")
    if not check.dry and "device cuda" not in output:
        raise StepFailed(f"the fold did not run on the GPU: {tail(output)}")


def learned(check: Check, run_dir: Path, fold: int, epochs: int, must_learn: bool = False) -> dict:
    """Every epoch in history.csv, finite losses, and (`must_learn`, on the GPU) a validation accuracy far above
    chance: one epoch is mostly Ranger21's warm-up, so only the longer folds are held to it."""
    import numpy as np

    table = history(run_dir, fold)
    if len(table) != epochs:
        raise StepFailed(f"history.csv has {len(table)} epochs, not {epochs}")
    if not np.isfinite(table["train_loss"].to_numpy(float)).all():
        raise StepFailed(f"non-finite training loss: {table['train_loss'].tolist()}")
    best = float(table["val_accuracy"].max())
    if must_learn and not check.dry and best < 0.5:  # 10 digits: chance is 0.1
        raise StepFailed(f"validation accuracy {best:.3f} after {epochs} epochs: the fold did not learn")
    if not (run_dir / f"fold{fold}" / "oof.csv").is_file():
        raise StepFailed("no oof.csv after the fold")
    return {"val_accuracy": round(best, 4), "epoch_seconds": round(float(table["seconds"].mean()), 2)}


# ---- the steps ------------------------------------------------------------------------------------------

def step_corpus(check: Check) -> dict:
    # the dry run's 50: 40 train (20 per fold, one batch of 16) and 10 test, one of each digit
    check.foldvision("demo-data", str(check.corpus), *(["--limit", "50"] if check.dry else []))
    return {"train_images": sum(1 for _ in (check.corpus / "train").iterdir())}


def cpu_fp16_works() -> bool:
    import torch

    try:
        with torch.autocast("cpu", dtype=torch.float16):
            return torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 1, 1)).dtype == torch.float16
    except RuntimeError:
        return False


def cut(check: Check, run_dir: Path, fold: int = 0) -> dict:
    """`foldvision train` stopped by a SIGINT (a Ctrl-C) as soon as an epoch's last.pt exists; returns the
    training state last.pt holds."""
    import torch

    last = run_dir / f"fold{fold}" / "last.pt"
    proc, log = check.start([sys.executable, "-m", "foldvision", "train", str(run_dir), "--fold", str(fold)])
    with killed_on_error(proc):
        while proc.poll() is None and not last.exists():
            time.sleep(CUT_POLL_SECONDS)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    code = wait(proc)
    if code != 130 or (run_dir / f"fold{fold}" / "oof.csv").exists():
        raise StepFailed(f"the fold was not cut after an epoch (exit {code}, oof.csv "
                         f"{'written' if (run_dir / f'fold{fold}' / 'oof.csv').exists() else 'absent'}): "
                         f"{tail(log.read_text(errors='replace'))}")
    saved = torch.load(last, map_location="cpu", weights_only=True)
    return {"epoch": saved["state"]["epoch"], "scaler": saved["scaler"], "output": log.read_text(errors="replace")}


def fold_cut_and_resumed(check: Check, amp: str) -> dict:
    """One fold in `amp`, cut after an epoch and run again: it resumes there (with the fp16 scaler's state)."""
    if amp == "fp16" and check.dry and not cpu_fp16_works():
        raise Skip("this torch has no float16 autocast on the CPU")
    epochs = 2 if check.dry else 4  # the cut comes after the first: the others are the window for the SIGINT
    run_dir = experiment(check, f"fold_{amp}", train={"amp": amp, "epochs": epochs})
    state = cut(check, run_dir)
    fold_line_checks(check, state["output"], amp)
    scaler = state["scaler"]
    if amp == "fp16" and not (isinstance(scaler, dict) and scaler.get("scale", 0) > 0):
        raise StepFailed(f"last.pt holds no GradScaler state in fp16: {scaler!r}")
    if amp == "bf16" and scaler is not None:
        raise StepFailed(f"last.pt holds a GradScaler state in bf16: {scaler!r}")
    output = check.foldvision("train", str(run_dir), "--fold", "0")
    if f"resuming after epoch {state['epoch']}" not in output:
        raise StepFailed(f"the second run did not resume after epoch {state['epoch']}: {tail(output)}")
    figures = {"cut_after_epoch": state["epoch"], **learned(check, run_dir, 0, epochs, must_learn=True)}
    if scaler is not None:
        figures["scaler_scale_at_cut"] = scaler["scale"]
    return figures


def step_compile(check: Check) -> dict:
    run_dir = experiment(check, "compile", train={"compile": True, "amp": "bf16", "epochs": 1})
    # the dry run keeps torch.compile's wrapper (foldvision's side: the uncompiled twin checkpointed, validation
    # through the compiled one) but not its compiler: inductor's C++ for a tiny CNN took ~230 s on 2 cores
    env = {"TORCH_COMPILE_DISABLE": "1"} if check.dry else {}
    start = time.perf_counter()
    output = check.foldvision("train", str(run_dir), "--fold", "0", **env)
    fold_line_checks(check, output, "bf16")
    figures = {"fold_seconds": round(time.perf_counter() - start, 1), **learned(check, run_dir, 0, 1)}
    if check.dry:
        figures["note"] = "TORCH_COMPILE_DISABLE=1: the wrapper ran, not the compiler (minutes on 2 CPU cores)"
    return figures


def step_loader_channels_last(check: Check) -> dict:
    """The loader's device path, and channels_last against contiguous batches through one model."""
    import numpy as np
    import torch

    from foldvision.config import ModelConfig
    from foldvision.learn.engine import build_model_for
    from foldvision.learn.loader import create_loader

    device = "cpu" if check.dry else "cuda"
    setup = build_model_for(ModelConfig(name="resnet10t", img_size=32), 10, 3, device=device, amp="bf16",
                            channels_last=True)
    paths = sorted(str(p.relative_to(check.corpus)) for p in (check.corpus / "train").iterdir())[:16]

    def batch(augment: list, channels_last: bool) -> torch.Tensor:
        loader = create_loader(check.corpus, paths, np.zeros(len(paths), dtype=int), setup.preprocessing, setup.device,
                               train=False, batch_size=16, augment=augment, num_workers=0,
                               channels_last=channels_last, cache_dir=str(check.work / "cache"))
        return next(iter(loader))[0]

    plain, flipped = batch([], True), batch([{"HorizontalFlip": {"p": 1.0}}], True)
    contiguous = batch([], False)
    if plain.device.type != setup.device.type or plain.dtype != torch.float32:
        raise StepFailed(f"the loader delivered {plain.dtype} on {plain.device}, not float32 on {setup.device}")
    if not plain.is_contiguous(memory_format=torch.channels_last) or not contiguous.is_contiguous():
        raise StepFailed("the loader's batches are not in the memory format asked for")
    if not torch.equal(flipped, plain.flip(3)):
        raise StepFailed("the on-device HorizontalFlip(p=1) batch is not the plain batch mirrored")
    setup.model.eval()
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        last, first = setup.model(plain), setup.model(contiguous)
    gap = (last - first).abs().max().item()
    if gap > 1e-3:
        raise StepFailed(f"channels_last and contiguous batches give logits {gap:.2e} apart")
    conv = next(m for m in setup.model.modules() if isinstance(m, torch.nn.Conv2d))
    if not conv.weight.is_contiguous(memory_format=torch.channels_last):
        raise StepFailed("build_model_for(channels_last=True) left the convolutions' weights contiguous")
    return {"logit_gap": gap}


def fake_nvidia_smi(check: Check) -> str:
    """A folder holding an `nvidia-smi` that lists GPU 0 (the dry run's stand-in for the slot's query)."""
    folder = check.work / "fake-bin"
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    script.write_text("#!/bin/sh\necho 0\n")
    script.chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


def step_make_slots(check: Check) -> dict:
    if shutil.which("make") is None:
        raise Skip("no make on this machine")
    run_dir = experiment(check, "slots", train={"epochs": 1})
    env = {"PATH": fake_nvidia_smi(check)} if check.dry and shutil.which("nvidia-smi") is None else {}
    output = check.run(["make", "--no-print-directory", "-j2", "train", "EXP=slots", "GPUS=0",
                        f"CONFIGS={check.work / 'configs'}", f"RUNS={run_dir.parent}",
                        f"SUBMISSIONS={check.work / 'submissions'}", f"PY={sys.executable}"], **env)
    missing = [p for p in ("fold0/oof.csv", "fold1/oof.csv", "scores.json") if not (run_dir / p).is_file()]
    slotted = output.count("slot --gpus")
    if missing or slotted < 2:
        raise StepFailed(f"make -j2 train GPUS=0: {slotted} fold jobs through the slot, missing "
                         f"{', '.join(missing) or 'nothing'}: {tail(output)}")
    return {"fold_jobs_slotted": slotted, "scores": json.loads((run_dir / "scores.json").read_text()).get("oof")}


def step_ddp(check: Check) -> dict:
    """torchrun, one rank, foldvision's DDP path forced on (`ddp_worker`); `--nproc 2` too on two GPUs."""
    import torch

    run_dir = experiment(check, "ddp", train={"epochs": 1})
    result = check.work / "ddp-result.json"
    check.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1",
               str(Path(__file__).resolve()), "--ddp-worker", str(run_dir), "--result", str(result)])
    figures = json.loads(result.read_text())
    if figures["backend"] != ("gloo" if check.dry else "nccl"):
        raise StepFailed(f"the process group ran on {figures['backend']}")
    figures.update(learned(check, run_dir, 0, 1))
    if not check.dry and torch.cuda.device_count() >= 2:
        output = check.foldvision("train", str(run_dir), "--fold", "1", "--nproc", "2")
        figures["nproc2"] = "2 processes" in output and (run_dir / "fold1" / "oof.csv").is_file()
    return figures


def ddp_worker(run_dir: Path, result: Path) -> None:
    """Under torchrun: join a one-rank process group as `distributed.init_from_env` does for several (NCCL on
    the GPU, gloo on the CPU) and train fold 0 with foldvision's DDP path on (DDP around the model, BatchNorm
    statistics pooled by all_reduce, validation rows gathered, barriers on the rank's device)."""
    import torch
    import torch.distributed as dist

    from foldvision.learn import distributed
    from foldvision.run import load_run_config
    from foldvision.stages.train import fit_fold

    @dataclasses.dataclass(frozen=True)
    class OneRankWorld(distributed.World):
        @property
        def distributed(self) -> bool:  # a World of one is otherwise plain single-process training
            return True

    local = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
        dist.init_process_group("nccl", device_id=torch.device(device))
    else:
        device = "cpu"
        dist.init_process_group("gloo")
    distributed._world = OneRankWorld(int(os.environ["RANK"]), 1, local, device)  # what init_from_env sets
    try:
        backend = dist.get_backend()
        best = fit_fold(load_run_config(run_dir), run_dir, 0)
        distributed.barrier()
    finally:
        distributed.cleanup()
    result.write_text(json.dumps({"backend": backend, "device": device, "best": best}))


def peak_by_name(name: str) -> float | None:
    return next((peak for part, peak in PEAK_BF16_TFLOPS if part in name), None)


def peak_tflops(check: Check) -> float | None:
    """--peak-tflops, else the GPU's dense bf16 peak by its name; None on the CPU or an unknown GPU."""
    import torch

    if check.peak_tflops or not torch.cuda.is_available():
        return check.peak_tflops
    return peak_by_name(torch.cuda.get_device_name())


def train_flops_per_image(setup, n_classes: int, batch: int = 2) -> float:
    """FLOPs of one training step's forward and backward per image (torch's FlopCounterMode; attention through
    the math kernel, which the counter sees as matrix products whatever the fused kernels count)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    spec = setup.preprocessing
    images = torch.randn(batch, spec.channels, spec.size, spec.size, device=setup.device)
    targets = torch.randint(0, n_classes, (batch,), device=setup.device)
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH), setup.amp.autocast():
        loss = torch.nn.functional.cross_entropy(setup.model(images).float(), targets)
        loss.backward()
    setup.model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def throughput(check: Check, model: str) -> dict:
    """bench.py's figures for `model` in bf16 on the corpus, with FLOPs per image, MFU and peak memory."""
    import torch

    import bench
    from foldvision.config import load_config
    from foldvision.learn.engine import build_model_for, runtime_kwargs

    size, batch, steps = (32, 8, 2) if check.dry else (224, 64, 20)
    experiment(check, f"bench_{model}", model={"name": model, "img_size": size}, data={"channels": 3},
               train={"amp": "bf16", "batch_size": batch, "compile": False},
               predict={"batch_size": 4 * batch, "tta": ["hflip", "vflip"]})
    cfg = load_config(f"bench_{model}", [], check.work / "configs")
    setup = build_model_for(cfg.model, 10, 3, **runtime_kwargs(cfg.train))
    flops = train_flops_per_image(setup, 10)
    del setup
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sync()
    figures = bench.bench(cfg, steps, tta_images=8 if check.dry else 256, repeats=1 if check.dry else 3)
    sync()
    figures = {k: round(v, 2) for k, v in figures.items()}
    figures["train_gflops_per_image"] = round(flops / 1e9, 3)
    peak = peak_tflops(check)
    for name in ("model_only_img_s", "train_warm_img_s"):
        figures[f"mfu_{name.removesuffix('_img_s')}"] = (round(figures[name] * flops / (peak * 1e12), 4)
                                                         if peak else None)
    if not peak:
        figures["mfu_note"] = "no bf16 peak known for this device: pass --peak-tflops"
    figures["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None
    return {"model": cfg.model.name, "img_size": size, "batch": batch, **figures}


STEP_FUNCTIONS: dict[str, Callable[[Check], dict]] = {
    "corpus": step_corpus,
    "fold_fp16": lambda check: fold_cut_and_resumed(check, "fp16"),
    "fold_bf16": lambda check: fold_cut_and_resumed(check, "bf16"),
    "compile": step_compile,
    "loader_channels_last": step_loader_channels_last,
    "make_slots": step_make_slots,
    "ddp": step_ddp,
    "throughput_eva02": lambda check: throughput(check, THROUGHPUT_MODELS["throughput_eva02"][check.dry]),
    "throughput_convnext": lambda check: throughput(check, THROUGHPUT_MODELS["throughput_convnext"][check.dry]),
}


# ---- the run ---------------------------------------------------------------------------------------------

def cpu_seconds() -> float:
    """CPU time of this process and of its finished subprocesses (their own included): a step's cost that a
    busy machine does not inflate, unlike its wall-clock seconds."""
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage,
                                                     (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)))


def run_step(check: Check, name: str) -> dict:
    """One step under its time limit: {status: passed|skipped|failed, seconds, reason, ...figures}."""
    check.step, check.logs = name, []
    limit = LIMITS[name][check.dry]
    start, cpu = time.perf_counter(), cpu_seconds()
    try:
        with time_limit(limit):
            result = {"status": "passed", **STEP_FUNCTIONS[name](check)}
    except Skip as e:
        result = {"status": "skipped", "reason": str(e)}
    except (StepFailed, StepTimeout) as e:
        result = {"status": "failed", "reason": str(e)}
    except Exception as e:  # noqa: BLE001 - any other error is the step's failure, with where it came from
        where = traceback.extract_tb(e.__traceback__)[-1]
        result = {"status": "failed", "reason": f"{type(e).__name__}: {e} ({Path(where.filename).name}:{where.lineno})"}
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["cpu_seconds"] = round(cpu_seconds() - cpu, 1)
    result["limit_seconds"] = limit
    result["logs"] = [str(p) for p in check.logs]
    return result


def environment(check: Check) -> dict:
    import torch

    info = {"dry_run": check.dry, "python": sys.version.split()[0], "torch": torch.__version__,
            "cuda": torch.version.cuda, "cpu_count": os.cpu_count()}
    for name in ("timm", "torchvision", "numpy", "albumentations", "polars"):
        with contextlib.suppress(ImportError):
            info[name] = __import__(name).__version__
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(), capability=torch.cuda.get_device_capability(),
                    gpu_count=torch.cuda.device_count(), peak_bf16_tflops=peak_tflops(check))
        with contextlib.suppress(Exception):  # its form changed across torch versions (a tuple, an int)
            info["nccl"] = str(torch.cuda.nccl.version())
    return info


def summary(report: dict) -> str:
    lines = [f"gpu_check on {report['environment'].get('gpu', 'the CPU (dry run)')}, {report['seconds']:.0f} s "
             f"({report.get('cpu_seconds', 0):.0f} s of CPU): "
             f"{'all passed or skipped' if report['passed'] else 'FAILED'}"]
    for name in STEPS:
        step = report["steps"].get(name, {"status": "not run"})
        figures = {k: v for k, v in step.items()
                   if k not in ("status", "seconds", "cpu_seconds", "limit_seconds", "logs", "reason")}
        shown = "  ".join(f"{k}={v}" for k, v in figures.items() if not isinstance(v, (dict, list)))
        lines.append(f"  {name:22} {step['status']:8} {step.get('seconds', 0):6.1f} s  "
                     f"{step.get('reason', '')}{shown}")
    return "\n".join(lines)


def write_report(path: Path, report: dict) -> None:
    from foldvision.files import write_text_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(report, indent=1, default=str) + "\n")


def check_all(check: Check, out: Path, steps: list[str], keep_going: bool) -> dict:
    report = {"environment": environment(check), "steps": {}, "seconds": 0.0, "passed": True}
    start, cpu = time.perf_counter(), cpu_seconds()
    for name in steps:
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        report["steps"][name] = result = run_step(check, name)
        report["seconds"] = round(time.perf_counter() - start, 1)
        report["cpu_seconds"] = round(cpu_seconds() - cpu, 1)
        report["passed"] &= result["status"] != "failed"
        write_report(out, report)
        if result["status"] == "failed" and not keep_going:
            break
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="the same steps at a tiny size on the CPU")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the JSON of results")
    parser.add_argument("--work", type=Path, help="a folder for corpus, runs and logs (default: a temporary one)")
    parser.add_argument("--keep-going", action="store_true", help="run every step even after a failure")
    parser.add_argument("--only", nargs="+", choices=STEPS, help="these steps (corpus is always first)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak for MFU (default: by name)")
    parser.add_argument("--ddp-worker", type=Path, help=argparse.SUPPRESS)  # the ddp step's process
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.update(HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled")
    if args.ddp_worker:
        ddp_worker(args.ddp_worker, args.result)
        return 0
    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("error: no CUDA device here; run with --cpu-dry-run for the CPU's tiny version", file=sys.stderr)
        return 2
    steps = ["corpus", *[s for s in STEPS[1:] if s in (args.only or STEPS)]]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        work = (args.work or Path(scratch)).resolve()
        check = Check(args.cpu_dry_run, work, args.peak_tflops)
        report = check_all(check, args.out, steps, args.keep_going)
    print(summary(report))
    print(f"gpu_check: results in {args.out}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
