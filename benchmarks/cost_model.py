"""A cost model on paper: what simulating users for M new items a day costs at N users.

    python benchmarks/cost_model.py            # writes results/scale/cost.json and cost.md
    python benchmarks/cost_model.py --docs     # and pastes the tables into docs/scaling.md

No new measurement: every rate is read from a results file that a committed benchmark wrote
(``results/speed/cpu.json`` from ``benchmarks/speed.py`` when it exists, otherwise the judge
measurements under ``results/citeulike/speed/``; ``results/scale/faiss.json`` from
``benchmarks/faiss_scale.py``), and each input is stored with where it came from.

Three parts, per day:

* the pairwise funnel (the method here): K judged pairs per new item. A pair is the user's
  history prefix plus a short item suffix; the packed engine reads each judged user's prefix once
  for all of that user's candidates, so its tokens are (distinct users) x prefix + pairs x suffix.
  How many of the M*K pairs share a user depends on M*K/N: with pairs spread uniformly over users
  (the pessimistic case: real candidates favour heavy users, who then share more), the distinct
  users are N (1 - exp(-M K / N)). At a billion users nearly every pair has its own user and the
  prefix is paid per pair.
* a one-pass simulator: one forward pass over the item text per item, then a head with one row per
  user scores all N users at once. The body's cost is fixed per item; the head's is 2 w N FLOPs per
  item (w: the head's width, by default the backbone's embedding width, the space the head scores
  users in) and w N parameters to keep in memory, so it grows with N and dominates past
  N* = item_tokens x FLOPs-per-token / (2 w). The head is the same dense product as exact filter
  search, so on a CPU it is priced at FAISS's measured exact-search rate.
* the filter: exact top-K costs in proportion to N per item (measured at 1M users, scaled
  linearly); the approximate index recommended by faiss_scale.py is scaled as sqrt(N) (IVF with
  nlist ~ sqrt(N) at a fixed nprobe; HNSW grows only as log N, so this over-states it), its memory
  linearly.

Machine counts are what a Ray cluster would need to finish a day's work in one hour.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from coldllm.config import load_config
from coldllm.utils import git_commit, now_iso, write_json
from results import fill_block

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "scale" / "cost.json"
CPU_SPEED = ROOT / "results" / "speed" / "cpu.json"
CPU_JUDGE = ROOT / "results" / "citeulike" / "speed" / "judge-cpu.json"
GPU_JUDGE = ROOT / "results" / "citeulike" / "speed" / "judge-cuda.json"
FAISS = ROOT / "results" / "scale" / "faiss.json"
# SmolLM2-135M, the default judge (cache/models/smollm2-135m/config.json after conversion):
# 30 layers, hidden 576, MLP 1536, 9 query heads and 3 key/value heads of width 64
ARCH = {"layers": 30, "hidden": 576, "intermediate": 1536, "heads": 9, "kv_heads": 3, "head_dim": 64}
GPU_MEMORY_GB = {"NVIDIA H200": 141, "NVIDIA H100": 80}  # vendor figures, for sharding the user head
GRID_USERS = (1e6, 1e7, 1e8, 1e9)
GRID_ITEMS = (1e4, 1e5, 1e6)


def body_flops_per_token(arch: dict) -> float:
    """2 FLOPs per weight of the transformer body (attention projections and MLP)."""
    h, kv = arch["hidden"], arch["kv_heads"] * arch["head_dim"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * arch["intermediate"]
    return 2.0 * arch["layers"] * per_layer


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def judge_rates(path: Path) -> dict:
    """Tokens/s of the packed engine and of whole prompts, from a judge measurement.

    The file's pairs come in groups of ``candidates`` per user: the packed engine processed one
    prefix per group plus every suffix, whole prompts one prefix per pair.
    """
    r = json.loads(path.read_text())
    prefix, suffix, per_user = r["mean_prefix_tokens"], r["mean_suffix_tokens"], r["config"]["candidates"]
    return {"source": rel(path), "device": r.get("device", "cpu"), "threads": r.get("threads"),
            "commit": r["commit"], "date": r["created"],
            "packed_tokens_per_s": r["cached"]["pairs_per_second"] * (prefix / per_user + suffix),
            "whole_prompt_tokens_per_s": r["uncached"]["pairs_per_second"] * (prefix + suffix),
            "measured_prefix_tokens": prefix, "measured_suffix_tokens": suffix, "candidates_per_user": per_user}


def cpu_rates() -> dict:
    """The newest CPU figures: speed.py's report when there is one, else the older judge file."""
    if CPU_SPEED.exists():
        r = json.loads(CPU_SPEED.read_text())
        j = r["judge"]
        return {"source": rel(CPU_SPEED), "device": r["machine"]["device"], "threads": r["machine"]["threads"],
                "commit": r["commit"], "date": r["created"], "packed_tokens_per_s": j["tokens_per_s"],
                "whole_prompt_tokens_per_s": j["whole_prompt_tokens_per_s"],
                "measured_prefix_tokens": j["mean_prefix_tokens"], "measured_suffix_tokens": j["mean_suffix_tokens"]}
    return judge_rates(CPU_JUDGE)


