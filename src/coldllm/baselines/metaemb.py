"""Meta-Embedding (Pan et al., SIGIR 2019), adapted to a frozen collaborative backbone.

A generator maps an item's content to an initial ID embedding in the backbone's space. It is
meta-trained so that the embedding is good twice over: at once, when the item has no interactions
(loss a), and after one gradient step on a few observed interactions (loss b), which is what will
happen to a new item's embedding as its first interactions arrive. Following the paper's two
disjoint minibatches of the same new ID, the warm-up step uses the batch's triples and loss b
scores *other* training users of the same positive items with the adapted embedding; the
meta-gradient flows back through the step. Total: alpha * a + (1 - alpha) * b.

The losses are BPR with the frozen backbone user embeddings against generated embeddings for both
items of each triple (every item of a batch plays the new item). The generator starts with small
outputs, as the paper asks, so that new embeddings begin close to "no information". Warm items
keep their backbone embeddings; cold items get the generator's output.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from ..hparams import MetaEmbParams
from ..layers import mlp
from .base import EmbeddingMethod, FitContext, fit_with_early_stopping, register


def bpr_rows(users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(u.i - u.j), one value per row."""
    return F.softplus(-(users * (pos - neg)).sum(1))


@register("metaemb")
class MetaEmbedding(EmbeddingMethod):
    Params = MetaEmbParams

    def train(self, ctx: FitContext) -> None:
        p = self.params
        dim = ctx.item_emb.shape[1]
        self.net = mlp([ctx.content.shape[1], *[p.hidden] * p.layers, dim]).to(ctx.device)
        with torch.no_grad():
            for w in self.net.parameters():
                w.mul_(p.init_scale)
        # Item -> its training users (CSC), to draw the second, disjoint sample of each positive item.
        csc = ctx.data.matrix("train").tocsc()
        indptr = torch.from_numpy(csc.indptr).long().to(ctx.device)
        indices = torch.from_numpy(csc.indices).long().to(ctx.device)

        def step(users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
            n = len(users)
            # One generated embedding per distinct item, so an item seen twice is adapted once.
            items, inv = torch.unique(torch.cat([pos, neg]), return_inverse=True)
            ip, ineg = inv[:n], inv[n:]
            phi = self.net(ctx.content[items])
            loss_a = bpr_rows(ctx.user_emb[users], phi[ip], phi[ineg])
            # Warm-up: the summed (not averaged) loss, so each item moves as far as its own
            # interactions would move it, independently of the batch size.
            (grad,) = torch.autograd.grad(loss_a.sum(), phi, create_graph=True)
            adapted = phi - p.inner_lr * grad
            # Part b: another training user of each positive item; rows that drew the same user
            # (items with one interaction, or chance) would test on the warm-up data and are dropped.
            start, deg = indptr[pos], indptr[pos + 1] - indptr[pos]
            users_b = indices[start + (torch.rand(n, device=pos.device) * deg).long().clamp_max(deg - 1)]
            fresh = (users_b != users).to(phi.dtype)
            loss_b = bpr_rows(ctx.user_emb[users_b], adapted[ip], adapted[ineg])
            loss_b = (loss_b * fresh).sum() / fresh.sum().clamp_min(1.0)
            decay = (phi.pow(2).sum() + sum(w.pow(2).sum() for w in self.net.parameters())) / n
            return p.a_weight * loss_a.mean() + (1 - p.a_weight) * loss_b + p.reg * decay

        fit_with_early_stopping(self, ctx, self.net, step, p)

    def cold_embeddings(self, ctx: FitContext) -> torch.Tensor:
        return self.net(ctx.content[ctx.cold])
