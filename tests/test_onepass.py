"""The one-pass simulator: its users are scored in the space it searches, it learns who likes a
text, and its top-K go through the same update as the pairwise funnel's accepted pairs."""

import json

import numpy as np
import pandas as pd
import torch
from typer.testing import CliRunner

from coldllm.cli import app
from coldllm.funnel.filter import top_users
from coldllm.funnel.onepass import OnePass, OnePassParams
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


def test_head_starts_as_the_backbone_users(ctx):  # noqa: F811
    sim = OnePass(OnePassParams(epochs=1, lr=1e-12, batch_size=128, hidden=16)).fit(ctx, ctx.content.cpu().numpy())
    torch.testing.assert_close(sim.head.weight.detach(), ctx.user_emb, atol=1e-6, rtol=0)


def test_simulated_users_share_the_items_community(ctx):  # noqa: F811
    """Items and users come in two communities that the text reveals: the users simulated for a cold
    item must be of its community, far above the half a text-blind pick would get."""
    sim = OnePass(OnePassParams(epochs=12, batch_size=128, hidden=32)).fit(ctx, ctx.content.cpu().numpy())
    top = top_users(sim.embeddings(ctx.cold), 5)
    user_group = np.array([int(u[1:]) % 2 for u in ctx.data.user_ids])
    item_group = np.array([int(i[1:]) % 2 for i in ctx.data.item_ids])
    assert (user_group[top["user"]] == item_group[top["item"]]).mean() > 0.85


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
