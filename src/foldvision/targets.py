"""The kind of target a corpus has (`data.task`) and its labels as numbers (torch-free).

Image competitions come in four target kinds; each label is kept as a string in folds.csv and becomes numbers
only here, so every stage reads it the same way:

    kind        a label in folds.csv   Task.names                 Task.encode(labels)   predictions (columns)
    single      'cat'                  the classes                class index (int64)   P(class) (prob_<class>)
    multilabel  'sea|sunset' ('' none) the tags                   N x K 0/1 (float64)   P(tag) (prob_<tag>)
    regression  '3.25'                 (the target's name,)       the value (float64)   the value (pred)
    ordinal     '2'                    the grades '0'..'K-1'      the grade (int64)     the expected grade (pred)

Multi-label tags are written in `names` order, joined by TAG_SEP, whatever delimiter the user's table used.
Regression and ordinal predictions are one column in the user's units: for ordinal the expected grade, a real
number that a decision (cut-points) turns into a grade.

classes.json stores the task: a plain list of class names for single-label (what every run made before
`data.task` existed wrote, so those runs read unchanged), else {"task": kind, "names": [...]}.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TASKS = ("single", "multilabel", "regression", "ordinal")
TAG_SEP = "|"
PROB_PREFIX = "prob_"
VALUE_COLUMN = "pred"


@dataclass(frozen=True)
class Task:
    kind: str  # one of TASKS; never "auto" (data.task's "auto" is resolved when the label table is read)
    names: tuple[str, ...]

    def __post_init__(self):
        if self.kind not in TASKS:
            raise ValueError(f"unknown task kind {self.kind!r}")
        object.__setattr__(self, "names", tuple(self.names))

    @property
    def is_value(self) -> bool:
        """Regression and ordinal: one predicted number per image, not a probability per name."""
        return self.kind in ("regression", "ordinal")

    @property
    def columns(self) -> list[str]:
        """The prediction columns of oof.csv and test.csv, in order."""
        return [VALUE_COLUMN] if self.is_value else [f"{PROB_PREFIX}{n}" for n in self.names]

    def encode(self, labels: list[str]) -> np.ndarray:
        """The labels as the numbers models learn from and metrics score (see the module's table).

        A label that is not one of `names` (or not a number, for regression) is a ValueError: labels reach
        here after the corpus reader checked them, so this is a broken run folder, not a user's typo.
        """
        if self.kind == "regression":
            return np.array([float(label) for label in labels], dtype=np.float64)
        index = {n: i for i, n in enumerate(self.names)}
        if self.kind == "multilabel":
            out = np.zeros((len(labels), len(self.names)), dtype=np.float64)
            for row, label in enumerate(labels):
                for tag in label.split(TAG_SEP) if label else ():
                    out[row, index[tag]] = 1.0
            return out
        return np.array([index[label] for label in labels], dtype=np.int64)

    def join(self, tags) -> str:
        """A multi-label row's tags as folds.csv writes them: in `names` order, joined by TAG_SEP."""
        wanted = set(tags)
        return TAG_SEP.join(n for n in self.names if n in wanted)

    def unknown(self, labels) -> str | None:
        """The first label these names cannot encode, or None."""
        names = set(self.names)
        for label in labels:
            if self.kind == "multilabel":
                bad = [t for t in (label.split(TAG_SEP) if label else ()) if t not in names]
                if bad:
                    return bad[0]
            elif self.kind == "regression":
                try:
                    float(label)
                except ValueError:
                    return label
            elif label not in names:
                return label
        return None

    def to_json(self):
        return list(self.names) if self.kind == "single" else {"task": self.kind, "names": list(self.names)}

    @classmethod
    def from_json(cls, data) -> Task:
        if isinstance(data, list):
            return cls("single", tuple(data))
        return cls(data["task"], tuple(data["names"]))
