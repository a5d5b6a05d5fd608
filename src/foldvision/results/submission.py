"""The submission file: the one writer (predict and ensemble write through it), in exactly the sample
submission's format (columns, header, id order, value kind); and the one reader that scores a submission
against known test labels, as a leaderboard would (`evaluate` and the leaderboard's Public/Private columns).

Every table here is polars, every cell of a sample or solution a string as `foldvision.corpus` reads it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from foldvision.console import console
from foldvision.corpus import TestSet, sort_classes
from foldvision.errors import UserError
from foldvision.files import write_atomic
from foldvision.results.decision import DecisionRule, grades_of, tags_of
from foldvision.results.metrics import accuracy, auc, fbeta_tags, macro_f1, score
from foldvision.run import Predictions
from foldvision.tables import read_table
from foldvision.targets import Task


@dataclass(frozen=True)
class Format:
    """What a sample submission asks for."""

    id_col: str
    # "probability": P(one class) in one column; "classes": one column per class or tag; "label": a class name;
    # "tags": a multi-label image's tags joined by `tag_sep`; "value": a number (regression); "grade": an integer
    # grade (ordinal)
    kind: str
    columns: list[str]  # value columns, in the sample's order
    classes: list[str]  # for "classes": the class of each column; for "probability": the class scored
    sep: str
    header: bool  # write a header row (SIGNATE samples often have none)
    tag_sep: str = " "  # "tags": between an image's tags (Planet: a space)

    def labels_by_rule(self, decision: str) -> bool:
        """Whether the decisions come from the OOF-fitted rule (`predict.decision: oof`, where its nested score
        beats the plain decision), not the plain decision."""
        return self.kind in DECIDED and decision == "oof"

    def describe(self) -> str:
        return f"{self.kind} in {', '.join(self.columns)}{'' if self.header else ', no header'}"


@dataclass(frozen=True)
class Sample:
    """A corpus's sample submission as read (every cell a string) and the format it asks for."""

    frame: pl.DataFrame
    path: Path
    format: Format


def _numbers(values: pl.Series) -> np.ndarray:
    """The cells as floats (spaces around a number allowed), NaN where a cell is no number ('', 'abc', 'NaN')."""
    return values.str.strip_chars().cast(pl.Float64, strict=False).fill_null(np.nan).to_numpy()


def _is_number(values: pl.Series) -> bool:
    return bool(len(values)) and not np.isnan(_numbers(values)).any()


DECIDED = ("label", "tags", "value", "grade")  # formats written from decisions, not probabilities


def infer_format(sample: pl.DataFrame, path: Path, classes: list[str], metric: str, value: str = "auto",
                 header: bool = True, kind: str = "single") -> Format:
    """Read the value kind off the sample: its column names and the values it holds, for the task kind."""
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    id_col, columns = sample.columns[0], list(sample.columns[1:])
    if not columns:
        raise UserError(f"{path}: the sample submission has only an id column; it should show the value columns")
    if kind != "single":
        return _task_format(sample, path, classes, value, header, kind)
    if len(columns) > 1 and not header:
        if len(columns) != len(classes) or value == "label":
            raise UserError(f"{path}: {len(columns)} value columns without a header for {len(classes)} classes; "
                            "give the sample a header naming the classes")
        console.print(f"[dim]{path.name}: no header; its {len(columns)} columns taken as {', '.join(classes)}[/]")
        return Format(id_col, "classes", columns, list(classes), sep, header)
    if len(columns) > 1:
        missing = [c for c in columns if c not in classes]
        if missing or value == "label":
            raise UserError(f"{path}: columns {missing or columns} are not class names ({', '.join(classes)}); "
                            "the sample must have one value column or one column per class")
        return Format(id_col, "classes", columns, columns, sep, header)
    column = columns[0]
    if value == "auto":
        # a binary contest shows a probability (0.5) or is scored by AUC; anything else wants a class
        values = sample[column].str.strip_chars()
        numeric = _is_number(values)
        fractional = numeric and bool((_numbers(values) % 1 != 0).any())
        binary_probability = len(classes) == 2 and (fractional or (numeric and metric == "auc"))
        value = "probability" if binary_probability else "label"
        console.print(f"[dim]{path.name}: column '{column}' takes a {value}"
                      f"{'' if value == 'label' else ' (set predict.value=label to write classes)'}[/]")
    if value == "probability":
        if len(classes) != 2:
            raise UserError(f"{path}: one probability column for {len(classes)} classes; the sample must have "
                            f"one column per class ({', '.join(classes)}) or predict.value=label")
        positive = column if column in classes else classes[1]
        return Format(id_col, "probability", [column], [positive], sep, header)
    return Format(id_col, "label", [column], list(classes), sep, header)


