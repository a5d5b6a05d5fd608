"""Past one machine: fan the folds of one or more runs out over Ray tasks or a Slurm array (submitit).

    foldvision launch ray runs/<name> [runs/<other> ...] [--folds 0 2] [--gpus-per-task 1 | --cpus-per-task N]
                      [--retries 3] [--num-cpus N] [--predict SUBMISSION]
    foldvision launch slurm runs/<name> [...] [--folds 0 2] [--partition P] [--gpus-per-task 1]
                      [--cpus-per-task N] [--timeout-min 60] [--retries 3] [--local] [--predict SUBMISSION]
    make train LAUNCHER=ray      (resolves the config first, as every make target does, then launches)

The engines schedule; foldvision only says what to run. Every task runs the stage command make runs,
`python -m foldvision train runs/<name> --fold K` (the Python of the machine that runs it), against a `runs/`
folder that every node sees at the same path, from the driver's working directory (a relative `data.dir`
resolves there too). A fold is done when its `oof.csv` is newer than `stage-train.yaml` and `folds.csv` (make's
rule), so re-running the command trains only the unfinished folds, and a retried or requeued fold resumes from
its `last.pt` (the train stage does that). When every fold of a run is done, the driver runs
`foldvision score` (and, with --predict, `predict --fold K` for each fold as tasks, then `predict --out`).

Ray (`pip install 'foldvision[ray]'`): one plain task per (run, fold), named `<run>/fold<k>` so Ray prefixes its
forwarded output with it, with `num_gpus` (default 1 when the cluster has GPUs) or `num_cpus`. It joins the
cluster at RAY_ADDRESS when set (checked within --connect-timeout seconds) or starts a local one. Ray retries a
task whose worker or node died (`max_retries`) and one whose stage process was killed by a signal
(`retry_exceptions`); a stage that exits with an error is not retried. A stage process dies with the task that
started it (PR_SET_PDEATHSIG), so a retry never races an orphan on the same fold.

Slurm (`pip install 'foldvision[slurm]'`): one array job (`executor.map_array`), one task per (run, fold); the
callable is a `submitit.helpers.Checkpointable`, so on pre-emption or timeout submitit requeues it (at most
--retries timeouts) and the fold resumes from `last.pt`. `--local` runs the array on this machine with
submitit's LocalExecutor, every task at once: the only way the tests exercise this path, since they have no
Slurm cluster. The driver waits for the array and prints each task's log, prefixed by its fold, as it ends.
submitit's own files (pickles, logs) go to `runs/<name>/slurm/`.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from foldvision.errors import UserError
from foldvision.run import Run, load_run_config, submission_csv

try:  # the Slurm callable must be a Checkpointable; the module still imports without submitit
    from submitit.helpers import Checkpointable as _Checkpointable
    from submitit.helpers import DelayedSubmission as _DelayedSubmission
except ImportError:  # `launch slurm` says how to install it before anything uses this
    _Checkpointable = object
    _DelayedSubmission = None

# what a task's stage process gets from the driver's environment (a local cluster inherits it all; a remote
# node does not); credentials stay on the nodes (`wandb login` there), they are not shipped with the task
FORWARD_ENV = ("WANDB_", "HF_", "NO_ALBUMENTATIONS_UPDATE", "FOLDVISION_")
SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)$")
LOG_TAIL = 400  # lines of a stage's output kept in its result
PR_SET_PDEATHSIG = 1


# ---- one stage command, wherever it runs ---------------------------------------------------------------
@dataclass(frozen=True)
class Stage:
    """`python -m foldvision <stage> <run> [--fold K]`, run from `cwd` with `env` on top of the node's."""

    stage: str  # train, predict
    run: str  # absolute path of the run folder
    fold: int
    cwd: str
    env: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def label(self) -> str:
        return f"{Path(self.run).name}/fold{self.fold}" + ("" if self.stage == "train" else f"-{self.stage}")

    def argv(self) -> list[str]:
        return ["-m", "foldvision", self.stage, self.run, "--fold", str(self.fold)]


@dataclass
class StageResult:
    label: str
    seconds: float
    resumed: bool  # last.pt was there when the stage started: the train stage resumed from it
    log: list[str]  # the stage's output (its last LOG_TAIL lines)