def filter_rates(path: Path) -> dict:
    """Per dimension: exact and recommended-index ms per item at the measured N, and bytes per user."""
    r = json.loads(path.read_text())
    users = r["config"]["users"]
    out = {"source": rel(path), "users_measured": users}
    for dim, block in sorted(r["dims"].items(), key=lambda kv: int(kv[0])):
        entries = {e["name"]: e for e in block["entries"]}
        flat = entries["flat"]
        row = {"exact_ms_per_item": flat["ms_per_query"], "exact_bytes_per_user": flat["memory_mb"] * 2**20 / users,
               "threads": block["machine"]["faiss_threads"], "commit": block["commit"], "date": block["date"],
               # exact search is a dense product: its FLOP rate is the CPU figure for a user head too
               "exact_gflops": 2 * users * int(dim) / (flat["ms_per_query"] / 1e3) / 1e9}
        best = block.get("recommended")
        if best:
            e = entries[best["fastest"]]
            row.update({"index": best["fastest"], "index_recall": e["recall"], "index_ms_per_item": e["ms_per_query"],
                        "index_bytes_per_user": e["memory_mb"] * 2**20 / users})
            small = entries[best["smallest"]]
            row.update({"compact_index": best["smallest"], "compact_recall": small["recall"],
                        "compact_ms_per_item": small["ms_per_query"],
                        "compact_bytes_per_user": small["memory_mb"] * 2**20 / users})
        out[dim] = row
    return out


def distinct_users(n_users: float, pairs: float) -> float:
    """Expected distinct users among ``pairs`` candidates drawn uniformly over ``n_users``."""
    return n_users * -math.expm1(-pairs / n_users)


def funnel_day(n: float, m: float, p: dict, rates: dict) -> dict:
    pairs = m * p["k"]
    users = distinct_users(n, pairs)
    packed = users * p["prefix_tokens"] + pairs * p["suffix_tokens"]
    whole = pairs * (p["prefix_tokens"] + p["suffix_tokens"])
    hours = {"packed": packed / rates["packed_tokens_per_s"] / 3600,
             "whole": whole / rates["whole_prompt_tokens_per_s"] / 3600}
    mode = min(hours, key=hours.get)  # each engine at its own measured rate; the cheaper one is used
    return {"pairs": pairs, "distinct_users": users, "tokens": packed if mode == "packed" else whole,
            "packed_tokens": packed, "whole_prompt_tokens": whole, "engine": mode, "device_hours": hours[mode]}


def one_pass_day(n: float, m: float, p: dict, rates: dict, head_flops_per_s: float, bytes_per_param: int) -> dict:
    body_tokens = m * p["item_tokens"]
    body_s = body_tokens / rates["whole_prompt_tokens_per_s"]  # no prefix to share: whole-prompt rate
    head_flops = m * 2 * p["hidden"] * n
    head_s = head_flops / head_flops_per_s
    return {"calls": m, "tokens": body_tokens, "body_hours": body_s / 3600, "head_hours": head_s / 3600,
            "device_hours": (body_s + head_s) / 3600, "head_share": head_s / (body_s + head_s),
            "head_params": p["hidden"] * n, "head_gb": p["hidden"] * n * bytes_per_param / 1e9}


def filter_day(n: float, m: float, row: dict, measured_users: int) -> dict:
    scale = n / measured_users
    out = {"exact_machine_hours": m * row["exact_ms_per_item"] / 1e3 * scale / 3600,
           "exact_gb": row["exact_bytes_per_user"] * n / 1e9}
    if "index" in row:
        out.update({"index_machine_hours": m * row["index_ms_per_item"] / 1e3 * math.sqrt(scale) / 3600,
                    "index_gb": row["index_bytes_per_user"] * n / 1e9,
                    "compact_machine_hours": m * row["compact_ms_per_item"] / 1e3 * math.sqrt(scale) / 3600,
                    "compact_gb": row["compact_bytes_per_user"] * n / 1e9})
    return out


