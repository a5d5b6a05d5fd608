"""Experiment configuration: typed defaults, `configs/<exp>.yaml` on top, `key=value` overrides last.

`load_config("digits", ["train.lr=1e-4"])` gives a checked `Config`; `foldvision config` (foldvision.run) saves
it into a run folder. YAML is read safely with YAML 1.2's numbers (`1e-4` is a float), everywhere.

Every default below has a comment; an experiment file holds only what differs. A key that does not exist
is an error naming the closest valid key; a value of the wrong type is an error naming the expected type.
A resolved `Config` is a value: its sections are frozen, and a change makes a new one (`dataclasses.replace`).
"""

from __future__ import annotations

import codecs
import copy
import dataclasses
import math
import os
import re
import shutil
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from foldvision.errors import UserError, did_you_mean

CONFIG_DIR = Path("configs")

# Test-time views, each a ttach transform (see foldvision.learn.tta); a list of them gives their product, so
# [hflip, vflip, rot90] is all 8 flips/rotations. Named here so config checks need no torch import.
TTA_VIEWS = ("hflip", "vflip", "rot90", "rot90x4")


class _Loader(yaml.SafeLoader):
    """safe_load with YAML 1.2's numbers: PyYAML follows YAML 1.1, where `1e-4` (no dot) is a string.

    Scientific notation is what everyone types (`lr: 1e-4`, `train.lr=3e-5`), so the float rule is YAML 1.2's.
    """


