"""Stage 1: split the training images into K stratified folds, once per corpus.

    python -m foldvision.stages.folds runs/<exp>

Reads `runs/<exp>/config.yaml` and the label table. The corpus's split (`foldvision.splits`: made once under
`inputs/folds/<corpus>-<hash>/`, or `data.folds_file`) is reused by every experiment with the same K, seed and
group column, so their scores compare on the same split. The experiment gets `folds.csv` (id, path, label,
[group], fold) and `classes.json` (the task and its class, tag or grade order every later stage uses) in its run
folder. Multi-label corpora are split by iterative stratification, regression and ordinal targets stratified on
their quantile bins or grades (`foldvision.splits.assign_folds`); the counts per fold are printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import polars as pl

from foldvision.console import console
from foldvision.corpus import read_train
from foldvision.run import Run
from foldvision.splits import corpus_folds, describe_names, fold_counts


def run(run_dir: Path) -> None:
    run = Run(run_dir)
    cfg = run.load_config()
    corpus = read_train(cfg.data)
    folds = corpus_folds(cfg, corpus.table, corpus.source, corpus.image_dir, corpus.task)
    table = corpus.table.with_columns(fold=pl.Series(folds, dtype=pl.Int64))
    run.write_split(table, corpus.task)
    console.print(f"folds: {table.height} images, {describe_names(corpus.task)}, {cfg.cv.n_folds} folds")
    console.print(fold_counts(table["label"].to_list(), table["fold"].to_list(), corpus.classes, corpus.kind))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision folds", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="runs/<exp> holding the resolved config.yaml")
    run(parser.parse_args(argv).run_dir)


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
