import subprocess
import sys

import pandas as pd
import pytest
import yaml

from foldvision.commands.ablate import (
    Variant,
    comparison,
    labels,
    parse_grid,
    plan,
    slug,
    split_values,
    write_plan,
    write_tables,
)
from foldvision.errors import UserError
from foldvision.results.compare import comparison_shown
from foldvision.run import Run

from conftest import ROOT, make_corpus, write_config
from fakes import scored_run
from test_leaderboard import add_solution


def test_grid_parsing():
    assert parse_grid("train.sampler=imbalanced,random loss.name=cce,ce") == [
        ("train.sampler", ["imbalanced", "random"]), ("loss.name", ["cce", "ce"])]
    assert split_values("[hflip,vflip],[]") == ["[hflip,vflip]", "[]"]
    assert parse_grid("'predict.tta=[hflip],[]'") == [("predict.tta", ["[hflip]", "[]"])]
    for bad in ("", "train.sampler", "train.sampler=a,", "train.lr=1 train.lr=2"):
        with pytest.raises(UserError):
            parse_grid(bad)


def test_labels_and_slugs():
    assert labels(["train.sampler", "loss.name"]) == {"train.sampler": "sampler", "loss.name": "loss"}
    assert labels(["train.seed", "cv.seed"]) == {"train.seed": "train.seed", "cv.seed": "cv.seed"}
    assert [slug(v) for v in ("random", "1e-3", "[hflip,vflip]", "[]")] == ["random", "1e-3", "hflip-vflip", "none"]


def test_plan_names_variants_by_what_they_change(tmp_path, binary_corpus):
    write_config(tmp_path / "configs", "exp", binary_corpus, train={"sampler": "imbalanced"}, loss={"name": "cce"})
    variants = plan("exp", ["train.epochs=2"], parse_grid("train.sampler=imbalanced,random loss.name=cce,ce"),
                    tmp_path / "configs")
    assert [v.name for v in variants] == ["exp", "exp--loss-ce", "exp--sampler-random", "exp--sampler-random--loss-ce"]
    assert variants[0].overrides == [] and variants[3].overrides == ["train.sampler=random", "loss.name=ce"]
    assert variants[1].values == {"sampler": "imbalanced", "loss": "ce"}
    # a grid without the base's value still has the base first, as the reference
    variants = plan("exp", [], parse_grid("loss.name=ce,focal"), tmp_path / "configs")
    assert [v.name for v in variants] == ["exp", "exp--loss-ce", "exp--loss-focal"]


def test_plan_checks_every_variant_before_training(tmp_path, binary_corpus):
    write_config(tmp_path / "configs", "exp", binary_corpus)
    with pytest.raises(UserError, match="did you mean train.sampler"):
        plan("exp", [], parse_grid("train.samplr=random"), tmp_path / "configs")
    with pytest.raises(UserError, match="loss.name"):
        plan("exp", [], parse_grid("loss.name=ce,cross_entropy"), tmp_path / "configs")


def test_the_plan_saves_each_variant_for_make(tmp_path, binary_corpus, multiclass_corpus):
    write_config(tmp_path / "configs", "exp", binary_corpus)
    variants = plan("exp", ["train.epochs=2"], parse_grid("train.sampler=imbalanced,random"), tmp_path / "configs")
    runs = tmp_path / "runs"
    assert write_plan(variants, runs).read_text() == "ABLATION := exp exp--sampler-random\n"
    variant = Run(runs / "exp--sampler-random").load_config()
    assert variant.name == "exp--sampler-random" and variant.train.sampler == "random" and variant.train.epochs == 2
    assert Run(runs / "exp").load_config().train.sampler == "imbalanced"
    # a variant folder that holds results for another corpus is refused, not overwritten
    other = tmp_path / "other"
    scored_run(other, "exp--sampler-random", multiclass_corpus)
    with pytest.raises(UserError, match="holds results for data.dir"):
        write_plan(variants, other / "runs")
    assert not (other / "runs" / "exp").exists()  # nothing of the plan written


