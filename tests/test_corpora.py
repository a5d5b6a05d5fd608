"""Every corpus shape our users bring, through folds -> train -> score -> predict without code changes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import f1_score

from conftest import Project, make_corpus, stage

pytestmark = pytest.mark.slow


def run_all(p: Project, capsys, *overrides: str) -> str:
    code, err = p.predict(capsys, *overrides)
    assert code == 0, err
    code, score_err = stage(capsys, "score", str(p.run))
    assert code == 0, score_err
    return p.log


def coloured(rng, colour, size=(24, 20)):
    return np.clip(colour + rng.normal(0, 15, (*size, 3)), 0, 255).astype(np.uint8)


def test_signate_style_tsv_labels_and_headerless_sample(tmp_path, capsys):
    """Binary AUC contest: train_master.tsv (file_name, label), ids with extensions, a sample with no header."""
    root = tmp_path / "food"
    corpus = make_corpus(root, {"0": 8, "1": 8}, ext=".jpg")
    table = pd.read_csv(corpus / "train.csv", dtype=str)
    pd.DataFrame({"file_name": table["image_id"] + ".jpg", "label": table["label"]}).to_csv(
        corpus / "train_master.tsv", sep="\t", index=False)
    (corpus / "train.csv").unlink()
    (corpus / "sample_submission.csv").unlink()
    test_ids = sorted(p.name for p in (corpus / "test").iterdir())[::-1]  # not in folder order
    (corpus / "sample_submit.csv").write_text("".join(f"{i},0.5\n" for i in test_ids))
    p = Project(tmp_path, corpus)
    err = run_all(p, capsys)
    assert "labels from train_master.tsv" in err and "submission format from sample_submit.csv" in err
    lines = p.submission.read_text().splitlines()
    assert [line.split(",")[0] for line in lines] == test_ids  # no header row, the sample's order
    values = [float(line.split(",")[1]) for line in lines]
    fold_test = [pd.read_csv(p.run / f"fold{k}" / "test.csv", dtype={"id": str}).set_index("id") for k in (0, 1)]
    assert values == pytest.approx(((fold_test[0]["prob_1"] + fold_test[1]["prob_1"]) / 2).loc[test_ids].tolist())
    test = pd.read_csv(p.run / "test.csv", dtype={"id": str}).set_index("id")
    assert values == pytest.approx(test.loc[test_ids, "prob_1"].tolist())


def test_string_labels_with_label_names_in_the_submission(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "zoo", {"cat": 10, "dog": 6, "owl": 6}, sample="label")
    p = Project(tmp_path, corpus, train={"metric": "macro_f1"})
    err = run_all(p, capsys)
    sub = pd.read_csv(p.submission)
    assert list(sub.columns) == ["image_id", "label"] and set(sub["label"]) <= {"cat", "dog", "owl"}
    rule = json.loads((p.run / "decision.json").read_text())
    assert rule["metric"] == "macro_f1" and rule["kind"] == "prior"
    # the rule picks the best α on its grid: recomputed here with scikit-learn on the OOF table
    oof = pd.read_csv(p.run / "oof.csv")
    probs, y = oof[["prob_cat", "prob_dog", "prob_owl"]].to_numpy(), oof["label"].map({"cat": 0, "dog": 1, "owl": 2})
    prior = np.bincount(y, minlength=3) / len(y)
    f1 = lambda pred: f1_score(y, pred, average="macro", zero_division=0)  # noqa: E731
    assert rule["oof_before"] == pytest.approx(f1(probs.argmax(1)))
    grid = [f1((probs * prior ** a).argmax(1)) for a in np.linspace(-1, 1, 17)]
    assert rule["oof_after"] == pytest.approx(max(rule["oof_before"], *grid))
    assert f1((probs * prior ** rule["value"]).argmax(1)) == pytest.approx(rule["oof_after"])
    assert "OOF macro_f1" in err
    assert json.loads((p.run / "classes.json").read_text()) == ["cat", "dog", "owl"]


def test_folder_per_class_with_tiff_and_spaces_in_names(tmp_path, capsys):
    root = tmp_path / "pollen"
    rng = np.random.default_rng(0)
    for k, name in enumerate(["acacia sp", "zea mays"]):
        (root / "train" / name).mkdir(parents=True)
        for i in range(6):
            ext = ".tif" if i % 2 else ".jpg"
            Image.fromarray(coloured(rng, 60 + 120 * k)).save(root / "train" / name / f"{name} ({i}){ext}")
    (root / "test").mkdir()
    for i in range(4):
        Image.fromarray(coloured(rng, 60 + 120 * (i % 2))).save(root / "test" / f"unknown ({i}).tiff")
    p = Project(tmp_path, root)
    err = run_all(p, capsys)
    assert "no label table: one folder per class" in err
    folds = pd.read_csv(p.run / "folds.csv")
    assert set(folds["label"]) == {"acacia sp", "zea mays"} and folds["path"].str.contains(r"\(3\)\.tif").any()
    sub = pd.read_csv(p.submission)  # no sample: id + a probability per class
    assert list(sub.columns) == ["id", "prob_acacia sp", "prob_zea mays"] and len(sub) == 4


def test_folder_per_class_without_a_test_set_scores_oof_only(tmp_path, capsys):
    root = tmp_path / "only"
    rng = np.random.default_rng(1)
    for k, name in enumerate(["a", "b"]):
        (root / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(coloured(rng, 50 + 150 * k)).save(root / name / f"{i}.png")
    p = Project(tmp_path, root)
    code, err = p.predict(capsys)
    assert code == 0 and "has no test set" in err and not p.submission.exists()
    assert stage(capsys, "score", str(p.run))[0] == 0


def test_grayscale_16_bit_png_trained_on_one_channel(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "xray", {"0": 6, "1": 6})
    for path in list((corpus / "train").iterdir()) + list((corpus / "test").iterdir()):
        gray = np.asarray(Image.open(path).convert("L"), dtype=np.uint16) * 257
        Image.fromarray(gray).save(path)
        assert Image.open(path).mode == "I;16"
    p = Project(tmp_path, corpus, data={"channels": 1})
    run_all(p, capsys)
    import torch

    best = torch.load(p.run / "fold0" / "best.pt", weights_only=True)
    assert best["channels"] == 1 and best["model"]["stem.0.weight"].shape[1] == 1
    assert len(pd.read_csv(p.submission)) == 6


def test_japanese_file_names(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "和", {"猫": 6, "犬": 6}, sample="label")
    for folder in ("train", "test"):
        for path in (corpus / folder).iterdir():
            path.rename(path.with_name(f"画像 {path.name}"))
    for name in ("train.csv", "sample_submission.csv", "test_labels.csv"):
        table = pd.read_csv(corpus / name, dtype=str)
        table["image_id"] = "画像 " + table["image_id"]
        table.to_csv(corpus / name, index=False)
    p = Project(tmp_path, corpus)
    run_all(p, capsys)
    sub = pd.read_csv(p.submission)
    assert sub["image_id"].str.startswith("画像 ").all() and set(sub["label"]) <= {"猫", "犬"}
