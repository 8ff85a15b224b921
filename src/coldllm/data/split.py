"""The cold-start split of the field (the ColdRec / ALDI protocol), seeded and deterministic.

A share of the items (20%) becomes cold: all their interactions are held out and split 1:1 *by
item* into validation and test, so cold validation and cold test are disjoint item sets (as in the
published CiteULike split). The warm items' interactions are split 8:1:1 into train/val/test.
"""

from __future__ import annotations

import numpy as np


def cold_start_split(
    users: np.ndarray,
    items: np.ndarray,
    n_items: int,
    cold_ratio: float = 0.2,
    warm_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 2023,
) -> dict[str, np.ndarray]:
    """Split interaction rows; returns part name -> row indices into ``users``/``items``.

    Only items that have interactions can become cold here; items without any (new catalogue
    entries) are cold by definition and are handled by the caller.
    """
    if not 0.0 < cold_ratio < 1.0:
        raise ValueError(f"cold_ratio must be in (0, 1), got {cold_ratio}")
    ratios = np.asarray(warm_ratios, dtype=float)
    if ratios.shape != (3,) or (ratios < 0).any() or ratios[0] <= 0:
        raise ValueError(f"warm_ratios must be three non-negative shares with train > 0, got {warm_ratios}")
    ratios = ratios / ratios.sum()
    rng = np.random.default_rng(seed)

    active = np.unique(items)
    shuffled = rng.permutation(active)
    n_cold = int(round(len(active) * cold_ratio))
    cold_items = shuffled[:n_cold]
    cold_val_items = cold_items[: n_cold // 2]
    is_cold = np.zeros(n_items, dtype=bool)
    is_cold[cold_items] = True
    in_cold_val = np.zeros(n_items, dtype=bool)
    in_cold_val[cold_val_items] = True

    rows = np.arange(len(items))
    cold_rows = rows[is_cold[items]]
    warm_rows = rng.permutation(rows[~is_cold[items]])
    n_train = int(round(len(warm_rows) * ratios[0]))
    n_val = int(round(len(warm_rows) * ratios[1]))
    part_of = np.empty(len(warm_rows), dtype=np.int8)  # 0 train, 1 val, 2 test
    part_of[:n_train], part_of[n_train : n_train + n_val], part_of[n_train + n_val :] = 0, 1, 2
    part_of = _keep_every_warm_item_in_train(items[warm_rows], part_of, n_items)

    return {
        "train": np.sort(warm_rows[part_of == 0]),
        "warm_val": np.sort(warm_rows[part_of == 1]),
        "warm_test": np.sort(warm_rows[part_of == 2]),
        "cold_val": cold_rows[in_cold_val[items[cold_rows]]],
        "cold_test": cold_rows[~in_cold_val[items[cold_rows]]],
    }


def _keep_every_warm_item_in_train(items: np.ndarray, part_of: np.ndarray, n_items: int) -> np.ndarray:
    """A warm item must have a training interaction, or it is cold in all but name.

    Items whose interactions all fell into val/test get their first held-out row moved to train.
    """
    train_count = np.bincount(items[part_of == 0], minlength=n_items)
    orphan = (train_count[items] == 0) & (part_of != 0)
    if orphan.any():
        idx = np.flatnonzero(orphan)
        _, first = np.unique(items[idx], return_index=True)
        part_of = part_of.copy()
        part_of[idx[first]] = 0
    return part_of
