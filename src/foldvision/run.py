"""The run folder `runs/<exp>/`: every artifact's name, and the one reader and writer of each.

    foldvision config <exp> [key=value ...] --run-dir runs/<name>     (what every make target runs first)

resolves the config and saves it into the run folder. The folder's files, and the stage that writes each:

    config.yaml              config   the resolved config, with foldvision's version and the git commit
    stage-<stage>.yaml       config   what a stage depends on: its config sections and a digest of its inputs
                                      (label table, images, sample submission, folds file), rewritten only
                                      when that changes, so make re-runs exactly the stale stages
    config.mk                config   N_FOLDS, a number: no user string ever reaches make's syntax
    folds.csv, classes.json  folds    the split (id, path, label, [group], fold) and the class order
    fold<k>/best.pt ...      train    best.pt, last.pt (while running), oof.csv, history.csv
    fold<k>/test.csv         predict  that fold model's TTA probabilities of the test images
    fold<k>/teacher.csv      train    train.teacher: what the fold trained on, with teacher fold k's targets
    oof.csv, scores.json     score    every training image's OOF probabilities, and their scores
    test.csv, decision.json  predict  the fold-averaged test probabilities, the OOF-fitted decision rule
    ablation.csv/.md/.mk     ablate   the variants compared (numbers; as printed) and their run names for make
    label_issues.csv         label-issues  training rows ranked by how little their OOF prediction backs the label
    plots/, report.html      report   the experiment's page and its pictures
    wandb/                   tracking offline W&B runs
    slurm/                   launch   submitit's pickles and logs
    ensemble.json            ensemble a blend's method, members and weights (a blend has no fold<k>/ folders)

A run folder belongs to one corpus and one split: `foldvision config` refuses to point a folder that holds
results at another corpus, fold count or split seed (one line naming the run and what to do). Tables are read
and written with polars; `Predictions` is what every consumer of OOF or test probabilities gets.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from foldvision import __version__
from foldvision.config import CONFIG_DIR, STAGE_SECTIONS, Config, dump, from_dict, load_config, to_dict, yaml_load
from foldvision.errors import UserError
from foldvision.files import write_atomic, write_text_atomic
from foldvision.targets import Task
# characters that would change the meaning of a make target or recipe: a run name is one plain word
_UNSAFE_NAME = re.compile(r"[\s$#:%=;'\"`\\|&<>*?()\[\]{}]")


@dataclass(frozen=True)
class FoldFiles:
    dir: Path

    @property
    def best_pt(self) -> Path:
        return self.dir / "best.pt"

    @property
    def last_pt(self) -> Path:
        return self.dir / "last.pt"

    @property
    def oof_csv(self) -> Path:
        return self.dir / "oof.csv"

    @property
    def history_csv(self) -> Path:
        return self.dir / "history.csv"

    @property
    def test_csv(self) -> Path:
        return self.dir / "test.csv"

    @property
    def teacher_csv(self) -> Path:
        """train.teacher: the targets teacher fold k gave this fold's training rows (foldvision.learn.teacher)."""
        return self.dir / "teacher.csv"

    def epoch_pt(self, epoch: int) -> Path:
        """train.average_top_k: epoch `epoch`'s validated weights, kept while among the fold's k best."""
        return self.dir / f"epoch{epoch}.pt"

    def remove_epoch_pts(self) -> None:
        for path in self.dir.glob("epoch*.pt"):
            path.unlink()


