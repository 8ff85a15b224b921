"""MTPR (Du et al., SIGIR 2020): multi-task pairwise ranking with counterfactual item representations.

An item is represented by [ID embedding || W content]. A model trained only on that representation
leans on the ID part, which a cold item does not have; MTPR therefore also trains on the
*counterfactual* representation, [0 || W content], the item as it would look without any
interactions. Each BPR triple gives four pairwise terms: normal vs normal, counterfactual vs
counterfactual, and the two mixed pairs (normal positive vs counterfactual negative and the
reverse), so that both representations live on one comparable scale and can be ranked together.

ID embeddings start from the backbone's item embeddings; user embeddings are as wide as the item
representation and start from [backbone user embedding || small noise]. Everything is trained, so
warm scores change too (``keeps_warm`` false): warm items are scored with the normal
representation, cold items with the counterfactual one.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ..evaluate import Scorer
from ..hparams import MTPRParams
from .base import ColdStartMethod, FitContext, fit_with_early_stopping, register


@register("mtpr")
class MTPR(ColdStartMethod):
    keeps_warm = False
    Params = MTPRParams

    def fit_model(self, ctx: FitContext) -> None:
        p = self.params
        gen = torch.Generator().manual_seed(ctx.seed)
        noise = torch.randn(ctx.user_emb.shape[0], p.hidden, generator=gen).to(ctx.device) * p.init_std
        item_init = ctx.item_emb.clone()
        item_init[ctx.cold] = 0.0  # untrained backbone rows; cold items never use an ID part anyway
        self.net = nn.ModuleDict({
            "user": nn.Embedding.from_pretrained(torch.cat([ctx.user_emb, noise], 1), freeze=False),
            "item": nn.Embedding.from_pretrained(item_init, freeze=False),
            "content": nn.Linear(ctx.content.shape[1], p.hidden, bias=False),
        }).to(ctx.device)
        self.k = ctx.item_emb.shape[1]

        def step(users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
            u = self.net["user"](users)
            u_id, u_c = u[:, : self.k], u[:, self.k :]
            e_pos, e_neg = self.net["item"](pos), self.net["item"](neg)
            c_pos, c_neg = self.net["content"](ctx.content[pos]), self.net["content"](ctx.content[neg])
            # Counterfactual score: the ID part is zero, so only the content part remains.
            cf_pos, cf_neg = (u_c * c_pos).sum(1), (u_c * c_neg).sum(1)
            full_pos, full_neg = cf_pos + (u_id * e_pos).sum(1), cf_neg + (u_id * e_neg).sum(1)
            loss = sum(F.softplus(n - s).mean() for s, n in (
                (full_pos, full_neg), (cf_pos, cf_neg), (full_pos, cf_neg), (cf_pos, full_neg)))
            decay = u.pow(2).sum() + e_pos.pow(2).sum() + e_neg.pow(2).sum() + c_pos.pow(2).sum() \
                + c_neg.pow(2).sum()
            return loss + p.reg * decay / len(users)

        fit_with_early_stopping(self, ctx, self.net, step, p)

    @torch.no_grad()
    def finish(self, ctx: FitContext) -> None:
        ids = self.net["item"].weight.clone()
        ids[ctx.cold] = 0.0  # cold items: the counterfactual representation
        self.users = self.net["user"].weight.detach()
        self.items = torch.cat([ids, self.net["content"](ctx.content)], 1)

    def scorer(self) -> Scorer:
        return lambda users: self.users[users] @ self.items.T
