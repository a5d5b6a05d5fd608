"""foldvision launch: a fold job's recipe prefix, `make -j N train LAUNCHER=ray|slurm`: each fold a Ray task (a local
cluster, or RAY_ADDRESS's) or a submitit job (its LocalExecutor).

The training tests are slow-marked (each fold is its own process, ~6 s of imports on 2 cores); the bad inputs
are not. No Slurm cluster here: the Slurm path runs with `--local`, submitit's LocalExecutor.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, run_cli, stage, write_config
from foldvision.campaign import launch

# Ray's log handler keeps the sys.stderr of the moment ray is first imported (ray._private.log.PlainRayHandler
# emits through the stream it was made with). Imported here, that is pytest's session-long stream; imported in a
# test under capsys, the handler writes later tests' warnings to that test's closed capture ("Logging error").
pytest.importorskip("ray")

N_FOLDS = 2  # a fold job each for make -j2, on 100 digits


@pytest.fixture(scope="module")
def digits100(tmp_path_factory) -> Path:
    """100 of scikit-learn's digits (10 a class): enough for 5 stratified folds."""
    from foldvision.commands.demo_data import build

    out = tmp_path_factory.mktemp("digits100") / "digits"
    build(out, limit=100)
    return out


def tiny_config(tmp_path: Path, corpus: Path, n_folds: int = N_FOLDS) -> None:
    write_config(tmp_path / "configs", "tiny", corpus, data={"channels": 1}, augment={"train": []},
                 predict={"tta": []}, cv={"n_folds": n_folds})


def resolved_run(tmp_path: Path, corpus: Path, name: str, *overrides: str, n_folds: int = N_FOLDS) -> Path:
    """runs/<name> with the tiny config resolved into it (what every make target does first)."""
    tiny_config(tmp_path, corpus, n_folds)
    run = tmp_path / "runs" / name
    result = run_cli("config", "tiny", *overrides, "--configs", str(tmp_path / "configs"), "--run-dir", str(run))
    assert result.returncode == 0, result.stderr
    return run


def make(tmp_path: Path, *goals: str, env: dict | None = None, **variables: str) -> subprocess.CompletedProcess:
    """`make <goals> EXP=tiny ...` on the test's configs and runs, as a user runs it."""
    args = {"EXP": "tiny", "CONFIGS": tmp_path / "configs", "RUNS": tmp_path / "runs",
            "SUBMISSIONS": tmp_path / "subs", "PY": sys.executable, **variables}
    cmd = ["make", "--no-print-directory", "-C", str(ROOT), *goals, *(f"{k}={v}" for k, v in args.items())]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, **(env or {})})


def fold_command(run: Path, stage_name: str, fold: int) -> list[str]:
    return [sys.executable, "-m", "foldvision", stage_name, str(run), "--fold", str(fold)]


def stage_pid(run: Path, fold: int) -> int | None:
    """The pid of `python -m foldvision train <run> --fold <fold>`, found by its exact command line."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = [a.decode() for a in Path(entry.path, "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if argv[1:] == ["-m", "foldvision", "train", str(run), "--fold", str(fold)]:
            return int(entry.name)
    return None


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def when_checkpointed(run: Path, fold: int, act) -> threading.Thread:
    """Once fold `fold` has written last.pt (an epoch done, more to go), call act(pid of its stage process)."""
    def watch():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if (run / f"fold{fold}" / "last.pt").is_file() and (pid := stage_pid(run, fold)):
                act(pid)
                return
            time.sleep(0.02)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread



@pytest.fixture
def ray_cluster(monkeypatch):
    """A local 2-CPU Ray cluster of its own, held by a helper process: its address, for RAY_ADDRESS."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, ray; ray.init(address='local', num_cpus=2, include_dashboard=False); "
        "print(ray.get_runtime_context().gcs_address, flush=True); sys.stdin.read()")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield holder.stdout.readline().strip()
    finally:
        holder.stdin.close()  # the holder shuts its cluster down as it exits
        holder.wait(timeout=60)


