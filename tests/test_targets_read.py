"""Reading every target kind from the label table, and splitting it (issue 20: reading and folds).

    python -m pytest tests/test_targets_read.py -q

data.task=auto says in one line what it read (multi-label tags in a delimited column or in 0/1 columns,
regression values, single-label classes; ordinal grades when asked); every bad cell is one line naming its row;
the folds keep every tag's count, the regression target's bins and the grades even across folds, and groups whole;
a saved split is re-read and checked for every kind; the demo corpora of the new kinds read as their kind.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
from PIL import Image

from foldvision.commands import demo_data
from foldvision.config import Config, CVConfig, DataConfig
from foldvision.corpus import read_train
from foldvision.errors import UserError
from foldvision.splits import assign_folds, corpus_folds, fold_counts, value_bins
from foldvision.targets import Task


def write_corpus(root, header: str, rows, **data) -> DataConfig:
    """train.csv with `header` and `rows` (tuples of cells), a tiny image per row's first cell."""
    (root / "train").mkdir(parents=True, exist_ok=True)
    for row in rows:
        Image.new("L", (2, 2)).save(root / "train" / f"{row[0]}.png")
    (root / "train.csv").write_text("\n".join([header, *(",".join(map(str, r)) for r in rows)]) + "\n")
    return DataConfig(dir=str(root), **data)


def reading(capsys) -> list[str]:
    """The lines that say what the label table was read as."""
    return [line for line in capsys.readouterr().err.splitlines() if ": column" in line or ": columns" in line]


PLANET = [("a0", "clear primary"), ("a1", "haze primary water"), ("a2", "clear"), ("a3", "primary water"),
          ("a4", "clear primary water"), ("a5", "haze")]


# ---- auto-detection, one table shape at a time -------------------------------------------------------------------

def test_a_planet_style_tags_column_is_multilabel_said_in_one_line(tmp_path, capsys):
    corpus = read_train(write_corpus(tmp_path, "image_name,tags", PLANET), verify=False)
    assert corpus.kind == "multilabel"
    assert corpus.classes == ["clear", "haze", "primary", "water"]
    assert corpus.table["label"].to_list() == ["clear|primary", "haze|primary|water", "clear", "primary|water",
                                               "clear|primary|water", "haze"]
    assert reading(capsys) == ["train.csv: column 'tags' holds 4 tags (space-separated), up to 3 per image: "
                               "multi-label (set data.task to change)"]


def test_a_pipe_delimited_column_with_spaces_in_tags_splits_on_the_pipe(tmp_path, capsys):
    rows = [("x0", "No Finding"), ("x1", "Effusion|Mass"), ("x2", "Mass"), ("x3", "Effusion"),
            ("x4", "Pleural Thickening|Mass"), ("x5", "No Finding")]
    corpus = read_train(write_corpus(tmp_path, "Image Index,Finding Labels", rows), verify=False)
    assert corpus.kind == "multilabel"
    assert corpus.classes == ["Effusion", "Mass", "No Finding", "Pleural Thickening"]
    assert corpus.table["label"][4] == "Mass|Pleural Thickening"
    assert reading(capsys) == ["train.csv: column 'Finding Labels' holds 4 tags ('|'-separated), up to 2 per image: "
                               "multi-label (set data.task to change)"]


