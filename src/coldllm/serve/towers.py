"""The run's filter, kept for new items: every user scored for an item's text, top-K kept.

The filter stage writes its candidates but not its towers, so the service fits them once exactly
as that stage does (same data, backbone, settings and seed) and keeps the weights in
``serve/filter.safetensors``; later starts load them in a second. The refitted filter is checked
against the run's own candidates of its cold items, and the agreement is logged and written to
``serve/filter.json``: a number, not an assumption.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..config import ConfigError, RunConfig
from ..data import ColdStartData
from ..funnel.update import knn_prior
from ..utils import write_json
from .runs import read_artifact_parquet

log = logging.getLogger(__name__)
FORMAT = "1"  # bump when what is cached changes meaning


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


def fingerprint(run_dir: Path, manifest: dict) -> str:
    """What the towers depend on, read from the run's own records (not from today's config
    defaults, which may grow new settings): the backbone's weights, the filter's output, and the
    recorded settings of the filter stage."""
    digest = hashlib.sha256(FORMAT.encode())
    for name in ("backbone/best.safetensors", "filter/candidates.parquet"):
        if not (run_dir / name).is_file():
            raise ConfigError(f"{run_dir / name}: file not found; rerun the stage that writes it")
        digest.update((run_dir / name).read_bytes())
    recorded = manifest.get("config", {})
    settings = {k: recorded.get(k) for k in ("seed", "content", "filter")}
    settings["prior_k"] = recorded.get("update", {}).get("prior_k")
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


def load_or_fit(run_dir: Path, cfg: RunConfig, manifest: dict, data: ColdStartData, content: np.ndarray,
                lm_text: np.ndarray | None) -> FilterTowers:
    towers = cfg.filter.towers
    if towers == "file":
        raise ConfigError("filter.towers=file: the run read its candidates from a file, which has none for a new "
                          "item; serve a run whose filter scores users (coupled, collab, lm, onepass or random)")
    if towers == "random":
        return FilterTowers(towers=towers, users=np.zeros((data.n_users, 1), np.float32))
    path = run_dir / "serve" / "filter.safetensors"
    key = fingerprint(run_dir, manifest)
    tensors = specs = None
    if path.exists():
        tensors, specs = _cached(path, key)
    if tensors is None:
        log.info("fitting the run's filter towers once for new items (cached in %s)", path)
        tensors, specs = _fit(run_dir, cfg, data, content, lm_text)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"fingerprint": key, "layers": json.dumps(specs)})
        tmp.replace(path)
    return _assemble(cfg, tensors, specs, content[data.warm_items])


def _cached(path: Path, key: str) -> tuple[dict[str, torch.Tensor] | None, dict[str, list[dict]] | None]:
    """The cached towers when they were fitted for ``key``; (None, None) when they must be fitted
    again: fitted for other settings, or damaged (a cache is rebuilt, never a reason to stop)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        if meta.get("fingerprint") != key:
            log.warning("%s was fitted for another backbone or filter settings; fitting again", path)
            return None, None
        return load_file(str(path)), json.loads(meta["layers"])
    except Exception as err:  # noqa: BLE001  (safetensors raises its own error type for every defect)
        log.warning("%s is truncated or corrupt (%s); fitting the towers again", path, " ".join(str(err).split()))
        return None, None


def _fit(run_dir: Path, cfg: RunConfig, data: ColdStartData, content: np.ndarray,
         lm_text: np.ndarray | None) -> tuple[dict[str, torch.Tensor], dict[str, list[dict]]]:
    """The towers of the filter stage, fitted the way it fits them, as named tensors."""
    from ..backbones import load_backbone
    from ..baselines.aldi import ALDI
    from ..baselines.runner import make_context
    from ..funnel.filter import KNNTower, LanguageTower, LMTowerParams, coupled_embeddings
    from ..funnel.onepass import OnePass, OnePassParams
    from ..funnel.stages import _params
    from ..utils import resolve_device

    device = resolve_device(cfg.baselines.device)
    backbone = load_backbone(run_dir / "backbone", data)
    ctx = make_context(data, backbone, content, device, cfg.seed, cfg.eval.ks, cfg.eval.metric)
    collab = lm = None
    out: dict[str, torch.Tensor] = {}
    specs: dict[str, list[dict]] = {}
    if cfg.filter.towers in ("coupled", "collab"):
        if cfg.filter.collab_source == "aldi":
            collab = ALDI(cfg.filter.collab).fit(ctx)
            out.update(flat_layers("aldi.", collab.item_tower, specs))
        else:
            collab = KNNTower(ctx, cfg.update.prior_k)
            out["knn.items"] = ctx.item_emb[ctx.warm].detach().float().cpu()
    if cfg.filter.towers in ("coupled", "lm"):
        lm = LanguageTower(_params(LMTowerParams, cfg.filter.lm, "filter.lm")).fit(ctx, lm_text)
        out.update(flat_layers("lm.", lm.item_net, specs))
    if cfg.filter.towers == "onepass":
        simulator = OnePass(_params(OnePassParams, cfg.filter.onepass, "filter.onepass")).fit(ctx, lm_text)
        out.update(flat_layers("onepass.", simulator.net, specs))
        cold = simulator.embeddings(ctx.cold)
    else:
        cold = coupled_embeddings(collab, lm, ctx, ctx.cold)
    users = cold.users
    if cfg.filter.normalize_users:
        users = users / np.maximum(np.linalg.norm(users, axis=1, keepdims=True), 1e-12)
    out["users"] = torch.from_numpy(np.ascontiguousarray(users, dtype=np.float32))
    _agreement(run_dir, cfg, users, cold.cold_items, cold.cold_ids)
    return out, specs


