"""Teachers: a trained run or a blend whose fold-k outputs teach student fold k, by pseudo-labels and distillation.

    make train EXP=small ARGS="train.teacher=runs/blend train.distill=true train.pseudo_labels=confidence"

Leak-free by construction: student fold k reads teacher fold k and nothing else. For a run that is its fold<k>
model (`best.pt`) and its `fold<k>/test.csv`; for a blend (`foldvision ensemble`), its members' fold-k models
and test files, combined with the weights ensemble.json records as fitted without fold k (`fold_weights`).
None of these ever saw fold k's validation rows: the teacher shares the student's split, checked by the split's
content hash (`results.blending.split_digest`, as `make ensemble` checks its members). (A blend's fold-k weights
are fitted on the other folds' OOF rows, which models trained on fold k predicted: a few numbers, chosen
without fold k's rows, as the issue asks; fully nested weights would need each member's inner folds.)

- Pseudo-labels: the test images join fold k's training rows (never its validation rows, so never the OOF table),
  with teacher fold k's test probabilities as targets, chosen by confidence or by proportion.
- Distillation: teacher fold k predicts the student's fold-k training images once, when the fold starts, and its
  probabilities join their true labels in the loss (`losses.TeacherLoss`). Precomputed, not run beside the
  student on each batch (timm's --kd-model-name way): a 5-fold × N-model blend would cost N teacher forward passes
  per student step for every epoch; once per fold it costs one inference pass, the teacher predicts at its own
  input (a smaller or lower-resolution student needs nothing special), and the targets are data that the
  fold writes down (`fold<k>/teacher.csv`) and a test can audit. What it gives up: the teacher does not see the
  student's augmented view of an image, only the plain image (with the teacher's TTA).

The targets each row trains with travel through the loader packed as [y, taught, q_1..q_K] (`pack`): y the class
index (-1 for a test image), taught 1 where q holds a teacher target. Single-label classes today; a multi-label
(soft tags) or regression (soft scores) teacher needs its own `targets` and loss term, the rest stays.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from foldvision.config import Config, TrainConfig
from foldvision.console import console
from foldvision.errors import UserError
from foldvision.run import Run, Split, write_csv

BLEND_METHODS = ("mean", "hill_climb", "rank")  # a weighted mean of the members; stack keeps no per-fold stacker


@dataclass(frozen=True)
class Teacher:
    """A teacher run folder, checked against the student's split: the runs whose fold models teach, and, for a
    blend, its method and the weights fitted without each fold."""

    root: Path
    members: list[Run]  # the run itself, or a blend's members
    method: str  # "mean" for a single run
    fold_weights: dict[int, np.ndarray]  # per fold: one weight per member, fitted without that fold

    def weights(self, fold: int) -> np.ndarray:
        if fold not in self.fold_weights:
            raise UserError(f"{self.root}/ensemble.json has no weights fitted without fold {fold}; blend it again "
                            "(make ensemble)")
        return self.fold_weights[fold]

    def combine(self, fold: int, probs: list[np.ndarray]) -> np.ndarray:
        """The members' fold-k probabilities of the same rows, blended as the blend does with fold k's weights."""
        from foldvision.results.blending import Blend, method_inputs  # noqa: PLC0415 - sklearn/scipy for blends only

        return Blend(self.method, self.weights(fold)).apply(method_inputs(self.method, probs))


def load_teacher(path: str, student: Path, split: Split) -> Teacher:
    """train.teacher, checked: a trained run or a blend, not the student itself, on the student's split and classes;
    each problem one line naming both runs."""
    from foldvision.results.blending import split_digest  # noqa: PLC0415 - as Teacher.combine

    root = Path(path)
    where = f"train.teacher={path}"
    if split.kind != "single":  # soft tags (BCE) and soft scores (MSE) need their own targets and loss term
        raise UserError(f"{where}: teachers teach single-label classes so far, and this split is {split.kind}; "
                        "train the student without train.teacher")
    if root.resolve() == Path(student).resolve():
        raise UserError(f"{where} is the student's own run folder: name another run as its teacher")
    run = Run(root)
    if not run.exists():
        raise UserError(f"{where}: not a run folder (no {run.config_yaml}); train the teacher first "
                        "(make train predict EXP=<teacher>)")
    record = run.read_ensemble()
    members = [Run(r) for r in record["runs"]] if record else [run]
    digest = split_digest(split)
    for member in members:
        own = member.read_split()
        if split_digest(own) != digest or (record and record.get("split") != digest):
            raise UserError(f"{where}: {member.root} has another split than the student {student} (its folds.csv "
                            "puts ids in other folds): a teacher must be trained on the student's corpus split "
                            "(same data, cv.n_folds, cv.seed)")
        if own.classes != split.classes:
            raise UserError(f"{where}: {member.root} has classes {own.classes} and the student {student} has "
                            f"{split.classes}: teach a student of the same corpus")
    if record is None:
        return Teacher(root, members, "mean", {k: np.ones(1) for k in split.folds})
    if record["method"] not in BLEND_METHODS:
        raise UserError(f"{where}: a {record['method']} blend keeps no stacker fitted without each fold; "
                        f"teach with a {', '.join(BLEND_METHODS)} blend (make ensemble METHOD=hill_climb)")
    names = record["members"]
    weights = {int(k): np.array([w[n] for n in names], dtype=np.float64) for k, w in record["fold_weights"].items()}
    return Teacher(root, members, record["method"], weights)


def teacher_digest(t: TrainConfig) -> str:
    """What every student fold's targets are made of, for stage-train.yaml (make then re-trains a student whose
    teacher changed): ensemble.json, each member's split and class order by content, and its fold models by
    size and time (weights are hundreds of MB: hashing them on every make call would cost more than it
    tells; a re-trained fold writes a new file) and fold test files by content. '-' when there is none yet."""
    root = Path(t.teacher)
    h = hashlib.sha1()

    def add(path: Path, content: bool = True) -> None:
        if not path.is_file():
            h.update(f"{path}|-\n".encode())
        elif content:
            h.update(f"{path}|{hashlib.sha1(path.read_bytes()).hexdigest()}\n".encode())
        else:
            st = path.stat()
            h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())

    run = Run(root)
    if not run.exists():
        return "-"
    add(run.ensemble_json)
    record = run.read_ensemble()
    for member in [Run(r) for r in record["runs"]] if record else [run]:
        add(member.folds_csv)
        add(member.classes_json)
        for fold in sorted(member.root.glob("fold*")):
            add(fold / "best.pt", content=False)
            if t.pseudo_labels != "off":
                add(fold / "test.csv")
    return h.hexdigest()[:16]


# ---- targets ---------------------------------------------------------------------------------------------------
def targets(probs: np.ndarray, t: TrainConfig) -> np.ndarray:
    """The targets a teacher's probabilities give: tempered soft targets p^(1/τ) renormalised (τ > 1 softens,
    the teacher's logits divided by τ), or the one-hot argmax (hard)."""
    if t.teacher_targets == "hard":
        return np.eye(probs.shape[1])[probs.argmax(axis=1)]
    logp = np.log(np.clip(probs, 1e-12, 1.0)) / t.teacher_temperature
    tempered = np.exp(logp - logp.max(axis=1, keepdims=True))
    return tempered / tempered.sum(axis=1, keepdims=True)