def _task_format(sample: pl.DataFrame, path: Path, names: list[str], value: str, header: bool, kind: str) -> Format:
    """The format of a multi-label, regression or ordinal sample: one probability column per tag, or one column
    of tags, a number or a grade; a sample that fits the task in no way is one line saying how it differs."""
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    id_col, columns = sample.columns[0], list(sample.columns[1:])
    what = {"multilabel": "tags", "regression": "value", "ordinal": "grade"}[kind]
    if kind == "multilabel" and len(columns) > 1:
        named = columns if header else list(names)
        missing = [c for c in named if c not in names]
        if missing or len(columns) != len(names) or value == "label":
            raise UserError(f"{path}: {len(columns)} value columns ({', '.join(columns[:4])}...) for "
                            f"{len(names)} tags ({', '.join(names[:4])}...); a multi-label sample has one column "
                            "of tags or one probability column per tag, named by the tag")
        return Format(id_col, "classes", columns, named, sep, header)
    if len(columns) > 1:
        raise UserError(f"{path}: {len(columns)} value columns; a {kind} submission has one (the predicted "
                        f"{what}): is data.task={kind} right for this corpus?")
    if value == "probability":
        raise UserError(f"predict.value=probability: a {kind} submission with one column holds the {what}; "
                        "set predict.value=auto")
    cells = sample[columns[0]].cast(pl.String).drop_nulls().to_list()
    tag_sep = next((s for s in (" ", "|", ";") if any(s in c.strip() for c in cells)), " ")
    return Format(id_col, what, columns, list(names), sep, header, tag_sep)


def sample_format(test: TestSet | None, task: Task, metric: str, value: str = "auto") -> Sample | None:
    """The test set's sample submission and its format (checked before minutes of inference); None without one."""
    if test is None or test.sample is None:
        return None
    fmt = infer_format(test.sample, test.sample_path, list(task.names), metric, value, test.sample_header, task.kind)
    return Sample(test.sample, test.sample_path, fmt)


def build(sample: pl.DataFrame, fmt: Format, ids: list[str], probs: np.ndarray, classes: list[str],
          rule: DecisionRule | None = None) -> pl.DataFrame:
    """The submission rows, in the sample's id order, checked before anything is written.

    Labels, tags, grades and values come from `rule` (fitted on the OOF predictions; its plain decision where
    the rule lost nested) when given, else from the plain decision (argmax, tags at 0.5, rounding, the value).
    """
    order = {i: n for n, i in enumerate(ids)}
    sample_ids = sample[fmt.id_col].str.strip_chars().to_list()
    absent = [i for i in sample_ids if i not in order]
    if absent:
        raise UserError(f"no prediction for {len(absent)} sample submission ids (e.g. '{absent[0]}')")
    probs = probs[[order[i] for i in sample_ids]]
    if not np.isfinite(probs).all():
        raise UserError("the predictions are not all finite numbers; the models diverged")
    if fmt.kind not in ("value", "grade") and ((probs < 0).any() or (probs > 1 + 1e-6).any()):
        raise UserError("predicted probabilities are not all within [0, 1]; the models diverged")
    col = {c: i for i, c in enumerate(classes)}
    values: dict[str, pl.Series | np.ndarray] = {fmt.id_col: sample[fmt.id_col]}  # the ids as the sample spells them
    if fmt.kind == "classes":  # a headerless sample's columns are named column1...: fmt.classes maps them
        for name, cls in zip(fmt.columns, fmt.classes):
            values[name] = probs[:, col[cls]]
    elif fmt.kind == "probability":
        values[fmt.columns[0]] = probs[:, col[fmt.classes[0]]]
    else:
        values[fmt.columns[0]] = _decided(fmt, probs, classes, rule)
    out = pl.DataFrame(values)
    assert out.height == sample.height and out.columns == sample.columns
    return out


