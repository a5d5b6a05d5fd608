import dataclasses
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from foldvision.config import load_config
from foldvision.errors import UserError
from foldvision.stages.folds import run
from foldvision.splits import assign_folds, corpus_folds_path, corpus_key
from foldvision.run import save_run_config

from conftest import make_corpus, write_config


def test_stratified_folds_keep_class_proportions():
    labels = ["a"] * 50 + ["b"] * 25 + ["c"] * 10
    folds = assign_folds(labels, None, 5, seed=1)
    table = pd.crosstab(pd.Series(labels), folds)
    assert (table.loc["a"] == 10).all() and (table.loc["b"] == 5).all() and (table.loc["c"] == 2).all()
    assert (assign_folds(labels, None, 5, seed=1) == folds).all()  # seeded: the same split again
    assert not (assign_folds(labels, None, 5, seed=2) == folds).all()


def test_groups_never_span_folds():
    rng = np.random.default_rng(0)
    groups = [f"p{g}" for g in rng.integers(0, 40, 300)]
    labels = [("x" if int(g[1:]) % 3 else "y") for g in groups]
    folds = assign_folds(labels, groups, 5, seed=0)
    per_group = pd.Series(folds).groupby(pd.Series(groups)).nunique()
    assert (per_group == 1).all()
    assert set(folds) == set(range(5))


def test_a_class_smaller_than_k_names_the_class_and_a_k_that_works():
    with pytest.raises(UserError, match=r"class 'rare' has 3 images, fewer than cv.n_folds=5.*cv.n_folds=3"):
        assign_folds(["common"] * 20 + ["rare"] * 3, None, 5, seed=0)
    with pytest.raises(UserError, match=r"class 'lone' has 1 image, .*no K works.*add images of 'lone'"):
        assign_folds(["common"] * 20 + ["lone"], None, 5, seed=0)


def test_split_is_written_once_per_corpus_and_reused(tmp_path):
    data = make_corpus(tmp_path / "c", {"a": 6, "b": 6})
    cfg = load_config(str(write_config(tmp_path / "configs", "e1", data)))
    run_dir = tmp_path / "runs" / "e1"
    save_run_config(cfg, run_dir)
    run(run_dir)
    corpus_file = tmp_path / "folds" / corpus_key(data) / "folds_k2_seed42.csv"
    assert corpus_file.is_file()
    assert not list(data.glob("folds*"))  # nothing is written inside the corpus
    first = pd.read_csv(run_dir / "folds.csv")
    assert set(first.columns) == {"id", "path", "label", "fold"}
    # a second experiment reads the same split, even with another model seed
    cfg2 = load_config(str(write_config(tmp_path / "configs", "e2", data, train={"seed": 7})))
    save_run_config(cfg2, tmp_path / "runs" / "e2")
    mtime = corpus_file.stat().st_mtime_ns
    run(tmp_path / "runs" / "e2")
    assert corpus_file.stat().st_mtime_ns == mtime
    assert pd.read_csv(tmp_path / "runs" / "e2" / "folds.csv")["fold"].tolist() == first["fold"].tolist()


def test_a_folds_file_that_no_longer_matches_the_table_is_explained(tmp_path):
    data = make_corpus(tmp_path / "c", {"a": 6, "b": 6})
    cfg = load_config(str(write_config(tmp_path / "configs", "e", data)))
    save_run_config(cfg, tmp_path / "run")
    run(tmp_path / "run")
    table = pd.read_csv(data / "train.csv", dtype=str)
    table.loc[0, "label"] = "b"
    table.to_csv(data / "train.csv", index=False)
    with pytest.raises(UserError, match=r"no longer matches .*train.csv: 0 ids added, 0 removed, 1 relabelled"):
        run(tmp_path / "run")


def test_read_only_corpus_gets_its_folds_under_inputs_keyed_by_the_corpus(tmp_path, monkeypatch):
    data = make_corpus(tmp_path / "ro", {"a": 4, "b": 4})
    twin = make_corpus(tmp_path / "elsewhere" / "ro", {"a": 4, "b": 4})  # same folder name, another corpus
    os.chmod(data, stat.S_IRUSR | stat.S_IXUSR)
    try:
        cfg = load_config(str(write_config(tmp_path / "configs", "e", data)))
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, folds_dir="inputs/folds"))  # the default
        path = corpus_folds_path(cfg)
        assert path.parent.parent == Path("inputs/folds") and path.name == "folds_k2_seed42.csv"
        assert path.parent.name.startswith("ro-") and corpus_key(twin) != corpus_key(data)
        save_run_config(load_config(str(write_config(tmp_path / "configs", "e", data))), tmp_path / "run")
        run(tmp_path / "run")  # a read-only corpus needs no write permission
    finally:
        os.chmod(data, stat.S_IRWXU)
