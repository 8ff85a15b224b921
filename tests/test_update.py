"""The update: what it trains is what it evaluates, it starts at the content prior, it resumes only
its own work. Tiny data, the whole funnel through the command line with free judges (no LLM)."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from coldllm.backbones import build_backbone, load_backbone
from coldllm.baselines import build_method
from coldllm.baselines.runner import make_context
from coldllm.cli import app
from coldllm.config import load_config
from coldllm.evaluate import Evaluator, embedding_scorer
from coldllm.funnel.filter import funnel_coverage
from coldllm.funnel.update_stage import content_prior, predicted_popularity, updated_embeddings, warm_start
from coldllm.funnel.update import FastParams, fit_cold_rows, item_depths
from coldllm.pipeline import Run, content_vectors
from test_cli import write_project

FUNNEL = "--stages=[prepare, train, filter, simulate, update, evaluate_coldllm_val]"
FREE = [FUNNEL, "--filter.towers=collab", "--filter.collab_source=knn", "--filter.k=8", "--refiner.judge=all",
        "--update.prior_k=5"]


def run_cli(cfg, *overrides):
    result = CliRunner().invoke(app, ["run", "-c", str(cfg), *overrides])
    assert result.exit_code == 0, result.output
    return load_config(cfg, list(overrides))


def val_score(run: Run, user_emb, item_emb, setting: str, among: str = "split") -> float:
    """The update's validation score, computed here: the fast update's cold setting ranks the
    validation part's own cold items (``update.val_candidates: split``), a retraining every cold item."""
    evaluator = Evaluator(run.data, "val", run.cfg.eval.ks, settings=(setting,))
    scorer = embedding_scorer(user_emb, item_emb)
    if setting == "cold" and among == "split":
        val_items = np.unique(run.data.matrix("cold_val").tocoo().col)
        others = torch.ones(run.data.n_items, dtype=torch.bool)
        others[val_items] = False

        def scorer(users, full=scorer):
            scores = full(users)
            scores[:, others] = -torch.inf
            return scores
    return evaluator.evaluate(scorer)[setting][run.cfg.eval.metric]


@pytest.mark.parametrize("backbone,init", [("mf", "backbone"), ("lightgcn", "backbone"), ("ngcf", "scratch")])
def test_retrain_evaluates_what_it_trained(tmp_path, backbone, init):
    """The retrained graph model is scored on the graph it was trained on (train + simulated pairs):
    the update's evaluation on validation equals the score recorded for the selected epoch."""
    cfg = write_project(tmp_path)
    cfg = run_cli(cfg, *FREE, f"--backbone.model={backbone}", "--update.mode=retrain", f"--update.init={init}",
                  "--update.epochs=6", "--update.eval_every=2", "--update.retrain_lr=0.01")
    run = Run(cfg)
    record = run.manifest["stages"]["update"]
    assert record["history"][0]["epoch"] == 0  # the start is validated too
    user_emb, item_emb = updated_embeddings(run)
    assert val_score(run, user_emb, item_emb, "cold", among="cold") == pytest.approx(record["best_val"], abs=1e-6)
    metrics = json.loads((run.dir / "metrics_coldllm_val.json").read_text())
    assert metrics["cold"][cfg.eval.metric] == pytest.approx(record["best_val"], abs=1e-6)


def test_fast_update_evaluates_what_it_selected(tmp_path):
    cfg = run_cli(write_project(tmp_path), *FREE, "--backbone.model=mf", "--update.steps=30", "--update.eval_every=5")
    run = Run(cfg)
    record = run.manifest["stages"]["update"]
    assert record["history"][0]["step"] == 0
    assert val_score(run, *updated_embeddings(run), "cold") == pytest.approx(record["best_val"], abs=1e-6)
    # warm items and users are the backbone's, bit for bit
    user_emb, item_emb = load_backbone(run.dir / "backbone", run.data).embeddings()
    new_users, new_items = updated_embeddings(run)
    warm = run.data.warm_items
    assert torch.equal(new_users, user_emb) and torch.equal(new_items[warm], item_emb[warm])


