"""Fit a cold-start method on a trained backbone and measure it, on validation and test."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from . import build_method
from ..backbones import Backbone
from ..data import ColdStartData
from ..evaluate import Evaluator
from ..utils import peak_memory_mb
from .base import ColdStartMethod, FitContext

log = logging.getLogger(__name__)


def make_context(data: ColdStartData, backbone: Backbone, content: np.ndarray, device: torch.device,
                 seed: int = 0, ks: list[int] | None = None, metric: str = "ndcg@20") -> FitContext:
    user_emb, item_emb = backbone.to(device).embeddings()
    metric_k = int(metric.split("@")[1])
    validator = Evaluator(data, "val", sorted({*(ks or [20]), metric_k}), settings=("cold",))
    return FitContext(data=data, content=torch.from_numpy(np.asarray(content, dtype=np.float32)).to(device),
                      user_emb=user_emb, item_emb=item_emb, device=device, seed=seed,
                      validator=validator, metric=metric)


def fit_and_evaluate(name: str, params: dict[str, Any] | None, ctx: FitContext,
                     splits: tuple[str, ...] = ("val", "test"), ks: list[int] | None = None
                     ) -> tuple[ColdStartMethod, dict[str, Any]]:
    """Fit ``name`` with ``params`` and evaluate it in all three settings of each split."""
    method = build_method(name, params)
    start = time.perf_counter()
    method.fit(ctx)
    seconds = time.perf_counter() - start
    report: dict[str, Any] = {"method": name, "params": vars(method.params), "fit_seconds": round(seconds, 2),
                              "keeps_warm": method.keeps_warm, "history": method.history}
    with torch.no_grad():
        for split in splits:
            evaluator = Evaluator(ctx.data, split, ks or [20])
            report[split] = evaluator.evaluate(method.scorer(), ctx.device)
        # the released ALDI/ColdLLM code's protocol, to compare with their figures like for like
        report["paper_protocol"] = Evaluator(ctx.data, "test", ks or [20], reference=True).evaluate(
            method.scorer(), ctx.device)
    report["seconds"] = round(time.perf_counter() - start, 2)
    report["peak_memory_mb"] = round(peak_memory_mb(), 1)
    log.info("%s: cold test %s", name, report.get("test", {}).get("cold"))
    return method, report
