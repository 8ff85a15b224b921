"""Every cold-start method fits on tiny data in seconds and gives finite, well-shaped scores."""

import numpy as np
import pytest
import torch

from coldllm.backbones import build_backbone, train_backbone
from coldllm.baselines import METHODS, build_method
from coldllm.baselines.aldi import frequency_weights
from coldllm.baselines.runner import fit_and_evaluate, make_context
from coldllm.config import ConfigError

FAST = {"epochs": 3, "batch_size": 128, "hidden": 32}


def trained_context(raw, marked, folder, rng):
    """The fitting context of a tiny data set on a trained MF backbone. Its content vectors are noise
    but for coordinate 0, which says whether ``marked(item ids)`` holds, as a title would show a topic.
    Returns the context and the mark of each item."""
    from coldllm.config import RunConfig
    from coldllm.data import build_dataset

    cfg = RunConfig(seed=1)
    cfg.data.split, cfg.data.seed = "random", 7
    data = build_dataset(raw, cfg.data)
    cfg.backbone.model, cfg.backbone.dim, cfg.backbone.lr = "mf", 16, 0.01
    cfg.backbone.batch_size, cfg.backbone.epochs, cfg.backbone.eval_every = 64, 30, 5
    backbone = build_backbone(cfg.backbone, data.matrix("train"), seed=1)
    train_backbone(backbone, data, cfg, folder)
    mark = marked(data.item_ids)
    content = rng.normal(size=(data.n_items, 12)).astype(np.float32)
    content[:, 0] += 3.0 * (2 * mark - 1)
    return make_context(data, backbone, content, torch.device("cpu"), seed=0, ks=[10]), mark


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    from conftest import community_raw

    # content: the community shows in the text vector (plus noise)
    community = lambda ids: np.array([int(i[1:]) % 2 for i in ids])  # noqa: E731
    return trained_context(community_raw(n_users=60, n_items=80), community, tmp_path_factory.mktemp("bb"),
                           np.random.default_rng(0))[0]


def trained_params(name):
    allowed = set(vars(METHODS[name].Params()))
    return {k: v for k, v in FAST.items() if k in allowed}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_fits_and_scores(name, ctx):
    method, report = fit_and_evaluate(name, trained_params(name), ctx, splits=("test",), ks=[10])
    users = torch.arange(ctx.data.n_users)
    scores = method.scorer()(users)
    assert scores.shape == (ctx.data.n_users, ctx.data.n_items)
    assert torch.isfinite(scores).all()
    assert set(report["test"]) == {"overall", "cold", "warm"}
    if method.keeps_warm:  # warm items keep exactly the backbone's scores
        warm = ctx.warm
        torch.testing.assert_close(scores[:, warm], (ctx.user_emb @ ctx.item_emb.T)[:, warm])


@pytest.mark.parametrize("name", [n for n in sorted(METHODS) if n != "random"])
def test_content_methods_beat_random_on_cold_items(name, ctx):
    params = {**trained_params(name), "epochs": 15} if "epochs" in trained_params(name) else {}
    method = build_method(name, params).fit(ctx)
    cold = ctx.cold
    scores = method.scorer()(torch.arange(ctx.data.n_users))[:, cold]
    # community AUC restricted to cold items: content carries the community, so > chance
    group = torch.tensor([int(i[1:]) % 2 for i in ctx.data.item_ids])[cold]
    ugroup = torch.tensor([int(u[1:]) % 2 for u in ctx.data.user_ids])
    own = group[None, :] == ugroup[:, None]
    wins = [(s[o][:, None] > s[~o][None, :]).float().mean() for s, o in zip(scores, own)]
    assert float(torch.stack(wins).mean()) > 0.7


def test_unknown_param_is_named():
    with pytest.raises(ConfigError, match="aldi: unknown config key 'baseline.params.alhpa'"):
        build_method("aldi", {"alhpa": 0.5})


def test_frequency_weights_by_hand():
    import scipy.sparse as sp

    # user 0 saw items 0 and 1, user 1 saw item 0: f = [1/2 + 1, 1/2, 0]; mean over seen = 1
    train = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0]], dtype=np.float32))
    w = frequency_weights(train, max_weight=4.0)
    np.testing.assert_allclose(w, np.tanh(4.0 * np.array([1.5, 0.5, 0.0])), rtol=1e-6)