_FLOAT_TAG = "tag:yaml.org,2002:float"
# a deep copy: add_implicit_resolver shares the parent's lists and would change yaml.SafeLoader for everyone
_Loader.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] != _FLOAT_TAG]
    for first, resolvers in copy.deepcopy(yaml.SafeLoader.yaml_implicit_resolvers).items()
}
_Loader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def yaml_load(text: str):
    """YAML as foldvision reads it everywhere (configs, overrides, saved run configs): safe, YAML 1.2 numbers."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader


@dataclass(frozen=True)
class DataConfig:
    dir: str | None = None  # the corpus folder; the paths below are relative to it
    # Each of the next five: null infers the usual names (printed); "none" says there is none.
    train_csv: str | None = None  # label table (CSV/TSV): train.csv, train_master.tsv...; none: one folder per class
    train_images: str | None = None  # training images (nested folders searched): train/, images/... or dir itself
    test_images: str | None = None  # test images: test/, test_images/...
    test_csv: str | None = None  # a table whose first column lists the test ids, when no sample submission does
    sample_submission: str | None = None  # the format to copy: sample_submission.csv, sample_submit.csv...
    sample_header: Literal["auto", "yes", "no"] = "auto"  # auto: headerless when its first row is a test id
    max_image_pixels: int | None = 178956970  # larger images are refused (decompression bombs); null: no limit
    id_col: str | None = None  # null: first of id/image_id/image/file_name/filename/... found
    label_col: str | None = None  # null: first of label/target/class/... found
    encoding: str | None = None  # tables' text encoding; null: UTF-8 (BOM or not), else an error naming the file
    group_col: str | None = None  # images sharing a group stay in one fold (e.g. patient_id)
    # The target kind (foldvision.targets): auto reads it from the label table and says what it read in one line
    # (foldvision.corpus.read_task); single, multilabel, regression or ordinal (integer grades 0..K-1) say it
    task: Literal["auto", "single", "multilabel", "regression", "ordinal"] = "auto"
    label_delim: str | None = None  # multi-label tags in one cell split by this; null: detect among space | ; ,
    label_cols: list | None = None  # multi-label as several 0/1 columns, one per tag (HPA, ChestX-ray14 style)
    empty_tags: bool = False  # multi-label: an image may have no tag (an empty cell, or 0 in every label_cols)
    channels: Literal[1, 3] = 3  # 3: every image becomes RGB; 1: grayscale, timm adapts the stem
    folds_file: str | None = None  # a split of your own (id, label, fold); null: made once per corpus in folds_dir
    folds_dir: str = "inputs/folds"  # the corpora's splits: <folds_dir>/<corpus>-<hash>/folds_k<K>_seed<S>.csv
    cache: bool = True  # decode + resize each image once into a uint8 cache on disk; false: on every read
    cache_dir: str = "inputs/.cache"  # the cache (git-ignored): a folder per corpus and preprocessing, never the corpus
    cache_size: int | None = None  # null: training images cached at the input size; larger: a margin for random crops
    # A CSV of training ids (e.g. runs/<exp>/label_issues.csv) that the next experiment does not train on: the rows
    # with a `new_label` train with that label instead (a class; tags joined by '|'; a number; a grade 0..K-1);
    # with a `flagged` column only its true rows count. The split and the validation rows stay the corpus's, so
    # OOF still covers every image; null: none
    exclude: str | None = None


@dataclass(frozen=True)
class CVConfig:
    n_folds: int = 5  # K of (Group)StratifiedKFold
    seed: int = 42  # split seed: same seed, same folds, for every experiment on the corpus
    # group: each cluster of near-duplicate training images (foldvision.duplicates) is one group of the split,
    # joined with data.group_col's groups, so copies never straddle folds; off: the split ignores them
    near_duplicates: Literal["off", "group"] = "off"
    # At most this many of the 64 phash bits differ: a candidate near-duplicate (check too). 6 finds nearly every
    # resized, recompressed, 4%-cropped or mirrored copy (benchmarks/RESULTS.md)
    near_duplicate_distance: int = 6
    # ... and at most this many of the 256 bits of the finer phash: a near-duplicate. Copies stay within 40;
    # look-alikes that share a coarse layout (chest X-rays of different patients) are 60 or more apart. 256: off
    near_duplicate_confirm: int = 40


@dataclass(frozen=True)
class ModelConfig:
    name: str = "convnext_tiny"  # any timm model name (timm.list_models())
    pretrained: bool = False  # timm's pretrained weights from the HF hub or its cache
    pretrained_file: str | None = None  # local weights (safetensors or a state dict) loaded through timm
    img_size: int | None = None  # null: the model's own input size (resolve_model_data_config)
    drop_rate: float = 0.0  # dropout before the classifier
    drop_path_rate: float = 0.0  # stochastic depth
    # What trains: all; head (feature extraction: the classifier alone); last_n (the head and the last
    # train_last_n layers of timm's grouping, the one layer decay uses: a ViT/ConvNeXt/EfficientNet block each).
    # Frozen parts keep their BatchNorm statistics (their BatchNorm layers run in eval mode).
    train_layers: Literal["all", "head", "last_n"] = "all"
    train_last_n: int = 1  # last_n only: how many layers below the head train
    # ViT-style models resample their position embeddings to each input's size in the forward pass (timm's
    # dynamic_img_size; CNNs need nothing): train.finetune_size turns it on, so one set of weights runs at both sizes
    dynamic_img_size: bool = False


@dataclass(frozen=True)
class AugmentConfig:
    # albumentations transforms by name with their arguments, applied after Resize and before Normalize
    # (which takes mean/std from the model). The seed's preset; RandomRotate90 defaults to p=1.0 in 2.x.
    train: list = field(
        default_factory=lambda: [
            {"HorizontalFlip": {"p": 0.5}},
            {"VerticalFlip": {"p": 0.5}},
            {"RandomRotate90": {"p": 0.5}},
        ]
    )
    # Mixup/CutMix (timm's helpers), applied as loss mixing: λ·L(y_a) + (1−λ)·L(y_b) with the batch mixed with
    # its reverse, so every loss keeps hard labels; validation, OOF and test images are never mixed.
    mixup: float = 0.0  # Beta(α, α) of mixup's λ; 0: no mixup (timm's usual: 0.8)
    cutmix: float = 0.0  # Beta(α, α) of CutMix's box area; 0: no CutMix (timm's usual: 1.0); both: a coin picks
    mix_prob: float = 1.0  # probability that a batch is mixed
    mix_off_epoch: int = 0  # no mixing from this epoch on (1-based: the last clean epochs settle the model); 0: never


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3  # epochs per fold
    batch_size: int = 32  # images per step
    accumulate: int = 1  # gradient accumulation: optimizer steps every N batches
    lr: float = 1e-4  # peak learning rate
    weight_decay: float = 1e-4  # decoupled weight decay
    optimizer: str = "ranger21"  # ranger21, or any name pytorch_optimizer knows (adamw, sgd, lion, ...)
    optimizer_args: dict = field(default_factory=dict)  # extra keyword arguments (warm_down_min_lr, betas...)
    # Lookahead (every 5 steps the weights go back halfway to where they were 5 steps before): Ranger21's own, or
    # pytorch-optimizer's wrapper around the others. Off: in runs of a few hundred steps it halves the progress
    # (pollen12, 3 epochs: macro-F1 0.853 with it, 0.924 without; benchmarks/defaults_table.py)
    lookahead: bool = False
    # An external lr schedule: cosine (per step), step (× decay_factor every decay_epochs epochs), plateau
    # (× decay_factor after decay_epochs epochs without a better validation metric); every group keeps its ratio.
    # Ranger21 runs its own (warm-up, flat, warm-down from 72%) unless optimizer_args.disable_lr_scheduler=true.
    scheduler: Literal["none", "cosine", "step", "plateau"] = "none"
    # Linear warm-up over this fraction of the steps; null: the schedule's own (Ranger21: 22% of a short run or
    # 2000 steps; the others: none). Set for Ranger21 it replaces Ranger21's warm-up length.
    warmup_frac: float | None = None
    decay_factor: float = 0.1  # step, plateau: the lr is multiplied by this at each decay
    decay_epochs: int = 2  # step: decay every this many epochs; plateau: after this many epochs without a better metric
    head_lr_scale: float = 1.0  # the classifier's lr × this (a new head learns from scratch, the body is pretrained)
    layer_decay: float | None = None  # layer-wise lr decay (timm's groups): a layer k below the head gets lr × this^k
    clip_grad: float | None = None  # clip the gradients' global norm to this (after AMP's unscaling); null: none
    ema_decay: float | None = None  # EMA of the weights (timm ModelEmaV3), validated and saved as best.pt; null: none
    ema_warmup: bool = True  # the EMA decay ramps up with the step (1 − (1 + step)^(−2/3), capped at ema_decay)
    head_epochs: int = 0  # the first N epochs train the head alone, then model.train_layers (two-stage fine-tune)
    finetune_size: int | None = None  # the last finetune_epochs epochs run at this input size (larger than the model's)
    finetune_epochs: int = 0  # how many of train.epochs run at finetune_size
    average_top_k: int = 0  # at the fold's end, the mean of the k best epochs' weights replaces best.pt if it validates
                            # better (timm's avg_checkpoints); 0 or 1: off
    sampler: Literal["imbalanced", "random"] = "imbalanced"  # torchsampler weighted draw, or plain shuffle
    # With the imbalanced sampler the model learns balanced classes: its validation and test probabilities are
    # shifted back to the training set's class frequencies (logits + log prior, kept in best.pt's classifier
    # bias), so log loss and accuracy are those of the real prior. Ignored with train.sampler=random.
    prior_correction: bool = True
    # Before each validation the BatchNorm statistics are re-estimated as a plain mean over this many training
    # batches (forward passes only): a short run's running averages still hold the early weights' activations
    # (digits, 1 epoch: accuracy 0.24 -> 0.97). 0: off; models without BatchNorm (ViT, EVA-02, ConvNeXt) skip it.
    precise_bn: int = 50
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"  # auto: bf16 where supported, fp16 + scaler else
    patience: int = 3  # stop after this many epochs without a better validation metric
    # the task kind's metric (results.metrics.METRICS); auto: auc, map (multilabel), rmse, qwk (ordinal)
    metric: Literal["auto", "auc", "accuracy", "macro_f1", "log_loss", "map", "samples_f1", "samples_f2", "micro_f1",
                    "macro_auc", "bce", "rmse", "mae", "pearson", "r2", "qwk"] = "auto"
    num_workers: int | None = None  # data loader workers; null: one per core, at most 8, none on 1 core
    channels_last: bool = True  # NHWC memory format for the model and its batches (faster convolutions)
    compile: bool = False  # torch.compile the model: a slow first step (compiling), faster steps on long GPU runs
    device_augment: bool = True  # the flips/rot90 that end augment.train run on each batch on the device
    device: str = "auto"  # auto: cuda if available, else cpu
    seed: int = 42  # model init, sampler and augmentation seed
    # A teacher (foldvision.learn.teacher): a trained run or a blend on the same split (runs/<exp or blend>);
    # student fold k learns only from teacher fold k, whose models never saw fold k's validation rows. null: none
    teacher: str | None = None
    # w: a taught training row's loss is (1 − w)·the true label's + w·the teacher's; a test image's, w·the teacher's
    teacher_weight: float = 0.5
    # τ: soft targets p^(1/τ) renormalised (tags: sigmoid(logit(p)/τ)), KL at τ scaled by τ² (soft; classes, tags)
    teacher_temperature: float = 1.0
    # the teacher's probabilities or value, or its argmax class (tags: p ≥ 0.5; ordinal: the rounded grade)
    teacher_targets: Literal["soft", "hard"] = "soft"
    distill: bool = False  # the teacher's predictions on fold k's training images join their true labels
    # Test images join fold k's training (never its validation) with teacher fold k's test predictions: all,
    # confidence (≥ pseudo_threshold) or proportion (the most confident pseudo_proportion); off. Confidence: the top
    # probability, for tags the mean of max(p, 1 − p); a regression or ordinal teacher has none (all only)
    pseudo_labels: Literal["off", "all", "confidence", "proportion"] = "off"
    pseudo_threshold: float = 0.9  # confidence: the teacher's confidence a test image needs
    pseudo_proportion: float = 0.5  # proportion: the share of the test images taken, the most confident first


# The losses each task kind (foldvision.targets) trains with; the first is what loss.name=auto means.
LOSS_NAMES = {
    "single": ("cce", "ce", "label_smoothing", "focal"),
    "multilabel": ("bce", "focal_bce", "asl"),
    "regression": ("mse", "huber", "scaled_bce"),
    "ordinal": ("mse", "huber", "scaled_bce", "cumulative"),
}


@dataclass(frozen=True)
class LossConfig:
    # auto: the task's first in LOSS_NAMES: cce (single-label), bce (multi-label), mse (regression, ordinal)
    name: Literal["auto", "cce", "ce", "label_smoothing", "focal", "bce", "focal_bce", "asl", "mse", "huber",
                  "scaled_bce", "cumulative"] = "auto"
    cce_gamma: float = 1.0  # cce: weight γ' of the complement entropy (the paper's γ = -1)
    focal_gamma: float = 2.0  # focal, focal_bce: focusing exponent
    smoothing: float = 0.1  # label_smoothing only
    asl_gamma_neg: float = 4.0  # asl: focusing exponent of the negatives (Ridnik et al. 2021's γ−)
    asl_gamma_pos: float = 0.0  # asl: focusing exponent of the positives (γ+)
    asl_clip: float = 0.05  # asl: probability margin m shifted off the negatives (0: none)
    huber_delta: float = 1.0  # huber: where the loss turns from squared to linear, in standard deviations


def loss_name(loss: LossConfig, kind: str) -> str:
    """The loss a task kind trains with: loss.name, or the kind's default for auto."""
    return LOSS_NAMES[kind][0] if loss.name == "auto" else loss.name


