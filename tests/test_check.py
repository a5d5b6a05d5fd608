"""`foldvision check`: counts per class and fold, sizes and modes, unreadable files, duplicates inside train and
between train and test (a leak), groups split across folds; exit status 1 on errors, 0 with warnings only."""

import shutil

import pandas as pd

from conftest import Project, make_corpus


def check(p: Project, capsys) -> tuple[int, str]:
    return p.check(capsys)


def test_counts_sizes_modes_and_no_findings_on_a_clean_corpus(tmp_path, capsys):
    p = Project(tmp_path, make_corpus(tmp_path / "c", {"cat": 6, "dog": 4}, size=20))
    code, report = check(p, capsys)
    assert code == 0, report
    assert "10 images, 2 classes" in report
    assert "images: 10 train, 6 test; width min/median/max 20 / 20 / 20" in report
    assert "modes: {'RGB': 16}" in report and "formats: {'PNG': 16}" in report
    counts = report[report.index("fold"):]
    assert "cat" in counts and "dog" in counts and "all" in counts
    assert "check: 0 errors, 0 warnings" in report
    assert not (p.run / "folds.csv").exists()  # check only reads: the split is made by `make folds`


def test_copies_in_train_across_folds_and_train_test_leaks_are_warnings(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "c", {"cat": 6, "dog": 6})
    shutil.copy(corpus / "train" / "cat_000.png", corpus / "train" / "cat_005.png")  # a copy inside train
    shutil.copy(corpus / "train" / "dog_001.png", corpus / "test" / "t002.png")  # a test image seen in training
    p = Project(tmp_path, corpus)
    code, report = check(p, capsys)
    assert code == 0, report  # warnings only
    assert "2 train images are copies of another (1 groups, e.g. cat_000, cat_005)" in report
    assert "0 groups disagree on the label" in report
    assert "groups span folds" in report
    assert "leak: 1 test images are byte-identical to train images (e.g. t002.png = dog_001)" in report
    assert "check: 0 errors, 2 warnings" in report


def test_a_saved_split_that_breaks_a_group_is_an_error(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "c", {"a": 6, "b": 6})
    table = pd.read_csv(corpus / "train.csv", dtype=str)
    table["patient"] = [f"p{i // 2}" for i in range(len(table))]
    table.to_csv(corpus / "train.csv", index=False)
    p = Project(tmp_path, corpus, data={"group_col": "patient"})
    code, err = p.folds(capsys)
    assert code == 0, err
    split = next((tmp_path / "folds").glob("*/folds_*.csv"))
    saved = pd.read_csv(split, dtype=str)
    saved.loc[0, "fold"] = str((int(saved.loc[1, "fold"]) + 1) % 2)  # p0's two images now in two folds
    saved.to_csv(split, index=False)
    code, report = p.check(capsys)
    assert code == 1
    assert "error: 1 groups span several folds (e.g. 'p0')" in report and "re-split" in report


def test_every_unreadable_file_is_an_error_naming_it(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "c", {"a": 6, "b": 6})
    (corpus / "test" / "t001.png").write_bytes(b"")
    (corpus / "test" / "t004.png").write_text("<html>not found</html>")
    (corpus / "train" / "b_002.png").write_bytes(b"\x89PNG\r\n")
    p = Project(tmp_path, corpus)
    code, report = check(p, capsys)
    assert code == 1, report
    assert "t001.png: empty file (0 bytes)" in report
    assert "t004.png: UnidentifiedImageError" in report and "b_002.png: " in report
    assert "check: 3 errors" in report
