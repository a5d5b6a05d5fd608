"""Past one machine: run one job's command as a Ray task or a Slurm job (submitit), and wait for it.

    foldvision launch ray [--label L] [--gpus-per-task G | --cpus-per-task C] [--retries 3] [--num-cpus N]
                          [--connect-timeout 20] -- COMMAND ...
    foldvision launch slurm [--label L] [--folder DIR] [--partition P] [--gpus-per-task G] [--cpus-per-task C]
                            [--timeout-min 60] [--retries 3] [--slurm KEY=VALUE ...] [--local] -- COMMAND ...
    make -j 4 train LAUNCHER=ray [LAUNCH_ARGS="--gpus-per-task 1"]     (what the Makefile's fold rules run)

A launcher is a recipe prefix, like the GPU slot: make decides which folds are stale and how many jobs run at
once (-j), and a fold rule's recipe is `foldvision launch ray --label <run>/fold<k> -- python -m foldvision
train runs/<run> --fold <k>`. This module never looks at the run folder: it carries one command to where the
engine places it, forwards its output under the job's label, and exits with the command's status, so make
sees the job as if it had run here. The command runs from the driver's working directory, which every node
must see at the same path (a shared file system), with the driver's FORWARD_ENV variables (no secrets).

Ray (`pip install 'foldvision[ray]'`): one plain task named by --label, so Ray prefixes every forwarded line
with it, with `num_gpus` (default 1 when the cluster has GPUs) or `num_cpus`. It joins the cluster at
RAY_ADDRESS when set (checked within --connect-timeout seconds), else starts a local one for this job alone:
every fold job then pays a cluster start-up (seconds), so for a campaign start one cluster (`ray start --head`)
and set RAY_ADDRESS. Ray retries a task whose worker or node died (`max_retries`) and one whose command was
killed by a signal (`retry_exceptions`); a command that exits with an error is not retried. The command dies
with the task that started it (PR_SET_PDEATHSIG), so a retry never races an orphan on the same fold.

Slurm (`pip install 'foldvision[slurm]'`): one job through `executor.submit`; its callable is a
`submitit.helpers.Checkpointable`, so on pre-emption or timeout submitit requeues it (at most --retries
timeouts) and a train command resumes from its `last.pt`. `--local` runs it on this machine with submitit's
LocalExecutor: the only way the tests exercise this path. submitit's own files go to --folder (the Makefile
gives `runs/<name>/slurm/`); the job's log is printed, each line prefixed by the label, when it ends.
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

try:  # the Slurm callable must be a Checkpointable; the module still imports without submitit
    from submitit.helpers import Checkpointable as _Checkpointable
    from submitit.helpers import DelayedSubmission as _DelayedSubmission
except ImportError:  # `launch slurm` says how to install it before anything uses this
    _Checkpointable = object
    _DelayedSubmission = None

# what a job gets from the driver's environment (a local cluster inherits it all; a remote node does not);
# credentials stay on the nodes (`wandb login` there), they are not shipped with the job
FORWARD_ENV = ("WANDB_", "HF_", "NO_ALBUMENTATIONS_UPDATE", "FOLDVISION_")
SECRET_ENV = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD)$")
# make's job count is this machine's: the engine sizes the job (Ray's num_cpus, Slurm's cpus_per_task)
NOT_FORWARDED = ("FOLDVISION_JOBS",)
LOG_TAIL = 400  # lines of a job's output kept in its result
PR_SET_PDEATHSIG = 1


# ---- one command, wherever it runs -------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """`argv`, run from `cwd` with `env` on top of the node's environment."""

    label: str
    argv: tuple[str, ...]
    cwd: str
    env: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass
class JobResult:
    label: str
    seconds: float
    log: list[str]  # the command's output (its last LOG_TAIL lines)


class JobFailed(Exception):
    """The command exited with an error of its own: retrying would fail again."""

    def __init__(self, label: str, returncode: int, tail: list[str]):
        super().__init__(label, returncode, tail)  # args rebuild it when Ray or submitit unpickle it
        self.label, self.returncode, self.tail = label, returncode, tail

    def __str__(self) -> str:
        last = next((line for line in reversed(self.tail) if line.strip()), "")
        return f"{self.label}: exited with status {self.returncode}" + (f" ({last.strip()})" if last else "")


class JobKilled(JobFailed):
    """The command died by a signal (SIGKILL from the OOM killer, a pre-emption, a kill): Ray retries it."""

    def __str__(self) -> str:
        try:
            name = signal.Signals(-self.returncode).name
        except ValueError:  # 128+N from a shell
            name = f"a signal (exit status {self.returncode})"
        return f"{self.label}: killed by {name}"


