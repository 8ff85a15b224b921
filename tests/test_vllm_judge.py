"""The vLLM engine's glue: the prompts it sends, the adapter it names, the P(Yes) it reads back.

vLLM needs a CUDA GPU, so here a stand-in module answers as vLLM documents it would (one generated
token, only the allowed ids, processed log-probabilities) by running the tiny Hugging Face model
with the same adapter. What is tested is this project's side: that the engine's verdicts through
``refiner.simulate`` equal the local engine's, shard for shard.
"""

import sys
import types

import numpy as np
import pytest
import torch

from coldllm.config import ConfigError, RunConfig, to_dict
from coldllm.funnel import vllm_judge
from coldllm.funnel.refiner import simulate, user_histories
from coldllm.llm.judge import Judge
from coldllm.llm.lora import load_adapter
from coldllm.llm.models import load_llm
from coldllm.llm.prompts import PromptEncoder, PromptTemplate
from coldllm.run import stage_inputs
from test_ray_judge import funnel_inputs


class _SamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class _LoRARequest:
    def __init__(self, lora_name, lora_int_id, lora_path):
        self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path


class _LLM:
    """What ``vllm.LLM`` returns for one-token generation with allowed ids and processed logprobs."""

    made: list["_LLM"] = []

    def __init__(self, model, **kwargs):
        self.kwargs = kwargs
        self.model_dir = model
        _LLM.made.append(self)

    def generate(self, requests, params, lora_request=None, use_tqdm=True):
        assert self.kwargs["enable_prefix_caching"] and self.kwargs["logprobs_mode"] == "processed_logprobs"
        assert params.max_tokens == 1 and params.temperature == 1.0 and params.logprobs == 2
        model, _ = load_llm(self.model_dir)
        if lora_request is not None:
            assert self.kwargs["enable_lora"] and self.kwargs["max_lora_rank"] >= 4
            model = load_adapter(model, lora_request.lora_path)
        allowed = list(params.allowed_token_ids)
        outputs = []
        with torch.no_grad():
            for request in requests:
                logits = model(input_ids=torch.tensor([request["prompt_token_ids"]])).logits[0, -1]
                logprobs = torch.log_softmax(logits[allowed].double() / params.temperature, -1)
                chosen = {t: types.SimpleNamespace(logprob=float(v)) for t, v in zip(allowed, logprobs)}
                outputs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(logprobs=[chosen])]))
        return outputs


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = _LLM, _SamplingParams
    lora, request = types.ModuleType("vllm.lora"), types.ModuleType("vllm.lora.request")
    request.LoRARequest = _LoRARequest
    for name, mod in (("vllm", module), ("vllm.lora", lora), ("vllm.lora.request", request)):
        monkeypatch.setitem(sys.modules, name, mod)
    _LLM.made.clear()
    return module


def test_vllm_engine_gives_the_local_engines_verdicts(tmp_path, fake_vllm, tiny_data, tiny_llm_dir, adapter_dir):
    candidates, histories, titles = funnel_inputs(tiny_data)
    template = PromptTemplate()
    model, tokenizer = load_llm(str(tiny_llm_dir))
    local = simulate(Judge(load_adapter(model, adapter_dir), PromptEncoder(tokenizer, template), batch_size=8),
                     candidates, histories, titles, tmp_path / "local", shard_users=7)
    judge = vllm_judge.VLLMJudge(tiny_llm_dir, adapter_dir, PromptEncoder(tokenizer, template),
                                 gpu_memory_utilization=0.5)
    (engine,) = _LLM.made
    assert engine.kwargs["gpu_memory_utilization"] == 0.5 and engine.kwargs["max_lora_rank"] == 8
    assert judge.lora_request.lora_path == str(adapter_dir.resolve())
    got = simulate(judge, candidates, histories, titles, tmp_path / "vllm", shard_users=7)
    assert len(got) == len(candidates) and local["p_yes"].std() > 1e-3  # a judge that tells pairs apart
    np.testing.assert_array_equal(got[["user", "item"]].to_numpy(), local[["user", "item"]].to_numpy())
    np.testing.assert_allclose(got["p_yes"], local["p_yes"], atol=1e-5)
    assert (got["accepted"] == local["accepted"]).all()


def test_a_missing_answer_logprob_is_one_clear_error():
    with pytest.raises(RuntimeError, match=r"no log-probability for answer token\(s\) \[7\]"):
        vllm_judge.yes_probability({3: types.SimpleNamespace(logprob=-0.1)}, 3, 7)
    assert vllm_judge.yes_probability({3: -1.0, 7: -1.0}, 3, 7) == pytest.approx(0.5)


def test_a_missing_vllm_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what a CPU-only install looks like
    with pytest.raises(ConfigError, match=r"refiner.engine=vllm needs vllm .*coldllm\[vllm\]"):
        vllm_judge.require_vllm()


def test_switching_to_vllm_redoes_nothing():
    local, gpu = RunConfig(), RunConfig()
    gpu.refiner.engine, gpu.refiner.vllm = "vllm", {"gpu_memory_utilization": 0.5}
    assert stage_inputs(to_dict(local), "simulate") == stage_inputs(to_dict(gpu), "simulate")