def test_deepmusic_regression_beats_the_mean_on_warm_items(ctx):
    """When content determines the embedding, the regressor must learn the map, not the mean item."""
    import dataclasses

    gen = torch.Generator().manual_seed(0)
    content = ctx.item_emb @ torch.randn(ctx.item_emb.shape[1], 24, generator=gen)  # a linear view
    informative = dataclasses.replace(ctx, content=content / content.norm(dim=1, keepdim=True).mean(),
                                      validator=None)  # judge the fit itself, not early stopping
    method = build_method("deepmusic", {"epochs": 60, "batch_size": 64, "hidden": 64, "lr": 0.01})
    method.fit(informative)
    warm = ctx.warm
    target = ctx.item_emb[warm]
    with torch.no_grad():
        pred = method.net(informative.content[warm])
    mse = (pred - target).pow(2).mean()
    baseline = (target - target.mean(0)).pow(2).mean()
    assert mse < 0.3 * baseline, (float(mse), float(baseline))


def test_gar_losses_by_hand():
    from coldllm.baselines.gar import generator_loss, recommender_loss

    def nll(x):  # -log sigmoid(x)
        return float(np.log1p(np.exp(-x)))

    s_real, s_neg, s_fake = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 2.0])
    # margins: 2 - 0.9*1 - 0.1*0 = 1.1 and 0 - 0.9*1 - 0.1*2 = -1.1
    expected = (nll(1.1) + nll(-1.1)) / 2
    assert float(recommender_loss(s_real, s_neg, s_fake, beta=0.9)) == pytest.approx(expected, rel=1e-6)
    real, fake = torch.tensor([[1.0, -1.0], [0.0, 0.0]]), torch.tensor([[0.5, 0.0], [0.0, 2.0]])
    # adversarial: margins fake - real = -2 and 2; L1 summed per row: 1.5 and 2, mean 1.75
    expected = 0.9 * (nll(-2.0) + nll(2.0)) / 2 + 0.1 * 1.75
    assert float(generator_loss(s_real, s_fake, real, fake, alpha=0.1)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_fit_does_not_depend_on_what_ran_before(name, ctx):
    """A method's fit depends on the run's seed only, not on the global RNG state left by earlier
    fits (the benchmark fits many methods in one process)."""
    params = trained_params(name)
    scores = []
    for burn in (1, 1000):
        torch.rand(burn)  # another earlier job consumed a different amount of randomness
        scores.append(build_method(name, params).fit(ctx).scorer()(torch.arange(ctx.data.n_users)))
    torch.testing.assert_close(scores[0], scores[1])


@pytest.fixture(scope="module")
def popular_ctx(tmp_path_factory):
    """Every user takes most of a few popular items and a handful of others; the content says which
    items are popular. Positives are then mostly popular and sampled negatives mostly not."""
    import pandas as pd

    from coldllm.data.readers import RawData

    rng = np.random.default_rng(0)
    n_users, n_items, n_popular = 80, 100, 20
    rows = [(u, i) for u in range(n_users) for i in range(n_popular) if rng.random() < 0.7]
    rows += [(u, int(i)) for u in range(n_users) for i in rng.choice(np.arange(n_popular, n_items), 3, replace=False)]
    inter = pd.DataFrame({"user": [f"u{u}" for u, _ in rows], "item": [f"i{i}" for _, i in rows]})
    items = pd.DataFrame({"item": [f"i{i}" for i in range(n_items)], "text": [f"item {i}" for i in range(n_items)]})
    popular = lambda ids: np.array([int(i[1:]) < n_popular for i in ids])  # noqa: E731
    return trained_context(RawData(interactions=inter, items=items), popular, tmp_path_factory.mktemp("bb"), rng)


@pytest.mark.parametrize("name", ["aldi", "dropoutnet", "gar"])
def test_students_with_batch_norm_learn_what_sets_positives_apart(name, popular_ctx):
    """A tower with BatchNorm must see a step's positives and negatives in one pass: normalised apart,
    each batch is centred on itself, and a content feature that only says "popular" (what sets
    positives apart from sampled negatives) is erased in training, so the cold items go unranked."""
    ctx, popular = popular_ctx
    cold = ctx.cold.numpy()
    assert popular[cold].any() and not popular[cold].all()  # the split left both kinds cold
    method = build_method(name, {"epochs": 10, "batch_size": 128, "hidden": 32}).fit(ctx)
    scores = method.scorer()(torch.arange(ctx.data.n_users))[:, ctx.cold]
    hot = torch.from_numpy(popular[cold])
    auc = (scores[:, hot][:, :, None] > scores[:, ~hot][:, None, :]).float().mean()
    assert float(auc) > 0.9, float(auc)
