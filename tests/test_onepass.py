"""The one-pass simulator: its users are scored in the space it searches, it learns who likes a
text, and its top-K go through the same update as the pairwise funnel's accepted pairs."""

import contextlib
import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from coldllm.cli import app
from coldllm.config import ConfigError
from coldllm.funnel.filter import top_users
from coldllm.funnel.onepass import ItemTargets, OnePass, OnePassParams
from coldllm.funnel.text_encoder import TextEncoder, TextEncoderSpec
from test_baselines import ctx  # noqa: F401  (the fixture: tiny communities, an MF backbone, topical text)
from test_cli import write_project


def test_search_vectors_reproduce_the_head_scores(ctx):  # noqa: F811
    sim = OnePass(OnePassParams(epochs=2, batch_size=128, hidden=16)).fit(ctx, ctx.content.cpu().numpy())
    emb = sim.embeddings(ctx.cold)
    with torch.no_grad():
        head = sim.scorer()(torch.arange(ctx.data.n_users))[:, ctx.cold].cpu().numpy()
    np.testing.assert_allclose(emb.users @ emb.cold_items.T, head, rtol=1e-4, atol=1e-4)
    top = top_users(emb, 5)
    best = np.argsort(-head, axis=0)[:5].T  # per cold item, its 5 best users by the head itself
    for row, item in enumerate(emb.cold_ids):
        assert set(top[top["item"] == item]["user"]) == set(best[row])


def test_the_degree_penalty_lowers_heavy_users_scores_in_the_searched_vectors(ctx):  # noqa: F811
    """The penalty is strength x the head's score spread x log(1 + training degree), taken off each
    user's bias coordinate: the searched scores are the head's minus it, and the top-K lean lighter."""
    from coldllm.funnel.filters import degree_penalty

    sim = OnePass(OnePassParams(epochs=2, batch_size=128, hidden=16)).fit(ctx, ctx.content.cpu().numpy())
    degree = np.asarray(ctx.data.matrix("train").sum(1)).ravel()
    penalty = degree_penalty(sim, ctx, 0.5)
    with torch.no_grad():
        spread = float(sim.head(sim.item_out[ctx.warm]).std())
    np.testing.assert_allclose(penalty, 0.5 * spread * np.log1p(degree), rtol=1e-5)
    plain, penalised = sim.embeddings(ctx.cold), sim.embeddings(ctx.cold)
    penalised.users[:, -1] -= degree_penalty(sim, ctx, 3.0)
    np.testing.assert_allclose(penalised.users @ penalised.cold_items.T,
                               plain.users @ plain.cold_items.T - degree_penalty(sim, ctx, 3.0)[:, None], atol=1e-4)
    lighter = degree[top_users(penalised, 5)["user"]].mean()
    assert lighter < degree[top_users(plain, 5)["user"]].mean()


def test_head_starts_as_the_backbone_users(ctx):  # noqa: F811
    sim = OnePass(OnePassParams(epochs=1, lr=1e-12, batch_size=128, hidden=16)).fit(ctx, ctx.content.cpu().numpy())
    torch.testing.assert_close(sim.head.weight.detach(), ctx.user_emb, atol=1e-6, rtol=0)


@pytest.mark.parametrize("batching", ["pairs", "items"])
def test_simulated_users_share_the_items_community(ctx, batching):  # noqa: F811
    """Items and users come in two communities that the text reveals: the users simulated for a cold
    item must be of its community, far above the half a text-blind pick would get."""
    params = OnePassParams(epochs=12, batch_size=128, hidden=32, batching=batching, batch_items=8, lr=3e-3)
    sim = OnePass(params).fit(ctx, ctx.content.cpu().numpy())
    top = top_users(sim.embeddings(ctx.cold), 5)
    user_group = np.array([int(u[1:]) % 2 for u in ctx.data.user_ids])
    item_group = np.array([int(i[1:]) % 2 for i in ctx.data.item_ids])
    assert (user_group[top["user"]] == item_group[top["item"]]).mean() > 0.85


