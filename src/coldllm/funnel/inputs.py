"""What the funnel's components read from a run besides its files, in one place: the text vectors
of the language-model sub-tower and the one-pass simulator, the judge's prompt template, and the
user histories both judges show. The filter stage, the judges and the service all ask here, so a
new item is encoded and judged the way the run's own items were.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..config import ContentConfig, RunConfig, apply_values
from ..content import encode_texts
from ..llm.prompts import PromptTemplate
from ..run import Run
from .refiner import Histories, user_histories


def params(cls: type, values: dict[str, Any], where: str):
    """A hyper-parameter dataclass filled from a config mapping; unknown keys name ``where``."""
    obj = cls()
    apply_values(obj, values, prefix=f"{where}.")
    return obj


def lm_text_config(cfg: RunConfig) -> ContentConfig:
    """The encoder of ``filter.text_model``'s vectors: mean-pooled states of a causal LM, or the
    packaged sentence encoder (``minilm``: the content vectors, no extra encoding)."""
    if cfg.filter.text_model == "minilm":
        return dataclasses.replace(cfg.content, encoder="minilm", model="")
    return ContentConfig(encoder="llm", model=cfg.filter.text_model, cache_dir=cfg.content.cache_dir,
                         device=cfg.content.device, batch_size=32)


def llm_text_vectors(run: Run) -> np.ndarray:
    """Every item's ``filter.text_model`` vector (cached by model and text hash)."""
    return encode_texts(list(run.data.item_text), lm_text_config(run.cfg))


def prompt_template(cfg: RunConfig) -> PromptTemplate:
    return params(PromptTemplate, cfg.refiner.template, "refiner.template")


def prompt_histories(data, cfg: RunConfig, vectors: np.ndarray) -> Histories:
    """What the language-model judge's prompts show of each user (``refiner.template.history``): the
    seeded sample, or every training item to choose the candidate's closest ``max_history`` from."""
    template = prompt_template(cfg)
    if template.history == "similar":
        train = data.matrix("train")
        return Histories(user_histories(train, train.shape[1], cfg.seed), vectors, template.max_history)
    return Histories(judge_histories(data, cfg), None, template.max_history)


def judge_histories(run_or_data, cfg: RunConfig) -> list[np.ndarray]:
    """The seeded sample of each user's training items that the judges show (the prompt's history)."""
    data = getattr(run_or_data, "data", run_or_data)
    return user_histories(data.matrix("train"), prompt_template(cfg).max_history, cfg.seed)