@dataclass
class Predictions:
    """Predictions by id: the OOF table (with fold and true label) or a test table (without).

    For single-label and multi-label tasks one probability per name (class or tag); for regression and ordinal
    one column, the predicted value in the user's units (`foldvision.targets`).
    """

    ids: list[str]
    classes: list[str]  # the task's names: classes, tags, grades, or (the target's name,)
    probs: np.ndarray  # float64, one row per id, one column per name (single, multilabel) or one (value tasks)
    fold: np.ndarray | None = None  # OOF only: the fold each row was validated in
    labels: list[str] | None = None  # OOF only: the true label of each row, as folds.csv writes it
    kind: str = "single"  # the task kind (foldvision.targets.TASKS)

    @property
    def task(self) -> Task:
        return Task(self.kind, tuple(self.classes))

    @property
    def y(self) -> np.ndarray:
        """The true target of each row, encoded by the task (a class index for single-label)."""
        return self.task.encode(self.labels)

    def take(self, rows: np.ndarray) -> Predictions:
        """The rows selected by a boolean mask or an index array."""
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows
        return Predictions([self.ids[i] for i in rows], self.classes, self.probs[rows],
                           None if self.fold is None else self.fold[rows],
                           None if self.labels is None else [self.labels[i] for i in rows], self.kind)

    def frame(self) -> pl.DataFrame:
        columns: dict = {"id": self.ids}
        if self.fold is not None:
            columns["fold"] = self.fold.astype(np.int64)
        if self.labels is not None:
            columns["label"] = self.labels
        probs = {name: self.probs[:, i].astype(np.float64) for i, name in enumerate(self.task.columns)}
        return pl.DataFrame({**columns, **probs})


@dataclass
class Split:
    """folds.csv and classes.json: every training image's path, label, group and fold, and the class order."""

    ids: list[str]
    paths: list[str]
    labels: list[str]
    groups: list[str] | None
    fold: np.ndarray
    classes: list[str]  # the task's names (classes, tags, grades, or the target's name)
    kind: str = "single"  # the task kind (foldvision.targets.TASKS)
    y: np.ndarray = field(init=False)  # each label encoded by the task (a class index for single-label)

    def __post_init__(self):
        self.y = self.task.encode(self.labels)

    @property
    def task(self) -> Task:
        return Task(self.kind, tuple(self.classes))

    @property
    def folds(self) -> list[int]:
        return sorted(set(self.fold.tolist()))


def read_csv(path: Path, floats: Iterable[str] = (), ints: Iterable[str] = ()) -> pl.DataFrame:
    """A run-folder table: every column a string (ids such as '007' keep their zeros) except those named."""
    try:
        table = pl.read_csv(path, infer_schema=False, empty_string_is_null=False)
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError, OSError) as e:
        raise UserError(f"{path}: cannot be read as a table ({str(e).splitlines()[0]}); delete it and re-run "
                        "the stage that writes it") from None
    casts = {c: pl.Float64 for c in floats} | {c: pl.Int64 for c in ints}
    missing = [c for c in casts if c not in table.columns]
    if missing:
        raise UserError(f"{path}: no column {missing[0]!r}; delete it and re-run the stage that writes it")
    try:
        return table.with_columns(pl.col(c).cast(t) for c, t in casts.items())
    except pl.exceptions.InvalidOperationError:
        raise UserError(f"{path}: a value in {', '.join(casts)} is not a number; delete it and re-run "
                        "the stage that writes it") from None


def write_csv(path: Path, table: pl.DataFrame) -> None:
    write_atomic(path, lambda tmp: table.write_csv(tmp))


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             check=True, cwd=Path(__file__).parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).parent).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    write_text_atomic(path, text)
    return True


def check_name(name: str) -> None:
    """A run name is a make target and a folder: one word without make's or the shell's special characters."""
    bad = _UNSAFE_NAME.search(name)
    if not name or bad:
        raise UserError(f"run name {name!r}: use letters, digits, '.', '-', '_' and '+' only"
                        + (f" (not {bad.group()!r})" if bad else ""))


