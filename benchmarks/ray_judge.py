"""The simulation's two engines side by side: the local engine against Ray Data with 1 and 2 actors.

    python benchmarks/ray_judge.py [--users 40] [--shard-users 5] [--model smollm2-135m]
                                   [--candidates-from runs/bench-citeulike-lightgcn-coldllm]

Real CiteULike users with all of their real filter candidates (so each user's prefix is shared as
often as in the stage), judged by the untuned model (the speed does not depend on the adapter).
Each engine runs the whole simulation call into a fresh shard folder: the local engine from an
already loaded model; the Ray engine including its actors' start and model load, which is what a
run pays (the Ray start itself is timed apart). Reports pairs/s, the largest |dP(Yes)| against the
local engine, and the threads each engine used; writes ``results/speed/ray-judge.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from coldllm.layout import RunLayout
from coldllm.config import load_config
from coldllm.data import load_dataset
from coldllm.funnel.ray_judge import actor_resources, ray_session, simulate_on_ray
from coldllm.funnel.refiner import simulate, user_histories
from coldllm.llm.judge import Judge
from coldllm.llm.models import load_llm, resolve_llm
from coldllm.llm.prompts import PromptEncoder, PromptTemplate
from coldllm.utils import git_commit, now_iso, package_versions, write_json

ROOT = Path(__file__).resolve().parent.parent


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "cpu")
    # the load average says how much of the machine other work took while this ran
    return {"cpu": cpu, "cores": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2),
            "python": platform.python_version(), "platform": platform.platform()}


def sample(candidates: pd.DataFrame, n_users: int, seed: int) -> pd.DataFrame:
    users = np.random.default_rng(seed).choice(candidates["user"].unique(), n_users, replace=False)
    return candidates[candidates["user"].isin(users)][["user", "item"]].reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=40)
    parser.add_argument("--shard-users", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--candidates-from", default="runs/bench-citeulike-lightgcn-coldllm")
    args = parser.parse_args()
    cfg = load_config(ROOT / "configs" / "citeulike.yaml")
    data = load_dataset(cfg.data)
    template = PromptTemplate()
    histories = user_histories(data.matrix("train"), template.max_history, cfg.seed)
    pairs = sample(pd.read_parquet(RunLayout(Path(args.candidates_from)).candidates), args.users, cfg.seed)
    report = {"commit": git_commit(ROOT), "date": now_iso(), "machine": machine(), "versions": package_versions(),
              "config": vars(args), "pairs": len(pairs), "users": int(pairs["user"].nunique())}
    model_dir = resolve_llm(args.model, cfg.content.cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer = load_llm(str(model_dir))
        judge = Judge(model, PromptEncoder(tokenizer, template), args.batch_size)
        start = time.perf_counter()
        local = simulate(judge, pairs, histories, data.item_text, Path(tmp) / "local", shard_users=args.shard_users)
        seconds = time.perf_counter() - start
        report["local"] = {"seconds": round(seconds, 2), "pairs_per_s": round(len(pairs) / seconds, 2),
                           "threads": torch.get_num_threads()}
        print("local", report["local"], flush=True)
        del model, judge
        start = time.perf_counter()
        with ray_session() as ray:
            report["ray_start_seconds"] = round(time.perf_counter() - start, 2)
            for actors in args.actors:
                start = time.perf_counter()
                out = simulate_on_ray(model_dir, None, template, pairs, histories, data.item_text,
                                      Path(tmp) / f"ray-{actors}", shard_users=args.shard_users, actors=actors,
                                      batch_size=args.batch_size, device="cpu")
                seconds = time.perf_counter() - start
                report[f"ray_{actors}"] = {
                    "actors": actors, "seconds": round(seconds, 2), "pairs_per_s": round(len(pairs) / seconds, 2),
                    "threads_per_actor": int(actor_resources(ray, actors, "cpu")["num_cpus"]),
                    "max_abs_dp_vs_local": float(np.abs(out["p_yes"].to_numpy() - local["p_yes"].to_numpy()).max()),
                    "same_pairs": bool(out[["user", "item"]].equals(local[["user", "item"]]))}
                print(f"ray x{actors}", report[f"ray_{actors}"], flush=True)
    report["machine"]["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    out_path = ROOT / "results" / "speed" / "ray-judge.json"
    write_json(out_path, report)
    print("wrote", out_path)


if __name__ == "__main__":
    main()
