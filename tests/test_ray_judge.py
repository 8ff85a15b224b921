"""The Ray engine of the simulation: the local engine's verdicts and shards, on a local one-CPU Ray."""

import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from coldllm.config import ConfigError, RunConfig, to_dict
from coldllm.funnel import ray_judge
from coldllm.funnel.refiner import simulate, user_histories
from coldllm.llm.judge import Judge
from coldllm.llm.lora import LoraParams, add_lora, load_adapter
from coldllm.llm.models import load_llm
from coldllm.llm.prompts import PromptEncoder, PromptTemplate
from coldllm.run import _inputs


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'coldllm[ray]' to test the ray engine")
    pytest.importorskip("ray.data", reason="ray is installed without ray[data]")
    # one CPU: the pool's single actor holds it, the dataset's own small tasks are scheduled around it
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def adapter_dir(tmp_path, tiny_llm_dir):
    """A LoRA adapter whose weights are not the identity (a fresh one's B matrices are zero), so
    the actor's merged weights really differ from the base model's."""
    model, _ = load_llm(str(tiny_llm_dir))
    peft_model = add_lora(model, LoraParams(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, weight in peft_model.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 0.2)
    folder = tmp_path / "adapter"
    peft_model.save_pretrained(folder)
    return folder


def funnel_inputs(tiny_data):
    """Every user against five cold items (the filter's shape): several users per shard."""
    cold = tiny_data.cold_items[:5]
    candidates = pd.DataFrame({"user": np.repeat(np.arange(tiny_data.n_users), len(cold)),
                               "item": np.tile(cold, tiny_data.n_users)})
    histories = user_histories(tiny_data.matrix("train"), max_items=6, seed=0)
    return candidates, histories, tiny_data.item_text


def test_ray_engine_matches_the_local_engine_and_resumes(tmp_path, local_ray, tiny_data, tiny_llm_dir, adapter_dir,
                                                         monkeypatch):
    candidates, histories, titles = funnel_inputs(tiny_data)
    template = PromptTemplate()
    # the local engine as the simulate stage runs it: the adapter applied unmerged
    model, tokenizer = load_llm(str(tiny_llm_dir))
    judge = Judge(load_adapter(model, adapter_dir), PromptEncoder(tokenizer, template), batch_size=8)
    local = simulate(judge, candidates, histories, titles, tmp_path / "local", shard_users=7)
    n_shards = len(list((tmp_path / "local").glob("shard-*.parquet")))
    assert n_shards == 6  # 40 users, 7 per shard

    def on_ray(folder, known=None):
        return ray_judge.simulate_on_ray(tiny_llm_dir, adapter_dir, template, candidates, histories, titles, folder,
                                         shard_users=7, known=known, actors=1, batch_size=8, device="cpu")

    sent = []  # the shards each call hands to Ray
    judge_pending = ray_judge._judge_pending
    monkeypatch.setattr(ray_judge, "_judge_pending", lambda pending, *a: sent.append(sorted(pending))
                        or judge_pending(pending, *a))
    full = on_ray(tmp_path / "ray")
    assert sent == [list(range(n_shards))]
    # same pairs in the same order, same verdicts to float precision (merged against unmerged adapter)
    pd.testing.assert_frame_equal(full[["user", "item"]], local[["user", "item"]])
    assert np.abs(full["p_yes"].to_numpy() - local["p_yes"].to_numpy()).max() <= 1e-5
    assert (full["accepted"] == local["accepted"]).all() and full["p_yes"].std() > 1e-3  # not a flat judge
    assert full["p_yes"].dtype == local["p_yes"].dtype and full["user"].dtype == local["user"].dtype

    # a run killed after shards 0, 2 and 5 (written by the local engine): the ray engine judges only
    # the others, keeps those three files as they are, and a known verdict is not judged again
    part = tmp_path / "part"
    part.mkdir()
    for s in (0, 2, 5):
        shutil.copy(tmp_path / "local" / f"shard-{s:05d}.parquet", part)
    planted = pd.read_parquet(part / "shard-00002.parquet").assign(p_yes=np.float32(0.25))
    planted.to_parquet(part / "shard-00002.parquet")  # a resume must take, not recompute, a finished shard
    known = local[local["user"] < 14][["user", "item", "p_yes"]]  # shards 0 and 1: shard 1 needs no judge
    resumed = on_ray(part, known=known)
    assert sent[1] == [3, 4]
    expected = local["p_yes"].to_numpy().copy()
    expected[(local["user"] >= 14) & (local["user"] < 21)] = 0.25
    assert np.abs(resumed["p_yes"].to_numpy() - expected).max() <= 1e-5
    # nothing left to judge: Ray is not even started
    assert len(on_ray(part)) == len(candidates) and len(sent) == 2


def test_switching_engines_redoes_nothing():
    local, ray = RunConfig(), RunConfig()
    ray.refiner.engine, ray.refiner.ray_actors = "ray", 4
    assert _inputs(to_dict(local), "simulate") == _inputs(to_dict(ray), "simulate")


def test_a_missing_ray_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without ray looks like
    with pytest.raises(ConfigError, match=r"refiner.engine=ray needs ray\[data\]"):
        ray_judge.require_ray()