def _knn_scores(run: Run, user_emb, item_emb, k: int) -> torch.Tensor:
    ctx = make_context(run.data, load_backbone(run.dir / "backbone", run.data), content_vectors(run),
                       torch.device("cpu"), run.cfg.seed)
    method = build_method("knn", {"k": k}).fit(ctx)
    return method.scorer()(torch.arange(run.data.n_users))[:, run.data.cold_items]


@pytest.mark.parametrize("backbone", ["mf", "lightgcn"])
def test_the_update_starts_at_the_content_prior(tmp_path, backbone):
    """Before any simulated pair is used, cold items score users exactly as the content-KNN control."""
    cfg = run_cli(write_project(tmp_path), "--stages=[prepare, train]", f"--backbone.model={backbone}",
                  "--update.prior_k=5")
    run = Run(cfg)
    user_emb, item_emb = load_backbone(run.dir / "backbone", run.data).embeddings()
    expected = _knn_scores(run, user_emb, item_emb, k=5)
    prior = content_prior(run, user_emb, item_emb)
    # the fast mode with no step
    start = fit_cold_rows(user_emb, item_emb, prior, run.data.cold_items, pd.DataFrame({"user": [], "item": []}),
                          FastParams(steps=0)).item_emb
    assert torch.allclose((user_emb @ start.T)[:, run.data.cold_items], expected, atol=1e-5)
    # the retrain mode's warm start, on the backbone's training graph
    model = build_backbone(cfg.backbone, run.data.matrix("train"))
    warm_start(model, run, prior)
    users, items = model.embeddings()
    assert torch.allclose((users @ items.T)[:, run.data.cold_items], expected, atol=1e-5)


def test_fast_update_never_leaves_a_prior_that_validates_better(tiny_data):
    """With a harmful update (huge steps, no pull), selection on cold validation keeps step 0."""
    torch.manual_seed(0)
    users = torch.randn(tiny_data.n_users, 8)
    items = torch.randn(tiny_data.n_items, 8)
    cold = tiny_data.cold_items
    prior = items[cold].clone()
    pairs = pd.DataFrame({"user": np.repeat(np.arange(5), len(cold)), "item": np.tile(cold, 5)})
    calls = []

    def validate(table):  # scores the prior best, anything else worse
        calls.append(1)
        return -float((table[cold] - prior).abs().sum())

    result = fit_cold_rows(users, items, prior, cold, pairs, FastParams(steps=20, lr=1.0, pull=0.0, eval_every=2,
                                                                        patience=3), validate=validate)
    assert result.best_step == 0 and torch.equal(result.item_emb[cold], prior)
    assert len(calls) == 4  # step 0, then three worse checks: patience reached


def test_update_does_not_resume_another_inputs_checkpoint(tmp_path):
    """A changed simulation makes the retrain's checkpoint foreign: it restarts, it does not resume."""
    project = write_project(tmp_path)
    base = [*FREE, "--backbone.model=mf", "--update.mode=retrain", "--update.epochs=4", "--update.eval_every=2"]
    run_cli(project, *base)
    cfg = run_cli(project, *[o for o in base if not o.startswith("--refiner.judge")], "--refiner.judge=cosine")
    run = Run(cfg)
    record = run.manifest["stages"]["update"]
    accepted = pd.read_parquet(run.dir / "simulate" / "simulated.parquet")["accepted"].sum()
    assert record["accepted_pairs"] == accepted
    assert [h["epoch"] for h in record["history"]] == [0, 1, 2, 3, 4]  # trained anew, not resumed at 4


def test_precision_counts_only_the_candidates_of_the_parts_items():
    """A perfect judge on cold-test items has precision 1, whatever the cold-val items' candidates are."""
    test_truth = np.array([[0, 10], [1, 10], [2, 11]])
    val_truth = np.array([[3, 20]])
    accepted = pd.DataFrame({"user": [0, 1, 2, 3], "item": [10, 10, 11, 20]})
    assert funnel_coverage(accepted, test_truth) == {"pairs": 3, "precision": 1.0, "coverage": 1.0}
    assert funnel_coverage(accepted, val_truth) == {"pairs": 1, "precision": 1.0, "coverage": 1.0}


