"""Attention for packed judge rows, computed block by block instead of through a dense mask.

A packed row is ``prefix | suffix_1 | suffix_2 | ...``: the prefix is causal, and each suffix sees
the prefix and itself only. With a dense (query x key) mask, attention costs the square of the
row's length, and most of that square is masked out; on a 2-core CPU it was a quarter of the
judge's time. Here the prefix is one call with ``is_causal`` (the kernel skips the upper
triangle), and the suffixes go a few at a time against the prefix keys and their own.

Rows are laid end to end in one sequence of batch 1, so the linear layers, which are most of the
work, see no padding at all.

The attention function is registered with transformers' ``AttentionInterface`` under a name that
wraps the model's own implementation: calls that carry a ``packed_layout`` keyword take the block
path, every other call (whole prompts, generation) goes to the wrapped implementation unchanged.
So installing it never changes what the model computes elsewhere, and concurrent callers of one
model (the service's threads) cannot switch each other's path.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PREFIX = "coldllm_blocks|"


# suffix tokens per attention call: each call pays for its own suffix-by-suffix square, and each
# call copies the row's prefix keys; about three titles per call was fastest on a 2-core CPU
CHUNK_TOKENS = 64


@dataclass
class Call:
    """One attention call: queries ``[lo, hi)`` against the keys of ``keys`` (one or two ranges,
    laid side by side), causal, or under ``mask`` (True: may attend)."""

    lo: int
    hi: int
    keys: tuple[tuple[int, int], ...]
    mask: torch.Tensor | None = None


@dataclass
class PackedLayout:
    """The attention calls that cover a flat sequence of packed rows."""

    calls: list[Call]
    longest: int  # the longest prompt (prefix and one suffix) of any row, in tokens

    @classmethod
    def build(cls, rows: list[tuple[int, list[int]]], device: torch.device,
              chunk_tokens: int | None = None) -> PackedLayout:
        """``rows``: per row, the prefix length and the suffix lengths in order."""
        chunk_tokens = chunk_tokens or CHUNK_TOKENS
        calls, start = [], 0
        longest = max((p + max(s, default=0) for p, s in rows), default=0)
        for prefix_len, suffix_lens in rows:
            mid = start + prefix_len
            if prefix_len:
                calls.append(Call(start, mid, ((start, mid),)))
            lo = mid
            for chunk in _chunks(suffix_lens, chunk_tokens):
                hi = lo + sum(chunk)
                segment = torch.repeat_interleave(torch.arange(len(chunk)), torch.tensor(chunk))
                i = torch.arange(hi - lo)
                own = (segment[:, None] == segment[None, :]) & (i[:, None] >= i[None, :])
                sees = torch.cat([torch.ones(hi - lo, prefix_len, dtype=torch.bool), own], dim=1)
                keys = ((start, hi),) if lo == mid else ((start, mid), (lo, hi))
                calls.append(Call(lo, hi, keys, sees[None, None].to(device)))
                lo = hi
            start = lo
        return cls(calls, longest)


def _chunks(lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive suffixes grouped up to ``budget`` tokens (a call holds at least one)."""
    chunks: list[list[int]] = []
    for n in lengths:
        if chunks and sum(chunks[-1]) + n <= budget:
            chunks[-1].append(n)
        else:
            chunks.append([n])
    return chunks


def block_attention(query, key, value, layout: PackedLayout, dropout: float = 0.0,
                    scaling: float | None = None) -> torch.Tensor:
    """``query`` (1, heads, tokens, dim), ``key``/``value`` (1, kv heads, tokens, dim) over the
    flat sequence of ``layout``; returns (1, tokens, heads, dim) as transformers' layers expect."""
    gqa = query.shape[1] != key.shape[1]

    def take(x, ranges):
        return x[:, :, ranges[0][0]:ranges[0][1]] if len(ranges) == 1 else \
            torch.cat([x[:, :, a:b] for a, b in ranges], dim=2)

    parts = [F.scaled_dot_product_attention(
        query[:, :, c.lo:c.hi], take(key, c.keys), take(value, c.keys), attn_mask=c.mask,
        is_causal=c.mask is None, dropout_p=dropout, scale=scaling, enable_gqa=gqa) for c in layout.calls]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous()


def _wrapping(name: str):
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
        layout = kwargs.pop("packed_layout", None)
        if layout is not None:
            window = getattr(module, "sliding_window", None)
            if window is not None and layout.longest > window:  # the blocks have no window: refuse
                raise ValueError(f"a prompt of {layout.longest} tokens is longer than the model's sliding attention "
                                 f"window ({window}); show fewer or shorter titles (refiner.template)")
            return block_attention(query, key, value, layout, dropout, scaling), None
        if name == "eager":  # each architecture has its own eager attention, beside its layer class
            inner = sys.modules[type(module).__module__].eager_attention_forward
        else:
            inner = ALL_ATTENTION_FUNCTIONS[name]
        return inner(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)

    AttentionInterface.register(PREFIX + name, attention)


def install(model) -> None:
    """Route the model's attention through the block path whenever a call carries a layout
    (idempotent; the model's own implementation serves every other call)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    config = model.config
    current = config._attn_implementation or "eager"
    if current.startswith(PREFIX):
        return
    _wrapping(current)
    AttentionMaskInterface.register(PREFIX + current, ALL_MASK_ATTENTION_FUNCTIONS[current])
    config._attn_implementation = PREFIX + current
