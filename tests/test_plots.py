import numpy as np
import pandas as pd
import pytest
from PIL import Image

from foldvision.errors import UserError
from foldvision.plots import PLOTS, image_file, most_wrong, write_plots

from fakes import scored_run


def assert_png(path, min_size=(300, 200)):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels < 250).any(axis=2).mean() > 0.01  # something is drawn


@pytest.mark.parametrize("corpus_fixture", ["binary_corpus", "multiclass_corpus"])
def test_every_plot_is_written(tmp_path, corpus_fixture, request):
    run_dir = scored_run(tmp_path, "exp", request.getfixturevalue(corpus_fixture), skill=1.0)
    paths = write_plots(run_dir)
    assert list(paths) == list(PLOTS)
    for name, path in paths.items():
        assert path == run_dir / "plots" / f"{name}.png"
        assert_png(path)
    assert not list((run_dir / "plots").glob(".*.tmp"))  # written atomically


def test_most_wrong_ranks_wrong_predictions_by_confidence():
    oof = pd.DataFrame({"id": ["a", "b", "c", "d"], "fold": [0, 0, 1, 1], "label": ["x", "y", "x", "y"],
                        "prob_x": [0.9, 0.95, 0.3, 0.6], "prob_y": [0.1, 0.05, 0.7, 0.4]})
    wrong = most_wrong(oof, ["x", "y"], n=5)
    assert wrong["id"].tolist() == ["b", "c", "d"]  # a is right; b is the most confident mistake
    assert wrong["pred"].tolist() == ["x", "y", "x"]
    assert wrong["confidence"].tolist() == pytest.approx([0.95, 0.7, 0.6])
    assert wrong["p_true"].tolist() == pytest.approx([0.05, 0.3, 0.4])


def test_image_paths_relative_to_the_corpus_or_its_image_folder(tmp_path):
    (tmp_path / "train" / "sub").mkdir(parents=True)
    (tmp_path / "train" / "sub" / "a.png").write_bytes(b"")
    assert image_file(tmp_path, None, "train/sub/a.png") == tmp_path / "train" / "sub" / "a.png"
    assert image_file(tmp_path, "train", "sub/a.png") == tmp_path / "train" / "sub" / "a.png"
    assert image_file(tmp_path, "train", "gone.png") is None


def test_unscored_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="train and score"):
        write_plots(tmp_path)
