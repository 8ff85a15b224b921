"""NGCF (Wang et al., SIGIR 2019): propagation with feature transforms and a bi-interaction term.

Layer l: E' = LeakyReLU((A + I) E W1 + (A E * E) W2), message dropout, then L2-normalised; the
final representation concatenates all layers, so it has ``dim * (layers + 1)`` columns.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .base import Backbone, register
from .graph import normalized_adjacency, spmm_symmetric


@register("ngcf")
class NGCF(Backbone):
    def __init__(self, n_users, n_items, cfg, train):
        super().__init__(n_users, n_items, cfg, train)
        self.adj = normalized_adjacency(train)
        self.w_sum = nn.ModuleList(nn.Linear(cfg.dim, cfg.dim) for _ in range(cfg.layers))
        self.w_bi = nn.ModuleList(nn.Linear(cfg.dim, cfg.dim) for _ in range(cfg.layers))
        for lin in [*self.w_sum, *self.w_bi]:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        ego = torch.cat([self.user.weight, self.item.weight])
        layers = [ego]
        for w_sum, w_bi in zip(self.w_sum, self.w_bi):
            side = spmm_symmetric(self.adj, ego)
            ego = F.leaky_relu(w_sum(side + ego) + w_bi(side * ego), negative_slope=0.2)
            ego = F.dropout(ego, p=self.cfg.dropout, training=self.training)
            layers.append(F.normalize(ego, dim=1))
        out = torch.cat(layers, dim=1)
        return out[: self.n_users], out[self.n_users :]