def check_task(cfg: Config, kind: str, where: str = "") -> None:
    """Settings that only make sense for another task kind, refused in one line naming the key and what to set
    (the config's data.task when it is explicit, the train stage's split when data.task is auto). The imbalanced
    sampler and prior correction are adapted instead (foldvision.learn.fold), so their defaults serve every kind."""
    if cfg.train.teacher and kind in ("regression", "ordinal"):
        _check_value_teacher(cfg.train, kind, where)
    name = cfg.loss.name
    if name != "auto" and name not in LOSS_NAMES[kind]:
        raise UserError(f"{where}loss.name={name} is for {_kinds_of(name)} targets; a {kind} task trains with "
                        f"{', '.join(LOSS_NAMES[kind])} (or auto: {LOSS_NAMES[kind][0]})")


def _kinds_of(name: str) -> str:
    return " and ".join(("single-label" if k == "single" else k) for k, names in LOSS_NAMES.items() if name in names)


@dataclass(frozen=True)
class PredictConfig:
    tta: list = field(default_factory=lambda: ["hflip", "vflip", "rot90"])  # TTA_VIEWS; [] for none
    batch_size: int = 64  # images per forward pass, TTA views included: a batch holds 64 / views test images
    value: Literal["auto", "probability", "label"] = "auto"  # what the submission holds; auto: from the sample
    # labels, tags, grades, values: the rule fitted on OOF (threshold, prior correction, per-tag thresholds,
    # ordinal cut-points, clipping to the training range) where its nested score beats the plain decision, or
    # the plain decision (argmax, tags at 0.5, the rounded grade, the value)
    decision: Literal["oof", "argmax"] = "oof"
    min_tags: int = 0  # multi-label: emit at least this many tags per image (the likeliest), plain or fitted


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    cv: CVConfig = field(default_factory=CVConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    tracking: Literal["wandb", "none"] = "wandb"  # W&B, offline unless logged in; none: no tracking
    log_submission: bool = False  # predict logs the submission file as a W&B artifact (type: submission)
    name: str = ""  # experiment name: the run folder's name (the config file's name unless --run-dir differs)


# Which sections each stage's outputs depend on: a change elsewhere does not redo that stage.
STAGE_SECTIONS = {
    "folds": ("data", "cv"),
    "train": ("data", "cv", "model", "augment", "train", "loss"),
    "predict": ("data", "cv", "model", "augment", "train", "loss", "predict"),
}


def _type_ok(value: Any, annotation: Any) -> bool:
    """Whether a YAML value fits a field annotation (int is accepted for float)."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or annotation)


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _valid_keys(obj: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        keys.append(prefix + f.name)
        if dataclasses.is_dataclass(value):
            keys += _valid_keys(value, f"{prefix}{f.name}.")
    return keys


def _merge(obj: Any, updates: dict, source: str, prefix: str = "") -> Any:
    """`obj` (a frozen dataclass) with a nested dict applied, every key and type checked: a new value."""
    hints, names = typing.get_type_hints(type(obj)), {f.name for f in dataclasses.fields(obj)}
    changes = {}
    for key, value in updates.items():
        dotted = prefix + str(key)
        if key not in names:
            while isinstance(value, dict) and len(value) == 1:  # report 'modle.name', not just 'modle'
                (inner, value), = value.items()
                dotted += f".{inner}"
            raise UserError(
                f"{source}: unknown config key '{dotted}'{did_you_mean(dotted, _valid_keys(Config()))}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise UserError(f"{source}: '{dotted}' is a section; give its keys ({dotted}.<key>=...)")
            changes[key] = _merge(current, value, source, dotted + ".")
        else:
            changes[key] = _checked(value, hints[key], source, dotted)
    return dataclasses.replace(obj, **changes)


def _checked(value: Any, annotation: Any, source: str, dotted: str) -> Any:
    """A YAML value for a field of type `annotation`, or a UserError naming the key and the type it needs."""
    if isinstance(value, bool) and not _type_ok(value, annotation) and _type_ok("off", annotation):
        value = "on" if value else "off"  # YAML 1.1 reads a bare off/on (train.amp=off) as a boolean
    if not _type_ok(value, annotation):
        raise UserError(
            f"{source}: '{dotted}' must be {_describe(annotation)}, got {value!r}"
        )
    if annotation is float and isinstance(value, int):
        value = float(value)
    return value


def parse_overrides(args: list[str]) -> dict:
    """['train.epochs=3', 'augment.train=[]'] -> {'train': {'epochs': 3}, 'augment': {'train': []}}.

    Values are parsed as YAML, so numbers, booleans, null and lists come out typed.
    """
    nested: dict = {}
    for arg in args:
        key, sep, raw = arg.partition("=")
        if not sep or not key:
            raise UserError(f"override '{arg}': write it as key=value, e.g. train.epochs=3")
        try:
            value = yaml_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw  # an unquoted string YAML cannot parse (e.g. 'a: b') stays a string
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{arg}': '{part}' is given both as a value and a section")
        node[leaf] = value
    return nested


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of config keys at the top level")
    return data


def experiment_file(exp: str, config_dir: Path = CONFIG_DIR) -> Path:
    path = config_dir / f"{exp}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in config_dir.glob("*.yaml"))
        raise UserError(f"no config {path}{did_you_mean(exp, names)}; experiments: {', '.join(names)}")
    return path


def load_config(exp_or_path: str, overrides: list[str] = (), config_dir: Path = CONFIG_DIR) -> Config:
    """Defaults <- configs/<exp>.yaml (and the file it names as `base:`) <- overrides."""
    if exp_or_path.endswith((".yaml", ".yml")):
        path = Path(exp_or_path)
        config_dir = path.parent
    else:
        path = experiment_file(exp_or_path, config_dir)
    if not path.is_file():
        raise UserError(f"config file {path} not found")
    layers = []
    seen = set()
    while path is not None:
        if path in seen:
            raise UserError(f"{path}: 'base' chain loops back to itself")
        seen.add(path)
        data = _read_yaml(path)
        base = data.pop("base", None)
        layers.append((path, data))
        path = experiment_file(base, config_dir) if base else None
    cfg = Config(name=layers[0][0].stem)
    for source, data in reversed(layers):
        data.pop("_meta", None)  # a saved resolved config can be loaded back
        cfg = _merge(cfg, data, str(source))
    cfg = _merge(cfg, parse_overrides(list(overrides)), "command line")
    validate(cfg)
    return cfg


SEED_MAX = 2**31 - 1  # numpy's and scikit-learn's seeds are 32-bit; folds and epochs add to the train seed
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _require(ok: bool, key: str, value: Any, need: str) -> None:
    if not ok:
        raise UserError(f"{key}={value!r}: {need}")


def _finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def validate(cfg: Config) -> None:
    """Ranges and checks that span keys: every value a library would reject later is refused here, before any
    work, with the key named (a user never meets a traceback from torch, scikit-learn or pytorch-optimizer)."""
    d, t, m = cfg.data, cfg.train, cfg.model
    _require(cfg.cv.n_folds >= 2, "cv.n_folds", cfg.cv.n_folds, "cross-validation needs at least 2 folds")
    for key, seed in (("cv.seed", cfg.cv.seed), ("train.seed", t.seed)):
        _require(0 <= seed <= SEED_MAX - 1000 * cfg.cv.n_folds - t.epochs, key, seed,
                 f"use a seed from 0 to {SEED_MAX - 1000 * cfg.cv.n_folds - t.epochs:,}")
    for key in ("epochs", "batch_size", "accumulate", "patience"):
        _require(getattr(t, key) >= 1, f"train.{key}", getattr(t, key), "must be at least 1")
    _require(cfg.predict.batch_size >= 1, "predict.batch_size", cfg.predict.batch_size, "must be at least 1")
    _require(0 <= cfg.predict.min_tags, "predict.min_tags", cfg.predict.min_tags,
             "0 (tags by threshold alone) or more (at least this many tags per image)")
    _require(_finite(t.lr) and t.lr > 0, "train.lr", t.lr, "the learning rate must be a number above 0 (e.g. 1e-4)")
    _require(_finite(t.weight_decay) and t.weight_decay >= 0, "train.weight_decay", t.weight_decay,
             "must be 0 or more")
    _require(t.num_workers is None or 0 <= t.num_workers <= 256, "train.num_workers", t.num_workers,
             "0 (load in the main process) or more, or null for one per core")
    _require(bool(DEVICE.match(t.device)), "train.device", t.device, "use auto, cpu, cuda, cuda:<index> or mps")
    for key in ("drop_rate", "drop_path_rate"):
        _require(_finite(getattr(m, key)) and 0 <= getattr(m, key) < 1, f"model.{key}", getattr(m, key),
                 "a probability from 0 up to (not including) 1")
    _require(m.img_size is None or m.img_size >= 8, "model.img_size", m.img_size, "use at least 8 pixels")
    _require(d.cache_size is None or d.cache_size >= 8, "data.cache_size", d.cache_size,
             "use at least 8 pixels (or null: the input size)")
    _require(d.max_image_pixels is None or d.max_image_pixels >= 1, "data.max_image_pixels", d.max_image_pixels,
             "a pixel count above 0, or null for no limit")
    if d.encoding is not None:
        try:
            codecs.lookup(d.encoding)
        except LookupError:
            raise UserError(f"data.encoding={d.encoding!r}: not an encoding Python knows; e.g. utf-8, cp1252, "
                            "cp932, latin-1") from None
    _check_near_duplicates(cfg)
    _check_task(d)
    loss = cfg.loss
    _require(_finite(loss.smoothing) and 0 <= loss.smoothing < 1, "loss.smoothing", loss.smoothing,
             "from 0 up to (not including) 1")
    for key in ("cce_gamma", "focal_gamma", "asl_gamma_neg", "asl_gamma_pos"):
        _require(_finite(getattr(loss, key)) and getattr(loss, key) >= 0, f"loss.{key}", getattr(loss, key),
                 "must be 0 or more")
    _require(_finite(loss.asl_clip) and 0 <= loss.asl_clip < 1, "loss.asl_clip", loss.asl_clip,
             "a probability margin from 0 up to (not including) 1 (e.g. 0.05)")
    _require(_finite(loss.huber_delta) and loss.huber_delta > 0, "loss.huber_delta", loss.huber_delta,
             "above 0 (in standard deviations of the target, e.g. 1.0)")
    task = d.task  # explicit kinds are checked now; auto ones by the train stage, which reads the split
    if task != "auto":
        check_task(cfg, task, "data.task=" + task + ": ")
    _check_recipes(cfg)
    _check_teacher(t)
    _check_compile(t)
    _check_ranger21(t)
    _check_lists(cfg)


NEAR_DUPLICATE_MAX = 24  # unrelated images differ in ~32 of 64 bits, rarely fewer than 20
FINE_HASH_BITS = 256  # foldvision.duplicates.FINE_SIZE squared


def _check_near_duplicates(cfg: Config) -> None:
    cv = cfg.cv
    _require(0 <= cv.near_duplicate_distance <= NEAR_DUPLICATE_MAX, "cv.near_duplicate_distance",
             cv.near_duplicate_distance, f"a Hamming distance from 0 to {NEAR_DUPLICATE_MAX} of the 64-bit hash "
             "(unrelated images differ in about 32 bits; 6 finds resized, recompressed and cropped copies)")
    _require(0 <= cv.near_duplicate_confirm <= FINE_HASH_BITS, "cv.near_duplicate_confirm", cv.near_duplicate_confirm,
             f"a Hamming distance from 0 to {FINE_HASH_BITS} of the 256-bit hash (copies stay within 40, look-alikes "
             f"are 60 or more apart; {FINE_HASH_BITS} confirms every candidate)")
    _require(cv.near_duplicates == "off" or not cfg.data.folds_file, "cv.near_duplicates", cv.near_duplicates,
             "data.folds_file is a split of your own, which foldvision does not re-split; drop one of the two")


def _check_task(d: DataConfig) -> None:
    """data.task's companions: tag columns or a tag delimiter only where tags are read."""
    if d.label_cols is not None:
        _require(len(d.label_cols) >= 1 and all(isinstance(c, str) and c for c in d.label_cols), "data.label_cols",
                 d.label_cols, "a list of the 0/1 column names, one per tag")
        _require(d.label_col is None, "data.label_cols", d.label_cols,
                 "tags come from one column (data.label_col) or from 0/1 columns (data.label_cols): drop one")
        _require(d.task in ("auto", "multilabel"), "data.task", d.task,
                 "data.label_cols are multi-label tags: set data.task=multilabel (or auto)")
    if d.label_delim is not None:
        _require(isinstance(d.label_delim, str) and len(d.label_delim) >= 1, "data.label_delim", d.label_delim,
                 "the text between tags, e.g. ' ', '|' or ';' (null: detected)")
        _require(d.task in ("auto", "multilabel"), "data.task", d.task,
                 "data.label_delim splits multi-label tags: set data.task=multilabel (or auto), or drop it")


def _check_ranger21(t: TrainConfig) -> None:
    """Ranger21 runs its own lr schedule, one rate for every group: what would fight it is refused."""
    if t.optimizer.lower() != "ranger21" or t.optimizer_args.get("disable_lr_scheduler", False):
        return
    if t.scheduler != "none":
        raise UserError(
            "train.scheduler with ranger21: Ranger21's own warm-up/warm-down overrides external "
            "schedulers; set train.optimizer_args.disable_lr_scheduler=true or train.scheduler=none"
        )
    grouped = [k for k, on in (("train.layer_decay", t.layer_decay is not None),
                               ("train.head_lr_scale", t.head_lr_scale != 1)) if on]
    if grouped:
        raise UserError(
            f"{' and '.join(grouped)} with ranger21: Ranger21's built-in warm-down sets one lr for every "
            "parameter group (it would flatten the per-group rates from 72% of training); set "
            "train.optimizer_args.disable_lr_scheduler=true and a train.scheduler (cosine, step, plateau)"
        )


def _check_lists(cfg: Config) -> None:
    """augment.train's items ({Name: {arg: value}}) and predict.tta's view names."""
    for i, item in enumerate(cfg.augment.train):
        if not (isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item.values())) or {}, dict)):
            raise UserError(
                f"augment.train[{i}]: write each transform as {{Name: {{arg: value}}}}, got {item!r}"
            )
    for view in cfg.predict.tta:
        if not isinstance(view, str) or view not in TTA_VIEWS:
            raise UserError(
                f"predict.tta: unknown view '{view}'{did_you_mean(str(view), TTA_VIEWS)}; "
                f"views: {', '.join(TTA_VIEWS)}"
            )


