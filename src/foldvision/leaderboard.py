"""Every experiment in `runs/`, best first: OOF score, per-fold scores, training time, the config keys that set
it apart, and its submission's Public/Private scores when the corpus has a solution file.

    python -m foldvision.leaderboard runs --submissions submissions
    make leaderboard

Experiments are compared within a corpus (scores on different data do not rank), by the metric most of them
were picked by. A corpus's solution is `solution.csv` (Kaggle's, with a Public/Private `Usage` column) or
`test_labels.csv` in its folder; `submissions/<exp>.csv` is scored against it with `foldvision.evaluate`.
Also written to `runs/leaderboard.md` and `runs/leaderboard.csv`.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import pandas as pd
from rich.table import Table

from foldvision.console import console, print_wide
from foldvision.errors import write_atomic, write_text_atomic
from foldvision.results import (
    Experiment,
    differing_keys,
    find_solution,
    flatten,
    format_seconds,
    higher_is_better,
    leaderboard_scores,
    load_all,
    short_value,
)


def corpus_table(experiments: list[Experiment], submissions: Path) -> tuple[str, pd.DataFrame]:
    """The metric and the ranked rows (raw numbers) of the experiments of one corpus."""
    metric = Counter(e.metric for e in experiments).most_common(1)[0][0]
    keys = differing_keys(e.config for e in experiments)
    solution = find_solution(experiments[0].corpus)
    rows = []
    for exp in experiments:
        flat = flatten(exp.config)
        mean, std = exp.fold_spread(metric)
        lb_metric, lb = leaderboard_scores(submissions / f"{exp.name}.csv", solution, metric)
        rows.append({"corpus": exp.corpus, "experiment": exp.name, f"oof_{metric}": exp.oof(metric),
                     "folds": " ".join(f"{s:.4f}" for s in exp.fold_scores(metric)),
                     "folds_mean": mean, "folds_std": std,
                     **{f"{part}_{lb_metric}": value for part, value in lb.items()},
                     "train_seconds": exp.seconds,
                     "differs": " ".join(f"{k}={short_value(flat.get(k))}" for k in keys)})
    table = pd.DataFrame(rows).sort_values(f"oof_{metric}", ascending=not higher_is_better(metric),
                                           na_position="last", kind="stable")
    return metric, table.reset_index(drop=True)


def display(table: pd.DataFrame, metric: str) -> pd.DataFrame:
    spread = [f"{m:.4f} ± {s:.4f}" for m, s in zip(table["folds_mean"], table["folds_std"])]
    shown = pd.DataFrame({"#": range(1, len(table) + 1), "experiment": table["experiment"],
                          f"OOF {metric}": table[f"oof_{metric}"].map("{:.4f}".format),
                          "folds": table["folds"], "mean ± std": spread})
    for column in table.columns:
        if column.startswith(("public_", "private_", "test_")):
            part, lb_metric = column.split("_", 1)
            shown[f"{part.capitalize()} {lb_metric}"] = table[column].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
    shown["time"] = table["train_seconds"].map(format_seconds)
    shown["differs"] = table["differs"]
    return shown


def build(runs: Path, submissions: Path) -> tuple[list[tuple[str, str, pd.DataFrame]], list[str]]:
    """(corpus, metric, ranked table) per corpus, and the run folders not scored yet."""
    experiments, pending = load_all(runs)
    corpora: dict[str, list[Experiment]] = {}
    for exp in experiments:
        corpora.setdefault(exp.corpus, []).append(exp)
    return [(corpus, *corpus_table(exps, submissions)) for corpus, exps in corpora.items()], pending


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision leaderboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="?", default=Path("runs"), help="folder of run folders")
    parser.add_argument("--submissions", type=Path, default=Path("submissions"))
    args = parser.parse_args(argv)
    boards, pending = build(args.runs, args.submissions)
    if not boards:
        console.print(f"leaderboard: no scored experiment in {args.runs}/ yet (make train EXP=<name>)")
        return
    markdown = ["# Leaderboard", ""]
    for corpus, metric, table in boards:
        title = f"{corpus} · {metric} · {len(table)} experiment{'s' * (len(table) > 1)}"
        shown = display(table, metric)
        rich = Table(title=title)
        for column in shown.columns:
            rich.add_column(column, justify="left" if column in ("experiment", "folds", "differs") else "right",
                            overflow="fold")
        for row in shown.itertuples(index=False):
            rich.add_row(*map(str, row))
        print_wide(rich)
        markdown += [f"## {title}", "", shown.to_markdown(index=False, disable_numparse=True), ""]
    if pending:
        console.print(f"[dim]not scored yet: {', '.join(pending)}[/]")
    everything = pd.concat([table for _, _, table in boards], ignore_index=True)
    write_atomic(args.runs / "leaderboard.csv", lambda tmp: everything.to_csv(tmp, index=False))
    write_text_atomic(args.runs / "leaderboard.md", "\n".join(markdown))


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
