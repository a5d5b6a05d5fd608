"""Table values are never misread without a word (issue 10, section 3).

Each bad input either reads right with one line saying how, or is a one-line UserError naming the file and the
row and saying what to do: encodings, missing-value marks, numbers spelt two ways, empty groups, two ids naming
one file, a sample submission with repeated ids or no rows, and file names in another Unicode normal form.
"""

from __future__ import annotations

import dataclasses
import unicodedata

import polars as pl
import pytest
from PIL import Image

from foldvision.config import DataConfig
from foldvision.corpus import ImageIndex, read_test, read_train
from foldvision.errors import UserError
from foldvision.tables import read_table


def write_corpus(root, rows, header="image_id,target", encoding="utf-8", newline="\n", ext=".png", files=None):
    """A label table of `rows` (tuples of cells) and one tiny image per file name (by default each row's id)."""
    (root / "train").mkdir(parents=True, exist_ok=True)
    for name in files if files is not None else [row[0] for row in rows if row[0].strip()]:
        Image.new("RGB", (4, 4)).save(root / "train" / f"{name}{ext}")
    text = newline.join([header, *(",".join(row) for row in rows)]) + newline
    (root / "train.csv").write_bytes(text.encode(encoding))
    return DataConfig(dir=str(root), train_csv="train.csv")


# ---- 1. encodings --------------------------------------------------------------------------------------------

CP1252_ROWS = [("a", "café"), ("b", "naïve"), ("c", "café")]


def test_a_windows_1252_table_is_an_error_that_names_the_line_and_the_candidates(tmp_path):
    cfg = write_corpus(tmp_path, CP1252_ROWS, encoding="cp1252")
    with pytest.raises(UserError) as e:
        read_train(cfg)
    message = str(e.value)
    assert "\n" not in message
    assert "train.csv: not UTF-8 (line 2, byte 0xe9)" in message
    assert "data.encoding=cp1252 (Western European Excel)" in message  # é and ï decode there...
    assert "data.encoding=cp932" not in message  # ...but 0xe9 0x0a is no Shift-JIS character


def test_a_windows_1252_table_that_also_decodes_as_shift_jis_is_not_misread(tmp_path):
    """'crème' in Windows-1252 is 'cr鑪e' in Shift-JIS: both decode, so only the user can say which it is."""
    cfg = write_corpus(tmp_path, [("a", "crème"), ("b", "brûlée")], encoding="cp1252")
    with pytest.raises(UserError, match=r"not UTF-8 \(line 2, byte 0xe8\); .*data.encoding=cp1252 \(Western European "
                                        r"Excel\) or data.encoding=cp932 \(Japanese Excel\)"):
        read_train(cfg)
    cfg = dataclasses.replace(cfg, encoding="cp1252")
    assert read_train(cfg).classes == ["brûlée", "crème"]


def test_a_windows_1252_table_reads_right_with_data_encoding_and_says_so(tmp_path, capsys):
    cfg = write_corpus(tmp_path, CP1252_ROWS, encoding="cp1252")
    cfg = dataclasses.replace(cfg, encoding="cp1252")
    corpus = read_train(cfg)
    assert corpus.classes == ["café", "naïve"]
    err = capsys.readouterr().err
    assert f"note: {tmp_path / 'train.csv'} read as cp1252" in err


def test_shift_jis_is_never_guessed_and_reads_right_when_named(tmp_path, capsys):
    cfg = write_corpus(tmp_path, [("a", "猫"), ("b", "犬")], encoding="cp932")
    with pytest.raises(UserError, match=r"train.csv: not UTF-8 \(line 2.*data.encoding=cp932 \(Japanese Excel\)"):
        read_train(cfg)
    cfg = dataclasses.replace(cfg, encoding="cp932")
    assert read_train(cfg).classes == ["犬", "猫"]
    assert "read as cp932" in capsys.readouterr().err


