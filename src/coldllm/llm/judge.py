"""The batched Yes/No judge: P(Yes) against P(No) from the next-token logits after the prompt.

The fast path encodes a user's history prefix once and reuses its key/value cache for all of that
user's candidates, run as right-padded batches of suffixes; on a CPU this removes most of the
tokens (a 20-title history is ~250 tokens, a candidate ~30). ``p_yes_uncached`` is the plain
reference path (whole prompts, left-padded), kept for checking and for models whose cache cannot
be shared.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache

from .prompts import PromptEncoder


def _yes_probability(logits: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    pair = logits[:, [yes_id, no_id]].float()
    return torch.softmax(pair, dim=-1)[:, 0]


class Judge:
    def __init__(self, model, prompts: PromptEncoder, batch_size: int = 32):
        self.model, self.prompts, self.batch_size = model, prompts, batch_size
        self.device = next(model.parameters()).device
        self.pad_id = prompts.tokenizer.pad_token_id or 0

    @torch.no_grad()
    def p_yes_for_user(self, prefix: list[int], suffixes: list[list[int]]) -> np.ndarray:
        """P(Yes) of each suffix after one shared prefix, reusing the prefix's KV cache."""
        self.model.eval()
        out = np.zeros(len(suffixes), dtype=np.float32)
        if not suffixes:
            return out
        prefix_ids = torch.tensor([prefix], device=self.device)
        cache = self.model(input_ids=prefix_ids, use_cache=True).cache
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        order = np.argsort([len(s) for s in suffixes], kind="stable")
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            n = len(idx)
            lengths = torch.tensor([len(suffixes[i]) for i in idx], device=self.device)
            width = int(lengths.max())
            ids = torch.full((n, width), self.pad_id, dtype=torch.long, device=self.device)
            mask = torch.zeros((n, len(prefix) + width), dtype=torch.long, device=self.device)
            mask[:, : len(prefix)] = 1
            for row, i in enumerate(idx):
                ids[row, : len(suffixes[i])] = torch.tensor(suffixes[i], device=self.device)
                mask[row, len(prefix) : len(prefix) + len(suffixes[i])] = 1
            # each batch gets its own copy: the model appends the suffix keys to the cache it is given
            shared = DynamicCache(
                [(k.expand(n, -1, -1, -1).contiguous(), v.expand(n, -1, -1, -1).contiguous()) for k, v in layers],
                config=self.model.config,
            )
            logits = self.model(input_ids=ids, attention_mask=mask, cache=shared).logits
            last = logits[torch.arange(n, device=self.device), lengths - 1]
            out[idx] = _yes_probability(last, self.prompts.yes_id, self.prompts.no_id).cpu().numpy()
        return out

    @torch.no_grad()
    def p_yes_uncached(self, prompts: list[list[int]]) -> np.ndarray:
        """P(Yes) for whole prompts (prefix + suffix ids), left-padded batches sorted by length."""
        self.model.eval()
        out = np.zeros(len(prompts), dtype=np.float32)
        order = np.argsort([len(p) for p in prompts], kind="stable")
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long, device=self.device)
            mask = torch.zeros_like(ids)
            for row, i in enumerate(idx):
                ids[row, width - len(prompts[i]) :] = torch.tensor(prompts[i], device=self.device)
                mask[row, width - len(prompts[i]) :] = 1
            position = (mask.cumsum(1) - 1).clamp(min=0)  # left padding must not shift positions
            # only the last position is read: skip the (batch x length x vocab) logits of the others
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position, logits_to_keep=1).logits[:, -1]
            out[idx] = _yes_probability(logits, self.prompts.yes_id, self.prompts.no_id).cpu().numpy()
        return out
