"""The funnel's parts on tiny data: top-K filtering, fine-tuning examples, resumable simulation, update."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from coldllm.funnel.filter import CoupledEmbeddings, funnel_coverage, random_users, top_users
from coldllm.funnel.refiner import auc, auc_within, example_parts, finetune_examples, item_examples, judge_examples, \
    judge_sets, simulate, user_histories, with_random_negatives
from coldllm.funnel.update import FastParams, augmented_train, fit_cold_rows
from coldllm.llm.judge import Judge
from coldllm.llm.prompts import PromptEncoder, PromptTemplate
from conftest import make_tiny_llm


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_top_users_match_brute_force(kind):
    rng = np.random.default_rng(0)
    emb = CoupledEmbeddings(users=rng.normal(size=(50, 8)).astype(np.float32),
                            cold_items=rng.normal(size=(4, 8)).astype(np.float32), cold_ids=np.array([3, 9, 11, 20]))
    top = top_users(emb, k=5, index_kind=kind)
    assert len(top) == 20 and set(top["item"]) == {3, 9, 11, 20}
    for row, item in enumerate(emb.cold_ids):
        expected = np.argsort(-(emb.users @ emb.cold_items[row]))[:5]
        got = top[top["item"] == item].sort_values("rank")["user"].to_numpy()
        assert set(got) == set(expected) if kind == "hnsw" else list(got) == list(expected)


def test_unfilled_index_slots_are_never_candidates(monkeypatch):
    """IVF with one probe over many lists cannot fill K slots: FAISS returns user -1 there."""
    rng = np.random.default_rng(0)
    emb = CoupledEmbeddings(users=rng.normal(size=(300, 8)).astype(np.float32),
                            cold_items=rng.normal(size=(5, 8)).astype(np.float32), cold_ids=np.arange(5))
    from coldllm.funnel import filter as filter_module

    index = filter_module.build_index(emb.users, "ivf", nlist=64, nprobe=1)
    _, raw = index.search(emb.cold_items, 50)
    assert (raw < 0).any()  # the situation is real
    original = filter_module.build_index
    monkeypatch.setattr(filter_module, "build_index", lambda vectors, kind: original(vectors, kind, nlist=64, nprobe=1))
    top = top_users(emb, k=50, index_kind="ivf")
    assert (top["user"] >= 0).all() and len(top) == int((raw >= 0).sum())


def test_ivf_ranks_users_of_unequal_norms_by_inner_product():
    """IVF searches through the L2 reduction: with every list probed it is exact, scores included."""
    from coldllm.funnel.filter import build_index

    rng = np.random.default_rng(0)
    users = (rng.normal(size=(400, 8)) * rng.lognormal(0.0, 0.5, (400, 1))).astype(np.float32)
    items = rng.normal(size=(6, 8)).astype(np.float32)
    scores, ids = build_index(users, "ivf", nlist=8, nprobe=8).search(items, 5)
    exact = np.argsort(-(items @ users.T), axis=1)[:, :5]
    assert (ids == exact).all()
    np.testing.assert_allclose(scores, np.take_along_axis(items @ users.T, exact, 1), rtol=1e-5)


def test_random_filter_gives_k_distinct_users():
    out = random_users(30, np.array([1, 2]), k=10, seed=1)
    assert len(out) == 20 and out.groupby("item")["user"].nunique().tolist() == [10, 10]


def test_funnel_coverage_by_hand():
    candidates = pd.DataFrame({"item": [5, 5, 6, 6], "user": [0, 1, 0, 2]})
    truth = np.array([[1, 5], [2, 6], [3, 6], [0, 7]])  # item 7 got no candidate: its pair is missed
    stats = funnel_coverage(candidates, truth)
    assert stats["precision"] == pytest.approx(2 / 4)
    assert stats["coverage"] == pytest.approx(2 / 4)


def test_finetune_examples_use_training_pairs_only():
    train = sp.csr_matrix(np.array([[1, 1, 1, 0, 0, 0], [0, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0]], np.float32))
    ex = finetune_examples(train, np.arange(3), candidates=np.arange(4), max_history=5, seed=0)
    assert set(ex["user"]) == {0, 1}  # user 2 has a single item: no history left
    for _, row in ex.iterrows():
        items = set(train[row["user"]].indices.tolist())
        assert (row["item"] in items) == bool(row["label"])
        assert row["item"] not in set(row["history"]) and set(row["history"]) <= items
        assert row["item"] < 4  # negatives come from the candidate (warm) items only
    assert ex.groupby("user")["label"].agg(["sum", "count"]).values.tolist() == [[1, 2], [1, 2]]
    hard = pd.DataFrame({"user": [0, 0], "item": [1, 3]})  # item 1 is a positive of user 0: skipped
    ex = finetune_examples(train, np.arange(1), candidates=np.arange(6), max_history=5, hard=hard)
    assert ex[ex["label"] == 0]["item"].tolist() == [3]


def test_finetune_examples_several_pairs_share_one_history():
    # user 0 has 5 items, user 1 has 3 (so at most 2 pairs: one item must stay as history)
    train = sp.csr_matrix(np.array([[1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
                                    [0, 0, 0, 0, 0, 1, 1, 1, 0, 0]], np.float32))
    hard = pd.DataFrame({"user": [0, 0, 0, 0], "item": [2, 9, 9, 7]})  # ranked; item 2 is a positive
    ex = finetune_examples(train, np.arange(2), candidates=np.arange(10), max_history=5, seed=1, hard=hard, pairs=3)
    assert ex.groupby("user")["label"].agg(["sum", "count"]).values.tolist() == [[3, 6], [2, 4]]
    for user, rows in ex.groupby("user"):
        items = set(train[user].indices.tolist())
        histories = {tuple(h) for h in rows["history"]}
        assert len(histories) == 1  # one history, so one packed prefix per user
        history = set(next(iter(histories)))
        positives, negatives = rows[rows["label"] == 1]["item"], rows[rows["label"] == 0]["item"]
        assert set(positives) <= items and not set(positives) & history and history | set(positives) == items
        assert not set(negatives) & items and negatives.is_unique
    # the filter's best-ranked unseen items come first, in rank order, then random ones
    assert ex[(ex["user"] == 0) & (ex["label"] == 0)]["item"].tolist()[:2] == [9, 7]
    prompts = PromptEncoder(make_tiny_llm()[1], PromptTemplate())
    prefixes, suffixes, owner = example_parts(prompts, ex, np.array([f"paper {i}" for i in range(10)]))
    assert len(prefixes) == 2 and len(suffixes) == len(ex)


def test_random_negatives_pair_with_the_hard_set():
    train = sp.csr_matrix(np.array([[1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
                                    [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]], np.float32))
    hard = pd.DataFrame({"user": [0, 0, 1], "item": [9, 8, 9]})
    hard_set = finetune_examples(train, np.arange(2), candidates=np.arange(10), max_history=5, seed=3, hard=hard, pairs=2)
    random_set = with_random_negatives(hard_set, train, candidates=np.arange(8), seed=3)
    same = ["user", "label", "history"]
    pd.testing.assert_frame_equal(random_set[same], hard_set[same])
    positives = hard_set["label"] == 1
    assert random_set[positives]["item"].tolist() == hard_set[positives]["item"].tolist()
    for user, rows in random_set[~positives].groupby("user"):
        negatives = rows["item"]
        assert negatives.is_unique and negatives.max() < 8  # drawn from the candidates only
        assert not set(negatives) & set(train[user].indices.tolist())
    assert (hard_set["item"] >= 8).any()  # the input is left as it was
    assert with_random_negatives(hard_set, train, np.arange(8), seed=3).equals(random_set)


def test_judge_sets_match_sets_judged_apart_with_one_prefix_per_user():
    model, tok = make_tiny_llm(seed=4)
    judge = Judge(model, PromptEncoder(tok, PromptTemplate()), batch_size=3)
    titles = np.array([f"paper about topic {i}" for i in range(10)])
    train = sp.csr_matrix(np.array([[1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
                                    [0, 0, 0, 1, 1, 1, 0, 0, 0, 0],
                                    [1, 0, 0, 0, 0, 0, 1, 1, 0, 0]], np.float32))
    hard = pd.DataFrame({"user": [0, 1, 2], "item": [9, 9, 9]})
    hard_set = finetune_examples(train, np.arange(3), candidates=np.arange(10), max_history=5, seed=0, hard=hard)
    sets = {"random": with_random_negatives(hard_set, train, np.arange(9), seed=1), "hard": hard_set}
    seen = []
    real = judge.p_yes_grouped

    def counting(prefixes, suffixes, owner):
        seen.append((len(prefixes), len(suffixes)))
        return real(prefixes, suffixes, owner)

    judge.p_yes_grouped = counting
    together = judge_sets(judge, sets, titles)
    # one prefix per user; each positive is shared by both sets, so judged once
    assert seen == [(3, 9)]
    for name, ex in sets.items():
        np.testing.assert_allclose(together[name], judge_examples(judge, ex, titles), atol=1e-5)
        assert together[name].shape == (len(ex),)


def test_item_examples_label_each_items_candidates_and_never_show_the_answer():
    # users 0..3 over items 0..3: u0 took 0, 1, 3; u1 took 1; u2 took 0, 2; u3 took 2
    train = sp.csr_matrix((np.ones(7), ([0, 0, 0, 1, 2, 2, 3], [0, 1, 3, 1, 0, 2, 2])), shape=(4, 4))
    candidates = pd.DataFrame({"item": [0, 0, 0, 0, 1, 1, 2], "user": [1, 0, 2, 3, 3, 0, 1],
                               "rank": [0, 1, 2, 3, 1, 0, 0]})
    every = item_examples(train, candidates, np.array([0, 1]), max_history=5, pairs=None)
    # every candidate of items 0 and 1 (item 2 not asked for), in rank order, labelled by training
    assert list(zip(every["user"], every["item"], every["label"])) == [
        (1, 0, 0), (0, 0, 1), (2, 0, 1), (3, 0, 0), (0, 1, 1), (3, 1, 0)]
    # a history is the user's training items without the example's item
    assert [h.tolist() for h in every["history"]] == [[1], [1, 3], [2], [2], [0, 3], [2]]
    short = item_examples(train, candidates, np.array([0, 1]), max_history=1, pairs=None)
    assert [len(h) for h in short["history"]] == [1] * 6 and 0 not in short.loc[1, "history"]
    balanced = item_examples(train, candidates, np.array([0, 1, 2]), max_history=5, seed=3, pairs=2)
    # item 0 has two takers and two others: two of each; item 1 one of each; item 2 none who took it
    assert balanced.groupby(["item", "label"]).size().to_dict() == {(0, 0): 2, (0, 1): 2, (1, 0): 1, (1, 1): 1}
    labelled = every.set_index(["user", "item"])["label"]
    assert all(labelled[(u, i)] == y for u, i, y in zip(balanced["user"], balanced["item"], balanced["label"]))


def test_auc_by_hand():
    assert auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.3, 0.1])) == pytest.approx(0.75)
    assert auc(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(0.5)


def test_auc_within_items_by_hand():
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 1, 0])
    scores = np.array([0.9, 0.5, 0.1, 0.2, 0.8, 0.3, 0.4, 0.5, 0.5])
    items = np.array([7, 7, 7, 8, 8, 9, 9, 6, 6])
    # item 7: its positive above both negatives (1); item 8: below (0); item 9 has no positive (left
    # out); item 6: a tie (1/2). Pooled, the three positives beat 6, 1 and 3 of the six negatives and
    # tie two: 11 / 18
    assert auc_within(labels, scores, items) == pytest.approx(0.5)
    assert auc(labels, scores) == pytest.approx(11 / 18)
    assert np.isnan(auc_within(np.zeros(3), scores[:3], items[:3]))


def test_simulation_resumes_after_a_kill(tmp_path):
    model, tok = make_tiny_llm(seed=2)
    judge = Judge(model, PromptEncoder(tok, PromptTemplate()), batch_size=4)
    titles = np.array(["graph networks", "protein folding", "deep learning", "graph", "paper", "neural"])
    train = sp.csr_matrix(np.array([[1, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0], [1, 0, 1, 0, 0, 0],
                                    [0, 0, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]], np.float32))
    histories = user_histories(train, max_items=2, seed=0)
    candidates = pd.DataFrame({"user": [0, 0, 1, 2, 2, 3, 4, 4], "item": [3, 4, 5, 3, 5, 4, 3, 5]})
    full = simulate(judge, candidates, histories, titles, tmp_path / "full", shard_users=2)

    calls = {"n": 0}
    real = judge.p_yes_grouped

    def dying(prefixes, suffixes, owner):
        calls["n"] += 1
        if calls["n"] == 2:  # killed while judging the second shard
            raise KeyboardInterrupt
        return real(prefixes, suffixes, owner)

    judge.p_yes_grouped = dying
    with pytest.raises(KeyboardInterrupt):
        simulate(judge, candidates, histories, titles, tmp_path / "part", shard_users=2)
    assert sorted(p.name for p in (tmp_path / "part").iterdir()) == ["shard-00000.parquet"]
    calls["n"] = -100
    resumed = simulate(judge, candidates, histories, titles, tmp_path / "part", shard_users=2)
    pd.testing.assert_frame_equal(resumed, full)
    assert len(full) == len(candidates) and full["p_yes"].between(0, 1).all()


def test_augmented_train_adds_only_accepted_pairs():
    train = sp.csr_matrix(np.eye(3, 4, dtype=np.float32))
    sim = pd.DataFrame({"user": [0, 1, 2], "item": [3, 3, 0], "accepted": [True, False, True]})
    out = augmented_train(train, sim)
    assert out.nnz == 5 and out[0, 3] == 1 and out[1, 3] == 0 and out[2, 0] == 1


def test_fast_update_moves_only_cold_items_towards_their_users():
    torch.manual_seed(0)
    users, items = torch.randn(20, 8), torch.randn(10, 8)
    cold = np.array([8, 9])
    pairs = pd.DataFrame({"user": [0, 1, 2, 3], "item": [8, 8, 9, 9]})
    out = fit_cold_rows(users, items, torch.zeros(2, 8), cold, pairs, FastParams(steps=100, lr=0.05, pull=0.0,
                                                                             negative_pool="warm")).item_emb
    torch.testing.assert_close(out[:8], items[:8])
    scores = users @ out.T
    for user, item in zip(pairs["user"], pairs["item"]):
        assert (scores[user, item] > scores[user, :8]).float().mean() > 0.8


def test_cosine_judge_and_candidate_aucs_by_hand():
    from judge_stats import cosine_judge, judges_on_candidates

    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]])
    histories = [np.array([0, 3]), np.array([1]), np.array([], dtype=np.int64)]
    cos = cosine_judge(np.array([0, 1, 0, 2]), np.array([3, 2, 1, 0]), histories, vectors)
    np.testing.assert_allclose(cos, [1.0, np.sqrt(0.5), 0.0, 0.0], atol=1e-6)
    candidates = pd.DataFrame({"user": [0, 1, 0, 1], "item": [3, 3, 2, 2], "score": [0.9, 0.1, 0.5, 0.6]})
    simulated = candidates[["user", "item"]].assign(p_yes=[0.8, 0.3, 0.6, 0.2], accepted=[True, False, True, False])
    truth = np.array([[0, 3], [1, 2]])  # real pairs: (0, 3) and (1, 2)
    out = judges_on_candidates(simulated, candidates, truth, histories, vectors, degree=np.array([1, 4, 0]))
    # positives (0,3) p=.8 and (1,2) p=.2 against negatives (1,3) p=.3 and (0,2) p=.6: 2 of 4 orderings
    assert out["auc_judge"] == pytest.approx(0.5) and out["auc_filter_score"] == pytest.approx(1.0)
    # within item 3 the judge is right (.8 > .3) and within item 2 wrong (.2 < .6); the filter is right
    # in both (.9 > .1, .6 > .5); the cosine is right in item 3 (1 > 0) and ties in item 2 (both
    # histories at 45 degrees to it); user 1 does more than user 0 and is real for item 2 only
    assert out["within_item"] == pytest.approx({"auc_judge": 0.5, "auc_filter_score": 1.0, "auc_cosine": 0.75,
                                                "auc_activity": 0.5})
    assert out["auc_activity"] == pytest.approx(0.5)
    assert out["precision_accepted"] == pytest.approx(0.5) and out["accept_rate"] == pytest.approx(0.5)
    assert out["pairs"] == 4 and out["real"] == 2


def test_the_activity_judge_keeps_each_items_most_active_candidates_online_as_in_batch():
    from coldllm.funnel.judges import OnlineActivity, activity_verdicts

    counts = np.array([5, 1, 9, 1, 3])
    # item 7: users 0, 1, 2, 3; item 8: users 1, 3, 4 (1 and 3 tie: the earlier row, the filter's better rank)
    candidates = pd.DataFrame({"user": [0, 1, 2, 3, 1, 3, 4], "item": [7, 7, 7, 7, 8, 8, 8]})
    out = activity_verdicts(candidates, counts, keep=0.5)
    np.testing.assert_allclose(out["p_yes"], np.log1p(counts[candidates["user"]]), rtol=1e-6)
    # item 7 keeps ceil(.5 x 4) = 2: users 2 (9) and 0 (5); item 8 keeps ceil(.5 x 3) = 2: user 4 (3), then user 1
    assert out["accepted"].tolist() == [True, False, True, False, True, False, True]
    online = OnlineActivity(counts, keep=0.5)
    for item, rows in candidates.groupby("item"):
        p, accepted = online.verdicts(rows["user"].to_numpy(), "any text", np.zeros(2))
        np.testing.assert_allclose(p, out.loc[rows.index, "p_yes"], rtol=1e-6)
        assert accepted.tolist() == out.loc[rows.index, "accepted"].tolist()
    p, accepted = online.verdicts(np.array([], np.int64), "any text", np.zeros(2))
    assert len(p) == len(accepted) == 0


def test_known_verdicts_are_not_judged_again(tmp_path):
    model, tok = make_tiny_llm(seed=2)
    judge = Judge(model, PromptEncoder(tok, PromptTemplate()), batch_size=4)
    titles = np.array(["graph networks", "protein folding", "deep learning", "graph", "paper", "neural"])
    train = sp.csr_matrix(np.array([[1, 1, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0], [1, 0, 1, 0, 0, 0]], np.float32))
    histories = user_histories(train, max_items=2, seed=0)
    candidates = pd.DataFrame({"user": [0, 0, 1, 2, 2], "item": [3, 4, 5, 3, 5]})
    full = simulate(judge, candidates, histories, titles, tmp_path / "full")
    known = full.iloc[[0, 3]][["user", "item"]].assign(p_yes=[0.25, 0.75])  # planted values
    judged = []
    real = judge.p_yes_grouped
    judge.p_yes_grouped = lambda p, s, o: judged.append(len(s)) or real(p, s, o)
    part = simulate(judge, candidates, histories, titles, tmp_path / "part", known=known)
    assert sum(judged) == 3  # only the pairs without a known verdict
    assert part["p_yes"].iloc[[0, 3]].tolist() == [0.25, 0.75]
    np.testing.assert_allclose(part["p_yes"].iloc[[1, 2, 4]], full["p_yes"].iloc[[1, 2, 4]], atol=1e-6)


def test_verdicts_reused_from_a_centred_simulation_are_the_judges_own(tmp_path):
    """A centred simulation stores the centred P(Yes) as p_yes and the judge's own as p_raw: a run
    that reuses its verdicts (refiner.verdicts_from) takes p_raw, which it centres itself."""
    from types import SimpleNamespace

    from coldllm.funnel.llm_judge import known_verdicts
    from coldllm.layout import RunLayout

    runs = tmp_path / "runs"
    other, mine = RunLayout(runs / "other"), RunLayout(runs / "mine")
    other.refiner.mkdir(parents=True)
    mine.root.mkdir(parents=True)
    mine.refiner.symlink_to(other.refiner)  # the same judge
    other.simulated.parent.mkdir(parents=True)
    pd.DataFrame({"user": [0, 1], "item": [5, 5], "p_yes": [0.1, 0.9], "p_raw": [0.3, 0.7], "offset": [0.2, -0.2],
                  "accepted": [False, True]}).to_parquet(other.simulated)
    run = SimpleNamespace(layout=mine, cfg=SimpleNamespace(runs_dir=str(runs), refiner=SimpleNamespace(verdicts_from=["other"])))
    known = known_verdicts(run)
    assert known.columns.tolist() == ["user", "item", "p_yes"]
    np.testing.assert_allclose(known["p_yes"], [0.3, 0.7])


def test_combined_judge_is_fitted_on_held_out_pairs_and_scores_candidates():
    """With P(Yes) flat on the candidates, the combined judge is a monotone function of the cosine
    there (same AUC); on held-out pairs whose label is the cosine it separates them cross-validated."""
    from judge_stats import cosine_judge, fit_combined_judge, judges_on_candidates, judges_on_held_out

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(30, 4))
    histories = [np.array([0, 1]), np.array([2, 3]), np.array([4])]
    items = rng.integers(5, 30, size=60)
    owners = rng.integers(0, 3, size=60)
    held_out = pd.DataFrame({"item": items, "history": [histories[o] for o in owners],
                             "p_before": rng.uniform(size=60), "p_after": rng.uniform(size=60)})
    cos = cosine_judge(np.arange(60), items, [histories[o] for o in owners], vectors)
    held_out["label"] = (cos > np.median(cos)).astype(np.int64)
    out = judges_on_held_out(held_out, vectors)
    assert out["auc_cosine"] == pytest.approx(1.0) and out["auc_combined_cv"] > 0.9
    assert "auc_popularity" not in out
    # the items' popularity alone: positives on items 5 (10) and 6 (3), negatives on 7 (5) and 8 (1):
    # 3 of the 4 orderings right
    four = held_out.iloc[:4].assign(item=[5, 6, 7, 8], label=[1, 1, 0, 0])
    popularity = np.zeros(30)
    popularity[[5, 6, 7, 8]] = [10, 3, 5, 1]
    assert judges_on_held_out(four, vectors, popularity=popularity)["auc_popularity"] == pytest.approx(0.75)
    combined = fit_combined_judge(held_out, vectors)
    assert combined.coef_[0, 1] > 0  # it learned that the cosine, not the noise, carries the label
    candidates = pd.DataFrame({"user": [0, 1, 2, 0, 1, 2], "item": [5, 5, 5, 6, 6, 6], "score": np.zeros(6)})
    simulated = candidates[["user", "item"]].assign(p_yes=0.5, accepted=True)
    truth = np.array([[0, 5], [2, 6]])
    got = judges_on_candidates(simulated, candidates, truth, histories, vectors, combined)
    assert got["auc_combined"] == pytest.approx(got["auc_cosine"])
    assert "auc_combined" not in judges_on_candidates(simulated, candidates, truth, histories, vectors)


def test_candidate_profile_by_hand():
    """Pair coverage counts pairs; user coverage averages per user, as Recall@K does."""
    from judge_stats import candidate_profile

    truth = np.array([[0, 10], [1, 10], [1, 11], [1, 12], [1, 13]])  # user 0: 1 held-out pair, user 1: 4
    candidates = pd.DataFrame({"item": [10, 10, 11, 11, 12, 99], "user": [0, 2, 2, 3, 1, 0]})  # item 99: not in truth
    degree = np.array([1, 9, 30, 5])
    p = candidate_profile(candidates, truth, degree)
    assert p["pairs"] == 5 and p["precision"] == pytest.approx(2 / 5)
    assert p["coverage"] == pytest.approx(2 / 5)  # 2 of the 5 held-out pairs
    assert p["user_coverage"] == pytest.approx((1 / 1 + 1 / 4) / 2)  # user 0 fully, user 1 a quarter
    assert p["items_with_a_real_user"] == pytest.approx(2 / 4)  # items 10 and 12 of 10..13
    assert p["distinct_users"] == 4 and p["top1pct_share"] == pytest.approx(2 / 5)  # user 2 holds 2 of 5 slots
    assert p["candidate_degree"] == pytest.approx((1 + 30 + 30 + 5 + 9) / 5)
    assert p["real_degree"] == pytest.approx((1 + 9 * 4) / 5)


# the similar-history template: items 0-4 against the candidate vector (2, .1), cosines by hand:
# item 0 (1, 0): .9988, item 2 (1, 1): .7416, item 3 (1, -1): .6710, item 1 (0, 1): .0499, item 4 (-1, 0): -.9988
SIMILAR_VECTORS = np.array([[1, 0], [0, 1], [1, 1], [1, -1], [-1, 0], [2, 0.1]], np.float32)


def test_the_similar_history_is_the_users_items_closest_to_the_candidate():
    from coldllm.funnel.refiner import similar_history

    items = np.array([0, 1, 2, 3, 4])
    assert similar_history(items, SIMILAR_VECTORS[5], SIMILAR_VECTORS, 3).tolist() == [0, 2, 3]
    assert similar_history(items, SIMILAR_VECTORS[5], SIMILAR_VECTORS, 9).tolist() == [0, 2, 3, 1, 4]
    assert similar_history(np.array([1, 4]), SIMILAR_VECTORS[5], SIMILAR_VECTORS, 1).tolist() == [1]
    assert similar_history(np.array([], np.int64), SIMILAR_VECTORS[5], SIMILAR_VECTORS, 2).tolist() == []


def test_similar_fine_tuning_examples_show_each_candidate_its_closest_items_without_the_target():
    train = sp.csr_matrix(np.array([[1, 1, 1, 1, 1, 0]], np.float32))  # the user has items 0-4
    ex = finetune_examples(train, np.array([0]), candidates=np.array([5]), max_history=2, seed=0,
                           similar=SIMILAR_VECTORS)
    assert sorted(ex["label"]) == [0, 1]
    for item, history in zip(ex["item"], ex["history"]):
        rest = [i for i in range(5) if i != ex.loc[ex["label"] == 1, "item"].iloc[0]]
        cos = SIMILAR_VECTORS[rest] @ SIMILAR_VECTORS[item] / (
            np.linalg.norm(SIMILAR_VECTORS[rest], axis=1) * np.linalg.norm(SIMILAR_VECTORS[item]))
        assert list(history) == [rest[j] for j in np.argsort(-cos, kind="stable")[:2]]


def test_a_similar_history_simulation_gives_each_pair_the_prefix_of_its_own_history(tmp_path):
    from coldllm.funnel.refiner import Histories

    model, tok = make_tiny_llm(seed=2)
    judge = Judge(model, PromptEncoder(tok, PromptTemplate()), batch_size=4)
    titles = np.array(["graph networks", "protein folding", "deep learning", "graph", "paper", "neural"])
    train = sp.csr_matrix(np.array([[1, 1, 1, 1, 1, 0]], np.float32))
    histories = Histories(user_histories(train, 6), SIMILAR_VECTORS, 2)
    candidates = pd.DataFrame({"user": [0, 0], "item": [5, 1]})
    seen = []
    real = judge.p_yes_grouped
    judge.p_yes_grouped = lambda prefixes, suffixes, owner: seen.append(prefixes) or real(prefixes, suffixes, owner)
    out = simulate(judge, candidates, histories, titles, tmp_path / "shards", shard_users=2)
    # item 5's closest are 0 and 2; item 1's closest are 1 itself (a history may hold the candidate
    # only in this hand-made case: a real candidate is never in the user's training items) and 2
    shown = {5: [0, 2], 1: [1, 2]}
    expected = [judge.prompts.prefix([titles[h] for h in shown[i]]) for i in out["item"]]
    assert seen == [expected]  # one call, one prefix per pair, in the order of the verdicts
    alone = [real([p], [judge.prompts.suffix(titles[i])], np.array([0]))[0] for p, i in zip(expected, out["item"])]
    np.testing.assert_allclose(out["p_yes"], alone, atol=1e-5)


def test_flattery_rewrites_a_seeded_share_whatever_the_text():
    from coldllm.funnel.refiner import flattered

    texts = [f"title {i}" for i in range(400)]
    assert flattered(texts, 0.0, seed=1) == texts
    assert all(new != old and old in new for new, old in zip(flattered(texts, 1.0, seed=1), texts))
    some = flattered(texts, 0.3, seed=1)
    assert some == flattered(texts, 0.3, seed=1)  # seeded
    assert 0.2 < np.mean([a != b for a, b in zip(some, texts)]) < 0.4
