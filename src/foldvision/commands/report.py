"""The experiment's page: its config, score tables and plots in one self-contained HTML file.

    python -m foldvision.commands.report runs/<exp> [--submission submissions/<exp>.csv] [--stale scores submission]
    make report EXP=<exp>

Writes the plots (`foldvision.results.figures`, PNG files in the run's plots folder) and the run's page
(`Run.report_html`): what was run, the OOF and per-fold scores, the submission's Public/Private scores when the
corpus has a solution file, the ablation table when the experiment was ablated, the task kind's tables (per
class; per tag and co-occurrence; per grade and the confusion matrix; the residuals), the plots and
the most confidently wrong images. Images are embedded (base64) and the styles inline, so the one file opens
offline in any browser and can be attached or mailed as it is.

The report never trains or predicts: it renders what the run folder holds. What is out of date is said in a
banner on the page and in one printed line: `--stale` (make's verdict, `make -q`, passed by `make report`)
and a corpus whose files changed since the run's stages recorded them. A run without scores is one line
saying what to run.
"""

from __future__ import annotations

import argparse
import base64
from collections.abc import Sequence
from pathlib import Path

import yaml
from jinja2 import Environment

from foldvision import __version__
from foldvision.config import Config, to_dict
from foldvision.console import console
from foldvision.errors import UserError
from foldvision.files import write_text_atomic
from foldvision.results.blend import sections as blend_sections
from foldvision.results.compare import (
    Experiment,
    Shown,
    comparison_shown,
    find_solution,
    flatten,
    fmt,
    fold_scores,
    format_seconds,
    leaderboard_scores,
    load,
    kind_tables,
    short_value,
)
from foldvision.results.figures import most_wrong, write_plots
from foldvision.run import Run, input_digests

NAMES = {"single": "classes", "multilabel": "tags", "ordinal": "grades", "regression": "target"}
# what --stale names, and what the user runs to bring it up to date
STALE = {"scores": ("the scores are older than their inputs", "train"),
         "submission": ("the submission is older than its inputs", "predict")}
