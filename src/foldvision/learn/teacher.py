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
  with teacher fold k's test predictions as targets: all of them, or chosen by confidence or by proportion.
- Distillation: teacher fold k predicts the student's fold-k training images once, when the fold starts, and its
  predictions join their true labels in the loss (`losses.TeacherLoss`). Precomputed, not run beside the
  student on each batch (timm's --kd-model-name way): a 5-fold × N-model blend would cost N teacher forward passes
  per student step for every epoch; once per fold it costs one inference pass, the teacher predicts at its own
  input (a smaller or lower-resolution student needs nothing special), and the targets are data that the
  fold writes down (`fold<k>/teacher.csv`) and a test can audit. What it gives up: the teacher does not see the
  student's augmented view of an image, only the plain image (with the teacher's TTA).

Every task kind (foldvision.targets), the teacher's task equal to the student's (kind and names):
- single: the teacher's class probabilities, tempered p^(1/τ) renormalised, or its argmax class (hard).
- multilabel (soft tags): its per-tag probabilities, tempered sigmoid(logit(p)/τ), or p ≥ 0.5 (hard: not the
  teacher's fitted per-tag thresholds, which are fitted on its whole OOF table, fold k's rows included).
  Pseudo-label confidence: the mean over tags of max(p, 1 − p).
