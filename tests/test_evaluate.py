"""Metrics against values worked out by hand."""

import math

import numpy as np
import pytest
import torch

from coldllm.data import ColdStartData
from coldllm.evaluate import Evaluator, embedding_scorer, ranking_metrics

L3 = 1 / math.log2(3)  # gain of a hit at rank 2


def test_ranking_metrics_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.8, 0.3, 0.5]])
    truth = torch.tensor([[False, False, True, True, False]])
    m = ranking_metrics(scores, truth, [2, 5])
    # top-2 = items 0, 2: one hit at rank 2 of two relevant items
    assert m["recall@2"].item() == pytest.approx(0.5)
    assert m["ndcg@2"].item() == pytest.approx(L3 / (1 + L3))
    # top-5 ranks: 0, 2, 4, 3, 1 -> hits at ranks 2 and 4
    assert m["recall@5"].item() == pytest.approx(1.0)
    assert m["ndcg@5"].item() == pytest.approx((L3 + 1 / math.log2(5)) / (1 + L3))


def test_ideal_dcg_is_truncated_at_k():
    # 3 relevant items, K=2, both top slots hit: NDCG must be exactly 1 (ideal counts only 2 slots)
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    truth = torch.tensor([[True, True, True, False]])
    m = ranking_metrics(scores, truth, [2])
    assert m["ndcg@2"].item() == pytest.approx(1.0)
    assert m["recall@2"].item() == pytest.approx(2 / 3)


def tiny_two_user_data():
    # items 0, 1 warm; 2, 3 cold. user 0 trained on item 0.
    parts = {
        "train": np.array([[0, 0]]),
        "warm_val": np.empty((0, 2), np.int64),
        "warm_test": np.array([[0, 1], [1, 0]]),
        "cold_val": np.empty((0, 2), np.int64),
        "cold_test": np.array([[0, 3]]),
    }
    return ColdStartData(
        user_ids=np.array(["a", "b"], dtype=object),
        item_ids=np.array(["0", "1", "2", "3"], dtype=object),
        item_text=np.array(["", "", "", ""], dtype=object),
        is_cold=np.array([False, False, True, True]),
        parts={k: v.astype(np.int64) for k, v in parts.items()},
    )


def test_evaluator_settings_by_hand():
    data = tiny_two_user_data()
    scores = torch.tensor([[5.0, 1.0, 3.0, 2.0], [1.0, 2.0, 0.0, 3.0]])
    res = Evaluator(data, "test", ks=[1, 2]).evaluate(lambda users: scores[users])
    # warm: user 0 -> item 0 masked, item 1 ranked first (hit); user 1 -> item 1 first, item 0 second
    assert res["warm"]["users"] == 2
    assert res["warm"]["recall@1"] == pytest.approx(0.5)
    assert res["warm"]["ndcg@2"] == pytest.approx((1 + L3) / 2)
    # cold: only user 0; among items 2 (3.0) and 3 (2.0), the relevant item 3 comes second
    assert res["cold"]["users"] == 1
    assert res["cold"]["recall@1"] == 0.0
    assert res["cold"]["ndcg@2"] == pytest.approx(L3)
    # overall: user 0 ranks 2, 3, 1 (0 masked) -> truth {1, 3}: hit at rank 2; user 1 ranks 3, 1, 0 -> miss
    assert res["overall"]["users"] == 2
    assert res["overall"]["recall@2"] == pytest.approx(0.25)
    assert res["overall"]["ndcg@2"] == pytest.approx((L3 / (1 + L3)) / 2)


def test_batching_does_not_change_results():
    rng = np.random.default_rng(0)
    data = tiny_two_user_data()
    user_emb, item_emb = torch.tensor(rng.normal(size=(2, 3))), torch.tensor(rng.normal(size=(4, 3)))
    one = Evaluator(data, "test", ks=[1, 2], batch_size=1).evaluate(embedding_scorer(user_emb, item_emb))
    many = Evaluator(data, "test", ks=[1, 2], batch_size=64).evaluate(embedding_scorer(user_emb, item_emb))
    for setting in one:
        assert one[setting] == pytest.approx(many[setting], rel=1e-6)


def test_reference_protocol_masks_other_positives_and_caps_users(monkeypatch):
    """The released code's protocol: another part's positive of the user is masked, and only the
    first users (by index) count."""
    import coldllm.evaluate as ev

    data = tiny_two_user_data()
    data.parts["cold_val"] = np.array([[0, 2]])  # user 0's validation positive outranks its test item
    scores = torch.tensor([[5.0, 1.0, 3.0, 2.0], [1.0, 2.0, 0.0, 3.0]])
    ours = Evaluator(data, "test", ks=[1]).evaluate(lambda users: scores[users])
    ref = Evaluator(data, "test", ks=[1], reference=True).evaluate(lambda users: scores[users])
    assert ours["cold"]["recall@1"] == 0.0  # item 2 (validation positive) takes rank 1
    assert ref["cold"]["recall@1"] == 1.0  # masked: item 3 is first
    monkeypatch.setattr(ev, "REFERENCE_USERS", 1)
    capped = Evaluator(data, "test", ks=[1], reference=True).evaluate(lambda users: scores[users])
    assert capped["warm"]["users"] == 1 and ours["warm"]["users"] == 2


def test_subset_scorer_gives_the_cold_setting_the_same_result():
    from coldllm.evaluate import subset_scorer

    rng = np.random.default_rng(1)
    data = tiny_two_user_data()
    user_emb, item_emb = torch.tensor(rng.normal(size=(2, 3))), torch.tensor(rng.normal(size=(4, 3)))
    evaluator = Evaluator(data, "test", ks=[1, 2], settings=("cold",))
    full = evaluator.evaluate(embedding_scorer(user_emb, item_emb))
    assert evaluator.evaluate(subset_scorer(user_emb, item_emb, np.flatnonzero(data.is_cold))) == full


def test_per_user_metrics_average_to_the_reported_ones(tiny_data):
    torch.manual_seed(0)
    scorer = embedding_scorer(torch.randn(tiny_data.n_users, 4), torch.randn(tiny_data.n_items, 4))
    evaluator = Evaluator(tiny_data, "test", [5, 10], batch_size=3)
    means, per_user = evaluator.evaluate(scorer), evaluator.per_user(scorer)
    for setting, metrics in per_user.items():
        assert len(metrics["ndcg@5"]) == means[setting]["users"]
        for name, values in metrics.items():
            assert values.mean() == pytest.approx(means[setting][name], abs=1e-12)
