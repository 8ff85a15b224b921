"""Where the time goes: every long stage against the machine's measured limit.

    python benchmarks/speed.py [--sections machine judge lora lightgcn eval filter] [--device auto]
                               [--users 24] [--candidates-from runs/bench-citeulike-lightgcn-coldllm]

First the machine: fp32 matrix-multiply throughput (a large GEMM) and memory bandwidth (a large
copy). Then each stage on the real CiteULike data, its wall time, its work (FLOPs, bytes or tokens)
and that work's share of the limit that bounds it:

- judge: real users with their real filter candidates (so the prefix is shared as often as in the
  simulation), judged one prompt per pair (naive), as batched whole prompts, and by the packed
  engine in both its layouts (flat rows attended block by block; padded rows under a dense mask),
  with the largest |dP(Yes)| between them; the same with the template's per-candidate words moved
  into the prefix (the template of ``configs/citeulike-paper.yaml``: a pair pays only for its
  title); int8 dynamic quantisation, with its agreement. Tokens/s as a share of the matmul limit
  counts 2 FLOPs per weight per token (the output layer excluded: the engine applies only its
  Yes/No rows).
- lora: the fine-tuning's own loop (packed rows, length-bucketed batches of the preset's size;
  forward and backward: ~3x the forward FLOPs) in examples/s, with activations kept, with
  gradient checkpointing, and with two pairs per user (one history prefix for four examples), each
  in a fresh process so that its peak memory is its own.
- lightgcn: one BPR epoch of the preset's LightGCN; the sparse propagation's bytes (each nonzero
  reads one 200-float row, forward and backward) against the copy bandwidth.
- eval: full-ranking evaluation of the test split; filter: the exact top-K users of every cold item.
- encode: the CiteULike titles (``--encode-items``, all by default) through SmolLM2 as the
  language-model sub-tower encodes them (token-length-sorted batches, the decoder alone), in
  tokens/s (real tokens; the padded ones are counted beside them) and as a share of the matmul
  limit at 2 FLOPs per body weight per token.
- onepass_text (not in the default sections): the one-pass simulator's text reader, SmolLM2 with
  LoRA adapters, on a seeded sample of CiteULike titles (``--onepass-items``) in length-sorted
  batches of 32: seconds per 1,000 titles for a training step (forward and backward through the
  reader) and for the per-epoch re-encoding, with adapters on every layer and on the top
  ``--top-layers`` only (the frozen layers' states kept: their one-time cost is reported beside).
- pipeline (not in the default sections): the CiteULike preset run end to end in a new run
  folder, its wall time and every stage's.
- paper_pipeline (not in the default sections: hours on 2 cores): ``configs/citeulike-paper.yaml``,
  the paper's funnel with the LoRA judge tuned in the same run, end to end the same way.
- paper_setting (not in the default sections; runs nothing): the paper's funnel (coupled filter,
  LoRA fine-tuning, the judge on every filtered pair) priced from the sections above and the
  recorded LLM-judge run, and its floor with fine-tuning and judging at 100% of the matmul limit.
- lightgcn_train (not in the default sections: ~20 minutes): the preset's LightGCN trained to its
  best warm-validation NDCG@20, then the fast settings (``--fast``: a spectral start, larger
  batches, so fewer full propagations per epoch, a larger learning rate, fewer validations), one
  after the other in one process: seconds to the best epoch and the best score of each, and seconds
  to the first validation within 1% of the preset's best.

Writes ``results/speed/<device>.json`` (commit, date, machine, threads per entry) and a plot of the
shares beside it. Timings belong here, never in tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from coldllm.layout import RunLayout
from coldllm.config import load_config
from coldllm.data import load_dataset
from coldllm.funnel.refiner import user_histories
from coldllm.llm.judge import Judge, packed_rows
from coldllm.llm.models import load_llm
from coldllm.llm.prompts import PromptEncoder, PromptTemplate
from coldllm.utils import git_commit, now_iso, package_versions, peak_memory_mb, resolve_device, write_json

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("machine", "judge", "lora", "lightgcn", "eval", "filter", "encode")
EXTRA_SECTIONS = ("lightgcn_train", "onepass_text", "pipeline", "paper_pipeline", "paper_setting")
# the paper's funnel made to fit 2 cores: its backbone settings are the fast LightGCN, its prompt
# template the one whose per-candidate words end the prefix (the reasons are in the file)
PAPER_CONFIG = ROOT / "configs" / "citeulike-paper.yaml"
# the fast settings have reached the preset when they are within 1% of its best
TARGET_SHARE = 0.99


def sync(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: time them to the end
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeat: int = 1, warm_up: bool = True) -> tuple[float, object]:
    if warm_up:  # allocations, kernel selection, lazy imports; long runs warm up on a small job instead
        fn()
        sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    sync(device)
    return (time.perf_counter() - start) / repeat, out


def machine(device: torch.device) -> dict:
    n = 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    seconds, _ = timed(lambda: a @ b, device, repeat=5)
    big = torch.empty(64 * 2**20, device=device)  # 256 MB: far beyond any cache
    dst = torch.empty_like(big)
    copy_seconds, _ = timed(lambda: dst.copy_(big), device, repeat=5)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {"device": name, "threads": torch.get_num_threads(),
            "matmul_gflops": round(2 * n**3 / seconds / 1e9, 1),
            "copy_gbytes_per_s": round(2 * big.numel() * 4 / copy_seconds / 1e9, 2)}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def forward_flops_per_token(model) -> int:
    """2 FLOPs per weight of the transformer body (embeddings are lookups; the output layer is
    applied to two rows only by the packed engine)."""
    body = sum(p.numel() for p in model.get_decoder().parameters())
    return 2 * (body - model.get_input_embeddings().weight.numel())


def judge_jobs(data, prompts: PromptEncoder, histories, candidates: pd.DataFrame | None, n_users: int, seed: int):
    """(prefixes, suffixes, owner) for ``n_users`` users and their real candidates."""
    rng = np.random.default_rng(seed)
    if candidates is None:  # no filter run at hand: 12 random cold items each (the average share)
        users = rng.choice(np.flatnonzero([len(h) >= 2 for h in histories]), n_users, replace=False)
        pairs = [(u, i) for u in users for i in rng.choice(data.cold_items, 12, replace=False)]
    else:
        users = rng.choice(candidates["user"].unique(), n_users, replace=False)
        pairs = candidates[candidates["user"].isin(users)][["user", "item"]].to_numpy().tolist()
    index = {u: k for k, u in enumerate(users)}
    prefixes = [prompts.prefix([data.item_text[i] for i in histories[u]]) for u in users]
    suffixes = [prompts.suffix(data.item_text[i]) for _, i in pairs]
    owner = np.array([index[u] for u, _ in pairs])
    return prefixes, suffixes, owner


def judge_section(args, data, cfg, device, limits) -> dict:
    model, tokenizer = load_llm(args.model, cfg.content.cache_dir, device)
    prompts = PromptEncoder(tokenizer, PromptTemplate())
    histories = user_histories(data.matrix("train"), prompts.template.max_history, cfg.seed)
    path = RunLayout(Path(args.candidates_from)).candidates if args.candidates_from else None
    candidates = pd.read_parquet(path) if path and path.exists() else None
    prefixes, suffixes, owner = judge_jobs(data, prompts, histories, candidates, args.users, cfg.seed)
    whole = [prefixes[o] + s for o, s in zip(owner, suffixes)]
    n = len(suffixes)
    packed_judge = Judge(model, prompts, args.batch_size)
    packed_judge.p_yes_grouped(prefixes[:1], suffixes[:2], np.zeros(2, dtype=np.int64))  # warm-up
    packed_seconds, packed = timed(lambda: packed_judge.p_yes_grouped(prefixes, suffixes, owner), device, warm_up=False)
    # the other layout of the same rows (padded batches under a dense mask on a CPU), for comparison
    other = "padded" if device.type == "cpu" else "flat"
    other_seconds, other_p = timed(lambda: Judge(model, prompts, args.batch_size, layout=other).p_yes_grouped(
        prefixes, suffixes, owner), device, warm_up=False)
    batched_seconds, batched = timed(lambda: Judge(model, prompts, 16).p_yes_uncached(whole), device, warm_up=False)
    sample = np.random.default_rng(0).choice(n, min(n, args.naive_pairs), replace=False)
    naive_judge = Judge(model, prompts, 1)
    naive_seconds, naive = timed(lambda: naive_judge.p_yes_uncached([whole[j] for j in sample]), device, warm_up=False)
    packed_tokens = int(packed_rows(prefixes, suffixes, owner, packed_judge.max_row_tokens)[1].sum())
    flops = forward_flops_per_token(model)
    tokens_per_s = packed_tokens / packed_seconds
    out = {
        "pairs": n, "users": int(args.users), "candidates_from": str(path) if candidates is not None else "random",
        "mean_prefix_tokens": round(float(np.mean(list(map(len, prefixes)))), 1),
        "mean_suffix_tokens": round(float(np.mean(list(map(len, suffixes)))), 1),
        "layout": packed_judge.layout,
        "pairs_per_s": round(n / packed_seconds, 2),
        f"{other}_layout_pairs_per_s": round(n / other_seconds, 2),
        "batched_pairs_per_s": round(n / batched_seconds, 2),
        "naive_pairs_per_s": round(len(sample) / naive_seconds, 2),
        "speedup_vs_naive": round((n / packed_seconds) / (len(sample) / naive_seconds), 2),
        "speedup_vs_batched": round(batched_seconds / packed_seconds, 2),
        "tokens_per_s": round(tokens_per_s, 1),
        "whole_prompt_tokens_per_s": round(sum(map(len, whole)) / batched_seconds, 1),
        "flops_per_token": flops,
        "share_of_matmul_limit": round(tokens_per_s * flops / (limits["matmul_gflops"] * 1e9), 3),
        "max_abs_dp_yes": float(max(np.abs(packed - batched).max(), np.abs(packed[sample] - naive).max(),
                                    np.abs(packed - other_p).max())),
        "projected_hours_for_67920_pairs": round(67920 / (n / packed_seconds) / 3600, 2),
        "batch_size": args.batch_size,
    }
    if device.type == "cpu":
        out["int8"] = int8_trial(model, prompts, prefixes, suffixes, owner, packed, packed_seconds, args.batch_size)
    out["lead_template"] = lead_template_trial(model, tokenizer, data, candidates, args, cfg, device, limits)
    return out


def lead_template_trial(model, tokenizer, data, candidates, args, cfg, device, limits) -> dict:
    """The packed engine and naive prompts with the paper config's template (the words every
    candidate shares end the prefix; the question is the instruction's), on the same users and pairs."""
    lead_template = load_config(PAPER_CONFIG).refiner.template
    prompts = PromptEncoder(tokenizer, PromptTemplate(**lead_template))
    histories = user_histories(data.matrix("train"), prompts.template.max_history, cfg.seed)
    prefixes, suffixes, owner = judge_jobs(data, prompts, histories, candidates, args.users, cfg.seed)
    n = len(suffixes)
    judge = Judge(model, prompts, args.batch_size)
    seconds, packed = timed(lambda: judge.p_yes_grouped(prefixes, suffixes, owner), device, warm_up=False)
    sample = np.random.default_rng(0).choice(n, min(n, args.naive_pairs), replace=False)
    naive_seconds, naive = timed(lambda: Judge(model, prompts, 1).p_yes_uncached(
        [prefixes[owner[j]] + suffixes[j] for j in sample]), device, warm_up=False)
    tokens_per_s = int(packed_rows(prefixes, suffixes, owner, judge.max_row_tokens)[1].sum()) / seconds
    return {"template": lead_template, "mean_suffix_tokens": round(float(np.mean(list(map(len, suffixes)))), 1),
            "pairs_per_s": round(n / seconds, 2), "naive_pairs_per_s": round(len(sample) / naive_seconds, 2),
            "speedup_vs_naive": round((n / seconds) / (len(sample) / naive_seconds), 2),
            "tokens_per_s": round(tokens_per_s, 1),
            "share_of_matmul_limit": round(tokens_per_s * forward_flops_per_token(model) / (limits["matmul_gflops"] * 1e9), 3),
            "max_abs_dp_yes": float(np.abs(packed[sample] - naive).max())}