def test_a_named_encoding_that_does_not_fit_names_the_line(tmp_path):
    cfg = write_corpus(tmp_path, [("a", "猫"), ("b", "犬"), ("c", "\x81")], encoding="utf-8")
    (tmp_path / "train.csv").write_bytes((tmp_path / "train.csv").read_bytes().replace(b"\xc2\x81", b"\x81"))
    cfg = dataclasses.replace(cfg, encoding="cp1252")  # 0x81 is undefined in Windows-1252
    with pytest.raises(UserError, match=r"train.csv: not cp1252 \(line 4, byte 0x81\).*data.encoding"):
        read_train(cfg)


def test_a_utf16_table_is_named_as_such(tmp_path):
    """Excel's 'Unicode Text' is UTF-16 with a BOM: it decodes as Windows-1252 too, which must not be offered."""
    cfg = write_corpus(tmp_path, CP1252_ROWS, encoding="utf-16")
    with pytest.raises(UserError, match=r"not UTF-8 \(line 1, byte 0xff\); it is UTF-16 .*data.encoding=utf-16"):
        read_train(cfg)
    cfg = dataclasses.replace(cfg, encoding="utf-16")
    assert read_train(cfg).classes == ["café", "naïve"]


def test_an_unknown_encoding_name_is_an_error(tmp_path):
    cfg = write_corpus(tmp_path, CP1252_ROWS)
    cfg = dataclasses.replace(cfg, encoding="latin-9000")
    with pytest.raises(UserError, match="data.encoding: unknown encoding 'latin-9000'"):
        read_train(cfg)


@pytest.mark.parametrize("encoding,newline", [("utf-8-sig", "\n"), ("utf-8", "\r\n"), ("utf-8-sig", "\r\n")])
def test_bom_and_crlf_read_right(tmp_path, capsys, encoding, newline):
    cfg = write_corpus(tmp_path, CP1252_ROWS, encoding=encoding, newline=newline)
    corpus = read_train(cfg)
    assert corpus.classes == ["café", "naïve"] and corpus.table["id"].to_list() == ["a", "b", "c"]
    assert list(read_table(tmp_path / "train.csv").columns) == ["image_id", "target"]
    assert "read as" not in capsys.readouterr().err  # UTF-8 is the default: nothing to say


# ---- 2. missing values ---------------------------------------------------------------------------------------

MISSING = ["N/A", "#N/A", "NA", "n/a", "null", "NULL", "nan", "NaN", "None", "-", "", "  "]


@pytest.mark.parametrize("mark", MISSING)
def test_a_missing_label_mark_is_an_error_naming_the_row(tmp_path, mark):
    cfg = write_corpus(tmp_path, [("a", "x"), ("b", "y"), ("c", mark), ("d", "x")])
    with pytest.raises(UserError, match=r"train.csv: row 4 has an empty 'target'.*fill or drop"):
        read_train(cfg)


@pytest.mark.parametrize("mark", ["", "N/A", "nan"])
def test_a_missing_id_is_an_error_naming_the_row(tmp_path, mark):
    cfg = write_corpus(tmp_path, [("a", "x"), (mark, "y"), ("c", "x")], files=["a", "c"])
    with pytest.raises(UserError, match=r"train.csv: row 3 has an empty 'image_id'"):
        read_train(cfg)


# ---- 3. numbers spelt two ways ---------------------------------------------------------------------------------

def test_integral_floats_are_one_class_with_their_integers_and_it_is_said(tmp_path, capsys):
    cfg = write_corpus(tmp_path, [("a", "1"), ("b", "1.0"), ("c", "2"), ("d", "2.00"), ("e", "10"), ("f", "1.0")])
    corpus = read_train(cfg)
    assert corpus.classes == ["1", "2", "10"]
    assert corpus.table["label"].to_list() == ["1", "1", "2", "2", "10", "1"]
    err = capsys.readouterr().err
    assert "labels: '1.0' read as class '1' (2 rows), '2.00' read as class '2' (1 row)" in err
    assert len([line for line in err.splitlines() if "read as class" in line]) == 1


