"""What every collaborative backbone shares: embedding tables, the BPR loss, a registry."""

from __future__ import annotations

import scipy.sparse as sp
import torch
from torch import nn
import torch.nn.functional as F

from ..config import BackboneConfig
from ..utils import registrar
from .graph import spectral_factors

BACKBONES: dict[str, type["Backbone"]] = {}
register = registrar(BACKBONES)


class Backbone(nn.Module):
    """User/item ID embeddings, possibly propagated over the interaction graph.

    ``propagate()`` returns the final user and item representations used for scoring; the BPR
    regulariser acts on the *ego* (layer-0) embeddings of the batch, as in LightGCN and NGCF.
    """

    name = "backbone"

    def __init__(self, n_users: int, n_items: int, cfg: BackboneConfig, train: sp.csr_matrix):
        super().__init__()
        self.n_users, self.n_items, self.cfg = n_users, n_items, cfg
        self.user = nn.Embedding(n_users, cfg.dim)
        self.item = nn.Embedding(n_items, cfg.dim)
        nn.init.normal_(self.user.weight, std=cfg.init_scale)
        nn.init.normal_(self.item.weight, std=cfg.init_scale)
        if cfg.init == "spectral":
            self._spectral_start(train)

    @torch.no_grad()
    def _spectral_start(self, train: sp.csr_matrix) -> None:
        """Rows with interactions start at the spectral factors, scaled to ``init_scale``; rows
        without any (cold items, users with no training pair) keep their random start."""
        users, items = spectral_factors(train, self.cfg.dim)
        for table, factors, axis in ((self.user, users, 1), (self.item, items, 0)):
            rows = torch.from_numpy(train.getnnz(axis=axis) > 0)
            if rows.any():
                start = factors[rows]
                table.weight[rows] = start * (self.cfg.init_scale / start.pow(2).mean().sqrt().clamp_min(1e-12))

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def isolated_scale(self) -> float | None:
        """Output row / ego row of an item with no edges (a cold item), or None if not linear."""
        return None

    def bpr_loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        user_all, item_all = self.propagate()
        u, p, n = user_all[users], item_all[pos], item_all[neg]
        margin = (u * p).sum(-1) - (u * n).sum(-1)
        loss = F.softplus(-margin).mean()  # = -log sigmoid(margin), numerically stable
        ego = self.user(users).pow(2).sum() + self.item(pos).pow(2).sum() + self.item(neg).pow(2).sum()
        return loss + self.cfg.reg * ego / (2 * len(users))

    @torch.no_grad()
    def embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user and item representations for scoring (eval mode, no dropout)."""
        was_training = self.training
        self.eval()
        out = self.propagate()
        self.train(was_training)
        return out[0].detach(), out[1].detach()

    def to(self, *args, **kwargs):  # keep the sparse adjacency on the model's device
        module = super().to(*args, **kwargs)
        if getattr(self, "adj", None) is not None:
            self.adj = self.adj.to(*args, **kwargs)
        return module
