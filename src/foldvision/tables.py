"""Reading a table the way users write it: any of the usual separators, UTF-8 with or without a BOM (or a
named code page), every cell a string, blank lines and trailing commas forgiven, and whole columns checked.

    read_table(Path("train.csv"))        # every cell a string: '007' keeps its zeros, 'NA' stays text

The readers of label tables, sample submissions, solutions and exclusion lists all come here, so a table is read
one way everywhere. Each mistake is one UserError naming the file and the row; `read_numbered` keeps each row's
line number in the file (the ROW column) for those messages.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from pathlib import Path

import polars as pl
from rich.markup import escape

from foldvision.console import console
from foldvision.errors import UserError

# Cells that mean "no value" in exported tables (pandas', R's, Excel's and SQL's marks, a lone dash), compared
# in lower case after stripping: an id, label or group that reads so is missing, never a class or a group.
MISSING_MARKS = ("", "na", "n/a", "#n/a", "#n/a n/a", "#na", "<na>", "nan", "-nan", "null", "none", "-")

# The legacy code pages a table that is not UTF-8 most often comes from. They are offered, never guessed:
# the same bytes often decode in both ('crème' in Windows-1252 reads 'cr鑪e' in Shift-JIS).
CODE_PAGES = {"cp1252": "Western European Excel", "cp932": "Japanese Excel"}

ROW = "\x00row"  # the column that carries each row's line number in the file, for messages; never shown

NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


# ---- text and tables ---------------------------------------------------------------------------------------------

def _decode(path: Path, encoding: str | None) -> bytes:
    """The file's text as UTF-8 bytes (what polars parses): UTF-8 (BOM or not) unless `encoding` names another.

    Nothing is guessed: a file that is not UTF-8 is an error naming the first bad byte's line and the code pages
    the file would decode in; `data.encoding` then says which one it is.
    """
    data = path.read_bytes()
    codec = "utf-8" if encoding is None else _codec(encoding)
    if codec == "utf-8":
        data = data.removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode(codec)
    except UnicodeDecodeError as e:
        raise UserError(_undecodable(path, data, e, encoding)) from None
    if encoding is not None:
        console.print(f"[yellow]note[/]: {escape(str(path))} read as {encoding}")
    if "\n" not in text and "\r" in text:  # classic Mac line ends, which polars does not split on
        text = text.replace("\r", "\n")
    elif codec == "utf-8":
        return data
    return text.encode("utf-8")


def _codec(encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise UserError(f"data.encoding: unknown encoding '{encoding}'; name a Python codec such as "
                        f"{', '.join(CODE_PAGES)} or utf-8") from None


def _undecodable(path: Path, data: bytes, error: UnicodeDecodeError, encoding: str | None) -> str:
    line = data.count(b"\n", 0, error.start) + 1
    where = f"{path}: not {encoding or 'UTF-8'} (line {line}, byte 0x{data[error.start]:02x})"
    if encoding is not None:
        return f"{where}; set data.encoding to the encoding it was saved in, or re-save it as UTF-8"
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):  # Excel's "Unicode Text" (tab-separated)
        return f"{where}; it is UTF-16 (its first bytes say so): set data.encoding=utf-16, or re-save it as UTF-8"
    fits = [f"data.encoding={name} ({what})" for name, what in CODE_PAGES.items() if _decodes(data, name)]
    if fits:
        return f"{where}; name its encoding: {' or '.join(fits)}, or re-save it as UTF-8"
    return f"{where}; name its encoding with data.encoding=<codec>, or re-save it as UTF-8"


def _decodes(data: bytes, codec: str) -> bool:
    try:
        data.decode(codec)
        return True
    except UnicodeDecodeError:
        return False


def _separator(path: Path, data: bytes) -> str:
    """Tab for .tsv; otherwise whichever of , ; and tab the header line holds most of (',' when none)."""
    if path.suffix.lower() == ".tsv":
        return "\t"
    header = data[: data.find(b"\n")] if b"\n" in data else data
    counts = {sep: header.count(sep.encode()) for sep in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _parse(path: Path, data: bytes, sep: str, has_header: bool) -> pl.DataFrame:
    """Every cell a string; the line number of each row in ROW; blank lines dropped."""
    try:
        table = pl.read_csv(data, separator=sep, has_header=has_header, infer_schema=False,
                            empty_string_is_null=False, row_index_name=ROW, row_index_offset=1 + has_header)
    except pl.exceptions.NoDataError:
        raise UserError(f"{path}: the file is empty") from None
    except pl.exceptions.ComputeError:
        table = _parse_lenient(path, data, sep, has_header)  # a stray quote or a ragged row: say where
        blank_lines = lambda: [False] * table.height  # noqa: E731 - the lenient reader drops blank lines itself
    else:
        blank_lines = lambda: _blank_records(data, sep, has_header)  # noqa: E731 - read only when needed
    cells = [c for c in table.columns if c != ROW]
    table = table.rename(dict(zip(cells, unique_names([c.strip() for c in cells]))))
    cells = [c for c in table.columns if c != ROW]
    return _skip_empty_rows(path, table, cells, blank_lines) if table.height else table


def _blank_records(data: bytes, sep: str, has_header: bool) -> list[bool]:
    """Which rows are blank lines: polars reads a blank line and a row of only separators alike (every cell
    empty); Python's csv module tells them apart ([] and ['', ''])."""
    flags = [not record for record in csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=sep)]
    return flags[1:] if has_header else flags


