"""The prepared cold-start dataset: contiguous ids, split parts, warm/cold masks, sparse matrices.

Prepared data is cached as Parquet + JSON under ``<cache_dir>/<name>/<key>/`` where the key hashes
the data settings, so changing the split or the text fields never reuses a stale cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..config import DataConfig
from .readers import PUBLISHED_FILES, SPLIT_PARTS, DataError, RawData, read_raw
from .split import cold_start_split

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


@dataclass
class ColdStartData:
    user_ids: np.ndarray  # internal user index -> raw id (str)
    item_ids: np.ndarray  # internal item index -> raw id (str)
    item_text: np.ndarray  # internal item index -> text (str)
    is_cold: np.ndarray  # bool per item: no training interaction
    parts: dict[str, np.ndarray]  # part name -> int64 array (n, 2) of (user, item)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def warm_items(self) -> np.ndarray:
        return np.flatnonzero(~self.is_cold)

    @property
    def cold_items(self) -> np.ndarray:
        return np.flatnonzero(self.is_cold)

    def matrix(self, *parts: str) -> sp.csr_matrix:
        """Binary user x item CSR matrix of the union of ``parts``."""
        pairs = np.concatenate([self.parts[p] for p in parts]) if parts else np.empty((0, 2), np.int64)
        data = np.ones(len(pairs), dtype=np.float32)
        mat = sp.csr_matrix((data, (pairs[:, 0], pairs[:, 1])), shape=(self.n_users, self.n_items))
        mat.sum_duplicates()
        mat.data[:] = 1.0
        return mat

    def summary(self) -> dict[str, int]:
        out = {"users": self.n_users, "items": self.n_items, "warm_items": int((~self.is_cold).sum()),
               "cold_items": int(self.is_cold.sum())}
        out.update({part: len(pairs) for part, pairs in self.parts.items()})
        return out

    # -- persistence -------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"user": self.user_ids}).to_parquet(folder / "users.parquet")
        pd.DataFrame({"item": self.item_ids, "text": self.item_text, "is_cold": self.is_cold}).to_parquet(
            folder / "items.parquet"
        )
        frames = [
            pd.DataFrame({"part": part, "user": pairs[:, 0], "item": pairs[:, 1]})
            for part, pairs in self.parts.items()
        ]
        pd.concat(frames, ignore_index=True).to_parquet(folder / "interactions.parquet")
        (folder / "summary.json").write_text(json.dumps(self.summary(), indent=2))

    @classmethod
    def load(cls, folder: Path) -> "ColdStartData":
        users = pd.read_parquet(folder / "users.parquet")
        items = pd.read_parquet(folder / "items.parquet")
        inter = pd.read_parquet(folder / "interactions.parquet")
        parts = {}
        for part in SPLIT_PARTS:
            rows = inter[inter["part"] == part]
            parts[part] = np.stack([rows["user"].to_numpy(np.int64), rows["item"].to_numpy(np.int64)], axis=1)
        return cls(
            user_ids=users["user"].to_numpy(dtype=object),
            item_ids=items["item"].to_numpy(dtype=object),
            item_text=items["text"].to_numpy(dtype=object),
            is_cold=items["is_cold"].to_numpy(dtype=bool),
            parts=parts,
        )


def _ordered(ids: pd.Series) -> np.ndarray:
    """Unique ids, in numeric order when all are integers (so CiteULike keeps its own ids)."""
    uniq = pd.unique(ids)
    if all(s.lstrip("-").isdigit() for s in uniq):
        return np.array(sorted(uniq, key=int), dtype=object)
    return np.array(sorted(uniq), dtype=object)


def sample_users(raw: RawData, n: int, seed: int) -> RawData:
    """A seeded sample of ``n`` users with all their interactions, and only the items they touched.

    For a first look in minutes: the split stays the one given (an item cold in the full data is
    cold here), only smaller.
    """
    frames = [raw.interactions] + list(raw.parts.values())
    users = pd.unique(pd.concat([f["user"] for f in frames], ignore_index=True))
    if n >= len(users):
        return raw
    keep = set(np.random.default_rng(seed).choice(np.sort(users.astype(str)), n, replace=False).tolist())
    cut = lambda f: f[f["user"].astype(str).isin(keep)].reset_index(drop=True)  # noqa: E731
    interactions, parts = cut(raw.interactions), {k: cut(f) for k, f in raw.parts.items()}
    touched = pd.concat([f["item"] for f in [interactions, *parts.values()]], ignore_index=True).unique()
    return RawData(interactions=interactions, items=raw.items[raw.items["item"].isin(touched)].reset_index(drop=True),
                   parts=parts)


def build_dataset(raw: RawData, cfg: DataConfig) -> ColdStartData:
    if cfg.sample_users > 0:
        raw = sample_users(raw, cfg.sample_users, cfg.seed)
    items_table = raw.items.drop_duplicates("item", keep="first")
    frames = [raw.interactions] + list(raw.parts.values())
    all_users = pd.concat([f["user"] for f in frames], ignore_index=True)
    user_ids = _ordered(all_users)
    item_ids = _ordered(items_table["item"])
    user_index = pd.Index(user_ids)
    item_index = pd.Index(item_ids)

    def encode(frame: pd.DataFrame, what: str) -> np.ndarray:
        items = item_index.get_indexer(frame["item"])
        if (items < 0).any():
            bad = frame["item"].iloc[int(np.argmax(items < 0))]
            raise DataError(f"{what}: item {bad!r} is not in the item table ({_item_source(cfg)})"
                            f"{_spelling_hint(bad, item_ids)}")
        users = user_index.get_indexer(frame["user"])
        pairs = np.stack([users, items], axis=1).astype(np.int64)
        return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)

    if raw.parts:
        parts = {part: encode(frame, _source(cfg, part)) for part, frame in raw.parts.items()}
        _check_published(parts)
    else:
        inter = raw.interactions.drop_duplicates(["user", "item"])
        pairs = encode(inter, _source(cfg))
        rows = cold_start_split(
            pairs[:, 0], pairs[:, 1], len(item_ids), cfg.cold_ratio, tuple(cfg.warm_ratios), cfg.seed
        )
        parts = {part: pairs[idx] for part, idx in rows.items()}

    if not len(parts["train"]):  # e.g. a user sample that kept no training pair
        sample = f" among the data.sample_users={cfg.sample_users} sampled users" if cfg.sample_users else ""
        raise DataError(f"{_source(cfg, 'train' if raw.parts else None)}: no training interactions{sample}; "
                        f"nothing to train on")
    is_cold = np.ones(len(item_ids), dtype=bool)
    is_cold[parts["train"][:, 1]] = False
    text = items_table.set_index("item").loc[item_ids, "text"].fillna("").astype(str).to_numpy(dtype=object)
    return ColdStartData(user_ids=user_ids, item_ids=item_ids, item_text=text, is_cold=is_cold, parts=parts)


def _item_source(cfg: DataConfig) -> str:
    return {"citeulike": "titles.txt", "recbole": f"{cfg.name}.item"}.get(cfg.format, cfg.items)


def _source(cfg: DataConfig, part: str | None = None) -> str:
    """The file a part's pairs were read from, for messages."""
    if part is not None:
        return str(Path(cfg.path) / cfg.split_dir / PUBLISHED_FILES.get(part, part))
    name = {"citeulike": "users.dat", "recbole": f"{cfg.name}.inter"}.get(cfg.format, cfg.interactions)
    return str(Path(cfg.path) / name)


