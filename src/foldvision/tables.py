"""The tables the stages hand each other: the split (`folds.csv` + `classes.json`) and the probability tables.

An OOF or test table has an id column, (OOF) the fold and the true label, and one `prob_<class>` column per
class in the order of `classes.json`. Only pandas here: `score`, which reads these tables, never imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from foldvision.errors import UserError


def read_split(run_dir: Path) -> tuple[pd.DataFrame, list[str]]:
    """folds.csv (id, path, label, [group], fold, plus the class index `target`) and the class order."""
    for name in ("folds.csv", "classes.json"):
        if not (run_dir / name).is_file():
            raise UserError(f"{run_dir / name} not found: run the folds stage first (make folds EXP={run_dir.name})")
    table = pd.read_csv(run_dir / "folds.csv", dtype=str, keep_default_na=False)
    classes = json.loads((run_dir / "classes.json").read_text(encoding="utf-8"))
    table["fold"] = table["fold"].astype(int)
    table["target"] = table["label"].map({c: i for i, c in enumerate(classes)})
    return table, classes


def prob_columns(classes: list[str]) -> list[str]:
    return [f"prob_{c}" for c in classes]


def oof_frame(ids: list[str], fold: int, labels: list[str], probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """The OOF table layout: id, fold, label, prob_<class>..."""
    frame = pd.DataFrame({"id": ids, "fold": fold, "label": labels})
    return pd.concat([frame, pd.DataFrame(probs, columns=prob_columns(classes))], axis=1)