def int8_trial(model, prompts, prefixes, suffixes, owner, reference, reference_seconds, batch_size) -> dict:
    """Dynamic int8 quantisation of the linear layers: its speed and how far its answers move."""
    try:
        from torch.ao.quantization import quantize_dynamic
        # the body's linear layers only: the engine reads two rows of the output layer's weight
        body = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                and m is not model.get_output_embeddings()}
        quantized = quantize_dynamic(model, body, dtype=torch.qint8)
        seconds, p = timed(lambda: Judge(quantized, prompts, batch_size).p_yes_grouped(prefixes, suffixes, owner),
                           torch.device("cpu"), warm_up=False)
    except Exception as err:  # the quantisation backend differs by build: report, do not fail
        return {"error": f"{type(err).__name__}: {err}"[:300]}
    return {"speedup_vs_fp32": round(reference_seconds / seconds, 2), "max_abs_dp_yes": float(np.abs(p - reference).max()),
            "decision_agreement": float(((p > 0.5) == (reference > 0.5)).mean())}


def _lora_probe(model_name: str, device: str, users: int, checkpointing: bool, pairs: int = 1) -> dict:
    """``train_lora`` itself (its length-bucketed batches of packed rows) on the fine-tuning examples
    of ``users`` real users, ``pairs`` positive/negative pairs each. Runs in a child process of its
    own, so the peak resident memory it reports is this fine-tuning's and nothing else's."""
    from coldllm.funnel.refiner import example_parts, finetune_examples
    from coldllm.llm.lora import LoraParams, add_lora, train_lora

    cfg = load_config(ROOT / "configs" / "citeulike.yaml")
    data = load_dataset(cfg.data)
    model, tokenizer = load_llm(model_name, cfg.content.cache_dir, torch.device(device))
    prompts = PromptEncoder(tokenizer, PromptTemplate())
    train = data.matrix("train")
    chosen = np.random.default_rng(cfg.seed).choice(np.flatnonzero(np.diff(train.indptr) >= 2), users, replace=False)
    examples = finetune_examples(train, chosen, data.warm_items, prompts.template.max_history, cfg.seed, pairs=pairs)
    prefixes, suffixes, owner = example_parts(prompts, examples, data.item_text)
    params = LoraParams(**cfg.refiner.lora)  # the preset's batch of prompts per step
    before = peak_memory_mb()
    start = time.perf_counter()
    _, history = train_lora(add_lora(model, params), prefixes, suffixes, owner, examples["label"].to_numpy(),
                            prompts.yes_id, prompts.no_id, params,
                            gradient_checkpointing=checkpointing)
    seconds = time.perf_counter() - start
    _, row_tokens = packed_rows(prefixes, suffixes, owner, 1024)
    return {"examples": len(suffixes), "steps": len(history), "seconds": round(seconds, 1),
            "packed_tokens": int(row_tokens.sum()),
            "whole_prompt_tokens": sum(len(prefixes[o]) + len(s) for o, s in zip(owner, suffixes)),
            "forward_flops_per_token": forward_flops_per_token(model),
            "peak_memory_mb_before": round(before, 1), "peak_memory_mb": round(peak_memory_mb(), 1)}


