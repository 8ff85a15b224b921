"""The batched Yes/No judge: P(Yes) against P(No) from the next-token logits after the prompt.

The fast path packs one user's history prefix and *all* of that user's candidate suffixes into a
single row, ``prefix | suffix_1 | suffix_2 | ...``, in which the prefix is causal and each suffix
sees the prefix and itself only, at the positions it would have right after the prefix (on a CPU
the rows go end to end without padding and attend block by block, see ``blocks``; on a GPU, as a
padded batch under a dense mask). Every token is computed once, so a user with twelve candidates
costs one 210-token prefix plus twelve ~20-token suffixes instead of twelve 230-token prompts. The
answer is read at each suffix's last token, and only the Yes and No rows of the output layer are
applied there (the full-vocabulary logits of every position would cost more than a layer).

``keep_prefixes`` holds the key/value states of prefixes that are asked about again and again (the
service's reference users, one question per new item): after it a question costs only its suffix.

``p_yes_uncached`` is the plain reference path (whole prompts, left-padded), kept for checking
and as the naive speed baseline. On CUDA both run under bf16 autocast.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Hashable

import numpy as np
import torch

from . import blocks
from .prompts import PromptEncoder


def autocast(device: torch.device):
    """bf16 autocast on CUDA (the weights stay fp32); nothing on a CPU, where bf16 is slower."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pack_rows(owner: np.ndarray, suffix_lengths: np.ndarray, prefix_lengths: np.ndarray,
              max_tokens: int) -> list[tuple[int, np.ndarray]]:
    """Rows of (owner, candidate indices): an owner's candidates in order, cut so that a row's
    prefix plus suffixes stays within ``max_tokens`` (a row always holds at least one candidate)."""
    rows = []
    order = np.argsort(owner, kind="stable")
    bounds = np.flatnonzero(np.diff(owner[order])) + 1
    for group in np.split(order, bounds) if len(order) else []:
        who = int(owner[group[0]])
        start, used = 0, int(prefix_lengths[who])
        for k, j in enumerate(group):
            if k > start and used + suffix_lengths[j] > max_tokens:
                rows.append((who, group[start:k]))
                start, used = k, int(prefix_lengths[who])
            used += int(suffix_lengths[j])
        rows.append((who, group[start:]))
    return rows


def packed_rows(prefixes: list[list[int]], suffixes: list[list[int]], owner: np.ndarray,
                max_tokens: int) -> tuple[list[tuple[int, np.ndarray]], np.ndarray]:
    """``pack_rows`` over token sequences, with the number of tokens of each row."""
    rows = pack_rows(np.asarray(owner, dtype=np.int64), np.array([len(s) for s in suffixes], dtype=np.int64),
                     np.array([len(p) for p in prefixes], dtype=np.int64), max_tokens)
    tokens = np.array([len(prefixes[w]) + sum(len(suffixes[j]) for j in idx) for w, idx in rows], dtype=np.int64)
    return rows, tokens


LAYOUTS = ("flat", "padded")


def default_layout(device: torch.device) -> str:
    return "padded" if device.type == "cuda" else "flat"


