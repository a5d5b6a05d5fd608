"""The decoded-image cache: the pixels a fresh decode + resize gives, rebuilt only where a file or setting
changed, off when asked, and training/prediction results unchanged by it."""

import json
import os
import pickle
import stat

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import foldvision.learn.cache as cache_module
from foldvision.learn.cache import CachedImages, DecodedImages, cache_folder, open_images
from foldvision.config import load_config
from foldvision.run import save_run_config
from foldvision.learn.images import load_image
from foldvision.learn.transforms import Preprocessing
from foldvision.errors import UserError
from foldvision.stages.folds import run as make_folds
from foldvision.stages.predict import average_folds, predict_fold
from foldvision.stages.train import fit_fold

from conftest import make_corpus, write_config

def spec(size: int, channels: int, interpolation: str, mean: float = 0.5) -> Preprocessing:
    """A model's input; the cache keeps what its size, channels and interpolation decide (not mean and std)."""
    return Preprocessing(size, interpolation, (mean,) * channels, (0.25,) * channels, channels)


PREP = spec(12, 3, "bicubic")


@pytest.fixture
def corpus(tmp_path):
    """Six images of different sizes and shapes (none square, none at the cached size)."""
    root = tmp_path / "corpus"
    (root / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(20, 30), (31, 17), (8, 8), (40, 25), (15, 15), (9, 33)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "train" / f"{i}.png")
    return root


def paths(root):
    return sorted(p.relative_to(root).as_posix() for p in (root / "train").iterdir())


@pytest.fixture
def decodes(monkeypatch):
    """Every image decoded while building (in this process: workers=0), by path."""
    seen = []
    real = cache_module.load_image
    monkeypatch.setattr(cache_module, "load_image", lambda path, channels: seen.append(path.name) or real(path, channels))
    return seen


def data_cfg(tmp_path, cache=True):
    """open_images' cache_dir: a folder under tmp_path, or None for data.cache: false."""
    return str(tmp_path / "cache") if cache else None


@pytest.mark.parametrize("channels,interpolation", [(3, "bicubic"), (1, "bilinear"), (3, "area")])
def test_cached_pixels_equal_a_fresh_decode_and_resize(tmp_path, corpus, channels, interpolation):
    prep = spec(12, channels, interpolation)
    images = open_images(data_cfg(tmp_path), corpus, paths(corpus), prep, workers=0)
    assert isinstance(images, CachedImages)
    flag = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}[interpolation]
    for rel in paths(corpus):
        # what the pipeline's first step did before the cache: albumentations' Resize of load_image
        fresh = A.Resize(12, 12, interpolation=flag)(image=load_image(corpus / rel, channels))["image"]
        cached = images[rel]
        assert cached.dtype == np.uint8 and cached.shape == (12, 12, channels) and cached.flags.writeable
        np.testing.assert_array_equal(cached, fresh.reshape(12, 12, channels))