# ---- Ray ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_trains_and_predicts_the_folds_that_the_stages_do(tmp_path, digits100, ray_cluster, capsys):
    """`make -j2 train predict LAUNCHER=ray` on the cluster at RAY_ADDRESS: each of the 2 fold jobs (train, then
    predict) is a task joining it, then make scores them and writes the submission: the same split, OOF rows,
    probabilities and scores (to 1e-6) as the stage commands make runs, and the test probabilities that
    `foldvision predict --fold` gives here. Each task's torch runs on 1 thread (Ray sets OMP_NUM_THREADS to its
    CPUs), so the reference does too: with 2 threads the sums are rounded in another order (bf16 autocast on the
    CPU) and probabilities differ by ~1e-3. (A local cluster of its own: the retry test.)"""
    import torch

    direct = resolved_run(tmp_path, digits100, "direct")
    ray_run = tmp_path / "runs" / "ray"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for argv in (("folds", str(direct)), ("train", str(direct), "--fold", *map(str, range(N_FOLDS))),
                     ("score", str(direct))):
            code, err = stage(capsys, *argv)
            assert code == 0, err
    finally:
        torch.set_num_threads(threads)

    # a cluster that ray.init started uses token authentication; a driver joining it by address says so
    joining = {"RAY_ADDRESS": ray_cluster, "RAY_AUTH_MODE": "token"}
    result = make(tmp_path, "-j2", "train", "predict", NAME="ray", LAUNCHER="ray", env=joining)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "started a local cluster" not in result.stderr and f"joined the cluster at {ray_cluster}" in result.stderr
    for k in range(N_FOLDS):
        assert f"ray/fold{k}: done in" in result.stderr and f"ray/fold{k}-predict: done in" in result.stderr

    assert (ray_run / "folds.csv").read_text() == (direct / "folds.csv").read_text()
    for k in range(N_FOLDS):
        ours = pd.read_csv(ray_run / f"fold{k}" / "oof.csv", dtype={"id": str, "label": str})
        theirs = pd.read_csv(direct / f"fold{k}" / "oof.csv", dtype={"id": str, "label": str})
        assert ours["id"].tolist() == theirs["id"].tolist()
        assert not (ray_run / f"fold{k}" / "last.pt").exists()
        probs = [c for c in ours.columns if c.startswith("prob_")]
        np.testing.assert_allclose(ours[probs].to_numpy(), theirs[probs].to_numpy(), atol=1e-6)
    ours, theirs = (pd.read_json(run / "scores.json", typ="series") for run in (ray_run, direct))
    for metric, value in theirs["oof"].items():
        assert ours["oof"][metric] == pytest.approx(value, abs=1e-6), metric
    sample = pd.read_csv(digits100 / "sample_submission.csv")
    assert pd.read_csv(tmp_path / "subs" / "ray.csv")["image_id"].tolist() == sample["image_id"].tolist()

    # everything done: make launches nothing and leaves the scores alone
    before = (ray_run / "scores.json").stat().st_mtime_ns
    again = make(tmp_path, "-j2", "train", "predict", NAME="ray", LAUNCHER="ray", env=joining)
    assert again.returncode == 0, again.stderr
    assert "launch" not in again.stdout + again.stderr and (ray_run / "scores.json").stat().st_mtime_ns == before

    by_ray = {k: pd.read_csv(ray_run / f"fold{k}" / "test.csv") for k in range(N_FOLDS)}
    torch.set_num_threads(1)
    try:
        code, err = stage(capsys, "predict", str(ray_run), "--fold", *map(str, range(N_FOLDS)))  # rewrites them
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    for k, ours in by_ray.items():
        theirs = pd.read_csv(ray_run / f"fold{k}" / "test.csv")
        assert ours.columns.tolist() == theirs.columns.tolist()
        assert ours.iloc[:, 0].tolist() == theirs.iloc[:, 0].tolist()  # the same test images, in the same order
        probs = [c for c in ours.columns if c.startswith("prob_")]
        assert probs
        np.testing.assert_allclose(ours[probs].to_numpy(), theirs[probs].to_numpy(), atol=1e-6, rtol=0)


