"""Recall@K and NDCG@K of every method at every cut-off K = 5..100.

The evaluator takes each user's top 100 once and reads every K off that one ranking
(``evaluate.ranking_metrics``), so a hundred cut-offs cost what one does.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data import ColdStartData
from ..evaluate import SETTINGS, Evaluator, embedding_scorer
from .runs import Method

KS = tuple(range(5, 101, 5))
HEADLINE_K = 20


def metric_curves(data: ColdStartData, methods: list[Method], split: str = "test", ks: tuple[int, ...] = KS,
                  batch_size: int = 1024, device: torch.device | str = "cpu") -> dict[str, Any]:
    """``{"ks": [...], "methods": {name: {"label": ..., setting: {"recall": [...], "ndcg": [...], "users": n}}}}``."""
    evaluator = Evaluator(data, split, list(ks), batch_size)
    out: dict[str, Any] = {"split": split, "ks": list(ks), "methods": {}}
    for method in methods:
        results = evaluator.evaluate(embedding_scorer(method.user_emb, method.item_emb), device)
        entry: dict[str, Any] = {"label": method.label}
        for setting in SETTINGS:
            r = results[setting]
            entry[setting] = {"recall": [r[f"recall@{k}"] for k in ks], "ndcg": [r[f"ndcg@{k}"] for k in ks],
                              "users": r["users"]}
        out["methods"][method.name] = entry
    return out


def at_k(curves: dict[str, Any], k: int = HEADLINE_K) -> dict[str, dict[str, dict[str, float]]]:
    """``{method: {setting: {"recall": r, "ndcg": n}}}`` at one cut-off of the curves."""
    i = curves["ks"].index(k)
    return {name: {s: {"recall": entry[s]["recall"][i], "ndcg": entry[s]["ndcg"][i]} for s in SETTINGS}
            for name, entry in curves["methods"].items()}