def test_an_item_batch_gives_the_loss_of_its_pairs(ctx):  # noqa: F811
    """Scoring an item once against every user, its training users the targets, is the pair loss
    (mean cross-entropy and alignment over the same pairs), not an approximation of it."""
    sim = OnePass(OnePassParams(epochs=1, hidden=16, align=0.7, reg=0.0))
    sim._build(ctx, ctx.content.cpu().numpy())
    targets = ItemTargets(ctx)
    items = torch.as_tensor(targets.items[[0, 3, 5]])
    z = sim.net(sim._text[items])
    batched = sim._item_loss(z, items, targets, ctx)
    train = ctx.data.matrix("train").tocsc()
    pairs = [(int(i), int(u)) for i in items for u in train.indices[train.indptr[i]:train.indptr[i + 1]]]
    pos = torch.tensor([i for i, _ in pairs])
    users = torch.tensor([u for _, u in pairs])
    zp = sim.net(sim._text[pos])
    by_pair = (torch.nn.functional.cross_entropy(sim.head(zp), users)
               + 0.7 * (zp - ctx.item_emb[pos]).pow(2).sum(1).mean())
    assert len(pairs) == targets.pairs(items) > 3
    torch.testing.assert_close(batched, by_pair, rtol=1e-5, atol=1e-6)


