"""The filter's fitted towers, saved by the filter stage beside its candidates and loaded by whoever
scores users for a new item later (the service), never fitted again.

What is kept: the user vectors the filter searched (after any normalisation) and, per sub-tower,
the item-side function that turns a new item's content or text vector into its part of the query.
Scoring the run's own cold items with the loaded towers gives the stage's candidates again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from ..config import ConfigError
from ..layers import flat_layers, rebuild
from ..utils import atomic_path, read_safetensors, read_safetensors_metadata
from .filter import build_index
from .update import knn_prior

FORMAT = "2"  # bump when what is saved changes meaning


@dataclass
class FilterTowers:
    """User vectors and the item-side functions whose inner products are the run's filter scores."""

    towers: str  # coupled | collab | lm | onepass | random
    users: np.ndarray  # (n_users, D) float32, normalised when the run's filter normalised them
    aldi_item: nn.Module | None = None  # content vector -> collaborative item vector
    knn_items: torch.Tensor | None = None  # backbone rows of the warm items (KNN sub-tower)
    knn_content: torch.Tensor | None = None  # their content vectors
    knn_k: int = 20
    lm_item: nn.Module | None = None  # normalised text vector -> language-model item vector
    # normalised text vector -> the one-pass simulator's item vector (its head's rows are ``users``,
    # the head's bias their last coordinate, met by a constant 1 on the item side)
    onepass_item: nn.Module | None = None
    index: Any = None  # FAISS inner-product index over ``users``
    to_backbone: torch.Tensor | None = None  # the content mapping's item vectors -> the backbone's space

    @torch.no_grad()
    def backbone_rows(self, content: np.ndarray, text: np.ndarray | None) -> torch.Tensor | None:
        """New items' rows in the backbone's space from the filter's own content mapping (the one-pass
        simulator's item vectors, else the ALDI student's), as the update's prior takes them."""
        if self.to_backbone is None:
            return None
        if self.onepass_item is not None:
            vectors = self.onepass_item(F.normalize(torch.as_tensor(text, dtype=torch.float32), dim=1))
        else:
            vectors = self.aldi_item(torch.as_tensor(content, dtype=torch.float32))
        return vectors @ self.to_backbone.T

    @torch.no_grad()
    def item_vectors(self, content: np.ndarray, text: np.ndarray | None) -> np.ndarray:
        """The filter's item vectors for new items' content vectors (and sub-tower text vectors)."""
        parts = []
        content_t = torch.as_tensor(content, dtype=torch.float32)
        if self.aldi_item is not None:
            parts.append(self.aldi_item(content_t))
        if self.knn_items is not None:
            n = len(self.knn_content)
            # the warm items first, then the new ones: knn_prior reads rows by position
            pool = torch.cat([self.knn_content, content_t])
            parts.append(knn_prior(pool, self.knn_items, torch.arange(n), torch.arange(n, n + len(content_t)),
                                   self.knn_k))
        if self.lm_item is not None:
            parts.append(self.lm_item(F.normalize(torch.as_tensor(text, dtype=torch.float32), dim=1)))
        if self.onepass_item is not None:
            mapped = self.onepass_item(F.normalize(torch.as_tensor(text, dtype=torch.float32), dim=1))
            parts += [mapped, torch.ones(len(mapped), 1)]
        return np.ascontiguousarray(torch.cat(parts, 1).float().numpy())

    def top_users(self, vectors: np.ndarray, k: int, seeds: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(users, scores) of each item's K best users, best first; the random ablation draws K
        distinct users per item from its own seed."""
        k = min(k, len(self.users))
        if self.towers == "random":
            return [(np.random.default_rng(s).choice(len(self.users), k, replace=False), np.zeros(k, np.float32))
                    for s in seeds]
        scores, users = self.index.search(vectors, k)
        # an approximate index marks slots it could not fill with -1: never a candidate
        return [(u[u >= 0].astype(np.int64), s[u >= 0]) for u, s in zip(users, scores)]


def save_towers(path: Path, kind: str, users: np.ndarray, parts: dict[str, nn.Module],
                knn_items: torch.Tensor | None = None, knn_k: int = 20,
                to_backbone: torch.Tensor | None = None) -> None:
    """Write the towers: ``parts`` maps a sub-tower (aldi, lm, onepass) to its item-side stack;
    ``to_backbone`` maps the content mapping's item vectors (the one-pass simulator's, else the ALDI
    student's) into the backbone's space, for the update's prior (``funnel.update.to_backbone``)."""
    specs: dict[str, list[dict]] = {}
    tensors: dict[str, torch.Tensor] = {"users": torch.from_numpy(np.ascontiguousarray(users, dtype=np.float32))}
    for name, module in parts.items():
        tensors.update(flat_layers(f"{name}.", module, specs))
    if knn_items is not None:
        tensors["knn.items"] = knn_items.detach().float().cpu()
    if to_backbone is not None:
        tensors["to_backbone"] = to_backbone.detach().float().cpu()
    meta = {"format": FORMAT, "towers": kind, "knn_k": str(knn_k), "layers": json.dumps(specs)}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def load_towers(path: Path, warm_content: np.ndarray, index_kind: str = "flat") -> FilterTowers:
    """The towers the filter stage saved; a missing or damaged file is one error naming it."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found; the filter stage saves its towers there (a run made before it "
                          "did: `coldllm run --redo-from filter` with the run's config)")
    meta = read_safetensors_metadata(path)  # a truncated or corrupt file: one error naming it
    tensors = read_safetensors(path)
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path}: saved in format {meta.get('format')!r}, not {FORMAT!r}; run the filter stage again")
    specs = json.loads(meta["layers"])
    users = tensors["users"].numpy()
    out = FilterTowers(towers=meta["towers"], users=users, knn_k=int(meta["knn_k"]))
    if "aldi." in specs:
        out.aldi_item = rebuild("aldi.", specs["aldi."], tensors)
    if "knn.items" in tensors:
        out.knn_items = tensors["knn.items"]
        out.knn_content = torch.as_tensor(warm_content, dtype=torch.float32)
    if "lm." in specs:
        out.lm_item = rebuild("lm.", specs["lm."], tensors)
    if "onepass." in specs:
        out.onepass_item = rebuild("onepass.", specs["onepass."], tensors)
    out.to_backbone = tensors.get("to_backbone")
    if out.towers != "random":
        out.index = build_index(np.ascontiguousarray(users), index_kind)
    return out
