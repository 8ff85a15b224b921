import numpy as np
import pytest

from coldllm.data import cold_start_split


def make_pairs(n_users=200, n_items=100, per_user=15, seed=0):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    return users, items, n_items


def test_split_partitions_rows_and_items():
    users, items, n_items = make_pairs()
    parts = cold_start_split(users, items, n_items, seed=3)
    rows = np.concatenate(list(parts.values()))
    assert len(rows) == len(items) and len(np.unique(rows)) == len(items)  # disjoint and complete
    item_sets = {p: set(items[r].tolist()) for p, r in parts.items()}
    cold = item_sets["cold_val"] | item_sets["cold_test"]
    assert not cold & item_sets["train"]
    assert not item_sets["cold_val"] & item_sets["cold_test"]  # cold val/test are disjoint item sets
    assert len(cold) == 20  # 20% of 100 items
    assert abs(len(item_sets["cold_val"]) - len(item_sets["cold_test"])) <= 1
    assert item_sets["warm_val"] <= item_sets["train"] and item_sets["warm_test"] <= item_sets["train"]


def test_split_warm_proportions():
    users, items, n_items = make_pairs(n_users=400)
    parts = cold_start_split(users, items, n_items, seed=3)
    n_warm = sum(len(parts[p]) for p in ("train", "warm_val", "warm_test"))
    shares = [len(parts[p]) / n_warm for p in ("train", "warm_val", "warm_test")]
    assert shares == pytest.approx([0.8, 0.1, 0.1], abs=0.01)


def test_split_is_deterministic_and_seeded():
    users, items, n_items = make_pairs()
    a = cold_start_split(users, items, n_items, seed=5)
    b = cold_start_split(users, items, n_items, seed=5)
    c = cold_start_split(users, items, n_items, seed=6)
    assert all(np.array_equal(a[p], b[p]) for p in a)
    assert not np.array_equal(a["cold_test"], c["cold_test"])


def test_every_warm_item_keeps_a_training_pair():
    # Items with a single interaction easily land wholly in val/test; they must move to train.
    users = np.arange(300)
    items = np.arange(300) % 150
    parts = cold_start_split(users, items, 150, seed=0)
    warm = set(items[np.concatenate([parts["train"], parts["warm_val"], parts["warm_test"]])].tolist())
    assert warm == set(items[parts["train"]].tolist())


def test_split_rejects_bad_ratios():
    users, items, n_items = make_pairs()
    with pytest.raises(ValueError, match="cold_ratio"):
        cold_start_split(users, items, n_items, cold_ratio=1.5)
    with pytest.raises(ValueError, match="warm_ratios"):
        cold_start_split(users, items, n_items, warm_ratios=(0.0, 0.5, 0.5))


def test_user_sample_keeps_whole_users_and_their_items():
    from coldllm.config import RunConfig
    from coldllm.data.dataset import build_dataset
    from conftest import community_raw

    cfg = RunConfig().data
    cfg.split, cfg.seed = "random", 7
    full = build_dataset(community_raw(), cfg)
    cfg.sample_users = 10
    small = build_dataset(community_raw(), cfg)
    assert small.n_users == 10 and set(small.user_ids) < set(full.user_ids)
    raw = community_raw()
    kept = raw.interactions[raw.interactions["user"].isin(small.user_ids)]
    assert sum(len(p) for p in small.parts.values()) == len(kept.drop_duplicates())  # every pair of a kept user
    assert set(small.item_ids) == set(kept["item"])  # only the items they touched
    again = build_dataset(community_raw(), cfg)
    assert list(again.user_ids) == list(small.user_ids)  # seeded