class Run:
    """`runs/<exp>/`, the one place that names its files and reads and writes them."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"Run({str(self.root)!r})"

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def make_args(self) -> str:
        """How make names this run in a hint: `EXP=<exp>`, with `NAME=<name>` for a run named apart from its
        experiment (an ablation variant) and `RUNS=<folder>` outside runs/; the experiment is the one
        config.yaml's `_meta` records (older runs: the folder's name)."""
        try:
            meta = self.read_config_dict().get("_meta") or {}
        except Exception:  # noqa: BLE001 - a hint must not fail: a missing or damaged config names the folder
            meta = {}
        exp = meta.get("exp") if isinstance(meta, dict) and meta.get("exp") else self.name
        args = f"EXP={exp}" + ("" if exp == self.name else f" NAME={self.name}")
        return args + ("" if self.root.parent == Path("runs") else f" RUNS={self.root.parent}")

    # ---- names ----------------------------------------------------------------------------------------
    config_yaml = property(lambda self: self.root / "config.yaml")
    config_mk = property(lambda self: self.root / "config.mk")
    folds_csv = property(lambda self: self.root / "folds.csv")
    classes_json = property(lambda self: self.root / "classes.json")
    oof_csv = property(lambda self: self.root / "oof.csv")
    scores_json = property(lambda self: self.root / "scores.json")
    test_csv = property(lambda self: self.root / "test.csv")
    decision_json = property(lambda self: self.root / "decision.json")
    ensemble_json = property(lambda self: self.root / "ensemble.json")
    ablation_csv = property(lambda self: self.root / "ablation.csv")
    ablation_md = property(lambda self: self.root / "ablation.md")
    ablation_mk = property(lambda self: self.root / "ablation.mk")
    report_html = property(lambda self: self.root / "report.html")
    label_issues_csv = property(lambda self: self.root / "label_issues.csv")
    plots_dir = property(lambda self: self.root / "plots")
    wandb_dir = property(lambda self: self.root / "wandb")

    def stage_yaml(self, stage: str) -> Path:
        return self.root / f"stage-{stage}.yaml"

    def plot_png(self, name: str) -> Path:
        return self.plots_dir / f"{name}.png"

    def fold(self, k: int) -> FoldFiles:
        return FoldFiles(self.root / f"fold{k}")

    def exists(self) -> bool:
        return self.config_yaml.is_file()

    def is_scored(self) -> bool:
        return self.config_yaml.is_file() and self.scores_json.is_file()

    # ---- the resolved config ------------------------------------------------------------------------------
    def load_config(self) -> Config:
        if not self.config_yaml.is_file():
            raise UserError(f"{self.config_yaml} not found: resolve the experiment first (make folds EXP=<name>)")
        try:
            data = yaml_load(self.config_yaml.read_text(encoding="utf-8")) or {}
        except Exception as e:  # noqa: BLE001 - any YAML error: the file is ours and was damaged
            raise UserError(f"{self.config_yaml}: not readable ({str(e).splitlines()[0]}); re-run make folds") from None
        if not isinstance(data, dict):
            raise UserError(f"{self.config_yaml}: not a config; re-run make folds")
        return from_dict(data, str(self.config_yaml))

    def read_config_dict(self) -> dict:
        """config.yaml as saved, `_meta` (version, git commit) included, without checking it against this
        foldvision's keys: comparing runs also reads runs that older versions made."""
        if not self.config_yaml.is_file():
            raise UserError(f"{self.config_yaml} not found: resolve the experiment first (make folds {self.make_args})")
        data = yaml_load(self.config_yaml.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}

    def recorded_inputs(self, stage: str) -> dict | None:
        """The input digests stage-<stage>.yaml recorded when the config was last saved; None without one."""
        path = self.stage_yaml(stage)
        data = yaml_load(path.read_text(encoding="utf-8")) if path.is_file() else None
        return data.get("inputs") if isinstance(data, dict) else None

    def save_config(self, cfg: Config, exp: str | None = None) -> None:
        """config.yaml (with version, git commit and `exp`, the experiment it was resolved from), the stage
        stamps and config.mk, each rewritten only when its content changes (its mtime tells make what is
        stale). Refuses another corpus or split."""
        check_name(self.name)
        self.check_owner(cfg)
        self.root.mkdir(parents=True, exist_ok=True)
        full = to_dict(cfg)
        old = yaml_load(self.config_yaml.read_text(encoding="utf-8")) if self.config_yaml.is_file() else None
        if not isinstance(old, dict) or {k: v for k, v in old.items() if k != "_meta"} != full:
            meta = {"foldvision": __version__, "git_commit": _git_commit()} | ({"exp": exp} if exp else {})
            write_text_atomic(self.config_yaml, dump(full) + dump({"_meta": meta}))
        inputs = input_digests(cfg)
        for stage, sections in STAGE_SECTIONS.items():
            stamp = {s: full[s] for s in sections} | {"inputs": inputs[stage]}
            if stage != "folds":  # the code that trains and predicts; the split depends on the data alone
                stamp["foldvision"] = __version__
            else:  # which rows train is not the split's business: the split stays byte-identical, and unmade
                stamp["data"] = {k: v for k, v in stamp["data"].items() if k != "exclude"}
            _write_if_changed(self.stage_yaml(stage), dump(stamp))
        _write_if_changed(self.config_mk, f"N_FOLDS := {int(cfg.cv.n_folds)}\n")

    def check_owner(self, cfg: Config) -> None:
        """A folder that holds results keeps its corpus and split: another one is a one-line error."""
        if not (self.config_yaml.is_file() and self.folds_csv.is_file()):
            return  # nothing made yet: the folder is free to take another corpus
        old = corpus_identity(self.load_config())
        new = corpus_identity(cfg)
        if old != new:
            key = next(k for k in new if old.get(k) != new[k])
            raise UserError(
                f"{self.root} holds results for {key}={old.get(key)} and this run asks for {key}={new[key]}: "
                f"name a new run folder (NAME=<name>) or discard this one first (make clean-run NAME={self.name})"
            )

    # ---- the split ------------------------------------------------------------------------------------
    def write_split(self, table: pl.DataFrame, task: Task) -> None:
        """folds.csv (id, path, label, [group], fold) and classes.json (the task: `foldvision.targets`);
        classes.json first, folds.csv last."""
        write_text_atomic(self.classes_json, json.dumps(task.to_json(), ensure_ascii=False) + "\n")
        write_csv(self.folds_csv, table)

    def read_split(self) -> Split:
        for path in (self.folds_csv, self.classes_json):
            if not path.is_file():
                raise UserError(f"{path} not found: run the folds stage first (make folds {self.make_args})")
        table = read_csv(self.folds_csv, ints=["fold"])
        task = self.read_task()
        unknown = task.unknown(table["label"].unique().sort().to_list())
        if unknown is not None:
            raise UserError(f"{self.folds_csv}: label {unknown!r} is not in {self.classes_json}; "
                            f"re-run make folds {self.make_args}")
        groups = table["group"].to_list() if "group" in table.columns else None
        return Split(table["id"].to_list(), table["path"].to_list(), table["label"].to_list(), groups,
                     table["fold"].to_numpy(), list(task.names), task.kind)

    def read_task(self) -> Task:
        """classes.json: the task kind and its names (classes, tags, grades, or the target's name)."""
        return Task.from_json(json.loads(self.classes_json.read_text(encoding="utf-8")))

    def read_classes(self) -> list[str]:
        return list(self.read_task().names)

    # ---- probabilities ----------------------------------------------------------------------------------
    def write_fold_oof(self, k: int, oof: Predictions) -> None:
        """Written last by the train stage: its presence marks fold k done."""
        write_csv(self.fold(k).oof_csv, oof.frame())

    def read_fold_oof(self, k: int, task: Task) -> Predictions:
        path = self.fold(k).oof_csv
        if not path.is_file():
            raise UserError(f"{path} not found: train fold {k} first (make train {self.make_args})")
        return _predictions(read_csv(path, floats=task.columns, ints=["fold"]), task)

    def read_fold_oofs(self, split: Split) -> Predictions:
        """Every fold's OOF rows joined, in folds.csv order; each training image exactly once."""
        missing = [k for k in split.folds if not self.fold(k).oof_csv.is_file()]
        if missing:
            raise UserError(f"{self.root}: folds {missing} have no oof.csv yet; train them "
                            f"(make train {self.make_args})")
        parts = [self.read_fold_oof(k, split.task).frame() for k in split.folds]
        joined = pl.concat(parts)
        if sorted(joined["id"].to_list()) != sorted(split.ids):
            raise UserError(f"{self.root}: the fold OOF files do not cover folds.csv exactly; re-train "
                            f"(make train {self.make_args})")
        order = pl.DataFrame({"id": split.ids})
        return _predictions(order.join(joined, on="id", how="left", maintain_order="left"), split.task)

    def write_oof(self, oof: Predictions) -> None:
        write_csv(self.oof_csv, oof.frame())

    def read_oof(self) -> Predictions:
        """The joined OOF table of a scored run (oof.csv), with the class order from classes.json."""
        if not self.oof_csv.is_file():
            raise UserError(f"{self.oof_csv} not found: score the run first (make train {self.make_args})")
        task = self.read_task()
        return _predictions(read_csv(self.oof_csv, floats=task.columns, ints=["fold"]), task)

    def write_test(self, probs: Predictions, k: int | None = None) -> None:
        """fold<k>/test.csv (one fold model), or test.csv (the fold ensemble) when k is None."""
        write_csv(self.fold(k).test_csv if k is not None else self.test_csv, probs.frame())

    def read_test(self, task: Task, k: int | None = None) -> Predictions:
        path = self.fold(k).test_csv if k is not None else self.test_csv
        if not path.is_file():
            raise UserError(f"{path} not found: predict the test set first (make predict {self.make_args})")
        return _predictions(read_csv(path, floats=task.columns), task)

    # ---- scores, histories, decisions -------------------------------------------------------------------
    def write_scores(self, scores: dict) -> None:
        write_text_atomic(self.scores_json, json.dumps(scores, indent=2, ensure_ascii=False) + "\n")

    def read_scores(self) -> dict:
        if not self.scores_json.is_file():
            raise UserError(f"{self.scores_json} not found: train and score the run first (make train "
                            f"{self.make_args})")
        return json.loads(self.scores_json.read_text(encoding="utf-8"))

    def write_history(self, k: int, rows: list[dict]) -> None:
        write_csv(self.fold(k).history_csv, pl.DataFrame(rows))

    def read_histories(self) -> dict[int, pl.DataFrame]:
        """fold -> its history table (epoch, train_*, val_*, lr, seconds), for the folds that have one."""
        out = {}
        for path in sorted(self.root.glob("fold*/history.csv")):
            k = path.parent.name.removeprefix("fold")
            if k.isdigit():
                out[int(k)] = pl.read_csv(path)
        return dict(sorted(out.items()))

    def write_label_issues(self, table: pl.DataFrame) -> None:
        write_csv(self.label_issues_csv, table)

    def write_decision(self, rule: dict) -> None:
        write_text_atomic(self.decision_json, json.dumps(rule, indent=2) + "\n")

    # ---- blends -----------------------------------------------------------------------------------------------
    def write_ensemble(self, record: dict) -> None:
        """ensemble.json: a blend's method, members and weights (foldvision.commands.ensemble)."""
        write_text_atomic(self.ensemble_json, json.dumps(record, indent=2, ensure_ascii=False) + "\n")

    def read_ensemble(self) -> dict | None:
        """ensemble.json, or None for a run that is not a blend."""
        if not self.ensemble_json.is_file():
            return None
        return json.loads(self.ensemble_json.read_text(encoding="utf-8"))

    # ---- ablation -------------------------------------------------------------------------------------------
    def write_ablation_plan(self, names: list[str]) -> Path:
        """ablation.mk, the variants' run names for make (each checked to be one plain word)."""
        for name in names:
            check_name(name)
        _write_if_changed(self.ablation_mk, f"ABLATION := {' '.join(names)}\n")
        return self.ablation_mk

    def write_ablation(self, table: pl.DataFrame, markdown: str) -> None:
        """ablation.csv (raw numbers) and ablation.md (the table as printed)."""
        write_csv(self.ablation_csv, table)
        write_text_atomic(self.ablation_md, markdown)

    def read_ablation(self) -> pl.DataFrame | None:
        """ablation.csv, or None before an ablation: the variants' values as written, the scores as numbers."""
        if not self.ablation_csv.is_file():
            return None
        table = read_csv(self.ablation_csv)
        numbers = [c for c in table.columns if c.startswith(_ABLATION_NUMBERS)]
        return table.with_columns(pl.col(c).replace("", None).cast(pl.Float64) for c in numbers)