class NotShared(JobFailed):
    """The node that got the job does not see the working directory or the command at the driver's path."""

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
    """The preexec_fn that ties a job's process to this one (Linux; elsewhere None)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # noqa: PLC0415 - here, in the parent, never in the forked child

    return functools.partial(_die_with_parent, ctypes.CDLL(None, use_errno=True).prctl, os.getpid())


def _not_shared(job: Job, what: str) -> NotShared:
    return NotShared(job.label, 2, [f"{what} is not on {socket.gethostname()}: every node needs the project "
                                    "and runs/ folders at the driver's paths (a shared file system)"])


def run_job_process(job: Job, on_start=None) -> JobResult:
    """Run the command to its end, echoing its output line by line; raise JobKilled / JobFailed / NotShared."""
    if not Path(job.cwd).is_dir():
        raise _not_shared(job, job.cwd)
    env = {k: v for k, v in {**os.environ, **job.env}.items() if k not in NOT_FORWARDED}
    start = time.perf_counter()
    tail: deque[str] = deque(maxlen=LOG_TAIL)
    try:
        proc = subprocess.Popen(job.argv, cwd=job.cwd, env={**env, "PYTHONUNBUFFERED": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                                bufsize=1, preexec_fn=_parent_death_hook())
    except FileNotFoundError:
        raise _not_shared(job, job.argv[0]) from None
    if on_start is not None:
        on_start(proc)
    with proc.stdout:
        for line in proc.stdout:
            print(line, end="", flush=True)
            tail.append(line.rstrip("\n"))
    code = proc.wait()
    if code < 0 or code > 128:  # a signal (negative), or a shell's 128+N: not the command's own verdict
        raise JobKilled(job.label, code, list(tail))
    if code != 0:
        raise JobFailed(job.label, code, list(tail))
    return JobResult(job.label, time.perf_counter() - start, list(tail))


def forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k.startswith(FORWARD_ENV) and not SECRET_ENV.search(k) and k not in NOT_FORWARDED}


class LaunchFailed(Exception):
    """The job failed: its own log says why; the exit status is the command's (or 1 when it was killed)."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def failed(error: JobFailed) -> LaunchFailed:
    status = error.returncode if 0 < error.returncode < 128 else 1
    return LaunchFailed(type(error).__str__(error), status)


def require(module: str, extra: str):
    if importlib.util.find_spec(module) is None:
        raise UserError(f"{module} is not installed: pip install 'foldvision[{extra}]' (or pip install {module})")
    return importlib.import_module(module)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def done(result: JobResult) -> None:
    say(f"{result.label}: done in {result.seconds:.1f} s")


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
        raise UserError(f"{where}: no Ray cluster answered within {timeout:g} s (one with token authentication "
                        f"needs RAY_AUTH_MODE=token here); {fix}") from None
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
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    return True


def task_resources(ray, gpus: float | None, cpus: float) -> dict:
    """num_gpus / num_cpus of the task, checked against the cluster: a task no node can hold would wait forever."""
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


def ray_job(job: Job) -> JobResult:
    """The Ray task (the function ray.remote wraps; it runs on a worker)."""
    return run_job_process(job)


def ray_wait(ray, job: Job, resources: dict, retries: int) -> JobResult:
    """The job as one plain task, retried when killed; its result, or LaunchFailed naming why."""
    ref = ray.remote(ray_job).options(name=job.label, max_retries=retries, retry_exceptions=[JobKilled],
                                      **resources).remote(job)
    try:
        return ray.get(ref)
    except JobFailed as e:  # Ray's RayTaskError is also an instance of the task's exception
        raise failed(getattr(e, "cause", e)) from None  # the JobFailed the task raised, without Ray's traceback
    except ray.exceptions.RayError as e:  # the worker or node died more often than --retries
        raise LaunchFailed(f"{job.label}: {str(e).strip().splitlines()[0]} (after {retries} retries)") from None
    except KeyboardInterrupt:
        ray.cancel(ref, force=True)  # kills the worker; the command dies with it
        raise


def launch_ray(job: Job, gpus: float | None = None, cpus: float = 1, retries: int = 3,
               num_cpus: int | None = None, connect_timeout: float = 20.0) -> JobResult:
    start = time.perf_counter()
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # read at import: each job's lines as they are, not "[repeated 2x]"
    ray = require("ray", "ray")
    started = connect_ray(ray, num_cpus, connect_timeout)
    try:
        resources = task_resources(ray, gpus, cpus)
        cluster = ray.cluster_resources()
        say(f"ray: {'started a local cluster' if started else 'joined the cluster at ' + os.environ['RAY_ADDRESS']}"
            f" of {cluster.get('CPU', 0):g} CPUs, {cluster.get('GPU', 0):g} GPUs in "
            f"{time.perf_counter() - start:.1f} s; {resources['num_gpus']:g} GPU and {resources['num_cpus']:g} "
            f"CPU for {job.label}")
        result = ray_wait(ray, job, resources, retries)
    finally:
        if started:
            ray.shutdown()
    done(result)
    return result


# ---- Slurm (submitit) -----------------------------------------------------------------------------------
class SlurmJob(_Checkpointable):
    """The Slurm job's callable: the command; on pre-emption or timeout, requeued with the same job (a train
    command then resumes from last.pt)."""

    def __init__(self):
        self._proc = None

    def __call__(self, job: Job) -> JobResult:
        return run_job_process(job, on_start=lambda proc: setattr(self, "_proc", proc))

    def checkpoint(self, job: Job):
        proc = self._proc
        if proc is not None and proc.poll() is None:  # stop the command now: it resumes from its last epoch
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        return _DelayedSubmission(SlurmJob(), job)  # a fresh callable: a live process does not pickle

    def __getstate__(self):
        return {"_proc": None}


