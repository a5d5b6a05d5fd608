"""Results as people read them: one experiment's score tables, and the comparison of several.

A scored run folder is read through `foldvision.run` into an `Experiment`; `score` and `report` show its
tables (`fold_scores`, `per_class`), `ablate` and `leaderboard` compare experiments (`comparison_row`,
`comparison_frame`, `comparison_shown`). Every table is formatted here once, as a `Shown` (formatted cells),
and drawn in the terminal (rich), in markdown or in the report's HTML. Nothing here trains or writes.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from rich.markup import escape
from rich.table import Table

from foldvision.errors import UserError
from foldvision.results.metrics import LOWER_IS_BETTER
from foldvision.results.submission import score_submission
from foldvision.run import Run, submission_csv

# A corpus's test labels: Kaggle's published solution (with a Public/Private `Usage` column), or held-back
# labels such as the demo corpus's.
SOLUTION_NAMES = ("solution.csv", "test_labels.csv")
# Config keys that differ between any two experiments by definition.
IGNORED_KEYS = ("name",)
LEADERBOARD_PARTS = ("public_", "private_", "test_")  # column prefixes of a submission's scores


# ---- one experiment ----------------------------------------------------------------------------------------
@dataclass
class Experiment:
    name: str
    run_dir: Path
    config: dict  # the resolved config as saved (`Run.read_config_dict`), without its _meta
    meta: dict  # foldvision version and git commit
    scores: dict  # the score stage's output (`Run.read_scores`)
    seconds: float  # training wall time: every fold's epoch times added up

    @property
    def metric(self) -> str:
        return self.scores["metric"]

    @property
    def kind(self) -> str:
        """The task kind (runs scored before data.task existed are single-label)."""
        return self.scores.get("kind", "single")

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


def train_seconds(run: Run) -> float:
    """Seconds spent training and validating, from every fold's history (a resumed fold counts once)."""
    return sum(float(h["seconds"].sum()) for h in run.read_histories().values() if "seconds" in h.columns)


def load(run_dir: Path) -> Experiment | None:
    """The experiment in `run_dir`, or None while it is not scored yet."""
    run = Run(run_dir)
    if not run.is_scored():
        return None
    config = run.read_config_dict()
    meta = config.pop("_meta", {}) or {}
    return Experiment(run.name, run.root, config, meta, run.read_scores(), train_seconds(run))


def load_all(runs: Path) -> tuple[list[Experiment], list[str]]:
    """Every scored experiment under `runs/`, and the names of run folders not scored yet."""
    found, pending = [], []
    for run_dir in sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []:
        experiment = load(run_dir)
        if experiment is not None:
            found.append(experiment)
        elif Run(run_dir).exists():
            pending.append(run_dir.name)
    return found, pending


# ---- a table as shown -------------------------------------------------------------------------------------
@dataclass
class Shown:
    """A table as people read it: column names, rows of formatted cells, the rows shown bold."""

    columns: list[str]
    rows: list[list[str]]
    strong: tuple[int, ...] = ()
    left: tuple[str, ...] = ()  # text columns, aligned left (the first column always is)

    def column(self, name: str) -> list[str]:
        i = self.columns.index(name)
        return [row[i] for row in self.rows]

    def rich(self, title: str = "") -> Table:
        table = Table(title=title or None)
        for i, name in enumerate(self.columns):
            table.add_column(name, justify="left" if i == 0 or name in self.left else "right", overflow="fold")
        for i, row in enumerate(self.rows):
            # escaped: a value such as '[hflip, vflip]' is text, not rich markup
            table.add_row(*(f"[bold]{escape(v)}" if i in self.strong else escape(v) for v in row))
        return table

    def markdown(self) -> str:
        import pandas as pd  # noqa: PLC0415 - the edge where a library (tabulate, via pandas) wants a DataFrame

        return pd.DataFrame(self.rows, columns=self.columns).to_markdown(index=False, disable_numparse=True)


def fmt(value: float | None, digits: int = 4) -> str:
    """A score as shown: fixed digits; '–' for none (an AUC of a fold without both classes is NaN)."""
    return "–" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def _spread(values: list[float]) -> str:
    array = np.asarray(values, dtype=float)
    std = float(np.std(array, ddof=1)) if len(array) > 1 else 0.0
    return f"{fmt(float(np.mean(array)))} ± {fmt(std)}"


def score_names(scores: dict) -> list[str]:
    """The metrics a scores.json holds, in the task kind's order (`metrics.METRICS`)."""
    return list(scores["oof"])


