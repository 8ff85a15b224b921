"""Item content: text -> embedding encoders, cached on disk by model and text hash."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..config import ConfigError, ContentConfig
from ..llm.models import DEFAULT_LLM
from ..utils import resolve_device
from .cache import VectorCache, text_hash
from .encoders import Encoder, LLMEncoder, SentenceEncoder

log = logging.getLogger(__name__)
ENCODERS = {"minilm": SentenceEncoder, "llm": LLMEncoder}


def build_encoder(cfg: ContentConfig) -> Encoder:
    if cfg.encoder not in ENCODERS:  # load_config refuses it too; a hand-built config may not have been loaded
        raise ConfigError(f"config key 'content.encoder' must be one of {sorted(ENCODERS)}, got {cfg.encoder!r}")
    device = str(resolve_device(cfg.device))
    if cfg.encoder == "llm":
        return LLMEncoder(cfg.model, cfg.batch_size, cfg.max_length, device, cfg.cache_dir)
    return SentenceEncoder(cfg.model, cfg.batch_size, cfg.max_length, device)


def encoder_key(cfg: ContentConfig) -> str:
    """The cache's name for the model, known without loading it."""
    if cfg.encoder == "llm":
        return "llm-" + (cfg.model or DEFAULT_LLM).strip("/").replace("/", "_")
    return "st-" + cfg.model.strip("/").replace("/", "_") if cfg.model else "all-minilm-l6-v2"


def encode_texts(texts: list[str], cfg: ContentConfig, encoder: Encoder | None = None) -> np.ndarray:
    """Vectors for ``texts`` (rows in order), computing only those the cache has not seen.

    The model is loaded only when some text is missing from the cache.
    """
    texts = [str(t) for t in texts]
    empty = sum(1 for t in texts if not t.strip())
    if empty:
        log.warning("%d of %d item texts are empty; they all get the encoder's empty-text vector",
                    empty, len(texts))
    cache = VectorCache(Path(cfg.cache_dir) / "content" / (encoder.key if encoder else encoder_key(cfg)))
    return cache.lookup(texts, lambda: encoder or build_encoder(cfg))


__all__ = ["ENCODERS", "LLMEncoder", "SentenceEncoder", "VectorCache", "build_encoder", "encode_texts",
           "encoder_key", "text_hash"]