def lora_section(args, data, cfg, device, limits) -> dict:
    """The preset's LoRA steps with activations kept (the default) and recomputed
    (``refiner.gradient_checkpointing``), and with two pairs per user on half the users (the same
    number of examples; ``refiner.pairs_per_user``), each in a fresh process: examples/s and peak
    memory."""
    import multiprocessing

    modes = {}
    for name, checkpointing, pairs in (("default", False, 1), ("gradient_checkpointing", True, 1),
                                       ("two_pairs_per_user", False, 2)):
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            probe = pool.apply(_lora_probe, (args.model, str(device), args.lora_users // pairs, checkpointing, pairs))
        per_s = probe["examples"] / probe["seconds"]
        tokens_per_s = probe["packed_tokens"] / probe["seconds"]
        modes[name] = {**probe, "examples_per_s": round(per_s, 2), "tokens_per_s": round(tokens_per_s, 1),
                       # forward and backward: ~3x the forward's FLOPs (the recomputation not counted as work)
                       "share_of_matmul_limit": round(tokens_per_s * 3 * probe["forward_flops_per_token"]
                                                      / (limits["matmul_gflops"] * 1e9), 3),
                       "projected_minutes_for_6000_examples": round(6000 / per_s / 60, 1)}
    default, checkpointed, two_pairs = modes["default"], modes["gradient_checkpointing"], modes["two_pairs_per_user"]
    return {**default, "modes": modes,
            "memory_saved_mb": round(default["peak_memory_mb"] - checkpointed["peak_memory_mb"], 1),
            "checkpointing_time_ratio": round(checkpointed["seconds"] / default["seconds"], 2),
            "two_pairs_speedup": round(two_pairs["examples_per_s"] / default["examples_per_s"], 2)}


def lightgcn_section(args, data, cfg, device, limits) -> dict:
    from coldllm.backbones import build_backbone
    from coldllm.data.sampling import BPRSampler

    train = data.matrix("train")
    model = build_backbone(cfg.backbone, train, seed=cfg.seed).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.backbone.lr)
    sampler = BPRSampler(train, candidates=np.flatnonzero(np.diff(train.tocsc().indptr) > 0), seed=cfg.seed)

    def epoch() -> int:
        steps = 0
        for users, pos, neg in sampler.epoch(cfg.backbone.batch_size):
            loss = model.bpr_loss(*(torch.from_numpy(a).to(device) for a in (users, pos, neg)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        return steps

    seconds, steps = timed(epoch, device)
    adj = model.adj
    propagate_seconds, _ = timed(lambda: model.propagate(), device, repeat=3)
    nnz, dim, layers = adj.values().numel(), cfg.backbone.dim, cfg.backbone.layers
    # per propagation: each nonzero reads a dim-float row (+ its 12-byte index/value) and each
    # layer writes an (n x dim) result; a training step runs it forward and backward
    n = adj.shape[0]
    bytes_per_propagation = layers * (nnz * (dim * 4 + 12) + n * dim * 4)
    epoch_bytes = steps * 2 * bytes_per_propagation
    return {"model": cfg.backbone.model, "dim": dim, "layers": layers, "batch_size": cfg.backbone.batch_size,
            "steps_per_epoch": steps, "epoch_seconds": round(seconds, 2),
            "propagation_seconds": round(propagate_seconds, 4),
            "propagation_gbytes_per_s": round(bytes_per_propagation / propagate_seconds / 1e9, 2),
            "share_of_bandwidth_limit": round(epoch_bytes / seconds / 1e9 / limits["copy_gbytes_per_s"], 3),
            "propagation_share_of_epoch": round(steps * 2 * propagate_seconds / seconds, 3)}


def lightgcn_train_section(args, data, cfg, device, limits) -> dict:
    import dataclasses
    import tempfile

    from coldllm.backbones import build_backbone, train_backbone

    fast = {**dataclasses.asdict(load_config(PAPER_CONFIG).backbone), **json.loads(args.fast)}
    out, histories = {}, {}
    for name, change in (("baseline", {}), ("fast", fast)):
        run_cfg = dataclasses.replace(cfg, backbone=dataclasses.replace(cfg.backbone, model="lightgcn", **change))
        model = build_backbone(run_cfg.backbone, data.matrix("train"), seed=cfg.seed)
        with tempfile.TemporaryDirectory() as folder:
            result = train_backbone(model, data, run_cfg, Path(folder), resume=False)
        best = next(r for r in result.history if r["epoch"] == result.best_epoch)
        out[name] = {"settings": {k: getattr(run_cfg.backbone, k) for k in ("batch_size", "lr", "lr_decay", "eval_every",
                                                                            "patience", "init", "init_scale")},
                     "seconds_to_best": best["seconds"], "best_val_ndcg": round(result.best_score, 5),
                     "best_epoch": result.best_epoch, "epochs": result.epoch, "seconds": round(result.seconds, 1)}
        histories[name] = result.history
        print(name, out[name], flush=True)
    base, quick = out["baseline"], out["fast"]
    # the yardstick: the first validation within 1% of the preset's best, its seconds
    target = TARGET_SHARE * base["best_val_ndcg"]
    key = f"val_warm_{cfg.eval.metric}"
    for name, history in histories.items():
        reached = next((r for r in history if r.get(key, -1.0) >= target), None)
        out[name].update(seconds_to_target=reached and reached["seconds"], epoch_to_target=reached and reached["epoch"])
    to_target = quick["seconds_to_target"]
    return {"seconds_to_best": quick["seconds_to_best"], "best_val_ndcg": quick["best_val_ndcg"],
            "baseline_seconds_to_best": base["seconds_to_best"], "baseline_best_val_ndcg": base["best_val_ndcg"],
            "speedup_to_best": round(base["seconds_to_best"] / quick["seconds_to_best"], 2),
            "ndcg_ratio": round(quick["best_val_ndcg"] / base["best_val_ndcg"], 4),
            "target_val_ndcg": round(target, 5), "seconds_to_target": to_target,
            "speedup_to_target": to_target and round(base["seconds_to_best"] / to_target, 2), "runs": out}


def paper_setting_section(args, data, cfg, device, limits) -> dict:
    """The paper's funnel on this machine (coupled filter, LoRA fine-tuning, the judge on every
    filtered pair), priced from what was measured, nothing run: each stage's seconds at the rates
    recorded in this file and the run folders, and the fine-tuning and judging at 100% of the
    matmul limit, the floor no engine on this machine can go under."""
    report = json.loads((ROOT / "results" / "speed" / "cpu.json").read_text())
    missing = [k for k in ("judge", "lora", "pipeline") if not isinstance(report.get(k), dict)]
    if missing:
        raise SystemExit(f"paper_setting prices measured sections; run --sections {' '.join(missing)} first")
    judge, lora, pipeline = report["judge"], report["lora"], report["pipeline"]
    run = ROOT / args.candidates_from
    funnel = json.loads(RunLayout(run).manifest.read_text())["stages"]
    pairs = int(funnel["simulate"]["pairs"])
    examples = 2 * cfg.refiner.train_users  # a positive and a negative per fine-tuning user
    stages = {
        "train": pipeline["stage_seconds"]["train"],  # the preset's LightGCN, measured alone
        "filter": round(funnel["filter"]["seconds"], 1),  # the coupled filter of the recorded run
        "finetune": round(examples / lora["examples_per_s"], 1),
        "simulate": round(pairs / judge["pairs_per_s"], 1),
        "update": pipeline["stage_seconds"]["update"],
    }
    # the same tokens at the limit take the measured time times the measured share of it
    floor = {"finetune": round(examples / lora["examples_per_s"] * lora["share_of_matmul_limit"], 1),
             "simulate": round(pairs / judge["pairs_per_s"] * judge["share_of_matmul_limit"], 1)}
    at_limit = {**stages, **floor}
    return {"pairs": pairs, "finetune_examples": examples, "stage_seconds": stages,
            "seconds": round(sum(stages.values()), 1), "stage_seconds_at_matmul_limit": at_limit,
            "seconds_at_matmul_limit": round(sum(at_limit.values()), 1),
            "sources": {"train, update": f"pipeline ({pipeline['commit'][:10]})",
                        "filter, pairs": str(RunLayout(run).manifest.relative_to(ROOT)),
                        "finetune": f"lora ({lora['commit'][:10]})", "simulate": f"judge ({judge['commit'][:10]})"}}


def pipeline_section(args, data, cfg, device, limits) -> dict:
    """``coldllm run -c configs/citeulike.yaml`` from nothing (a new run folder; the text vectors
    come from the shared content cache when they are there), in its own process: its wall time and
    each stage's seconds from the run's manifest."""
    return run_end_to_end(ROOT / "configs" / "citeulike.yaml")


def paper_pipeline_section(args, data, cfg, device, limits) -> dict:
    """The same for ``configs/citeulike-paper.yaml``: the paper's funnel with the LoRA judge
    tuned and run in the same process chain, every stage timed in one run."""
    return run_end_to_end(PAPER_CONFIG)


def run_end_to_end(config: Path) -> dict:
    import shutil
    import subprocess
    import sys

    # a fixed folder, emptied first: one run from nothing, and if it is killed its finished stages stay
    # there to read (never resumed by this section)
    name = f"speed-{config.stem}"
    runs = ROOT / "runs"
    shutil.rmtree(runs / name, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "coldllm.cli", "run", "-c", str(config), f"--runs_dir={runs}",
                    f"--name={name}"], check=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    manifest = json.loads(RunLayout(runs / name).manifest.read_text())
    stages = {stage: round(rec["seconds"], 1) for stage, rec in manifest["stages"].items() if "seconds" in rec}
    run_cfg = manifest["config"]
    return {"citeulike_seconds": round(seconds, 1), "stage_seconds": stages,
            "what": f"{config.relative_to(ROOT)}: backbone {run_cfg['backbone']['model']}, filter.towers "
                    f"{run_cfg['filter']['towers']}, refiner.judge {run_cfg['refiner']['judge']}",
            "run": str((runs / name).relative_to(ROOT)), "resolved_config": run_cfg,
            "test_metrics": manifest["stages"].get("evaluate_coldllm_test", {}).get("metrics")}


def eval_section(args, data, cfg, device, limits) -> dict:
    from coldllm.evaluate import Evaluator, embedding_scorer

    gen = torch.Generator().manual_seed(0)
    users = torch.randn(data.n_users, cfg.backbone.dim, generator=gen)
    items = torch.randn(data.n_items, cfg.backbone.dim, generator=gen)
    evaluator = Evaluator(data, "test", cfg.eval.ks, cfg.eval.batch_size)
    seconds, _ = timed(lambda: evaluator.evaluate(embedding_scorer(users, items), device), device)
    flops = 2 * data.n_users * data.n_items * cfg.backbone.dim
    return {"seconds": round(seconds, 3), "users": data.n_users, "items": data.n_items,
            "share_of_matmul_limit": round(flops / seconds / (limits["matmul_gflops"] * 1e9), 3)}


def filter_section(args, data, cfg, device, limits) -> dict:
    from coldllm.funnel.filter import build_index

    gen = np.random.default_rng(0)
    users = gen.standard_normal((data.n_users, cfg.backbone.dim)).astype(np.float32)
    items = gen.standard_normal((len(data.cold_items), cfg.backbone.dim)).astype(np.float32)
    index = build_index(users, "flat")
    seconds, _ = timed(lambda: index.search(items, cfg.filter.k), torch.device("cpu"))
    flops = 2 * data.n_users * len(items) * cfg.backbone.dim
    return {"seconds": round(seconds, 4), "cold_items": len(items), "k": cfg.filter.k,
            "share_of_matmul_limit": round(flops / seconds / (limits["matmul_gflops"] * 1e9), 3)}


def encode_section(args, data, cfg, device, limits) -> dict:
    from coldllm.content import LLMEncoder

    encoder = LLMEncoder(args.model, batch_size=args.batch_size, device=str(device), cache_dir=cfg.content.cache_dir)
    texts = list(data.item_text[: args.encode_items or None])
    lengths = np.array([len(i) for i in encoder.tokenizer(texts, truncation=True,
                                                         max_length=encoder.max_length)["input_ids"]])
    ordered = np.sort(lengths)
    padded = sum(len(b) * int(b.max()) for b in np.array_split(ordered, max(1, -(-len(ordered) // args.batch_size))))
    seconds, _ = timed(lambda: encoder.encode(texts), device, warm_up=False)
    rate = lengths.sum() / seconds
    return {"seconds": round(seconds, 1), "items": len(texts), "tokens": int(lengths.sum()), "padded_tokens": int(padded),
            "batch_size": args.batch_size, "tokens_per_second": round(float(rate), 1),
            "share_of_matmul_limit": round(float(rate * forward_flops_per_token(encoder.model)
                                                 / (limits["matmul_gflops"] * 1e9)), 3)}


def onepass_text_section(args, data, cfg, device, limits) -> dict:
    from coldllm.funnel.text_encoder import TextEncoder, TextEncoderSpec

    texts = list(np.random.default_rng(0).choice(data.item_text, args.onepass_items, replace=False))
    out = {"items": len(texts), "batch_items": 32, "model": args.model}
    for name, layers in (("every_layer", 0), (f"top_{args.top_layers}", args.top_layers)):
        encoder = TextEncoder(TextEncoderSpec(model=args.model, tune="lora", lora_layers=layers),
                              cfg.content.cache_dir, device)
        ids = encoder.tokenize(texts)
        order = np.argsort([len(i) for i in ids], kind="stable")
        batches = [[ids[i] for i in order[s:s + 32]] for s in range(0, len(ids), 32)]
        opt = torch.optim.Adam(encoder.trainable(), lr=1e-4)

        def epoch() -> None:
            encoder.train()
            for batch in batches:
                opt.zero_grad(set_to_none=True)
                encoder(batch).pow(2).mean().backward()  # the reader's share of a step; the head's is small
                opt.step()

        keep_start = time.perf_counter()
        with encoder.frozen_states_kept(ids):
            keep = time.perf_counter() - keep_start
            train, _ = timed(epoch, device, warm_up=False)
            encode, _ = timed(lambda: encoder.encode_ids(ids), device, warm_up=False)
        per_1000 = 1000 / len(texts)
        out[name] = {"train_s_per_1000": round(train * per_1000, 2), "encode_s_per_1000": round(encode * per_1000, 2),
                     "keep_s_per_1000": round(keep * per_1000, 2) if layers else 0.0,
                     "trainable_parameters": sum(w.numel() for w in encoder.trainable())}
    whole, top = out["every_layer"], out[f"top_{args.top_layers}"]
    out["epoch_speedup"] = round((whole["train_s_per_1000"] + whole["encode_s_per_1000"])
                                 / (top["train_s_per_1000"] + top["encode_s_per_1000"]), 2)
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = {name: report[name].get("share_of_matmul_limit", report[name].get("share_of_bandwidth_limit"))
              for name in SECTIONS[1:] if isinstance(report.get(name), dict)}
    shares = {k: v for k, v in shares.items() if v is not None}
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh(list(shares), list(shares.values()), color="#4c72b0")
    ax.axvline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("share of the machine's limit (matmul, or copy bandwidth for lightgcn)")
    ax.set_title(f"{report['machine']['device']}, {report['machine']['threads']} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS + EXTRA_SECTIONS)
    parser.add_argument("--fast", default="{}", help="lightgcn_train: JSON changes to the fast settings")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--users", type=int, default=24)
    parser.add_argument("--naive-pairs", type=int, default=96,
                        help="pairs judged one prompt at a time (48 gave naive rates 18%% apart on one engine)")
    parser.add_argument("--lora-users", type=int, default=32, help="lora: users giving 2 examples each")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--encode-items", type=int, default=0, help="encode: titles encoded (0: all)")
    parser.add_argument("--candidates-from", default="runs/bench-citeulike-lightgcn-coldllm")
    parser.add_argument("--onepass-items", type=int, default=512, help="onepass_text: titles in the sample")
    parser.add_argument("--top-layers", type=int, default=4, help="onepass_text: layers with adapters when kept")
    args = parser.parse_args()
    device = resolve_device(args.device)
    cfg = load_config(ROOT / "configs" / "citeulike.yaml")
    data = load_dataset(cfg.data)
    out = ROOT / "results" / "speed" / f"{'cpu' if device.type == 'cpu' else 'gpu'}.json"
    # sections measured earlier stay, each with its own commit and date; the ones run now replace theirs
    report = json.loads(out.read_text()) if out.exists() else {}
    stamp = {"commit": git_commit(ROOT), "created": now_iso()}
    measuring = bool(set(args.sections) - {"paper_setting"})  # pricing alone times nothing
    if measuring:  # the machine's entry is the limits of the sections measured with it
        report.update(stamp, versions=package_versions(), config=vars(args), machine={**machine(device), **stamp})
    limits = report["machine"]
    for name in args.sections[1:] if args.sections[0] == "machine" else args.sections:
        start = time.perf_counter()
        report[name] = {**globals()[f"{name}_section"](args, data, cfg, device, limits), **stamp,
                        "machine_threads": limits["threads"]}
        report[name]["section_seconds"] = round(time.perf_counter() - start, 1)
        print(name, report[name], flush=True)
        write_json(out, report)  # after each section: a later failure keeps what was measured
    if isinstance(report.get("lightgcn_train"), dict) and isinstance(report.get("lightgcn"), dict):
        # the training figures also sit beside the epoch's, with the commit and date they came from
        trained = report["lightgcn_train"]
        copied = ("seconds_to_best", "best_val_ndcg", "baseline_seconds_to_best", "baseline_best_val_ndcg",
                  "seconds_to_target", "speedup_to_target")
        report["lightgcn"].update({k: trained.get(k) for k in copied},
                                  training_measured={"commit": trained["commit"], "created": trained["created"]})
    if measuring:
        report["peak_memory_mb"] = round(peak_memory_mb(), 1)
    write_json(out, report)
    plot(report, out.with_suffix(".png"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
