"""foldvision.learn.checkpoint: the input a checkpoint records, read back as a spec (and in its older form)."""

import pytest
import torch

from foldvision.learn.checkpoint import CheckpointError, read_checkpoint, read_preprocessing
from foldvision.learn.transforms import Preprocessing

SPEC = Preprocessing(40, "bicubic", mean=(0.5,), std=(0.25,), channels=1)


def test_a_spec_written_into_a_checkpoint_reads_back_equal(tmp_path):
    path = tmp_path / "best.pt"
    torch.save({"data_config": SPEC.to_dict(), "channels": 1}, path)
    assert read_preprocessing(read_checkpoint(path, ("data_config",)), path) == SPEC


def test_a_checkpoint_of_before_the_spec_takes_its_channels(tmp_path):
    old = {"data_config": {"size": 40, "interpolation": "bicubic", "mean": (0.5,), "std": (0.25,)}, "channels": 1}
    assert read_preprocessing(old, tmp_path / "best.pt") == SPEC


@pytest.mark.parametrize("data_config", [{"size": 40}, "40px", None])
def test_a_data_config_that_is_no_spec_is_one_line_naming_the_file(tmp_path, data_config):
    with pytest.raises(CheckpointError, match=r"best.pt: not a foldvision checkpoint \(its data_config: "):
        read_preprocessing({"data_config": data_config, "channels": 3}, tmp_path / "best.pt")
