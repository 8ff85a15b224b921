"""The in-memory recommendation index: one immutable snapshot at a time.

A reader takes the current snapshot (one attribute read, atomic in Python) and ranks against it
alone, so it never sees an item half added. A writer builds the next snapshot beside it under a
lock and publishes it with one assignment; readers take no lock at all.

Users and the run's own items never change while serving: only new items are added. So each
user's best ``top_m`` run items per subset (training items excluded) are ranked once at start, and
a request for k <= ``top_m`` merges them with the scores of the items added online; reading the
whole item table for every request is what would bound latency.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

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


def _merge(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], m: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``m`` of two per-user (items, scores) lists, scores descending (-1 items score -inf)."""
    items, scores = np.concatenate([a[0], b[0]], 1), np.concatenate([a[1], b[1]], 1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :m]
    return np.take_along_axis(items, order, 1), np.take_along_axis(scores, order, 1)


def _subset(table: np.ndarray, rows: np.ndarray) -> Subset:
    position = np.full(len(table), -1, np.int64)
    position[rows] = np.arange(len(rows))
    return Subset(items=np.ascontiguousarray(table[rows]), index=rows, position=position)


class RecommendationIndex:
    """Users' top-k over the dataset's items plus those added online (which are cold)."""

    def __init__(self, user_emb: np.ndarray, item_emb: np.ndarray, item_ids: list[str], is_cold: np.ndarray,
                 seen: sp.csr_matrix, top_m: int = 200):
        self.users = np.ascontiguousarray(user_emb, dtype=np.float32)
        self.seen = seen.tocsr()  # training items, never recommended back
        self.lock = threading.Lock()
        self._table = np.ascontiguousarray(item_emb, dtype=np.float32)
        self._cold = np.asarray(is_cold, bool)
        self.n_base = len(self._table)
        self.snapshot = self._build(0, tuple(item_ids))
        self.top_m = top_m
        subsets = self.snapshot.subsets
        # the whole catalogue's best m are among the cold items' best m and the warm items' best m:
        # ranked from those two lists, not from every item again (the start's largest cost)
        self.base_top = {name: self._rank_base(subsets[name], top_m) for name in ("cold", "warm")}
        self.base_top["all"] = _merge(self.base_top["cold"], self.base_top["warm"], min(top_m, self.n_base))

    def _rank_base(self, sub: Subset, m: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Each user's ``m`` best items of ``sub`` (item indices, -1 where fewer), scores descending."""
        m = min(m, len(sub.index))
        items = np.full((len(self.users), m), -1, np.int64)
        scores = np.full((len(self.users), m), -np.inf, np.float32)
        if m == 0:
            return items, scores
        table = torch.from_numpy(sub.items)
        for start in range(0, len(self.users), block):
            users = np.arange(start, min(start + block, len(self.users)))
            s = torch.from_numpy(self.users[users]) @ table.T
            seen = self.seen[users].tocoo()
            pos = sub.position[seen.col]
            s[torch.as_tensor(seen.row[pos >= 0]), torch.as_tensor(pos[pos >= 0])] = -torch.inf
            top_s, top = (t.numpy() for t in torch.topk(s, m, dim=1))  # sorted, best first
            items[users] = np.where(np.isfinite(top_s), sub.index[top], -1)
            scores[users] = top_s
        return items, scores

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
        if k <= self.top_m:
            return self._merged(snap, user, k, only)
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

    def _merged(self, snap: Snapshot, user: int, k: int, only: str) -> list[tuple[str, float]]:
        """The ranked run items of ``user`` merged with the items added online (never seen in training)."""
        items, scores = self.base_top[only][0][user], self.base_top[only][1][user]
        if only != "warm" and len(snap.item_ids) > self.n_base:
            sub = snap.subsets["cold"]
            first = int(np.searchsorted(sub.index, self.n_base))  # added items are the last cold rows
            items = np.concatenate([items, sub.index[first:]])
            scores = np.concatenate([scores, sub.items[first:] @ self.users[user]])
        keep = items >= 0
        items, scores = items[keep], scores[keep]
        k = min(k, len(items))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(snap.item_ids[i], float(s)) for i, s in zip(items[top], scores[top])]