def fold_scores(scores: dict) -> Shown:
    """Every fold's scores, their mean ± std, and (bold) the score of the whole OOF set."""
    names = score_names(scores)
    rows = [[f"fold {f['fold']}", str(f["n"]), *(fmt(f[m]) for m in names)] for f in scores["folds"]]
    rows.append(["mean ± std", "", *(_spread([f[m] for f in scores["folds"]]) for m in names)])
    rows.append(["OOF", str(scores["n"]), *(fmt(scores["oof"][m]) for m in names)])
    return Shown(["", "n", *names], rows, strong=(len(rows) - 1,))


def per_class(scores: dict) -> Shown | None:
    """Precision and recall per class, grade or tag: the whole OOF set, and (in brackets) mean ± std over folds;
    for multi-label also F1 and the tag's threshold (the fitted rule's where it is used, else 0.5). None for
    regression."""
    if "per_class" not in scores:
        return None
    kind = scores.get("kind", "single")
    stats = ("precision", "recall", "f1") if kind == "multilabel" else ("precision", "recall")
    rows = [[name, str(c["support"]),
             *(f"{c[s]:.3f} ({c[f'{s}_mean']:.3f} ± {c[f'{s}_std']:.3f})" for s in stats if s in c)]
            for name, c in scores["per_class"].items()]
    what = {"multilabel": "tag", "ordinal": "grade"}.get(kind, "class")
    columns = [what, "n", *(f"{s} OOF (folds mean ± std)" for s in stats)]
    decision = scores.get("decision") or {}
    if kind == "multilabel" and decision.get("values"):
        used = decision.get("used") is not False
        thresholds = decision["values"] if used else [0.5] * len(rows)
        rows = [[*row, f"{t:.2f}"] for row, t in zip(rows, thresholds)]
        columns.append("threshold" + ("" if used else " (plain: the fitted ones lost nested)"))
    return Shown(columns, rows)


def square(matrix: list[list[int]], names: list[str], corner: str) -> Shown:
    """A square count matrix (confusion, co-occurrence) as a table whose rows are named as its columns."""
    return Shown([corner, *names], [[name, *(str(v) for v in row)] for name, row in zip(names, matrix)])


def residual_table(scores: dict) -> Shown:
    """Regression: the residuals (prediction minus truth) summarised, and the target's and predictions' range."""
    r = scores["residuals"]
    keys = ("mean", "std", "q05", "q25", "median", "q75", "q95", "max_abs")
    return Shown(["", *keys], [["residual", *(fmt(r[k]) for k in keys)]]), \
        Shown(["", "min", "max"], [["target", fmt(r["y_min"]), fmt(r["y_max"])],
                                   ["prediction", fmt(r["pred_min"]), fmt(r["pred_max"])]])


def kind_tables(scores: dict) -> list[tuple[str, Shown]]:
    """The task kind's tables after the fold scores, (title, table) each: per class (single), per tag and the
    tags' co-occurrence (multilabel), per grade and the confusion matrix of the rounded grade (ordinal), the
    residuals (regression)."""
    kind = scores.get("kind", "single")
    if kind == "regression":
        residual, ranges = residual_table(scores)
        return [("residuals (prediction - truth), OOF", residual), ("ranges", ranges)]
    title = {"multilabel": "per tag (OOF, tags at 0.5; mean ± std over folds)",
             "ordinal": "per grade (OOF, the rounded expected grade; mean ± std over folds)"}
    tables = [(title.get(kind, "per class (OOF; mean ± std over folds)"), per_class(scores))]
    if kind == "multilabel":
        tables.append(("tag co-occurrence (images with both tags; the diagonal: each tag's images)",
                       square(scores["cooccurrence"], scores["classes"], "tag")))
    elif kind == "ordinal":
        tables.append(("confusion matrix of the rounded grade (rows: true grade)",
                       square(scores["confusion_matrix"], scores["classes"], "true \\ pred")))
    return tables


def scores_title(scores: dict) -> str:
    return f"{scores['task']} · {scores['n']} OOF images · picked by {scores['metric']}"