def _agreement(run_dir: Path, cfg: RunConfig, users: np.ndarray, items: np.ndarray, ids: np.ndarray) -> None:
    """Share of the run's candidate pairs the refitted filter finds again (written, and logged)."""
    from ..funnel.filter import CoupledEmbeddings, top_users

    ours = top_users(CoupledEmbeddings(users=users, cold_items=items, cold_ids=ids), cfg.filter.k, cfg.filter.index)
    theirs = read_artifact_parquet(run_dir / "filter" / "candidates.parquet", columns=["item", "user"])
    shared = len(ours.merge(theirs, on=["item", "user"]))
    report = {"run_candidates": len(theirs), "refitted_candidates": len(ours),
              "agreement": shared / max(len(theirs), 1)}
    write_json(run_dir / "serve" / "filter.json", report)
    log.info("the refitted filter finds %.1f%% of the run's candidate pairs again", 100 * report["agreement"])


def _assemble(cfg: RunConfig, tensors: dict[str, torch.Tensor], specs: dict[str, list[dict]],
              warm_content: np.ndarray) -> FilterTowers:
    from ..funnel.filter import build_index

    users = tensors["users"].numpy()
    out = FilterTowers(towers=cfg.filter.towers, users=users, knn_k=cfg.update.prior_k)
    if "aldi." in specs:
        out.aldi_item = rebuild("aldi.", specs["aldi."], tensors)
    if "knn.items" in tensors:
        out.knn_items = tensors["knn.items"]
        out.knn_content = torch.as_tensor(warm_content, dtype=torch.float32)
    if "lm." in specs:
        out.lm_item = rebuild("lm.", specs["lm."], tensors)
    if "onepass." in specs:
        out.onepass_item = rebuild("onepass.", specs["onepass."], tensors)
    out.index = build_index(np.ascontiguousarray(users), cfg.filter.index)
    return out


# The item towers are small feed-forward stacks. They are kept as a list of plain layers (type and
# shape, in JSON) plus their tensors, so reading them back needs neither pickle nor the builder
# that made them.
def _layer_spec(layer: nn.Module) -> dict:
    if isinstance(layer, nn.Linear):
        return {"type": "Linear", "in": layer.in_features, "out": layer.out_features, "bias": layer.bias is not None}
    if isinstance(layer, nn.BatchNorm1d):
        return {"type": "BatchNorm1d", "n": layer.num_features, "eps": layer.eps, "affine": layer.affine}
    if isinstance(layer, nn.LayerNorm):
        return {"type": "LayerNorm", "shape": list(layer.normalized_shape), "eps": layer.eps}
    if isinstance(layer, nn.Dropout):
        return {"type": "Dropout", "p": layer.p}
    if isinstance(layer, (nn.Tanh, nn.ReLU, nn.Sigmoid, nn.GELU, nn.Identity)):
        return {"type": type(layer).__name__}
    raise ConfigError(f"the filter's tower has a {type(layer).__name__} layer, which the service cannot keep")


def flat_layers(prefix: str, module: nn.Module, specs: dict[str, list[dict]]) -> dict[str, torch.Tensor]:
    """The tower's leaf layers in order (its forward order: nested ``Sequential`` only) and their tensors."""
    leaves = [m for m in module.modules() if not list(m.children())]
    if any(not isinstance(m, nn.Sequential) for m in module.modules() if list(m.children())):
        raise ConfigError(f"the filter's tower {type(module).__name__} is not a plain stack of layers")
    specs[prefix] = [_layer_spec(m) for m in leaves]
    return {f"{prefix}{i}.{k}": v.detach().cpu() for i, m in enumerate(leaves) for k, v in m.state_dict().items()}


def rebuild(prefix: str, spec: list[dict], tensors: dict[str, torch.Tensor]) -> nn.Sequential:
    def layer(s: dict) -> nn.Module:
        kind = s["type"]
        if kind == "Linear":
            return nn.Linear(s["in"], s["out"], bias=s["bias"])
        if kind == "BatchNorm1d":
            return nn.BatchNorm1d(s["n"], eps=s["eps"], affine=s["affine"])
        if kind == "LayerNorm":
            return nn.LayerNorm(s["shape"], eps=s["eps"])
        if kind == "Dropout":
            return nn.Dropout(s["p"])
        return getattr(nn, kind)()

    stack = nn.Sequential(*[layer(s) for s in spec])
    stack.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return stack.eval()