def test_normalized_filter_ranks_users_by_cosine(tmp_path):
    cfg = run_cli(write_project(tmp_path), "--stages=[prepare, train, filter]", "--filter.towers=collab",
                  "--filter.collab_source=knn", "--filter.k=3", "--filter.normalize_users=true", "--backbone.model=mf")
    run = Run(cfg)
    candidates = pd.read_parquet(run.dir / "filter" / "candidates.parquet")
    user_emb, item_emb = load_backbone(run.dir / "backbone", run.data).embeddings()
    prior = content_prior(run, user_emb, item_emb)  # the knn tower's item vectors (same k: prior_k)
    cosine = torch.nn.functional.normalize(user_emb, dim=1) @ prior.T
    expected = cosine.topk(3, dim=0).indices.T  # (cold items, 3)
    got = candidates.sort_values(["item", "rank"])["user"].to_numpy().reshape(-1, 3)
    order = np.argsort(run.data.cold_items)
    assert (got == expected.numpy()[order]).all()


def test_a_missing_or_corrupted_artifact_is_redone(tmp_path):
    project = write_project(tmp_path)
    cfg = run_cli(project, *FREE, "--backbone.model=mf", "--update.steps=10")
    run_dir = Run(cfg).dir
    (run_dir / "filter" / "candidates.parquet").unlink()
    (run_dir / "update" / "embeddings.safetensors").write_bytes(b"not a safetensors file")
    run_cli(project, *FREE, "--backbone.model=mf", "--update.steps=10")
    assert len(pd.read_parquet(run_dir / "filter" / "candidates.parquet")) > 0
    assert updated_embeddings(Run(cfg))[1].shape[0] == Run(cfg).data.n_items
    # the filter was redone, so the stages after it were too: the simulation holds the new candidates
    candidates, simulated = run_dir / "filter" / "candidates.parquet", run_dir / "simulate" / "simulated.parquet"
    assert simulated.stat().st_mtime_ns > candidates.stat().st_mtime_ns


def test_the_candidate_depth_is_chosen_on_validation(tmp_path):
    """update.k_grid: one update per depth on the accepted pairs among each item's top-k candidates;
    the one kept is the best on cold validation, and it is what the run saved and evaluates."""
    cfg = run_cli(write_project(tmp_path), *FREE, "--backbone.model=mf", "--update.steps=20", "--update.eval_every=5",
                  "--update.k_grid=[2, 8, 4]")
    run = Run(cfg)
    record = run.manifest["stages"]["update"]
    searched = record["k_search"]
    assert [s["k"] for s in searched] == [2, 4, 8]
    candidates = pd.read_parquet(run.dir / "filter" / "candidates.parquet")
    for s in searched:  # every item has 8 candidates, all accepted (judge: all)
        assert s["pairs"] == int((candidates["rank"] < s["k"]).sum())
    best = max(searched, key=lambda s: s["best_val"])
    assert record["k"] == best["k"] and record["best_val"] == best["best_val"]
    assert val_score(run, *updated_embeddings(run), "cold") == pytest.approx(record["best_val"], abs=1e-6)
    with pytest.raises(AssertionError, match=r"update\.k_grid \[2, 9\]: every depth must be <= filter\.k=8"):
        (tmp_path / "deep").mkdir()
        run_cli(write_project(tmp_path / "deep"), *FREE, "--update.k_grid=[2, 9]")


def test_a_scorer_in_the_backbones_user_space_is_projected_exactly():
    from coldllm.funnel.update import to_backbone

    gen = torch.Generator().manual_seed(0)
    users, mix, items = (torch.randn(s, generator=gen, dtype=torch.float64) for s in ((50, 4), (4, 4), (3, 4)))
    rows = items @ to_backbone(users, users @ mix).T  # the other scorer's users: a linear map of these
    # exact up to the tiny ridge that keeps a rank-deficient user matrix solvable
    torch.testing.assert_close(users @ rows.T, (users @ mix) @ items.T, rtol=1e-4, atol=1e-4)
    assert rows.shape == (3, 4)


def test_the_best_prior_is_chosen_on_validation_and_is_where_the_update_starts(tmp_path):
    cfg = run_cli(write_project(tmp_path), FUNNEL, "--filter.towers=onepass", "--filter.k=8", "--refiner.judge=all",
                  "--filter.onepass={epochs: 2, hidden: 16}", "--update.prior=best", "--update.prior_k=5",
                  "--update.steps=10", "--update.eval_every=5")
    run = Run(cfg)
    record = run.manifest["stages"]["update"]
    scores = record["prior_search"]
    assert set(scores) == {"knn", "filter", "blend-0.25", "blend-0.5", "blend-0.75"}
    assert record["prior"] == max(scores, key=scores.get)
    assert record["history"][0]["val"] == pytest.approx(scores[record["prior"]], abs=1e-9)  # step 0 is that prior
    assert (run.dir / "filter" / "prior.safetensors").exists()