class StageFailed(Exception):
    """The stage exited with an error of its own (status 1 or 2): retrying would fail again."""

    def __init__(self, label: str, returncode: int, tail: list[str]):
        super().__init__(label, returncode, tail)  # args rebuild it when Ray or submitit unpickle it
        self.label, self.returncode, self.tail = label, returncode, tail

    def __str__(self) -> str:
        last = next((line for line in reversed(self.tail) if line.strip()), "")
        return f"{self.label}: exited with status {self.returncode}" + (f" ({last.strip()})" if last else "")


class StageKilled(StageFailed):
    """The stage process died by a signal (SIGKILL from the OOM killer, a pre-emption, a kill): Ray retries it."""

    def __str__(self) -> str:
        try:
            name = signal.Signals(-self.returncode).name
        except ValueError:  # 128+N from a shell
            name = f"a signal (exit status {self.returncode})"
        return f"{self.label}: killed by {name}"


class NotShared(StageFailed):
    """The node that got the task does not see the run folder or the working directory at the driver's path."""

    def __str__(self) -> str:
        return f"{self.label}: {self.tail[0]}"


def _die_with_parent(prctl, parent: int) -> None:  # pragma: no cover - runs in the forked child
    """SIGKILL this child when the process that started it dies (a Ray worker killed, a Slurm task requeued),
    so a retried fold never has a second trainer beside it. Only a C call here: the child of a threaded
    process (a Ray worker) must not import or allocate before exec."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _parent_death_hook():
    """The preexec_fn that ties a stage process to this one (Linux; elsewhere None)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # noqa: PLC0415 - here, in the parent, never in the forked child

    return functools.partial(_die_with_parent, ctypes.CDLL(None, use_errno=True).prctl, os.getpid())


