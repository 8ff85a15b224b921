"""ALDI (Huang et al., SIGIR 2023): aligning a content student to the warm teacher by distillation.

The teacher is the frozen backbone. The student has an item tower (content -> embedding) and a user
tower (teacher user embedding -> student space), trained on warm BPR triples (u, i+, i-) with:

* the supervised BPR loss on student scores;
* rating distillation (weight gamma): |s_teacher - s_student| for the positive and the negative;
* ranking distillation (alpha): cross-entropy of the student's score gap against the
  sigmoid of the teacher's gap, used as a soft label;
* identification distillation (beta): for each positive item, how much it stands out from the
  batch's negative items (its self-similarity minus its mean similarity to them), student vs
  teacher, with the same soft-label cross-entropy;
* item-frequency weighting: the two distillation terms are weighted by tanh(M * f_i / mean f)
  clipped at tanh(M), where f_i sums 1/|N(u)| over the item's users, so rarely-seen items,
  whose teacher embeddings are unreliable, teach less.

At inference warm items keep the teacher's scores; cold items are scored by the student towers.
"""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..evaluate import Scorer
from ..hparams import ALDIParams
from ..layers import mlp
from .base import ColdStartMethod, FitContext, fit_with_early_stopping, register


def frequency_weights(train, max_weight: float) -> np.ndarray:
    """Per-item weight tanh(M f_i / mean f), f_i = sum over the item's users of 1 / |N(u)|."""
    user_deg = np.asarray(train.sum(1)).ravel()
    inv = np.divide(1.0, user_deg, out=np.zeros_like(user_deg, dtype=np.float64), where=user_deg > 0)
    freq = np.asarray(train.multiply(inv[:, None]).sum(0)).ravel()
    mean = freq[freq > 0].mean() if (freq > 0).any() else 1.0
    return np.tanh(max_weight * freq / mean).astype(np.float32)


def soft_bce(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Per-element cross-entropy of sigmoid(logits) against the soft label sigmoid(teacher)."""
    return F.binary_cross_entropy_with_logits(logits, torch.sigmoid(teacher_logits), reduction="none")


@register("aldi")
class ALDI(ColdStartMethod):
    Params = ALDIParams

    def fit_model(self, ctx: FitContext) -> None:
        p = self.params
        dim = ctx.item_emb.shape[1]
        self.user_emb, self.item_emb = ctx.user_emb, ctx.item_emb
        self.item_tower = mlp([ctx.content.shape[1], p.hidden, dim], batch_norm=True).to(ctx.device)
        self.user_tower = mlp([dim, p.hidden, dim], batch_norm=True).to(ctx.device)
        modules = nn.ModuleDict({"item": self.item_tower, "user": self.user_tower})
        train = ctx.data.matrix("train")
        weight = torch.from_numpy(frequency_weights(train, p.max_weight)).to(ctx.device)
        if not p.freq_weight:
            weight = torch.ones_like(weight)

        def step(users, pos, neg):
            u_t, p_t, n_t = ctx.user_emb[users], ctx.item_emb[pos], ctx.item_emb[neg]
            u_s = self.user_tower(u_t)
            # positives and negatives through the item tower in one pass: its BatchNorm normalises
            # them with the same statistics, as it will score cold items. Apart, each batch is
            # centred on itself, which erases what sets positives apart from sampled negatives
            # (popularity, on MovieLens-1M) and leaves a student that fails on cold items
            p_s, n_s = self.item_tower(ctx.content[torch.cat([pos, neg])]).split(len(pos))
            pos_s, neg_s = (u_s * p_s).sum(1), (u_s * n_s).sum(1)
            pos_t, neg_t = (u_t * p_t).sum(1), (u_t * n_t).sum(1)
            w = weight[pos]
            loss = F.softplus(neg_s - pos_s).mean()
            loss = loss + p.gamma * ((pos_t - pos_s).abs() + (neg_t - neg_s).abs()).mean()
            loss = loss + p.alpha * (w * soft_bce(pos_s - neg_s, pos_t - neg_t)).mean()
            loss = loss + p.beta * (w * soft_bce(_standout(p_s, n_s), _standout(p_t, n_t))).mean()
            decay = sum(x.pow(2).sum() for x in modules.parameters())
            return loss + p.reg * decay / len(users)

        fit_with_early_stopping(self, ctx, modules, step, p)

    def finish(self, ctx: FitContext) -> None:
        self.cold = ctx.cold
        self.user_student = self.user_tower(ctx.user_emb)
        self.cold_student = self.item_tower(ctx.content[ctx.cold])

    def scorer(self) -> Scorer:
        def score(users: torch.Tensor) -> torch.Tensor:
            scores = self.user_emb[users] @ self.item_emb.T
            scores[:, self.cold] = self.user_student[users] @ self.cold_student.T
            return scores

        return score


def _standout(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Self-similarity of each positive item minus its mean similarity to the batch's negatives."""
    return (pos * pos).sum(1) - (pos @ neg.T).mean(1)
