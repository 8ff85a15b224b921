"""Collaborative backbones trained with BPR: MF, LightGCN, NGCF."""

import scipy.sparse as sp
import torch

from ..config import BackboneConfig
from . import lightgcn, mf, ngcf  # noqa: F401  (registers the models)
from .base import BACKBONES, Backbone
from .train import TrainResult, load_backbone, train_backbone


def build_backbone(cfg: BackboneConfig, train: sp.csr_matrix, seed: int = 0) -> Backbone:
    """A freshly initialised backbone; the same seed gives the same initial weights."""
    if cfg.model not in BACKBONES:
        raise ValueError(f"backbone.model {cfg.model!r} is not one of {sorted(BACKBONES)}")
    torch.manual_seed(seed)
    return BACKBONES[cfg.model](train.shape[0], train.shape[1], cfg, train)


__all__ = ["BACKBONES", "Backbone", "TrainResult", "build_backbone", "load_backbone", "train_backbone"]
