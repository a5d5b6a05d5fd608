"""`foldvision bench` prints every figure as `name: value` (what the numbers are is the bench's business:
no timed assertions here), and its textbook loop sees the same pixels foldvision's loader does."""

import numpy as np
import torch

from bench import ORDER, TextbookDataset, main, textbook_transform
from foldvision.learn.images import load_image
from foldvision.learn.transforms import Preprocessing

from conftest import make_corpus, write_config


def test_bench_prints_every_figure(tmp_path, capsys):
    corpus = make_corpus(tmp_path / "c", {"0": 10, "1": 8}, n_test=8)
    write_config(tmp_path / "configs", "tiny", corpus, train={"batch_size": 4})
    main(["tiny", "--configs", str(tmp_path / "configs"), "--steps", "2", "--tta-images", "8"])
    captured = capsys.readouterr()
    lines = dict(line.split(": ", 1) for line in captured.out.splitlines())
    assert list(lines) == list(ORDER)
    assert all(float(value) > 0 for value in lines.values())
    assert "largest probability difference" in captured.err


def test_textbook_pipeline_without_augmentation_matches_the_model_statistics(tmp_path):
    corpus = make_corpus(tmp_path / "c", {"0": 2, "1": 2}, size=16)
    spec = Preprocessing(16, "bilinear", mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2), channels=3)
    dataset = TextbookDataset(corpus, ["train/0_000.png"], [0], textbook_transform([], spec, False), 3)
    image, target = dataset[0]
    pixels = load_image(corpus / "train/0_000.png", 3).astype(np.float32) / 255
    expected = (pixels - np.array(spec.mean)) / np.array(spec.std)
    assert target == 0 and torch.allclose(image.permute(1, 2, 0), torch.from_numpy(expected).float(), atol=1e-5)