def _skip_empty_rows(path: Path, table: pl.DataFrame, cells: list[str], blank_lines) -> pl.DataFrame:
    """Blank lines are skipped. Rows of only separators after the last row (what a spreadsheet exports for the
    empty rows below a table) are skipped with one note; one among the rows stays, so that its empty id is an
    error naming it: a row whose cells were cleared by mistake is not lost without a word."""
    empty = table.select(pl.all_horizontal(pl.col(c) == "" for c in cells)).to_series()
    if not empty.any():
        return table
    blank = pl.Series(blank_lines(), dtype=pl.Boolean)
    if len(blank) != table.height:  # the two readers disagree on the rows: take every empty row as a blank line
        blank = empty
    filled = empty.not_().arg_true()
    end = int(filled[-1]) + 1 if len(filled) else 0
    trailing = int((empty & ~blank).slice(end).sum())
    if trailing:
        console.print(f"[yellow]note[/]: {escape(str(path))}: {plural(trailing, 'empty row')} at the end "
                      "(only separators) skipped")
    position = pl.int_range(0, table.height, eager=True)
    return table.filter(~blank & (position < end))


def _parse_lenient(path: Path, data: bytes, sep: str, has_header: bool) -> pl.DataFrame:
    """What polars refuses, read by Python's csv module (a quote inside a cell is kept), or a row-named error."""
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""), delimiter=sep)
    lines, numbers, read = [], [], 0
    try:
        for line in reader:
            if line:  # not a blank line
                lines.append(line)
                numbers.append(read + 1)  # where the row starts (a quoted cell may span lines)
            read = reader.line_num
    except csv.Error as e:
        raise UserError(f"{path}: not a readable CSV/TSV (line {reader.line_num}: {e}); fix the quoting") from None
    if not lines:
        raise UserError(f"{path}: the file is empty")
    header = lines[0] if has_header else [f"column_{i + 1}" for i in range(len(lines[0]))]
    body, numbers = (lines[1:], numbers[1:]) if has_header else (lines, numbers)
    for line, number in zip(body, numbers):
        if len(line) > len(header):
            raise UserError(f"{path}: row {number} has {len(line)} cells, the header {len(header)}; "
                            f"quote cells that hold '{sep}', or fix the row")
    body = [line + [""] * (len(header) - len(line)) for line in body]
    columns = {name: [line[i] for line in body] for i, name in enumerate(unique_names(header))}
    return pl.DataFrame({ROW: numbers, **columns}, schema={ROW: pl.Int64, **{name: pl.String for name in columns}})


def strings(columns: dict) -> pl.DataFrame:
    """A table of string columns (an empty one too: polars would type an empty list as Null)."""
    return pl.DataFrame(columns, schema=dict.fromkeys(columns, pl.String))


def unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        out.append(name if name not in seen else f"{name}.{seen[name]}")
        seen[name] = seen.get(name, 0) + 1
    return out


def read_numbered(path: Path, encoding: str | None = None, has_header: bool = True) -> pl.DataFrame:
    if not path.is_file():
        raise UserError(f"{path} not found: check data.dir and the file name in the config")
    data = _decode(path, encoding)
    return _parse(path, data, _separator(path, data), has_header)


def read_table(path: Path, encoding: str | None = None) -> pl.DataFrame:
    """A CSV/TSV as strings (ids such as '007' keep their zeros): UTF-8, BOM or not, unless `encoding` says."""
    return read_numbered(path, encoding).drop(ROW)


# ---- checks over whole columns -----------------------------------------------------------------------------------

def refuse_missing(table: pl.DataFrame, column: str, name: str, path: Path, fix: str) -> None:
    """A cell that is empty or a missing-value mark ('N/A', 'null', '-') is an error naming its row."""
    missing = table.filter(pl.col(column).str.to_lowercase().is_in(MISSING_MARKS))
    if missing.height:
        first = missing.row(0, named=True)
        row, value = first[ROW], first[column]
        mark = f"{value!r} marks a missing value; " if value else ""
        raise UserError(f"{path}: row {row} has an empty {name!r} ({mark}{plural(missing.height, 'row')} in all); "
                        f"{fix}")


def refuse_multiline(table: pl.DataFrame, column: str, name: str, path: Path) -> None:
    """A line break inside an id or a label is a quote left open, which swallowed the rows after it."""
    broken = table.filter(pl.col(column).str.contains("[\r\n]"))
    if broken.height:
        raise UserError(f"{path}: row {broken.get_column(ROW)[0]}: the {name!r} cell runs over several lines "
                        "(a quote left open?); close or remove the quote")


def refuse_repeats(table: pl.DataFrame, column: str, path: Path, fix: str) -> None:
    """An id on two rows is an error naming the rows of the first one repeated."""
    repeated = ~table.get_column(column).is_first_distinct()
    if repeated.any():
        first = table.filter(repeated).get_column(column)[0]
        rows = table.filter(pl.col(column) == first).get_column(ROW).to_list()
        n = table.filter(repeated).get_column(column).n_unique()
        raise UserError(f"{path}: id '{first}' appears on rows {rows} ({plural(n, 'repeated id')}); {fix}")
