"""The in-memory recommendation index: one immutable snapshot at a time.

A reader takes the current snapshot (one attribute read, atomic in Python) and ranks against it
alone, so it never sees an item half added. A writer builds the next snapshot beside it under a
lock and publishes it with one assignment; readers take no lock at all.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

SUBSETS = ("all", "cold", "warm")


@dataclass(frozen=True)
class Subset:
    items: np.ndarray  # (n, d) float32 rows of the subset's items, contiguous for one mat-vec
    index: np.ndarray  # (n,) item index of each row
    position: np.ndarray  # (n_items,) row of each item in this subset, -1 when it is not in it


@dataclass(frozen=True)
class Snapshot:
    version: int
    item_ids: tuple[str, ...]  # item index -> raw id
    subsets: dict[str, Subset]


def _subset(table: np.ndarray, rows: np.ndarray) -> Subset:
    position = np.full(len(table), -1, np.int64)
    position[rows] = np.arange(len(rows))
    return Subset(items=np.ascontiguousarray(table[rows]), index=rows, position=position)


class RecommendationIndex:
    """Users' top-k over the dataset's items plus those added online (which are cold)."""

    def __init__(self, user_emb: np.ndarray, item_emb: np.ndarray, item_ids: list[str], is_cold: np.ndarray,
                 seen: sp.csr_matrix):
        self.users = np.ascontiguousarray(user_emb, dtype=np.float32)
        self.seen = seen.tocsr()  # training items, never recommended back
        self.lock = threading.Lock()
        self._table = np.ascontiguousarray(item_emb, dtype=np.float32)
        self._cold = np.asarray(is_cold, bool)
        self.snapshot = self._build(0, tuple(item_ids))

    def _build(self, version: int, item_ids: tuple[str, ...]) -> Snapshot:
        rows = {"all": np.arange(len(self._table)), "cold": np.flatnonzero(self._cold),
                "warm": np.flatnonzero(~self._cold)}
        return Snapshot(version=version, item_ids=item_ids,
                        subsets={name: _subset(self._table, r) for name, r in rows.items()})

    @property
    def n_items(self) -> int:
        return len(self.snapshot.item_ids)

    def item_rows(self) -> np.ndarray:
        """The current item table (callers must not write to it)."""
        return self._table

    def add(self, ids: list[str], rows: np.ndarray) -> None:
        """Append new cold items; the caller holds ``lock`` (so ids are checked and added at once)."""
        table = np.concatenate([self._table, np.asarray(rows, np.float32).reshape(len(ids), -1)])
        cold = np.concatenate([self._cold, np.ones(len(ids), bool)])
        self._table, self._cold = table, cold
        self.snapshot = self._build(self.snapshot.version + 1, self.snapshot.item_ids + tuple(ids))

    def recommend(self, user: int, k: int, only: str = "all") -> list[tuple[str, float]]:
        """The user's k best (raw item id, score) among ``only`` items, training items excluded."""
        snap = self.snapshot  # one consistent view for the whole request
        sub = snap.subsets[only]
        scores = sub.items @ self.users[user]
        seen = sub.position[self.seen.indices[self.seen.indptr[user]:self.seen.indptr[user + 1]]]
        scores[seen[seen >= 0]] = -np.inf
        n = int(np.isfinite(scores).sum())
        k = min(k, n)
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        top = top[np.isfinite(scores[top])][:k]
        return [(snap.item_ids[i], float(s)) for i, s in zip(sub.index[top], scores[top])]
