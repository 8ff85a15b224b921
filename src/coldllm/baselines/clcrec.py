"""CLCRec (Wei et al., ACM MM 2021): contrastive learning for cold-start recommendation.

Mapping content onto behaviour embeddings by regression copies their noise; CLCRec instead
maximises the mutual information between an item's content and its collaborative signal with two
InfoNCE losses over cosine similarities (temperature ``tau``, ``n_neg`` uniformly sampled warm
negatives per positive):

* user-item (weight ``lam``): a user against item representations in which a random share
  (``replace``) of the item ID embeddings is swapped for their content encodings, so that users
  learn to rank items whichever representation they come with;
* item-content (weight ``1 - lam``): an item's ID embedding against the content encodings of
  itself and of the negatives, so the encoder lands where the item's behaviour embedding is.

The user and item ID embeddings start from the frozen backbone's, so CLCRec begins with the same
collaborative knowledge as the other methods, and are trained with the content encoder
(content -> hidden -> LeakyReLU -> d). At inference cold items use the content encoder, warm items
their trained ID embeddings and users theirs: warm scores change, so ``keeps_warm`` is false.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ..evaluate import Scorer
from ..hparams import CLCRecParams
from ..layers import mlp
from .base import ColdStartMethod, FitContext, fit_with_early_stopping, register


def info_nce(anchor: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, tau: float) -> torch.Tensor:
    """Mean InfoNCE of each (B, d) anchor against its (B, d) positive and the shared (N, d) negatives.

    All inputs are unit vectors, so the logits are cosine similarities over the temperature.
    """
    logits = torch.cat([(anchor * pos).sum(1, keepdim=True), anchor @ neg.T], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(len(anchor), dtype=torch.long, device=anchor.device))


@register("clcrec")
class CLCRec(ColdStartMethod):
    Params = CLCRecParams
    keeps_warm = False

    def fit_model(self, ctx: FitContext) -> None:
        p = self.params
        dim = ctx.item_emb.shape[1]
        self.users = nn.Embedding.from_pretrained(ctx.user_emb.detach().clone(), freeze=False)
        # cold rows are never trained: they are neither positives nor negatives, and scoring
        # replaces them with content encodings
        self.items = nn.Embedding.from_pretrained(ctx.item_emb.detach().clone(), freeze=False)
        self.encoder = mlp([ctx.content.shape[1], p.hidden, dim], act=nn.LeakyReLU).to(ctx.device)
        modules = nn.ModuleDict({"user": self.users, "item": self.items, "encoder": self.encoder}).to(ctx.device)
        warm = ctx.warm

        def step(users: torch.Tensor, pos: torch.Tensor, _neg: torch.Tensor) -> torch.Tensor:
            # one set of negatives shared by the batch: B x N scores by one matmul, and the
            # encoder runs on B + N items instead of B * N
            neg = warm[torch.randint(len(warm), (p.n_neg,), device=ctx.device)]
            items = torch.cat([pos, neg])
            u_raw, i_raw = self.users(users), self.items(items)
            u, ids = F.normalize(u_raw, dim=1), F.normalize(i_raw, dim=1)
            enc = F.normalize(self.encoder(ctx.content[items]), dim=1)
            swap = torch.rand(len(items), 1, device=ctx.device) < p.replace
            mixed = torch.where(swap, enc, ids)
            b = len(users)
            user_item = info_nce(u, mixed[:b], mixed[b:], p.tau)
            item_content = info_nce(ids[:b], enc[:b], enc[b:], p.tau)
            decay = (u_raw.pow(2).sum() + i_raw[:b].pow(2).sum()) / b
            return p.lam * user_item + (1 - p.lam) * item_content + p.reg * decay

        fit_with_early_stopping(self, ctx, modules, step, p)

    @torch.no_grad()
    def finish(self, ctx: FitContext) -> None:
        items = self.items.weight.clone()
        items[ctx.cold] = self.encoder(ctx.content[ctx.cold])
        # cosine scores, as in training: the ID embeddings and encodings differ in norm
        self.user_out = F.normalize(self.users.weight, dim=1)
        self.item_out = F.normalize(items, dim=1)

    def scorer(self) -> Scorer:
        return lambda users: self.user_out[users] @ self.item_out.T
