"""The ColdLLM stages of a run: filter -> finetune -> simulate -> update (-> evaluate).

Each stage reads the artifacts of the previous ones from the run folder (``RunLayout``) and writes
its own; what it fits is a component chosen by the config (``components.FILTERS``, ``JUDGES``):

    filter/    candidates.parquet (cold items' top-K users), warm_candidates.parquet, the fitted
               towers (towers.safetensors), the content mapping (prior.safetensors), report.json
    refiner/   adapter/ (LoRA weights + config + model card), threshold.json, report.json,
               checkpoint.safetensors (where a killed fine-tuning resumes)
    simulate/  shards/<fingerprint>/shard-*.parquet, simulated.parquet, report.json
    update/    embeddings.safetensors, report.json; metrics in metrics_coldllm_<split>.json
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

import pandas as pd

from ..backbones import load_backbone
from ..baselines.runner import make_context
from ..run import Run, content_vectors
from ..utils import atomic_path, resolve_device, write_json
from .filter import funnel_coverage
from .filters import build_filter
from .judges import build_judge
from .update_stage import evaluate_coldllm, update_stage

log = logging.getLogger(__name__)


def filter_stage(run: Run) -> dict[str, Any]:
    cfg, data = run.cfg, run.data
    component = build_filter(run)
    with run.stage("filter") as rec:
        device = resolve_device(cfg.baselines.device)
        backbone = load_backbone(run.layout.backbone, data)
        ctx = make_context(data, backbone, content_vectors(run), device, cfg.seed, cfg.eval.ks, cfg.eval.metric)
        # whatever another filter left is gone before this one fits: the service loads what is there
        shutil.rmtree(run.layout.text_encoder, ignore_errors=True)
        fit = component.fit(ctx)
        component.save(fit, run.layout)
        report = {"towers": cfg.filter.towers, "k": cfg.filter.k, "cold_items": len(data.cold_items),
                  "val": funnel_coverage(fit.candidates, data.parts["cold_val"]),
                  "test": funnel_coverage(fit.candidates, data.parts["cold_test"])}
        write_json(run.layout.filter_report, report)
        rec.update(report)
        rec.update(fit.record)
    return report


def finetune_stage(run: Run) -> dict[str, Any]:
    judge = build_judge(run)
    with run.stage("finetune") as rec:
        if not judge.declared.has("finetunes"):
            rec["skipped"] = f"refiner.judge is {run.cfg.refiner.judge!r}: no language model to tune"
            return {}
        report = judge.fit()
        rec.update({k: report[k] for k in ("device", "train_examples", "before", "after", "threshold")})
    return report


def simulate_stage(run: Run) -> dict[str, Any]:
    data = run.data
    judge = build_judge(run)
    with run.stage("simulate") as rec:
        candidates = pd.read_parquet(run.layout.candidates)
        simulated = judge.apply(candidates, rec)
        run.layout.simulate.mkdir(parents=True, exist_ok=True)
        with atomic_path(run.layout.simulated) as tmp:
            simulated.to_parquet(tmp)
        accepted = simulated[simulated["accepted"]]
        report = {"judge": run.cfg.refiner.judge, "pairs": len(simulated), "accepted": len(accepted),
                  "accept_rate": float(simulated["accepted"].mean()) if len(simulated) else 0.0,
                  "refined_test": funnel_coverage(accepted, data.parts["cold_test"]),
                  "refined_val": funnel_coverage(accepted, data.parts["cold_val"])}
        write_json(run.layout.simulate_report, report)
        rec.update(report)
    return report


FUNNEL_STAGES = {"filter": filter_stage, "finetune": finetune_stage, "simulate": simulate_stage,
                 "update": update_stage, "evaluate_coldllm_val": lambda run: evaluate_coldllm(run, "val")}
