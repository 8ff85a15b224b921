"""Judges that need no language model: what the LoRA judge must beat, and what bounds it.

* ``cosine``: a free judge. Each candidate pair scores the cosine between the item's text vector
  and the mean text vector of the user's history (as the prompt shows it); each item keeps the
  ``keep`` share of its candidates that score highest.
* ``oracle``: a diagnostic that *reads held-out labels*. A real held-out pair is accepted with
  probability r, any other candidate with probability f (seeded). Sweeping (r, f) gives the
  update's response to the precision and recall of what it is fed; it never selects a model.
* ``file``: verdicts read from a file (the ``answer`` column of the released reference outputs).
"""

from __future__ import annotations

import numpy as np
import pandas as pd



def pair_keys(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    return np.asarray(users, np.int64) * (1 << 32) + np.asarray(items, np.int64)


def is_real(pairs: pd.DataFrame, truth: np.ndarray) -> np.ndarray:
    """Whether each (user, item) row is one of the held-out pairs ``truth`` (n, 2)."""
    return np.isin(pair_keys(pairs["user"], pairs["item"]), pair_keys(truth[:, 0], truth[:, 1]))


def cosine_judge(users: np.ndarray, items: np.ndarray, histories: list[np.ndarray], vectors: np.ndarray) -> np.ndarray:
    """cos(text(item), mean text of the user's history) for each pair (0 for an empty history)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    means = np.stack([unit[h].mean(0) if len(h) else np.zeros(unit.shape[1], unit.dtype) for h in histories])
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return np.einsum("nd,nd->n", means[np.asarray(users)], unit[np.asarray(items)])


def cosine_verdicts(candidates: pd.DataFrame, histories: list[np.ndarray], vectors: np.ndarray,
                    keep: float) -> pd.DataFrame:
    """user, item, p_yes (the cosine), accepted (top ``keep`` share of each item's candidates)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"refiner.keep must be in (0, 1], got {keep}")
    out = candidates[["user", "item"]].copy()
    out["p_yes"] = cosine_judge(out["user"].to_numpy(), out["item"].to_numpy(), histories, vectors).astype(np.float32)
    rank = out.groupby("item")["p_yes"].rank(ascending=False, method="first")
    size = out.groupby("item")["p_yes"].transform("size")
    out["accepted"] = rank <= np.ceil(keep * size)
    return out


def oracle_verdicts(candidates: pd.DataFrame, truth: np.ndarray, r: float, f: float, seed: int) -> pd.DataFrame:
    """Accept real pairs (rows of ``truth``) with probability ``r``, the others with ``f``."""
    for name, value in (("oracle_r", r), ("oracle_f", f)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"refiner.{name} must be in [0, 1], got {value}")
    out = candidates[["user", "item"]].copy()
    real = is_real(out, truth)
    draw = np.random.default_rng(seed).random(len(out))
    out["accepted"] = np.where(real, draw < r, draw < f)
    out["p_yes"] = out["accepted"].astype(np.float32)
    return out


def file_verdicts(candidates: pd.DataFrame) -> pd.DataFrame:
    """Accept the pairs whose ``answer`` column says Yes."""
    if "answer" not in candidates:
        raise ValueError("refiner.judge=file needs filter.towers=file with an `answer` column in filter.file")
    yes = candidates["answer"].astype(str).str.strip().str.lower().eq("yes")
    return candidates[["user", "item"]].assign(p_yes=yes.astype(np.float32), accepted=yes.to_numpy())
