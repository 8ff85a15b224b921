"""The run's judge (``refiner.judge``) applied to one new item's candidate users.

* ``llm``: the run's base model with its LoRA adapter, the run's prompt template and threshold;
  P(Yes) against P(No) at the next token, each user's history prefix shared by the items judged
  with it;
* ``cosine``: the free judge, the same rule as the simulate stage (the item keeps the ``keep``
  share of its candidates whose history is most similar to its text);
* ``all``: every candidate is accepted (the no-refiner ablation).

``oracle`` and ``file`` read labels that a new item does not have, so a run judged by them cannot
be served.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd

from ..config import ConfigError, RunConfig
from ..data import ColdStartData
from ..funnel.judges import cosine_verdicts
from ..funnel.refiner import user_histories
from ..layout import RunLayout

log = logging.getLogger(__name__)


class OnlineJudge(Protocol):
    def verdicts(self, users: np.ndarray, text: str, vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p_yes, accepted) for each candidate user of one item with ``text`` and content ``vector``."""


class AcceptAll:
    def verdicts(self, users, text, vector):
        return np.ones(len(users), np.float32), np.ones(len(users), bool)


class CosineJudge:
    def __init__(self, histories: list[np.ndarray], content: np.ndarray, keep: float):
        self.histories, self.content, self.keep = histories, content, keep

    def verdicts(self, users, text, vector):
        if not len(users):
            return np.zeros(0, np.float32), np.zeros(0, bool)
        # a small local problem instead of the whole catalogue: the candidates' history items and
        # the new item, renumbered, go through the simulate stage's own function
        items, local = np.unique(np.concatenate([self.histories[u] for u in users]), return_inverse=True)
        bounds = np.cumsum([0] + [len(self.histories[u]) for u in users])
        histories = [local[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        vectors = np.vstack([self.content[items], np.asarray(vector, np.float32)[None]])
        pairs = pd.DataFrame({"user": np.arange(len(users)), "item": len(items)})
        out = cosine_verdicts(pairs, histories, vectors, self.keep)
        return out["p_yes"].to_numpy(np.float32), out["accepted"].to_numpy(bool)


class LMJudge:
    def __init__(self, cfg: RunConfig, run_dir: Path, histories: list[np.ndarray], titles: np.ndarray):
        from ..funnel.stages import prompt_template
        from ..llm.judge import Judge
        from ..llm.lora import load_adapter
        from ..llm.models import load_llm
        from ..llm.prompts import PromptEncoder
        from ..utils import resolve_device

        adapter = RunLayout(run_dir).adapter
        threshold = RunLayout(run_dir).threshold  # the finetune stage's named output
        if not (adapter / "adapter_config.json").exists() or not threshold.exists():
            raise ConfigError(f"{run_dir}: refiner.judge=llm but the finetune stage left no adapter in {adapter}")
        model, tokenizer = load_llm(cfg.refiner.model, cfg.content.cache_dir, resolve_device(cfg.refiner.device))
        # merged: the same weights as the adapter on top of the base, at the base model's speed
        model = load_adapter(model, adapter, merge=True)
        self.prompts = PromptEncoder(tokenizer, prompt_template(cfg))
        self.threshold = float(json.loads(threshold.read_text())["threshold"])
        self.judge = Judge(model, self.prompts, cfg.refiner.batch_size)
        self.histories, self.titles = histories, titles
        self.tokenizer = tokenizer  # the service caps new texts in its tokens
        self._prefixes: dict[int, list[int]] = {}  # tokenised once per user, on first use

    def prefix(self, user: int) -> list[int]:
        if user not in self._prefixes:
            self._prefixes[user] = self.prompts.prefix([self.titles[i] for i in self.histories[user]])
        return self._prefixes[user]

    def verdicts(self, users, text, vector):
        if not len(users):
            return np.zeros(0, np.float32), np.zeros(0, bool)
        prefixes = [self.prefix(int(u)) for u in users]
        suffix = self.prompts.suffix(text)
        p = np.asarray(self.judge.p_yes_grouped(prefixes, [suffix] * len(users), np.arange(len(users))), np.float32)
        return p, p > self.threshold


def build_judge(cfg: RunConfig, run_dir: Path, data: ColdStartData, content: np.ndarray) -> OnlineJudge:
    kind = cfg.refiner.judge
    if kind == "all":
        return AcceptAll()
    if kind not in ("llm", "cosine"):
        raise ConfigError(f"refiner.judge={kind}: it reads labels a new item does not have; "
                          "serve a run judged by llm, cosine or all")
    from ..funnel.stages import prompt_template

    # the histories the run's judge saw: the same seeded sample of each user's training items
    histories = user_histories(data.matrix("train"), prompt_template(cfg).max_history, cfg.seed)
    if kind == "cosine":
        return CosineJudge(histories, content, cfg.refiner.keep)
    return LMJudge(cfg, run_dir, histories, data.item_text)