def select_pseudo(probs: np.ndarray, t: TrainConfig) -> np.ndarray:
    """The test rows that join training: the teacher's top probability at least train.pseudo_threshold
    (confidence), or the most confident train.pseudo_proportion of them (proportion; ties in test order)."""
    confidence = probs.max(axis=1)
    if t.pseudo_labels == "confidence":
        return confidence >= t.pseudo_threshold
    keep = np.zeros(len(probs), dtype=bool)
    keep[np.argsort(-confidence, kind="stable")[:math.ceil(t.pseudo_proportion * len(probs))]] = True
    return keep


def pack(y: np.ndarray, taught: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Rows [y, taught, q_1..q_K] (float32): what a taught fold's loader yields and `losses.TeacherLoss` reads."""
    return np.column_stack([y.astype(np.float32), taught.astype(np.float32), q.astype(np.float32)])


def sampling_labels(rows: np.ndarray) -> np.ndarray:
    """The class each row counts as for the imbalanced sampler: its label, or a test image's target argmax."""
    y = rows[:, 0].astype(np.int64)
    return np.where(y >= 0, y, rows[:, 2:].argmax(axis=1))


@dataclass
class TaughtRows:
    """Fold k's training rows as a taught fold trains on them: its training images, then the pseudo-labelled
    test images (paths relative to the corpus folder), and their packed targets."""

    ids: list[str]
    paths: list[str]
    rows: np.ndarray  # `pack`ed

    def frame(self, classes: list[str]) -> pl.DataFrame:
        """fold<k>/teacher.csv: what the fold's loader feeds, row by row (an audit of the teacher's targets)."""
        y = self.rows[:, 0].astype(np.int64)
        return pl.DataFrame({"id": self.ids, "path": self.paths,
                             "label": [classes[i] if i >= 0 else "" for i in y],
                             "taught": self.rows[:, 1].astype(np.int64),
                             **{f"target_{c}": self.rows[:, 2 + i].astype(np.float64) for i, c in enumerate(classes)}})


def fold_rows(cfg: Config, student: Path, split: Split, fold: int, train: np.ndarray, y_train: np.ndarray,
              write: bool = True) -> TaughtRows:
    """Fold `fold`'s taught training rows (`train`: the rows that train, `y_train`: the class each trains with),
    from teacher fold `fold` alone; written to fold<k>/teacher.csv when `write` (rank 0 under DDP)."""
    t = cfg.train
    teacher = load_teacher(t.teacher, student, split)
    ids = [i for i, on in zip(split.ids, train) if on]
    paths = [p for p, on in zip(split.paths, train) if on]
    n, k = len(ids), len(split.classes)
    q = targets(train_probs(cfg, teacher, fold, paths, split.classes), t) if t.distill else np.zeros((n, k))
    rows = pack(y_train[train], np.full(n, t.distill), q)
    if t.pseudo_labels != "off":
        test_ids, test_paths, probs = test_probs(cfg, teacher, fold, split.classes)
        keep = select_pseudo(probs, t)
        console.print(f"fold {fold}: {int(keep.sum())} of {len(keep)} test images join training, pseudo-labelled "
                      f"by {teacher.root} fold {fold}")
        ids += [i for i, on in zip(test_ids, keep) if on]
        paths += [p for p, on in zip(test_paths, keep) if on]
        rows = np.concatenate([rows, pack(np.full(int(keep.sum()), -1), np.ones(int(keep.sum())),
                                          targets(probs[keep], t))])
    taught = TaughtRows(ids, paths, rows)
    if write:
        files = Run(student).fold(fold)
        files.dir.mkdir(parents=True, exist_ok=True)
        write_csv(files.teacher_csv, taught.frame(split.classes))
    return taught


def test_probs(cfg: Config, teacher: Teacher, fold: int, classes: list[str]
               ) -> tuple[list[str], list[str], np.ndarray]:
    """The student's test images (ids, paths relative to the corpus folder) and teacher fold `fold`'s
    probabilities of them: each member's fold<k>/test.csv, joined by id, blended with fold k's weights."""
    from foldvision.corpus import read_test  # noqa: PLC0415 - the corpus reader, only for pseudo-labels

    test = read_test(cfg.data, verify=False)
    if test is None:
        raise UserError(f"train.pseudo_labels={cfg.train.pseudo_labels}: {cfg.data.dir} has no test set to "
                        "pseudo-label; set train.pseudo_labels=off")
    ids = test.table["id"].to_list()
    parts = []
    for member in teacher.members:
        part = member.read_test(classes, fold)  # missing: one line naming it and make predict
        row = {i: n for n, i in enumerate(part.ids)}
        if sorted(row) != sorted(ids):
            raise UserError(f"{member.fold(fold).test_csv} predicts other test images than the student's corpus "
                            f"lists; predict them again (make predict {member.make_args})")
        parts.append(part.probs[[row[i] for i in ids]])
    root = Path(cfg.data.dir)
    paths = [os.path.relpath(test.image_dir / p, root) for p in test.table["path"].to_list()]
    return ids, paths, teacher.combine(fold, parts)


def train_probs(cfg: Config, teacher: Teacher, fold: int, paths: list[str], classes: list[str]) -> np.ndarray:
    """Teacher fold `fold`'s probabilities of fold k's training images: each member's fold<k>/best.pt at its own
    input with its own TTA (as its fold<k>/test.csv was made), blended with fold k's weights."""
    from foldvision.learn.engine import runtime_kwargs  # noqa: PLC0415 - the torch side
    from foldvision.learn.loader import loader_kwargs  # noqa: PLC0415
    from foldvision.stages.predict import fold_test_probs, read_fold_checkpoint  # noqa: PLC0415

    parts = []
    for member in teacher.members:
        best = member.fold(fold).best_pt
        if best.is_file() and not member.fold(fold).oof_csv.is_file():  # best.pt changes until the fold ends
            raise UserError(f"{member.fold(fold).dir}: the teacher's fold {fold} is still training or was cut short "
                            f"(no oof.csv yet); finish it first (make train {member.make_args})")
        ckpt = read_fold_checkpoint(best, fold)
        own = member.load_config()
        probs = fold_test_probs(ckpt, best, Path(cfg.data.dir), paths, tta=own.predict.tta,
                                batch_size=own.predict.batch_size, runtime=runtime_kwargs(cfg.train),
                                loader=loader_kwargs(cfg, train=False), description=f"fold {fold} teacher")
        col = {c: n for n, c in enumerate(ckpt["classes"])}
        parts.append(probs[:, [col[c] for c in classes]])
    return teacher.combine(fold, parts)
