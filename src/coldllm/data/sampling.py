"""Vectorised BPR triple sampling: one epoch of (user, positive, negative) in a few array ops."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class BPRSampler:
    """Each epoch visits every training pair once, in random order, with a uniform negative.

    Negatives are drawn from ``candidates`` (the warm items by default: cold items have no training
    signal, and pushing their random embeddings down would only add noise) and re-drawn, all at
    once, while any collides with a training positive of its user.
    """

    def __init__(self, train: sp.csr_matrix, candidates: np.ndarray | None = None, seed: int = 0):
        coo = train.tocoo()
        self.users = coo.row.astype(np.int64)
        self.items = coo.col.astype(np.int64)
        self.n_items = train.shape[1]
        self.candidates = np.arange(self.n_items) if candidates is None else np.asarray(candidates)
        # Sorted (user * n_items + item) keys: membership test by binary search, no Python loop.
        self.keys = np.sort(self.users * self.n_items + self.items)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.users)

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = users * self.n_items + items
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == keys

    def negatives(self, users: np.ndarray, max_rounds: int = 20) -> np.ndarray:
        neg = self.candidates[self.rng.integers(0, len(self.candidates), size=len(users))]
        for _ in range(max_rounds):
            clash = np.flatnonzero(self.is_positive(users, neg))
            if not len(clash):
                break
            neg[clash] = self.candidates[self.rng.integers(0, len(self.candidates), size=len(clash))]
        return neg

    def epoch(self, batch_size: int):
        """Yield ``(users, positives, negatives)`` int64 arrays of at most ``batch_size`` rows."""
        order = self.rng.permutation(len(self.users))
        users, pos = self.users[order], self.items[order]
        neg = self.negatives(users)
        for start in range(0, len(order), batch_size):
            stop = start + batch_size
            yield users[start:stop], pos[start:stop], neg[start:stop]
