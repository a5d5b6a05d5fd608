import numpy as np
import pytest
from PIL import Image

from foldvision.errors import UserError
from foldvision.results.figures import PLOTS, image_file, most_wrong, write_plots
from foldvision.run import Predictions

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
    probs = np.array([[0.9, 0.1], [0.95, 0.05], [0.3, 0.7], [0.6, 0.4]])  # prob_x, prob_y
    oof = Predictions(["a", "b", "c", "d"], ["x", "y"], probs, np.array([0, 0, 1, 1]), ["x", "y", "x", "y"])
    wrong = most_wrong(oof, n=5)
    assert wrong["id"].to_list() == ["b", "c", "d"]  # a is right; b is the most confident mistake
    assert wrong["pred"].to_list() == ["x", "y", "x"]
    assert wrong["confidence"].to_list() == pytest.approx([0.95, 0.7, 0.6])
    assert wrong["p_true"].to_list() == pytest.approx([0.05, 0.3, 0.4])


def test_image_paths_relative_to_the_corpus_or_its_image_folder(tmp_path):
    (tmp_path / "train" / "sub").mkdir(parents=True)
    (tmp_path / "train" / "sub" / "a.png").write_bytes(b"")
    assert image_file(tmp_path, None, "train/sub/a.png") == tmp_path / "train" / "sub" / "a.png"
    assert image_file(tmp_path, "train", "sub/a.png") == tmp_path / "train" / "sub" / "a.png"
    assert image_file(tmp_path, "train", "gone.png") is None


def test_unscored_run_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="train and score"):
        write_plots(tmp_path)
