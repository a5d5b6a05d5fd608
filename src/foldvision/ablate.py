"""Ablations: every combination of a grid of config values trained as an experiment of its own, then one table.

    make ablate EXP=<exp> GRID="train.sampler=imbalanced,random loss.name=cce,ce"
    python -m foldvision.ablate <exp> [key=value ...] --grid "train.sampler=imbalanced,random loss.name=cce,ce"

The base is the experiment as configured (`runs/<exp>`, with any `key=value` given). A variant is named by
what it changes from the base, e.g. `runs/<exp>--sampler-random--loss-ce`, so its run folder, W&B group and
submission say what it is ('=' cannot be used: make reads a target with '=' as a variable); the combination
equal to the base is the base itself. Every variant is made with
`make train predict` on the same corpus folds (the split depends only on the data and cv sections), so a
variant that already ran is not run again and an interrupted one resumes where it stopped. W&B sweeps are not
used: they need the W&B server, and grid ablations must run offline.

The comparison table (OOF metric, mean ± std over folds, delta against the base, training time, and the
submission's Public/Private scores when the corpus has a solution file) is printed and written to
`runs/<exp>/ablation.md` and `runs/<exp>/ablation.csv`.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from foldvision.config import CONFIG_DIR, load_config, to_dict
from foldvision.console import console, print_wide
from foldvision.errors import UserError, write_atomic, write_text_atomic
from foldvision.results import (
    find_solution,
    flatten,
    format_seconds,
    higher_is_better,
    leaderboard_scores,
    load,
    short_value,
)

STAGES = ("train", "predict")
FOOTNOTE = ("OOF: the whole out-of-fold set scored at once; folds: the per-fold scores; Δ: OOF minus the base's; "
            "wall time: training and validation of every fold (fold<k>/history.csv).")


@dataclass
class Variant:
    name: str  # the run folder's name: <exp>, or <exp>--<key>-<value>... for what differs from the base
    overrides: list[str]  # key=value for the keys that differ from the base
    values: dict[str, str] = field(default_factory=dict)  # column label -> the value this variant runs with


def split_values(raw: str) -> list[str]:
    """'a,b' -> ['a', 'b']; commas inside [...] or {...} stay, so 'predict.tta=[hflip,vflip],[]' has 2 values."""
    values, depth, current = [], 0, ""
    for char in raw:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    return [v.strip() for v in [*values, current]]


def parse_grid(text: str) -> list[tuple[str, list[str]]]:
    """'train.sampler=imbalanced,random loss.name=cce,ce' -> [('train.sampler', ['imbalanced', 'random']), ...]."""
    axes: list[tuple[str, list[str]]] = []
    for item in shlex.split(text):
        key, sep, raw = item.partition("=")
        values = split_values(raw)
        if not sep or not key or "" in values:
            raise UserError(f"GRID item '{item}': write key=value1,value2 (e.g. train.sampler=imbalanced,random)")
        if key in dict(axes):
            raise UserError(f"GRID names '{key}' twice; give all its values once: {key}=a,b")
        axes.append((key, list(dict.fromkeys(values))))
    if not axes:
        raise UserError('GRID is empty: e.g. GRID="train.sampler=imbalanced,random loss.name=cce,ce"')
    return axes


def labels(keys: list[str]) -> dict[str, str]:
    """Short column/name labels: the last part of each key ('sampler'), the section for a name ('loss' for
    loss.name), the whole key where two would clash."""
    parts = [k.split(".") for k in keys]
    short = [p[-2] if p[-1] == "name" and len(p) > 1 else p[-1] for p in parts]
    return {k: s if short.count(s) == 1 else k for k, s in zip(keys, short)}


def slug(raw: str) -> str:
    """A value as it appears in a folder (and make target) name: '[hflip,vflip]' -> 'hflip-vflip', '[]' -> 'none'."""
    return re.sub(r"[^\w.+-]+", "-", raw).strip("-") or "none"


def plan(exp: str, overrides: list[str], axes: list[tuple[str, list[str]]],
         config_dir: Path = CONFIG_DIR) -> list[Variant]:
    """The base and every distinct grid combination, each config resolved (and so checked) before any training."""
    base = flatten(to_dict(load_config(exp, overrides, config_dir)))
    keys = [key for key, _ in axes]
    label = labels(keys)
    for key in keys:
        if key not in base:  # a whole section or an unknown key: load_config names the valid ones
            load_config(exp, [*overrides, f"{key}=0"], config_dir)
            raise UserError(f"GRID key '{key}' is a section; name one of its keys ({key}.<key>=a,b)")
    variants = {exp: Variant(exp, [], {label[k]: short_value(base[k]) for k in keys})}
    for combo in itertools.product(*(values for _, values in axes)):
        pairs = [f"{key}={raw}" for key, raw in zip(keys, combo)]
        flat = flatten(to_dict(load_config(exp, [*overrides, *pairs], config_dir)))
        changed = [(key, raw) for key, raw in zip(keys, combo) if repr(flat[key]) != repr(base[key])]
        name = exp + "".join(f"--{label[key]}-{slug(raw)}" for key, raw in changed)
        variants.setdefault(name, Variant(name, [f"{key}={raw}" for key, raw in changed],
                                          {label[k]: short_value(flat[k]) for k in keys}))
    return list(variants.values())


def run_variant(make: list[str], exp: str, variant: Variant, overrides: list[str], stages: list[str],
                configs: Path, runs: Path, submissions: Path) -> None:
    """`make <stages>` for one variant: make's file targets skip what is done and resume what is not."""
    args = " ".join(shlex.quote(o) for o in [*overrides, *variant.overrides])
    cmd = [*make, *stages, f"EXP={exp}", f"NAME={variant.name}", f"ARGS={args}", f"CONFIGS={configs}",
           f"RUNS={runs}", f"SUBMISSIONS={submissions}"]
    # the outer make's command-line variables (GRID, ARGS, DATA...) travel in MAKEFLAGS: keep them out
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    if subprocess.run(cmd, env=env).returncode != 0:
        raise UserError(f"variant {variant.name} failed (see above); fix it and run the ablation again: "
                        "finished variants are kept")


