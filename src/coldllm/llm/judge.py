"""The batched Yes/No judge: P(Yes) against P(No) from the next-token logits after the prompt.

The fast path encodes each user's history prefix once and reuses its key/value cache for all of
that user's candidates. Prefixes of several users are encoded together (right-padded), and their
candidates run as batches of left-padded suffixes over the matching rows of the cache, so a batch
is full whether a user has one candidate or a hundred. On a CPU this removes most of the tokens (a
20-title history is ~210 tokens, a candidate ~20); on a GPU it also keeps the batches large.
``p_yes_uncached`` is the plain reference path (whole prompts, left-padded), kept for checking and
for models whose cache cannot be shared. On CUDA both run under bf16 autocast.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from transformers import DynamicCache

from .prompts import PromptEncoder


def _yes_probability(logits: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    pair = logits[:, [yes_id, no_id]].float()
    return torch.softmax(pair, dim=-1)[:, 0]


def autocast(device: torch.device):
    """bf16 autocast on CUDA (the weights stay fp32); nothing on a CPU, where bf16 is slower."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def owner_batches(owner: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split candidates (sorted by owner) into runs of whole owners of at most ``batch_size``
    candidates; an owner with more candidates than that gets a run of its own."""
    bounds = np.flatnonzero(np.diff(owner)) + 1
    groups = np.split(np.arange(len(owner)), bounds) if len(owner) else []
    batches, current = [], []
    for group in groups:
        if current and sum(map(len, current)) + len(group) > batch_size:
            batches.append(np.concatenate(current))
            current = []
        current.append(group)
    if current:
        batches.append(np.concatenate(current))
    return batches


class Judge:
    def __init__(self, model, prompts: PromptEncoder, batch_size: int = 32):
        self.model, self.prompts, self.batch_size = model, prompts, batch_size
        self.device = next(model.parameters()).device
        self.pad_id = prompts.tokenizer.pad_token_id or 0

    def p_yes_for_user(self, prefix: list[int], suffixes: list[list[int]]) -> np.ndarray:
        """P(Yes) of each suffix after one shared prefix."""
        return self.p_yes_grouped([prefix], suffixes, np.zeros(len(suffixes), dtype=np.int64))

    @torch.no_grad()
    def p_yes_grouped(self, prefixes: list[list[int]], suffixes: list[list[int]], owner: np.ndarray) -> np.ndarray:
        """P(Yes) of ``suffixes[j]`` after ``prefixes[owner[j]]``, each prefix encoded once."""
        self.model.eval()
        owner = np.asarray(owner, dtype=np.int64)
        out = np.zeros(len(suffixes), dtype=np.float32)
        order = np.argsort(owner, kind="stable")
        with autocast(self.device):
            for batch in owner_batches(owner[order], self.batch_size):
                rows = order[batch]
                users, local = np.unique(owner[rows], return_inverse=True)
                cache, mask, lengths = self._encode_prefixes([prefixes[u] for u in users])
                for start in range(0, len(rows), self.batch_size):
                    part = slice(start, start + self.batch_size)
                    out[rows[part]] = self._judge_suffixes(cache, mask, lengths, local[part],
                                                           [suffixes[r] for r in rows[part]])
        return out

    def _encode_prefixes(self, prefixes: list[list[int]]):
        lengths = torch.tensor([len(p) for p in prefixes], device=self.device)
        ids = torch.full((len(prefixes), int(lengths.max())), self.pad_id, dtype=torch.long, device=self.device)
        for row, p in enumerate(prefixes):
            ids[row, : len(p)] = torch.tensor(p, device=self.device)
        mask = (torch.arange(ids.shape[1], device=self.device)[None, :] < lengths[:, None]).long()
        cache = self.model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1).cache
        return [(layer.keys, layer.values) for layer in cache.layers], mask, lengths

    def _judge_suffixes(self, layers, prefix_mask, prefix_lengths, local: np.ndarray,
                        suffixes: list[list[int]]) -> np.ndarray:
        sel = torch.as_tensor(local, device=self.device)
        n, width = len(suffixes), max(len(s) for s in suffixes)
        ids = torch.full((n, width), self.pad_id, dtype=torch.long, device=self.device)
        suffix_mask = torch.zeros((n, width), dtype=torch.long, device=self.device)
        for row, s in enumerate(suffixes):  # left-padded: every prompt ends in the last column
            ids[row, width - len(s) :] = torch.tensor(s, device=self.device)
            suffix_mask[row, width - len(s) :] = 1
        # a suffix continues its own prefix's positions, whatever the padding between them
        position = prefix_lengths[sel][:, None] + (suffix_mask.cumsum(1) - 1).clamp(min=0)
        mask = torch.cat([prefix_mask[sel], suffix_mask], dim=1)
        # each batch gets its own rows: the model appends the suffix keys to the cache it is given
        cache = DynamicCache([(k[sel], v[sel]) for k, v in layers], config=self.model.config)
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position, cache=cache,
                            logits_to_keep=1).logits[:, -1]
        return _yes_probability(logits, self.prompts.yes_id, self.prompts.no_id).cpu().numpy()

    @torch.no_grad()
    def p_yes_uncached(self, prompts: list[list[int]]) -> np.ndarray:
        """P(Yes) for whole prompts (prefix + suffix ids), left-padded batches sorted by length."""
        self.model.eval()
        out = np.zeros(len(prompts), dtype=np.float32)
        order = np.argsort([len(p) for p in prompts], kind="stable")
        with autocast(self.device):
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
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position,
                                    logits_to_keep=1).logits[:, -1]
                out[idx] = _yes_probability(logits, self.prompts.yes_id, self.prompts.no_id).cpu().numpy()
        return out