def _spelling_hint(item: str, item_ids: np.ndarray) -> str:
    """When the missing id is the number of a listed one spelt otherwise ('7' for '007', '7.0'), say so:
    ids are compared as text, as written in each file."""
    try:
        value = float(item)
    except ValueError:
        return ""
    for known in item_ids:
        try:
            if float(known) == value:
                return f", which has {known!r}: ids are compared as text, write them the same way in both files"
        except ValueError:
            continue
    return ""


def _check_published(parts: dict[str, np.ndarray]) -> None:
    warm = set(np.unique(parts["train"][:, 1]).tolist())
    for part in ("cold_val", "cold_test"):
        leaked = warm & set(np.unique(parts[part][:, 1]).tolist())
        if leaked:
            raise DataError(f"split part {part!r}: {len(leaked)} cold item(s) also have training pairs")
    for part in ("warm_val", "warm_test"):
        unknown = set(np.unique(parts[part][:, 1]).tolist()) - warm
        if unknown:
            log.warning("split part %r: %d item(s) have no training pairs", part, len(unknown))


# Data settings added after caches were first keyed, with the default that behaves as before: left
# out of the key at that default, so a cache prepared before they existed is still found.
LATER_SETTINGS = {"rating_field": "rating", "min_rating": 0.0, "text_template": ""}


def cache_key(cfg: DataConfig) -> str:
    fields = asdict(cfg)
    fields.pop("cache_dir")
    for key, default in LATER_SETTINGS.items():
        if fields.get(key) == default:
            fields.pop(key)
    fields["version"] = FORMAT_VERSION
    return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def load_dataset(cfg: DataConfig, refresh: bool = False) -> ColdStartData:
    """Read raw files, split and map ids, or reuse the cache built from the same settings."""
    folder = Path(cfg.cache_dir) / cfg.name / cache_key(cfg)
    if (folder / "summary.json").exists() and not refresh:
        return ColdStartData.load(folder)
    data = build_dataset(read_raw(cfg), cfg)
    tmp = folder.with_name(folder.name + ".tmp")
    data.save(tmp)
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)  # atomic: a killed run never leaves a half-written cache behind
    return data