def _check_compile(t: TrainConfig) -> None:
    """train.compile: torch.compile's inductor builds its kernels with a C++ compiler ($CXX, else g++; clang++ on
    macOS, cl on Windows). Without any, the first training step fails deep inside torch; refuse it here."""
    if not t.compile:
        return
    named = os.environ.get("CXX", "").split()
    if not any(shutil.which(c) for c in named[:1] + ["g++", "clang++", "c++", "cl"]):
        raise UserError("train.compile=true: torch.compile builds its kernels with a C++ compiler and none is on "
                        "PATH here (g++, clang++, or $CXX); install one (e.g. apt install g++) or set "
                        "train.compile=false")


def _check_value_teacher(t: TrainConfig, kind: str, where: str) -> None:
    """A regression or ordinal teacher gives one value per image (foldvision.learn.teacher): what needs a
    probability is refused in one line."""
    teacher = f"{'an' if kind == 'ordinal' else 'a'} {kind} teacher"
    if t.pseudo_labels in ("confidence", "proportion"):  # agreement across folds would read folds other than k
        raise UserError(f"{where}train.pseudo_labels={t.pseudo_labels}: {teacher} predicts one value per "
                        "image, with no confidence to rank test images by; use train.pseudo_labels=all")
    if t.teacher_temperature != 1:
        raise UserError(f"{where}train.teacher_temperature={t.teacher_temperature}: a temperature softens "
                        f"probabilities and {teacher} gives values; use 1")
    if t.teacher_targets == "hard" and kind == "regression":
        raise UserError(f"{where}train.teacher_targets=hard: a regression value has no hard form (ordinal rounds "
                        "to a grade); use soft")