def _decided(fmt: Format, probs: np.ndarray, classes: list[str], rule: DecisionRule | None) -> pl.Series:
    """The one decided column: class names, joined tags, values or integer grades."""
    if fmt.kind == "tags":
        tags = rule.apply(probs) if rule is not None else tags_of(probs, 0.5)
        return pl.Series([fmt.tag_sep.join(classes[j] for j in np.flatnonzero(row)) for row in tags], dtype=pl.String)
    if fmt.kind == "value":
        return pl.Series(rule.apply(probs) if rule is not None else probs[:, 0], dtype=pl.Float64)
    if fmt.kind == "grade":
        plain = grades_of(probs, np.arange(len(classes) - 1) + 0.5)
        grades = rule.apply(probs) if rule is not None else plain
        return pl.Series([classes[g] for g in grades], dtype=pl.String)
    picked = rule.apply(probs) if rule is not None else probs.argmax(axis=1)
    return pl.Series([classes[i] for i in picked], dtype=pl.String)


def _shortest_floats(frame: pl.DataFrame) -> pl.DataFrame:
    """Float columns as Python writes them (repr: shortest round trip, '1e-09'). Submissions have always been
    written so; polars' own float text differs in the exponents ('1e-9', '0.000032'), and a submission must not
    change byte for byte with the library that writes it."""
    return frame.with_columns(pl.Series(c, [repr(v) for v in frame[c].to_list()], dtype=pl.String)
                              for c in frame.columns if frame[c].dtype == pl.Float64)


def write_submission(out: Path, preds: Predictions, sample: Sample | None, rule: DecisionRule | None = None) -> str:
    """The one submission writer: `preds` (test ids, class probabilities, class order) in the sample's format
    (labels by `rule` when given, else argmax), or, without a sample, the id + class-probability table.
    Everything is checked before the file is written, atomically. Returns the line that says what was written.
    """
    if sample is None:
        write_atomic(out, lambda tmp: preds.frame().write_csv(tmp))
        return f"wrote {out} (no sample submission: id + class probabilities)"
    fmt = sample.format
    frame = build(sample.frame, fmt, preds.ids, preds.probs, preds.classes, rule)
    written = _shortest_floats(frame)
    write_atomic(out, lambda tmp: written.write_csv(tmp, separator=fmt.sep, include_header=fmt.header))
    return f"wrote {out} ({frame.height} rows, {fmt.describe()})"


# ---- a submission scored against the test labels -----------------------------------------------------------------
SOLUTION_PARTS = "Usage"  # a Kaggle solution's column naming each row's leaderboard (Public, Private)


def _part_scores(truth: list[str], values: pl.DataFrame) -> dict[str, float]:
    """One leaderboard part's scores (`values`: the submission's value columns, rows aligned to `truth`),
    computed by `foldvision.results.metrics`, as the OOF scores are: probabilities by AUC (and accuracy and log
    loss for a column per class), labels by accuracy and macro-F1."""
    numbers = np.column_stack([_numbers(values[c]) for c in values.columns])
    first = values[values.columns[0]].to_list()
    if np.isnan(numbers).any() or (values.width == 1 and set(first) <= set(truth)):  # labels, even numeric ones
        return {"accuracy": accuracy(truth, first), "macro_f1": macro_f1(truth, first)}
    if values.width == 1:  # P(positive): the larger of the two true labels
        positive, p = sort_classes(truth)[-1], numbers[:, 0]
        return {"auc": auc((np.asarray(truth) == positive).astype(np.int64), np.stack([1 - p, p], axis=1))}
    index = {c: i for i, c in enumerate(values.columns)}
    unknown = sorted(set(truth) - set(index))
    if unknown:
        raise UserError(f"solution labels {unknown} are not submission columns")
    scores = score(np.array([index[t] for t in truth], dtype=np.int64), numbers)
    return {name: scores[name] for name in ("auc", "accuracy", "log_loss")}


