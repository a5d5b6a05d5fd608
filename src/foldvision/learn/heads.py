"""What a model's outputs mean for each task kind (foldvision.targets): how many there are, the targets the loss
compares them with, and the map from outputs to what `Predictions` hold (probabilities, or values in the user's
units). The train stage fits a fold's `Head` on its training rows; best.pt records it (`to_dict`), so validation,
predict, TTA and `foldvision infer` map a model's outputs the same way.

    kind        outputs  link        targets (training)                     values (validation, OOF, test)
    single      K        softmax     the class index                        softmax
    multilabel  K        sigmoid     the 0/1 tags                           sigmoid per tag (rows not normalised)
    regression  1        identity    (y − mean) / std of the training rows  output · std + mean
                         scaled      scaled_bce: (y − min) / (max − min)    sigmoid(output) · (max − min) + min
    ordinal     1        as regression, on the grade                        the grade as a real number
                K−1      cumulative  [grade > k] for k = 0..K−2             expected grade Σ_k sigmoid(output_k)

Standardising matters: a regression head starts near 0 and a target such as Pawpularity (1..100) would take
most of a short run to reach; the loss is then on the scale of every other loss, so train.lr keeps its meaning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from foldvision.targets import Task

LINKS = ("softmax", "sigmoid", "identity", "scaled", "cumulative")


@dataclass(frozen=True)
class Head:
    kind: str = "single"
    names: tuple[str, ...] = ()
    link: str = "softmax"  # one of LINKS (the module's table)
    shift: float = 0.0  # regression, ordinal (identity, scaled): the user's units = model's units · scale + shift
    scale: float = 1.0

    def __post_init__(self):
        if self.link not in LINKS:
            raise ValueError(f"unknown link {self.link!r}")
        object.__setattr__(self, "names", tuple(self.names))

    @classmethod
    def fit(cls, task: Task, loss: str, y_train: np.ndarray) -> Head:
        """The head a fold trains: `loss` is the resolved loss name, `y_train` its training rows' labels
        (`Task.encode`), whose mean and spread (or range, for scaled_bce) set a value's scale."""
        if task.kind in ("single", "multilabel"):
            return cls(task.kind, task.names, "softmax" if task.kind == "single" else "sigmoid")
        if loss == "cumulative":
            return cls(task.kind, task.names, "cumulative")
        y = np.asarray(y_train, dtype=np.float64)
        if loss == "scaled_bce":
            low, high = float(y.min()), float(y.max())
            return cls(task.kind, task.names, "scaled", low, (high - low) or 1.0)
        return cls(task.kind, task.names, "identity", float(y.mean()), float(y.std()) or 1.0)

    @classmethod
    def from_dict(cls, data: dict | None, classes: list[str]) -> Head:
        """A checkpoint's `head`; one written before heads existed is a single-label model of `classes`."""
        if not data:
            return cls("single", tuple(classes), "softmax")
        return cls(data["kind"], tuple(data["names"]), data["link"], float(data["shift"]), float(data["scale"]))

    def to_dict(self) -> dict:
        """Plain values, as best.pt (torch.load(weights_only=True)) and a package's JSON store them."""
        return {**asdict(self), "names": list(self.names)}

    @property
    def task(self) -> Task:
        return Task(self.kind, self.names)

    @property
    def outputs(self) -> int:
        """The model's number of outputs (its classifier's width)."""
        if self.link == "cumulative":
            return len(self.names) - 1
        return 1 if self.task.is_value else len(self.names)

    def targets(self, y: np.ndarray) -> np.ndarray:
        """What the loss compares the outputs with, per row (`y` as `Task.encode` gives it): class indices for
        single-label, else float32 rows of `outputs` columns, so Mixup mixes them as they are."""
        if self.link == "softmax":
            return np.asarray(y)
        y = np.asarray(y, dtype=np.float64)
        if self.link == "sigmoid":
            return y.astype(np.float32)
        if self.link == "cumulative":
            return (y[:, None] > np.arange(self.outputs)[None, :]).astype(np.float32)
        return ((y - self.shift) / self.scale)[:, None].astype(np.float32)

    def soft_targets(self, values: np.ndarray) -> np.ndarray:
        """A value in the user's units that is not a label (a teacher's prediction: for ordinal a real expected
        grade) as the loss's target, float32 rows of `outputs` columns: standardised; scaled to 0..1 and clipped
        there (BCE's targets); cumulative: P(grade > k) ≈ clip(v − k, 0, 1), which is [grade > k] for a whole
        grade and sums back to v over k, so the student's expected grade at its target is the teacher's."""
        v = np.asarray(values, dtype=np.float64)
        if self.link == "cumulative":
            return np.clip(v[:, None] - np.arange(self.outputs)[None, :], 0, 1).astype(np.float32)
        scaled = (v - self.shift) / self.scale
        return (np.clip(scaled, 0, 1) if self.link == "scaled" else scaled)[:, None].astype(np.float32)

    def truth(self, targets: torch.Tensor) -> np.ndarray:
        """`targets` (unmixed) back to the labels as `Task.encode` gives them: what the train tally scores."""
        if self.link == "softmax":
            return targets.cpu().numpy()
        t = targets.detach().cpu().double().numpy()
        if self.link == "sigmoid":
            return t
        value = t.sum(axis=1) if self.link == "cumulative" else t[:, 0] * self.scale + self.shift
        return np.rint(value).astype(np.int64) if self.kind == "ordinal" else value

    def values(self, logits: torch.Tensor) -> torch.Tensor:
        """Outputs to what Predictions hold: probabilities (single, multilabel) or one value in the user's
        units (regression; ordinal: the expected grade), float32."""
        logits = logits.float()
        if self.link == "softmax":
            return torch.softmax(logits, dim=1)
        if self.link == "sigmoid":
            return torch.sigmoid(logits)
        if self.link == "cumulative":  # E[grade] = Σ_k P(grade > k)
            return torch.sigmoid(logits).sum(dim=1, keepdim=True)
        if self.link == "scaled":
            return torch.sigmoid(logits) * self.scale + self.shift
        return logits * self.scale + self.shift

    def describe(self) -> str:
        """The fold's line about its targets (empty for classes and tags)."""
        if self.link in ("identity", "scaled"):
            how = "standardised: mean" if self.link == "identity" else "scaled to 0..1: min"
            spread = "std" if self.link == "identity" else "range"
            return (f"{self.names[0] if self.kind == 'regression' else 'grade'} {how} {self.shift:.4g}, "
                    f"{spread} {self.scale:.4g} of the training rows")
        if self.link == "cumulative":
            return f"{self.outputs} cumulative logits P(grade > k)"
        return ""
