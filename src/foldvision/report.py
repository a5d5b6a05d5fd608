"""The experiment's page: its config, score tables and plots in one self-contained HTML file.

    python -m foldvision.report runs/<exp> [--submission submissions/<exp>.csv]
    make report EXP=<exp>

Writes the plots (`foldvision.plots`, PNG files under `runs/<exp>/plots/`) and `runs/<exp>/report.html`:
what was run, the OOF and per-fold scores, the submission's Public/Private scores when the corpus has a
solution file, the ablation table when the experiment was ablated, per-class scores, the plots and the most
confidently wrong images. Images are embedded (base64) and the styles inline, so the one file opens offline
in any browser and can be attached or mailed as it is.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from jinja2 import Environment

from foldvision import __version__
from foldvision.ablate import display
from foldvision.config import Config, to_dict
from foldvision.console import console
from foldvision.errors import UserError, write_text_atomic
from foldvision.plots import most_wrong, write_plots
from foldvision.results import (
    Experiment,
    find_solution,
    flatten,
    format_seconds,
    leaderboard_scores,
    load,
    short_value,
)

METRICS = ("auc", "accuracy", "macro_f1", "log_loss")
PLOT_TITLES = {
    "learning_curves": ("Learning curves", "Per epoch and fold: solid lines are training (the batches' own "
                        "predictions, as the weights changed), dashed lines validation."),
    "confusion": ("Confusion matrix", "All out-of-fold predictions (argmax): counts, and each true class's row "
                  "as fractions."),
    "roc": ("ROC", "Out-of-fold probabilities; the binary curve is the positive class's, multi-class curves are "
            "one class against the rest."),
    "per_class": ("Precision and recall per class", "Bars: the whole OOF set. Error bars: the standard "
                  "deviation over folds."),
    "wrong": ("Most confidently wrong", "Out-of-fold images the model got wrong with the highest confidence "
              "(probability of the predicted class)."),
}

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ name }} · foldvision report</title>
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1250px;
         padding: 0 1em; color: #222; }
  h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
  .sub { color: #666; margin-top: 0; }
  table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
  th, td { padding: 0.3em 0.8em; border-bottom: 1px solid #e4e4e4; text-align: right; }
  th { background: #f5f5f5; } td:first-child, th:first-child { text-align: left; }
  tr.strong td { font-weight: bold; }
  dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1.2em; }
  dt { color: #666; } dd { margin: 0; }
  figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
  figcaption { color: #555; font-size: 0.9em; }
  pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
</style>
</head>
<body>
{% macro table(t) -%}
<table><thead><tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead><tbody>
{% for row in t.rows %}<tr{% if loop.index0 in t.strong %} class="strong"{% endif %}>
{%- for v in row %}<td>{{ v }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
{%- endmacro %}
<h1>{{ name }}</h1>
<p class="sub">foldvision {{ version }} · commit {{ commit }} · {{ task }} · {{ n }} OOF images ·
 picked by {{ metric }}</p>
<dl>{% for label, value in facts %}<dt>{{ label }}</dt><dd>{{ value }}</dd>{% endfor %}</dl>

<h2 id="scores">Scores</h2>
<p>Out-of-fold (OOF): every training image predicted by the one model that did not train on it, scored as one
set. The fold rows are each fold's validation images.</p>
{{ table(scores_table) }}
{% if leaderboard %}
<h2 id="leaderboard">Leaderboard</h2>
<p>The submission {{ submission }} scored against {{ solution }} ({{ lb_metric }}).</p>
{{ table(leaderboard) }}
{% endif %}
{% if ablation %}
<h2 id="ablation">Ablation</h2>
{{ table(ablation) }}
{% endif %}
<h2 id="per-class">Per class</h2>
{{ table(per_class_table) }}
{% for plot in plots %}
<h2 id="{{ plot.name }}">{{ plot.title }}</h2>
<figure><img alt="{{ plot.title }}" src="data:image/png;base64,{{ plot.data }}">
<figcaption>{{ plot.caption }}</figcaption></figure>
{% if plot.name == "wrong" %}{{ table(wrong_table) }}{% endif %}
{% endfor %}
<h2 id="config">Config</h2>
<p>Keys that differ from foldvision's defaults:</p>
{{ table(config_table) }}
<details><summary>the whole resolved config</summary><pre>{{ config_yaml }}</pre></details>
</body>
</html>
"""


def _table(frame: pd.DataFrame, strong: tuple[int, ...] = ()) -> dict:
    """A table for the template's `table` macro: formatted cells, `strong` rows shown bold."""
    return {"columns": [str(c) for c in frame.columns], "strong": strong,
            "rows": [["" if pd.isna(v) else str(v) for v in row] for row in frame.itertuples(index=False)]}


