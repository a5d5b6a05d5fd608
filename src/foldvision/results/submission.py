"""The submission file, in exactly the sample submission's format: columns, header, id order, value kind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from foldvision.console import console
from foldvision.results.decision import DecisionRule
from foldvision.errors import UserError
from foldvision.files import write_atomic


@dataclass
class Format:
    """What a sample submission asks for."""

    id_col: str
    kind: str  # "probability": P(one class) in one column; "classes": one column per class; "label": a class name
    columns: list[str]  # value columns, in the sample's order
    classes: list[str]  # for "classes": the class of each column; for "probability": the class scored
    sep: str
    header: bool  # write a header row (SIGNATE samples often have none)


def _is_number(values: pd.Series) -> bool:
    return bool(len(values)) and pd.to_numeric(values, errors="coerce").notna().all()


def infer_format(sample: pd.DataFrame, path: Path, classes: list[str], metric: str, value: str = "auto",
                 header: bool = True) -> Format:
    """Read the value kind off the sample: its column names and the values it holds."""
    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    id_col, columns = sample.columns[0], list(sample.columns[1:])
    if not columns:
        raise UserError(f"{path}: the sample submission has only an id column; it should show the value columns")
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
    values = sample[column].str.strip()
    if value == "auto":
        # a binary contest shows a probability (0.5) or is scored by AUC; anything else wants a class
        numeric = _is_number(values)
        fractional = numeric and bool((pd.to_numeric(values) % 1 != 0).any())
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


def build(sample: pd.DataFrame, fmt: Format, ids: list[str], probs: np.ndarray, classes: list[str],
          rule: DecisionRule | None = None) -> pd.DataFrame:
    """The submission rows, in the sample's id order, checked before anything is written.

    Labels come from `rule` (fitted on the OOF predictions) when given, else from argmax.
    """
    order = {i: n for n, i in enumerate(ids)}
    sample_ids = sample[fmt.id_col].str.strip()
    absent = [i for i in sample_ids if i not in order]
    if absent:
        raise UserError(f"no prediction for {len(absent)} sample submission ids (e.g. '{absent[0]}')")
    probs = probs[[order[i] for i in sample_ids]]
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1 + 1e-6).any():
        raise UserError("predicted probabilities are not all finite and within [0, 1]; the models diverged")
    out = pd.DataFrame({fmt.id_col: sample[fmt.id_col]})
    col = {c: i for i, c in enumerate(classes)}
    if fmt.kind == "classes":  # a headerless sample's columns are named column1...: fmt.classes maps them
        for name, cls in zip(fmt.columns, fmt.classes):
            out[name] = probs[:, col[cls]]
    elif fmt.kind == "probability":
        out[fmt.columns[0]] = probs[:, col[fmt.classes[0]]]
    else:
        picked = rule.apply(probs) if rule is not None else probs.argmax(axis=1)
        out[fmt.columns[0]] = np.asarray(classes, dtype=object)[picked]
    assert len(out) == len(sample) and list(out.columns) == list(sample.columns)
    return out


def write(frame: pd.DataFrame, path: Path, fmt: Format) -> None:
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False, sep=fmt.sep, header=fmt.header))
