"""A guard against item texts that steer the judge: P(Yes) over fixed reference users, against what
the item's content predicts.

Whoever writes a new item's text chooses what the judge reads. Text that flatters the judge (a
bare or repeated title, an appended "Answer: Yes") lifts its P(Yes) for *every* user, where a
genuinely appealing item lifts it for some. So the guard asks the judge about a fixed, seeded set
of reference users, takes the item's mean P(Yes) over them, and compares it with what its content
predicts: the mean of the same quantity over its ``k`` most content-similar reference warm items.
The spread of that residual among the reference warm items themselves (each predicted from the
others) is the yardstick: an item ``z`` spreads above its prediction is flagged.

``p_yes(users, texts, vectors) -> (len(texts), len(users))`` is the judge's; the guard keeps only
numbers (JSON), so a service fits it once per adapter and loads it after.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import ConfigError
from ..utils import atomic_path

PYes = Callable[[np.ndarray, list[str], np.ndarray], np.ndarray]


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


@dataclass
class PYesGuard:
    users: list[int]  # the reference users, by row
    item_vectors: list[list[float]]  # the reference warm items' content vectors
    item_means: list[float]  # their mean P(Yes) over the reference users
    k: int = 8
    residual_sd: float = 1.0
    z: float = 3.0

    @classmethod
    def fit(cls, p_yes: PYes, n_users: int, warm_texts: list[str], warm_vectors: np.ndarray, users: int = 16,
            items: int = 48, k: int = 8, z: float = 3.0, seed: int = 0) -> "PYesGuard":
        """Reference users and warm items drawn with ``seed``; their P(Yes) asked once."""
        rng = np.random.default_rng(seed)
        chosen_users = np.sort(rng.choice(n_users, min(users, n_users), replace=False))
        chosen_items = np.sort(rng.choice(len(warm_texts), min(items, len(warm_texts)), replace=False))
        if len(chosen_items) < 3:
            raise ConfigError("the judge's guard needs at least 3 reference warm items")
        vectors = np.asarray(warm_vectors, np.float32)[chosen_items]
        means = p_yes(chosen_users, [warm_texts[i] for i in chosen_items], vectors).mean(1)
        k = min(k, len(chosen_items) - 1)
        guard = cls(chosen_users.tolist(), vectors.tolist(), [float(m) for m in means], k, 1.0, z)
        # each reference item predicted from the others: the residual's spread where nothing is hostile
        residual = means - guard.expected(vectors, leave_out=np.arange(len(means)))
        guard.residual_sd = float(max(residual.std(ddof=1), 1e-6))
        return guard

    def expected(self, vectors: np.ndarray, leave_out: np.ndarray | None = None) -> np.ndarray:
        """What content predicts: the mean of the ``k`` most cosine-similar reference items' means
        (``leave_out[j]``: a reference item row that text ``j`` must not use, itself)."""
        sims = _unit(vectors) @ _unit(np.asarray(self.item_vectors)).T
        if leave_out is not None:
            sims[np.arange(len(sims)), leave_out] = -np.inf
        top = np.argsort(-sims, axis=1)[:, : self.k]
        return np.asarray(self.item_means)[top].mean(1)

    def z_scores(self, p_yes: PYes, texts: list[str], vectors: np.ndarray) -> np.ndarray:
        """How many residual spreads each text's mean P(Yes) over the reference users sits above
        what its content predicts."""
        means = p_yes(np.asarray(self.users), texts, np.asarray(vectors, np.float32)).mean(1)
        return (means - self.expected(vectors)) / self.residual_sd

    def flags(self, p_yes: PYes, texts: list[str], vectors: np.ndarray) -> np.ndarray:
        return self.z_scores(p_yes, texts, vectors) > self.z

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, path: Path, fingerprint: str) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"fingerprint": fingerprint, **dataclasses.asdict(self)}))

    @classmethod
    def load(cls, path: Path, fingerprint: str) -> "PYesGuard | None":
        """The saved guard when it was fitted for ``fingerprint`` (this adapter, these settings)."""
        try:
            fields = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        if fields.pop("fingerprint", None) != fingerprint:
            return None
        return cls(**fields)
