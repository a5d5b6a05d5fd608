from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest

from foldvision.errors import UserError
from foldvision.results.submission import Sample, build, infer_format, write_submission
from foldvision.run import Predictions
from foldvision.tables import read_table


def sample(path: Path, frame: pd.DataFrame) -> tuple[pl.DataFrame, Path]:
    """The sample as a user's tool writes it (pandas), read back as foldvision reads it (every cell a string)."""
    frame.to_csv(path, index=False)
    return read_table(path), path


def test_binary_probability_in_sample_order(tmp_path):
    s, path = sample(tmp_path / "s.csv", pd.DataFrame({"image_id": ["c", "a", "b"], "target": 0.5}))
    fmt = infer_format(s, path, ["0", "1"], "auc")
    assert (fmt.kind, fmt.columns, fmt.classes) == ("probability", ["target"], ["1"])
    # predictions arrive in another order: the join is by id, never by position
    preds = Predictions(["a", "b", "c"], ["0", "1"], np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]]))
    write_submission(tmp_path / "sub.csv", preds, Sample(s, path, fmt))
    written = pd.read_csv(tmp_path / "sub.csv", dtype={"image_id": str})
    assert list(written.columns) == ["image_id", "target"]
    assert written["image_id"].tolist() == ["c", "a", "b"]
    assert written["target"].tolist() == pytest.approx([0.6, 0.1, 0.8])


def test_binary_with_integer_sample_values_scored_by_auc_is_a_probability(tmp_path):
    s, path = sample(tmp_path / "s.csv", pd.DataFrame({"id": ["a"], "target": [0]}))
    assert infer_format(s, path, ["0", "1"], "auc").kind == "probability"
    assert infer_format(s, path, ["0", "1"], "accuracy").kind == "label"


def test_multiclass_probability_columns_in_the_samples_order(tmp_path):
    s, path = sample(tmp_path / "s.csv", pd.DataFrame({"id": ["x", "y"], "owl": 0.0, "cat": 0.0, "dog": 0.0}))
    classes = ["cat", "dog", "owl"]
    fmt = infer_format(s, path, classes, "auc")
    assert fmt.kind == "classes"
    out = build(s, fmt, ["y", "x"], np.array([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2]]), classes)
    assert list(out.columns) == ["id", "owl", "cat", "dog"]
    assert list(out.row(0)[1:]) == pytest.approx([0.2, 0.5, 0.3])  # x: owl, cat, dog


def test_headerless_multiclass_probability_columns_follow_the_class_order(tmp_path):
    path = tmp_path / "sample_submit.csv"
    path.write_text("y,0.3,0.3,0.4\nx,0.1,0.2,0.7\n")
    s = pl.read_csv(path, has_header=False, infer_schema=False)
    s.columns = [f"column{i}" for i in range(4)]  # as corpus.read_sample names a headerless sample's columns
    classes = ["cat", "dog", "owl"]
    fmt = infer_format(s, path, classes, "auc", header=False)
    assert (fmt.kind, fmt.classes) == ("classes", classes)
    preds = Predictions(["x", "y"], classes, np.array([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2]]))
    write_submission(tmp_path / "sub.csv", preds, Sample(s, path, fmt))
    assert (tmp_path / "sub.csv").read_text().splitlines() == ["y,0.5,0.3,0.2", "x,0.1,0.2,0.7"]


def test_label_names(tmp_path):
    s, path = sample(tmp_path / "s.csv", pd.DataFrame({"file_name": ["p", "q"], "species": "cat"}))
    classes = ["cat", "dog", "owl"]
    fmt = infer_format(s, path, classes, "auc")
    assert fmt.kind == "label"
    out = build(s, fmt, ["p", "q"], np.array([[0.1, 0.2, 0.7], [0.1, 0.8, 0.1]]), classes)
    assert out["species"].to_list() == ["owl", "dog"]


def test_integer_labels_for_multiclass(tmp_path):
    s, path = sample(tmp_path / "s.csv", pd.DataFrame({"image_id": ["a", "b"], "label": 0}))
    fmt = infer_format(s, path, ["0", "1", "2"], "auc")
    assert fmt.kind == "label"


def test_refuses_incomplete_or_invalid_predictions(tmp_path):
    s, path = sample(tmp_path / "s.csv", pd.DataFrame({"image_id": ["a", "b"], "target": 0.5}))
    fmt = infer_format(s, path, ["0", "1"], "auc")
    with pytest.raises(UserError, match="no prediction for 1 sample submission ids"):
        build(s, fmt, ["a"], np.array([[0.5, 0.5]]), ["0", "1"])
    with pytest.raises(UserError, match="not all finite"):
        build(s, fmt, ["a", "b"], np.array([[np.nan, 0.5], [0.5, 0.5]]), ["0", "1"])