def test_zero_padded_numbers_become_one_class_only_when_they_collide(tmp_path, capsys):
    cfg = write_corpus(tmp_path, [("a", "01"), ("b", "1"), ("c", "02")])
    assert read_train(cfg).classes == ["1", "2"]
    assert "'01' read as class '1' (1 row)" in capsys.readouterr().err
    cfg = write_corpus(tmp_path / "codes", [("a", "01"), ("b", "02"), ("c", "10")])
    assert read_train(cfg).classes == ["01", "02", "10"]  # category codes: kept as written


def test_a_fractional_label_stays_as_written(tmp_path):
    cfg = write_corpus(tmp_path, [("a", "1"), ("b", "1.5"), ("c", "2.0")])
    assert read_train(cfg).classes == ["1", "1.5", "2"]


def test_labels_that_are_not_all_numbers_are_kept_as_written(tmp_path, capsys):
    cfg = write_corpus(tmp_path, [("a", "1.0"), ("b", "cat"), ("c", "1")])
    assert read_train(cfg).classes == ["1", "1.0", "cat"]
    assert "read as class" not in capsys.readouterr().err


# ---- 4. groups -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mark", ["", "NA", "null"])
def test_an_empty_group_is_an_error_naming_the_row(tmp_path, mark):
    write_corpus(tmp_path, [("a", "x", "p1"), ("b", "y", "p2"), ("c", "x", mark)], header="image_id,target,patient")
    cfg = DataConfig(dir=str(tmp_path), train_csv="train.csv", group_col="patient")
    with pytest.raises(UserError, match=r"train.csv: row 4 has an empty 'patient'.*drop data.group_col"):
        read_train(cfg)


# ---- 5. two ids, one file --------------------------------------------------------------------------------------

def test_two_ids_naming_one_file_is_an_error_naming_both_rows(tmp_path):
    cfg = write_corpus(tmp_path, [("a", "x"), ("b", "y"), ("a.png", "y")], files=["a", "b"])
    with pytest.raises(UserError, match=r"train.csv: rows 2 \('a'\) and 4 \('a.png'\) name the same image "
                                        r"train/a.png, with different labels \('x', 'y'\); keep one row"):
        read_train(cfg)


def test_two_ids_naming_one_file_with_one_label_is_an_error_too(tmp_path):
    cfg = write_corpus(tmp_path, [("a", "x"), ("b", "y"), ("a.png", "x")], files=["a", "b"])
    with pytest.raises(UserError, match=r"rows 2 \('a'\) and 4 \('a.png'\) name the same image train/a.png; keep"):
        read_train(cfg)


# ---- 6. the sample submission ------------------------------------------------------------------------------------

def sample_corpus(root, sample_text: str) -> DataConfig:
    write_corpus(root, [("a", "x"), ("b", "y")])
    (root / "test").mkdir()
    for name in ("t1", "t2", "t3"):
        Image.new("RGB", (4, 4)).save(root / "test" / f"{name}.png")
    (root / "sample_submission.csv").write_text(sample_text, encoding="utf-8")
    return DataConfig(dir=str(root), train_csv="train.csv")


def test_duplicate_ids_in_the_sample_are_an_error_naming_the_rows(tmp_path):
    cfg = sample_corpus(tmp_path, "image_id,label\nt1,x\nt2,x\nt3,x\nt2,x\n")
    with pytest.raises(UserError, match=r"sample_submission.csv: id 't2' appears on rows \[3, 5\]"):
        read_test(cfg)


def test_duplicate_ids_in_a_headerless_sample_count_rows_from_one(tmp_path):
    cfg = sample_corpus(tmp_path, "t1,0.5\nt1,0.5\nt3,0.5\n")
    with pytest.raises(UserError, match=r"sample_submission.csv: id 't1' appears on rows \[1, 2\]"):
        read_test(cfg)