def run_stage_process(stage: Stage, on_start=None) -> StageResult:
    """Run the stage command to its end, echoing its output line by line; raise StageKilled / StageFailed."""
    for folder in (stage.run, stage.cwd):
        if not Path(folder).is_dir():
            raise NotShared(stage.label, 2, [f"{folder} is not on {socket.gethostname()}: every node needs the "
                                             "project and runs/ folders at the driver's paths (a shared file system)"])
    resumed = stage.stage == "train" and Run(stage.run).fold(stage.fold).last_pt.is_file()
    env = {**os.environ, **stage.env, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    tail: deque[str] = deque(maxlen=LOG_TAIL)
    proc = subprocess.Popen([sys.executable, *stage.argv()], cwd=stage.cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                            preexec_fn=_parent_death_hook())
    if on_start is not None:
        on_start(proc)
    with proc.stdout:
        for line in proc.stdout:
            print(line, end="", flush=True)
            tail.append(line.rstrip("\n"))
    code = proc.wait()
    if code < 0 or code > 128:  # a signal (negative), or a shell's 128+N: not the stage's own verdict
        raise StageKilled(stage.label, code, list(tail))
    if code != 0:
        raise StageFailed(stage.label, code, list(tail))
    return StageResult(stage.label, time.perf_counter() - start, resumed, list(tail))


# ---- what to run ----------------------------------------------------------------------------------------
def _newer(target: Path, *sources: Path) -> bool:
    """make's test: the target exists and is not older than any source that exists."""
    if not target.is_file():
        return False
    mtime = target.stat().st_mtime_ns
    return all(not s.is_file() or s.stat().st_mtime_ns <= mtime for s in sources)


def check_runs(paths: list[Path], folds: list[int] | None, predict: Path | None) -> list[Run]:
    """Run folders with a resolved config; a missing one is a one-line error before anything is written."""
    if predict is not None and folds is not None:
        raise UserError("--predict ensembles every fold: leave out --folds")
    if predict is not None and len(paths) > 1 and predict.suffix == ".csv":
        raise UserError(f"--predict {predict}: with several runs, name a folder (each run gets <folder>/<run>.csv)")
    runs = []
    for path in paths:
        run = Run(path.resolve())
        if not run.config_yaml.is_file():
            raise UserError(f"{path}: no config.yaml; resolve the config first (foldvision config <exp> "
                            f"--run-dir {path}, or make train LAUNCHER=... EXP=<exp>)")
        if path.resolve() in [r.root for r in runs]:
            raise UserError(f"{path}: named twice")
        runs.append(run)
    return runs


def driver_stage(*argv: str) -> None:
    """A summary stage (folds, score, predict --out) in the driver, its output passed through."""
    code = subprocess.run([sys.executable, "-m", "foldvision", *argv]).returncode
    if code != 0:
        raise LaunchFailed(f"foldvision {' '.join(argv)} exited with status {code} (its error is above)",
                           code if 0 < code < 128 else 1)


def ensure_folds(run: Run) -> list[int]:
    """Make the split in the driver when it is missing or stale (make's folds.csv rule); its fold numbers."""
    if not _newer(run.folds_csv, run.stage_yaml("folds")):
        driver_stage("folds", str(run.root))
    return run.read_split().folds


def train_stages(runs: list[Run], folds: list[int] | None, env: dict) -> tuple[list[Stage], dict[Run, list[int]]]:
    """The folds to train (missing or stale oof.csv), and every run's folds."""
    stages, all_folds = [], {}
    for run in runs:
        all_folds[run] = ensure_folds(run)
        chosen = folds if folds is not None else all_folds[run]
        unknown = sorted(set(chosen) - set(all_folds[run]))
        if unknown:
            raise UserError(f"--folds {unknown[0]}: {run.folds_csv} has folds {all_folds[run]}")
        for k in chosen:
            if not _newer(run.fold(k).oof_csv, run.stage_yaml("train"), run.folds_csv):
                stages.append(Stage("train", str(run.root), k, os.getcwd(), env))
    return stages, all_folds


def predict_stages(runs: list[Run], all_folds: dict[Run, list[int]], env: dict) -> list[Stage]:
    """Each fold model's test.csv that is missing or stale (make's fold%/test.csv rule)."""
    return [Stage("predict", str(run.root), k, os.getcwd(), env) for run in runs for k in all_folds[run]
            if not _newer(run.fold(k).test_csv, run.stage_yaml("predict"), run.fold(k).oof_csv, run.fold(k).best_pt)]


def summarize(runs: list[Run], all_folds: dict[Run, list[int]], predict: Path | None) -> None:
    """score (and predict --out) in the driver for every run whose folds are all done, when stale."""
    for run in runs:
        oofs = [run.fold(k).oof_csv for k in all_folds[run]]
        if not all(_newer(oof, run.stage_yaml("train"), run.folds_csv) for oof in oofs):
            print(f"{run.root.name}: not every fold is trained; score it when they are", flush=True)
            continue
        if not _newer(run.scores_json, *oofs):
            driver_stage("score", str(run.root))
        if predict is not None:
            out = submission_path(predict, run, len(runs))
            tests = [run.fold(k).test_csv for k in all_folds[run]]
            if not _newer(out, run.stage_yaml("predict"), *tests, *oofs):
                driver_stage("predict", str(run.root), "--out", str(out))


def submission_path(predict: Path, run: Run, n_runs: int) -> Path:
    """--predict names the submission file of one run, or the folder of several (<folder>/<run>.csv)."""
    if n_runs == 1 and predict.suffix == ".csv":
        return predict
    return submission_csv(predict, run.root.name)


def forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV) and not SECRET_ENV.search(k)}


def _raise_failures(failures: list[str], tasks: int) -> None:
    """One `error:` line per failed task, then a LaunchFailed saying how to retry (nothing when none failed)."""
    if failures:
        for line in failures:
            say(f"error: {line}")
        raise LaunchFailed(f"{len(failures)} of {tasks} tasks failed - re-run the same command to "
                           "retry the unfinished folds")


class LaunchFailed(Exception):
    """A task or a driver stage failed: its own log says why; the exit status is the stage's (or 1)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def require(module: str, extra: str):
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{module} is not installed: pip install 'foldvision[{extra}]' (or pip install {module})")
    return importlib.import_module(module)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- Ray ----------------------------------------------------------------------------------------------
PROBE = ("import os, ray; ray.init(address=os.environ['RAY_ADDRESS'], log_to_driver=False); "
         "print(ray.cluster_resources().get('CPU', 0)); ray.shutdown()")


def _probe_address(address: str, timeout: float) -> None:
    """Refuse RAY_ADDRESS unless a Ray cluster answers there within `timeout` s (ray.init alone can wait
    minutes on a port that is open but not Ray's)."""
    where = f"RAY_ADDRESS={address}"
    fix = "start one there (ray start --head) or unset RAY_ADDRESS to run on a local cluster"
    hostport = address.split("://", 1)[-1]
    if address not in ("auto", "local") and ":" in hostport:
        host, _, port = hostport.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=min(timeout, 5.0)).close()
        except (OSError, ValueError) as e:
            raise UserError(f"{where}: no Ray cluster answers ({e}); {fix}") from None
    try:
        probe = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=timeout,
                               env={**os.environ, "RAY_ADDRESS": address})
    except subprocess.TimeoutExpired:
        raise UserError(f"{where}: no Ray cluster answered within {timeout:g} s; {fix}") from None
    if probe.returncode != 0:
        lines = [line for line in probe.stderr.splitlines() if line.strip()]
        reason = lines[-1].split(": ", 1)[-1] if lines else f"exit status {probe.returncode}"
        raise UserError(f"{where}: cannot connect ({reason}); {fix}")


