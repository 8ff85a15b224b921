"""Does the language-model judge separate real from other pairs where it is used? A trial on the
filter's candidates of a seeded sample of cold *validation* items, beside the free judges.

    python benchmarks/judge_trial.py --backbone mf [--items 200] [--refiner.train_users=500 ...]
    python benchmarks/judge_trial.py --preset configs/ml-1m.yaml --refiner.model=gemma3-270m ...

Fine-tunes the judge (LoRA, the preset's refiner settings with the overrides given) in
``runs/bench-<dataset>-<backbone>-judge-trial-<tag>/``, reusing the backbone and the method's filter
(``benchmarks/funnel.py`` makes it), judges every candidate of the sampled items and reports the
AUC of P(Yes), of the filter score, of the cosine judge and of the user's activity (training
interactions) on the same pairs, pooled and within items (the judge's own question: which of one
item's candidates), and the precision of what each accepts at the same acceptance rate. One trial stays under ~20 minutes on 2 CPU cores.
Rows go to ``results/<dataset>/judge-trials.json`` with their settings, commit and date, the
judge model's parameter count and its seconds per 1,000 pairs (``benchmarks/judge_size.py`` plots
them against each other).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from coldllm.config import load_config, to_dict
from coldllm.funnel.refiner import auc, auc_within, simulate, user_histories
from coldllm.funnel.inputs import prompt_template
from coldllm.funnel.judges import cosine_judge, is_real
from coldllm.llm.judge import Judge
from coldllm.llm.lora import load_adapter
from coldllm.llm.models import load_llm
from coldllm.llm.prompts import PromptEncoder
from coldllm.pipeline import Run, content_vectors
from coldllm.utils import git_commit, now_iso, resolve_device, setup_logging, write_json

from names import preset_for, run_name
from results import results_dir, write_results

ROOT = Path(__file__).resolve().parent.parent


def precision_at(labels: np.ndarray, scores: np.ndarray, share: float) -> float:
    """Precision of the top ``share`` of pairs by ``scores``."""
    n = max(int(round(share * len(scores))), 1)
    return float(labels[np.argsort(-scores, kind="stable")[:n]].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mf")
    parser.add_argument("--items", type=int, default=200, help="cold validation items sampled")
    parser.add_argument("--preset", type=Path, default=ROOT / "configs" / "citeulike.yaml")
    args, overrides = parser.parse_known_args()
    setup_logging()
    base = run_name(load_config(args.preset, []).data.name, args.backbone)
    tag = hashlib.sha256(" ".join(sorted(overrides)).encode()).hexdigest()[:8]
    run_overrides = [f"--name={base}-judge-trial-{tag}", f"--backbone.model={args.backbone}",
                     "--refiner.judge=llm", "--filter.towers=coupled", "--stages=[prepare, train, filter, finetune]",
                     f"--reuse={{train: {base}, filter: {base}-coldllm}}", *overrides]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "coldllm.cli", "run", "--config", str(preset_for(args.backbone, args.preset)), *run_overrides],
                   check=True, cwd=ROOT)
    tune_seconds = time.perf_counter() - start
    cfg = load_config(preset_for(args.backbone, args.preset), run_overrides)
    run = Run(cfg)
    # the fine-tune's own time, also when an earlier call of the same trial made it (this call then
    # only found it done)
    tune_seconds = run.manifest["stages"].get("finetune", {}).get("seconds", tune_seconds)
    data = run.data
    truth = data.parts["cold_val"]
    rng = np.random.default_rng(cfg.seed)
    items = np.sort(rng.choice(np.unique(truth[:, 1]), min(args.items, len(np.unique(truth[:, 1]))), replace=False))
    candidates = pd.read_parquet(run.layout.candidates)
    candidates = candidates[candidates["item"].isin(items)]
    device = resolve_device(cfg.refiner.device)
    model, tokenizer = load_llm(cfg.refiner.model, cfg.content.cache_dir, device)
    parameters = sum(p.numel() for p in model.parameters())  # before the adapter joins them
    model = load_adapter(model, run.layout.adapter)
    prompts = PromptEncoder(tokenizer, prompt_template(run.cfg))
    histories = user_histories(data.matrix("train"), prompts.template.max_history, cfg.seed)
    # judging resumes from its shards, so the speed is that of the pairs this call judged itself; a
    # call that found every pair judged keeps the speed the call that judged them measured
    trial = run.dir / f"trial-{args.items}"
    timing = trial / "judge_speed.json"
    resumed = sum(pq.ParquetFile(p).metadata.num_rows for p in (trial / "shards").glob("shard-*.parquet"))
    start = time.perf_counter()
    verdicts = simulate(Judge(model, prompts, cfg.refiner.batch_size), candidates, histories, data.item_text,
                        trial / "shards", 0.5, cfg.refiner.shard_users)
    judged = len(verdicts) - resumed
    if judged > 0 or not timing.exists():
        write_json(timing, {"pairs_per_second": judged / max(time.perf_counter() - start, 1e-9), "pairs": judged})
    speed = json.loads(timing.read_text())["pairs_per_second"]
    judge_seconds = len(verdicts) / max(speed, 1e-9)  # all the trial's pairs at that speed
    pairs = verdicts.merge(candidates[["user", "item", "score"]], on=["user", "item"])
    labels = is_real(pairs, truth)
    cosine = cosine_judge(pairs["user"].to_numpy(), pairs["item"].to_numpy(), histories, content_vectors(run))
    scores = {"llm": pairs["p_yes"].to_numpy(), "filter_score": pairs["score"].to_numpy(), "cosine": cosine,
              "activity": np.diff(data.matrix("train").indptr)[pairs["user"].to_numpy()].astype(np.float64)}
    accept = float(pairs["accepted"].mean())
    refiner = json.loads(run.layout.refiner_report.read_text())
    row = {
        "backbone": args.backbone, "items": len(items), "pairs": len(pairs), "real": int(labels.sum()),
        "auc": {name: auc(labels, s) for name, s in scores.items()},
        "auc_within_item": {name: auc_within(labels, s, pairs["item"].to_numpy()) for name, s in scores.items()},
        "accept_rate_llm": accept, "precision_all": float(labels.mean()),
        "precision_at_llm_accept_rate": {"llm": float(labels[pairs["accepted"].to_numpy()].mean()) if accept else 0.0,
                                         "cosine": precision_at(labels, cosine, accept),
                                         "filter_score": precision_at(labels, pairs["score"].to_numpy(), accept)},
        "held_out": {"before": refiner["before"], "after": refiner["after"]}, "train_examples": refiner["train_examples"],
        "tune_seconds": round(tune_seconds, 1), "judge_seconds": round(judge_seconds, 1),
        "pairs_per_second": round(speed, 2),
        "seconds_per_1000_pairs": round(1000 * judge_seconds / max(len(pairs), 1), 1),
        "model": cfg.refiner.model, "parameters": parameters, "threads": torch.get_num_threads(),
        "overrides": overrides, "refiner": dataclasses.asdict(cfg.refiner), "config": to_dict(cfg),
        "commit": git_commit(ROOT), "created": now_iso(),
    }
    out = results_dir(cfg.data.name) / "judge-trials.json"
    doc = json.loads(out.read_text()) if out.exists() else {"rows": []}
    doc["rows"] = [r for r in doc["rows"] if (r["backbone"], r["overrides"]) != (args.backbone, overrides)] + [row]
    write_results(out, doc)
    print(json.dumps({k: row[k] for k in ("pairs", "real", "auc", "auc_within_item", "accept_rate_llm", "precision_all",
                                          "precision_at_llm_accept_rate")}, indent=1))


if __name__ == "__main__":
    main()
