"""Readers that turn raw files into one shape: an interaction table and an item-text table.

Every reader returns :class:`RawData` with raw (string) ids, so the id mapping and the cold-start
split downstream never care where the data came from. Malformed input raises :class:`DataError`
naming the file and, where there is one, the line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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


def _int_tokens(path: Path, line_no: int, line: str) -> list[int]:
    try:
        return [int(tok) for tok in line.split()]
    except ValueError:
        bad = next(t for t in line.split() if not t.lstrip("-").isdigit())
        raise DataError(f"{path}:{line_no}: expected integers, found {bad!r}") from None


def read_count_lists(path: Path) -> list[list[int]]:
    """Read the ``n i_1 ... i_n`` format of users.dat / item-tag.dat, checking each count."""
    rows = []
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
    return rows


def read_pair_csv(path: Path) -> pd.DataFrame:
    """A ``user,item`` CSV with a header, as in the published split."""
    frame = _read_table(path)
    missing = {"user", "item"} - set(frame.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; header is {list(frame.columns)}")
    return frame[["user", "item"]].astype(str)


def read_citeulike(cfg: DataConfig) -> RawData:
    root = Path(cfg.path)
    if not root.is_dir():
        raise DataError(
            f"{root}: CiteULike directory not found (set data.path or the COLDLLM_DATA variable)"
        )
    user_lists = read_count_lists(root / "users.dat")
    titles_path = _require(root / "titles.txt")
    titles = titles_path.read_text(encoding="utf-8").splitlines()
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
    return {part: read_pair_csv(folder / name) for part, name in PUBLISHED_FILES.items()}


def _read_table(path: Path) -> pd.DataFrame:
    _require(path)
    try:
        if path.suffix == ".parquet":
            table = pq.read_table(path)
        else:
            opts = pacsv.ReadOptions(block_size=1 << 26)
            conv = pacsv.ConvertOptions(strings_can_be_null=False)
            table = pacsv.read_csv(path, read_options=opts, convert_options=conv)
    except (pa.ArrowInvalid, OSError) as err:
        line = _first_ragged_line(path) if path.suffix != ".parquet" else None
        where = f"{path}:{line}" if line else str(path)
        raise DataError(f"{where}: {err}") from None
    return table.to_pandas()


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


def _text_column(frame: pd.DataFrame, fields: list[str], path: Path) -> pd.Series:
    missing = [f for f in fields if f not in frame.columns]
    if missing:
        raise DataError(f"{path}: text field(s) {missing} not in columns {list(frame.columns)}")
    parts = [frame[f].fillna("").astype(str) for f in fields]
    text = parts[0]
    for extra in parts[1:]:
        text = text.str.cat(extra, sep=". ")
    return text.str.strip()


def _check_ids(frame: pd.DataFrame, path: Path, columns: list[str]) -> None:
    for col in columns:
        if col not in frame.columns:
            raise DataError(f"{path}: column {col!r} not found; columns are {list(frame.columns)}")
        null = (frame[col].isna() | (frame[col].astype(str).str.strip() == "")).to_numpy()
        if null.any():
            line = int(null.argmax()) + 2  # +1 for 0-based, +1 for the header line
            raise DataError(f"{path}:{line}: empty {col!r}")


def read_tabular(cfg: DataConfig) -> RawData:
    """Interactions (``user,item[,timestamp]``) and an item table, as CSV or Parquet."""
    root = Path(cfg.path)
    inter_path = root / cfg.interactions
    frame = _read_table(inter_path)
    cols = [cfg.user_field, cfg.item_field]
    _check_ids(frame, inter_path, cols)
    inter = pd.DataFrame({"user": frame[cfg.user_field].astype(str), "item": frame[cfg.item_field].astype(str)})
    if cfg.timestamp_field:
        _check_ids(frame, inter_path, [cfg.timestamp_field])
        inter["timestamp"] = pd.to_numeric(frame[cfg.timestamp_field], errors="raise")
    items_path = root / cfg.items
    table = _read_table(items_path)
    _check_ids(table, items_path, [cfg.item_field])
    items = pd.DataFrame(
        {"item": table[cfg.item_field].astype(str), "text": _text_column(table, cfg.text_fields, items_path)}
    )
    raw = RawData(interactions=inter, items=items)
    if cfg.split == "published":
        raw.parts = read_split_dir(root / cfg.split_dir)
    return raw


def read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file: tab-separated, header ``name:type`` (token, float, token_seq, ...)."""
    _require(path)
    with open(path, encoding="utf-8") as fh:
        header = fh.readline().rstrip("\n").split("\t")
        names = []
        for col in header:
            if ":" not in col:
                raise DataError(f"{path}:1: header field {col!r} is not 'name:type'")
            names.append(col.split(":", 1)[0])
        rows = []
        for line_no, line in enumerate(fh, start=2):
            line = line.rstrip("\n")
            if not line:
                continue
            values = line.split("\t")
            if len(values) != len(names):
                raise DataError(f"{path}:{line_no}: expected {len(names)} fields, found {len(values)}")
            rows.append(values)
    return pd.DataFrame(rows, columns=names)


def read_recbole(cfg: DataConfig) -> RawData:
    root = Path(cfg.path)
    inter_path, item_path = root / f"{cfg.name}.inter", root / f"{cfg.name}.item"
    inter_frame = read_atomic(inter_path)
    _check_ids(inter_frame, inter_path, [cfg.user_field, cfg.item_field])
    inter = pd.DataFrame({"user": inter_frame[cfg.user_field], "item": inter_frame[cfg.item_field]})
    if cfg.timestamp_field:
        inter["timestamp"] = pd.to_numeric(inter_frame[cfg.timestamp_field])
    item_frame = read_atomic(item_path)
    _check_ids(item_frame, item_path, [cfg.item_field])
    items = pd.DataFrame(
        {"item": item_frame[cfg.item_field], "text": _text_column(item_frame, cfg.text_fields, item_path)}
    )
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