def _fmt(value: float, digits: int = 4) -> str:
    return "–" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def scores_table(scores: dict) -> dict:
    rows = [{"": f"fold {f['fold']}", "n": f["n"], **{m: _fmt(f[m]) for m in METRICS}} for f in scores["folds"]]
    spread = {m: np.array([f[m] for f in scores["folds"]], dtype=float) for m in METRICS}
    std = {m: np.std(v, ddof=1) if len(v) > 1 else 0.0 for m, v in spread.items()}
    rows.append({"": "mean ± std", "n": "", **{m: f"{_fmt(np.mean(v))} ± {_fmt(std[m])}" for m, v in spread.items()}})
    rows.append({"": "OOF", "n": scores["n"], **{m: _fmt(scores["oof"][m]) for m in METRICS}})
    return _table(pd.DataFrame(rows), strong=(len(rows) - 1,))


def per_class_table(per_class: dict) -> dict:
    rows = [{"class": name, "n": c["support"],
             "precision": f"{c['precision']:.3f} ({c['precision_mean']:.3f} ± {c['precision_std']:.3f})",
             "recall": f"{c['recall']:.3f} ({c['recall_mean']:.3f} ± {c['recall_std']:.3f})"}
            for name, c in per_class.items()]
    return _table(pd.DataFrame(rows).rename(columns={"precision": "precision OOF (folds mean ± std)",
                                                     "recall": "recall OOF (folds mean ± std)"}))


def config_differences(config: dict) -> dict:
    defaults, actual = flatten(to_dict(Config())), flatten({k: v for k, v in config.items() if k != "_meta"})
    rows = [{"key": key, "value": short_value(value, 80), "default": short_value(defaults.get(key), 80)}
            for key, value in actual.items() if key != "name" and repr(value) != repr(defaults.get(key))]
    return _table(pd.DataFrame(rows, columns=["key", "value", "default"]))


def facts(exp: Experiment) -> list[tuple[str, str]]:
    c = exp.config
    model = c["model"]["name"] + (f" at {c['model']['img_size']} px" if c["model"].get("img_size") else "")
    weights = c["model"].get("pretrained_file") or ("timm pretrained" if c["model"].get("pretrained") else "none")
    return [
        ("corpus", str(c["data"]["dir"])),
        ("classes", ", ".join(exp.scores["classes"])),
        ("model", f"{model} (weights: {weights})"),
        ("training", f"{c['train']['epochs']} epochs, batch {c['train']['batch_size']}, {c['train']['optimizer']} "
                     f"lr {c['train']['lr']}, loss {c['loss']['name']}, sampler {c['train']['sampler']}"),
        ("folds", f"{c['cv']['n_folds']} (seed {c['cv']['seed']}"
                  f"{', grouped by ' + c['data']['group_col'] if c['data'].get('group_col') else ''})"),
        ("TTA", ", ".join(c["predict"]["tta"]) or "none"),
        ("training time", format_seconds(exp.seconds)),
    ]


def _png(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def build(run_dir: Path, submission: Path | None = None) -> str:
    """The report's HTML for a scored experiment (writes its plots on the way)."""
    exp = load(run_dir)
    if exp is None:
        raise UserError(f"{run_dir}: no scores.json yet; train and score it first (make train EXP={run_dir.name})")
    plots = write_plots(run_dir)
    oof = pd.read_csv(run_dir / "oof.csv", dtype={"id": str, "label": str}, keep_default_na=False)
    wrong = most_wrong(oof, exp.scores["classes"]).assign(
        confidence=lambda f: f["confidence"].map("{:.3f}".format), p_true=lambda f: f["p_true"].map("{:.3f}".format))
    solution = find_solution(exp.config["data"]["dir"])
    lb_metric, lb = leaderboard_scores(submission, solution, exp.metric) if submission else ("", {})
    ablation = run_dir / "ablation.csv"
    env = Environment(autoescape=True)
    return env.from_string(TEMPLATE).render(
        name=exp.name, version=exp.meta.get("foldvision", __version__), commit=exp.meta.get("git_commit", "unknown"),
        task=exp.scores["task"], n=exp.scores["n"], metric=exp.metric, facts=facts(exp),
        scores_table=scores_table(exp.scores),
        leaderboard=_table(pd.DataFrame([{f"{part.capitalize()} {lb_metric}": _fmt(v) for part, v in lb.items()}]))
        if lb else None,
        submission=submission, solution=solution, lb_metric=lb_metric,
        ablation=_table(display(pd.read_csv(ablation, keep_default_na=False))) if ablation.is_file() else None,
        per_class_table=per_class_table(exp.scores["per_class"]),
        plots=[{"name": name, "title": PLOT_TITLES[name][0], "caption": PLOT_TITLES[name][1], "data": _png(path)}
               for name, path in plots.items()],
        wrong_table=_table(wrong), config_table=config_differences(exp.config),
        config_yaml=yaml.safe_dump(exp.config, sort_keys=False, allow_unicode=True),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="runs/<exp> with scores.json")
    parser.add_argument("--submission", type=Path, help="its submission, scored when the corpus has a solution")
    parser.add_argument("--out", type=Path, help="default runs/<exp>/report.html")
    args = parser.parse_args(argv)
    out = args.out or args.run_dir / "report.html"
    write_text_atomic(out, build(args.run_dir, args.submission))
    console.print(f"report: wrote {out}")


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
