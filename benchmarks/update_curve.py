"""A diagnostic of the update: cold validation and cold test NDCG@20 along its steps, from the run's
own prior and accepted pairs, at several candidate depths (fixed, or scaled by predicted popularity).

    python benchmarks/update_curve.py --preset configs/ml-1m.yaml --run bench-ml-1m-mf-coldllm-no-refiner \\
        --towers coupled --depths 20 50 100

``val`` is what the update selects on (``update.val_candidates``), ``val_every_cold`` validation
ranked over every cold item, as the test is, ``val_blind`` over every cold item but the test part's
(``update.val_candidates: blind``), ``test_taken`` the test without the cold items nobody took. It
reads test labels at every step, so it is never a way to choose anything: it shows whether what the
update's early stop sees on validation holds on test. Rows go to
``results/<dataset>/update-curve.json``, each with its config, commit and date.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd

from coldllm.backbones import load_backbone
from coldllm.config import load_config, to_dict
from coldllm.evaluate import Evaluator, subset_scorer
from coldllm.funnel.update_stage import chosen_prior, cold_validation, predicted_popularity, validation_candidates, \
    within_depth
from coldllm.funnel.update import FastParams, fit_cold_rows, item_depths
from coldllm.pipeline import Run
from coldllm.utils import git_commit, now_iso
from results import results_dir, write_results

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", type=Path, required=True)
    parser.add_argument("--run", required=True, help="a finished funnel run under runs/")
    parser.add_argument("--towers", default="coupled", help="the run's filter.towers (its config is read with it)")
    parser.add_argument("--depths", nargs="+", type=int, default=[20, 50, 100])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--every", type=int, default=25)
    args = parser.parse_args()
    cfg = load_config(args.preset, [f"--name={args.run}", f"--filter.towers={args.towers}"])
    run = Run(cfg)
    data = run.data
    user_emb, item_emb = load_backbone(run.layout.backbone, data).embeddings()
    evaluators = {s: Evaluator(data, s, [20], settings=("cold",)) for s in ("val", "test")}

    def ndcg(items, split: str, among: np.ndarray = data.cold_items) -> float:
        return evaluators[split].evaluate(subset_scorer(user_emb, items, among))["cold"]["ndcg@20"]

    blind = validation_candidates(data, "blind")
    # the cold items some held-out part names: the test without the items nobody took
    taken = np.union1d(validation_candidates(data, "split"), data.matrix("cold_test").indices)

    own = cold_validation(run, user_emb, "cpu")  # what the update selects on (update.val_candidates)
    _, prior, _ = chosen_prior(run, user_emb, item_emb, lambda items: float(own(items).mean()))
    simulated = pd.read_parquet(run.layout.simulated)
    accepted = simulated[simulated["accepted"]]
    popular = predicted_popularity(run)
    ranks = pd.read_parquet(run.layout.candidates, columns=["item", "user", "rank"])
    params = dataclasses.replace(FastParams.from_config(cfg.update, cfg.seed), eval_every=args.every,
                                 patience=10 ** 6, steps=args.steps)
    out = results_dir(cfg.data.name) / "update-curve.json"
    doc = json.loads(out.read_text()) if out.exists() else {"rows": []}
    for mode in ("fixed", "popularity"):
        for depth in args.depths:
            per_item = depth if mode == "fixed" else pd.Series(item_depths(popular, depth, cfg.filter.k),
                                                               index=data.cold_items)
            pairs = within_depth(accepted, ranks, per_item)
            curve = []

            def both(items):
                curve.append({"val": float(own(items).mean()), "val_every_cold": ndcg(items, "val"),
                              "val_blind": ndcg(items, "val", blind), "test": ndcg(items, "test"),
                              "test_taken": ndcg(items, "test", taken)})
                return curve[-1]["val"]

            fit_cold_rows(user_emb, item_emb, prior, data.cold_items, pairs, params, validate=both)
            row = {"run": args.run, "depth_mode": mode, "k": depth, "pairs": len(pairs),
                   "steps": [0] + [s for s in range(1, args.steps + 1) if s % args.every == 0 or s == args.steps],
                   "curve": curve, "config": to_dict(cfg), "commit": git_commit(ROOT), "created": now_iso()}
            doc["rows"] = [r for r in doc["rows"] if (r["run"], r["depth_mode"], r["k"]) != (args.run, mode, depth)]
            doc["rows"].append(row)
            best = int(np.argmax([c["val"] for c in curve]))
            print(f"{args.run} {mode} k={depth}: val {curve[0]['val']:.4f} -> best {curve[best]['val']:.4f}; "
                  f"test at that step {curve[best]['test']:.4f} (start {curve[0]['test']:.4f})", flush=True)
    write_results(out, doc)


if __name__ == "__main__":
    main()