def build(args) -> dict:
    gpu, cpu = judge_rates(GPU_JUDGE), cpu_rates()
    flops_token = body_flops_per_token(ARCH)
    faiss = filter_rates(FAISS) if FAISS.exists() else None
    filter_dim = str(args.filter_dim)
    head_width = args.head_width or load_config(ROOT / "configs" / "citeulike.yaml").backbone.dim
    params = {"k": args.k, "prefix_tokens": args.prefix_tokens, "suffix_tokens": args.suffix_tokens,
              "item_tokens": args.item_tokens, "hidden": head_width}
    # the CPU's dense-product rate: exact FAISS search at the measured width nearest the head's
    head_dim = (min((d for d in faiss if d.isdigit()), key=lambda d: abs(int(d) - head_width)) if faiss else None)
    # the GPU's dense-product rate: its whole-prompt throughput times the FLOPs each token costs
    gpu_flops = gpu["whole_prompt_tokens_per_s"] * flops_token
    cpu_head_flops = (faiss[head_dim]["exact_gflops"] * 1e9 if head_dim
                      else cpu["whole_prompt_tokens_per_s"] * flops_token)
    gpu_mem = GPU_MEMORY_GB.get(gpu["device"], 80)
    crossover = args.item_tokens * flops_token / (2 * head_width)
    inputs = {
        "k": {"value": args.k, "source": "filter.k, the default of src/coldllm/config.py"},
        "prefix_tokens": {"value": args.prefix_tokens, "source": f"scenario; measured means {cpu['measured_prefix_tokens']} "
                          f"({cpu['source']}) and {gpu['measured_prefix_tokens']} ({gpu['source']}) at 20 history titles"},
        "suffix_tokens": {"value": args.suffix_tokens, "source": f"scenario; measured means {cpu['measured_suffix_tokens']} "
                          f"and {gpu['measured_suffix_tokens']}"},
        "item_tokens": {"value": args.item_tokens, "source": "scenario: one item text (title) per forward pass"},
        "flops_per_token": {"value": flops_token, "source": f"2 x body weights of SmolLM2-135M {ARCH}"},
        "hidden": {"value": head_width, "source": ("--head-width" if args.head_width else
                   "backbone.dim of configs/citeulike.yaml: the head scores users in the backbone's space")},
        "gpu": {**gpu, "dense_flops_per_s": gpu_flops,
                "dense_flops_source": "whole_prompt_tokens_per_s x flops_per_token", "memory_gb": gpu_mem},
        "cpu": {**cpu, "dense_flops_per_s": cpu_head_flops,
                "dense_flops_source": (f"exact FAISS search at {head_dim}-d ({faiss['source']})" if head_dim
                                       else "whole_prompt_tokens_per_s x flops_per_token")},
        "filter": faiss,
    }
    rows = []
    for n in GRID_USERS:
        for m in GRID_ITEMS:
            g_f, c_f = funnel_day(n, m, params, gpu), funnel_day(n, m, params, cpu)
            g_o = one_pass_day(n, m, params, gpu, gpu_flops, 2)  # bf16 head on a GPU
            c_o = one_pass_day(n, m, params, cpu, cpu_head_flops, 4)
            row = {"users": n, "items_per_day": m, "funnel_gpu": g_f, "funnel_cpu": c_f,
                   "one_pass_gpu": g_o, "one_pass_cpu": c_o,
                   "gpus_in_1h": {"funnel": math.ceil(g_f["device_hours"]),
                                  "one_pass": max(math.ceil(g_o["device_hours"]), math.ceil(g_o["head_gb"] / gpu_mem))},
                   "cpu_machines_in_1h": {"funnel": math.ceil(c_f["device_hours"]), "one_pass": math.ceil(c_o["device_hours"])}}
            if faiss and filter_dim in faiss:
                f = filter_day(n, m, faiss[filter_dim], faiss["users_measured"])
                row["filter"] = f
                row["cpu_machines_in_1h"]["filter_exact"] = math.ceil(f["exact_machine_hours"])
                if "index_machine_hours" in f:
                    row["cpu_machines_in_1h"]["filter_index"] = math.ceil(f["index_machine_hours"])
            rows.append(row)
    return {"commit": git_commit(ROOT), "date": now_iso(), "inputs": inputs, "one_pass_head_dominates_above_users": crossover,
            "filter_dim": args.filter_dim, "rows": rows,
            "notes": ["device_hours: hours of one device at the measured rate (a GPU, or one 2-thread CPU machine); "
                      "machines in 1 h: a day's work finished in one hour on that many of them",
                      "one-pass GPUs in 1 h: at least enough to hold the user head in bf16 (sharded by users)",
                      "the filter runs on CPU machines like the one that measured it"]}