def comparison(variants: list[Variant], runs: Path, submissions: Path) -> pd.DataFrame:
    """One row per variant, raw numbers (ablation.csv): the base first, its OOF score the reference."""
    experiments = [load(runs / v.name) for v in variants]
    missing = [v.name for v, e in zip(variants, experiments) if e is None]
    if missing:
        raise UserError(f"no scores.json for {', '.join(missing)}: the ablation has not finished")
    metric = experiments[0].metric
    reference = experiments[0].oof(metric)
    rows = []
    for variant, exp in zip(variants, experiments):
        mean, std = exp.fold_spread(metric)
        lb_metric, lb = leaderboard_scores(submissions / f"{variant.name}.csv", find_solution(exp.corpus), metric)
        rows.append({"experiment": variant.name, **variant.values, f"oof_{metric}": exp.oof(metric),
                     "folds_mean": mean, "folds_std": std, "delta_vs_base": exp.oof(metric) - reference,
                     **{f"{part}_{lb_metric}": value for part, value in lb.items()},
                     "train_seconds": exp.seconds})
    return pd.DataFrame(rows)


def display(table: pd.DataFrame) -> pd.DataFrame:
    """ablation.csv's numbers as the printed table shows them."""
    metric = next(c for c in table.columns if c.startswith("oof_")).removeprefix("oof_")
    shown = pd.DataFrame({"experiment": table["experiment"]})
    for column in table.columns[1: table.columns.get_loc(f"oof_{metric}")]:
        shown[column] = table[column]
    shown[f"OOF {metric}"] = table[f"oof_{metric}"].map("{:.4f}".format)
    shown["folds mean ± std"] = [f"{m:.4f} ± {s:.4f}" for m, s in zip(table["folds_mean"], table["folds_std"])]
    shown["Δ vs base"] = ["base" if i == 0 else f"{d:+.4f}" for i, d in enumerate(table["delta_vs_base"])]
    for column in table.columns:
        if column.startswith(("public_", "private_", "test_")):
            part, lb_metric = column.split("_", 1)
            shown[f"{part.capitalize()} {lb_metric}"] = table[column].map(
                lambda v: "" if pd.isna(v) else f"{v:.4f}")
    shown["wall time"] = table["train_seconds"].map(format_seconds)
    return shown


def print_table(table: pd.DataFrame, title: str) -> None:
    shown = display(table)
    metric = next(c for c in table.columns if c.startswith("oof_"))
    scores = table[metric].to_numpy()
    best = int(np.nanargmax(scores) if higher_is_better(metric.removeprefix("oof_")) else np.nanargmin(scores))
    rich = Table(title=title)
    for column in shown.columns:
        rich.add_column(column, justify="left" if column == "experiment" else "right")
    for i, row in enumerate(shown.itertuples(index=False)):
        rich.add_row(*(f"[bold]{v}" if i == best else str(v) for v in row))
    print_wide(rich)
    console.print(f"[dim]{FOOTNOTE}[/]")


def write_tables(table: pd.DataFrame, run_dir: Path, title: str) -> None:
    write_atomic(run_dir / "ablation.csv", lambda tmp: table.to_csv(tmp, index=False))
    markdown = display(table).to_markdown(index=False, disable_numparse=True)  # keep '0.9100' as shown
    write_text_atomic(run_dir / "ablation.md", f"# {title}\n\n{markdown}\n\n{FOOTNOTE}\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision ablate", description=__doc__.split("\n\n")[0])
    parser.add_argument("exp", help="the base experiment (configs/<exp>.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value for the base and every variant")
    parser.add_argument("--grid", required=True, help='"key=a,b key2=c,d": every combination is a variant')
    parser.add_argument("--configs", type=Path, default=CONFIG_DIR)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--submissions", type=Path, default=Path("submissions"))
    parser.add_argument("--make", default="make --no-print-directory", help="the make command (with variables)")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), help="make targets per variant")
    args = parser.parse_args(argv)
    axes = parse_grid(args.grid)
    variants = plan(args.exp, args.overrides, axes, args.configs)
    console.print(f"ablate: {len(variants)} experiments: " + ", ".join(v.name for v in variants))
    for i, variant in enumerate(variants, 1):
        console.rule(f"ablate {i}/{len(variants)}: {variant.name} ({' '.join(variant.overrides) or 'the base'})")
        run_variant(shlex.split(args.make), args.exp, variant, args.overrides, args.stages,
                    args.configs, args.runs, args.submissions)
    table = comparison(variants, args.runs, args.submissions)
    title = f"Ablation of {args.exp}: {args.grid}"
    write_tables(table, args.runs / args.exp, title)
    print_table(table, title)
    console.print(f"ablate: wrote {args.runs / args.exp / 'ablation.md'} and ablation.csv")


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
