"""A finished run folder, read back: its config, its dataset and the methods it can score again.

A method is a pair of user and item representations scored by inner product. The run can rebuild:
the backbone alone (its checkpoint), the ColdLLM update (``update/embeddings.safetensors``, exactly
what was evaluated), the content prior the update started from (content-KNN in the backbone's
space: cheap, deterministic) and the training-free controls of its ``baselines`` stage (random,
knn), refitted on the spot. Trained baselines are not refitted: that would be a new measurement,
not a report of this one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backbones import load_backbone
from ..baselines import build_method
from ..baselines.base import FitContext
from ..config import ConfigError, RunConfig
from ..content import encode_texts
from ..data import ColdStartData
from ..funnel.update import knn_prior, prior_candidates
from ..layout import RunLayout
from ..serve.runs import read_manifest, run_config, run_data  # the service reads runs the same way
from ..utils import read_safetensors

log = logging.getLogger(__name__)

# baselines that learn nothing, so refitting them reproduces the run's own figures exactly
TRAINING_FREE = ("random", "knn")


@dataclass
class Method:
    name: str  # short key: backbone, coldllm, prior, random, ...
    label: str  # legend text
    user_emb: torch.Tensor
    item_emb: torch.Tensor


@dataclass
class FinishedRun:
    dir: Path
    manifest: dict[str, Any]
    cfg: RunConfig
    data: ColdStartData

    def done(self, stage: str) -> bool:
        return self.manifest.get("stages", {}).get(stage, {}).get("status") == "done"

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.dir)


def open_run(run_dir: Path) -> FinishedRun:
    """The run in ``run_dir``, with its prepared dataset (the cached copy its stages used)."""
    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    cfg = run_config(run_dir, manifest)
    return FinishedRun(run_dir, manifest, cfg, run_data(run_dir, manifest, cfg))


def methods(run: FinishedRun, device: torch.device | str = "cpu") -> list[Method]:
    """Every method the run can score again, the backbone first."""
    if not run.layout.backbone_meta.exists():
        raise ConfigError(f"{run.dir}: no trained backbone (backbone/backbone.json); run its train stage first")
    backbone = load_backbone(run.layout.backbone, run.data).to(device)
    user_emb, item_emb = backbone.embeddings()
    out = [Method("backbone", f"{run.cfg.backbone.model} backbone alone", user_emb, item_emb)]
    out += _controls(run, user_emb, item_emb, device)
    if run.layout.embeddings.exists():
        if run.cfg.update.prior in ("knn", "best"):
            starts_there = run.cfg.update.mode == "fast" or run.cfg.update.init == "backbone"
            # with prior: best, the one the update chose on validation (its name is in the manifest)
            chosen = run.manifest.get("stages", {}).get("update", {}).get("prior", "knn")
            rows = _prior(run, item_emb)
            if chosen != "knn":
                mapped = read_safetensors(run.layout.filter_prior)["cold"].to(rows)
                rows = prior_candidates(rows, mapped)[chosen]
            what = "content-KNN" if chosen == "knn" else f"{chosen}, chosen on validation"
            label = f"content prior ({what}{'; the update starts there' if starts_there else ''})"
            out.append(Method("prior", label, user_emb, _with_cold_rows(run, item_emb, rows)))
        tensors = read_safetensors(run.layout.embeddings)
        how = ("one-pass simulator" if run.cfg.filter.towers == "onepass" and run.cfg.refiner.judge == "all"
               else f"{run.cfg.refiner.judge} judge")
        out.append(Method("coldllm", f"ColdLLM ({how}, {run.cfg.update.mode} update)",
                          tensors["user"].to(device), tensors["item"].to(device)))
    return out


def _with_cold_rows(run: FinishedRun, item_emb: torch.Tensor, cold_rows: torch.Tensor) -> torch.Tensor:
    items = item_emb.clone()
    items[torch.as_tensor(run.data.cold_items, device=items.device)] = cold_rows.to(items)
    return items


def _content(run: FinishedRun) -> np.ndarray:
    return encode_texts(list(run.data.item_text), run.cfg.content)  # cached by model and text hash


def _prior(run: FinishedRun, item_emb: torch.Tensor) -> torch.Tensor:
    content = torch.as_tensor(_content(run), dtype=torch.float32)
    return knn_prior(content, item_emb.cpu(), torch.as_tensor(run.data.warm_items),
                     torch.as_tensor(run.data.cold_items), run.cfg.update.prior_k)


def _controls(run: FinishedRun, user_emb: torch.Tensor, item_emb: torch.Tensor, device) -> list[Method]:
    """The training-free baselines the run measured (a ``baselines/<name>.json`` of each)."""
    names = [n for n in TRAINING_FREE if run.layout.baseline(n).exists()]
    if not names:
        return []
    ctx = FitContext(data=run.data, content=torch.as_tensor(_content(run), dtype=torch.float32).to(device),
                     user_emb=user_emb, item_emb=item_emb, device=torch.device(device), seed=run.cfg.seed)
    out = []
    for name in names:
        saved = json.loads(run.layout.baseline(name).read_text())
        method = build_method(name, saved.get("params") or run.cfg.baselines.params.get(name))
        method.fit(ctx)
        out.append(Method(name, {"random": "random control", "knn": "content-KNN control"}[name],
                          method.user_emb, method.item_emb))
    return out
