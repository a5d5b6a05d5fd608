"""Every experiment in `runs/`, best first: OOF score, per-fold scores, training time, the config keys that set
it apart, and its submission's Public/Private scores when the corpus has a solution file.

    python -m foldvision.commands.leaderboard runs --submissions submissions
    make leaderboard

Experiments are compared within a corpus (scores on different data do not rank), by the metric most of them
were picked by. A corpus's solution is `solution.csv` (Kaggle's, with a Public/Private `Usage` column) or
`test_labels.csv` in its folder; each experiment's submission is scored against it with `foldvision.commands.evaluate`.
Also written beside the run folders, as markdown and CSV (`foldvision.run.leaderboard_files`).
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import polars as pl

from foldvision.console import console, print_wide
from foldvision.files import write_text_atomic
from foldvision.results.compare import (
    Experiment,
    comparison_frame,
    comparison_row,
    comparison_shown,
    differing_keys,
    flatten,
    higher_is_better,
    load_all,
    short_value,
)
from foldvision.results.blend import blend_summary, is_blend
from foldvision.run import leaderboard_files, write_csv


def corpus_table(experiments: list[Experiment], submissions: Path) -> tuple[str, pl.DataFrame]:
    """The metric and the ranked rows (raw numbers) of the experiments of one corpus."""
    metric = Counter(e.metric for e in experiments).most_common(1)[0][0]
    # a blend's config is its first member's: it is told apart by its members, not by config keys
    keys = differing_keys(e.config for e in experiments if not is_blend(e.scores))
    rows = []
    for exp in experiments:
        flat = flatten(exp.config)
        differs = (blend_summary(exp.scores) if is_blend(exp.scores)
                   else " ".join(f"{k}={short_value(flat.get(k))}" for k in keys))
        rows.append({"corpus": exp.corpus, "experiment": exp.name, **comparison_row(exp, metric, submissions),
                     "differs": differs})
    table = comparison_frame(rows).sort(f"oof_{metric}", descending=higher_is_better(metric), nulls_last=True,
                                        maintain_order=True)
    return metric, table


def build(runs: Path, submissions: Path) -> tuple[list[tuple[str, str, pl.DataFrame]], list[str]]:
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
        shown = comparison_shown(table, ranked=True)
        print_wide(shown.rich(title))
        markdown += [f"## {title}", "", shown.markdown(), ""]
    if pending:
        console.print(f"[dim]not scored yet: {', '.join(pending)}[/]")
    csv, md = leaderboard_files(args.runs)
    write_csv(csv, pl.concat([table for _, _, table in boards], how="diagonal_relaxed"))
    write_text_atomic(md, "\n".join(markdown))


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