# ---- comparing experiments --------------------------------------------------------------------------------
def flatten(tree: dict, prefix: str = "") -> dict:
    """{'train': {'lr': 1e-3}} -> {'train.lr': 1e-3}; lists stay values; an empty section has no keys."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
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


def leaderboard_scores(submission: Path, solution: Path | None, metric: str,
                       kind: str = "single") -> tuple[str, dict[str, float]]:
    """The submission scored against the corpus's solution: ('auc', {'public': ., 'private': .}) when the
    solution has a Usage column, ('auc', {'test': .}) when not; ('', {}) without a submission or solution.

    `metric` is used when the submission's kind allows it (AUC needs probabilities), else the first one
    `score_submission` computes (accuracy for a label submission).
    """
    if solution is None or not submission.is_file():
        return "", {}
    try:
        results = score_submission(submission, solution, kind)
    except UserError:  # a submission for another test set, or a solution we cannot read: no score, no crash
        return "", {}
    parts = {k.lower(): v for k, v in results.items() if k != "all"} or {"test": results["all"]}
    order = {"public": 0, "private": 1}  # as a competition shows them
    parts = dict(sorted(parts.items(), key=lambda item: order.get(item[0], 2)))
    names = [k for k in results["all"] if k != "n"]
    chosen = metric if metric in names else names[0]
    return chosen, {part: float(values[chosen]) for part, values in parts.items()}


def comparison_row(exp: Experiment, metric: str, submissions: Path) -> dict:
    """One experiment's raw numbers in a comparison: OOF score, fold scores and their spread, its submission's
    Public/Private scores (when the corpus has a solution file) and training time."""
    mean, std = exp.fold_spread(metric)
    lb_metric, lb = leaderboard_scores(submission_csv(submissions, exp.name), find_solution(exp.corpus), metric,
                                       exp.kind)
    return {f"oof_{metric}": exp.oof(metric), "folds": " ".join(f"{s:.4f}" for s in exp.fold_scores(metric)),
            "folds_mean": mean, "folds_std": std, **{f"{part}_{lb_metric}": v for part, v in lb.items()},
            "train_seconds": exp.seconds}


def comparison_frame(rows: list[dict]) -> pl.DataFrame:
    """Rows of raw numbers as one table: a column that only some rows have (a Public score) sits where those
    rows have it, empty elsewhere; NaN scores are empty too, so they sort last and read back as missing."""
    columns: list[str] = []
    for row in rows:
        previous = None
        for key in row:
            if key not in columns:
                columns.insert(columns.index(previous) + 1 if previous else len(columns), key)
            previous = key
    table = pl.DataFrame({c: [row.get(c) for row in rows] for c in columns}, strict=False)
    return table.with_columns(pl.col(pl.Float64).fill_nan(None))


def best_row(table: pl.DataFrame, metric: str) -> int | None:
    scores = table[f"oof_{metric}"].fill_null(np.nan).to_numpy().astype(float)
    if np.isnan(scores).all():
        return None
    return int(np.nanargmax(scores) if higher_is_better(metric) else np.nanargmin(scores))


def comparison_shown(table: pl.DataFrame, ranked: bool = False) -> Shown:
    """A comparison table (the ablation's or the leaderboard's numbers) as it is shown: `ranked` numbers the rows;
    the columns between `experiment` and the OOF score (the ablated values) are shown as they are."""
    metric = next(c for c in table.columns if c.startswith("oof_")).removeprefix("oof_")
    first, oof = table.columns.index("experiment"), table.columns.index(f"oof_{metric}")
    cells: dict[str, list[str]] = {}
    if ranked:
        cells["#"] = [str(i) for i in range(1, len(table) + 1)]
    cells["experiment"] = table["experiment"].to_list()
    for column in table.columns[first + 1: oof]:
        cells[column] = [short_value(v) for v in table[column].to_list()]
    cells[f"OOF {metric}"] = [fmt(v) for v in table[f"oof_{metric}"].to_list()]
    if "folds" in table.columns:
        cells["folds"] = table["folds"].to_list()
    cells["folds mean ± std"] = [f"{fmt(m)} ± {fmt(s)}" for m, s in zip(table["folds_mean"], table["folds_std"])]
    if "delta_vs_base" in table.columns:
        cells["Δ vs base"] = ["base" if i == 0 else "–" if d is None else f"{d:+.4f}"
                              for i, d in enumerate(table["delta_vs_base"].to_list())]
    for column in table.columns:
        if column.startswith(LEADERBOARD_PARTS):
            part, lb_metric = column.split("_", 1)
            cells[f"{part.capitalize()} {lb_metric}"] = ["" if v is None else fmt(v) for v in table[column].to_list()]
    cells["wall time"] = [format_seconds(s) for s in table["train_seconds"].to_list()]
    if "differs" in table.columns:
        cells["differs"] = table["differs"].to_list()
    best = best_row(table, metric)
    return Shown(list(cells), [list(row) for row in zip(*cells.values())], strong=() if best is None else (best,),
                 left=("experiment", "folds", "differs"))


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"