PLOT_TITLES = {
    "learning_curves": ("Learning curves", "Per epoch and fold: solid lines are training (the batches' own "
                        "predictions, as the weights changed), dashed lines validation."),
    "cooccurrence": ("Tag co-occurrence", "How many training images hold both tags (the diagonal: each tag's "
                     "images), and each row as the share of its tag's images that also hold the column's tag."),
    "scatter": ("Predicted against true", "Out-of-fold predictions against the truth (the dashed line: a perfect "
                "prediction), and the residuals: a drift from 0 is a bias over that range of the target."),
    "confusion": ("Confusion matrix", "All out-of-fold predictions (argmax; ordinal: the rounded expected grade): "
                  "counts, and each true class's row "
                  "as fractions."),
    "roc": ("ROC", "Out-of-fold probabilities; the binary curve is the positive class's, multi-class curves are "
            "one class against the rest."),
    "per_class": ("Precision and recall per class", "Bars: the whole OOF set. Error bars: the standard "
                  "deviation over folds."),
    "wrong": ("Most confidently wrong", "Out-of-fold images the model got wrong with the highest confidence "
              "(probability of the predicted class)."),
    "label_issues": ("Label issues", "The most suspect labels of label_issues.csv (foldvision label-issues): "
                     "the OOF prediction backs the given label least; the title shows the given and predicted "
                     "label and, in brackets, the probability of the predicted class (single-label), the lowest "
                     "OOF probability of a given tag's state (multi-label) or the residual (regression, "
                     "ordinal)."),
    "near_duplicates": ("Near-duplicates", "The largest clusters of near-duplicate training images (one per "
                        "row; phash within cv.near_duplicate_distance of 64 bits and cv.near_duplicate_confirm of "
                        "256, mirrored and cropped copies included), with each image's label and fold. Clusters "
                        "are shown once make check (or a cv.near_duplicates=group split) has cached the images' "
                        "hashes."),
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
  .stale { background: #fff3cd; border: 1px solid #e0b100; border-radius: 4px; padding: 0.6em 1em; margin: 1em 0; }
  .stale ul { margin: 0.3em 0 0 0; }
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
{% if stale %}<div class="stale" id="stale"><strong>stale:</strong> this page shows results older than their
inputs.<ul>{% for line in stale %}<li>{{ line }}</li>{% endfor %}</ul></div>{% endif %}
<dl>{% for label, value in facts %}<dt>{{ label }}</dt><dd>{{ value }}</dd>{% endfor %}</dl>

<h2 id="scores">Scores</h2>
<p>Out-of-fold (OOF): every training image predicted by the one model that did not train on it, scored as one
set. The fold rows are each fold's validation images.</p>
{{ table(scores_table) }}
{% if blend %}
<h2 id="blend">Blend</h2>
<p>The members' OOF predictions blended with weights fitted on OOF. The plain score fits the weights on the rows
it scores; the nested score fits them on the other folds and scores each held-out fold: the gap between them is
the optimism, the nested score against the best member is the gain.</p>
{% for title, t in blend %}<h3>{{ title }}</h3>
{{ table(t) }}
{% endfor %}{% endif %}
{% if leaderboard %}
<h2 id="leaderboard">Leaderboard</h2>
<p>The submission {{ submission }} scored against {{ solution }} ({{ lb_metric }}).</p>
{{ table(leaderboard) }}
{% endif %}
{% if ablation %}
<h2 id="ablation">Ablation</h2>
{{ table(ablation) }}
{% endif %}
{% for title, t in kind_tables %}{% set head = title.split(" (")[0] %}
<h2 id="{{ head.lower().replace(' ', '-') }}">{{ head.capitalize() }}</h2>
<p>{{ title }}</p>
{{ table(t) }}
{% endfor %}
{% for plot in plots %}
<h2 id="{{ plot.name }}">{{ plot.title }}</h2>
<figure><img alt="{{ plot.title }}" src="data:image/png;base64,{{ plot.data }}">
<figcaption>{{ plot.caption }}</figcaption></figure>
{% if plot.name == "wrong" and wrong_table %}{{ table(wrong_table) }}{% endif %}
{% endfor %}
<h2 id="config">Config</h2>
<p>Keys that differ from foldvision's defaults:</p>
{{ table(config_table) }}
<details><summary>the whole resolved config</summary><pre>{{ config_yaml }}</pre></details>
</body>
</html>
"""


def config_differences(config: dict) -> Shown:
    defaults, actual = flatten(to_dict(Config())), flatten({k: v for k, v in config.items() if k != "_meta"})
    rows = [[key, short_value(value, 80), short_value(defaults.get(key), 80)]
            for key, value in actual.items() if key != "name" and repr(value) != repr(defaults.get(key))]
    return Shown(["key", "value", "default"], rows)


def facts(exp: Experiment) -> list[tuple[str, str]]:
    c = exp.config
    model = c["model"]["name"] + (f" at {c['model']['img_size']} px" if c["model"].get("img_size") else "")
    weights = c["model"].get("pretrained_file") or ("timm pretrained" if c["model"].get("pretrained") else "none")
    return [
        ("corpus", str(c["data"]["dir"])),
        (NAMES[exp.kind], ", ".join(exp.scores["classes"])),
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


def staleness(run: Run, stale: list[str], submission: Path | None) -> list[str]:
    """What on the page is out of date: make's verdict (`stale`), and corpus files changed since the stages
    recorded them (the config's input digests now against those in the stage stamps)."""
    lines = [f"{STALE[what][0]}; run make {STALE[what][1]} {run.make_args}" for what in stale]
    now = input_digests(run.load_config())
    trained = _changed(now["train"], run.recorded_inputs("train"))
    if trained:
        lines.append(f"the corpus changed since training ({', '.join(trained)}); run make train {run.make_args}")
    if submission is not None and submission.is_file():
        predicted = [k for k in _changed(now["predict"], run.recorded_inputs("predict")) if k not in now["train"]]
        if predicted:
            lines.append(f"the corpus changed since prediction ({', '.join(predicted)}); "
                         f"run make predict {run.make_args}")
    return lines


def _changed(now: dict, recorded: dict | None) -> list[str]:
    """The inputs whose digest differs from the one recorded (none recorded: nothing to compare)."""
    if recorded is None:
        return []
    return [k for k, v in now.items() if recorded.get(k) != v]


def _not_scored(run: Run) -> UserError:
    return UserError(f"{run.root}: no scores yet, nothing to report; run make train {run.make_args} first")


def build(run_dir: Path, submission: Path | None = None, stale: Sequence[str] = ()) -> str:
    """The report's HTML for a scored experiment (writes its plots on the way); `stale`: the banner's lines."""
    run = Run(run_dir)
    exp = load(run.root)
    if exp is None:
        raise _not_scored(run)
    plots = write_plots(run_dir)
    oof = run.read_oof()
    wrong = most_wrong(oof) if oof.kind == "single" else None
    wrong_rows = [] if wrong is None else [
        [r["id"], str(r["fold"]), r["label"], r["pred"], f"{r['confidence']:.3f}", f"{r['p_true']:.3f}"]
        for r in wrong.iter_rows(named=True)]
    solution = find_solution(exp.config["data"]["dir"])
    lb_metric, lb = leaderboard_scores(submission, solution, exp.metric, exp.kind) if submission else ("", {})
    ablation = run.read_ablation()
    env = Environment(autoescape=True)
    return env.from_string(TEMPLATE).render(
        name=exp.name, version=exp.meta.get("foldvision", __version__), commit=exp.meta.get("git_commit", "unknown"),
        task=exp.scores["task"], n=exp.scores["n"], metric=exp.metric, facts=facts(exp),
        stale=stale,
        scores_table=fold_scores(exp.scores),
        blend=blend_sections(run, exp.scores),
        leaderboard=Shown([f"{part.capitalize()} {lb_metric}" for part in lb], [[fmt(v) for v in lb.values()]])
        if lb else None,
        submission=submission, solution=solution, lb_metric=lb_metric,
        ablation=comparison_shown(ablation) if ablation is not None else None,
        kind_tables=kind_tables(exp.scores),
        plots=[{"name": name, "title": PLOT_TITLES[name][0], "caption": PLOT_TITLES[name][1], "data": _png(path)}
               for name, path in plots.items()],
        wrong_table=Shown(wrong.columns, wrong_rows) if wrong is not None else None,
        config_table=config_differences(exp.config),
        config_yaml=yaml.safe_dump(exp.config, sort_keys=False, allow_unicode=True),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="foldvision report", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="runs/<exp>, scored")
    parser.add_argument("--submission", type=Path, help="its submission, scored when the corpus has a solution")
    parser.add_argument("--stale", nargs="+", choices=list(STALE), default=[],
                        help="what make found out of date (make report passes it): shown as stale, not redone")
    parser.add_argument("--out", type=Path, help="default: the run folder's report page")
    args = parser.parse_args(argv)
    run = Run(args.run_dir)
    if not run.is_scored():
        raise _not_scored(run)
    stale = staleness(run, args.stale, args.submission)
    out = args.out or run.report_html
    write_text_atomic(out, build(run.root, args.submission, stale))
    if stale:  # one line, as the page's banner says it
        console.print(f"report: stale: {'; '.join(stale)}", style="bold yellow", markup=False, highlight=False)
    console.print(f"report: wrote {out}")


if __name__ == "__main__":
    from foldvision.cli import run_stage

    run_stage(main)