# ablation.csv's columns that hold numbers: scores (oof_<metric>, public_<metric>...), spreads and times
_ABLATION_NUMBERS = ("oof_", "public_", "private_", "test_", "folds_mean", "folds_std", "delta_vs_base",
                     "train_seconds")


def submission_csv(submissions: str | Path, name: str) -> Path:
    """A run's submission: submissions/<name>.csv (the Makefile's $(SUBMISSION))."""
    return Path(submissions) / f"{name}.csv"


def leaderboard_files(runs: str | Path) -> tuple[Path, Path]:
    """runs/leaderboard.csv and runs/leaderboard.md: every run folder under runs/, compared."""
    return Path(runs) / "leaderboard.csv", Path(runs) / "leaderboard.md"


def _predictions(table: pl.DataFrame, task: Task) -> Predictions:
    probs = table.select(task.columns).to_numpy().astype(np.float64)
    return Predictions(table["id"].to_list(), list(task.names), probs,
                       table["fold"].to_numpy() if "fold" in table.columns else None,
                       table["label"].to_list() if "label" in table.columns else None, task.kind)


# ---- what a run folder depends on ----------------------------------------------------------------------
def corpus_identity(cfg: Config) -> dict:
    """The keys that make a run folder's corpus and split: another value of any is another experiment."""
    d = cfg.data
    return {"data.dir": str(Path(d.dir).resolve()) if d.dir else None, "data.train_csv": d.train_csv,
            "data.train_images": d.train_images, "data.id_col": d.id_col, "data.label_col": d.label_col,
            "data.group_col": d.group_col, "data.folds_file": d.folds_file, "cv.n_folds": cfg.cv.n_folds,
            "cv.seed": cfg.cv.seed, "cv.near_duplicates": cfg.cv.near_duplicates,
            "cv.near_duplicate_distance": cfg.cv.near_duplicate_distance if cfg.cv.near_duplicates != "off" else None,
            "cv.near_duplicate_confirm": cfg.cv.near_duplicate_confirm if cfg.cv.near_duplicates != "off" else None}


