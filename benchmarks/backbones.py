"""Train every backbone on the published CiteULike split and record its full-ranking results.

    python benchmarks/backbones.py [--backbones mf lightgcn ngcf] [--preset configs/citeulike.yaml] [--reproduce]

Each backbone runs as ``coldllm run`` in its own process (so its peak memory is its own) under
``runs/bench-citeulike-<backbone>/``; a finished run is not redone, an interrupted one resumes.
Results go to ``results/citeulike/<backbone>.json`` and the generated ``results/citeulike/README.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

from coldllm.layout import RunLayout
from coldllm.backbones import load_backbone
from coldllm.config import load_config, to_dict
from coldllm.evaluate import Evaluator, embedding_scorer
from coldllm.pipeline import Run
from results import record_method, record_seed, results_dir
from names import preset_for, run_name
from render import render

ROOT = Path(__file__).resolve().parent.parent
# --reproduce: the largest difference in any representation that still counts as the same backbone
REPRODUCE_TOLERANCE = 1e-5


def compare_embeddings(a: Path, b: Path) -> float:
    """The largest absolute difference between two runs' saved user and item representations."""
    from coldllm.backbones.train import load_embeddings

    (ua, ia), (ub, ib) = load_embeddings(a), load_embeddings(b)
    if ua.shape != ub.shape or ia.shape != ib.shape:
        return float("inf")
    return max((ua - ub).abs().max().item(), (ia - ib).abs().max().item())


def run_backbone(backbone: str, preset: Path, extra: list[str], reproduce: bool = False,
                 seed: int | None = None) -> None:
    dataset = load_config(preset, list(extra)).data.name
    name = run_name(dataset, backbone) if seed is None else run_name(dataset, backbone, seed)
    kept = name
    if reproduce:  # trained again beside the kept run, which the funnel's variants link to and stays
        name = f"{name}-repro"
        # from nothing: a finished repro run of an earlier session would be resumed, not trained again
        shutil.rmtree(ROOT / load_config(preset, list(extra)).runs_dir / name, ignore_errors=True)
    overrides = [f"--name={name}", f"--backbone.model={backbone}", "--stages=[prepare, train, evaluate_test]",
                 *([f"--seed={seed}"] if seed is not None else []), *extra]
    cmd = [sys.executable, "-m", "coldllm.cli", "run", "--config", str(preset), *overrides]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    cfg = load_config(preset, overrides)
    run = Run(cfg)
    manifest = json.loads(RunLayout(cfg.run_dir).manifest.read_text())
    stages = manifest["stages"]
    metrics = stages["evaluate_test"]["metrics"]
    out = results_dir(cfg.data.name) / f"{backbone}.json"
    check = {}
    if reproduce:
        diff = compare_embeddings(cfg.run_dir / "backbone", ROOT / cfg.runs_dir / kept / "backbone")
        recorded = json.loads(out.read_text())["methods"].get("backbone", {}) if out.exists() else {}
        same = all(recorded.get(s, {}).get(m) == metrics[s][m] for s in ("overall", "cold", "warm")
                   for m in ("recall@20", "ndcg@20"))
        print(f"{name}: largest difference from {kept}'s representations {diff:.3g}; same test figures: {same}",
              flush=True)
        # float sums in another order differ in the last bits; a backbone whose representations move
        # further, or whose rankings change at all, is not the one the variants were built on
        if diff > REPRODUCE_TOLERANCE or not same:
            raise SystemExit(f"{name} does not reproduce {kept} (max |diff| {diff:.3g}, same test figures: {same}); "
                             "row not recorded")
        check = {"reproduces": kept, "max_abs_diff": diff}
    record = functools.partial(record_method) if seed is None else functools.partial(record_seed, seed=seed)
    record(
        out, dataset=cfg.data.name, split=cfg.data.split, backbone=backbone, method="backbone",
        metrics=metrics, config=to_dict(cfg),
        extra={
            # training time accumulates over resumed sessions; the stage's own seconds would not
            "seconds": round(stages["prepare"]["seconds"] + stages["train"]["train_seconds"]
                             + stages["evaluate_test"]["seconds"], 1),
            "train_seconds": stages["train"]["train_seconds"],
            "peak_memory_mb": max(s["peak_memory_mb"] for s in stages.values()),
            "best_epoch": stages["train"]["best_epoch"],
            "epochs": stages["train"]["epochs"],
            "paper_protocol": Evaluator(run.data, "test", cfg.eval.ks, reference=True).evaluate(
                embedding_scorer(*load_backbone(cfg.run_dir / "backbone", run.data).embeddings())),
            **check,
        },
        commit=stages["train"].get("commit", manifest["commit"]),
    )
    print(f"wrote {out}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["mf", "lightgcn", "ngcf"])
    parser.add_argument("--preset", type=Path, default=ROOT / "configs" / "citeulike.yaml")
    parser.add_argument("--reproduce", action="store_true",
                        help="train again in runs/bench-<dataset>-<backbone>-repro; record the row only when its "
                             "test figures equal the kept row's exactly and its representations the kept run's "
                             "within REPRODUCE_TOLERANCE (re-measuring, at the current commit, a backbone that "
                             "the funnel's variants already use)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="model seeds (the split's data.seed stays fixed): one run each, recorded as one row with "
                             "every seed's figures, their mean and standard deviation")
    parser.add_argument("overrides", nargs="*", help="extra --key=value overrides for every run")
    args, unknown = parser.parse_known_args()
    for backbone in args.backbones:
        for seed in args.seeds or [None]:
            run_backbone(backbone, preset_for(backbone, args.preset), args.overrides + unknown, args.reproduce, seed)
    print(render(load_config(args.preset, []).data.name))


if __name__ == "__main__":
    main()
