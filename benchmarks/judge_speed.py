"""How fast the Yes/No judge runs on real CiteULike prompts, with and without the prefix cache.

    python benchmarks/judge_speed.py [--users 8] [--candidates 12] [--device auto] [--batch-size 32]

Takes real users (their training titles as history) and random cold items as candidates, times
the prefix-cached engine (as the simulation runs it: several users' prefixes per batch) against
whole prompts, checks that both give the same P(Yes), and projects the time of judging every
filtered pair of the published split (3,396 cold items x 20 users). Writes
``results/citeulike/speed/judge-<device>.json``. The model is untuned: speed only. On CUDA both
paths run under bf16 autocast, so they agree to bf16 precision, not 1e-4.
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
from coldllm.utils import git_commit, now_iso, package_versions, peak_memory_mb, resolve_device, write_json

ROOT = Path(__file__).resolve().parent.parent


def sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: time them to the end
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8)
    # 3,396 cold items x 20 users = 67,920 pairs over at most 5,551 users: >= 12 candidates per user
    parser.add_argument("--candidates", type=int, default=12)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-history", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    cfg = load_config(ROOT / "configs" / "citeulike.yaml")
    data = load_dataset(cfg.data)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    model, tokenizer = load_llm(args.model, cfg.content.cache_dir, device)
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
    owner = np.repeat(np.arange(len(jobs)), [len(ss) for _, ss in jobs])
    cached = judge.p_yes_grouped([p for p, _ in jobs], [s for _, ss in jobs for s in ss], owner)
    sync(device)
    cached_seconds = time.perf_counter() - start
    start = time.perf_counter()
    plain = judge.p_yes_uncached([p + s for p, ss in jobs for s in ss])
    sync(device)
    plain_seconds = time.perf_counter() - start

    filtered_pairs = len(data.cold_items) * 20
    report = {
        "dataset": "citeulike", "commit": git_commit(ROOT), "created": now_iso(), "versions": package_versions(),
        "config": vars(args), "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
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
    write_json(ROOT / "results" / "citeulike" / "speed" / f"judge-{device.type}.json", report)
    print(report)


if __name__ == "__main__":
    main()
