import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from foldvision.config import Config, load_config, parse_overrides
from foldvision.run import load_run_config, save_run_config
from foldvision.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_overrides_are_typed_by_yaml():
    assert parse_overrides(["train.epochs=3", "augment.train=[]", "data.group_col=null", "model.name=eva02"]) == {
        "train": {"epochs": 3}, "augment": {"train": []}, "data": {"group_col": None}, "model": {"name": "eva02"}}


def test_layers_defaults_file_overrides(tmp_path):
    path = write(tmp_path / "exp.yaml", {"train": {"epochs": 7, "lr": 1}, "model": {"name": "resnet18"}})
    cfg = load_config(str(path), ["train.epochs=2"])
    assert cfg.train.epochs == 2  # command line wins
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # int accepted for a float
    assert cfg.model.name == "resnet18"
    assert cfg.train.batch_size == Config().train.batch_size  # untouched default
    assert cfg.name == "exp"


def test_a_resolved_config_is_a_value_a_change_makes_a_new_one(tmp_path):
    path = write(tmp_path / "exp.yaml", {"train": {"epochs": 7}, "augment": {"mixup": 0.8}})
    cfg = load_config(str(path), ["train.lr=1e-3"])
    for section, key in (("train", "epochs"), ("data", "dir"), ("augment", "mixup"), ("predict", "tta")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(getattr(cfg, section), key, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.name = "other"
    shorter = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1))
    assert (shorter.train.epochs, cfg.train.epochs, shorter.train.lr) == (1, 7, 1e-3)
    assert load_config(str(path)).train.lr == Config().train.lr == 1e-4  # no layer leaks into the next load


def test_misspelt_key_names_the_closest(tmp_path):
    path = write(tmp_path / "exp.yaml", {"train": {"epoch": 3}})
    with pytest.raises(UserError, match=r"unknown config key 'train.epoch'.*train.epochs"):
        load_config(str(path))
    with pytest.raises(UserError, match=r"command line: unknown config key 'modle.name'.*model.name"):
        load_config(str(write(tmp_path / "ok.yaml", {})), ["modle.name=x"])


def test_wrong_type_and_choice_are_errors(tmp_path):
    path = write(tmp_path / "exp.yaml", {})
    with pytest.raises(UserError, match=r"'train.epochs' must be int, got 'three'"):
        load_config(str(path), ["train.epochs=three"])
    with pytest.raises(UserError, match=r"'train.sampler' must be imbalanced \| random"):
        load_config(str(path), ["train.sampler=balanced"])
    with pytest.raises(UserError, match=r"predict.tta: unknown view 'hflp'.*hflip"):
        load_config(str(path), ["predict.tta=[hflp]"])
    with pytest.raises(UserError, match=r"'train' is a section"):
        load_config(str(path), ["train=3"])


def test_bare_off_is_the_choice_not_a_boolean(tmp_path):
    """YAML 1.1 reads `off` as false: train.amp=off (as the README writes it) must still mean "off"."""
    assert load_config(str(write(tmp_path / "exp.yaml", {})), ["train.amp=off"]).train.amp == "off"
    assert load_config(str(write(tmp_path / "amp.yaml", {"train": {"amp": False}}))).train.amp == "off"
    with pytest.raises(UserError, match=r"'train.sampler' must be imbalanced \| random, got False"):
        load_config(str(tmp_path / "exp.yaml"), ["train.sampler=off"])


def test_ranger21_with_external_scheduler_is_refused(tmp_path):
    path = write(tmp_path / "exp.yaml", {"train": {"optimizer": "ranger21", "scheduler": "cosine"}})
    with pytest.raises(UserError, match="disable_lr_scheduler"):
        load_config(str(path))
    cfg = load_config(str(path), ["train.optimizer_args={disable_lr_scheduler: true}"])
    assert cfg.train.optimizer_args == {"disable_lr_scheduler": True}


def test_base_config_is_inherited(tmp_path):
    write(tmp_path / "parent.yaml", {"train": {"epochs": 5, "lr": 0.5}})
    write(tmp_path / "child.yaml", {"base": "parent", "train": {"epochs": 1}})
    cfg = load_config(str(tmp_path / "child.yaml"))
    assert (cfg.train.epochs, cfg.train.lr, cfg.name) == (1, 0.5, "child")


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_are_valid(path):
    cfg = load_config(str(path))
    assert cfg.name == path.stem


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_configs_name_no_path_outside_the_repository(path):
    """A user's corpus and weights come on the command line (DATA=, model.pretrained_file=), comments included."""
    text = path.read_text(encoding="utf-8")
    assert "../" not in text
    paths = [v for v in re.findall(r":\s*([^\s#{}\[\],]+)", text) if "/" in v]
    assert not [v for v in paths if v.startswith(("/", "~"))], paths


def test_make_without_exp_uses_the_starter_and_says_so(tmp_path):
    """`make check DATA=...` with no EXP: the generic RGB recipe, named in one line, never the digits demo."""
    cmd = ["make", "-n", "--no-print-directory", "-C", str(ROOT), "check", f"DATA={tmp_path / 'my corpus'}",
           f"PY={sys.executable}"]
    env = {k: v for k, v in os.environ.items() if k != "EXP"}  # EXP unset, as on a user's shell
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "config: configs/starter.yaml (no EXP given; EXP=<name> picks configs/<name>.yaml)"
    assert "-m foldvision check starter " in lines[1]
    named = subprocess.run([*cmd, "EXP=digits"], capture_output=True, text=True, timeout=60, env=env)
    assert "foldvision check digits" in named.stdout and "starter" not in named.stdout


