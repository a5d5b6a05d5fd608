"""User mistakes end in one `error:` line naming what to fix, exit status 2, no traceback."""

import pandas as pd

from conftest import make_corpus, run_cli, write_config


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_misspelt_override(tmp_path):
    write_config(tmp_path / "configs", "e", tmp_path)
    result = run_cli("config", "e", "train.epoch=2", "--configs", str(tmp_path / "configs"),
                     "--run-dir", str(tmp_path / "run"))
    assert_user_error(result, "train.epoch", "did you mean train.epochs")
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_missing_image_leaves_no_folds(tmp_path):
    corpus = make_corpus(tmp_path / "c", {"a": 4, "b": 4})
    (corpus / "train" / "a_002.png").unlink()
    write_config(tmp_path / "configs", "e", corpus)
    run = tmp_path / "runs" / "e"
    assert run_cli("config", "e", "--configs", str(tmp_path / "configs"), "--run-dir", str(run)).returncode == 0
    result = run_cli("folds", str(run))
    assert_user_error(result, "train.csv row 4", "a_002")
    assert not (run / "folds.csv").exists() and not list(corpus.glob("folds*.csv"))


def test_class_smaller_than_k(tmp_path):
    corpus = make_corpus(tmp_path / "c", {"big": 8, "tiny": 2})
    write_config(tmp_path / "configs", "e", corpus, cv={"n_folds": 3})
    run = tmp_path / "runs" / "e"
    run_cli("config", "e", "--configs", str(tmp_path / "configs"), "--run-dir", str(run))
    assert_user_error(run_cli("folds", str(run)), "class 'tiny' has 2 images", "cv.n_folds=2")


def test_training_before_folds(tmp_path):
    write_config(tmp_path / "configs", "e", tmp_path)
    run = tmp_path / "runs" / "e"
    run_cli("config", "e", "--configs", str(tmp_path / "configs"), "--run-dir", str(run))
    assert_user_error(run_cli("train", str(run), "--fold", "0"), "folds.csv not found", "make folds")


def test_evaluate_scores_public_and_private(tmp_path):
    pd.DataFrame({"id": ["a", "b", "c", "d"], "target": [0.1, 0.9, 0.8, 0.3]}).to_csv(tmp_path / "s.csv", index=False)
    pd.DataFrame({"id": ["a", "b", "c", "d"], "target": [0, 1, 1, 0], "Usage": ["Public", "Public", "Private",
                                                                                 "Private"]}).to_csv(tmp_path / "sol.csv", index=False)
    result = run_cli("evaluate", str(tmp_path / "s.csv"), str(tmp_path / "sol.csv"))
    assert result.returncode == 0, result.stderr
    assert "Public: n 2  auc 1.0000" in result.stdout and "Private: n 2  auc 1.0000" in result.stdout