def fmt(x: float) -> str:
    """Compact numbers for the table: 3 significant digits, k/M/G suffixes."""
    if x == 0:
        return "0"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def markdown(report: dict) -> str:
    gpu, cpu = report["inputs"]["gpu"], report["inputs"]["cpu"]
    lines = [
        f"Per day, K={report['inputs']['k']['value']} candidates per new item; GPU figures at the judge's measured rates on one "
        f"{gpu['device']} ({gpu['source']}), CPU figures on one {cpu['threads']}-thread machine ({cpu['source']}). "
        f"Funnel: the cheaper of the packed engine and whole prompts. One pass: ~{report['inputs']['item_tokens']['value']} "
        f"item tokens per item plus a {report['inputs']['hidden']['value']}-wide head over all N users, which dominates above "
        f"N = {fmt(report['one_pass_head_dominates_above_users'])} users.",
        "",
        "| users N | new items/day M | judged pairs | funnel tokens | funnel GPU-h | funnel CPU-machine-h | one-pass GPU-h "
        "(head share) | user head (bf16) | filter CPU-machine-h, exact / index | filter RAM, exact / index | "
        "GPUs for 1 h: funnel / one-pass |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["rows"]:
        g_f, c_f, g_o = r["funnel_gpu"], r["funnel_cpu"], r["one_pass_gpu"]
        f = r.get("filter", {})
        filt = (f"{fmt(f['exact_machine_hours'])} / {fmt(f['index_machine_hours'])}" if "index_machine_hours" in f
                else fmt(f["exact_machine_hours"]) if f else "n/a")
        ram = (f"{fmt(f['exact_gb'])} / {fmt(f['index_gb'])} GB" if "index_gb" in f
               else f"{fmt(f['exact_gb'])} GB" if f else "n/a")
        lines.append(f"| {fmt(r['users'])} | {fmt(r['items_per_day'])} | {fmt(g_f['pairs'])} | {fmt(g_f['tokens'])} "
                     f"({g_f['engine']}) | {fmt(g_f['device_hours'])} | {fmt(c_f['device_hours'])} | "
                     f"{fmt(g_o['device_hours'])} ({g_o['head_share']:.0%}) | {fmt(g_o['head_gb'])} GB | {filt} | {ram} | "
                     f"{r['gpus_in_1h']['funnel']} / {r['gpus_in_1h']['one_pass']} |")
    filt = report["inputs"]["filter"]
    if filt and str(report["filter_dim"]) in filt:
        d = filt[str(report["filter_dim"])]
        lines += ["", f"Filter at {report['filter_dim']}-d: exact search {d['exact_ms_per_item']:.3g} ms per item per "
                  f"{fmt(filt['users_measured'])} users, scaled linearly in N; "
                  + (f"index `{d['index']}` (recall {d['index_recall']:.3f}) {d['index_ms_per_item']:.3g} ms, scaled as sqrt(N); "
                     if "index" in d else "")
                  + f"both with {d['threads']} threads ({filt['source']})."]
    lines += ["", f"Written by `python benchmarks/cost_model.py` at commit {report['commit'][:12]} on {report['date'][:10]}; "
              "inputs and their sources in `results/scale/cost.json`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--prefix-tokens", type=float, default=240)
    parser.add_argument("--suffix-tokens", type=float, default=22)
    parser.add_argument("--item-tokens", type=float, default=30)
    parser.add_argument("--head-width", type=int, default=0, help="one-pass head width (0: the backbone's dim)")
    parser.add_argument("--filter-dim", type=int, default=200, help="which faiss_scale.py dimension prices the filter")
    parser.add_argument("--docs", action="store_true", help="also fill the generated blocks of docs/scaling.md")
    args = parser.parse_args()
    report = build(args)
    report["config"] = vars(args)
    write_json(OUT, report)
    table = markdown(report)
    OUT.with_suffix(".md").write_text(table)
    if args.docs:
        fill_block(ROOT / "docs" / "scaling.md", "cost-model", table)
        summary = FAISS.with_suffix(".md")
        if summary.exists():
            fill_block(ROOT / "docs" / "scaling.md", "faiss-scale", summary.read_text())
    print(table)


if __name__ == "__main__":
    main()