def _digest(parts: Iterable[str]) -> str:
    h = hashlib.sha1()
    for part in parts:
        h.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()[:16]


def _file_stamp(path: Path | None) -> str:
    """A file's content (tables are small next to images: hashing them is cheap and survives a copy)."""
    if path is None or not path.is_file():
        return "-"
    return hashlib.sha1(path.read_bytes()).hexdigest()[:16]


class ContentHashes:
    """Each image's content hash, kept in `<data.cache_dir>/<corpus>/stamps.json` by the file's (size, mtime,
    ctime, inode): re-stamping an unchanged corpus reads no image, and a changed one reads only what changed.

    Size and mtime alone miss a same-size replacement whose mtime was kept (`cp -p`, `rsync -a`, unzip); the
    content is what a stage reads. ctime is in the key because `cp -p` rewrites a file in place, keeping its
    inode, and sets its mtime back: ctime is the one field no copy can set. A cache that cannot be read or
    written only costs time: every file is hashed again.
    """

    def __init__(self, path: Path | None):
        self.path = path
        self.known = self._read()
        self.seen: dict[str, list] = {}

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8")) if self.path else {}
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def of(self, path: str) -> str:
        """The file's content hash, or what stands instead when it cannot be read (a dangling symlink names
        its target): the stage that reads the file then says what is wrong, in one line."""
        try:
            st = os.stat(path)
        except OSError:
            return "missing->" + (os.readlink(path) if os.path.islink(path) else "")
        key = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        entry = self.seen.get(path) or self.known.get(path)
        if isinstance(entry, list) and entry[:4] == key:
            digest = entry[4]
        else:
            try:
                with open(path, "rb") as f:
                    digest = hashlib.file_digest(f, "sha1").hexdigest()[:16]
            except OSError:
                return "unreadable"
        self.seen[path] = [*key, digest]
        return digest

    def save(self) -> None:
        """The hashes of the files stamped this time (a removed file's entry goes)."""
        if self.path is None or self.seen == self.known:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path, json.dumps(self.seen))
        except OSError:
            pass  # a read-only cache folder: the stamps are right all the same, only slower to make