@pytest.mark.slow
def test_ray_retries_a_killed_fold_which_resumes_from_last_pt(tmp_path, digits100, monkeypatch):
    """`make -j2 train FOLDS="0 1" LAUNCHER=ray`: fold 0's stage process is SIGKILLed (Ray retries:
    retry_exceptions) and fold 1's Ray worker is (Ray retries: max_retries; the stage process dies with its
    worker), each after its first epoch: both retried folds resume from last.pt and finish."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    tiny_config(tmp_path, digits100, n_folds=3)  # FOLDS="0 1": a subset, so nothing is scored
    run = (tmp_path / "runs" / "killed").resolve()
    killed, orphan = {}, {}

    def kill_stage(pid):
        killed[0] = pid
        os.kill(pid, signal.SIGKILL)

    def kill_worker(pid):
        killed[1] = parent_pid(pid)
        os.kill(killed[1], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        orphan["alive"] = alive(pid)  # the stage process must not outlive its worker

    watchers = [when_checkpointed(run, 0, kill_stage), when_checkpointed(run, 1, kill_worker)]
    result = make(tmp_path, "-j2", "train", NAME="killed", FOLDS="0 1", ARGS="train.epochs=3", LAUNCHER="ray",
                  LAUNCH_ARGS="--num-cpus 1 --retries 2", RUNS=run.parent)
    for thread in watchers:
        thread.join(timeout=1)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "started a local cluster of 1 CPUs" in result.stderr  # no RAY_ADDRESS: each fold job's own
    assert set(killed) == {0, 1}
    for k in (0, 1):
        assert f"killed/fold{k}: done in" in result.stderr
        resumed = [line for line in result.stdout.splitlines() if f"(killed/fold{k} " in line
                   and f"fold {k}: resuming after epoch" in line]  # Ray prefixes the task's lines with its name
        assert resumed, result.stdout[-3000:]
        assert (run / f"fold{k}" / "oof.csv").is_file() and not (run / f"fold{k}" / "last.pt").exists()
        assert len(pd.read_csv(run / f"fold{k}" / "history.csv")) == 3  # each epoch once
    assert orphan == {"alive": False}
    assert not (run / "scores.json").exists()  # FOLDS: a subset is not scored


# ---- Slurm through submitit's LocalExecutor --------------------------------------------------------------
@pytest.mark.slow
def test_slurm_local_runs_a_fold_and_requeues_it_on_preemption(tmp_path, digits_corpus):
    """`make train FOLDS=0 LAUNCHER=slurm`: the job gets SIGUSR2 after its first epoch, as Slurm signals a
    pre-empted or timed-out job: submitit calls the Checkpointable's checkpoint (which stops the stage) and
    requeues the job, and the fold resumes from last.pt."""
    tiny_config(tmp_path, digits_corpus, n_folds=2)
    run = (tmp_path / "runs" / "slurm").resolve()
    signalled = []

    def preempt(pid):
        signalled.append(parent_pid(pid))  # the submitit process that runs the stage command
        os.kill(signalled[0], signal.SIGUSR2)

    when_checkpointed(run, 0, preempt)
    result = make(tmp_path, "train", NAME="slurm", FOLDS="0", ARGS="train.epochs=3", LAUNCHER="slurm",
                  LAUNCH_ARGS="--local --timeout-min 10", RUNS=run.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert signalled
    assert "[slurm/fold0] " in result.stdout and "Requeued job" in result.stdout
    assert "fold 0: resuming after epoch" in result.stdout
    assert "slurm/fold0: done in" in result.stderr
    assert (run / "fold0" / "oof.csv").is_file() and not (run / "fold1").exists()
    assert (run / "slurm").is_dir()


# ---- the prefix: what make runs for a fold job -------------------------------------------------------------
@pytest.mark.parametrize("launcher", ["ray", "slurm"])
def test_each_fold_job_is_the_stage_command_behind_the_launcher(fresh_run, tmp_path, launcher):
    """make -n: the fold rules' recipes are the stage commands, prefixed; make alone picks the folds."""
    targets = [str(fresh_run / "folds.csv"), str(fresh_run / "fold1" / "test.csv")]
    result = make(tmp_path, "-n", *targets, NAME="tiny", LAUNCHER=launcher, LAUNCH_ARGS="--retries 1")
    assert result.returncode == 0, result.stderr
    slurm = f" --folder {fresh_run}/slurm" if launcher == "slurm" else ""
    for stage_name, label in (("train", "tiny/fold1"), ("predict", "tiny/fold1-predict")):
        job = [line.split() for line in result.stdout.splitlines() if f" {stage_name} " in line]
        # LAUNCHER and LAUNCH_ARGS reach foldvision through the environment, as written (test_make_values)
        assert job == [f"{sys.executable} -m foldvision launch \"$LAUNCHER\" --label {label}{slurm} "
                       f"--from-env LAUNCH_ARGS -- {sys.executable} -m foldvision {stage_name} {fresh_run} "
                       "--fold 1".split()], result.stdout


# ---- bad inputs: one line, exit 2, nothing written ---------------------------------------------------------
def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def nothing_written(run: Path) -> None:
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["config.yaml", "config.mk", "stage-folds.yaml", "stage-train.yaml", "stage-predict.yaml"])


