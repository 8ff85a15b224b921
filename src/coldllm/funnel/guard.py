"""A guard against item texts that steer the judge: P(Yes) over fixed reference users, against what
the item's content predicts.

Whoever writes a new item's text chooses what the judge reads. Text that flatters the judge (a
bare or repeated title, an appended "Answer: Yes") lifts its P(Yes) for *every* user, where a
genuinely appealing item lifts it for some. So the guard asks the judge about a fixed, seeded set
of reference users, takes the item's mean P(Yes) over them, and compares it with what its content
predicts: the mean of the same quantity over its ``k`` most content-similar reference warm items.
The spread of that residual among the reference warm items themselves (each predicted from the
others) is the yardstick: an item ``z`` spreads above its prediction is flagged.

The same measurement is a defence as well as an alarm (``refiner.center``): an item's *offset*,
how far its mean P(Yes) over the reference users sits above what its content predicts, is taken
off each of its pairs before the threshold. Text that lifts P(Yes) for everyone lifts the offset
by as much and buys nothing; what is left is how this user compares with the others on this item,
plus the level an item with this content gets. The batch simulation and the service centre the same
way (``centered_verdicts``, ``centered``).

``p_yes(users, texts, vectors) -> (len(texts), len(users))`` is the judge's; the guard keeps only
numbers (JSON), so a run fits it once per adapter and loads it after.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

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

    def offsets(self, p_yes: PYes, texts: list[str], vectors: np.ndarray) -> np.ndarray:
        """How far each text's mean P(Yes) over the reference users sits above what its content
        predicts (in P(Yes))."""
        means = p_yes(np.asarray(self.users), texts, np.asarray(vectors, np.float32)).mean(1)
        return means - self.expected(vectors)

    def z_scores(self, p_yes: PYes, texts: list[str], vectors: np.ndarray) -> np.ndarray:
        """The offsets in residual spreads: how unusual each text's lift is among honest items."""
        return self.offsets(p_yes, texts, vectors) / self.residual_sd

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


def centered(p_yes: np.ndarray, offset: float | np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Pairs read against their item's offset: the centred P(Yes) (clipped to [0, 1], what is
    stored and weighs a pair) and whether each pair is accepted (the unclipped value above the
    judge's threshold)."""
    shifted = np.asarray(p_yes, np.float64) - np.asarray(offset, np.float64)
    return np.clip(shifted, 0.0, 1.0).astype(np.float32), shifted > threshold


def reference_pairs(items: np.ndarray, users: list[int]) -> pd.DataFrame:
    """Every (reference user, item) pair: judged with the candidates, they give each item's offset."""
    items = np.unique(np.asarray(items, np.int64))
    return pd.DataFrame({"user": np.tile(np.asarray(users, np.int64), len(items)),
                         "item": np.repeat(items, len(users))})


def centered_verdicts(judged: pd.DataFrame, candidates: pd.DataFrame, guard: PYesGuard, vectors: np.ndarray,
                      threshold: float) -> pd.DataFrame:
    """The candidates' verdicts, centred. ``judged``: user, item, p_yes of the candidates and of
    ``reference_pairs`` of their items; ``vectors``: content vectors by item row. Returns user, item,
    p_yes (centred), p_raw, offset, accepted, in ``candidates``' order."""
    refs = judged[judged["user"].isin(guard.users)]
    per_item = refs.groupby("item")["p_yes"].agg(["mean", "size"])
    items = np.unique(candidates["item"].to_numpy())
    missing = np.setdiff1d(items, per_item.index[per_item["size"] == len(set(guard.users))].to_numpy())
    if len(missing):
        raise ValueError(f"centring needs every reference user's P(Yes) for each item; {len(missing)} items lack "
                         f"some (first: item row {int(missing[0])})")
    offset = per_item["mean"].reindex(items).to_numpy() - guard.expected(np.asarray(vectors)[items])
    out = candidates[["user", "item"]].merge(judged[["user", "item", "p_yes"]].drop_duplicates(["user", "item"]),
                                             on=["user", "item"], how="left")
    out = out.rename(columns={"p_yes": "p_raw"})
    out["offset"] = pd.Series(offset, index=items).reindex(out["item"]).to_numpy(np.float32)
    out["p_yes"], out["accepted"] = centered(out["p_raw"].to_numpy(), out["offset"].to_numpy(), threshold)
    return out[["user", "item", "p_yes", "p_raw", "offset", "accepted"]]
