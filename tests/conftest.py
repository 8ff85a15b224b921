"""Tiny synthetic cold-start data, built in-process: two communities of users and items."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("TQDM_DISABLE", "1")  # before tqdm is imported: quiet progress bars in tests

import numpy as np
import pytest

from coldllm.config import RunConfig
from coldllm.data import ColdStartData, build_dataset
from coldllm.data.readers import RawData

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


def community_raw(n_users: int = 40, n_items: int = 60, per_user: int = 12, seed: int = 0):
    """Users of community c mostly interact with items of community c: easy to learn, not trivial."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    users, items = [], []
    item_group = np.arange(n_items) % 2
    for u in range(n_users):
        own = np.flatnonzero(item_group == u % 2)
        other = np.flatnonzero(item_group != u % 2)
        chosen = np.concatenate([rng.choice(own, per_user - 2, replace=False), rng.choice(other, 2, replace=False)])
        users += [f"u{u}"] * len(chosen)
        items += [f"i{i}" for i in chosen]
    texts = [("graph networks " if g == 0 else "protein folding ") + f"paper {i}" for i, g in enumerate(item_group)]
    inter = pd.DataFrame({"user": users, "item": items})
    table = pd.DataFrame({"item": [f"i{i}" for i in range(n_items)], "text": texts})
    return RawData(interactions=inter, items=table)


def community_auc(data: ColdStartData, user_emb, item_emb) -> float:
    """Share of (user, own-community item, other item) comparisons the scores get right."""
    scores = (user_emb @ item_emb.T).numpy()
    group = np.array([int(i[1:]) % 2 for i in data.item_ids])
    user_group = np.array([int(u[1:]) % 2 for u in data.user_ids])
    own = group[None, :] == user_group[:, None]
    wins = [(scores[u][own[u]][:, None] > scores[u][~own[u]][None, :]).mean() for u in range(len(scores))]
    return float(np.mean(wins))


@pytest.fixture
def tiny_data() -> ColdStartData:
    cfg = RunConfig().data
    cfg.split, cfg.seed = "random", 7
    return build_dataset(community_raw(), cfg)


@pytest.fixture
def tiny_cfg(tmp_path) -> RunConfig:
    cfg = RunConfig(name="tiny", runs_dir=str(tmp_path / "runs"), seed=1)
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.backbone.dim, cfg.backbone.layers = 16, 2
    cfg.backbone.lr, cfg.backbone.batch_size = 0.01, 64
    cfg.backbone.epochs, cfg.backbone.eval_every, cfg.backbone.patience = 20, 5, 5
    return cfg
