"""Train here, submit there (issue 21): timm hub and local-folder model names, `foldvision package` and
`foldvision infer` on a relocated, read-only package with no network and no training-only library."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch

from foldvision import cli

from conftest import ROOT, Project, make_corpus, stage


def train_then_predict_without(tmp_path, capsys, model_name: str, source: Path) -> dict:
    """Fold 0 of a small corpus trained from `model_name` (pretrained), then predicted once `source` (the folder
    or cache it was loaded from) is deleted: best.pt, as it was after training."""
    corpus = make_corpus(tmp_path / "c", {"0": 8, "1": 6})
    p = Project(tmp_path, corpus, model={"name": model_name, "pretrained": True, "img_size": 32})
    code, err = p.folds(capsys)
    assert code == 0, err
    code, err = p._stage(capsys, "train", str(p.run), "--fold", "0")
    assert code == 0, err
    best = torch.load(p.run / "fold0" / "best.pt", weights_only=True)
    shutil.rmtree(source)
    code, err = p._stage(capsys, "predict", str(p.run), "--fold", "0")
    assert code == 0, err
    probs = pd.read_csv(p.run / "fold0" / "test.csv").filter(like="prob_").to_numpy()
    assert probs.shape == (6, 2) and np.allclose(probs.sum(axis=1), 1.0)
    return best


def test_a_local_dir_model_trains_and_predicts_without_its_folder(tmp_path, capsys):
    """model.name=local-dir:<folder> (timm.models.save_for_hf's layout) is accepted, its pretrained weights are
    loaded from the folder, and best.pt holds the architecture and pretrained config, so predict rebuilds the
    model after the folder is gone."""
    folder = tmp_path / "hub-model"
    timm.models.save_for_hf(timm.create_model("test_convnext", pretrained=False), folder)
    best = train_then_predict_without(tmp_path, capsys, f"local-dir:{folder}", folder)
    assert best["timm"]["architecture"] == "test_convnext"
    assert best["timm"]["pretrained_cfg"]["architecture"] == "test_convnext"
    assert "file" not in best["timm"]["pretrained_cfg"]  # no path of this machine travels with the weights


def test_an_hf_hub_model_trains_from_the_hub_cache_and_predicts_without_the_hub(tmp_path, capsys, monkeypatch):
    """model.name=hf-hub:<repo> is accepted and loaded through huggingface_hub (here from its cache, offline: a
    repo laid out as hf_hub_download leaves it); once the cache is gone, with the hub unreachable, predict
    rebuilds the model from the pretrained config best.pt holds (timm would fetch config.json even for
    pretrained=False)."""
    import huggingface_hub.constants

    cache = tmp_path / "hub-cache"
    snapshot = cache / "models--me--tiny-convnext" / "snapshots" / ("0" * 40)
    timm.models.save_for_hf(timm.create_model("test_convnext", pretrained=False), snapshot)
    (cache / "models--me--tiny-convnext" / "refs").mkdir()
    (cache / "models--me--tiny-convnext" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    best = train_then_predict_without(tmp_path, capsys, "hf-hub:me/tiny-convnext", cache)
    assert best["timm"]["architecture"] == "test_convnext"
    assert best["timm"]["pretrained_cfg"]["hf_hub_id"] == "me/tiny-convnext"


def test_a_local_dir_name_without_timms_config_is_one_line(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "c", {"0": 8, "1": 6})
    p = Project(tmp_path, corpus, model={"name": f"local-dir:{tmp_path / 'nowhere'}", "img_size": 32})
    code, err = p.folds(capsys)
    if code == 0:
        code, err = p._stage(capsys, "train", str(p.run), "--fold", "0")
    assert code == 2 and "Traceback" not in err
    assert "config.json not found" in err and "save_for_hf" in err


# ---- package and infer on a trained digits run --------------------------------------------------------------
# The guard a user's offline notebook amounts to: no TCP/UDP connection (a Unix socket, as the loader's
# workers use, is fine) and none of the training-only libraries importable.
TRAINING_ONLY = ("torchsampler", "pytorch_optimizer", "wandb", "matplotlib", "jinja2", "pandas", "tabulate",
                 "imagehash", "cleanlab", "iterstrat", "ray", "submitit")
GUARD = f"""
import socket, sys
for name in {TRAINING_ONLY!r}:
    sys.modules[name] = None  # `import name` raises ImportError
_connect = socket.socket.connect
def connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        sys.stderr.write(f"NETWORK CALL BLOCKED: {{address}}\\n")
        raise OSError("network blocked by the test")
    return _connect(self, address)
socket.socket.connect = connect
"""


def _sealed(cmd: list[str], read_only: list[Path]) -> list[str]:
    """`cmd` in its own mount and network namespaces (`unshare -m -n`) with `read_only` bind-mounted read-only,
    where this machine allows it: as root, file modes alone do not stop a write. Elsewhere `cmd` as it is (the
    files are chmod-ed read-only, and the socket guard stands for the missing network namespace)."""
    def seal(folders):
        mounts = " && ".join(f'mount --bind "{d}" "{d}" && mount -o remount,bind,ro "{d}"' for d in folders)
        return ["unshare", "-m", "-n", "sh", "-c", f'{mounts} && exec "$@"', "sh"]

    with tempfile.TemporaryDirectory() as scratch:  # can this machine do it? a write there must fail
        probe = subprocess.run([*seal([scratch]), "sh", "-c", f'! touch "{scratch}/x"'], capture_output=True)
    return [*seal(read_only), *cmd] if probe.returncode == 0 else cmd


def _cli(*argv) -> int:
    try:
        cli.main(list(argv))
    except SystemExit as e:
        return e.code or 0
    return 0


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, digits_corpus):
    """A two-fold digits run, predicted as make predict does (fold test.csv files, then the submission), and
    its package: made once for the module."""
    tmp = tmp_path_factory.mktemp("package")
    p = Project(tmp, digits_corpus, data={"channels": 1}, augment={"train": []},
                model={"name": "test_resnet", "img_size": 32}, predict={"tta": ["hflip", "vflip"]})
    for argv in (("config", "exp", "--configs", str(p.configs), "--run-dir", str(p.run)), ("folds", str(p.run)),
                 ("train", str(p.run), "--fold", "0", "1"), ("score", str(p.run)), ("predict", str(p.run), "--fold", "0", "1"),
                 ("predict", str(p.run), "--out", str(p.submission)), ("package", str(p.run), str(tmp / "pkg"))):
        assert _cli(*argv) == 0, argv
    return p, tmp / "pkg"


def _renamed_test_images(p, where):
    """The run's test images and sample under another folder name, far from the corpus."""
    images = shutil.copytree(p.corpus / "test", where / "hidden-test-images")
    sample = shutil.copy(p.corpus / "sample_submission.csv", where / "sample.csv")
    return images, Path(sample)


def _tree(folder):
    return {q.relative_to(folder).as_posix(): q.read_bytes() for q in sorted(folder.rglob("*")) if q.is_file()}


def test_package_holds_safetensors_manifest_and_readme(digits_run):
    p, pkg = digits_run
    manifest = json.loads((pkg / "manifest.json").read_text())
    assert sorted(manifest["files"]) == sorted(
        ["README.md", "decision.json", "package.json", "models/exp/fold0.safetensors", "models/exp/fold1.safetensors"])
    assert manifest["foldvision"] and manifest["libraries"]["torch"] and manifest["libraries"]["timm"]
    spec = json.loads((pkg / "package.json").read_text())
    fold = spec["members"][0]["folds"][0]
    assert fold["timm"]["architecture"] == "test_resnet" and fold["data_config"]["channels"] == 1
    assert spec["predict"]["tta"] == ["hflip", "vflip"] and spec["classes"] == [str(d) for d in range(10)]
    from safetensors.torch import load_file

    best = torch.load(p.run / "fold1" / "best.pt", weights_only=True)["model"]
    saved = load_file(pkg / "models/exp/fold1.safetensors")
    assert saved.keys() == best.keys() and all(torch.equal(saved[k], best[k]) for k in best)


def test_infer_offline_from_a_read_only_package_equals_make_predict(digits_run, tmp_path):
    """The issue's test: the package copied read-only, infer run as a user runs it from another folder on a
    renamed copy of the test images, with no network and no training-only library; its submission is make
    predict's, label for label."""
    p, pkg = digits_run
    ro = shutil.copytree(pkg, tmp_path / "mounted" / "pkg")
    images, sample = _renamed_test_images(p, tmp_path)
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    cwd, scratch, home = (tmp_path / name for name in ("elsewhere", "tmp", "home"))
    for folder in (cwd, scratch, home):
        folder.mkdir()
    before, images_before = _tree(ro), _tree(images)
    read_only = [ro, *ro.rglob("*"), images, *images.rglob("*")]  # as Kaggle mounts its inputs
    for q in read_only:
        q.chmod(0o555 if q.is_dir() else 0o444)
    try:
        env = {"PYTHONPATH": os.pathsep.join([str(guard), os.environ.get("PYTHONPATH", "")]), "TMPDIR": str(scratch),
               "HOME": str(home), "HF_HUB_OFFLINE": "0"}
        cmd = [sys.executable, "-m", "foldvision", "infer", str(ro), "--images", str(images), "--sample",
               str(sample), "--out", "sub.csv", "--workers", "0"]
        result = subprocess.run(_sealed(cmd, [ro, images]), cwd=cwd, capture_output=True, text=True,
                                env={**os.environ, **env}, timeout=600)
        assert _tree(ro) == before and _tree(images) == images_before  # untouched
    finally:
        for q in read_only:
            q.chmod(0o755 if q.is_dir() else 0o644)
    assert result.returncode == 0, result.stderr
    assert "NETWORK CALL BLOCKED" not in result.stderr and "estimated" in result.stdout + result.stderr
    assert sorted(q.name for q in cwd.iterdir()) == ["sub.csv"]  # nothing else written
    assert not any(scratch.iterdir()) and not any(home.iterdir())  # the scratch folder removed
    assert (cwd / "sub.csv").read_bytes() == p.submission.read_bytes()


def test_the_guard_catches_a_training_import_and_a_connection(tmp_path):
    """The offline guard works: under it, importing wandb or opening a TCP connection fails."""
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(GUARD)
    code = "import socket\ntry:\n    import wandb\nexcept ImportError:\n    print('no wandb')\n" \
           "socket.create_connection(('127.0.0.1', 9), timeout=1)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(guard)})
    assert "no wandb" in result.stdout and "NETWORK CALL BLOCKED" in result.stderr and result.returncode != 0


def test_infer_probabilities_equal_the_runs_fold_mean(digits_run, tmp_path, capsys):
    """--ids: the id + class-probability table, equal to make predict's test.csv (the folds' mean) to 1e-6."""
    p, pkg = digits_run
    images, _ = _renamed_test_images(p, tmp_path)
    ids = tmp_path / "ids.csv"
    pd.read_csv(p.corpus / "sample_submission.csv", dtype=str)[["image_id"]].to_csv(ids, index=False)
    assert _cli("infer", str(pkg), "--images", str(images), "--ids", str(ids), "--out", str(tmp_path / "p.csv"),
                "--workers", "0") == 0
    got = pd.read_csv(tmp_path / "p.csv", dtype={"id": str}).set_index("id")
    want = pd.read_csv(p.run / "test.csv", dtype={"id": str}).set_index("id")
    assert list(got.index) == list(pd.read_csv(ids, dtype=str)["image_id"])
    np.testing.assert_allclose(got.loc[want.index].to_numpy(), want.to_numpy(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("victim", ["models/exp/fold0.safetensors", "package.json"])
def test_an_edited_package_file_is_named_by_its_manifest_hash(digits_run, tmp_path, capsys, victim):
    _, pkg = digits_run
    copy = shutil.copytree(pkg, tmp_path / "pkg")
    data = bytearray((copy / victim).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / victim).write_bytes(bytes(data))
    expected = json.loads((copy / "manifest.json").read_text())["files"][victim][:16]
    code, err = stage(capsys, "infer", str(copy), "--images", str(tmp_path), "--out", str(tmp_path / "s.csv"))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert victim in err and expected in err and "copy the package again" in err
    assert not (tmp_path / "s.csv").exists()


def test_max_minutes_drops_views_on_a_slow_device(digits_run, tmp_path, capsys, monkeypatch):
    """A device 60 s a batch (a fake clock): the first batches' estimate (12 min for 12 images × 4 views × 2
    models) overruns --max-minutes 10, so vflip is dropped, said by name, and the run starts again with hflip
    alone, which fits; its submission is that of --tta hflip."""
    import foldvision.commands.infer as infer_module

    p, pkg = digits_run
    ticks = iter(range(0, 10**6, 60))
    monkeypatch.setattr(infer_module, "clock", lambda: next(ticks))
    images, _ = _renamed_test_images(p, tmp_path)
    args = ["infer", str(pkg), "--images", str(images), "--batch-size", "8", "--workers", "0"]
    code, err = stage(capsys, *args, "--max-minutes", "10", "--out", str(tmp_path / "fast.csv"), stdout=True)
    assert code == 0, err
    assert "estimated 12.0 min" in err and "dropping TTA views vflip (kept: hflip)" in err
    monkeypatch.setattr(infer_module, "clock", time.monotonic)
    assert stage(capsys, *args, "--tta", "hflip", "--out", str(tmp_path / "hflip.csv"))[0] == 0
    assert (tmp_path / "fast.csv").read_bytes() == (tmp_path / "hflip.csv").read_bytes()


def test_max_minutes_times_every_model_so_a_slower_blend_member_is_caught(monkeypatch):
    """Model 1 of 2 runs 1 s a batch of 8 (fits 10 minutes); model 2, a larger member, 1000 s: its own first
    batches overrun the limit, and the views are dropped then, not after the run has overrun."""
    import foldvision.commands.infer as infer_module

    times = iter([0, 0, 1, 2, 10, 1010])  # start; model 1: three batches; model 2: two
    monkeypatch.setattr(infer_module, "clock", lambda: next(times))
    pace = infer_module.Pace(images=24, models=2, views=["hflip", "vflip"], limit_s=600)
    for seen in (8, 16, 24):
        pace.on_batch(0, seen)
    pace.on_batch(1, 8)
    with pytest.raises(infer_module.Overrun) as overrun:
        pace.on_batch(1, 16)
    assert overrun.value.views == [] and "dropping TTA views hflip, vflip" in str(overrun.value)


def test_infer_on_the_run_folder_leaves_the_run_untouched(digits_run, tmp_path, capsys):
    """make predict TEST=dir: the run folder itself (the package in memory) predicts a new test set into a second
    submission; the run's own predictions are not touched, and the result is the package's."""
    p, pkg = digits_run
    images, sample = _renamed_test_images(p, tmp_path)
    before = _tree(p.run)
    code, err = stage(capsys, "infer", str(p.run), "--images", str(images), "--sample", str(sample),
                      "--submissions", str(tmp_path / "subs"), "--workers", "0")
    assert code == 0, err
    assert _tree(p.run) == before
    assert (tmp_path / "subs" / "exp--hidden-test-images.csv").read_bytes() == p.submission.read_bytes()


def test_make_predict_with_test_runs_infer_on_the_run(tmp_path):
    """make predict TEST=dir SAMPLE=csv calls `foldvision infer` on the run (no config, no training), the values
    passed through the environment, not pasted into the recipe."""
    result = subprocess.run(["make", "-n", "predict", "NAME=exp", "TEST=my tests;x", "SAMPLE=s.csv",
                             f"PY={sys.executable}"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "foldvision" in line]
    assert len(lines) == 1 and " infer runs/exp " in lines[0] and '"$TEST"' in lines[0]
    assert "my tests" not in result.stdout and "config" not in lines[0]


def test_make_package_names_the_run_and_the_folder(tmp_path):
    result = subprocess.run(["make", "-n", "package", "NAME=exp", "OUT=out dir", f"PY={sys.executable}"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert ' package runs/exp "$OUT"' in result.stdout


@pytest.mark.parametrize("method", ["mean", "stack"])
def test_a_blend_packages_and_infers_as_it_blended(digits_run, tmp_path, capsys, method):
    """A blend of the run and a copy of it, packaged: infer's submission is the blend's (stack: the logistic
    regression rebuilt from ensemble.json's coefficients)."""
    p, _ = digits_run
    runs = tmp_path / "runs"
    a, b = shutil.copytree(p.run, runs / "a"), shutil.copytree(p.run, runs / "b")
    blend_sub = tmp_path / "blend.csv"
    assert _cli("ensemble", str(runs / "blend"), "--members", str(a), str(b), "--method", method,
                "--out", str(blend_sub)) == 0
    assert _cli("package", str(runs / "blend"), str(tmp_path / "bpkg")) == 0
    spec = json.loads((tmp_path / "bpkg" / "package.json").read_text())
    assert spec["kind"] == "blend" and spec["method"] == method and len(spec["members"]) == 2
    assert method != "mean" or [m["weight"] for m in spec["members"]] == [0.5, 0.5]
    images, sample = _renamed_test_images(p, tmp_path)
    assert _cli("infer", str(tmp_path / "bpkg"), "--images", str(images), "--sample", str(sample),
                "--out", str(tmp_path / "b.csv"), "--workers", "0") == 0
    assert (tmp_path / "b.csv").read_bytes() == blend_sub.read_bytes()


def test_a_blend_member_of_weight_0_is_neither_packaged_nor_run(digits_run, tmp_path, capsys, monkeypatch):
    """Hill climbing over a run and its copy never takes the copy (it adds nothing): the package leaves its fold
    models out, infer on the blend's run folder does not run them, and both submissions are the blend's."""
    import foldvision.commands.infer as infer_module

    p, _ = digits_run
    runs = tmp_path / "runs"
    a, b = shutil.copytree(p.run, runs / "a"), shutil.copytree(p.run, runs / "b")
    blend_sub = tmp_path / "blend.csv"
    assert _cli("ensemble", str(runs / "blend"), "--members", str(a), str(b), "--method", "hill_climb",
                "--out", str(blend_sub)) == 0
    assert _cli("package", str(runs / "blend"), str(tmp_path / "bpkg")) == 0
    assert "package: left out b: weight 0 in the blend" in capsys.readouterr().err
    spec = json.loads((tmp_path / "bpkg" / "package.json").read_text())
    assert [(m["name"], m["weight"]) for m in spec["members"]] == [("a", 1.0)]
    assert not (tmp_path / "bpkg" / "models" / "b").exists()
    ran = []
    real = infer_module.fold_test_probs
    monkeypatch.setattr(infer_module, "fold_test_probs", lambda *a, **k: ran.append(k["description"]) or real(*a, **k))
    images, sample = _renamed_test_images(p, tmp_path)
    capsys.readouterr()
    assert _cli("infer", str(tmp_path / "bpkg"), "--images", str(images), "--sample", str(sample),
                "--out", str(tmp_path / "b.csv"), "--workers", "0") == 0
    assert ran == ["a fold 0", "a fold 1"], ran
    assert (tmp_path / "b.csv").read_bytes() == blend_sub.read_bytes()
    ran.clear()
    assert _cli("infer", str(runs / "blend"), "--images", str(images), "--sample", str(sample),
                "--out", str(tmp_path / "r.csv"), "--workers", "0") == 0
    assert ran == ["a fold 0", "a fold 1"], ran
    assert "× 2 models (not run, of weight 0: b)" in capsys.readouterr().err
    assert (tmp_path / "r.csv").read_bytes() == blend_sub.read_bytes()


# ---- offline installs: the wheelhouse and the Kaggle notebook ------------------------------------------------
def test_wheelhouse_targets_the_notebook_image_and_leaves_torch_out():
    """pip's target options for a named Python and glibc (older manylinux tags included), and the walk over
    pip's resolution report: foldvision's base requirements only (no `train` extra), torch's own needs left
    out unless asked, markers read for the target."""
    from foldvision.commands import wheelhouse as wh

    assert wh.platform_tags("manylinux_2_28_x86_64")[:2] == ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64"]
    assert wh.platform_tags("manylinux_2_28_x86_64")[-1] == "manylinux2014_x86_64"
    args = wh.target_args("3.11", "manylinux_2_28_x86_64")
    assert args[:5] == ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"]
    with pytest.raises(wh.UserError, match="PYTHON_VERSION='3'"):
        wh.target_args("3", "")

    def item(name, version, *requires):
        return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}}

    report = [item("foldvision", "0.1.0", "torch>=2.4", "timm", "numpy", 'wandb>=0.31; extra == "train"',
                   'tomli; python_version < "3.11"'),
              item("torch", "2.14.1", "sympy", "nvidia-cublas"), item("timm", "1.0", "torch", "huggingface-hub"),
              item("huggingface_hub", "2.4", "tqdm"), item("tqdm", "4.7"), item("numpy", "2.4"), item("sympy", "1"),
              item("nvidia-cublas", "13"), item("wandb", "0.31"), item("tomli", "2")]
    env = wh.marker_environment("3.11", "manylinux_2_28_x86_64")
    names = [name for name, _ in wh.needed(report, env, with_torch=False)]
    assert names == ["foldvision", "huggingface_hub", "numpy", "timm", "tqdm"]
    with_torch = [name for name, _ in wh.needed(report, env, with_torch=True)]
    assert {"torch", "sympy", "nvidia-cublas"} <= set(with_torch) and "wandb" not in with_torch
    assert "tomli" in [n for n, _ in wh.needed(report, wh.marker_environment("3.10", ""), with_torch=False)]


def test_the_inference_requirements_leave_out_the_training_libraries():
    """pyproject's base dependencies (what a wheelhouse installs) hold none of the libraries the offline infer
    test makes unimportable; the `train` extra holds them, and constraints.txt pins every one."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    from packaging.requirements import Requirement

    base = {Requirement(r).name.lower().replace("_", "-") for r in project["dependencies"]}
    train = {Requirement(r).name.lower() for r in project["optional-dependencies"]["train"]}
    assert train == {"torchsampler", "pytorch-optimizer", "pandas", "wandb", "matplotlib", "jinja2", "tabulate",
                     "imagehash", "cleanlab", "iterative-stratification"}
    assert not base & train
    pinned = {line.split("==")[0].lower().replace("_", "-") for line in (ROOT / "constraints.txt").read_text().split()
              if "==" in line}
    assert (base | train) - {"torch", "torchvision"} <= pinned


def test_kaggle_notebook_installs_offline_and_runs_infer(digits_run, tmp_path, capsys):
    """The notebook's code cells are valid Python; its install cell uses pip --no-index on the attached
    wheelhouse; its metadata turns the internet off and attaches both datasets; and its cells, run here
    (KAGGLE_INPUT standing for /kaggle/input, the install cell left out: foldvision is installed), write make
    predict's submission."""
    import ast

    p, pkg = digits_run
    assert _cli("kaggle-notebook", str(tmp_path / "nb"), "--kernel", "me/digits-infer", "--competition", "digits",
                "--package-dataset", "me/digits-pkg", "--wheelhouse-dataset", "me/fv-wheels") == 0
    meta = json.loads((tmp_path / "nb" / "kernel-metadata.json").read_text())
    assert meta["enable_internet"] is False and meta["code_file"] == "digits-infer.ipynb"
    assert meta["dataset_sources"] == ["me/digits-pkg", "me/fv-wheels"] and meta["competition_sources"] == ["digits"]
    nb = json.loads((tmp_path / "nb" / "digits-infer.ipynb").read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    for cell in code:
        ast.parse(cell)
    install = [c for c in code if '"pip", "install"' in c]
    assert len(install) == 1 and '"--no-index", "--find-links", WHEELHOUSE' in install[0]
    inputs = tmp_path / "input"
    shutil.copytree(pkg, inputs / "digits-pkg")
    (inputs / "fv-wheels").mkdir(parents=True)
    (inputs / "fv-wheels" / "foldvision-0.1.0-py3-none-any.whl").touch()
    shutil.copytree(p.corpus, inputs / "competitions" / "digits")  # found however deep it is mounted
    working = tmp_path / "working"
    working.mkdir()
    script = "\n\n".join(c for c in code if c not in install)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=working,
                            env={**os.environ, "KAGGLE_INPUT": str(inputs), "KAGGLE_WORKING": str(working)})
    assert result.returncode == 0, result.stderr
    assert (working / "submission.csv").read_bytes() == p.submission.read_bytes()


def test_the_notebooks_install_cell_installs_foldvision_from_the_wheelhouse_alone(digits_run, tmp_path):
    """Every cell of the notebook, the install cell too, in a fresh virtual environment with no index reachable:
    pip --no-index finds foldvision's own wheel (built as `make wheelhouse` builds it) in the attached wheelhouse;
    the libraries it needs come from this environment (a folder of links to its site-packages, foldvision's own
    left out), as torch comes with a notebook image, so pip installs foldvision and nothing else. The infer cell,
    run by the installed wheel, writes make predict's submission."""
    import http.server
    import sysconfig
    import threading

    from foldvision.commands.wheelhouse import build_own_wheel

    p, pkg = digits_run
    assert _cli("kaggle-notebook", str(tmp_path / "nb"), "--kernel", "me/digits-infer", "--competition", "digits",
                "--package-dataset", "me/digits-pkg", "--wheelhouse-dataset", "me/fv-wheels") == 0
    nb = json.loads((tmp_path / "nb" / "digits-infer.ipynb").read_text())
    script = "\n\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    inputs, working = tmp_path / "input", tmp_path / "working"
    shutil.copytree(pkg, inputs / "digits-pkg")
    shutil.copytree(p.corpus, inputs / "competitions" / "digits")
    build_own_wheel(ROOT, inputs / "fv-wheels")
    working.mkdir()

    image = tmp_path / "image-libraries"  # what the notebook image has: everything here but foldvision
    image.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "foldvision" not in entry.name:
            (image / entry.name).symlink_to(entry)
    venv = tmp_path / "notebook-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    venv_python = venv / "bin" / "python"
    purelib = subprocess.run([venv_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "image-libraries.pth").write_text(f"{image}\n")

    # no PYTHONPATH (the source tree), no pip configuration, and as pip's index a local server that answers 404
    # and records what it was asked: the install cell must never ask it
    asked = []

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            asked.append(self.path)
            self.send_error(404)

        def log_message(self, *args):
            pass

    index = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    threading.Thread(target=index.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "PIP_"))}
    env |= {"KAGGLE_INPUT": str(inputs), "KAGGLE_WORKING": str(working), "PIP_CONFIG_FILE": os.devnull,
            "PIP_INDEX_URL": f"http://127.0.0.1:{index.server_address[1]}/simple/",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    try:
        result = subprocess.run([venv_python, "-c", script], capture_output=True, text=True, cwd=working, env=env,
                                timeout=300)
    finally:
        index.shutdown()
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert asked == []  # pip never reached for an index
    where = subprocess.run([venv_python, "-c", "import foldvision; print(foldvision.__file__)"], env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(purelib), where  # the wheel's copy, not the source tree
    assert (working / "submission.csv").read_bytes() == p.submission.read_bytes()


def test_kaggle_notebook_names_a_malformed_dataset(tmp_path, capsys):
    code, err = stage(capsys, "kaggle-notebook", str(tmp_path), "--kernel", "digits-infer", "--competition", "d",
                      "--package-dataset", "me/p", "--wheelhouse-dataset", "me/w")
    assert code == 2 and "--kernel 'digits-infer'" in err and "<user>/<name>" in err
    assert not any(tmp_path.iterdir())
