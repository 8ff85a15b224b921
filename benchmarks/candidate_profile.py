"""Who each variant's simulated users are, and which of those traits goes with a better cold Recall.

    python benchmarks/candidate_profile.py [--backbones lightgcn mf]

Reads the finished runs of ``benchmarks/funnel.py`` (nothing is trained or judged here). For each
variant, the pairs it fed the update (its accepted pairs) on the cold test items are profiled with
``judge_stats.candidate_profile``: precision, pair coverage, user coverage (the per-user
share that Recall@K averages), how heavy the picked users are against the real ones, and how much
of the slots the most-picked users hold. Beside each, the variant's cold Recall@20 from
``results/<dataset>/<backbone>.json``; per backbone, the Spearman correlation of each trait with it
across the variants. The oracle rows are left out: they read the labels. Writes
``results/<dataset>/candidate-profile.json`` (a row per variant, each with the run's resolved
config and the commits) and regenerates the results page.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from coldllm.layout import RunLayout
from coldllm.data import load_dataset
from coldllm.config import load_config
from judge_stats import candidate_profile
from results import PROFILE_TRAITS, results_dir, write_results
from coldllm.utils import git_commit, now_iso
from render import render

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ["coldllm", "coldllm-cosine", "coldllm-no-refiner", "coldllm-collab", "coldllm-lm", "coldllm-random",
            "onepass", "paper-filter", "paper-refiner"]


def profile_backbone(backbone: str, runs_dir: Path, data, results: dict) -> list[dict]:
    train = data.matrix("train")
    degree = np.diff(train.indptr)
    truth = data.parts["cold_test"]
    rows = []
    for variant in VARIANTS:
        layout = RunLayout(runs_dir / f"bench-citeulike-{backbone}-{variant}")
        row_result = results["methods"].get(variant)
        if row_result is None or not layout.simulated.exists():
            print(f"{backbone} {variant}: no finished run or no result row, skipped", flush=True)
            continue
        simulated = pd.read_parquet(layout.simulated, columns=["user", "item", "accepted"])
        manifest = json.loads(layout.manifest.read_text())
        rows.append({
            "backbone": backbone, "variant": variant,
            **candidate_profile(simulated[simulated["accepted"]], truth, degree),
            "cold_recall@20": row_result["cold"]["recall@20"], "result_commit": row_result["commit"],
            "simulate_commit": manifest["stages"]["simulate"].get("commit"), "config": manifest["config"],
            "commit": git_commit(ROOT), "created": now_iso(),
        })
    return rows


def correlations(rows: list[dict]) -> dict[str, float]:
    recall = [r["cold_recall@20"] for r in rows]
    return {t: float(spearmanr([r[t] for r in rows], recall).statistic) for t in PROFILE_TRAITS} if len(rows) > 2 else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["lightgcn", "mf"])
    parser.add_argument("--preset", type=Path, default=ROOT / "configs" / "citeulike.yaml")
    args = parser.parse_args()
    cfg = load_config(args.preset)
    data = load_dataset(cfg.data)
    out = results_dir(cfg.data.name) / "candidate-profile.json"
    doc = json.loads(out.read_text()) if out.exists() else {"rows": [], "correlations": {}}
    for backbone in args.backbones:
        results = json.loads((results_dir(cfg.data.name) / f"{backbone}.json").read_text())
        rows = profile_backbone(backbone, ROOT / cfg.runs_dir, data, results)
        doc["rows"] = [r for r in doc["rows"] if r["backbone"] != backbone] + rows
        doc["correlations"][backbone] = correlations(rows)
    write_results(out, doc)
    print(render(cfg.data.name))


if __name__ == "__main__":
    main()
