"""GPU slots for `make -j N GPUS=...` (foldvision.campaign.slot) and thread sharing under `make -j N` (foldvision.cli).

No GPU here: the slot logic is tested on its locks and on `CUDA_VISIBLE_DEVICES`, with a stand-in `nvidia-smi`.
"""

import os
import subprocess
import sys
import time

import pytest

from foldvision import cli

from foldvision.campaign import slot as slots
from foldvision.errors import UserError


def test_gpu_lists_are_parsed_and_checked():
    assert slots.parse_gpus("0 1,2") == ["0", "1", "2"]
    for bad in ("", "a b", "0 0", "-1"):
        with pytest.raises(UserError, match="GPUS="):
            slots.parse_gpus(bad)
    with pytest.raises(UserError, match="GPUS names GPU 3, but this machine has GPUs 0 1"):
        slots.check_gpus(["0", "3"], ["0", "1"])


def test_no_nvidia_gpu_is_one_line(monkeypatch):
    monkeypatch.setattr(slots.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="no NVIDIA GPU"):
        slots.visible_gpus()


def test_each_job_takes_a_free_gpu_and_waits_when_none_is(tmp_path):
    gpu0, fd0 = slots.take_slot(["0", "1"], tmp_path)
    gpu1, fd1 = slots.take_slot(["0", "1"], tmp_path)
    assert (gpu0, gpu1) == ("0", "1")  # no two jobs on one GPU
    # a third job waits until a GPU is freed, then takes that one
    probe = subprocess.Popen([sys.executable, "-c", (
        "import sys; from pathlib import Path; from foldvision.campaign import slot as slots; "
        f"print(slots.take_slot(['0', '1'], Path({str(tmp_path)!r}), poll=0.05)[0])")],
        stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert probe.poll() is None  # still waiting: both GPUs are held
    os.close(fd1)  # the job on GPU 1 ends
    assert probe.communicate(timeout=30)[0].strip() == "1"
    os.close(fd0)


def fake_nvidia_smi(folder) -> dict:
    """An `nvidia-smi` on PATH that lists GPUs 0 and 1: the environment for a `foldvision slot` process."""
    folder.mkdir()
    smi = folder / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '0\\n1\\n'\n")
    smi.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def test_the_command_runs_pinned_to_its_gpu_and_holds_the_slot(tmp_path):
    """`foldvision slot` as make runs it, in a process of its own (it execs the command, so nothing can be
    patched in this one): the GPUs come from nvidia-smi (a stand-in on PATH), the command runs on the first
    free GPU of the user's list and holds that GPU's lock until it exits, and a GPU not listed is refused."""
    locks, env = tmp_path / "locks", fake_nvidia_smi(tmp_path / "bin")
    script = ("import os, fcntl; gpu = os.environ['CUDA_VISIBLE_DEVICES']; "
              f"fd = os.open(os.path.join({str(locks)!r}, f'gpu{{gpu}}.lock'), os.O_RDWR)\n"
              "try: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print(gpu, 'free')\n"
              "except BlockingIOError: print(gpu, 'held')")
    slot = [sys.executable, "-m", "foldvision", "slot", "--lock-dir", str(locks), "--gpus"]
    out = subprocess.run([*slot, "1 0", "--", sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "held"]  # the first free of the user's list, locked while the command runs
    gpu, fd = slots.take_slot(["1"], locks, poll=0.05)  # ...and released when it exited
    assert gpu == "1"
    os.close(fd)
    refused = subprocess.run([*slot, "2", "--", "true"], capture_output=True, text=True, timeout=60, env=env)
    assert refused.returncode == 2 and "GPUS names GPU 2, but this machine has GPUs 0 1" in refused.stderr


@pytest.mark.parametrize("flags, jobs", [([], 1), (["-j2"], 2), (["-j", "8"], 8), (["-j"], 1), (["-s", "-k"], 1),
                                         (["-k", "-j3", "ARGS=x -j5"], 3)])
def test_make_reads_its_jobs_once_and_exports_them(flags, jobs):
    """The Makefile derives make's job count from its MAKEFLAGS (a bare -j, no limit, counts as 1) and exports
    it to every recipe, inner makes' included, as FOLDVISION_JOBS."""
    from conftest import ROOT

    probe = ["--eval", 'fv-jobs: ; @echo "$$FOLDVISION_JOBS"; $(MAKE) -s --no-print-directory fv-inner',
             "--eval", 'fv-inner: ; @echo "$$FOLDVISION_JOBS"']
    out = subprocess.run(["make", "-s", "--no-print-directory", "-C", str(ROOT), *probe, "fv-jobs", *flags],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(jobs), str(jobs)]


def test_make_jobs_share_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("FOLDVISION_JOBS", raising=False)
    monkeypatch.setenv("MAKEFLAGS", " -j2 --jobserver-auth=3,4")  # read by the Makefile alone
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 8)
    cli.share_cores()
    assert "OMP_NUM_THREADS" not in os.environ
    monkeypatch.setenv("FOLDVISION_JOBS", "2")  # what the Makefile exports under make -j2
    cli.share_cores()
    assert os.environ["OMP_NUM_THREADS"] == "4"


@pytest.mark.slow  # make, then `foldvision config` and the refusal: ~10-30 s each on 2 cores
@pytest.mark.parametrize("variables, message", [
    ({"NPROC": "abc"}, "NPROC"),
    ({"NPROC": "2", "GPUS": "0"}, "NPROC trains one fold at a time"),
    ({"GPUS": "7"}, "GPUS"),
])
def test_make_fan_out_mistakes_are_one_line_and_train_nothing(tmp_path, variables, message):
    from conftest import ROOT, make_corpus, write_config

    corpus = make_corpus(tmp_path / "c", {"a": 4, "b": 4})
    write_config(tmp_path / "configs", "x", corpus)
    cmd = ["make", "--no-print-directory", "-C", str(ROOT), "train", "EXP=x", f"CONFIGS={tmp_path / 'configs'}",
           f"RUNS={tmp_path / 'runs'}", f"SUBMISSIONS={tmp_path / 'subs'}", f"PY={sys.executable}",
           *(f"{k}={v}" for k, v in variables.items())]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not list((tmp_path / "runs" / "x").glob("fold*/oof.csv"))
