"""The Ray engine of the simulation: the local engine's verdicts and shards, on a local one-CPU Ray."""

import sys

import numpy as np
import pandas as pd
import pytest
import torch

from coldllm.config import ConfigError, RunConfig, to_dict
from coldllm.funnel import ray_judge
from coldllm.funnel.refiner import simulate, user_histories
from coldllm.llm.judge import Judge
from coldllm.llm.lora import load_adapter
from coldllm.llm.models import load_llm
from coldllm.llm.prompts import PromptEncoder, PromptTemplate
from coldllm.run import stage_inputs


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'coldllm[ray]' to test the ray engine")
    pytest.importorskip("ray.data", reason="ray is installed without ray[data]")
    # one CPU: the pool's single actor holds it, the dataset's own small tasks are scheduled around it
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def funnel_inputs(tiny_data):
    """Every user against five cold items (the filter's shape): several users per shard."""
    cold = tiny_data.cold_items[:5]
    candidates = pd.DataFrame({"user": np.repeat(np.arange(tiny_data.n_users), len(cold)),
                               "item": np.tile(cold, tiny_data.n_users)})
    histories = user_histories(tiny_data.matrix("train"), max_items=6, seed=0)
    return candidates, histories, tiny_data.item_text


def test_ray_engine_resumes_with_the_local_engines_verdicts(tmp_path, local_ray, tiny_data, tiny_llm_dir,
                                                             adapter_dir, monkeypatch):
    candidates, histories, titles = funnel_inputs(tiny_data)
    template = PromptTemplate()
    # the local engine with the adapter applied unmerged (the stage merges it, as the actor does):
    # the two engines must agree whether or not the weights were folded
    model, tokenizer = load_llm(str(tiny_llm_dir))
    judge = Judge(load_adapter(model, adapter_dir), PromptEncoder(tokenizer, template), batch_size=8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the actor runs: on a 32-wide model more threads only wait on each other
    try:
        local = simulate(judge, candidates, histories, titles, tmp_path / "local", shard_users=7)
    finally:
        torch.set_num_threads(threads)
    n_shards = len(list((tmp_path / "local").glob("shard-*.parquet")))
    assert n_shards == 6  # 40 users, 7 per shard

    sent = []  # the shards each call hands to Ray
    judge_pending = ray_judge._judge_pending
    monkeypatch.setattr(ray_judge, "_judge_pending", lambda pending, *a: sent.append(sorted(pending))
                        or judge_pending(pending, *a))
    # a run killed after shard 2 was written (by the local engine, with planted verdicts that a
    # resume must take, not recompute); shard 5's pairs are all known from another run
    part = tmp_path / "part"
    part.mkdir()
    shard2 = pd.read_parquet(tmp_path / "local" / "shard-00002.parquet").assign(p_yes=np.float32(0.25))
    shard2.to_parquet(part / "shard-00002.parquet")
    known = local[local["user"] >= 35][["user", "item", "p_yes"]]
    resumed = ray_judge.simulate_on_ray(tiny_llm_dir, adapter_dir, template, candidates, histories, titles, part,
                                        shard_users=7, known=known, actors=1, batch_size=8, device="cpu")
    assert sent == [[0, 1, 3, 4]]  # only the missing shards that need the judge
    # same pairs in the same order and types; the judged verdicts are the local engine's to float
    # precision (the actor merges the adapter into the weights, the local engine applies it unmerged)
    pd.testing.assert_frame_equal(resumed[["user", "item"]], local[["user", "item"]])
    assert resumed["p_yes"].dtype == local["p_yes"].dtype
    judged = ~local["user"].between(14, 20) & (local["user"] < 35)
    assert judged.sum() == 4 * 7 * 5 and local["p_yes"][judged].std() > 1e-3  # not a flat judge
    assert np.abs(resumed["p_yes"][judged].to_numpy() - local["p_yes"][judged].to_numpy()).max() <= 1e-5
    assert (resumed["accepted"][judged] == local["accepted"][judged]).all()
    assert (resumed["p_yes"][local["user"].between(14, 20)] == np.float32(0.25)).all()
    assert (resumed["p_yes"][local["user"] >= 35] == local["p_yes"][local["user"] >= 35]).all()
    # nothing left to judge: Ray is not asked again
    assert len(ray_judge.simulate_on_ray(tiny_llm_dir, adapter_dir, template, candidates, histories, titles, part,
                                         shard_users=7, actors=1, device="cpu")) == len(candidates)
    assert len(sent) == 1


def test_switching_engines_redoes_nothing():
    local, ray = RunConfig(), RunConfig()
    ray.refiner.engine, ray.refiner.ray_actors = "ray", 4
    assert stage_inputs(to_dict(local), "simulate") == stage_inputs(to_dict(ray), "simulate")


def test_a_missing_ray_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without ray looks like
    with pytest.raises(ConfigError, match=r"refiner.engine=ray needs ray\[data\]"):
        ray_judge.require_ray()
