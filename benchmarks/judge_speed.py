"""How fast the Yes/No judge runs on real CiteULike prompts, with and without the prefix cache.

    python benchmarks/judge_speed.py [--users 8] [--candidates 20] [--model smollm2-135m]

Takes real users (their training titles as history) and random cold items as candidates, times
the prefix-cached engine against whole prompts, checks that both give the same P(Yes), and
projects the time of judging every filtered pair of the published split (3,396 cold items x 20
users). Writes ``results/citeulike/speed/judge.json``. The model is untuned: speed only.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from coldllm.config import load_config
from coldllm.data import load_dataset
from coldllm.funnel.refiner import user_histories
from coldllm.llm.judge import Judge
from coldllm.llm.models import load_llm
from coldllm.llm.prompts import PromptEncoder, PromptTemplate
from coldllm.utils import git_commit, now_iso, package_versions, peak_memory_mb, write_json

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8)
    # 3,396 cold items x 20 users = 67,920 pairs over at most 5,551 users: >= 12 candidates per user
    parser.add_argument("--candidates", type=int, default=12)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-history", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    cfg = load_config(ROOT / "configs" / "citeulike.yaml")
    data = load_dataset(cfg.data)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    model, tokenizer = load_llm(args.model, cfg.content.cache_dir, "cpu")
    load_seconds = time.perf_counter() - start
    template = PromptTemplate(max_history=args.max_history)
    prompts = PromptEncoder(tokenizer, template)
    judge = Judge(model, prompts, args.batch_size)
    histories = user_histories(data.matrix("train"), args.max_history, cfg.seed)
    users = rng.choice(np.flatnonzero([len(h) >= 2 for h in histories]), args.users, replace=False)
    jobs = []
    for u in users:
        items = rng.choice(data.cold_items, args.candidates, replace=False)
        prefix = prompts.prefix([data.item_text[i] for i in histories[u]])
        jobs.append((prefix, [prompts.suffix(data.item_text[i]) for i in items]))
    n_pairs = args.users * args.candidates
    prefix_tokens = int(np.mean([len(p) for p, _ in jobs]))
    suffix_tokens = int(np.mean([len(s) for _, ss in jobs for s in ss]))

    torch.set_grad_enabled(False)
    start = time.perf_counter()
    cached = np.concatenate([judge.p_yes_for_user(p, ss) for p, ss in jobs])
    cached_seconds = time.perf_counter() - start
    start = time.perf_counter()
    plain = judge.p_yes_uncached([p + s for p, ss in jobs for s in ss])
    plain_seconds = time.perf_counter() - start

    filtered_pairs = len(data.cold_items) * 20
    report = {
        "dataset": "citeulike", "commit": git_commit(ROOT), "created": now_iso(), "versions": package_versions(),
        "config": vars(args), "threads": torch.get_num_threads(),
        "model_load_seconds": round(load_seconds, 1),
        "pairs": n_pairs, "mean_prefix_tokens": prefix_tokens, "mean_suffix_tokens": suffix_tokens,
        "cached": {"seconds": round(cached_seconds, 2), "pairs_per_second": round(n_pairs / cached_seconds, 2)},
        "uncached": {"seconds": round(plain_seconds, 2), "pairs_per_second": round(n_pairs / plain_seconds, 2)},
        "speedup": round(plain_seconds / cached_seconds, 2),
        "max_abs_difference": float(np.abs(cached - plain).max()),
        # at the measured rate, i.e. with `candidates` pairs sharing each user's prefix
        "projected_hours_for_all_filtered_pairs": round(filtered_pairs / (n_pairs / cached_seconds) / 3600, 2),
        "peak_memory_mb": round(peak_memory_mb(), 1),
    }
    write_json(ROOT / "results" / "citeulike" / "speed" / "judge.json", report)
    print(report)


if __name__ == "__main__":
    main()