@pytest.fixture
def fresh_run(tmp_path, digits_corpus) -> Path:
    write_config(tmp_path / "configs", "tiny", digits_corpus)
    run = tmp_path / "runs" / "tiny"
    assert run_cli("config", "tiny", "--configs", str(tmp_path / "configs"), "--run-dir", str(run)).returncode == 0
    return run


def launch_fold(capsys, run: Path, engine: str, *options: str) -> tuple[int, str]:
    """`foldvision launch <engine> <options> -- python -m foldvision train <run> --fold 0`, in this process."""
    return stage(capsys, "launch", engine, *options, "--", *fold_command(run, "train", 0))


@pytest.mark.parametrize("engine,module,extra", [("ray", "ray", "ray"), ("slurm", "submitit", "slurm")])
def test_engine_not_installed(fresh_run, capsys, monkeypatch, engine, module, extra):
    real = launch.importlib.util.find_spec
    monkeypatch.setattr(launch.importlib.util, "find_spec", lambda name, *a: None if name == module else real(name))
    code, err = launch_fold(capsys, fresh_run, engine, *(["--local"] if engine == "slurm" else []))
    assert code == 2
    assert f"pip install 'foldvision[{extra}]'" in one_error_line(err)
    nothing_written(fresh_run)


def test_no_command_after_the_dashes(tmp_path, capsys):
    for argv in (["ray"], ["slurm", "--local"], ["ray", "--num-cpus", "2", "--"]):
        code, err = stage(capsys, "launch", *argv)
        assert code == 2 and "give the command to run after --" in one_error_line(err)
    assert not list(tmp_path.iterdir())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_address_nobody_listens_on(fresh_run, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port()}")
    start = time.monotonic()
    code, err = launch_fold(capsys, fresh_run, "ray")
    assert code == 2 and "no Ray cluster answers" in one_error_line(err)
    assert time.monotonic() - start < 10
    nothing_written(fresh_run)


def test_ray_address_that_is_not_ray(fresh_run, capsys, monkeypatch):
    """A port that accepts connections but never speaks Ray's protocol: ray.init alone would wait minutes."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{server.getsockname()[1]}")
        start = time.monotonic()
        code, err = launch_fold(capsys, fresh_run, "ray", "--connect-timeout", "3")
    assert code == 2 and "no Ray cluster answered within 3 s" in one_error_line(err)
    assert time.monotonic() - start < 15
    nothing_written(fresh_run)


def test_num_cpus_with_a_cluster_address(fresh_run, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    code, err = launch_fold(capsys, fresh_run, "ray", "--num-cpus", "2")
    assert code == 2 and "--num-cpus sizes a local cluster" in one_error_line(err)


@pytest.mark.slow
def test_gpus_per_task_on_a_cluster_without_gpus(fresh_run, capsys, monkeypatch):
    monkeypatch.setenv("RAY_DEDUP_LOGS", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code, err = launch_fold(capsys, fresh_run, "ray", "--num-cpus", "1", "--gpus-per-task", "1")
    assert code == 2 and "this Ray cluster has no GPUs" in one_error_line(err)
    nothing_written(fresh_run)


@pytest.mark.skipif(sys.platform != "linux", reason="checks the GPUs of this Linux machine")
def test_slurm_without_slurm_or_gpus(fresh_run, capsys, monkeypatch):
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    code, err = launch_fold(capsys, fresh_run, "slurm")
    assert code == 2 and "sbatch not found" in one_error_line(err) and "--local" in err
    monkeypatch.setattr(launch, "_visible_gpus", lambda: 0)
    code, err = launch_fold(capsys, fresh_run, "slurm", "--local", "--gpus-per-task", "1")
    assert code == 2 and "this machine has 0 GPUs" in one_error_line(err)
    nothing_written(fresh_run)


def test_bad_arguments(fresh_run, capsys):
    code, err = launch_fold(capsys, fresh_run, "slurm", "--local", "--slurm", "account")
    assert code == 2 and "write key=value" in one_error_line(err)
    nothing_written(fresh_run)


@pytest.mark.slow
def test_unknown_fold(tmp_path, digits_corpus):
    """make checks FOLDS against the run's folds before any job starts (no job, no submitit folder)."""
    tiny_config(tmp_path, digits_corpus, n_folds=2)
    result = make(tmp_path, "train", FOLDS="7", LAUNCHER="slurm", LAUNCH_ARGS="--local")
    run = tmp_path / "runs" / "tiny"
    assert result.returncode != 0 and "FOLDS=7" in one_error_line(result.stderr)
    assert not list(run.glob("fold[0-9]*")) and not (run / "slurm").exists()