def connect_ray(ray, num_cpus: int | None, timeout: float) -> bool:
    """Join the cluster at RAY_ADDRESS, else start a local one; True when this process started it."""
    address = os.environ.get("RAY_ADDRESS")
    if address and address != "local":  # "local": a new local cluster, as ray.init reads it
        if num_cpus is not None:
            raise UserError(f"--num-cpus sizes a local cluster; RAY_ADDRESS={address} names a running one "
                            "(drop --num-cpus, or unset RAY_ADDRESS)")
        _probe_address(address, timeout)
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError) as e:
            raise UserError(f"RAY_ADDRESS={address}: cannot connect ({str(e).splitlines()[0]})") from None
        return False
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    return True


def task_resources(ray, gpus: float | None, cpus: float) -> dict:
    """num_gpus / num_cpus per task, checked against the cluster: a task no node can hold would wait forever."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    most_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    most_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    if gpus is None:
        gpus = 1 if most_gpus else 0
    elif gpus > 0 and not most_gpus:
        raise UserError(f"--gpus-per-task {gpus:g}: this Ray cluster has no GPUs; leave it out to give each "
                        f"fold --cpus-per-task CPUs")
    elif gpus > most_gpus:
        raise UserError(f"--gpus-per-task {gpus:g}: no node of this Ray cluster has more than {most_gpus:g} GPUs")
    if cpus > most_cpus:
        raise UserError(f"--cpus-per-task {cpus:g}: no node of this Ray cluster has more than {most_cpus:g} CPUs")
    return {"num_gpus": gpus, "num_cpus": cpus}


def ray_stage(stage: Stage) -> StageResult:
    """The Ray task (the function ray.remote wraps; it runs on a worker)."""
    return run_stage_process(stage)


def ray_map(ray, stages: list[Stage], resources: dict, retries: int) -> list[StageResult]:
    """One plain task per stage; results as they end; every failure named, after the others have finished."""
    task = ray.remote(ray_stage)
    pending = {task.options(name=s.label, max_retries=retries, retry_exceptions=[StageKilled],
                            **resources).remote(s): s for s in stages}
    results, failures = [], []
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            stage = pending.pop(done[0])
            try:
                results.append(result := ray.get(done[0]))
                say(f"{result.label}: done in {result.seconds:.1f} s"
                    + (" (resumed from last.pt)" if result.resumed else ""))
            except StageFailed as e:  # Ray's RayTaskError is also an instance of the task's exception
                cause = getattr(e, "cause", e)  # the StageFailed the task raised, without Ray's traceback
                failures.append(type(cause).__str__(cause))
            except ray.exceptions.RayError as e:  # the worker or node died more often than --retries
                failures.append(f"{stage.label}: {str(e).strip().splitlines()[0]} (after {retries} retries)")
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref, force=True)  # kills the workers; their stage processes die with them
        raise
    _raise_failures(failures, len(stages))
    return results


@dataclass
class Campaign:
    """What a launch did: every task's result, and where the time went (the benchmark reads it)."""

    results: list[StageResult] = field(default_factory=list)
    startup_s: float = 0.0  # connecting to (or starting) the cluster
    wall_s: float = 0.0