def _check_teacher(t: TrainConfig) -> None:
    """train.teacher and the keys that use it: ranges, and nothing asked of a teacher that is not there."""
    _require(_finite(t.teacher_weight) and 0 < t.teacher_weight <= 1, "train.teacher_weight", t.teacher_weight,
             "the teacher's share of the loss, above 0 and at most 1 (e.g. 0.5)")
    _require(_finite(t.teacher_temperature) and t.teacher_temperature > 0, "train.teacher_temperature",
             t.teacher_temperature, "a temperature above 0 (1: the teacher's probabilities as they are)")
    _require(t.teacher_targets == "soft" or t.teacher_temperature == 1, "train.teacher_temperature",
             t.teacher_temperature, "hard targets (the teacher's argmax) have no temperature; use 1 or soft targets")
    _require(_finite(t.pseudo_threshold) and 0 < t.pseudo_threshold <= 1, "train.pseudo_threshold",
             t.pseudo_threshold, "the top probability a test image needs, above 0 and at most 1 (e.g. 0.9)")
    _require(_finite(t.pseudo_proportion) and 0 < t.pseudo_proportion <= 1, "train.pseudo_proportion",
             t.pseudo_proportion, "the share of the test images taken, above 0 and at most 1 (e.g. 0.5)")
    uses = [k for k, on in (("train.distill", t.distill), ("train.pseudo_labels", t.pseudo_labels != "off")) if on]
    if t.teacher is None and uses:
        raise UserError(f"{uses[0]} needs a teacher: set train.teacher=runs/<exp or blend> (a trained run on the "
                        "same split)")
    _require(t.teacher is None or bool(uses), "train.teacher", t.teacher,
             "the teacher teaches nothing: set train.distill=true or train.pseudo_labels=all|confidence|proportion")
    _require(t.teacher is None or bool(str(t.teacher).strip()), "train.teacher", t.teacher,
             "a run folder (runs/<exp or blend>), or null for none")