def answer_states(model, rows, prefixes, suffixes, layout: str | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Final hidden states at the last token of every suffix of the packed ``rows`` (from
    ``pack_rows``), and the index of the suffix each state answers.

    A suffix sees its row's prefix and itself, at the positions it would have right after the
    prefix. ``layout`` "flat" lays the rows end to end in one sequence, without padding, and
    attends block by block (``blocks``); "padded" stacks them in a padded batch under a dense
    (query x key) mask: one attention call per layer, which suits a GPU better than many small
    ones. The default is flat on a CPU, padded on a GPU."""
    device = next(model.parameters()).device
    layout = layout or default_layout(device)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    seqs, positions, ends, targets, shape = [], [], [], [], []
    for b, (who, idx) in enumerate(rows):
        prefix = prefixes[who]
        seq, pos = list(prefix), list(range(len(prefix)))
        for j in idx:
            seq += suffixes[j]
            pos += range(len(prefix), len(prefix) + len(suffixes[j]))  # right after the prefix
            ends.append((b, len(seq) - 1))
            targets.append(j)
        seqs.append(seq), positions.append(pos), shape.append((len(prefix), [len(suffixes[j]) for j in idx]))
    if layout == "flat":
        offsets = np.cumsum([0] + [len(s) for s in seqs])
        blocks.install(model)
        hidden = model.get_decoder()(
            input_ids=torch.tensor([[t for s in seqs for t in s]], device=device),
            position_ids=torch.tensor([[p for q in positions for p in q]], device=device),
            packed_layout=blocks.PackedLayout.build(shape, device)).last_hidden_state
        at = torch.tensor([offsets[b] + t for b, t in ends], device=device)
        return hidden[0, at], np.asarray(targets)
    width = max(map(len, seqs))
    ids = torch.zeros((len(seqs), width), dtype=torch.long)  # padding's id is never read
    # padding is a segment of its own (-1) that sees only itself: no row of the mask is empty
    seg = torch.full((len(seqs), width), -1, dtype=torch.long)
    pos = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, (s, p, (prefix_len, lengths)) in enumerate(zip(seqs, positions, shape)):
        ids[b, : len(s)], pos[b, : len(s)] = torch.tensor(s), torch.tensor(p)
        seg[b, : len(s)] = torch.repeat_interleave(torch.arange(len(lengths) + 1), torch.tensor([prefix_len] + lengths))
    i = torch.arange(width)
    causal = i[:, None] >= i[None, :]
    same = seg[:, :, None] == seg[:, None, :]
    sees_prefix = (seg[:, None, :] == 0) & (seg[:, :, None] >= 0)
    mask = (causal[None] & (same | sees_prefix))[:, None]  # (batch, 1, query, key), True = may attend
    hidden = model.get_decoder()(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 position_ids=pos.to(device)).last_hidden_state
    b, t = torch.tensor(ends, device=device).T
    return hidden[b, t], np.asarray(targets)


class Judge:
    """P(Yes) of prompts for one model and prompt encoder.

    ``batch_size``: candidates per forward pass; ``max_row_tokens``: the longest packed row (a
    user with many candidates is split over several rows, each repeating the prefix; by default
    1,024 tokens for the padded layout, whose attention grows with the square of a row, and 8,192
    for the flat one, whose attention does not, so nearly every user's prefix is computed once);
    ``layout``: see ``answer_states`` (by default the device's faster one).
    """

    def __init__(self, model, prompts: PromptEncoder, batch_size: int = 32, max_row_tokens: int | None = None,
                 layout: str | None = None):
        self.model, self.prompts, self.batch_size = model, prompts, batch_size
        self.device = next(model.parameters()).device
        self.layout = layout or default_layout(self.device)
        self.max_row_tokens = max_row_tokens or (8192 if self.layout == "flat" else 1024)
        self.pad_id = prompts.tokenizer.pad_token_id or 0
        self._kept: dict[Hashable, tuple[int, object]] = {}

    @torch.no_grad()
    def keep_prefixes(self, prefixes: dict[Hashable, list[int]]) -> None:
        """Compute each prefix's key/value states once and keep them under its key (a prefix of
        ``n`` tokens holds ``n x layers x 2 x kv_heads x head_dim`` numbers: ~46 KB a token for
        SmolLM2-135M), so that ``p_yes_kept`` costs only the suffix's tokens."""
        from transformers import DynamicCache

        self.model.eval()
        decoder = self.model.get_decoder()
        with autocast(self.device):
            for key, ids in prefixes.items():
                if key in self._kept or not ids:
                    continue
                cache = DynamicCache(config=self.model.config)
                decoder(input_ids=torch.tensor([ids], device=self.device), cache=cache, use_cache=True)
                self._kept[key] = (len(ids), cache)

    def keeps(self, keys) -> bool:
        return all(k in self._kept for k in keys)

    @torch.no_grad()
    def p_yes_kept(self, key: Hashable, suffixes: list[list[int]]) -> np.ndarray:
        """P(Yes) of each suffix after the kept prefix ``key``, at the positions right after it: what
        the packed path gives for the same prompt, without computing the prefix again. Each suffix
        extends its own copy of the states, so concurrent callers never see each other's tokens."""
        self.model.eval()
        length, cache = self._kept[key]
        decoder, states = self.model.get_decoder(), []
        with autocast(self.device):
            for suffix in suffixes:
                position = torch.arange(length, length + len(suffix), device=self.device)[None]
                hidden = decoder(input_ids=torch.tensor([suffix], device=self.device), position_ids=position,
                                 cache=copy.deepcopy(cache), use_cache=True).last_hidden_state
                states.append(hidden[0, -1])
            return self._yes_probability(torch.stack(states)) if states else np.zeros(0, np.float32)

    def p_yes_for_user(self, prefix: list[int], suffixes: list[list[int]]) -> np.ndarray:
        """P(Yes) of each suffix after one shared prefix."""
        return self.p_yes_grouped([prefix], suffixes, np.zeros(len(suffixes), dtype=np.int64))

    @torch.no_grad()
    def p_yes_grouped(self, prefixes: list[list[int]], suffixes: list[list[int]], owner: np.ndarray) -> np.ndarray:
        """P(Yes) of ``suffixes[j]`` after ``prefixes[owner[j]]``, each prefix computed once per row."""
        self.model.eval()
        out = np.zeros(len(suffixes), dtype=np.float32)
        rows, lengths = packed_rows(prefixes, suffixes, owner, self.max_row_tokens)
        # rows of similar length share a batch, so little of a batch is padding
        batch: list[tuple[int, np.ndarray]] = []
        with autocast(self.device):
            for r in np.argsort(lengths, kind="stable"):
                if batch and sum(len(idx) for _, idx in batch) + len(rows[r][1]) > self.batch_size:
                    self._run_packed(batch, prefixes, suffixes, out)
                    batch = []
                batch.append(rows[r])
            if batch:
                self._run_packed(batch, prefixes, suffixes, out)
        return out

    def _run_packed(self, rows, prefixes, suffixes, out: np.ndarray) -> None:
        hidden, targets = answer_states(self.model, rows, prefixes, suffixes, self.layout)
        out[targets] = self._yes_probability(hidden)

    def _yes_probability(self, hidden: torch.Tensor) -> np.ndarray:
        """P(Yes) against P(No) from final hidden states, applying only those two output rows."""
        head = self.model.get_output_embeddings()
        rows = torch.tensor([self.prompts.yes_id, self.prompts.no_id], device=hidden.device)
        logits = hidden.float() @ head.weight[rows].float().T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[rows].float()
        return _answer_softmax(self.model, logits)

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
                pair = logits[:, [self.prompts.yes_id, self.prompts.no_id]].float()
                out[idx] = torch.softmax(pair, dim=-1)[:, 0].cpu().numpy()
        return out


def _answer_softmax(model, logits: torch.Tensor) -> np.ndarray:
    # models that soft-cap their logits (Gemma 2) do it in the full head; it is monotone but not
    # shift-invariant, so the two-row shortcut must apply it too to give the same probabilities
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return torch.softmax(logits, dim=-1)[:, 0].cpu().numpy()
