"""An inference package: a trained experiment or blend in a folder that predicts anywhere, offline.

    foldvision package runs/<exp or blend> OUT/        writes it (foldvision.commands.package)
    foldvision infer OUT/ --images DIR --out sub.csv   reads it (foldvision.commands.infer)

    package.json      what predicts: the classes, the metric, the predict settings (TTA views, batch size, value,
                      decision), the data settings a new test set is read with, the blend (method and member
                      weights; one member of weight 1 for an experiment), and each member's fold models: weights
                      file, timm architecture and pretrained config, model config, channels, preprocessing, and
                      head (the task kind and the map from outputs to probabilities or the user's units)
    decision.json     the decision rule fitted on the OOF predictions (labels by rule), or absent
    ensemble.json     a blend's record as `foldvision ensemble` wrote it (for reading; package.json drives)
    models/<member>/fold<k>.safetensors   the fold models' weights
    manifest.json     foldvision's and the libraries' versions, and the sha256 of every other file
    README.md         how to run it

This module is the in-memory form (`Package`), filled from a package folder (`load_package`, verified against
its manifest) or straight from a run folder (`from_run`: what `foldvision package` writes out, and what
`make predict TEST=dir` predicts with); the inference path imports it and nothing training-only.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from foldvision.errors import UserError
from foldvision.run import Run

FORMAT = 1
PACKAGE_JSON, MANIFEST_JSON, DECISION_JSON, ENSEMBLE_JSON, README = (
    "package.json", "manifest.json", "decision.json", "ensemble.json", "README.md")


@dataclass(frozen=True)
class FoldModel:
    """One fold model: its weights (a package's safetensors file, or a run's best.pt) and what rebuilds it."""

    member: str
    fold: int
    weights: Path
    model_config: dict
    timm: dict | None  # models.timm_source: architecture + pretrained config (None: a checkpoint of before it)
    channels: int
    data_config: dict  # transforms.Preprocessing.to_dict()
    head: dict | None = None  # heads.Head.to_dict(): how outputs become predictions (None: single-label softmax)

    def checkpoint(self, classes: list[str]) -> dict:
        """What `stages.predict.fold_test_probs` takes: best.pt's keys, the weights read from the file."""
        if self.weights.suffix == ".safetensors":
            from safetensors import SafetensorError  # noqa: PLC0415 - torch's side, loaded with the model
            from safetensors.torch import load_file  # noqa: PLC0415

            try:
                weights = load_file(self.weights)
            except (SafetensorError, OSError) as e:
                raise UserError(f"{self.weights}: not readable safetensors ({e}); copy the package again") from None
        else:
            from foldvision.learn.checkpoint import read_checkpoint  # noqa: PLC0415

            weights = read_checkpoint(self.weights, ("model",))["model"]
        return {"model": weights, "classes": classes, "channels": self.channels, "model_config": self.model_config,
                "data_config": self.data_config, "timm": self.timm, "head": self.head}


@dataclass(frozen=True)
class Member:
    name: str
    weight: float
    folds: list[FoldModel]


@dataclass(frozen=True)
class Package:
    """What predicts a test set: the members' fold models, blended, and how the submission is written."""

    name: str
    kind: str  # "experiment" or "blend"
    classes: list[str]
    metric: str  # the resolved task metric (the sample's format and the decision rule depend on it)
    predict: dict  # tta, batch_size, value, decision (config.PredictConfig)
    data: dict  # channels, sample_header, encoding, max_image_pixels: how a test set is read
    method: str  # the blend method (results.blending.METHODS); "mean" for an experiment
    members: list[Member]
    rule: dict | None = None  # results.decision.DecisionRule.to_dict()
    ensemble: dict | None = None  # a blend's ensemble.json
    root: Path | None = None  # the package folder it was read from
    versions: dict = field(default_factory=dict)  # manifest.json's, when read from a package

    @property
    def models(self) -> list[FoldModel]:
        return [f for m in self.members for f in m.folds]

    def without_idle(self) -> tuple[Package, list[str]]:
        """The package without the members of weight 0 (hill climbing never took them: a weighted sum gains
        nothing from them, so their models need neither travel nor run; a stack's learner reads every member),
        and their names."""
        keep = [self.method == "stack" or m.weight != 0 for m in self.members]
        return (replace(self, members=[m for m, k in zip(self.members, keep) if k]),
                [m.name for m, k in zip(self.members, keep) if not k])

    @property
    def task(self) -> str:
        """The task kind (foldvision.targets), as the fold models' heads record it (none: single-label)."""
        head = self.models[0].head if self.models else None
        return head["kind"] if head else "single"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} not found: {path.parent} is not a foldvision package (foldvision package "
                        "runs/<exp> OUT/ makes one)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: not readable JSON ({e}); copy the package again") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a foldvision package file (no JSON object); copy the package again")
    return data


def verify(root: Path) -> dict:
    """manifest.json, after checking every file it lists against its sha256: an edited, damaged or missing file
    is one line naming it."""
    manifest = _json(root / MANIFEST_JSON)
    files = manifest.get("files")
    if manifest.get("format") != FORMAT or not isinstance(files, dict):
        raise UserError(f"{root / MANIFEST_JSON}: not a format-{FORMAT} foldvision manifest; package the run "
                        "again with this foldvision")
    for name, digest in files.items():
        path = root / name
        if not path.is_file():
            raise UserError(f"{path}: listed in {MANIFEST_JSON} but missing; copy the whole package again")
        actual = sha256(path)
        if actual != digest:
            raise UserError(f"{path}: sha256 {actual[:16]}… does not match {MANIFEST_JSON}'s {digest[:16]}…: the "
                            "file was edited or damaged; copy the package again")
    return manifest