def test_comparison_table_against_the_base(tmp_path, binary_corpus):
    scored_run(tmp_path, "exp", binary_corpus, skill=1.0)
    scored_run(tmp_path, "exp--sampler-random", binary_corpus, skill=3.0, train={"sampler": "random"})
    variants = [Variant("exp", [], {"sampler": "imbalanced"}),
                Variant("exp--sampler-random", ["train.sampler=random"], {"sampler": "random"})]
    table = comparison(variants, tmp_path / "runs", tmp_path / "subs")
    assert table["experiment"].to_list() == ["exp", "exp--sampler-random"]
    assert table["sampler"].to_list() == ["imbalanced", "random"]
    base_auc, variant_auc = table["oof_auc"]
    assert table["delta_vs_base"].to_list() == pytest.approx([0.0, variant_auc - base_auc])
    assert table[1, "train_seconds"] == pytest.approx(2 * (1.5 + 2.5))
    shown = comparison_shown(table)
    assert list(shown.columns) == ["experiment", "sampler", "OOF auc", "folds mean ± std", "Δ vs base", "wall time"]
    delta = shown.column("Δ vs base")
    assert delta[0] == "base" and delta[1].startswith(("+", "-"))
    write_tables(table, tmp_path / "runs" / "exp", "Ablation of exp")
    written = pd.read_csv(tmp_path / "runs" / "exp" / "ablation.csv")
    assert written["experiment"].tolist() == table["experiment"].to_list()
    assert "| exp--sampler-random |" in (tmp_path / "runs" / "exp" / "ablation.md").read_text()
    with pytest.raises(UserError, match="has not finished"):
        comparison([*variants, Variant("exp--lr-1", [], {})], tmp_path / "runs", tmp_path / "subs")


def make(tmp_path, *targets, jobs: int = 1, **variables):
    args = {"CONFIGS": tmp_path / "configs", "RUNS": tmp_path / "runs", "SUBMISSIONS": tmp_path / "subs",
            "PY": sys.executable, **variables}
    cmd = ["make", f"-j{jobs}", "--no-print-directory", "-C", str(ROOT), *targets,
           *(f"{k}={v}" for k, v in args.items())]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_make_ablate_then_leaderboard_and_report(tmp_path):
    corpus = make_corpus(tmp_path / "bin", {"0": 12, "1": 8}, n_test=12)
    add_solution(corpus)
    write_config(tmp_path / "configs", "abl", corpus, predict={"tta": []})
    # make runs the variants: -j2 trains both side by side
    result = make(tmp_path, "ablate", jobs=2, EXP="abl", GRID="train.sampler=imbalanced,random", ARGS="train.lr=0.002")
    runs = tmp_path / "runs"
    assert (runs / "abl" / "ablation.mk").read_text() == "ABLATION := abl abl--sampler-random\n"
    for name in ("abl", "abl--sampler-random"):
        assert (runs / name / "scores.json").is_file() and (tmp_path / "subs" / f"{name}.csv").is_file()
    variant = yaml.safe_load((runs / "abl--sampler-random" / "config.yaml").read_text())
    assert variant["name"] == "abl--sampler-random" and variant["train"]["sampler"] == "random"
    assert variant["train"]["lr"] == 0.002  # ARGS reach every variant
    assert "Δ vs base" in result.stdout and "abl--sampler-random" in result.stdout
    table = pd.read_csv(runs / "abl" / "ablation.csv")
    assert table["experiment"].tolist() == ["abl", "abl--sampler-random"]
    assert {"public_auc", "private_auc", "train_seconds"} <= set(table.columns)
    assert (runs / "abl" / "folds.csv").read_text() == (runs / "abl--sampler-random" / "folds.csv").read_text()

    again = make(tmp_path, "ablate", EXP="abl", GRID="train.sampler=imbalanced,random", ARGS="train.lr=0.002")
    assert "foldvision train" not in again.stdout and "foldvision predict" not in again.stdout
    assert pd.read_csv(runs / "abl" / "ablation.csv").equals(table)  # -j1 reads the same table

    board = make(tmp_path, "leaderboard")
    assert "abl--sampler-random" in board.stdout and "Public auc" in board.stdout
    assert "train.sampler=random" in board.stdout  # what sets it apart

    make(tmp_path, "report", EXP="abl")
    html = (runs / "abl" / "report.html").read_text()
    assert ">Ablation</h2>" in html and ">Leaderboard</h2>" in html
    assert "foldvision report" not in make(tmp_path, "report", EXP="abl").stdout  # up to date: not redone
