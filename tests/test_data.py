import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from foldvision.config import DataConfig
from foldvision.corpus import ImageIndex, open_image, read_train, sort_classes
from foldvision.errors import UserError
from foldvision.learn.images import load_image
from foldvision.tables import read_table


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "CMYK", "I;16", "I"])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_mode_loads_as_uint8(tmp_path, mode, channels):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (9, 7, 3), dtype=np.uint8))
    if mode in ("I;16", "I"):
        image = Image.fromarray((np.arange(63).reshape(9, 7) * 1000).astype(np.uint16 if mode == "I;16" else np.int32))
    else:
        image = rgb.convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16", "I") else "x.png")
    image.save(path)
    arr = load_image(path, channels)
    assert arr.dtype == np.uint8 and arr.shape == (9, 7, channels)
    if mode in ("I;16", "I"):
        assert arr.max() > 200 and arr.min() == 0  # 16-bit range scaled into 8 bits, not clipped


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    image.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg", 3).shape == (20, 10, 3)


def test_unreadable_image_is_a_user_error(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match="bad.jpg: cannot read the image"):
        load_image(tmp_path / "bad.jpg", 3)


def test_ids_with_or_without_extension_in_nested_folders(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "b" / "img 1 (copy).jpg")
    Image.new("RGB", (4, 4)).save(tmp_path / "写真.png")
    index = ImageIndex(tmp_path)
    assert index.resolve("img 1 (copy)", "t") == "a/b/img 1 (copy).jpg"
    assert index.resolve("a/b/img 1 (copy).jpg", "t") == "a/b/img 1 (copy).jpg"
    assert index.resolve("写真", "t") == "写真.png"
    with pytest.raises(UserError, match="t: no image for id 'nope'"):
        index.resolve("nope", "t")


def test_bom_and_shift_jis_tables(tmp_path):
    """UTF-8 with a BOM reads as it is; Shift-JIS only when named (data.encoding), never guessed."""
    frame = pd.DataFrame({"id": ["一", "二"], "label": ["猫", "犬"]})
    frame.to_csv(tmp_path / "bom.csv", index=False, encoding="utf-8-sig")
    frame.to_csv(tmp_path / "sjis.csv", index=False, encoding="cp932")
    for name, encoding in (("bom.csv", None), ("sjis.csv", "cp932")):
        table = read_table(tmp_path / name, encoding)
        assert list(table.columns) == ["id", "label"] and table["label"].to_list() == ["猫", "犬"]
    with pytest.raises(UserError, match="sjis.csv: not UTF-8"):
        read_table(tmp_path / "sjis.csv")


def corpus(tmp_path, rows, name="train.csv", sep=","):
    (tmp_path / "train").mkdir(exist_ok=True)
    for image_id, _ in rows:
        if image_id:
            Image.new("RGB", (4, 4)).save(tmp_path / "train" / f"{image_id}.png")
    pd.DataFrame(rows, columns=["image_id", "target"]).to_csv(tmp_path / name, index=False, sep=sep)
    return DataConfig(dir=str(tmp_path), train_csv=name)


def test_reads_tsv_and_orders_numeric_classes_numerically(tmp_path):
    cfg = corpus(tmp_path, [("a", "10"), ("b", "2"), ("c", "2")], name="train.tsv", sep="\t")
    c = read_train(cfg)
    assert c.classes == ["2", "10"] and c.table["path"].to_list() == ["train/a.png", "train/b.png", "train/c.png"]
    assert sort_classes(["b", "a"]) == ["a", "b"]


@pytest.mark.parametrize("rows,message", [
    ([("a", "x"), ("a", "y")], r"id 'a' appears on rows \[2, 3\]"),
    ([("a", "x"), ("b", "")], r"row 3 has an empty 'target'"),
    ([("a", "x"), ("b", "x")], r"only one class \('x'\)"),
])
def test_table_errors_name_the_row(tmp_path, rows, message):
    with pytest.raises(UserError, match=message):
        read_train(corpus(tmp_path, rows))


def test_missing_image_names_the_row(tmp_path):
    cfg = corpus(tmp_path, [("a", "x"), ("b", "y")])
    (tmp_path / "train" / "b.png").unlink()
    with pytest.raises(UserError, match=r"train.csv row 3: no image for id 'b'"):
        read_train(cfg)


def test_class_folders_in_the_corpus_folder_beside_test_and_hidden_folders(tmp_path):
    """ImageFolder style right in data.dir: test/ and hidden folders (.cache) are not classes."""
    for folder in ("ant", "bee", "test", ".cache", "bee/.ipynb_checkpoints"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / folder / "0.png")
    c = read_train(DataConfig(dir=str(tmp_path)))
    assert c.classes == ["ant", "bee"] and c.table["path"].to_list() == ["ant/0.png", "bee/0.png"]


def test_the_corpus_module_imports_no_torch_and_leaves_pil_alone():
    """Stages that only read tables stay light; PIL's bomb guard is lifted only where foldvision opens images."""
    code = ("import sys; from PIL import Image; limit = Image.MAX_IMAGE_PIXELS; import foldvision.corpus; "
            "assert not {'torch', 'albumentations', 'timm'} & set(sys.modules), 'heavy import'; "
            "assert Image.MAX_IMAGE_PIXELS == limit, 'PIL limit changed at import'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_opening_an_image_lifts_pils_guard(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    with open_image(tmp_path / "a.png") as im:
        assert im.size == (4, 4)
    assert Image.MAX_IMAGE_PIXELS is None  # data.max_image_pixels is foldvision's own limit, with its own message