def load_package(root: Path) -> Package:
    """A package folder, verified (`verify`), as a `Package` whose weights are its safetensors files."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such package folder (foldvision package runs/<exp> OUT/ makes one)")
    manifest = verify(root)
    if PACKAGE_JSON not in manifest["files"]:
        raise UserError(f"{root / MANIFEST_JSON} does not list {PACKAGE_JSON}; package the run again")
    spec = _json(root / PACKAGE_JSON)
    try:
        members = [Member(m["name"], float(m["weight"]),
                          [FoldModel(m["name"], int(f["fold"]), root / f["weights"], f["model_config"], f["timm"],
                                     int(f["channels"]), f["data_config"], f.get("head")) for f in m["folds"]])
                   for m in spec["members"]]
        rule = _json(root / DECISION_JSON) if (root / DECISION_JSON).is_file() else None
        ensemble = _json(root / ENSEMBLE_JSON) if (root / ENSEMBLE_JSON).is_file() else None
        return Package(spec["name"], spec["kind"], list(spec["classes"]), spec["metric"], dict(spec["predict"]),
                       dict(spec["data"]), spec["method"], members, rule, ensemble, root,
                       {k: v for k, v in manifest.items() if k != "files"})
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{root / PACKAGE_JSON}: not a foldvision package description ({type(e).__name__}: {e}); "
                        "package the run again with this foldvision") from None


# ---- a run folder as a package, in memory ------------------------------------------------------------------
# what a package needs of a fold's best.pt: the weights and what rebuilds the model (`timm` may be absent in a
# checkpoint of before it: the model is then rebuilt by its name)
FOLD_KEYS = ("model", "classes", "channels", "model_config", "data_config")


def _fold_model(run: Run, member: str, fold: int, classes: list[str]) -> FoldModel:
    from foldvision.stages.predict import read_fold_checkpoint, retrain  # noqa: PLC0415 - torch's side
    from foldvision.learn.checkpoint import CheckpointError  # noqa: PLC0415

    path = run.fold(fold).best_pt
    ckpt = read_fold_checkpoint(path, fold)
    if list(ckpt["classes"]) != classes:
        raise retrain(CheckpointError(path, f"its classes are not those of {run.classes_json}"), fold)
    return FoldModel(member, fold, path, ckpt["model_config"], ckpt.get("timm"), int(ckpt["channels"]),
                     ckpt["data_config"], ckpt.get("head"))


def _oof_rule(oof, metric: str, cfg) -> dict:
    """The decision rule fitted on OOF predictions and judged nested, as `stages.predict.label_rule` and
    `foldvision ensemble` fit it (used only where its nested score beats the plain decision), not written."""
    from foldvision.results.decision import fit_nested  # noqa: PLC0415

    return fit_nested(oof.y, oof.probs, oof.fold, metric, oof.kind, cfg.predict.min_tags, len(oof.classes)).to_dict()


def _members(run: Run, record: dict | None, classes: list[str]) -> list[Member]:
    """An experiment: itself, weight 1, with every fold's model; a blend: each member run's, with its weight."""
    if record is None:
        return [Member(run.name, 1.0, [_fold_model(run, run.name, k, classes) for k in run.read_split().folds])]
    members = []
    for name, root in zip(record["members"], record["runs"]):
        member = Run(root)
        if not member.exists():
            raise UserError(f"{run.ensemble_json}: member {name} ({root}) not found; run the command from the "
                            "folder the blend was made in, or blend again (make ensemble)")
        if member.read_classes() != classes:
            raise UserError(f"{member.classes_json}: classes differ from the blend's {run.classes_json}; blend "
                            "again (make ensemble)")
        members.append(Member(name, float(record["weights"][name]),
                              [_fold_model(member, name, k, classes) for k in member.read_split().folds]))
    return members


def from_run(run_dir: Path) -> Package:
    """A trained experiment (fold<k>/best.pt) or a blend (ensemble.json and its members' runs) as a Package whose
    weights are the best.pt files: nothing is read of the corpus but the OOF tables the decision rule is
    fitted on."""
    from foldvision.results.metrics import resolve_metric  # noqa: PLC0415

    run = Run(run_dir)
    cfg = run.load_config()
    classes, record = run.read_classes(), run.read_ensemble()
    metric = resolve_metric(cfg.train.metric, run.read_task().kind)
    # the rule `predict` fits on the fold OOF tables, or `foldvision ensemble` on the blended OOF rows
    oof = run.read_fold_oofs(run.read_split()) if record is None else run.read_oof()
    rule = _oof_rule(oof, metric, cfg) if cfg.predict.decision == "oof" else None
    predict = {"tta": list(cfg.predict.tta), "batch_size": cfg.predict.batch_size, "value": cfg.predict.value,
               "decision": cfg.predict.decision, "amp": cfg.train.amp, "channels_last": cfg.train.channels_last}
    data = {"channels": cfg.data.channels, "sample_header": cfg.data.sample_header, "encoding": cfg.data.encoding,
            "max_image_pixels": cfg.data.max_image_pixels}
    return Package(run.name, "experiment" if record is None else "blend", classes, metric, predict, data,
                   "mean" if record is None else record["method"], _members(run, record, classes), rule, record,
                   None)


def open_package(path: Path) -> Package:
    """A package folder (manifest.json) or a run folder (config.yaml), whichever `path` is."""
    path = Path(path)
    if (path / MANIFEST_JSON).is_file() or not (path / "config.yaml").is_file():
        return load_package(path)
    return from_run(path)
