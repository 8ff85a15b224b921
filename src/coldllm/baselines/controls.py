"""Two controls that every method must beat to mean anything.

* ``random``: cold items get random vectors with the per-dimension mean and spread of the warm
  items' embeddings: what "no content at all" scores.
* ``knn``: a cold item takes the (similarity-weighted) mean behaviour embedding of its ``k`` most
  content-similar warm items. No training, and often a strong baseline.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from ..hparams import RandomParams, KNNParams
from .base import EmbeddingMethod, FitContext, register


@register("random")
class RandomEmbeddings(EmbeddingMethod):
    Params = RandomParams

    def cold_embeddings(self, ctx: FitContext) -> torch.Tensor:
        warm = ctx.item_emb[ctx.warm]
        gen = torch.Generator().manual_seed(self.params.seed + ctx.seed)
        noise = torch.randn(len(ctx.cold), warm.shape[1], generator=gen).to(warm.device)
        return warm.mean(0) + noise * warm.std(0)


@register("knn")
class ContentKNN(EmbeddingMethod):
    Params = KNNParams

    def cold_embeddings(self, ctx: FitContext) -> torch.Tensor:
        p = self.params
        warm_content = F.normalize(ctx.content[ctx.warm].float(), dim=1)
        warm_emb = ctx.item_emb[ctx.warm]
        k = min(p.k, len(warm_emb))
        out = []
        for block in ctx.cold.split(p.batch):
            sim = F.normalize(ctx.content[block].float(), dim=1) @ warm_content.T
            top, idx = sim.topk(k, dim=1)
            if p.temperature > 0:
                weights = torch.softmax(top / p.temperature, dim=1)
            else:
                weights = torch.full_like(top, 1.0 / k)
            out.append((weights.unsqueeze(-1) * warm_emb[idx]).sum(1))
        return torch.cat(out)
