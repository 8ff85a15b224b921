"""DropoutNet (Volkovs et al., NeurIPS 2017): learn cold-start by randomly hiding preferences.

Two towers re-learn the frozen backbone's scores: the user tower reads the backbone user embedding,
the item tower reads [backbone item embedding || content]. The loss is the squared error between
the towers' dot product and the backbone's dot product for the (user, item) pairs of BPR triples,
positives and negatives alike. With probability ``dropout`` an item row's preference input is set to
zero during training, so the item tower must reconstruct the backbone's scores from content alone;
at inference a cold item is exactly such a row. Because the towers replace the backbone for every
item (warm ones are re-encoded too, keeping their embedding as input), ``keeps_warm`` is false.

Preference inputs are standardised per dimension with warm statistics, as in the reference
preprocessing: a zeroed row then reads as "an average item" rather than an extreme one.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ..evaluate import Scorer
from ..hparams import DropoutNetParams
from ..layers import mlp
from .base import ColdStartMethod, FitContext, fit_with_early_stopping, register


def standardise(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(x - mean) / std per column, with the statistics of ``rows`` only."""
    ref = x[rows]
    return (x - ref.mean(0)) / ref.std(0).clamp_min(1e-6)


@register("dropoutnet")
class DropoutNet(ColdStartMethod):
    keeps_warm = False
    Params = DropoutNetParams

    def fit_model(self, ctx: FitContext) -> None:
        p = self.params
        dim = ctx.item_emb.shape[1]
        out = p.out_dim or dim
        users_seen = torch.unique(torch.from_numpy(ctx.data.matrix("train").tocoo().row).to(ctx.device))
        self.user_in = standardise(ctx.user_emb, users_seen)
        item_pref = standardise(ctx.item_emb, ctx.warm)
        # Cold rows of the backbone are untrained noise: they must never reach the tower.
        item_pref[ctx.cold] = 0.0
        self.item_in = torch.cat([item_pref, ctx.content.to(item_pref.dtype)], dim=1)
        self.user_tower = mlp([dim, *[p.hidden] * p.layers, out], batch_norm=True).to(ctx.device)
        self.item_tower = mlp([self.item_in.shape[1], *[p.hidden] * p.layers, out], batch_norm=True).to(ctx.device)
        modules = nn.ModuleDict({"user": self.user_tower, "item": self.item_tower})

        def step(users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
            items = torch.cat([pos, neg])
            x = self.item_in[items]
            # Input dropout on the preference part only: the content part is always there.
            keep = (torch.rand(len(items), 1, device=x.device) >= p.dropout).to(x.dtype)
            x = torch.cat([x[:, :dim] * keep, x[:, dim:]], dim=1)
            u = self.user_tower(self.user_in[users]).repeat(2, 1)
            pred = (u * self.item_tower(x)).sum(1)
            target = (ctx.user_emb[users].repeat(2, 1) * ctx.item_emb[items]).sum(1)
            decay = sum(w.pow(2).sum() for w in modules.parameters())
            return F.mse_loss(pred, target) + p.reg * decay / len(users)

        fit_with_early_stopping(self, ctx, modules, step, p)

    @torch.no_grad()
    def finish(self, ctx: FitContext) -> None:
        # Whole-table passes in eval mode (BatchNorm running statistics); the item table fits memory.
        self.user_out = self.user_tower(self.user_in)
        self.item_out = self.item_tower(self.item_in)

    def scorer(self) -> Scorer:
        return lambda users: self.user_out[users] @ self.item_out.T
