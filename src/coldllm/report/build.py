"""Gather everything the report shows, draw it and write ``report.md``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..evaluate import SETTINGS
from ..layout import RunLayout
from ..utils import atomic_path, git_commit, now_iso, resolve_device, write_json
from .curves import HEADLINE_K, KS, at_k, metric_curves
from .funnel import funnel_steps, judge_scores, stage_line, stage_table
from .markdown import console_table, render
from .runs import FinishedRun, methods, open_run

log = logging.getLogger(__name__)

# what the x axis of the judge's histogram is, per judge
JUDGE_SCORE = {"llm": "P(Yes) of the tuned language model", "cosine": "cosine of the item's text to the user's history",
               "all": "no judge: every pair accepted", "file": "the file's answer (1 = Yes)",
               "oracle": "the oracle's verdict (reads held-out labels)"}


def build_report(run_dir: Path, out: Path | None = None, split: str = "test", device: str = "cpu",
                 command: str | None = None) -> dict[str, Any]:
    """Write ``<out>/report.md`` (default ``<run_dir>/report``) with its PNGs and ``curves.json``.

    Returns what was gathered, including ``table``: the K=20 summary as text.
    """
    run = open_run(Path(run_dir))
    out = Path(out) if out is not None else run.layout.report
    out.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    name = run.manifest.get("name", run.dir.name)
    with torch.no_grad():
        scored = methods(run, dev)
        curves = metric_curves(run.data, scored, split, KS, run.cfg.eval.batch_size, dev)
    from . import plots  # matplotlib only when drawing

    ctx: dict[str, Any] = {
        "run": run, "split": split, "k": HEADLINE_K, "curves": curves, "at_k": at_k(curves, HEADLINE_K),
        "dataset": run.data.summary(), "commit": git_commit(), "date": now_iso(),
        "command": command or f"coldllm report {run_dir}", "checks": _checks(run, curves, split),
        "stages": stage_table(run.manifest), "figures": {},
    }
    write_json(out / "curves.json", curves)  # the numbers behind the curves
    ctx["figures"]["curves"] = plots.plot_curves(curves, out / "curves.png", f"{name}: {split} set").name
    simulated_path = run.layout.simulated
    if simulated_path.exists():
        simulated = pd.read_parquet(simulated_path)
        ctx["funnel"] = {part: funnel_steps(run.data, simulated, part) for part in ("cold_val", "cold_test")}
        ctx["figures"]["funnel"] = plots.plot_funnel(ctx["funnel"]["cold_test"], out / "funnel.png",
                                                     f"{name}: the funnel on the cold test items").name
        judge = judge_scores(run.data, simulated)
        judge["xlabel"] = JUDGE_SCORE.get(run.cfg.refiner.judge, "the judge's score")
        ctx["judge"] = judge
        ctx["figures"]["judge"] = plots.plot_judge(judge, out / "judge.png", f"{name}: the judge's scores",
                                                   judge["xlabel"], _threshold(run)).name
    ctx["figures"]["stages"] = plots.plot_stages(ctx["stages"], out / "stages.png", f"{name}: time and memory").name
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render(ctx))
    labels = {m: e["label"] for m, e in curves["methods"].items()}
    ctx["table"] = "\n".join([console_table(ctx["at_k"], labels, HEADLINE_K), what_moved(ctx["at_k"], HEADLINE_K),
                              stage_line(ctx["stages"])])
    ctx["out"] = out
    return ctx


def what_moved(at_k: dict[str, dict[str, dict[str, float]]], k: int) -> str:
    """In words: which row is the method, which are controls, and how far the method moved cold
    Recall@K from the prior its update started at."""
    controls = [m for m in ("backbone", "random", "knn") if m in at_k]
    words = f"controls: {', '.join(controls)}." if controls else ""
    if "coldllm" in at_k and "prior" in at_k:
        delta = at_k["coldllm"]["cold"]["recall"] - at_k["prior"]["cold"]["recall"]
        moved = ("left cold Recall@{k} where its prior put it (the update kept its start on validation)"
                 if abs(delta) < 5e-5 else f"moved cold Recall@{k} by {delta:+.4f} from its prior")
        words = f"The method is the ColdLLM row: it {moved.format(k=k)}; " + words
    return words


def _threshold(run: FinishedRun) -> float | None:
    """The acceptance threshold of a language-model judge (other judges accept by rank or by label)."""
    path = run.layout.threshold
    if run.cfg.refiner.judge != "llm" or not path.exists():
        return None
    return float(json.loads(path.read_text())["threshold"])


def _checks(run: FinishedRun, curves: dict[str, Any], split: str) -> list[str]:
    """Whether the re-scored figures equal those the run's own evaluation stages recorded."""
    own = {"backbone": f"evaluate_{split}", "coldllm": f"evaluate_coldllm_{split}"}
    i = curves["ks"].index(HEADLINE_K)
    found = []
    for method, stage in own.items():
        recorded = _recorded(run, stage)
        entry = curves["methods"].get(method)
        if not recorded or entry is None or f"recall@{HEADLINE_K}" not in recorded.get("cold", {}):
            continue
        gap = max(abs(entry[s][m][i] - recorded[s][f"{m}@{HEADLINE_K}"]) for s in SETTINGS for m in ("recall", "ndcg"))
        verdict = "the same" if gap < 1e-5 else f"differs by up to {gap:.2g}"
        found.append(f"{entry['label']}: {verdict} as stage `{stage}` recorded")
    return found


def _recorded(run: FinishedRun, stage: str) -> dict[str, Any] | None:
    """The metrics ``stage`` recorded; a reused backbone was evaluated in the run it came from."""
    stages = run.manifest.get("stages", {})
    if stage in stages:
        return stages[stage].get("metrics")
    source = stages.get("train", {}).get("reused_from")
    if stage.startswith("evaluate_") and not stage.startswith("evaluate_coldllm") and source:
        path = RunLayout(run.dir.parent / source).manifest
        if path.exists():
            return json.loads(path.read_text()).get("stages", {}).get(stage, {}).get("metrics")
    return None
