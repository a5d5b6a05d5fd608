import os
import stat

import pytest

from foldvision.errors import did_you_mean

from foldvision.files import write_atomic, write_text_atomic


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / "out" / "scores.json"

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_atomic(target, fail)
    assert not target.exists() and os.listdir(target.parent) == []


def test_atomic_write_gives_the_file_the_usual_mode_not_mkstemps_owner_only(tmp_path):
    written = write_text_atomic(tmp_path / "sub.csv", "id,target\n")
    (tmp_path / "plain.csv").write_text("x")  # open()'s mode under this process's umask
    assert written.read_text() == "id,target\n"
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE((tmp_path / "plain.csv").stat().st_mode)


def test_did_you_mean():
    assert did_you_mean("train.epoch", ["train.epochs", "model.name"]) == " (did you mean train.epochs?)"
    assert did_you_mean("zzz", ["train.epochs"]) == ""