def test_columns_that_are_not_classes_are_an_error(tmp_path):
    s, path = sample(tmp_path / "s.csv", pd.DataFrame({"id": ["a"], "x1": 0.0, "x2": 0.0}))
    with pytest.raises(UserError, match="not class names"):
        infer_format(s, path, ["cat", "dog"], "auc")


def test_floats_are_written_as_python_writes_them(tmp_path):
    """Exponents as Python (and pandas, which wrote submissions before) spell them: '1e-09', '3.2e-05', not
    polars' '1e-9', '0.000032': a submission does not change byte for byte with the library writing it."""
    s, path = sample(tmp_path / "s.csv", pd.DataFrame({"id": ["a", "b", "c", "d"], "x": 0.5, "y": 0.5}))
    fmt = infer_format(s, path, ["x", "y"], "auc")
    p = np.array([[1e-09, 1 - 1e-09], [3.2e-05, 1 - 3.2e-05], [1 / 3, 2 / 3], [0.0, 1.0]])
    write_submission(tmp_path / "sub.csv", Predictions(["a", "b", "c", "d"], ["x", "y"], p), Sample(s, path, fmt))
    assert (tmp_path / "sub.csv").read_text() == pd.DataFrame({"id": list("abcd"), "x": p[:, 0], "y": p[:, 1]}).to_csv(
        index=False)
    assert "1e-09," in (tmp_path / "sub.csv").read_text()


def test_without_a_sample_the_submission_is_the_id_and_probability_table(tmp_path):
    preds = Predictions(["b", "a"], ["cat", "dog"], np.array([[0.25, 0.75], [0.5, 0.5]]))
    line = write_submission(tmp_path / "sub.csv", preds, None)
    assert "no sample submission" in line
    assert (tmp_path / "sub.csv").read_text().splitlines() == ["id,prob_cat,prob_dog", "b,0.25,0.75", "a,0.5,0.5"]


def test_a_refused_submission_leaves_no_file(tmp_path):
    s, path = sample(tmp_path / "s.csv", pd.DataFrame({"image_id": ["a", "b"], "target": 0.5}))
    fmt = infer_format(s, path, ["0", "1"], "auc")
    with pytest.raises(UserError, match="no prediction"):
        write_submission(tmp_path / "sub.csv", Predictions(["a"], ["0", "1"], np.array([[0.5, 0.5]])),
                         Sample(s, path, fmt))
    assert not (tmp_path / "sub.csv").exists()


def test_a_submission_is_scored_per_leaderboard_part_joined_by_id(tmp_path):
    """Each Usage part scored on its own rows, found by id (the submission is in another order), by scikit-learn."""
    from sklearn.metrics import accuracy_score, roc_auc_score

    from foldvision.results.submission import score_submission

    ids = [f"i{n}" for n in range(8)]
    truth = [0, 1, 1, 0, 1, 0, 0, 1]
    p = [0.2, 0.7, 0.4, 0.6, 0.9, 0.1, 0.65, 0.8]  # Public AUC 0.75, Private 1.0
    usage = ["Public", "Private"] * 4
    pd.DataFrame({"id": ids, "target": truth, "Usage": usage}).to_csv(tmp_path / "sol.csv", index=False)
    pd.DataFrame({"id": ids[::-1], "target": p[::-1]}).to_csv(tmp_path / "sub.csv", index=False)
    scores = score_submission(tmp_path / "sub.csv", tmp_path / "sol.csv")
    assert list(scores) == ["all", "Private", "Public"]
    for part, rows in (("all", range(8)), ("Public", range(0, 8, 2)), ("Private", range(1, 8, 2))):
        expected = roc_auc_score([truth[i] for i in rows], [p[i] for i in rows])
        assert scores[part] == {"n": len(rows), "auc": pytest.approx(expected)}
    # digits as labels: a submission of class names is scored by accuracy, though its cells are numbers
    pd.DataFrame({"id": ids, "target": [1] * 8}).to_csv(tmp_path / "labels.csv", index=False)
    assert score_submission(tmp_path / "labels.csv", tmp_path / "sol.csv")["all"]["accuracy"] == pytest.approx(
        accuracy_score([str(t) for t in truth], ["1"] * 8))
    pd.DataFrame({"id": ids[:7], "target": p[:7]}).to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(UserError, match="short.csv: 1 solution ids have no row"):
        score_submission(tmp_path / "short.csv", tmp_path / "sol.csv")