def test_a_header_only_sample_is_an_error_naming_the_file(tmp_path):
    cfg = sample_corpus(tmp_path, "image_id,label\n")
    with pytest.raises(UserError, match=r"sample_submission.csv: a header but no rows; .*every test id"):
        read_test(cfg)


def test_sample_values_are_read_as_written(tmp_path):
    cfg = sample_corpus(tmp_path, "image_id,label\nt1,NA\nt2,007\nt3,\n")
    test = read_test(cfg)
    assert test.sample["label"].to_list() == ["NA", "007", ""] and test.table["id"].to_list() == ["t1", "t2", "t3"]


# ---- 7. Unicode normal forms -------------------------------------------------------------------------------------

NFC, NFD = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")


@pytest.mark.parametrize("id_form,file_form", [(NFC, NFD), (NFD, NFC)])
def test_an_id_matches_its_file_in_the_other_normal_form(tmp_path, id_form, file_form):
    cfg = write_corpus(tmp_path, [(id_form, "x"), ("b", "y")], files=[file_form, "b"])
    corpus = read_train(cfg)
    path = corpus.table["path"].to_list()[0]
    assert path == f"train/{file_form}.png"  # the name on disk, which is what opens
    assert (tmp_path / path).is_file()


def test_a_sample_id_matches_a_test_file_in_the_other_normal_form(tmp_path):
    cfg = sample_corpus(tmp_path, f"image_id,label\nt1,x\n{NFC},x\n")
    Image.new("RGB", (4, 4)).save(tmp_path / "test" / f"{NFD}.png")
    assert read_test(cfg).table["path"].to_list() == ["test/t1.png", f"test/{NFD}.png"]


# ---- the index from a list of names --------------------------------------------------------------------------------

def test_the_index_is_built_from_a_list_of_names_as_from_a_walk(tmp_path):
    names = ["a/b/x.jpg", "a/y.png", "b/y.jpg", "y.jpg", "z.tif"]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    walked, listed = ImageIndex(tmp_path), ImageIndex.from_paths(tmp_path, names)
    assert walked.files == listed.files == sorted(names)
    for image_id in ("x", "a/b/x", "a/b/x.jpg", "z", "y.jpg", "a/y"):
        assert walked.resolve(image_id, "t") == listed.resolve(image_id, "t")
    assert listed.resolve("y.jpg", "t") == "y.jpg"  # an exact path wins over b/y.jpg's file name
    ids = pl.Series(["z", "y.jpg", "a/y", "x"])
    assert listed.resolve_all(ids, pl.Series([2, 3, 4, 5]), "t").to_list() == ["z.tif", "y.jpg", "a/y.png", "a/b/x.jpg"]
    with pytest.raises(UserError, match="id 'y' matches several files"):
        listed.resolve("y", "t")


# ---- the table's shape -----------------------------------------------------------------------------------------------

def test_a_quote_left_open_is_an_error_naming_its_row(tmp_path):
    cfg = write_corpus(tmp_path, [("a", "x"), ("b", '"y'), ("c", "x")])
    with pytest.raises(UserError, match=r"train.csv: row 3: the 'target' cell runs over several lines"):
        read_train(cfg)


def test_a_quote_inside_a_cell_is_kept_and_a_ragged_row_is_named(tmp_path):
    (tmp_path / "t.csv").write_text('id,label\na,5" disk\nb,y\n', encoding="utf-8")
    assert read_table(tmp_path / "t.csv")["label"].to_list() == ['5" disk', "y"]
    (tmp_path / "t.csv").write_text('id,label\na,5" disk\n\nb,y,z\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"t.csv: row 4 has 3 cells, the header 2"):
        read_table(tmp_path / "t.csv")


def test_blank_lines_are_skipped_and_rows_keep_their_line_numbers(tmp_path):
    cfg = write_corpus(tmp_path, [("a", "x"), ("b", "y")])
    (tmp_path / "train.csv").write_text("image_id,target\n\na,x\n\nb,N/A\n\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"row 5 has an empty 'target'"):
        read_train(cfg)
