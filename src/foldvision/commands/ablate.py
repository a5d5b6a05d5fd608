"""Ablations: every combination of a grid of config values trained as an experiment of its own, then one table.

    make ablate EXP=<exp> GRID="train.sampler=imbalanced,random loss.name=cce,ce"   (make -j N: variants side by side)
    python -m foldvision.commands.ablate <exp> [key=value ...] --grid "..." --plan     resolve the variants for make
    python -m foldvision.commands.ablate <exp> [key=value ...] --grid "..." --table    compare the finished variants

The base is the experiment as configured (`runs/<exp>`, with any `key=value` given). A variant is named by
what it changes from the base, e.g. `runs/<exp>--sampler-random--loss-ce`, so its run folder, W&B group and
submission say what it is ('=' cannot be used: make reads a target with '=' as a variable); the combination
equal to the base is the base itself.

`--plan` resolves every variant's config (so a bad value stops the ablation before any training), saves it into
the variant's run folder and writes the variant names into the base's run folder for make (`Run.ablation_mk`).
make then builds every variant's scores and submission as files, on the same corpus folds (the split depends
only on the data and cv sections): `make -j N` runs variants and folds side by side, a variant that already
ran is not run again, an interrupted one resumes where it stopped. W&B sweeps are not used: they need the W&B
server, and grid ablations must run offline.

`--table` prints the comparison (OOF metric, mean ± std over folds, delta against the base, training time, and
the submission's Public/Private scores when the corpus has a solution file) and writes it into the base's run
folder (`Run.ablation_csv`, numbers; `Run.ablation_md`, as printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from foldvision.config import CONFIG_DIR, Config, load_config, to_dict
from foldvision.console import console, print_wide
from foldvision.errors import UserError
from foldvision.results.compare import comparison_frame, comparison_row, comparison_shown, flatten, load, short_value
from foldvision.run import Run

FOOTNOTE = ("OOF: the whole out-of-fold set scored at once; folds: the per-fold scores; Δ: OOF minus the base's; "
            "wall time: training and validation of every fold (each fold's history).")


@dataclass
class Variant:
    name: str  # the run folder's name: <exp>, or <exp>--<key>-<value>... for what differs from the base
    overrides: list[str]  # key=value for the keys that differ from the base
    values: dict[str, str] = field(default_factory=dict)  # column label -> the value this variant runs with
    config: Config | None = None  # its resolved config (plan); the run name still to be set


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
    base_config = load_config(exp, overrides, config_dir)
    base = flatten(to_dict(base_config))
    keys = [key for key, _ in axes]
    label = labels(keys)
    for key in keys:
        if key not in base:  # a whole section or an unknown key: load_config names the valid ones
            load_config(exp, [*overrides, f"{key}=0"], config_dir)
            raise UserError(f"GRID key '{key}' is a section; name one of its keys ({key}.<key>=a,b)")
    variants = {exp: Variant(exp, [], {label[k]: short_value(base[k]) for k in keys}, base_config)}
    for combo in itertools.product(*(values for _, values in axes)):
        pairs = [f"{key}={raw}" for key, raw in zip(keys, combo)]
        config = load_config(exp, [*overrides, *pairs], config_dir)
        flat = flatten(to_dict(config))
        changed = [(key, raw) for key, raw in zip(keys, combo) if repr(flat[key]) != repr(base[key])]
        name = exp + "".join(f"--{label[key]}-{slug(raw)}" for key, raw in changed)
        variants.setdefault(name, Variant(name, [f"{key}={raw}" for key, raw in changed],
                                          {label[k]: short_value(flat[k]) for k in keys}, config))
    return list(variants.values())


def write_plan(variants: list[Variant], runs: Path) -> Path:
    """Each variant's config saved into its run folder (named after the variant, which also refuses a folder
    that holds another corpus), then the variant names for make, in the base's run folder."""
    for variant in variants:
        variant.config = dataclasses.replace(variant.config, name=variant.name)  # an experiment of its own: run folder, W&B group, submission
        Run(runs / variant.name).check_owner(variant.config)  # all checked before any is written
    for variant in variants:
        Run(runs / variant.name).save_config(variant.config)
    return Run(runs / variants[0].name).write_ablation_plan([v.name for v in variants])


def comparison(variants: list[Variant], runs: Path, submissions: Path) -> pl.DataFrame:
    """One row per variant, raw numbers (the ablation CSV): the base first, its OOF score the reference."""
    experiments = [load(runs / v.name) for v in variants]
    missing = [v.name for v, e in zip(variants, experiments) if e is None]
    if missing:
        raise UserError(f"{', '.join(missing)} not scored yet: the ablation has not finished (make ablate)")
    metric = experiments[0].metric
    reference = experiments[0].oof(metric)
    rows = []
    for variant, exp in zip(variants, experiments):
        row = {"experiment": variant.name, **variant.values}
        for key, value in comparison_row(exp, metric, submissions).items():
            if key != "folds":  # the spread says enough here; the leaderboard lists each fold
                row[key] = value
            if key == "folds_std":
                row["delta_vs_base"] = exp.oof(metric) - reference
        rows.append(row)
    return comparison_frame(rows)


def write_tables(table: pl.DataFrame, run_dir: Path, title: str) -> None:
    markdown = comparison_shown(table).markdown()
    Run(run_dir).write_ablation(table, f"# {title}\n\n{markdown}\n\n{FOOTNOTE}\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision ablate", description=__doc__.split("\n\n")[0])
    parser.add_argument("exp", help="the base experiment (configs/<exp>.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value for the base and every variant")
    parser.add_argument("--grid", required=True, help='"key=a,b key2=c,d": every combination is a variant')
    parser.add_argument("--configs", type=Path, default=CONFIG_DIR)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--submissions", type=Path, default=Path("submissions"))
    step = parser.add_mutually_exclusive_group(required=True)
    step.add_argument("--plan", action="store_true", help="resolve every variant into its run folder for make")
    step.add_argument("--table", action="store_true", help="compare the finished variants")
    args = parser.parse_args(argv)
    variants = plan(args.exp, args.overrides, parse_grid(args.grid), args.configs)
    if args.plan:
        write_plan(variants, args.runs)
        console.print(f"ablate: {len(variants)} experiments: " + ", ".join(v.name for v in variants))
        return
    table = comparison(variants, args.runs, args.submissions)
    title = f"Ablation of {args.exp}: {args.grid}"
    write_tables(table, args.runs / args.exp, title)
    print_wide(comparison_shown(table).rich(title))
    console.print(f"[dim]{FOOTNOTE}[/]")
    console.print(f"ablate: wrote {Run(args.runs / args.exp).ablation_md} and its CSV")


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
