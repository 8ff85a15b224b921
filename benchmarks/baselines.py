"""Every content-mapping baseline and control on the published CiteULike split, both backbones.

    python benchmarks/baselines.py [--backbones mf lightgcn] [--methods aldi knn ...]

Needs the backbone runs of ``benchmarks/backbones.py`` (``runs/bench-citeulike-<backbone>/``).
Each method is fitted once per configuration of ``benchmarks/search.yaml``; the configuration with
the best cold-validation NDCG@20 is evaluated on the test set and added to
``results/citeulike/<backbone>.json`` with the whole search. Finished fits are kept under
``runs/bench-citeulike-<backbone>/search/`` and not redone when the benchmark is restarted.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import time
from pathlib import Path

import torch
import yaml

from coldllm.backbones import load_backbone
from coldllm.baselines import METHODS, build_method
from coldllm.baselines import base, runner
from coldllm.baselines.runner import fit_and_evaluate, make_context
from coldllm.config import load_config, to_dict
from coldllm.data import load_dataset
from coldllm.pipeline import Run, content_vectors
from results import record_method, record_seed, results_dir
from names import preset_for, run_name
from render import render
from coldllm.utils import git_commit, now_iso, peak_memory_mb, resolve_device, setup_logging, write_json

ROOT = Path(__file__).resolve().parent.parent


def source_hash(name: str) -> str:
    """A hash of the code a fit of ``name`` ran: its module, the shared base and the runner."""
    method = build_method(name, {})
    files = {inspect.getsourcefile(type(method)), inspect.getsourcefile(base), inspect.getsourcefile(runner)}
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(Path(file).read_bytes())
    return digest.hexdigest()[:16]


def search_method(name: str, grid: list[dict], ctx, folder: Path) -> tuple[dict, list[dict]]:
    """Fit every configuration (resuming from saved reports); return the best report and the search."""
    reports = []
    code = source_hash(name)
    for i, params in enumerate(grid):
        path = folder / f"{name}-{i}.json"
        # a saved fit counts only if it ran the same code with every setting the same, defaults
        # included (a changed default or a changed method makes it stale)
        full = json.loads(json.dumps(vars(build_method(name, params).params)))
        saved = json.loads(path.read_text()) if path.exists() else None
        # ... and says at which commit it ran (and was evaluated): the row it becomes carries that
        if saved is not None and saved["params"] == full and saved.get("source_hash") == code and "commit" in saved:
            reports.append(saved)
            continue
        _, report = fit_and_evaluate(name, params, ctx, splits=("val", "test"))
        report.update(params_given=params, source_hash=code, commit=git_commit(ROOT), created=now_iso())
        write_json(path, report)
        reports.append(report)
    # chosen on validation only; the test figures of the others are never looked at
    best = max(reports, key=lambda r: r["val"]["cold"]["ndcg@20"])
    search = [{"params": r["params_given"], "val_cold": r["val"]["cold"], "fit_seconds": r["fit_seconds"],
               "epochs": len(r["history"])} for r in reports]
    return best, search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["mf", "lightgcn"])
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--preset", type=Path, default=ROOT / "configs" / "citeulike.yaml")
    parser.add_argument("--search", type=Path, default=ROOT / "benchmarks" / "search.yaml")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="model seeds, each on its own backbone run (benchmarks/backbones.py --seeds): the "
                             "search runs on the first; the others fit its chosen configuration. One row per "
                             "method with every seed's figures, their mean and standard deviation")
    args = parser.parse_args()
    setup_logging()
    grids = yaml.safe_load(args.search.read_text())
    methods = args.methods or [m for m in grids if m in METHODS]
    dataset = load_config(args.preset, []).data.name
    for backbone_name in args.backbones:
        # method -> configuration chosen on the first seed's validation (a row recorded before keeps its
        # choice, so seeds added later fit what the search chose, never search again on their own)
        out = results_dir(dataset) / f"{backbone_name}.json"
        recorded = json.loads(out.read_text())["methods"] if out.exists() else {}
        chosen: dict[str, dict] = {m: recorded[m]["params_given"] for m in methods
                                   if "params_given" in recorded.get(m, {})}
        for seed in args.seeds or [None]:
            name = run_name(dataset, backbone_name) if seed is None else run_name(dataset, backbone_name, seed)
            cfg = load_config(preset_for(backbone_name, args.preset), [f"--name={name}", f"--backbone.model={backbone_name}",
                                            *([f"--seed={seed}"] if seed is not None else [])])
            run = Run(cfg)
            if not run.done("train"):
                raise SystemExit(f"{cfg.run_dir}: no trained backbone; run benchmarks/backbones.py first")
            data = load_dataset(cfg.data)
            device = resolve_device(cfg.baselines.device)
            start = time.perf_counter()
            content = content_vectors(run)
            content_seconds = time.perf_counter() - start
            backbone = load_backbone(cfg.run_dir / "backbone", data)
            ctx = make_context(data, backbone, content, device, cfg.seed, cfg.eval.ks, cfg.eval.metric)
            for method in methods:
                grid = [chosen[method]] if method in chosen else grids[method]
                best, search = search_method(method, grid, ctx, cfg.run_dir / "search")
                chosen.setdefault(method, best["params_given"])
                extra = {"seconds": best["seconds"], "peak_memory_mb": round(peak_memory_mb(), 1),
                         "content_seconds": round(content_seconds, 1), "keeps_warm": best["keeps_warm"],
                         "source_hash": best["source_hash"], "paper_protocol": best["paper_protocol"],
                         "val": best["val"], "search": search, "params_given": best["params_given"]}
                record = dict(path=results_dir(cfg.data.name) / f"{backbone_name}.json", dataset=cfg.data.name,
                              split=cfg.data.split, backbone=backbone_name, method=method, metrics=best["test"],
                              config={**to_dict(cfg), "method_params": best["params"]}, commit=best["commit"],
                              extra=extra)
                record_method(**record) if seed is None else record_seed(**record, seed=seed)
                print(f"{backbone_name} {method} seed {cfg.seed}: test cold {best['test']['cold']}", flush=True)
            del ctx
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    print(render(dataset))


if __name__ == "__main__":
    main()
