"""`foldvision cache`: the run's images decoded once before a fan-out, so the fold jobs find them cached."""

from conftest import Project, make_corpus


def test_cache_stage_fills_what_training_and_prediction_read(tmp_path, capsys):
    p = Project(tmp_path, make_corpus(tmp_path / "c", {"a": 6, "b": 6}, n_test=4),
                data={"cache_size": 40})  # training images at 40 px, validation/test at the input size
    code, err = p.folds(capsys)
    assert code == 0, err
    code, err = p._stage(capsys, "cache", str(p.run))
    assert code == 0, err
    assert "cache: 12 images at 40px" in err and "cache: 16 images at 32px" in err
    again = p._stage(capsys, "cache", str(p.run))[1]
    assert "decoding" not in again  # up to date: a stat per image
    code, err = p._stage(capsys, "train", str(p.run), "--fold", "0", "1")
    assert code == 0, err
    assert "cache: decoding" not in err  # the folds found every image cached


def test_cache_off_is_said(tmp_path, capsys):
    p = Project(tmp_path, make_corpus(tmp_path / "c", {"a": 4, "b": 4}), data={"cache": False})
    assert p.folds(capsys)[0] == 0
    code, err = p._stage(capsys, "cache", str(p.run))
    assert code == 0 and "nothing to do" in err
