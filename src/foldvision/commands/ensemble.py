"""Blending experiments: weights fitted on the members' OOF predictions, scored plainly and nested.

    foldvision ensemble runs/<blend> --members runs/a runs/b runs/c [--method hill_climb|mean|rank|stack]
                        [--rounds 50] --out submissions/<blend>.csv

The members are scored experiments with test predictions (`make train predict`) on one corpus split: the same
training ids in the same folds (checked by a content hash of the (id, fold) pairs, not by file name), the same
labels and classes, the same test ids. The blend is a run folder of its own that the leaderboard, the report and
`evaluate` read like any experiment's:

    config.yaml               the first member's resolved config, named after the blend
    folds.csv, classes.json   the members' shared split
    oof.csv, scores.json      the blended OOF probabilities and their scores (the score stage's schema), with an
                              `ensemble` key: members, weights, each member's OOF scores, the best single
                              member, the plain and the nested blended score, the decision rule's scores, and
                              the correlation of the members' OOF predictions
    test.csv                  the members' test.csv blended with the weights fitted on all OOF rows
    ensemble.json             the method, the weights (fitted on all OOF, and per held-out fold) and the members
    decision.json             the decision rule refitted on the blended OOF (when the submission holds labels,
                              tags, grades or values), used where its nested score beats the plain decision

The methods (`mean`, `rank`, `hill_climb`, `stack`) and the plain and nested scores are
`foldvision.results.blending`'s; this command checks the blend's folder and writes it. The weights are fitted for
the task's metric (`train.metric` of the first member, its kind's `auto` unless set). `rank` is refused where
ranks would be read as probabilities (labels, tags, grades, log loss) or values (`blending.check_rank`).

Seeds and sizes as members: `make ablate EXP=e GRID="train.seed=1,2,3"` (or `model.img_size=224,320`) makes the
variants runs/e--train.seed-1 ...; `make ensemble NAME=e-seeds MEMBERS="e--train.seed-1 e--train.seed-2 ..."`
blends them.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
from rich.markup import escape

from foldvision.console import console, print_wide
from foldvision.corpus import read_test
from foldvision.errors import UserError
from foldvision.results.blend import shown, tables, titles
from foldvision.results.blending import (
    METHODS,
    ROUNDS,
    blend_members,
    check_rank,
    ensemble_record,
    ensemble_scores,
    load_members,
)
from foldvision.results.decision import DECIDES, fit_nested
from foldvision.results.metrics import resolve_metric, score_oof
from foldvision.results.submission import DECIDED, build, sample_format, write_submission
from foldvision.run import Predictions, Run, Split, check_name, submission_csv


def _blend_folder(root: Path, roots: list[Path]) -> Run:
    run = Run(root)
    check_name(run.name)
    if any(root.resolve() == Path(r).resolve() for r in roots):
        raise UserError(f"{root} is one of the members: name the blend's own folder (NAME=<blend>)")
    trained = sorted(p.name for p in root.glob("fold*") if p.is_dir()) if root.is_dir() else []
    if trained:
        raise UserError(f"{root} holds a trained experiment ({trained[0]}/), not a blend: name another folder "
                        f"(NAME=<blend>) or discard it first (make clean-run NAME={run.name})")
    return run


def blend(run_dir: Path, roots: list[Path], method: str = "hill_climb", rounds: int = ROUNDS,
          out: Path | None = None) -> dict:
    """Blend the members into runs/<blend>/ and its submission; returns the blend's scores."""
    if method not in METHODS:
        raise UserError(f"--method {method!r}: use one of {', '.join(METHODS)}")
    if rounds < 1:
        raise UserError(f"--rounds {rounds}: hill climbing needs at least 1 round")
    folder = _blend_folder(Path(run_dir), roots)
    group = load_members(roots)
    cfg = Run(roots[0]).load_config()
    split = group.split
    metric = resolve_metric(cfg.train.metric, split.kind)
    sample = sample_format(read_test(cfg.data, verify=False), split.task, metric, cfg.predict.value)
    decides = sample is not None and sample.format.kind in DECIDED
    if method == "rank":  # before any fitting: one line, nothing written
        check_rank(split.kind, metric, sample.format.kind if decides else None)
    blended = blend_members(group, method, metric, rounds)
    # the decision refitted on the blended OOF rows, used where its nested score beats the plain decision
    rule = fit_nested(split.y, blended.oof, split.fold, metric, split.kind, cfg.predict.min_tags, len(split.classes))
    oof = Predictions(split.ids, split.classes, blended.oof, split.fold, split.labels, split.kind)
    scores = score_oof(oof, metric)
    scores["ensemble"] = ensemble_scores(group, blended, scores["oof"], rule)
    scores["decision"] = rule.to_dict()
    record = ensemble_record(group, blended)

    cfg = dataclasses.replace(cfg, name=folder.name)
    folder.check_owner(cfg)  # a blend folder keeps its corpus, as any run folder
    out = out or submission_csv("submissions", folder.name)
    test = Predictions(group.test_ids, split.classes, blended.test, kind=split.kind)
    rule = rule if decides and sample.format.labels_by_rule(cfg.predict.decision) else None
    if sample is not None:  # checked before anything is written
        build(sample.frame, sample.format, test.ids, test.probs, test.classes, rule)

    # an interrupted re-blend must not leave the old scores beside new tables: scores.json goes first, comes last
    folder.scores_json.unlink(missing_ok=True)
    folder.save_config(cfg)
    folder.write_split(_split_table(split), split.task)
    folder.write_oof(oof)
    folder.write_test(test)
    if rule is not None:
        folder.write_decision(rule.to_dict())
        console.print(f"ensemble: {DECIDES[split.kind]} by {rule.describe()}")
    console.print(f"ensemble: {escape(write_submission(out, test, sample, rule))}")
    folder.write_ensemble(record)
    folder.write_scores(scores)
    print_blend(scores, record, folder.name)
    return scores


def _split_table(split: Split) -> pl.DataFrame:
    columns = {"id": split.ids, "path": split.paths, "label": split.labels}
    if split.groups is not None:
        columns["group"] = split.groups
    return pl.DataFrame({**columns, "fold": split.fold.astype(np.int64)})


def print_blend(scores: dict, record: dict, name: str) -> None:
    """The blend's tables (`foldvision.results.blend`) in the terminal."""
    parts = tables(scores, record)
    for part, title in titles(scores, name).items():
        print_wide(shown(parts[part], index=part == "correlation").rich(title))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision ensemble", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the blend's run folder, runs/<blend>")
    parser.add_argument("--members", type=Path, nargs="+", required=True, help="the members' run folders")
    parser.add_argument("--runs", type=Path, help="the folder the members are named in (make: MEMBERS=\"a b\")")
    parser.add_argument("--method", default="hill_climb", choices=METHODS, help="how to blend (default hill_climb)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"hill climbing additions at most ({ROUNDS})")
    parser.add_argument("--out", type=Path, help="submission path (default submissions/<blend>.csv)")
    args = parser.parse_args(argv)
    members = [args.runs / m for m in args.members] if args.runs else args.members
    blend(args.run_dir, members, args.method, args.rounds, args.out)


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
