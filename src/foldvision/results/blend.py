"""A blend's tables as people read them, in the terminal (`make ensemble`) and on the report page: the members
and their weights, the best member against the blend scored plainly and nested, the decision rule, the
weights fitted without each fold and the correlation of the members' OOF predictions. Read from the blend's
scores.json and ensemble.json alone (commands/ensemble.py writes them); torch-free.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from foldvision.errors import UserError
from foldvision.results.compare import Shown, fmt
from foldvision.run import Run

# the order both the terminal and the page show the parts in
PARTS = ("members", "scores", "fold_weights", "decision", "correlation")


def is_blend(scores: dict) -> bool:
    return "ensemble" in scores


def blend_summary(scores: dict) -> str:
    """One line for a blend in a comparison: its method and members with their weights."""
    info = scores["ensemble"]
    members = ", ".join(f"{m['name']} {m['weight']:.2f}" for m in info["members"])
    return f"{info['method']} blend of {members}"


def summary_tables(run: Run | str | Path) -> dict[str, pl.DataFrame]:
    """A blend's tables, from its scores.json and ensemble.json alone:

    - `members`: each member's weight and OOF scores;
    - `scores`: the best single member, the blend scored plainly (weights fitted on all OOF) and nested
      (weights fitted on the other folds);
    - `decision`: the label metric of argmax, of the rule fitted on the blended OOF, and of the rule nested;
    - `correlation`: the correlation matrix of the members' OOF predictions;
    - `fold_weights`: the weights fitted without each fold (how stable they are).
    """
    run = run if isinstance(run, Run) else Run(run)
    scores = run.read_scores()
    if not is_blend(scores):
        raise UserError(f"{run.root} is not a blend (its scores.json has no 'ensemble' part)")
    return tables(scores, run.read_ensemble())


def tables(scores: dict, record: dict) -> dict[str, pl.DataFrame]:
    """summary_tables of a blend's scores and ensemble record."""
    info, best, decision = scores["ensemble"], scores["ensemble"]["best_member"], scores["ensemble"]["decision"]
    names = list(scores["oof"])  # the task kind's metrics
    members = pl.DataFrame([{"member": m["name"], "weight": m["weight"], **{n: m["oof"][n] for n in names}}
                            for m in info["members"]])
    compared = pl.DataFrame([
        {"": f"best member ({best['name']})", **{n: best["oof"][n] for n in names}},
        {"": "blend OOF (weights fitted on all OOF)", **{n: scores["oof"][n] for n in names}},
        {"": "blend nested OOF (weights fitted on the other folds)", **{n: info["nested"][n] for n in names}},
    ])
    used = decision.get("used")
    verdict = "" if used is None else " (used)" if used else " (not used: lost to the plain decision nested)"
    rule = pl.DataFrame({"decided by": [decision.get("plain", "argmax"),
                                        f"rule fitted on all OOF: {decision['rule'].split(':')[0]}",
                                        f"rule fitted on the other folds (nested){verdict}"],
                         decision["metric"]: [decision["argmax"], decision["fitted"], decision["nested"]]})
    names = info["correlation"]["members"]
    # a square matrix: row i is the member named by column i (see `shown`)
    corr = pl.DataFrame(info["correlation"]["matrix"], schema=names, orient="row")
    fold_weights = pl.DataFrame([{"without fold": int(k), **w} for k, w in record["fold_weights"].items()])
    return {"members": members, "scores": compared, "decision": rule, "correlation": corr,
            "fold_weights": fold_weights}


def titles(scores: dict, name: str) -> dict[str, str]:
    """Each part's title, in PARTS order."""
    info = scores["ensemble"]
    metric, best = info["metric"], info["best_member"]
    return {
        "members": f"blend {name}: {info['method']} of {len(info['members'])} members, weights for OOF {metric}",
        "scores": f"OOF {metric}: best member {best['oof'][metric]:.4f}, blend {info['oof']:.4f} (plain), "
                  f"{info['oof_nested']:.4f} (nested)",
        "fold_weights": "weights fitted without each fold",
        "decision": "decision rule (labels, tags, grades or values)",
        "correlation": "correlation of the members' OOF predictions",
    }


def shown(frame: pl.DataFrame, index: bool = False) -> Shown:
    """A summary table as the terminal and the report show it: numbers at 4 digits, '–' for none. `index`: the
    table is a square matrix (the correlation) whose rows are named as its columns."""
    columns = ([""] if index else []) + [str(c) for c in frame.columns]
    labels = frame.columns if index else [None] * frame.height
    rows = [([str(label)] if index else []) + [fmt(v) if isinstance(v, float) else str(v) for v in row]
            for label, row in zip(labels, frame.iter_rows())]
    text = tuple(c for c in frame.columns if not frame[c].dtype.is_numeric())
    return Shown(columns, rows, left=text)


def sections(run: Run, scores: dict) -> list[tuple[str, Shown]]:
    """The report page's blend section (`scores`: the run's, as read): (title, table) per part; empty for an
    experiment that is no blend."""
    if not is_blend(scores):
        return []
    parts, named = tables(scores, run.read_ensemble()), titles(scores, run.name)
    return [(named[part], shown(parts[part], index=part == "correlation")) for part in PARTS]
