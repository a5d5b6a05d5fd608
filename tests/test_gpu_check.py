"""benchmarks/gpu_check.py, the GPU check, runs its every step at a tiny size on the CPU (`--cpu-dry-run`), so it
is known to work before a GPU is at hand; and training needs no wandb with tracking off (the GPU machine has none).
"""

import json
import subprocess
import sys
import time

import pytest

import gpu_check
from conftest import ROOT, make_corpus, resolved_run

# stands in for a machine without wandb: `import wandb` fails as it does there
NO_WANDB = "import sys; sys.modules['wandb'] = None; from foldvision.cli import main; main(sys.argv[1:])"


def test_cpu_dry_run_runs_every_step(tmp_path):
    out = tmp_path / "gpu_check.json"
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-dry-run", "--out",
                           str(out), "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=1200)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    steps = report["steps"]
    assert list(steps) == list(gpu_check.STEPS)
    for name, step in steps.items():
        assert step["status"] == "passed" or (step["status"] == "skipped" and step["reason"]), (name, step)
        assert step["seconds"] <= step["limit_seconds"]
    assert report["passed"] and report["environment"]["dry_run"]
    for amp in ("fp16", "bf16"):  # cut after the first of two epochs, resumed to the end
        if steps[f"fold_{amp}"]["status"] == "passed":
            assert steps[f"fold_{amp}"]["cut_after_epoch"] == 1
    if steps["fold_fp16"]["status"] == "passed":
        assert steps["fold_fp16"]["scaler_scale_at_cut"] > 0
    assert steps["ddp"]["backend"] == "gloo"
    assert steps["make_slots"]["fold_jobs_slotted"] == 2
    for name in ("throughput_eva02", "throughput_convnext"):
        figures = steps[name]
        assert figures["model_only_img_s"] > 0 and figures["train_warm_img_s"] > 0
        assert figures["train_gflops_per_image"] > 0
    summary = done.stdout.splitlines()
    assert all(any(line.strip().startswith(name) for line in summary) for name in gpu_check.STEPS)
    print(f"gpu_check --cpu-dry-run: {seconds:.0f} s")


@pytest.mark.parametrize(("name", "peak"), [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                             ("NVIDIA H200", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                             ("Tesla T4", None)])
def test_peak_by_device_name(name, peak):
    assert gpu_check.peak_by_name(name) == peak


def test_training_needs_no_wandb_with_tracking_off(tmp_path):
    corpus = make_corpus(tmp_path / "c", {"0": 6, "1": 6})
    _, run_dir = resolved_run(tmp_path, corpus)  # tracking: none
    done = subprocess.run([sys.executable, "-c", NO_WANDB, "train", str(run_dir), "--fold", "0"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run_dir / "fold0" / "oof.csv").is_file()


def test_tracking_wandb_without_wandb_is_one_line(tmp_path):
    corpus = make_corpus(tmp_path / "c", {"0": 6, "1": 6})
    _, run_dir = resolved_run(tmp_path, corpus, tracking="wandb")
    done = subprocess.run([sys.executable, "-c", NO_WANDB, "train", str(run_dir), "--fold", "0"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: tracking=wandb")
    assert "Traceback" not in done.stderr
