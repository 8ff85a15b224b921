"""Matrix factorisation: the score is the inner product of two ID embeddings (BPR-MF)."""

from __future__ import annotations

import torch

from .base import Backbone, register


@register("mf")
class MF(Backbone):
    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user.weight, self.item.weight

    def isolated_scale(self) -> float:
        return 1.0
