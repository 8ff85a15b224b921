"""LightGCN (He et al., SIGIR 2020): parameter-free propagation, mean of the layer outputs."""

from __future__ import annotations

import torch

from .base import Backbone, register
from .graph import normalized_adjacency, spmm_symmetric


@register("lightgcn")
class LightGCN(Backbone):
    def __init__(self, n_users, n_items, cfg, train):
        super().__init__(n_users, n_items, cfg, train)
        self.adj = normalized_adjacency(train)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        ego = torch.cat([self.user.weight, self.item.weight])
        total, layer = ego, ego
        for _ in range(self.cfg.layers):
            layer = spmm_symmetric(self.adj, layer)
            total = total + layer
        out = total / (self.cfg.layers + 1)
        return out[: self.n_users], out[self.n_users :]

    def isolated_scale(self) -> float:
        # no neighbours: every propagated layer of the node is zero, only the ego layer counts
        return 1.0 / (self.cfg.layers + 1)