def _check_recipes(cfg: Config) -> None:
    """The fine-tuning recipes' keys (train.ema_decay, augment.mixup, ...): ranges and combinations."""
    t, m, a = cfg.train, cfg.model, cfg.augment
    _require(t.warmup_frac is None or (_finite(t.warmup_frac) and 0 <= t.warmup_frac < 1), "train.warmup_frac",
             t.warmup_frac, "a fraction of the steps, from 0 up to (not including) 1, or null: the schedule's own")
    _require(_finite(t.decay_factor) and 0 < t.decay_factor < 1, "train.decay_factor", t.decay_factor,
             "a factor above 0 and below 1 (e.g. 0.1)")
    _require(t.decay_epochs >= 1, "train.decay_epochs", t.decay_epochs, "must be at least 1")
    _require(t.scheduler != "plateau" or not t.warmup_frac, "train.warmup_frac", t.warmup_frac,
             "plateau has no warm-up (it sets the lr from the validation metric); use cosine or step for one")
    _require(_finite(t.head_lr_scale) and t.head_lr_scale > 0, "train.head_lr_scale", t.head_lr_scale,
             "a factor above 0 (1: the head at train.lr)")
    _require(t.layer_decay is None or (_finite(t.layer_decay) and 0 < t.layer_decay <= 1), "train.layer_decay",
             t.layer_decay, "a factor above 0 and at most 1 (e.g. 0.75), or null for none")
    _require(t.clip_grad is None or (_finite(t.clip_grad) and t.clip_grad > 0), "train.clip_grad", t.clip_grad,
             "a gradient norm above 0 (e.g. 1.0), or null for none")
    _require(t.ema_decay is None or (_finite(t.ema_decay) and 0 < t.ema_decay < 1), "train.ema_decay", t.ema_decay,
             "a decay above 0 and below 1 (e.g. 0.999), or null for no EMA")
    _require(t.precise_bn >= 0, "train.precise_bn", t.precise_bn, "a number of batches, 0 or more (0: off)")
    _require(t.average_top_k >= 0, "train.average_top_k", t.average_top_k, "0 (off) or the number of epochs to average")
    _require(m.train_last_n >= 1, "model.train_last_n", m.train_last_n, "must be at least 1")
    _require(0 <= t.head_epochs < t.epochs, "train.head_epochs", t.head_epochs,
             f"0 (off) or fewer than train.epochs ({t.epochs}): the epochs after it train model.train_layers")
    _require(t.head_epochs == 0 or m.train_layers != "head", "train.head_epochs", t.head_epochs,
             "with model.train_layers=head every epoch trains the head alone; use one of the two")
    _require(0 <= t.finetune_epochs < t.epochs, "train.finetune_epochs", t.finetune_epochs,
             f"0 (off) or fewer than train.epochs ({t.epochs}): the epochs before it run at the model's size")
    _require((t.finetune_size is None) == (t.finetune_epochs == 0), "train.finetune_size", t.finetune_size,
             "give train.finetune_size and train.finetune_epochs together (both or neither)")
    _require(t.finetune_size is None or t.finetune_size >= 8, "train.finetune_size", t.finetune_size,
             "use at least 8 pixels")
    for key in ("mixup", "cutmix"):
        _require(_finite(getattr(a, key)) and getattr(a, key) >= 0, f"augment.{key}", getattr(a, key),
                 "the Beta distribution's α, 0 (off) or more (e.g. 0.8 for mixup, 1.0 for CutMix)")
    _require(_finite(a.mix_prob) and 0 <= a.mix_prob <= 1, "augment.mix_prob", a.mix_prob, "a probability from 0 to 1")
    _require(a.mix_off_epoch >= 0, "augment.mix_off_epoch", a.mix_off_epoch, "0 (never off) or an epoch number")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict, source: str) -> Config:
    """A saved config (e.g. runs/<exp>/config.yaml) back into a checked `Config`."""
    return _merge(Config(), {k: v for k, v in data.items() if k != "_meta"}, source)


def dump(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