def launch_ray(paths: list[Path], folds: list[int] | None = None, gpus: float | None = None, cpus: float = 1,
               retries: int = 3, num_cpus: int | None = None, predict: Path | None = None,
               connect_timeout: float = 20.0) -> Campaign:
    start = time.perf_counter()
    runs = check_runs(paths, folds, predict)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # read at import: each fold's lines as they are, not "[repeated 2x]"
    ray = require("ray", "ray")
    started = connect_ray(ray, num_cpus, connect_timeout)
    campaign = Campaign(startup_s=time.perf_counter() - start)
    try:
        resources = task_resources(ray, gpus, cpus)
        cluster = ray.cluster_resources()
        say(f"ray: {'started a local cluster' if started else 'joined the cluster at ' + os.environ['RAY_ADDRESS']}"
            f" of {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs in {campaign.startup_s:.1f} s; "
            f"{resources['num_gpus']:g} GPU and {resources['num_cpus']:g} CPU per task")
        env = forwarded_env()
        stages, all_folds = train_stages(runs, folds, env)
        if stages:
            say(f"ray: training {len(stages)} folds: {' '.join(s.label for s in stages)}")
            campaign.results += ray_map(ray, stages, resources, retries)
        if predict is not None:
            predictions = predict_stages(runs, all_folds, env)
            if predictions:
                campaign.results += ray_map(ray, predictions, resources, retries)
        if folds is None:  # like make train FOLDS="0 2": a subset is not scored
            summarize(runs, all_folds, predict)
    finally:
        if started:
            ray.shutdown()
    campaign.wall_s = time.perf_counter() - start
    return campaign


# ---- Slurm (submitit) -----------------------------------------------------------------------------------
class SlurmStage(_Checkpointable):
    """The array task's callable: the stage command; on pre-emption or timeout, requeued with the same stage
    (the fold then resumes from last.pt)."""

    def __init__(self):
        self._proc = None

    def __call__(self, stage: Stage) -> StageResult:
        return run_stage_process(stage, on_start=lambda proc: setattr(self, "_proc", proc))

    def checkpoint(self, stage: Stage):
        proc = self._proc
        if proc is not None and proc.poll() is None:  # stop the stage now: it resumes from its last epoch
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        return _DelayedSubmission(SlurmStage(), stage)  # a fresh callable: a live process does not pickle

    def __getstate__(self):
        return {"_proc": None}


def slurm_gpus(local: bool, gpus: int | None) -> int:
    """GPUs per task; checked here only with --local (a cluster's partitions say what they hold)."""
    if not local:
        if shutil.which("sbatch") is None:
            raise UserError("no Slurm here (sbatch not found): run this on the cluster's login node, or add "
                            "--local to run the array on this machine")
        return 1 if gpus is None else gpus
    visible = _visible_gpus()
    if gpus is None:
        return 1 if visible else 0
    if gpus > visible:
        raise UserError(f"--gpus-per-task {gpus}: this machine has {visible} GPUs (--local runs here)")
    return gpus


def slurm_parameters(partition: str | None, gpus: int, cpus: int | None, timeout_min: int,
                     extra: list[str]) -> dict:
    params = {"timeout_min": timeout_min, "gpus_per_node": gpus, "tasks_per_node": 1, "nodes": 1,
              "slurm_partition": partition, "cpus_per_task": cpus}
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--slurm {item!r}: write key=value, e.g. --slurm account=mylab")
        params[f"slurm_{key.removeprefix('slurm_')}"] = value
    return {k: v for k, v in params.items() if v is not None}


def slurm_executor(submitit, folder: Path, local: bool, params: dict, retries: int):
    """The array's executor (it creates `folder`): Slurm's, or submitit's LocalExecutor with --local."""
    if local:
        executor = submitit.LocalExecutor(folder, max_num_timeout=retries)
        executor.update_parameters(**{k: v for k, v in params.items() if not k.startswith("slurm_")})
        return executor
    executor = submitit.AutoExecutor(folder, cluster="slurm", slurm_max_num_timeout=retries)
    try:
        executor.update_parameters(**params)
    except (ValueError, TypeError) as e:  # an sbatch parameter submitit does not know
        raise UserError(f"slurm parameters: {str(e).splitlines()[0]}") from None
    return executor


def _visible_gpus() -> int:
    try:
        import torch  # noqa: PLC0415 - only --local asks

        return torch.cuda.device_count()
    except ImportError:
        return 0


