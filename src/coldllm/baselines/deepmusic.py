"""DeepMusic (van den Oord et al., NeurIPS 2013): regress the backbone's item embeddings from
content with an MLP and a mean-squared error; the backbone stays frozen and warm items keep their
embeddings. Positives of BPR triples are the training targets, so items are seen in proportion to
their popularity, as in the reference implementations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layers import mlp
from .base import EmbeddingMethod, FitContext, TrainParams, fit_with_early_stopping, register


@register("deepmusic")
class DeepMusic(EmbeddingMethod):
    Params = TrainParams

    def train(self, ctx: FitContext) -> None:
        p = self.params
        dim = ctx.item_emb.shape[1]
        self.net = mlp([ctx.content.shape[1], p.hidden, dim], act=torch.nn.ReLU).to(ctx.device)

        def step(users, pos, neg):
            pred = self.net(ctx.content[pos])
            decay = sum(w.pow(2).sum() for w in self.net.parameters())
            return F.mse_loss(pred, ctx.item_emb[pos]) + p.reg * decay / len(users)

        fit_with_early_stopping(self, ctx, self.net, step, p)

    def cold_embeddings(self, ctx: FitContext) -> torch.Tensor:
        return self.net(ctx.content[ctx.cold])