def _split_tags(cells: list[str]) -> list[list[str]]:
    """A column of multi-label cells as tag lists: tags split at spaces, '|', ';' or ','."""
    return [[t for t in re.split(r"[\s|;,]+", c.strip()) if t] for c in cells]


def _task_part_scores(kind: str, truth: list[str], values: pl.DataFrame) -> dict[str, float]:
    """A multi-label, regression or ordinal part's scores, by `foldvision.results.metrics` as the OOF scores."""
    if kind == "multilabel":
        true_tags = _split_tags(truth)
        if values.width == 1:  # tags: the F-scores of the decisions
            pred_tags = _split_tags([str(v) for v in values[values.columns[0]].to_list()])
            names = sorted({t for row in true_tags + pred_tags for t in row})
            y, pred = _indicator(true_tags, names), _indicator(pred_tags, names)
            return {m: fbeta_tags(y, pred, *avg) for m, avg in
                    (("samples_f1", ("samples",)), ("samples_f2", ("samples", 2.0)), ("micro_f1", ("micro",)),
                     ("macro_f1", ("macro",)))}
        unknown = sorted({t for row in true_tags for t in row} - set(values.columns))
        if unknown:
            raise UserError(f"solution tags {unknown[:5]} are not submission columns")
        probs = np.column_stack([_numbers(values[c]) for c in values.columns])
        return score(_indicator(true_tags, list(values.columns)), probs, "multilabel")
    numbers = _numbers(values[values.columns[0]])
    if np.isnan(numbers).any() or values.width != 1:
        raise UserError(f"a {kind} submission has one number per image; found {values.width} columns or a cell "
                        "that is no number")
    if kind == "regression":
        return score(np.array([float(t) for t in truth]), numbers[:, None], "regression")
    # the grade (or the expected grade) against the true grade
    return score(np.array([int(float(t)) for t in truth]), numbers[:, None], "ordinal")


def _indicator(rows: list[list[str]], names: list[str]) -> np.ndarray:
    index = {n: j for j, n in enumerate(names)}
    out = np.zeros((len(rows), len(names)))
    for i, row in enumerate(rows):
        out[i, [index[t] for t in row if t in index]] = 1
    return out


def score_submission(submission_path: Path, solution_path: Path, kind: str = "single") -> dict[str, dict[str, float]]:
    """A submission's scores against the solution (id, label[, Usage]), rows joined by id: {'all': {...}} and,
    with a Usage column, one entry per part ('Private', 'Public'), each with its row count `n`. `kind`: the
    task kind (foldvision.targets); a multi-label solution's label holds the image's tags (space-separated)."""
    sub = read_table(submission_path)
    solution = read_table(solution_path)
    if sub.width < 2 or solution.width < 2:
        short = submission_path if sub.width < 2 else solution_path
        raise UserError(f"{short}: needs an id column and a value column")
    id_col, label_col = solution.columns[0], solution.columns[1]
    row_of: dict[str, int] = {}
    for n, i in enumerate(sub[sub.columns[0]].to_list()):
        row_of.setdefault(i, n)
    missing = set(solution[id_col].to_list()) - row_of.keys()
    if missing:
        raise UserError(f"{submission_path}: {len(missing)} solution ids have no row (e.g. '{sorted(missing)[0]}')")
    parts = {"all": solution}
    if SOLUTION_PARTS in solution.columns:
        parts |= {usage: solution.filter(pl.col(SOLUTION_PARTS) == usage)
                  for usage in sorted(solution[SOLUTION_PARTS].unique().to_list())}
    values = sub.drop(sub.columns[0])

    def part_scores(truth: list[str], rows: pl.DataFrame) -> dict[str, float]:
        return _part_scores(truth, rows) if kind == "single" else _task_part_scores(kind, truth, rows)

    return {name: {"n": part.height, **part_scores(part[label_col].to_list(),
                                                    values[[row_of[i] for i in part[id_col].to_list()]])}
            for name, part in parts.items()}