def slurm_map(submitit, executor, stages: list[Stage], local: bool) -> list[StageResult]:
    jobs = executor.map_array(SlurmStage(), stages)
    by_id = {job.job_id: stage for job, stage in zip(jobs, stages)}
    say(f"slurm: array of {len(jobs)} tasks submitted ({', '.join(j.job_id for j in jobs)}); logs in "
        f"{executor.folder}")
    results, failures = [], []
    try:
        for job in submitit.helpers.as_completed(jobs, poll_frequency=1 if local else 30):
            stage = by_id[job.job_id]
            for line in (job.stdout() or "").splitlines():
                print(f"[{stage.label}] {line}", flush=True)
            try:
                results.append(result := job.result())
                say(f"{result.label}: done in {result.seconds:.1f} s"
                    + (" (resumed from last.pt)" if result.resumed else ""))
            except Exception as e:  # noqa: BLE001 - submitit's FailedJobError / UncompletedJobError wrap the cause
                lines = [line for line in str(e).splitlines() if line.strip()]
                failures.append(f"{stage.label}: {lines[-1] if lines else type(e).__name__}")
    except KeyboardInterrupt:
        for job in jobs:
            job.cancel(check=False)
        raise
    _raise_failures(failures, len(stages))
    return results


def launch_slurm(paths: list[Path], folds: list[int] | None = None, partition: str | None = None,
                 gpus: int | None = None, cpus: int | None = None, timeout_min: int = 60, retries: int = 3,
                 local: bool = False, predict: Path | None = None, extra: list[str] = ()) -> Campaign:
    start = time.perf_counter()
    runs = check_runs(paths, folds, predict)
    submitit = require("submitit", "slurm")
    params = slurm_parameters(partition, slurm_gpus(local, gpus), cpus, timeout_min, list(extra))
    campaign = Campaign()
    env = forwarded_env()
    stages, all_folds = train_stages(runs, folds, env)
    predicting = predict is not None
    if stages or predicting:
        executor = slurm_executor(submitit, runs[0].root / "slurm", local, params, retries)
        campaign.startup_s = time.perf_counter() - start
        if stages:
            campaign.results += slurm_map(submitit, executor, stages, local)
        predictions = predict_stages(runs, all_folds, env) if predicting else []
        if predictions:
            campaign.results += slurm_map(submitit, executor, predictions, local)
    if folds is None:
        summarize(runs, all_folds, predict)
    campaign.wall_s = time.perf_counter() - start
    return campaign


# ---- command line ---------------------------------------------------------------------------------------
def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text} is negative")
        return value
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="foldvision launch", description=__doc__.split("\n\n")[0])
    engines = p.add_subparsers(dest="engine", required=True, metavar="{ray,slurm}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("runs", type=Path, nargs="+", help="run folders holding config.yaml (runs/<name>)")
    common.add_argument("--folds", type=int, nargs="+", metavar="K", help="only these folds (no scoring then, as make)")
    common.add_argument("--retries", type=positive(int), default=3,
                        help="Ray: retries of a task whose process or node died; Slurm: requeues on timeout")
    common.add_argument("--predict", type=Path, metavar="SUBMISSION",
                        help="also predict: each fold as a task, then the submission (a folder for several runs)")
    ray = engines.add_parser("ray", parents=[common], help="Ray tasks on RAY_ADDRESS's cluster or a local one")
    ray.add_argument("--gpus-per-task", type=positive(float), help="GPUs per fold (default 1 on a GPU cluster)")
    ray.add_argument("--cpus-per-task", type=positive(float), default=1, help="CPUs per fold (default 1)")
    ray.add_argument("--num-cpus", type=positive(int), help="CPUs of the local cluster (default: all)")
    ray.add_argument("--connect-timeout", type=positive(float), default=20.0,
                     help="seconds RAY_ADDRESS's cluster has to answer (default 20)")
    slurm = engines.add_parser("slurm", parents=[common], help="a Slurm array job through submitit")
    slurm.add_argument("--partition", help="Slurm partition")
    slurm.add_argument("--gpus-per-task", type=positive(int), help="GPUs per fold (default 1; --local: 1 if any)")
    slurm.add_argument("--cpus-per-task", type=positive(int), help="CPUs per fold")
    slurm.add_argument("--timeout-min", type=positive(int), default=60, help="time limit of one attempt")
    slurm.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch parameter, e.g. --slurm account=mylab --slurm mem=32G")
    slurm.add_argument("--local", action="store_true",
                       help="run the array on this machine with submitit's LocalExecutor (what the tests do)")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        if args.engine == "ray":
            launch_ray(args.runs, args.folds, args.gpus_per_task, args.cpus_per_task, args.retries, args.num_cpus,
                       args.predict, args.connect_timeout)
        else:
            launch_slurm(args.runs, args.folds, args.partition, args.gpus_per_task, args.cpus_per_task,
                         args.timeout_min, args.retries, args.local, args.predict, args.slurm)
    except LaunchFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.status)


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