def _tree_stamp(folder: Path | None, hashes: ContentHashes, exclude: Path | None = None) -> str:
    """Every file under a folder by relative path and content: replacing an image (same name) counts, and so
    does a same-size copy whose mtime was kept; a file merely touched does not."""
    if folder is None or not folder.is_dir():
        return "-"
    parts = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(root, d) != exclude)
        rel = "" if root == str(folder) else os.path.relpath(root, folder)  # once a folder, as abspath: both cost
        full = os.path.abspath(root)
        for name in sorted(files):
            if not name.startswith("."):
                parts.append(f"{os.path.join(rel, name)}|{hashes.of(os.path.join(full, name))}")
    return _digest(parts)


def stamps_json(cfg: Config) -> Path | None:
    """Where the content hashes of the corpus's images are kept: beside its decoded-image cache."""
    if cfg.data.dir is None:
        return None
    from foldvision.layout import corpus_key  # noqa: PLC0415 - as input_digests

    return Path(cfg.data.cache_dir) / corpus_key(Path(cfg.data.dir)) / "stamps.json"


def input_digests(cfg: Config) -> dict[str, dict[str, str]]:
    """Per stage, a digest of the files its outputs are made from; a corpus not there yet digests to '-'
    (the folds stage then says what is missing)."""
    from foldvision import layout  # noqa: PLC0415 - only when saving a run: keeps `import run` light

    try:
        lay = layout.resolve(cfg.data)
    except UserError:
        lay = None
    if lay is None:
        nothing = {"labels": "-", "train_images": "-", "test_images": "-", "sample": "-"}
        return {"folds": nothing, "train": nothing, "predict": nothing}
    user_folds = Path(cfg.data.folds_file) if cfg.data.folds_file else None
    hashes = ContentHashes(stamps_json(cfg))
    train_images = _tree_stamp(lay.train_dir, hashes, lay.test_dir)
    labels = _file_stamp(lay.train_table) if lay.train_table else train_images
    test = {"test_images": _tree_stamp(lay.test_dir, hashes), "sample": _file_stamp(lay.sample),
            "test_table": _file_stamp(lay.test_table)}
    hashes.save()
    folds = {"labels": labels, "folds_file": _file_stamp(user_folds)}
    train = folds | {"train_images": train_images}
    if cfg.data.exclude:  # the rows it drops or relabels decide every fold model
        train["exclude"] = _file_stamp(Path(cfg.data.exclude))
    if cfg.train.teacher:  # its fold models and test files are the taught folds' targets
        from foldvision.learn.teacher import teacher_digest  # noqa: PLC0415 - torch-free; as layout above

        train["teacher"] = teacher_digest(cfg.train)
    return {"folds": folds, "train": train, "predict": train | test}


def load_run_config(run_dir: str | Path) -> Config:
    """The resolved config saved in a run folder."""
    return Run(run_dir).load_config()


def save_run_config(cfg: Config, run_dir: str | Path) -> None:
    Run(run_dir).save_config(cfg)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision config", description=__doc__.split("\n\n")[0])
    parser.add_argument("exp", help="experiment name (configs/<exp>.yaml) or a YAML path")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.lr=1e-4")
    parser.add_argument("--configs", type=Path, default=CONFIG_DIR, help="folder of experiment configs")
    parser.add_argument("--run-dir", type=Path, help="save the resolved config here (default runs/<exp>)")
    parser.add_argument("--print", action="store_true", help="print the resolved config")
    args = parser.parse_args(argv)
    cfg = load_config(args.exp, args.overrides, args.configs)
    run = Run(args.run_dir or Path("runs") / cfg.name)
    cfg = dataclasses.replace(cfg, name=run.name)  # an ablation variant (runs/<exp>--loss-ce) is an experiment of its own in W&B
    run.save_config(cfg, args.exp)
    if args.print:
        sys.stdout.write(dump(to_dict(cfg)))


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
