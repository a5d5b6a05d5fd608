"""Command-line values reach foldvision exactly as written (issue 19): neither make nor the shell reads them.

Each hostile value holds a `;`, a `$(…)` (the shell's and make's), a backtick, spaces and a `*`; each of those
would `touch` a marker file if anything ran it. foldvision's own reply (the resolved config, or the one error line
that quotes the value) shows what it received.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, make_corpus, write_config
from foldvision import cli
from foldvision.errors import UserError

MARKERS = ("PWNED1", "PWNED2", "PWNED3", "PWNED4")
# every way a shell or make could run something, and a glob that matches files in the repository
HOSTILE = "x;touch PWNED1 $(touch PWNED2) `touch PWNED3` $(shell touch PWNED4) *"


def make(tmp_path: Path, *targets: str, **variables) -> subprocess.CompletedProcess:
    args = {"CONFIGS": tmp_path / "configs", "RUNS": tmp_path / "runs", "SUBMISSIONS": tmp_path / "subs",
            "PY": sys.executable, **variables}
    cmd = ["make", "--no-print-directory", "-C", str(ROOT), *targets, *(f"{k}={v}" for k, v in args.items())]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)


@pytest.fixture
def no_markers(tmp_path):
    """Fails the test when any marker file appeared, here or in the repository (and removes it)."""
    yield
    found = [p for p in [*ROOT.glob("PWNED*"), *tmp_path.rglob("PWNED*")] if p.name in MARKERS]
    for path in found:
        path.unlink()
    assert not found, f"a value was run by a shell or make: {found}"


def test_from_env_splits_like_a_shell_and_runs_nothing(monkeypatch):
    monkeypatch.setenv("ARGS", "data.train_csv='my labels.csv' train.lr=1e-4 model.name=c$(x)d `id` *")
    monkeypatch.setenv("DATA", "/data/my corpus $(x) *")
    monkeypatch.setenv("EMPTY", "")
    argv = cli.from_env(["exp", "--from-env", "ARGS", "--from-env-data", "DATA", "--from-env-data", "EMPTY",
                         "--from-env", "UNSET", "--configs", "c"])
    assert argv == ["exp", "data.train_csv=my labels.csv", "train.lr=1e-4", "model.name=c$(x)d", "`id`", "*",
                    "data.dir=/data/my corpus $(x) *", "--configs", "c"]
    monkeypatch.setenv("ARGS", "data.dir='my corpus")
    with pytest.raises(UserError, match=r"ARGS=.*no closing quotation; quote a value with spaces"):
        cli.from_env(["--from-env", "ARGS"])


@pytest.mark.slow
def test_args_and_data_reach_the_config_as_written(tmp_path, no_markers):
    corpus = make_corpus(tmp_path / "my corpus $(touch PWNED2) *", {"a": 4, "b": 4})
    table = "lab;els $(touch PWNED2) `touch PWNED3` $(shell touch PWNED4) *.csv"
    (corpus / "train.csv").rename(corpus / table)
    write_config(tmp_path / "configs", "x", tmp_path / "elsewhere")
    # ARGS's words are split as a shell would (the quotes group), DATA is one path
    args = f"data.train_csv='{table}' model.name=c$(x)d model.pretrained_file=a;touch\\ PWNED1"
    result = make(tmp_path, "folds", EXP="x", ARGS=args, DATA=str(corpus))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    config = yaml.safe_load((tmp_path / "runs" / "x" / "config.yaml").read_text())
    assert config["data"]["dir"] == str(corpus)
    assert config["data"]["train_csv"] == table
    assert config["model"]["name"] == "c$(x)d"
    assert config["model"]["pretrained_file"] == "a;touch PWNED1"
    assert (tmp_path / "runs" / "x" / "folds.csv").is_file()


# (variable, its value, the target, other variables, what foldvision's error line must quote)
CASES = {
    "GRID": ("GRID", f"train.sampler=imbalanced,'{HOSTILE}'", "ablate", {}, HOSTILE),
    "MEMBERS": ("MEMBERS", "* " + HOSTILE.removesuffix(" *"), "ensemble", {"NAME": "blend"}, "/runs/*"),
    "METHOD": ("METHOD", HOSTILE, "ensemble", {"NAME": "blend", "MEMBERS": "a"}, HOSTILE),
    "ROUNDS": ("ROUNDS", HOSTILE, "ensemble", {"NAME": "blend", "MEMBERS": "a"}, HOSTILE),
    "LAUNCHER": ("LAUNCHER", HOSTILE, "predict", {}, HOSTILE),
    "LAUNCH_ARGS": ("LAUNCH_ARGS", HOSTILE, "predict", {"LAUNCHER": "ray"}, HOSTILE),
    "BENCH": ("BENCH", HOSTILE, "bench", {}, HOSTILE),
    "NPROC": ("NPROC", HOSTILE, "train", {}, HOSTILE),
    "FOLDS": ("FOLDS", HOSTILE, "train", {}, f"FOLDS='{HOSTILE}': write fold numbers"),
    "N_FOLDS": ("N_FOLDS", "2;touch PWNED1", "train", {}, "N_FOLDS='2;touch PWNED1': write the number of folds"),
    "NAME": ("NAME", "a;b$(id)`id`*", "folds", {}, "use letters, digits and . - _ + /"),
    "TEST": ("TEST", HOSTILE, "predict", {}, HOSTILE),
    "SAMPLE": ("SAMPLE", HOSTILE, "predict", {"TEST": "."}, HOSTILE),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_a_value_is_never_run_and_arrives_as_written(tmp_path, no_markers, case):
    variable, value, target, others, quoted = CASES[case]
    write_config(tmp_path / "configs", "x", make_corpus(tmp_path / "c", {"a": 4, "b": 4}))
    result = make(tmp_path, target, EXP="x", **others, **{variable: value})
    assert result.returncode != 0, result.stdout[-2000:]
    assert quoted in result.stderr, result.stderr[-2000:]