def test_saved_stage_files_change_only_with_their_sections(tmp_path):
    exp = write(tmp_path / "exp.yaml", {"data": {"dir": "somewhere"}})
    run = tmp_path / "run"
    save_run_config(load_config(str(exp)), run)
    stamps = {p.name: p.stat().st_mtime_ns for p in run.glob("stage-*.yaml")}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["_meta"]["foldvision"] and "git_commit" in saved["_meta"]
    assert (run / "config.mk").read_text().startswith("N_FOLDS := 5")
    time.sleep(0.01)
    save_run_config(load_config(str(exp), ["predict.tta=[hflip]"]), run)  # a predict-only change
    after = {p.name: p.stat().st_mtime_ns for p in run.glob("stage-*.yaml")}
    assert after["stage-folds.yaml"] == stamps["stage-folds.yaml"]
    assert after["stage-train.yaml"] == stamps["stage-train.yaml"]
    assert after["stage-predict.yaml"] != stamps["stage-predict.yaml"]
    assert load_run_config(run).predict.tta == ["hflip"]


# ---- issue 10 §3-4: numbers as users write them; ranges checked when the config is resolved -------------
@pytest.mark.parametrize("raw, value", [("1e-4", 1e-4), ("3E-5", 3e-5), ("1.5e+2", 150.0), ("-2e-3", -2e-3),
                                        (".5", 0.5), ("10", 10)])
def test_scientific_notation_is_a_number_on_the_command_line(raw, value):
    assert parse_overrides([f"train.lr={raw}"])["train"]["lr"] == value


def test_scientific_notation_is_a_number_in_a_config_file(tmp_path):
    exp = tmp_path / "e.yaml"
    exp.write_text("train:\n  lr: 1e-4\n  weight_decay: 5E-2\n")
    cfg = load_config(str(exp), ["loss.smoothing=1e-1"])
    assert cfg.train.lr == 1e-4 and cfg.train.weight_decay == 0.05 and cfg.loss.smoothing == 0.1
    assert yaml.safe_load("a: 1e-4")["a"] == "1e-4"  # PyYAML's own loader is left as it is


@pytest.mark.parametrize("override, words", [
    ("train.lr=0", "train.lr=0"), ("train.lr=-1e-3", "above 0"), ("train.lr=.nan", "train.lr"),
    ("train.seed=-1", "train.seed"), ("cv.seed=99999999999", "cv.seed"), ("model.drop_rate=1.5", "model.drop_rate"),
    ("model.drop_path_rate=-0.1", "drop_path_rate"), ("loss.smoothing=1", "loss.smoothing"),
    ("train.num_workers=-2", "train.num_workers"), ("train.batch_size=0", "train.batch_size"),
    ("predict.batch_size=0", "predict.batch_size"), ("train.device=gpu0", "train.device"),
    ("train.device=cuda:x", "train.device"), ("predict.tta=[flip]", "unknown view 'flip'"),
    ("predict.tta=[[hflip]]", "predict.tta"), ("train.weight_decay=-1", "weight_decay"),
    ("train.warmup_frac=1", "warmup_frac"), ("loss.focal_gamma=-1", "focal_gamma"),
    ("data.encoding=klingon", "data.encoding"), ("data.max_image_pixels=0", "max_image_pixels"),
])
def test_values_a_library_would_reject_are_refused_when_resolved(tmp_path, override, words):
    exp = tmp_path / "e.yaml"
    exp.write_text("{}\n")
    with pytest.raises(UserError, match=re.escape(words)):
        load_config(str(exp), [override])


@pytest.mark.parametrize("override, value", [("train.device=cuda:1", "cuda:1"), ("train.device=mps", "mps"),
                                             ("data.encoding=cp1252", "cp1252"), ("train.num_workers=0", 0),
                                             ("model.drop_rate=0.5", 0.5), ("train.precise_bn=0", 0),
                                             ("train.channels_last=false", False)])
def test_valid_values_pass(tmp_path, override, value):
    """Each value arrives in the resolved Config as written (not the default, not coerced)."""
    exp = tmp_path / "e.yaml"
    exp.write_text("{}\n")
    section, key = override.partition("=")[0].split(".")
    default = getattr(getattr(Config(), section), key)
    assert default != value  # so a dropped value cannot pass as written
    resolved = getattr(getattr(load_config(str(exp), [override]), section), key)
    assert resolved == value and type(resolved) is type(value)


def test_compile_without_a_cxx_compiler_is_one_line_naming_train_compile(tmp_path, monkeypatch):
    """torch.compile (inductor) needs a C++ compiler to build its kernels: without one, refused when resolved."""
    exp = write(tmp_path / "e.yaml", {"train": {"compile": True}})
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(UserError) as raised:
        load_config(str(exp))
    assert "train.compile=true" in str(raised.value) and "\n" not in str(raised.value)
    assert load_config(str(exp), ["train.compile=false"]).train.compile is False
    monkeypatch.setenv("CXX", "/usr/bin/env")  # any executable: $CXX is what inductor runs
    assert load_config(str(exp)).train.compile is True
