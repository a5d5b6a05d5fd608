"""GPU slots for `make -j N GPUS=...` (foldvision.campaign.slot) and thread sharing under `make -j N` (foldvision.cli).

No GPU here: the slot logic is tested on its locks and on `CUDA_VISIBLE_DEVICES`, with a stand-in list of GPUs.
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


def test_the_command_runs_pinned_to_its_gpu_and_holds_the_slot(tmp_path, monkeypatch):
    monkeypatch.setattr(slots, "visible_gpus", lambda: ["0", "1"])
    script = ("import os, sys, fcntl; from pathlib import Path; "
              "print(os.environ['CUDA_VISIBLE_DEVICES'])")
    code = (f"from foldvision.campaign import slot as slots; slots.visible_gpus = lambda: ['0', '1']; "
            f"slots.main(['--gpus', '1 0', '--lock-dir', {str(tmp_path)!r}, '--', {sys.executable!r}, '-c', "
            f"{script!r}])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"  # the first free of the user's list


@pytest.mark.parametrize("flags, jobs", [("", 1), ("s -j2 --jobserver-auth=3,4", 2), ("-j8", 8), ("-j", 1),
                                         ("s", 1)])
def test_make_jobs_from_makeflags(flags, jobs):
    assert cli.make_jobs(flags) == jobs


def test_make_jobs_share_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MAKEFLAGS", " -j2 --jobserver-auth=3,4")
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 8)
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
