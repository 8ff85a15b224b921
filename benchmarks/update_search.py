"""What the update should be, chosen on cold validation only: one filter run at a large K, then the
free judges and the cold-only update under each design, in one process.

    python benchmarks/update_search.py --backbone mf [--k-max 100]

Needs ``runs/bench-citeulike-<backbone>/`` (the backbone) and builds the filter once, under
``runs/bench-citeulike-<backbone>-search-k<k-max>/``, with the preset's filter at K = ``--k-max``;
smaller K are its top-ranked candidates. Every design is scored by cold-validation NDCG@20 and
Recall@20 (the figure that selects); the test set is not looked at. Rows go to
``results/citeulike/update-search-<backbone>.json``, each with its settings, commit and date.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from coldllm.backbones import load_backbone
from coldllm.config import load_config
from coldllm.evaluate import Evaluator, subset_scorer
from coldllm.funnel.filter import funnel_coverage
from coldllm.funnel.judges import cosine_verdicts
from coldllm.funnel.refiner import user_histories
from coldllm.funnel.inputs import prompt_template
from coldllm.funnel.update_stage import content_prior
from coldllm.funnel.update import FastParams, fit_cold_rows
from coldllm.pipeline import Run, content_vectors
from names import preset_for
from results import results_dir, write_results
from coldllm.utils import git_commit, now_iso, setup_logging

ROOT = Path(__file__).resolve().parent.parent

# (name, settings): each changes the default design in one respect
DESIGNS = [
    ("default", {}),
    ("no prior (zero start)", {"prior": "none", "pull": 0.0}),
    ("prior as start only (pull 0)", {"pull": 0.0}),
    ("pull 0.1", {"pull": 0.1}),
    ("pull 10", {"pull": 10.0}),
    ("warm negatives only", {"negative_pool": "warm"}),
    ("cold negatives only", {"negative_pool": "cold"}),
    ("lr 0.001", {"lr": 0.001}),
    ("lr 0.01", {"lr": 0.01}),
    ("weighted by P(Yes)", {"weight_by_p_yes": True}),
]
JUDGES = ["all", "cosine"]
KS = [10, 20, 50, 100]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mf")
    parser.add_argument("--k-max", type=int, default=100)
    parser.add_argument("--defaults-only", action="store_true",
                        help="only the default design at every K (to compare filters)")
    parser.add_argument("--preset", type=Path, default=ROOT / "configs" / "citeulike.yaml")
    parser.add_argument("overrides", nargs="*", help="extra --key=value overrides (e.g. --filter.collab_source=knn)")
    args, unknown = parser.parse_known_args()
    setup_logging()
    base = f"bench-citeulike-{args.backbone}"
    name = f"{base}-search-k{args.k_max}" + "".join(f"-{o.lstrip('-').replace('=', '-')}" for o in args.overrides + unknown
                                                    if o.startswith("--filter."))
    overrides = [f"--name={name}", f"--backbone.model={args.backbone}", f"--filter.k={args.k_max}",
                 "--stages=[prepare, train, filter]", f"--reuse={{train: {base}}}", "--filter.towers=coupled",
                 *args.overrides, *unknown]
    subprocess.run([sys.executable, "-m", "coldllm.cli", "run", "--config", str(preset_for(args.backbone, args.preset)), *overrides],
                   check=True, cwd=ROOT)
    cfg = load_config(preset_for(args.backbone, args.preset), overrides)
    run, data = Run(cfg), Run(cfg).data
    user_emb, item_emb = load_backbone(run.dir / "backbone", data).embeddings()
    validator = Evaluator(data, "val", [20], settings=("cold",))
    histories = user_histories(data.matrix("train"), prompt_template(cfg).max_history, cfg.seed)
    vectors = content_vectors(run)
    all_candidates = pd.read_parquet(run.layout.candidates)
    out = results_dir(cfg.data.name) / f"update-search-{args.backbone}.json"
    doc = json.loads(out.read_text()) if out.exists() else {"rows": []}
    commit = git_commit(ROOT)
    prior_cache: dict[str, torch.Tensor] = {}
    cold_scorer = lambda table: subset_scorer(user_emb, table, data.cold_items)  # noqa: E731

    def prior_for(kind: str) -> torch.Tensor:
        if kind not in prior_cache:
            prior_cache[kind] = content_prior(Run(dataclasses.replace(cfg, update=dataclasses.replace(
                cfg.update, prior=kind))), user_emb, item_emb)
        return prior_cache[kind]

    # the prior alone: what every design starts from
    rows = [{"design": "prior only (content-KNN)", "k": 0, "judge": "-",
             "val_cold": validator.evaluate(cold_scorer(_with_rows(item_emb, data.cold_items,
                                                                   prior_for("knn"))))["cold"]}]
    plan = [(k, "all", d) for k in KS if k <= args.k_max for d in ([DESIGNS[0]] if k != 20 else DESIGNS)]
    plan += [(k, "cosine", DESIGNS[0]) for k in KS if k <= args.k_max]
    plan += [(20, "cosine", d) for d in DESIGNS if d[0] in ("pull 0.1", "pull 10", "weighted by P(Yes)")]
    if args.defaults_only:
        plan = [step for step in plan if step[2] is DESIGNS[0]]
    for k, judge, (design, change) in plan:
        candidates = all_candidates[all_candidates["rank"] < k]
        verdicts = (cosine_verdicts(candidates, histories, vectors, cfg.refiner.keep) if judge == "cosine"
                    else candidates[["user", "item"]].assign(p_yes=1.0, accepted=True))
        accepted = verdicts[verdicts["accepted"]]
        ucfg = dataclasses.replace(cfg.update, **change)
        params = FastParams.from_config(ucfg, cfg.seed)
        start = time.perf_counter()
        result = fit_cold_rows(user_emb, item_emb, prior_for(ucfg.prior), data.cold_items, accepted, params,
                               validate=lambda t: validator.evaluate(cold_scorer(t))["cold"]["ndcg@20"])
        val = validator.evaluate(cold_scorer(result.item_emb))["cold"]
        rows.append({"design": design, "k": k, "judge": judge, "val_cold": val, "best_step": result.best_step,
                     "seconds": round(time.perf_counter() - start, 1),
                     "accepted_val": funnel_coverage(accepted, data.parts["cold_val"]),
                     "update": dataclasses.asdict(ucfg)})
        print(f"K={k:3d} judge={judge:6s} {design:32s} val cold ndcg@20={val['ndcg@20']:.4f} "
              f"recall@20={val['recall@20']:.4f} step={result.best_step}", flush=True)
    stamp = {"backbone": args.backbone, "filter": dataclasses.asdict(cfg.filter), "k_max": args.k_max,
             "refiner_keep": cfg.refiner.keep, "commit": commit, "created": now_iso()}
    doc["rows"] = [r for r in doc["rows"] if r.get("filter") != stamp["filter"]] + [{**r, **stamp} for r in rows]
    write_results(out, doc)
    print(f"wrote {out}")


def _with_rows(item_emb: torch.Tensor, ids, rows: torch.Tensor) -> torch.Tensor:
    out = item_emb.clone()
    out[torch.as_tensor(ids)] = rows
    return out


if __name__ == "__main__":
    main()
