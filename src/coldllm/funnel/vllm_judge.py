"""Judging with vLLM on a GPU: the same prompts, shards and verdicts, vLLM's engine underneath.

``refiner.engine: vllm`` hands the simulation's prompts to vLLM (``pip install 'coldllm[vllm]'``,
a CUDA GPU). The prompts are the token ids ``PromptEncoder`` builds for the local engine, so both
see exactly the same input; vLLM's automatic prefix caching computes each user's history prefix
once however many of their candidates follow, its scheduler keeps the GPU full, and the LoRA
adapter is applied by vLLM's LoRA kernels from the adapter folder the finetune stage wrote.

P(Yes) is read from one generated token: only the Yes and No tokens are allowed
(``allowed_token_ids``) and the log-probabilities are the processed ones (``logprobs_mode=
processed_logprobs``, after that restriction), so the two returned values are the two-way softmax
the local engine computes. The pairs go through ``refiner.simulate`` unchanged: same shard layout,
same fingerprinted folder, so a run may resume under any engine.

vLLM is imported only here and only when asked for; without it the stage stops with one line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..config import ConfigError
from ..llm.prompts import PromptEncoder


def require_vllm():
    """The vllm module, or one clear line saying how to get it."""
    try:
        import vllm
    except ImportError as err:
        raise ConfigError(f"refiner.engine=vllm needs vllm and a CUDA GPU (pip install 'coldllm[vllm]'): {err}") from None
    return vllm


def adapter_rank(adapter_dir: Path) -> int:
    """The LoRA rank of a PEFT adapter folder (vLLM must be told the largest rank it will serve)."""
    config = Path(adapter_dir) / "adapter_config.json"
    try:
        return int(json.loads(config.read_text())["r"])
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{config}: not a readable LoRA adapter config ({err})") from None


def yes_probability(logprobs: dict, yes_id: int, no_id: int) -> float:
    """P(Yes) against P(No) from one position's ``{token id: Logprob}`` map (both ids present)."""
    missing = [t for t in (yes_id, no_id) if t not in logprobs]
    if missing:
        raise RuntimeError(f"vLLM returned no log-probability for answer token(s) {missing}: "
                           "is logprobs_mode=processed_logprobs supported by the installed vLLM?")
    value = lambda t: getattr(logprobs[t], "logprob", logprobs[t])  # noqa: E731
    return 1.0 / (1.0 + math.exp(value(no_id) - value(yes_id)))


class VLLMJudge:
    """A drop-in for ``llm.judge.Judge`` in ``refiner.simulate``: ``prompts`` and ``p_yes_grouped``.

    ``engine_kwargs`` go to ``vllm.LLM`` (e.g. ``gpu_memory_utilization``, ``dtype``).
    """

    def __init__(self, model_dir: Path, adapter_dir: Path | None, prompts: PromptEncoder, seed: int = 0,
                 **engine_kwargs):
        vllm = require_vllm()
        self.prompts = prompts
        lora = {}
        self.lora_request = None
        if adapter_dir is not None:
            from vllm.lora.request import LoRARequest

            lora = {"enable_lora": True, "max_loras": 1, "max_lora_rank": max(8, adapter_rank(adapter_dir))}
            self.lora_request = LoRARequest("refiner", 1, str(Path(adapter_dir).resolve()))
        self.llm = vllm.LLM(model=str(Path(model_dir).resolve()), enable_prefix_caching=True,
                            logprobs_mode="processed_logprobs", seed=seed, **lora, **engine_kwargs)
        answers = [prompts.yes_id, prompts.no_id]
        # temperature 1, no top-k/top-p: the processed log-probabilities are the two-way softmax itself
        self.params = vllm.SamplingParams(max_tokens=1, temperature=1.0, allowed_token_ids=answers, logprobs=2,
                                          seed=seed)

    def p_yes_grouped(self, prefixes: list[list[int]], suffixes: list[list[int]], owner: np.ndarray) -> np.ndarray:
        """P(Yes) of ``suffixes[j]`` after ``prefixes[owner[j]]``; vLLM's prefix cache shares the prefixes."""
        requests = [{"prompt_token_ids": list(prefixes[o]) + list(s)} for o, s in zip(owner, suffixes)]
        if not requests:
            return np.zeros(0, dtype=np.float32)
        outputs = self.llm.generate(requests, self.params, lora_request=self.lora_request, use_tqdm=False)
        yes, no = self.prompts.yes_id, self.prompts.no_id
        return np.array([yes_probability(out.outputs[0].logprobs[0], yes, no) for out in outputs], dtype=np.float32)