def slurm_gpus(local: bool, gpus: int | None) -> int:
    """GPUs of the job; checked here only with --local (a cluster's partitions say what they hold)."""
    if not local:
        if shutil.which("sbatch") is None:
            raise UserError("no Slurm here (sbatch not found): run this on the cluster's login node, or add "
                            "--local to run the job on this machine")
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
    """The job's executor (it creates `folder`): Slurm's, or submitit's LocalExecutor with --local."""
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


def slurm_wait(submitit, submitted, label: str, local: bool) -> JobResult:
    """Wait for the job, print its log under the label, and return its result (or raise LaunchFailed)."""
    try:
        for _ in submitit.helpers.as_completed([submitted], poll_frequency=1 if local else 30):
            pass
    except KeyboardInterrupt:
        submitted.cancel(check=False)
        raise
    for line in (submitted.stdout() or "").splitlines():
        print(f"[{label}] {line}", flush=True)
    try:
        return submitted.result()
    except Exception as e:  # noqa: BLE001 - submitit's FailedJobError / UncompletedJobError wrap the cause
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise LaunchFailed(f"{label}: {lines[-1] if lines else type(e).__name__}") from None


def launch_slurm(job: Job, folder: Path, partition: str | None = None, gpus: int | None = None,
                 cpus: int | None = None, timeout_min: int = 60, retries: int = 3, local: bool = False,
                 extra: list[str] = ()) -> JobResult:
    submitit = require("submitit", "slurm")
    params = slurm_parameters(partition, slurm_gpus(local, gpus), cpus, timeout_min, list(extra))
    executor = slurm_executor(submitit, folder, local, params, retries)
    submitted = executor.submit(SlurmJob(), job)
    say(f"slurm: {job.label} submitted as job {submitted.job_id}; its files in {executor.folder}")
    result = slurm_wait(submitit, submitted, job.label, local)
    done(result)
    return result


# ---- command line ---------------------------------------------------------------------------------------
def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text} is negative")
        return value
    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="foldvision launch", description=__doc__.split("\n\n")[0],
                                usage="foldvision launch {ray,slurm} [options] -- COMMAND ...")
    engines = p.add_subparsers(dest="engine", required=True, metavar="{ray,slurm}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--label", default="job", help="the job's name on each forwarded line (make: <run>/fold<k>)")
    common.add_argument("--retries", type=positive(int), default=3,
                        help="Ray: retries of a task whose process or node died; Slurm: requeues on timeout")
    ray = engines.add_parser("ray", parents=[common], help="a Ray task on RAY_ADDRESS's cluster or a local one")
    ray.add_argument("--gpus-per-task", type=positive(float), help="GPUs of the job (default 1 on a GPU cluster)")
    ray.add_argument("--cpus-per-task", type=positive(float), default=1, help="CPUs of the job (default 1)")
    ray.add_argument("--num-cpus", type=positive(int), help="CPUs of the local cluster (default: all)")
    ray.add_argument("--connect-timeout", type=positive(float), default=20.0,
                     help="seconds RAY_ADDRESS's cluster has to answer (default 20)")
    slurm = engines.add_parser("slurm", parents=[common], help="a Slurm job through submitit")
    slurm.add_argument("--folder", type=Path, default=Path("slurm"), help="submitit's pickles and logs")
    slurm.add_argument("--partition", help="Slurm partition")
    slurm.add_argument("--gpus-per-task", type=positive(int), help="GPUs of the job (default 1; --local: 1 if any)")
    slurm.add_argument("--cpus-per-task", type=positive(int), help="CPUs of the job")
    slurm.add_argument("--timeout-min", type=positive(int), default=60, help="time limit of one attempt")
    slurm.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch parameter, e.g. --slurm account=mylab --slurm mem=32G")
    slurm.add_argument("--local", action="store_true",
                       help="run the job on this machine with submitit's LocalExecutor (what the tests do)")
    return p


def split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """The launcher's own options, and the command after the first `--` (argparse would read its options)."""
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        if any(a in ("-h", "--help") for a in argv):
            return argv, []
        raise UserError("foldvision launch: give the command to run after --, e.g. foldvision launch ray -- "
                        "python -m foldvision train runs/<exp> --fold 0")
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1:]


def main(argv: list[str] | None = None) -> None:
    own, command = split_command(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(own)
    job = Job(args.label, tuple(command), os.getcwd(), forwarded_env())
    try:
        if args.engine == "ray":
            launch_ray(job, args.gpus_per_task, args.cpus_per_task, args.retries, args.num_cpus,
                       args.connect_timeout)
        else:
            launch_slurm(job, args.folder, args.partition, args.gpus_per_task, args.cpus_per_task,
                         args.timeout_min, args.retries, args.local, args.slurm)
    except LaunchFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.status)


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
