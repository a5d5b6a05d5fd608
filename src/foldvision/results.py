"""What a finished experiment left in its run folder, read back for comparison.

An experiment is a folder `runs/<name>/` with `config.yaml` and, once scored, `scores.json`. `ablate`,
`leaderboard` and `report` read it through `load`; nothing here trains or writes.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from foldvision.errors import UserError
from foldvision.evaluate import evaluate
from foldvision.metrics import LOWER_IS_BETTER

# A corpus's test labels: Kaggle's published solution (with a Public/Private `Usage` column), or held-back
# labels such as the demo corpus's.
SOLUTION_NAMES = ("solution.csv", "test_labels.csv")
# Config keys that differ between any two experiments by definition.
IGNORED_KEYS = ("name",)


@dataclass
class Experiment:
    name: str
    run_dir: Path
    config: dict  # the resolved config (config.yaml without its _meta)
    meta: dict  # foldvision version and git commit
    scores: dict  # scores.json
    seconds: float  # training wall time: every fold's epoch times added up

    @property
    def metric(self) -> str:
        return self.scores["metric"]

    def oof(self, metric: str | None = None) -> float:
        return self.scores["oof"][metric or self.metric]

    def fold_scores(self, metric: str | None = None) -> list[float]:
        return [fold[metric or self.metric] for fold in self.scores["folds"]]

    def fold_spread(self, metric: str | None = None) -> tuple[float, float]:
        """Mean and standard deviation of the fold scores (the OOF score is the one to rank by)."""
        values = self.fold_scores(metric)
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    @property
    def corpus(self) -> str:
        return str(self.config.get("data", {}).get("dir"))


def train_seconds(run_dir: Path) -> float:
    """Seconds spent training and validating, from every `fold<k>/history.csv` (a resumed fold counts once)."""
    total = 0.0
    for path in sorted(run_dir.glob("fold*/history.csv")):
        history = pd.read_csv(path)
        if "seconds" in history:
            total += float(history["seconds"].sum())
    return total


def load(run_dir: Path) -> Experiment | None:
    """The experiment in `run_dir`, or None while it has no scores.json yet."""
    config_path, scores_path = run_dir / "config.yaml", run_dir / "scores.json"
    if not (config_path.is_file() and scores_path.is_file()):
        return None
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    meta = config.pop("_meta", {}) or {}
    scores = json.loads(scores_path.read_text(encoding="utf-8"))
    return Experiment(run_dir.name, run_dir, config, meta, scores, train_seconds(run_dir))


def load_all(runs: Path) -> tuple[list[Experiment], list[str]]:
    """Every scored experiment under `runs/`, and the names of run folders not scored yet."""
    found, pending = [], []
    for run_dir in sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []:
        experiment = load(run_dir)
        if experiment is not None:
            found.append(experiment)
        elif (run_dir / "config.yaml").is_file():
            pending.append(run_dir.name)
    return found, pending


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'train': {'lr': 1e-3}} -> {'train.lr': 1e-3}; lists stay values."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing_keys(configs: Iterable[dict]) -> list[str]:
    """The config keys whose value is not the same in every one of `configs`, in config order."""
    flats = [flatten(c) for c in configs]
    keys = list(dict.fromkeys(k for flat in flats for k in flat))
    missing = object()
    return [k for k in keys if k not in IGNORED_KEYS
            and len({repr(flat.get(k, missing)) for flat in flats}) > 1]


def short_value(value, width: int = 40) -> str:
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def higher_is_better(metric: str) -> bool:
    return metric not in LOWER_IS_BETTER


def find_solution(data_dir: str | Path | None) -> Path | None:
    if data_dir is None:
        return None
    return next((Path(data_dir) / n for n in SOLUTION_NAMES if (Path(data_dir) / n).is_file()), None)


def leaderboard_scores(submission: Path, solution: Path | None, metric: str) -> tuple[str, dict[str, float]]:
    """The submission scored against the corpus's solution: ('auc', {'public': ., 'private': .}) when the
    solution has a Usage column, ('auc', {'test': .}) when not; ('', {}) without a submission or solution.

    `metric` is used when the submission's kind allows it (AUC needs probabilities), else the first one
    `foldvision.evaluate` computes (accuracy for a label submission).
    """
    if solution is None or not submission.is_file():
        return "", {}
    try:
        results = evaluate(submission, solution)
    except UserError:  # a submission for another test set, or a solution we cannot read: no score, no crash
        return "", {}
    parts = {k.lower(): v for k, v in results.items() if k != "all"} or {"test": results["all"]}
    order = {"public": 0, "private": 1}  # as a competition shows them
    parts = dict(sorted(parts.items(), key=lambda item: order.get(item[0], 2)))
    names = [k for k in results["all"] if k != "n"]
    chosen = metric if metric in names else names[0]
    return chosen, {part: float(values[chosen]) for part, values in parts.items()}


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"
