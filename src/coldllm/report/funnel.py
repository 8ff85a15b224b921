"""The funnel measured against what really happened: the held-out interactions of the cold items.

For the cold items of one part (test by default) three sets of (user, item) pairs are compared:
every user with every item (what a judge without a filter would face), the filter's candidates, and
the pairs the judge accepted. At each step: how many pairs, how many of them are real held-out
interactions (the share real, i.e. precision) and how many of the real ones are still there
(coverage). The judge's scores are read from ``simulate/simulated.parquet``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..data import ColdStartData
from ..funnel.judges import is_real
from ..funnel.refiner import auc


def funnel_steps(data: ColdStartData, simulated: pd.DataFrame, part: str = "cold_test") -> list[dict[str, Any]]:
    truth = np.unique(data.parts[part], axis=0)
    items = np.unique(truth[:, 1])
    scoped = simulated[simulated["item"].isin(items)]
    accepted = scoped[scoped["accepted"].astype(bool)]
    n_real = len(truth)

    def step(name: str, pairs: int, real: int) -> dict[str, Any]:
        return {"step": name, "pairs": int(pairs), "real": int(real),
                "share_real": real / pairs if pairs else 0.0, "coverage": real / n_real if n_real else 0.0}

    return [
        step("all users", data.n_users * len(items), n_real),
        step("candidates", len(scoped), int(is_real(scoped, truth).sum())),
        step("accepted", len(accepted), int(is_real(accepted, truth).sum())),
    ]


def judge_scores(data: ColdStartData, simulated: pd.DataFrame) -> dict[str, Any]:
    """The judge's score of every candidate pair, split by whether the pair is a real held-out
    interaction (cold validation or test), with the AUC that separates the two."""
    truth = np.concatenate([data.parts["cold_val"], data.parts["cold_test"]])
    real = is_real(simulated, truth)
    scores = simulated["p_yes"].to_numpy(np.float64)
    return {"real": scores[real], "other": scores[~real], "auc": auc(real, scores),
            "accept_rate": float(simulated["accepted"].mean()) if len(simulated) else 0.0}


def stage_line(rows: list[dict[str, Any]]) -> str:
    """The run's time in one line: each stage that did work, its seconds, the total and the peak memory."""
    worked = [r for r in rows if r["seconds"] is not None and not r["skipped"] and r["status"] == "done"]
    if not worked:
        return ""
    parts = ", ".join(f"{r['stage']} {r['seconds']:.1f} s" + (" (reused)" if r["reused_from"] else "") for r in worked)
    total = sum(r["seconds"] for r in worked if not r["reused_from"])
    peak = max((r["peak_memory_mb"] or 0) for r in worked)
    return f"time: {parts}; {total:.0f} s in all, peak {peak:.0f} MB"


def stage_table(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Per stage of the manifest: status, seconds, peak memory and where a reused stage came from."""
    rows = []
    for name, record in manifest.get("stages", {}).items():
        rows.append({"stage": name, "status": record.get("status", "?"), "seconds": record.get("seconds"),
                     "peak_memory_mb": record.get("peak_memory_mb"), "reused_from": record.get("reused_from"),
                     "skipped": bool(record.get("skipped"))})
    return rows