- regression, ordinal (soft scores): its value (`pred`, the user's units) mapped by the student's head into its
  training space (`heads.Head.soft_targets`; for cumulative logits P(grade > k) ≈ clip(v − k, 0, 1)); hard
  (ordinal only) rounds it to a grade. No temperature, and no confidence: pseudo_labels=all takes every test image
  (agreement across the teacher's folds would bring in folds other than k; config.check_task says so).

The targets each row trains with travel through the loader packed (`pack`): [y, taught, q_1..q_K] for single-label
(y the class index, -1 for a test image), [±1, taught, q_1..q_m, t_1..t_m] for the other kinds (1 labelled,
-1 a test image; t the head's targets of the true label); taught 1 where q holds a teacher target.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from foldvision.config import Config, TrainConfig
from foldvision.console import console
from foldvision.errors import UserError
from foldvision.run import Run, Split, write_csv
from foldvision.targets import Task

if TYPE_CHECKING:
    from foldvision.learn.heads import Head  # torch: imported by the train side only

BLEND_METHODS = ("mean", "hill_climb", "rank")  # a weighted mean of the members; stack keeps no per-fold stacker


@dataclass(frozen=True)
class Teacher:
    """A teacher run folder, checked against the student's split: the runs whose fold models teach, and, for a
    blend, its method and the weights fitted without each fold."""

    root: Path
    members: list[Run]  # the run itself, or a blend's members
    method: str  # "mean" for a single run
    fold_weights: dict[int, np.ndarray]  # per fold: one weight per member, fitted without that fold
    kind: str = "single"  # the task kind, shared with the student

    def weights(self, fold: int) -> np.ndarray:
        if fold not in self.fold_weights:
            raise UserError(f"{self.root}/ensemble.json has no weights fitted without fold {fold}; blend it again "
                            "(make ensemble)")
        return self.fold_weights[fold]

    def combine(self, fold: int, probs: list[np.ndarray]) -> np.ndarray:
        """The members' fold-k probabilities of the same rows, blended as the blend does with fold k's weights."""
        from foldvision.results.blending import Blend, method_inputs  # noqa: PLC0415 - sklearn/scipy for blends only

        return Blend(self.method, self.weights(fold), kind=self.kind).apply(method_inputs(self.method, probs))


def load_teacher(path: str, student: Path, split: Split) -> Teacher:
    """train.teacher, checked: a trained run or a blend, not the student itself, on the student's split and task
    (kind and names); each problem one line naming both runs."""
    from foldvision.results.blending import split_digest  # noqa: PLC0415 - as Teacher.combine

    root = Path(path)
    where = f"train.teacher={path}"
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
        if own.task != split.task:
            raise UserError(f"{where}: {member.root} is a {own.kind} task of {own.classes} and the student {student} "
                            f"a {split.kind} task of {split.classes}: a teacher must predict the student's task")
    if record is None:
        return Teacher(root, members, "mean", {k: np.ones(1) for k in split.folds}, split.kind)
    if record["method"] not in BLEND_METHODS:
        raise UserError(f"{where}: a {record['method']} blend keeps no stacker fitted without each fold; "
                        f"teach with a {', '.join(BLEND_METHODS)} blend (make ensemble METHOD=hill_climb)")
    names = record["members"]
    weights = {int(k): np.array([w[n] for n in names], dtype=np.float64) for k, w in record["fold_weights"].items()}
    return Teacher(root, members, record["method"], weights, split.kind)


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
def targets(probs: np.ndarray, t: TrainConfig, head: Head) -> np.ndarray:
    """The targets a teacher's predictions give the student's `head` (the module's docstring, per kind)."""
    hard = t.teacher_targets == "hard"
    if head.link == "softmax":  # tempered: the teacher's logits divided by τ
        if hard:
            return np.eye(probs.shape[1])[probs.argmax(axis=1)]
        logp = np.log(np.clip(probs, 1e-12, 1.0)) / t.teacher_temperature
        tempered = np.exp(logp - logp.max(axis=1, keepdims=True))
        return tempered / tempered.sum(axis=1, keepdims=True)
    if head.link == "sigmoid":
        if hard:
            return (probs >= 0.5).astype(np.float64)
        p = np.clip(probs, 1e-12, 1 - 1e-12)
        return 1 / (1 + np.exp(-np.log(p / (1 - p)) / t.teacher_temperature))
    values = probs[:, 0]
    if hard:  # ordinal only (config.check_task refuses a hard regression value)
        values = np.clip(np.rint(values), 0, len(head.names) - 1)
    return head.soft_targets(values).astype(np.float64)


def select_pseudo(probs: np.ndarray, t: TrainConfig, kind: str = "single") -> np.ndarray:
    """The test rows that join training: every one (all), those whose confidence is at least
    train.pseudo_threshold (confidence), or the most confident train.pseudo_proportion (proportion; ties in test
    order). Confidence: the top class probability; for tags the mean over tags of max(p, 1 − p)."""
    if t.pseudo_labels == "all":
        return np.ones(len(probs), dtype=bool)
    if kind not in ("single", "multilabel"):  # config.check_task refuses it in one line first
        raise ValueError(f"a {kind} teacher has no confidence to select test images by")
    confidence = probs.max(axis=1) if kind == "single" else np.maximum(probs, 1 - probs).mean(axis=1)
    if t.pseudo_labels == "confidence":
        return confidence >= t.pseudo_threshold
    keep = np.zeros(len(probs), dtype=bool)
    keep[np.argsort(-confidence, kind="stable")[:math.ceil(t.pseudo_proportion * len(probs))]] = True
    return keep


def pack(head: Head, taught: np.ndarray, q: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
    """Packed rows (the module's docstring), float32: what a taught fold's loader yields and `losses.TeacherLoss`
    reads. `y`: the rows' labels (`Task.encode`), None for test images."""
    n = len(q)
    if head.link == "softmax":
        first, truth = (np.full(n, -1) if y is None else y), np.zeros((n, 0))
    else:
        first, truth = np.full(n, -1 if y is None else 1), (np.zeros_like(q) if y is None else head.targets(y))
    return np.column_stack([first, taught, q, truth]).astype(np.float32)


def sampling_labels(rows: np.ndarray, head: Head) -> np.ndarray | None:
    """What the imbalanced draw balances for each row: its class (a test image's: its target's argmax), or for
    tags its rarest tag (a test image's tags: its targets ≥ 0.5); None for values (their draw is shuffled)."""
    if head.link == "softmax":
        y = rows[:, 0].astype(np.int64)
        return np.where(y >= 0, y, rows[:, 2:].argmax(axis=1))
    if head.link != "sigmoid":
        return None
    from foldvision.learn.recipes import rarest_tags  # noqa: PLC0415 - torch; the sampler is on the torch side

    m = len(head.names)
    tags = np.where(rows[:, :1] > 0, rows[:, 2 + m:], rows[:, 2:2 + m] >= 0.5)
    return rarest_tags(tags)


@dataclass
class TaughtRows:
    """Fold k's training rows as a taught fold trains on them: its training images, then the pseudo-labelled
    test images (paths relative to the corpus folder), and their packed targets."""

    ids: list[str]
    paths: list[str]
    labels: list[str]  # folds.csv's label; '' for a test image
    rows: np.ndarray  # `pack`ed

    def frame(self, head: Head) -> pl.DataFrame:
        """fold<k>/teacher.csv: what the fold's loader feeds, row by row (an audit of the teacher's targets): the
        teacher's target per class or tag (target_<name>), or in the head's training space (target: the
        standardised or 0..1 value; target_gt<k>: P(grade > k))."""
        m = head.outputs
        if head.link in ("softmax", "sigmoid"):
            names = [f"target_{c}" for c in head.names]
        else:
            names = ["target"] if m == 1 else [f"target_gt{k}" for k in range(m)]
        return pl.DataFrame({"id": self.ids, "path": self.paths, "label": self.labels,
                             "taught": self.rows[:, 1].astype(np.int64),
                             **{c: self.rows[:, 2 + i].astype(np.float64) for i, c in enumerate(names)}})


def fold_rows(cfg: Config, student: Path, split: Split, fold: int, training: tuple[np.ndarray, np.ndarray],
              head: Head, write: bool = True) -> TaughtRows:
    """Fold `fold`'s taught training rows, from teacher fold `fold` alone; `training` is (the rows that train,
    each row's label as it trains, `Task.encode`d), `head` the student's; written to fold<k>/teacher.csv when
    `write` (rank 0 under DDP)."""
    t = cfg.train
    train, y_train = training
    teacher = load_teacher(t.teacher, student, split)
    ids, paths = [i for i, on in zip(split.ids, train) if on], [p for p, on in zip(split.paths, train) if on]
    labels = [label for label, on in zip(split.labels, train) if on]
    n = len(ids)
    q = (targets(train_probs(cfg, teacher, fold, paths, split.task), t, head) if t.distill
         else np.zeros((n, head.outputs)))
    rows = pack(head, np.full(n, t.distill), q, y_train[train])
    if t.pseudo_labels != "off":
        test_ids, test_paths, probs = test_probs(cfg, teacher, fold, split.task)
        keep = select_pseudo(probs, t, split.kind)
        console.print(f"fold {fold}: {int(keep.sum())} of {len(keep)} test images join training, pseudo-labelled "
                      f"by {teacher.root} fold {fold}")
        ids += [i for i, on in zip(test_ids, keep) if on]
        paths += [p for p, on in zip(test_paths, keep) if on]
        labels += [""] * int(keep.sum())
        rows = np.concatenate([rows, pack(head, np.ones(int(keep.sum())), targets(probs[keep], t, head))])
    taught = TaughtRows(ids, paths, labels, rows)
    if write:
        files = Run(student).fold(fold)
        files.dir.mkdir(parents=True, exist_ok=True)
        write_csv(files.teacher_csv, taught.frame(head))
    return taught


def test_probs(cfg: Config, teacher: Teacher, fold: int, task: Task) -> tuple[list[str], list[str], np.ndarray]:
    """The student's test images (ids, paths relative to the corpus folder) and teacher fold `fold`'s
    predictions of them (prob_<name> columns, or pred): each member's fold<k>/test.csv, joined by id, blended
    with fold k's weights."""
    from foldvision.corpus import read_test  # noqa: PLC0415 - the corpus reader, only for pseudo-labels

    test = read_test(cfg.data, verify=False)
    if test is None:
        raise UserError(f"train.pseudo_labels={cfg.train.pseudo_labels}: {cfg.data.dir} has no test set to "
                        "pseudo-label; set train.pseudo_labels=off")
    ids = test.table["id"].to_list()
    parts = []
    for member in teacher.members:
        part = member.read_test(task, fold)  # missing: one line naming it and make predict
        row = {i: n for n, i in enumerate(part.ids)}
        if sorted(row) != sorted(ids):
            raise UserError(f"{member.fold(fold).test_csv} predicts other test images than the student's corpus "
                            f"lists; predict them again (make predict {member.make_args})")
        parts.append(part.probs[[row[i] for i in ids]])
    root = Path(cfg.data.dir)
    paths = [os.path.relpath(test.image_dir / p, root) for p in test.table["path"].to_list()]
    return ids, paths, teacher.combine(fold, parts)


def train_probs(cfg: Config, teacher: Teacher, fold: int, paths: list[str], task: Task) -> np.ndarray:
    """Teacher fold `fold`'s predictions of fold k's training images (per class or tag, or one value): each
    member's fold<k>/best.pt at its own input with its own TTA (as its fold<k>/test.csv was made), blended with
    fold k's weights."""
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
        parts.append(probs if task.is_value else probs[:, [col[c] for c in task.names]])
    return teacher.combine(fold, parts)