def test_onepass_runs_through_the_funnel_stages(tmp_path, tiny_llm_dir):
    cfg = str(write_project(tmp_path))
    result = CliRunner().invoke(app, [
        "run", "-c", cfg, "--stages=[prepare, train, filter, simulate, update]", f"--filter.text_model={tiny_llm_dir}",
        "--filter.towers=onepass", "--filter.k=4", "--filter.onepass={epochs: 2, hidden: 16}",
        "--refiner.judge=all", "--update.steps=10"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    candidates = pd.read_parquet(run_dir / "filter" / "candidates.parquet")
    assert candidates.groupby("item")["user"].nunique().eq(4).all()
    simulated = pd.read_parquet(run_dir / "simulate" / "simulated.parquet")
    assert simulated["accepted"].all() and len(simulated) == len(candidates)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["stages"]["filter"]["onepass_history"] and manifest["stages"]["update"]["status"] == "done"
    assert set(json.loads((run_dir / "metrics_coldllm_test.json").read_text())) == {"overall", "cold", "warm"}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Two communities whose items differ only by one word, "graph" or "protein", in a text of
    filler; the tiny model reads both words through the same input embedding, as it would two new
    names it never saw: frozen, its states cannot tell the communities apart."""
    from coldllm.backbones import build_backbone, train_backbone
    from coldllm.baselines.runner import make_context
    from coldllm.config import RunConfig
    from coldllm.data import build_dataset
    from conftest import community_raw, make_tiny_llm

    tmp = tmp_path_factory.mktemp("planted")
    cfg = RunConfig(seed=1)
    cfg.data.split, cfg.data.seed = "random", 7
    raw = community_raw(n_users=60, n_items=80)
    group = np.array([int(i[1:]) % 2 for i in raw.items["item"]])
    raw.items["text"] = [("graph " if g == 0 else "protein ") + " ".join(["the"] * 4) for g in group]
    data = build_dataset(raw, cfg.data)
    cfg.backbone.model, cfg.backbone.dim, cfg.backbone.lr = "mf", 16, 0.01
    cfg.backbone.batch_size, cfg.backbone.epochs, cfg.backbone.eval_every = 64, 30, 5
    backbone = build_backbone(cfg.backbone, data.matrix("train"), seed=1)
    train_backbone(backbone, data, cfg, tmp / "backbone")
    ctx = make_context(data, backbone, np.zeros((data.n_items, 4), np.float32), torch.device("cpu"), seed=0, ks=[10])
    model, tokenizer = make_tiny_llm()
    with torch.no_grad():
        embed = model.model.embed_tokens.weight
        embed[tokenizer.convert_tokens_to_ids("protein")] = embed[tokenizer.convert_tokens_to_ids("graph")]
    model.save_pretrained(tmp / "llm")
    tokenizer.save_pretrained(tmp / "llm")
    return ctx, tmp / "llm"


def fit_text(ctx, folder, tune):
    spec = TextEncoderSpec(model=str(folder), tune=tune, lora_r=4, lora_targets=("embed_tokens", "q_proj", "v_proj"))
    encoder = TextEncoder(spec)
    params = OnePassParams(epochs=6, hidden=16, batch_items=8, lr=0.01, text_lr=0.01, patience=6, encoder="text")
    return OnePass(params).fit(ctx, None, encoder, list(ctx.data.item_text)), encoder


def test_the_tuned_language_model_learns_a_rule_the_frozen_one_cannot(planted):
    ctx, folder = planted
    frozen, _ = fit_text(ctx, folder, "frozen")
    tuned, encoder = fit_text(ctx, folder, "lora")
    frozen_best = max(h["val_cold"] for h in frozen.history)
    tuned_best = max(h["val_cold"] for h in tuned.history)
    assert tuned_best > frozen_best + 0.08, (frozen.history, tuned.history)
    # what the frozen model sees: every item the same vector, so every cold item the same scores
    assert torch.allclose(frozen._text[ctx.cold], frozen._text[ctx.cold][:1].expand_as(frozen._text[ctx.cold]))
    # and the tuned one's simulated users are of the item's community
    top = top_users(tuned.embeddings(ctx.cold), 5)
    user_group = np.array([int(u[1:]) % 2 for u in ctx.data.user_ids])
    item_group = np.array([int(i[1:]) % 2 for i in ctx.data.item_ids])
    assert (user_group[top["user"]] == item_group[top["item"]]).mean() > 0.85


def test_a_saved_text_encoder_encodes_as_it_did(planted, tmp_path):
    ctx, folder = planted
    tuned, encoder = fit_text(ctx, folder, "lora")
    encoder.save(tmp_path / "encoder")
    again = TextEncoder.load(tmp_path / "encoder")
    texts = list(ctx.data.item_text[:7]) + ["graph the", "protein"]
    np.testing.assert_allclose(again.encode(texts), encoder.encode(texts), atol=1e-6)
    # and so the one-pass scores of a new text are the same through either
    z = lambda enc: tuned.net(torch.nn.functional.normalize(torch.as_tensor(enc.encode(texts)), dim=1))  # noqa: E731
    torch.testing.assert_close(tuned.head(z(again)), tuned.head(z(encoder)))


def test_a_filter_refitted_without_a_text_encoder_leaves_none_behind(tmp_path, tiny_llm_dir):
    """The service reads filter/text_encoder/ when it is there: a run whose filter is fitted again
    as another filter must not keep the one-pass encoder of the one before."""
    cfg = str(write_project(tmp_path))
    base = ["run", "-c", cfg, "--stages=[prepare, train, filter]", "--filter.k=4"]
    text = f"--filter.onepass={{epochs: 1, hidden: 16, encoder: text, text_model: '{tiny_llm_dir}', lora_r: 2}}"
    assert CliRunner().invoke(app, [*base, "--filter.towers=onepass", text]).exit_code == 0
    folder = tmp_path / "runs" / "tiny" / "filter" / "text_encoder"
    assert (folder / "text_encoder.json").is_file()
    # another filter altogether (the knn collaborative tower) fitted in the same run folder
    result = CliRunner().invoke(app, [*base, "--filter.towers=collab", "--filter.collab_source=knn", text])
    assert result.exit_code == 0, result.output
    assert not folder.exists()


def test_a_standardized_encoder_centres_the_catalogue_and_saves_its_statistics(planted, tmp_path):
    ctx, folder = planted
    spec = TextEncoderSpec(model=str(folder), tune="lora", lora_r=4, standardize=True)
    encoder = TextEncoder(spec)
    params = OnePassParams(epochs=1, hidden=16, batch_items=8, encoder="text")
    OnePass(params).fit(ctx, None, encoder, list(ctx.data.item_text))
    assert encoder.center is not None and encoder.scale.shape == encoder.center.shape == (encoder.width,)
    # the statistics are the catalogue's before training: the untrained states, centred, are 0 on average
    fresh = TextEncoder(TextEncoderSpec(model=str(folder), tune="lora", lora_r=4))
    raw = fresh.encode_ids(fresh.tokenize(list(ctx.data.item_text)))
    torch.testing.assert_close(encoder.center, raw.mean(0))
    encoder.save(tmp_path / "encoder")
    again = TextEncoder.load(tmp_path / "encoder")
    texts = list(ctx.data.item_text[:5]) + ["graph"]
    np.testing.assert_allclose(again.encode(texts), encoder.encode(texts), atol=1e-6)


def test_an_end_to_end_fit_killed_after_an_epoch_resumes_to_the_same_model(planted, tmp_path):
    ctx, folder = planted
    params = OnePassParams(epochs=4, hidden=16, batch_items=8, lr=0.01, text_lr=0.01, patience=4, encoder="text")
    spec = TextEncoderSpec(model=str(folder), tune="lora", lora_r=4)
    whole = OnePass(params).fit(ctx, None, TextEncoder(spec), list(ctx.data.item_text))

    path, real = tmp_path / "onepass.safetensors", ctx.validator.evaluate
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # killed while validating the third epoch
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    ctx.validator.evaluate = dying
    try:
        with pytest.raises(KeyboardInterrupt):
            OnePass(params).fit(ctx, None, TextEncoder(spec), list(ctx.data.item_text), path, "same")
    finally:
        ctx.validator.evaluate = real
    assert path.exists()
    # another fit's checkpoint is never taken: a different fingerprint starts from the first epoch
    shutil.copy(path, tmp_path / "copy.safetensors")
    other = OnePass(dataclasses.replace(params, epochs=1)).fit(ctx, None, TextEncoder(spec), list(ctx.data.item_text),
                                                               tmp_path / "copy.safetensors", "other")
    assert [h["epoch"] for h in other.history] == [1]
    calls["n"] = -10 ** 6  # counting, never dying
    ctx.validator.evaluate = dying
    try:
        resumed = OnePass(params).fit(ctx, None, TextEncoder(spec), list(ctx.data.item_text), path, "same")
    finally:
        ctx.validator.evaluate = real
    # the two epochs written were not trained again: only the later ones were validated, and what
    # they cost is counted as the earlier session's
    assert calls["n"] + 10 ** 6 == len(whole.history) - 2
    assert whole.earlier_seconds == 0.0
    assert resumed.earlier_seconds > 0
    assert resumed.earlier_seconds == pytest.approx(sum(h["seconds"] for h in resumed.history[:2]))
    assert [h["epoch"] for h in resumed.history] == [h["epoch"] for h in whole.history]
    np.testing.assert_allclose([h["val_cold"] for h in resumed.history], [h["val_cold"] for h in whole.history],
                               atol=1e-6)
    torch.testing.assert_close(resumed.item_out, whole.item_out, atol=1e-5, rtol=1e-5)


def top_layer_encoder(folder, **kw) -> TextEncoder:
    return TextEncoder(TextEncoderSpec(model=str(folder), tune="lora", lora_r=4, lora_layers=1, **kw))


def test_adapters_on_the_top_layer_read_kept_states_as_the_whole_model_would(planted, monkeypatch):
    ctx, folder = planted
    encoder = top_layer_encoder(folder)
    learning = {name.split("layers.")[1].split(".")[0] for name, w in encoder.model.named_parameters() if w.requires_grad}
    assert learning == {"1"}  # the tiny model's two layers: only the top one has adapters
    torch.manual_seed(3)
    with torch.no_grad():  # adapters that change the states (LoRA's B starts at zero)
        for w in encoder.trainable():
            w.normal_(0, 0.3)
    texts = list(ctx.data.item_text[:9]) + ["graph", "protein the the", "the graph the the the the the"]
    ids = encoder.tokenize(texts)
    whole = encoder.encode_ids(ids, batch_size=4)
    with encoder.frozen_states_kept(ids):
        def no_whole_pass(*args, **kwargs):
            raise AssertionError("a kept text went through the whole model")

        monkeypatch.setattr("coldllm.funnel.text_encoder.last_states", no_whole_pass)
        kept = encoder.encode_ids(ids, batch_size=4)  # other batches, other padding
        encoder(ids[:3]).pow(2).sum().backward()
    torch.testing.assert_close(kept, whole, atol=1e-5, rtol=1e-5)
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in encoder.trainable())
    assert not encoder._kept  # let go once the fit is over


def test_a_fit_from_kept_states_is_the_fit_of_the_whole_model(planted, monkeypatch):
    ctx, folder = planted
    params = OnePassParams(epochs=2, hidden=16, batch_items=8, lr=0.01, text_lr=0.01, encoder="text")
    kept = OnePass(params).fit(ctx, None, top_layer_encoder(folder), list(ctx.data.item_text))
    monkeypatch.setattr(TextEncoder, "frozen_states_kept", lambda self, ids: contextlib.nullcontext())
    whole = OnePass(params).fit(ctx, None, top_layer_encoder(folder), list(ctx.data.item_text))
    assert [h["val_cold"] for h in kept.history] == pytest.approx([h["val_cold"] for h in whole.history], abs=1e-5)
    torch.testing.assert_close(kept.item_out, whole.item_out, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("spec, message", [
    ({"lora_targets": ("embed_tokens", "q_proj")}, "embed_tokens"),  # would change the kept states
    ({"lora_layers": 3}, "has 2 layers"),
    ({"tune": "frozen"}, "needs tune=lora"),
    ({"lora_layers": -1}, ">= 0"),
])
def test_top_layer_adapters_refuse_what_would_make_kept_states_wrong(planted, spec, message):
    _, folder = planted
    settings = {"model": str(folder), "tune": "lora", "lora_r": 4, "lora_layers": 1, **spec}
    with pytest.raises(ConfigError, match=message):
        TextEncoder(TextEncoderSpec(**settings))