def test_popular_items_take_deeper_candidate_lists():
    from coldllm.funnel.update import item_depths

    # predictions 1, 2, 3 (mean 2): a mean depth of 4 gives 2, 4, 6; the cap and the floor of 1 hold
    assert item_depths(np.array([1.0, 2.0, 3.0]), 4, cap=10).tolist() == [2, 4, 6]
    assert item_depths(np.array([0.0, 1.0, 11.0]), 4, cap=10).tolist() == [1, 1, 10]
    # a later item is scaled by the run's own mean, not by itself: 3 over a mean of 2 gives 6
    assert item_depths(np.array([3.0]), 4, cap=10, mean=2.0).tolist() == [6]


def test_per_item_depths_keep_each_items_top_candidates(tmp_path):
    from coldllm.funnel.update_stage import within_depth

    candidates = pd.DataFrame({"item": [7] * 4 + [9] * 4, "user": [1, 2, 3, 4, 5, 6, 7, 8], "rank": [0, 1, 2, 3] * 2})
    candidates.to_parquet(tmp_path / "c.parquet")
    pairs = candidates[["user", "item"]].assign(accepted=True)
    ranks = pd.read_parquet(tmp_path / "c.parquet")
    kept = within_depth(pairs, ranks, pd.Series({7: 1, 9: 3}))
    assert sorted(zip(kept["item"], kept["user"])) == [(7, 1), (9, 5), (9, 6), (9, 7)]
    assert len(within_depth(pairs, ranks, 2)) == 4


def test_popularity_depths_run_through_the_update(tmp_path):
    cfg = run_cli(write_project(tmp_path), *FREE, "--backbone.model=mf", "--update.steps=10", "--update.eval_every=5",
                  "--update.k_grid=[2, 4]", "--update.depth=popularity")
    run = Run(cfg)
    record = run.manifest["stages"]["update"]
    popular = predicted_popularity(run)
    assert record["predicted_popularity_mean"] == pytest.approx(float(popular.mean()))
    # each item's pairs: its top item_depths(...) candidates (all accepted: judge all, 8 each)
    for s in record["k_search"]:
        assert s["pairs"] == int(np.minimum(item_depths(popular, s["k"], cap=8), 8).sum())
    # the prediction is the content-KNN mean of warm training degrees, as the prior's rule
    degree = np.asarray(run.data.matrix("train").sum(0)).ravel()
    assert popular.min() >= degree[run.data.warm_items].min() and popular.max() <= degree.max()


def test_a_gain_is_measured_in_standard_errors_of_the_paired_difference():
    from coldllm.funnel.update_stage import paired_gain_z

    # differences 1, 2, 3: mean 2, sd 1, se 1/sqrt(3)
    assert paired_gain_z(np.array([1.0, 2.0, 3.0]), np.zeros(3)) == pytest.approx(2 * np.sqrt(3))
    assert paired_gain_z(np.ones(4), np.ones(4)) == 0.0
    assert paired_gain_z(np.full(3, 2.0), np.ones(3)) == np.inf


def test_split_validation_cannot_gain_by_moving_test_items(tmp_path):
    """Cold validation over the validation part's own items is blind to the test items' rows; over every
    cold item, pushing the test items down raises it (the trap a choice on validation falls into)."""
    from coldllm.funnel.update_stage import cold_validation

    cfg = run_cli(write_project(tmp_path), "--stages=[prepare, train]", "--backbone.model=mf")
    run = Run(cfg)
    user_emb, item_emb = load_backbone(run.dir / "backbone", run.data).embeddings()
    test_items = np.unique(run.data.matrix("cold_test").tocoo().col)
    sunk = item_emb.clone()
    sunk[test_items] = -100 * user_emb.mean(0)  # every user scores them below any other item
    split = cold_validation(run, user_emb, "cpu")
    np.testing.assert_array_equal(split(sunk), split(item_emb))
    run.cfg.update.val_candidates = "cold"
    every = cold_validation(run, user_emb, "cpu")
    assert every(sunk).mean() > every(item_emb).mean()
    assert split(item_emb).mean() == pytest.approx(val_score(run, user_emb, item_emb, "cold"), abs=1e-9)


