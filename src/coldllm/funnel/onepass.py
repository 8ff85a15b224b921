"""The one-pass simulator: an item's text in, a distribution over every user out.

The pairwise funnel asks a language model about each (user, item) pair, ~K calls per new item.
Here the item's text is read once: its language-model vector goes through an MLP into the
backbone's space, and a *user-vocabulary head* (one row per user, initialised from the backbone's
user embeddings, trained) turns it into a score for every user. Training uses warm items only:

* cross-entropy over all users for each warm training pair (the item's users are the targets),
* an alignment loss pulling the item's mapped vector toward its behaviour embedding, so the head's
  rows stay in the space the backbone's users live in.

For a cold item the head's top-K users become its simulated interactions (all accepted: there is
no judge), and the same update stage gives it an embedding. The top-K search goes through FAISS
like the filter's (the head's bias is one more coordinate), so it scales the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..baselines.base import FitContext, TrainParams, fit_with_early_stopping
from ..evaluate import Scorer
from ..layers import mlp
from .filter import CoupledEmbeddings


@dataclass
class OnePassParams(TrainParams):
    hidden: int = field(default=256, metadata={"help": "Hidden width of the text MLP."})
    align: float = field(default=1.0, metadata={"help": "Weight of the alignment loss (mapped text to the "
                                                        "item's behaviour embedding)."})
    epochs: int = field(default=20, metadata={"help": "Maximum epochs."})


class OnePass:
    name = "onepass"

    def __init__(self, params: OnePassParams | None = None):
        self.params = params or OnePassParams()
        self.history: list[dict] = []

    def fit(self, ctx: FitContext, text: np.ndarray) -> "OnePass":
        """``text``: (n_items, d) language-model vectors of every item's text."""
        p = self.params
        torch.manual_seed(ctx.seed)
        item_text = F.normalize(torch.from_numpy(text.astype(np.float32)).to(ctx.device), dim=1)
        dim = ctx.user_emb.shape[1]
        self.net = mlp([item_text.shape[1], p.hidden, dim], nn.ReLU).to(ctx.device)
        self.head = nn.Linear(dim, ctx.user_emb.shape[0]).to(ctx.device)
        with torch.no_grad():  # scores start as the backbone's user-item scores of the mapped text
            self.head.weight.copy_(ctx.user_emb)
            self.head.bias.zero_()
        self._text = item_text
        behaviour = ctx.item_emb
        modules = nn.ModuleDict({"net": self.net, "head": self.head})

        def step(users, pos, neg):  # negatives unused: the softmax runs over every user
            z = self.net(item_text[pos])
            ce = F.cross_entropy(self.head(z), users)
            align = (z - behaviour[pos]).pow(2).sum(1).mean()
            decay = sum(w.pow(2).sum() for w in self.net.parameters())
            return ce + p.align * align + p.reg * decay / len(users)

        fit_with_early_stopping(self, ctx, modules, step, p)
        return self

    def finish(self, ctx: FitContext) -> None:
        self.item_out = self.net(self._text)

    def scorer(self) -> Scorer:
        return lambda users: self.head.weight[users] @ self.item_out.T + self.head.bias[users, None]

    @torch.no_grad()
    def embeddings(self, item_ids: torch.Tensor) -> CoupledEmbeddings:
        """Users and items whose inner product is the head's score (the bias as a last coordinate)."""
        users = torch.cat([self.head.weight, self.head.bias[:, None]], 1)
        items = self.item_out[item_ids]
        items = torch.cat([items, torch.ones(len(items), 1, device=items.device)], 1)
        to_np = lambda t: np.ascontiguousarray(t.float().cpu().numpy())  # noqa: E731
        return CoupledEmbeddings(users=to_np(users), cold_items=to_np(items), cold_ids=item_ids.cpu().numpy())