def test_the_records_open_as_a_memmap(tmp_path, corpus):
    """The file format is plain: one C-order record per image, in index order."""
    images = open_images(data_cfg(tmp_path), corpus, paths(corpus), PREP, workers=0)
    folder = cache_folder(data_cfg(tmp_path), corpus, PREP)
    pixels = np.memmap(folder / "pixels.u8", np.uint8, "r").reshape(-1, *PREP.shape)
    index = json.loads((folder / "index.json").read_text())["files"]
    for rel, (row, size, mtime, ctime, inode) in index.items():
        st = os.stat(corpus / rel)
        assert [size, mtime, ctime, inode] == [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        np.testing.assert_array_equal(pixels[row], images[rel])


def test_a_second_run_decodes_nothing(tmp_path, corpus, decodes):
    open_images(data_cfg(tmp_path), corpus, paths(corpus), PREP, workers=0)
    assert len(decodes) == 6
    decodes.clear()
    open_images(data_cfg(tmp_path), corpus, paths(corpus)[:3], PREP, workers=0)  # another fold's subset
    open_images(data_cfg(tmp_path), corpus, paths(corpus), PREP, workers=0)
    assert decodes == []


def test_a_changed_or_new_image_is_the_only_one_decoded_again(tmp_path, corpus, decodes):
    cfg = data_cfg(tmp_path)
    open_images(cfg, corpus, paths(corpus), PREP, workers=0)
    decodes.clear()
    Image.new("RGB", (10, 10), (255, 0, 0)).save(corpus / "train" / "2.png")  # same name, new pixels
    Image.new("RGB", (10, 10), (0, 0, 255)).save(corpus / "train" / "new.png")
    images = open_images(cfg, corpus, paths(corpus), PREP, workers=0)
    assert sorted(decodes) == ["2.png", "new.png"]
    assert (images["train/2.png"] == [255, 0, 0]).all() and (images["train/new.png"] == [0, 0, 255]).all()
    index = json.loads((cache_folder(cfg, corpus, PREP) / "index.json").read_text())["files"]
    assert len({entry[0] for entry in index.values()}) == 7  # the changed image kept its record


@pytest.mark.parametrize("how", ["in place (cp -p)", "renamed over (rsync -a)"])
def test_a_same_size_replacement_with_its_mtime_kept_is_decoded_again(tmp_path, corpus, decodes, how):
    """`cp -p` and `rsync -a` keep the size and the mtime; the run's stamps see the new content, so the cache
    must not hand back the old pixels to the retrain those stamps cause."""
    cfg = data_cfg(tmp_path)
    open_images(cfg, corpus, paths(corpus), PREP, workers=0)
    decodes.clear()
    target = corpus / "train" / "4.png"  # 15 x 15: a same-size replacement keeps the file size equal too
    old = target.stat()
    replacement = tmp_path / "replacement.png"
    Image.new("RGB", (15, 15), (0, 255, 0)).save(replacement)
    data = replacement.read_bytes()
    data = data + b"\0" * (old.st_size - len(data)) if len(data) < old.st_size else data  # PNG ignores trailing bytes
    assert len(data) == old.st_size
    if how.startswith("in place"):
        target.write_bytes(data)
    else:
        replacement.write_bytes(data)
        replacement.replace(target)
    os.utime(target, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    images = open_images(cfg, corpus, paths(corpus), PREP, workers=0)
    assert decodes == ["4.png"]
    assert (images["train/4.png"] == [0, 255, 0]).all()


def test_another_setting_is_another_cache(tmp_path, corpus, decodes):
    cfg = data_cfg(tmp_path)
    open_images(cfg, corpus, paths(corpus), PREP, workers=0)
    decodes.clear()
    for prep in (spec(16, 3, "bicubic"), spec(12, 1, "bicubic"), spec(12, 3, "bilinear")):
        images = open_images(cfg, corpus, paths(corpus), prep, workers=0)
        assert images["train/0.png"].shape == prep.shape
    assert len(decodes) == 18  # each new setting decoded every image once
    decodes.clear()
    open_images(cfg, corpus, paths(corpus), PREP, workers=0)
    assert decodes == []  # the first setting's cache is untouched
    assert len(list((tmp_path / "cache").glob("*/*/pixels.u8"))) == 4
    open_images(cfg, corpus, paths(corpus), spec(12, 3, "bicubic", mean=0.1), workers=0)
    assert decodes == []  # another normalisation reads the same pixels: mean and std are applied on the device


def test_cache_off_decodes_on_every_read_and_writes_nothing(tmp_path, corpus):
    images = open_images(data_cfg(tmp_path, cache=False), corpus, paths(corpus), PREP, workers=0)
    assert isinstance(images, DecodedImages)
    cached = open_images(data_cfg(tmp_path / "other"), corpus, paths(corpus), PREP, workers=0)
    for rel in paths(corpus):
        np.testing.assert_array_equal(images[rel], cached[rel])
    assert not (tmp_path / "cache").exists()


def test_loader_workers_get_a_picklable_reader(tmp_path, corpus):
    images = open_images(data_cfg(tmp_path), corpus, paths(corpus), PREP, workers=2)  # built by two processes
    images["train/0.png"]  # opens the file in this process
    copy = pickle.loads(pickle.dumps(images))
    assert copy._fd is None
    for rel in paths(corpus):
        np.testing.assert_array_equal(copy[rel], images[rel])


def test_an_unreadable_image_keeps_the_records_built_before_it(tmp_path, corpus, decodes):
    (corpus / "train" / "9_bad.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="9_bad.png: cannot read the image"):
        open_images(data_cfg(tmp_path), corpus, paths(corpus), PREP, workers=0)
    (corpus / "train" / "9_bad.png").unlink()
    decodes.clear()
    open_images(data_cfg(tmp_path), corpus, paths(corpus), PREP, workers=0)
    assert decodes == []


def test_never_inside_a_read_only_corpus(tmp_path, corpus):
    os.chmod(corpus, stat.S_IRUSR | stat.S_IXUSR)
    try:
        with pytest.raises(UserError, match="inside the read-only corpus folder"):
            open_images(str(corpus / ".cache"), corpus, paths(corpus), PREP, workers=0)
    finally:
        os.chmod(corpus, stat.S_IRWXU)
    assert not (corpus / ".cache").exists()


def test_training_and_prediction_are_the_same_with_or_without_the_cache(tmp_path):
    corpus = make_corpus(tmp_path / "bin", {"0": 10, "1": 8}, size=24)
    results = {}
    for name, cache in (("cached", True), ("decoded", False)):
        cfg = load_config(str(write_config(tmp_path / "configs", name, corpus, data={"cache": cache},
                                           predict={"tta": ["hflip"]})))
        run_dir = tmp_path / "runs" / name
        save_run_config(cfg, run_dir)
        make_folds(run_dir)
        for fold in (0, 1):
            fit_fold(cfg, run_dir, fold)
            predict_fold(run_dir, fold)
        average_folds(run_dir, tmp_path / f"{name}.csv")
        results[name] = (pd.read_csv(run_dir / "fold0" / "oof.csv"), pd.read_csv(tmp_path / f"{name}.csv"))
    assert list((tmp_path / "cache").glob("*/*/pixels.u8"))  # write_config's data.cache_dir
    (oof_a, sub_a), (oof_b, sub_b) = results["cached"], results["decoded"]
    np.testing.assert_allclose(oof_a.filter(like="prob_").to_numpy(), oof_b.filter(like="prob_").to_numpy(), atol=1e-5)
    np.testing.assert_allclose(sub_a["target"].to_numpy(), sub_b["target"].to_numpy(), atol=1e-5)