def test_one_hot_columns_are_multilabel_tags_with_or_without_label_cols(tmp_path, capsys):
    rows = [(f"h{i}", i % 2, (i // 2) % 2, int(i % 4 == 0), 30 + i) for i in range(1, 9)]
    cfg = write_corpus(tmp_path, "image_id,Mass,Effusion,Atelectasis,age", rows)
    corpus = read_train(cfg, verify=False)  # no label column by name: the 0/1 columns are the tags, not age
    assert (corpus.kind, corpus.classes) == ("multilabel", ["Atelectasis", "Effusion", "Mass"])
    assert corpus.table["label"].to_list()[:4] == ["Mass", "Effusion", "Effusion|Mass", "Atelectasis"]
    assert reading(capsys) == ["train.csv: columns 'Atelectasis', 'Effusion', 'Mass' hold 3 tags as 0/1, up to 2 "
                               "per image: multi-label (set data.task to change)"]
    explicit = read_train(dataclasses.replace(cfg, label_cols=["Mass", "Effusion"], empty_tags=True), verify=False)
    assert explicit.classes == ["Effusion", "Mass"] and explicit.table["label"][2] == "Effusion|Mass"


def test_float_scores_are_a_regression_target(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = [(f"s{i}", f"{v:.6f}") for i, v in enumerate(rng.uniform(1, 5, 30))]
    corpus = read_train(write_corpus(tmp_path, "image,score", rows), verify=False)
    assert (corpus.kind, corpus.classes) == ("regression", ["score"])
    assert corpus.table["label"].to_list() == [r[1] for r in rows]  # the values as written
    values = [float(r[1]) for r in rows]
    assert reading(capsys) == [f"train.csv: column 'score' holds 30 distinct numbers from {min(values):g} to "
                               f"{max(values):g}: regression (set data.task to change)"]


def test_integer_grades_are_classes_unless_data_task_says_ordinal(tmp_path, capsys):
    rows = [(f"g{i}", [0, 1, 2, 4, 2.0][i % 5]) for i in range(10)]
    cfg = write_corpus(tmp_path, "id_code,diagnosis", rows)
    corpus = read_train(cfg, verify=False)
    assert (corpus.kind, corpus.classes) == ("single", ["0", "1", "2", "4"])
    assert reading(capsys)[-1] == ("train.csv: column 'diagnosis' holds 4 classes: single-label (numbers as classes: "
                                   "set data.task=ordinal or regression for grades or scores)")
    corpus = read_train(dataclasses.replace(cfg, task="ordinal"), verify=False)
    assert (corpus.kind, corpus.classes) == ("ordinal", ["0", "1", "2", "3", "4"])  # K = the highest grade + 1
    assert set(corpus.table["label"].to_list()) == {"0", "1", "2", "4"}  # '2.0' is grade 2
    err = capsys.readouterr().err
    assert "train.csv: column 'diagnosis' holds grades 0..4: ordinal grades (data.task)" in err
    assert "1 grade of 0..4 (3) on no image" in err  # said, not an error


def test_plain_classes_read_as_before_with_the_line_saying_single_label(tmp_path, capsys):
    rows = [("c0", "cat"), ("c1", "dog"), ("c2", "cat"), ("c3", "dog")]
    corpus = read_train(write_corpus(tmp_path, "image_id,label", rows), verify=False)
    assert (corpus.kind, corpus.classes, corpus.table["label"].to_list()) == ("single", ["cat", "dog"],
                                                                              ["cat", "dog", "cat", "dog"])
    assert reading(capsys) == ["train.csv: column 'label' holds 2 classes: single-label (set data.task to change)"]


def test_class_names_that_share_a_word_stay_single_label(tmp_path):
    names = ["Common wheat", "Common Chickweed", "Fat Hen", "Loose Silky-bent", "Sugar beet", "Maize"]
    rows = [(f"p{i}", names[i % len(names)]) for i in range(12)]
    corpus = read_train(write_corpus(tmp_path, "file,species", rows, label_col="species"), verify=False)
    assert (corpus.kind, len(corpus.classes)) == ("single", 6)


def test_data_task_and_label_delim_are_taken_as_said(tmp_path, capsys):
    rows = [("k0", "red;round"), ("k1", "green;long"), ("k2", "red;long"), ("k3", "blue;flat")]
    cfg = write_corpus(tmp_path, "image,label", rows)
    assert read_train(cfg, verify=False).kind == "single"  # 6 words in 4 cells, none alone: not read as tags
    corpus = read_train(dataclasses.replace(cfg, label_delim=";"), verify=False)
    assert (corpus.kind, corpus.table["label"][0]) == ("multilabel", "red|round")
    assert reading(capsys)[-1] == ("train.csv: column 'label' holds 6 tags (';'-separated), up to 2 per image: "
                                   "multi-label (data.label_delim)")
    corpus = read_train(dataclasses.replace(cfg, task="multilabel"), verify=False)  # ';' found
    assert corpus.classes == ["blue", "flat", "green", "long", "red", "round"]


def test_numbers_with_a_decimal_comma_are_not_tags(tmp_path):
    rows = [(f"n{i}", f'"{i % 7},{i % 5}"') for i in range(30)]
    assert read_train(write_corpus(tmp_path, "image,label", rows), verify=False).kind == "single"


def test_tag_keys_are_refused_with_a_task_that_has_no_tags():
    from foldvision.config import load_config

    with pytest.raises(UserError, match=r"^data.task='ordinal': data.label_cols are multi-label tags"):
        load_config("digits_count", ["data.label_cols=[a, b]"])
    with pytest.raises(UserError, match=r"^data.task='regression': data.label_delim splits multi-label tags"):
        load_config("digits_count_regression", ["data.label_delim=';'"])


def test_a_folder_per_class_corpus_is_single_label_only(tmp_path):
    for name in ("a", "b"):
        (tmp_path / "train" / name).mkdir(parents=True)
        Image.new("L", (2, 2)).save(tmp_path / "train" / name / "x.png")
    assert read_train(DataConfig(dir=str(tmp_path)), verify=False).kind == "single"
    with pytest.raises(UserError, match=r"^data.task=multilabel needs a label table .* holds single-label classes"):
        read_train(DataConfig(dir=str(tmp_path), task="multilabel"), verify=False)


# ---- bad cells: one line naming the row ---------------------------------------------------------------------------

def one_line_error(cfg: DataConfig) -> str:
    with pytest.raises(UserError) as e:
        read_train(cfg, verify=False)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_an_empty_tag_set_is_an_error_unless_data_empty_tags(tmp_path):
    cfg = write_corpus(tmp_path, "image_name,tags", [*PLANET, ("a6", ""), ("a7", "NA")])
    assert "train.csv: row 8 has no tag ('tags' is empty; 2 such rows); set data.empty_tags=true" in one_line_error(cfg)
    corpus = read_train(dataclasses.replace(cfg, empty_tags=True), verify=False)
    assert corpus.table["label"].to_list()[-2:] == ["", ""]


def test_a_row_of_zeros_and_a_cell_that_is_not_0_or_1_name_their_rows(tmp_path):
    rows = [("h1", 1, 0), ("h2", 0, 1), ("h3", 0, 0), ("h4", 1, 1)]
    cfg = write_corpus(tmp_path, "image_id,a,b", rows, label_cols=["a", "b"])
    assert "row 4 has no tag (0 in every one of a, b; 1 such row)" in one_line_error(cfg)
    cfg = write_corpus(tmp_path, "image_id,a,b", [*rows[:2], ("h3", 2, 0)], label_cols=["a", "b"])
    assert "train.csv: row 4: 'a' is '2'; tag columns (data.label_cols) hold 0 or 1" in one_line_error(cfg)


def test_a_non_number_in_a_regression_target_names_its_row(tmp_path):
    rows = [("s0", "1.5"), ("s1", "2.25"), ("s2", "abc"), ("s3", "3.0")]
    cfg = write_corpus(tmp_path, "image,score", rows, task="regression")
    assert "train.csv: row 4: 'score' is 'abc', not a number; a regression target" in one_line_error(cfg)


def test_a_grade_that_is_not_a_whole_number_or_below_zero_names_its_row(tmp_path):
    cfg = write_corpus(tmp_path, "image,grade", [("g0", 0), ("g1", 1.5), ("g2", 2)], task="ordinal")
    assert "train.csv: row 3: grade '1.5' ('grade') is not a whole number" in one_line_error(cfg)
    cfg = write_corpus(tmp_path, "image,grade", [("g0", 0), ("g1", 3), ("g2", -1)], task="ordinal")
    assert "train.csv: row 4: grade -1 ('grade') is outside 0..3: ordinal grades count from 0" in one_line_error(cfg)


def test_a_tag_holding_the_canonical_separator_names_its_row(tmp_path):
    rows = [("t0", "sea sunset"), ("t1", "sea"), ("t2", "sun|set sea"), ("t3", "sunset")]
    cfg = write_corpus(tmp_path, "image_name,tags", rows, task="multilabel", label_delim=" ")
    assert "train.csv: row 4: tag 'sun|set' holds '|', which foldvision joins tags with" in one_line_error(cfg)


# ---- folds --------------------------------------------------------------------------------------------------------

def tag_table(n: int, n_tags: int = 8, seed: int = 0) -> tuple[list[str], Task]:
    rng = np.random.default_rng(seed)
    task = Task("multilabel", tuple(f"t{k}" for k in range(n_tags)))
    labels = [task.join(f"t{k}" for k in rng.choice(n_tags, rng.integers(1, 4), replace=False)) for _ in range(n)]
    return labels, task


def per_fold(column: np.ndarray, folds: np.ndarray, n_folds: int) -> np.ndarray:
    return np.array([column[folds == k].sum() for k in range(n_folds)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_tag_count_per_fold_is_within_one_row_of_its_mean(seed):
    labels, task = tag_table(600, seed=seed)
    folds = assign_folds(labels, None, 5, seed, task)
    y = task.encode(labels)
    for column in [*y.T, np.ones(len(y))]:  # each tag, and the images
        counts = per_fold(column, folds, 5)
        assert np.abs(counts - column.sum() / 5).max() <= 1, counts


def test_a_tag_on_fewer_images_than_folds_is_a_note_not_an_error(capsys):
    labels, task = tag_table(100)
    task = Task("multilabel", (*task.names, "rare"))
    labels[0] = task.join(["t0", "rare"])
    folds = assign_folds(labels, None, 5, 0, task)
    assert set(folds) == set(range(5))
    assert ("1 tag on fewer images than cv.n_folds=5: 'rare' (1); a fold without one has no positive of that tag"
            in capsys.readouterr().err)


@pytest.mark.parametrize("kind", ["regression", "ordinal"])
def test_the_target_bins_per_fold_are_within_one_row_of_their_mean(kind):
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 1.5, 500) if kind == "regression" else rng.choice(5, 500, p=[.5, .2, .15, .1, .05])
    labels = [f"{v:.4f}" if kind == "regression" else str(v) for v in values]
    task = Task(kind, ("score",) if kind == "regression" else tuple(map(str, range(5))))
    folds = assign_folds(labels, None, 5, 0, task)
    bins = value_bins(task.encode(labels), kind, 5)
    assert len(set(bins)) == (10 if kind == "regression" else 5)
    for b in set(bins):
        counts = per_fold((bins == b).astype(float), folds, 5)
        assert np.abs(counts - (bins == b).sum() / 5).max() <= 1, (b, counts)


def test_a_grade_with_fewer_images_than_folds_joins_its_neighbour():
    grades = np.array([0] * 20 + [1] * 2 + [2] * 20)
    assert sorted(set(value_bins(grades, "ordinal", 5))) == [0, 2]  # the 2 images of grade 1 join grade 0


@pytest.mark.parametrize("kind", ["multilabel", "regression", "ordinal"])
def test_groups_never_span_folds(kind):
    rng = np.random.default_rng(1)
    groups = [f"p{g}" for g in rng.integers(0, 60, 400)]
    if kind == "multilabel":
        labels, task = tag_table(400)
    elif kind == "regression":
        labels, task = [f"{v:.3f}" for v in rng.normal(size=400)], Task("regression", ("y",))
    else:
        labels, task = [str(v) for v in rng.integers(0, 4, 400)], Task("ordinal", ("0", "1", "2", "3"))
    folds = assign_folds(labels, groups, 5, 0, task)
    frame = pl.DataFrame({"group": groups, "fold": folds})
    assert frame.group_by("group").agg(pl.col("fold").n_unique())["fold"].max() == 1
    assert set(folds) == set(range(5))


def test_the_counts_per_fold_show_each_tag_and_the_spread_of_a_regression_target(capsys):
    from rich.console import Console

    labels, task = tag_table(50)
    folds = assign_folds(labels, None, 5, 0, task).tolist()
    Console(width=200).print(fold_counts(labels, folds, list(task.names), "multilabel"))
    Console(width=200).print(fold_counts(["1.5", "2.5", "3.5", "4.5"], [0, 0, 1, 1], ["score"], "regression"))
    out = capsys.readouterr().out
    t0 = sum("t0" in label.split("|") for label in labels)
    assert any(line.split()[:1] == ["t0"] and line.split()[-1] == str(t0) for line in out.splitlines())
    assert any(line.split() == ["images", *map(str, np.bincount(folds)), "50"] for line in out.splitlines())
    assert any(line.split() == ["mean", "2", "4", "3"] for line in out.splitlines())


# ---- the corpus split, saved and re-read for every kind ----------------------------------------------------------

def split_config(tmp_path, cfg: DataConfig) -> Config:
    return Config(data=dataclasses.replace(cfg, folds_dir=str(tmp_path / "folds")), cv=CVConfig(n_folds=3))


@pytest.mark.parametrize("kind", ["multilabel", "regression", "ordinal"])
def test_a_saved_split_is_reread_and_checked_against_the_table(tmp_path, kind, capsys):
    rng = np.random.default_rng(0)
    cells = {"multilabel": lambda i: " ".join(rng.choice(["sea", "sun", "sky", "road"], 2, replace=False)),
             "regression": lambda i: f"{rng.uniform(0, 9):.3f}", "ordinal": lambda i: str(i % 3)}[kind]
    rows = [(f"r{i}", cells(i)) for i in range(24)]
    data = write_corpus(tmp_path / "c", "image,target", rows, task=kind)
    cfg = split_config(tmp_path, data)
    corpus = read_train(cfg.data, verify=False)
    first = corpus_folds(cfg, corpus.table, corpus.source, task=corpus.task)
    saved = list((tmp_path / "folds").rglob(f"folds_k3_seed42_{kind}.csv"))
    assert len(saved) == 1 and "folds: wrote" in capsys.readouterr().err
    again = corpus_folds(cfg, corpus.table, corpus.source, task=corpus.task)
    assert "folds: reusing" in capsys.readouterr().err and (again == first).all()
    changed = [(i, ("road" if kind == "multilabel" else "1")) if i == "r5" else (i, c) for i, c in rows]
    write_corpus(tmp_path / "c", "image,target", changed)
    corpus = read_train(cfg.data, verify=False)
    with pytest.raises(UserError, match=r"no longer matches .*train.csv: 0 ids added, 0 removed, 1 relabelled"):
        corpus_folds(cfg, corpus.table, corpus.source, task=corpus.task)


def test_a_users_split_may_write_tags_with_its_own_delimiter_and_order(tmp_path):
    data = write_corpus(tmp_path / "c", "image_name,tags", PLANET)
    own = tmp_path / "my_folds.csv"
    labels = [" ".join(reversed(tags.split())) for _, tags in PLANET]  # 'primary clear' for 'clear|primary'
    pl.DataFrame({"id": [i for i, _ in PLANET], "label": labels, "fold": [0, 1, 2, 0, 1, 2]}).write_csv(own)
    cfg = split_config(tmp_path, dataclasses.replace(data, folds_file=str(own)))
    corpus = read_train(cfg.data, verify=False)
    assert corpus_folds(cfg, corpus.table, corpus.source, task=corpus.task).tolist() == [0, 1, 2, 0, 1, 2]


# ---- the demo corpora --------------------------------------------------------------------------------------------

def test_the_tags_demo_reads_as_multilabel_with_a_space_joined_sample(tmp_path, capsys):
    demo_data.build_canvases(tmp_path / "tags", "tags", n=60)
    corpus = read_train(DataConfig(dir=str(tmp_path / "tags")))
    assert corpus.kind == "multilabel" and corpus.classes == sorted(demo_data.WORDS)
    assert {label.count("|") for label in corpus.table["label"]} == {1, 2}  # two or three digits each
    sample = pl.read_csv(tmp_path / "tags" / "sample_submission.csv")
    answers = pl.read_csv(tmp_path / "tags" / "test_labels.csv")
    assert sample.columns == answers.columns == ["image_name", "tags"]
    assert sample["image_name"].to_list() == answers["image_name"].to_list() and sample.height == 12
    assert all(set(cell.split()) <= set(demo_data.WORDS) for cell in answers["tags"])
    with Image.open(tmp_path / "tags" / "train" / f"{corpus.table['id'][0]}.png") as im:
        assert im.size == (30, 30) and im.mode == "L"


def test_the_count_demo_reads_as_grades_or_values_with_a_number_sample(tmp_path):
    demo_data.build_canvases(tmp_path / "count", "count", n=60)
    cfg = DataConfig(dir=str(tmp_path / "count"), task="ordinal")
    corpus = read_train(cfg)
    assert corpus.kind == "ordinal" and corpus.classes == ["0", "1", "2", "3", "4"]
    assert read_train(dataclasses.replace(cfg, task="regression")).classes == ["score"]
    sample = pl.read_csv(tmp_path / "count" / "sample_submission.csv")
    assert sample.columns == ["image", "score"] and sample["score"].dtype == pl.Int64
    ink = [(np.asarray(Image.open(tmp_path / "count" / "train" / f"{i}.png")) > 0).any()
           for i in corpus.table["id"]]
    assert ink == [label != "0" for label in corpus.table["label"]]  # an empty canvas is a count of 0


def test_check_prints_each_tags_count_per_fold_and_the_folds_stage_writes_the_task(tmp_path, capsys):
    from conftest import resolved_run

    from foldvision.commands import check
    from foldvision.run import Run

    demo_data.build_canvases(tmp_path / "tags", "tags", n=60)
    cfg, run_dir = resolved_run(tmp_path, tmp_path / "tags", data={"task": "auto"})
    capsys.readouterr()
    assert check.run(cfg) == 0
    report = capsys.readouterr()
    assert "train.csv: column 'tags' holds 10 tags (space-separated), up to 3 per image: multi-label" in report.err
    assert "48 images, 10 tags" in report.out
    split = Run(run_dir).read_split()
    assert split.kind == "multilabel" and split.y.shape == (48, 10)
    rows = {line.split()[0]: line.split()[1:] for line in report.out.splitlines() if line.split()}
    for k, tag in enumerate(split.classes):  # check's table is the split the folds stage wrote
        counts = [int(split.y[split.fold == f, k].sum()) for f in (0, 1)]
        assert rows[tag] == [*map(str, counts), str(sum(counts))]
