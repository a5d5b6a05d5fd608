import pandas as pd
import pytest

from foldvision.results.submission import score_submission
from foldvision.commands.leaderboard import build
from foldvision.commands.leaderboard import main as leaderboard_main
from foldvision.results.compare import differing_keys, format_seconds, leaderboard_scores

from conftest import make_corpus
from fakes import scored_run


def add_solution(corpus, usage=True):
    """A Kaggle-style solution for the corpus's test images: the true label, and Public/Private halves."""
    labels = pd.read_csv(corpus / "test_labels.csv", dtype=str)
    if usage:
        labels["Usage"] = ["Public" if i // 2 % 2 == 0 else "Private" for i in range(len(labels))]
    labels.to_csv(corpus / "solution.csv", index=False)


def write_submission(path, corpus, seed):
    """P(positive) for each test id; leaning right on some rows, so Public and Private differ."""
    sample = pd.read_csv(corpus / "sample_submission.csv", dtype={"image_id": str})
    truth = pd.read_csv(corpus / "test_labels.csv", dtype={"image_id": str})["label"].astype(int)
    sample["target"] = (truth * 0.6 + (pd.Series(range(len(truth))) * (seed + 3) % 7) / 10).clip(0, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sample.to_csv(path, index=False)


def test_experiments_ranked_per_corpus_with_public_and_private(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "bin", {"0": 12, "1": 8}, n_test=12)
    add_solution(corpus)
    other = make_corpus(tmp_path / "other", {"a": 6, "b": 6, "c": 6}, sample="label")
    scored_run(tmp_path, "weak", corpus, skill=0.5)
    scored_run(tmp_path, "strong", corpus, skill=3.0, train={"sampler": "random"})
    scored_run(tmp_path, "elsewhere", other)
    (tmp_path / "runs" / "unfinished").mkdir()
    (tmp_path / "runs" / "unfinished" / "config.yaml").write_text("name: unfinished\n")
    subs = tmp_path / "subs"
    write_submission(subs / "strong.csv", corpus, seed=1)

    boards, pending = build(tmp_path / "runs", subs)
    assert pending == ["unfinished"]
    by_corpus = {corpus_dir: (metric, table) for corpus_dir, metric, table in boards}
    metric, table = by_corpus[str(corpus)]
    assert metric == "auc" and table["experiment"].to_list() == ["strong", "weak"]  # best OOF AUC first
    assert table["differs"].to_list() == ["train.sampler=random", "train.sampler=imbalanced"]
    expected = score_submission(subs / "strong.csv", corpus / "solution.csv")
    assert table[0, "public_auc"] == pytest.approx(expected["Public"]["auc"])
    assert table[0, "private_auc"] == pytest.approx(expected["Private"]["auc"])
    assert table[1, "public_auc"] is None  # weak has no submission
    assert len(table[0, "folds"].split()) == 2  # one score per fold
    assert table[0, "train_seconds"] == pytest.approx(2 * (1.5 + 2.5))  # 2 epochs × fold seconds
    assert by_corpus[str(other)][1]["experiment"].to_list() == ["elsewhere"]

    leaderboard_main([str(tmp_path / "runs"), "--submissions", str(subs)])
    printed = capsys.readouterr().out
    assert "strong" in printed and "Public auc" in printed and "Private auc" in printed
    written = pd.read_csv(tmp_path / "runs" / "leaderboard.csv")
    assert set(written["experiment"]) == {"strong", "weak", "elsewhere"}
    assert "## " in (tmp_path / "runs" / "leaderboard.md").read_text()


def test_solution_without_usage_is_one_test_score(tmp_path):
    corpus = make_corpus(tmp_path / "bin", {"0": 6, "1": 6}, n_test=8)
    add_solution(corpus, usage=False)
    write_submission(tmp_path / "s.csv", corpus, seed=0)
    metric, scores = leaderboard_scores(tmp_path / "s.csv", corpus / "solution.csv", "accuracy")
    assert metric == "auc" and list(scores) == ["test"]  # a probability submission is scored by AUC
    assert leaderboard_scores(tmp_path / "missing.csv", corpus / "solution.csv", "auc") == ("", {})


def test_differing_keys_and_time_format():
    configs = [{"train": {"lr": 1e-3, "sampler": "random"}, "name": "a"},
               {"train": {"lr": 1e-3, "sampler": "imbalanced"}, "name": "b"}]
    assert differing_keys(configs) == ["train.sampler"]
    # an empty section against one with keys: the keys differ, not the section as a whole as well
    configs = [{"train": {"optimizer_args": {}}}, {"train": {"optimizer_args": {"disable_lr_scheduler": True}}}]
    assert differing_keys(configs) == ["train.optimizer_args.disable_lr_scheduler"]
    assert [format_seconds(s) for s in (42, 61, 3725)] == ["42s", "1m 01s", "1h 02m"]