@pytest.mark.parametrize("min_gain_se", [0.0, 1e9])
def test_the_prior_is_kept_unless_the_update_beats_it_beyond_noise(tmp_path, min_gain_se):
    cfg = run_cli(write_project(tmp_path), *FREE, "--backbone.model=mf", "--update.steps=30", "--update.eval_every=5",
                  f"--update.min_gain_se={min_gain_se}", "--update.lr=0.05")
    run = Run(cfg)
    record = run.manifest["stages"]["update"]
    searched = max(record["history"], key=lambda h: h["val"])
    assert searched["step"] > 0, "this setting's update must find a better state on validation"
    kept = updated_embeddings(run)
    assert val_score(run, *kept, "cold") == pytest.approx(record["best_val"], abs=1e-6)
    if min_gain_se == 0:
        assert record["best_step"] == searched["step"] and record["best_val"] == searched["val"]
        assert record["gain_z"] > 0
    else:  # no gain is that large: the saved rows are the prior, and the record says what was searched
        assert record["best_step"] == 0 and record["searched_step"] == searched["step"]
        assert record["best_val"] == pytest.approx(record["history"][0]["val"], abs=1e-9)
        user_emb, item_emb = load_backbone(run.dir / "backbone", run.data).embeddings()
        prior = content_prior(run, user_emb, item_emb)
        torch.testing.assert_close(kept[1][run.data.cold_items], prior)


def test_the_saved_choices_remake_the_runs_cold_rows(tmp_path):
    """update/update.json holds what the stage chose (prior, depth, steps); applied to the run's own
    cold items it gives the rows the stage saved, which is what the service does for a new item."""
    from coldllm.funnel.fitted_update import FittedUpdate
    from coldllm.funnel.update_stage import within_depth

    cfg = run_cli(write_project(tmp_path), *FREE, "--backbone.model=mf", "--update.steps=30", "--update.eval_every=5",
                  "--update.min_gain_se=0", "--update.k_grid=[4, 8]", "--update.lr=0.05")
    run = Run(cfg)
    record = run.manifest["stages"]["update"]
    fitted = FittedUpdate.load(run.layout.update_choices)
    assert fitted.params.steps == record["best_step"] > 0 and fitted.depth == record["k"] and fitted.prior == "knn"
    user_emb, item_emb = load_backbone(run.dir / "backbone", run.data).embeddings()
    simulated = pd.read_parquet(run.dir / "simulate" / "simulated.parquet")
    ranks = pd.read_parquet(run.dir / "filter" / "candidates.parquet")
    pairs = within_depth(simulated[simulated["accepted"]], ranks, fitted.depth)
    rows = fitted.apply(user_emb, item_emb, content_prior(run, user_emb, item_emb), run.data.cold_items, pairs)
    torch.testing.assert_close(rows, updated_embeddings(run)[1][run.data.cold_items])
    (run.layout.update_choices).write_text("{not json")
    with pytest.raises(Exception, match=r"update\.json: damaged update choices"):
        FittedUpdate.load(run.layout.update_choices)


def test_blind_validation_ranks_what_the_test_ranks_against_without_the_test_items():
    """Cold items 2-5: validation names 2 and 3, test names 4, nobody took 5. split ranks the
    validation items, blind adds the item nobody took (the test ranks against it too), cold all."""
    import scipy.sparse as sp
    from types import SimpleNamespace

    from coldllm.funnel.update_stage import validation_candidates

    def part(items):
        return sp.csr_matrix((np.ones(len(items)), (np.zeros(len(items), int), items)), shape=(1, 6))

    data = SimpleNamespace(cold_items=np.array([2, 3, 4, 5]),
                           matrix=lambda name: {"cold_val": part([2, 3, 3]), "cold_test": part([4])}[name])
    assert validation_candidates(data, "split").tolist() == [2, 3]
    assert validation_candidates(data, "blind").tolist() == [2, 3, 5]
    assert validation_candidates(data, "cold").tolist() == [2, 3, 4, 5]
