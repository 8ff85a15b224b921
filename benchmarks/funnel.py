"""ColdLLM and its ablations on the published CiteULike split, beside the baselines of the same backbone.

    python benchmarks/funnel.py [--backbones lightgcn mf] [--variants coldllm-cosine coldllm-random ...]
                                 [--stages prepare train filter]   # stop early (e.g. before the LLM)
                                 [--redo-from update]              # re-measure, keeping the pairs

Needs the backbone runs of ``benchmarks/backbones.py`` (``runs/bench-citeulike-<backbone>/``), whose
trained backbone every variant reuses. Each variant is one ``coldllm run`` in its own process under
``runs/bench-citeulike-<backbone>-<variant>/``, so it resumes where it stopped and its peak memory is
its own. Every variant goes through the same update (the preset's ``update``: the content-KNN prior,
moved by the accepted pairs, selected on cold validation). The variants change one thing each and
reuse what they do not change:

    coldllm              coupled filter, the LoRA-tuned language-model judge      (the method)
    coldllm-no-refiner   the same filter, every filtered pair accepted            (reuses its filter)
    coldllm-cosine       the same filter, the free cosine judge                   (reuses its filter)
    coldllm-activity     the same filter, the free activity judge: each item keeps (reuses its filter)
                         its most active candidates
    coldllm-cosine-keep-S, coldllm-activity-keep-S
                         the two free judges keeping a smaller share S of each item's candidates
                         (refiner.keep; the preset keeps half): fewer, surer pairs
    coldllm-collab       collaborative sub-tower only, cosine judge
    coldllm-lm           language-model sub-tower only, cosine judge
    coldllm-random       K random users per cold item, cosine judge
    coldllm-retrain      no-refiner pairs, the backbone trained again (the paper's kind of update)
    onepass              the one-pass simulator: each item's text once, its top-K users of a
                         distribution over all users, all accepted (no filter, no judge)
    onepass-minilm-tuned the same, MiniLM reading the text and learning with the head (every weight)
    onepass-llm-frozen   the same, SmolLM2's mean-pooled states read once, only the head learns
    onepass-llm          the same, SmolLM2 with LoRA adapters learning with the head (FilterLLM's idea)
    onepass-llm-std      the same, SmolLM2's pooled states standardised per dimension (-last: last token)
    onepass-llm-top4     onepass-llm-std with adapters on SmolLM2's top 4 layers only (the 26 below read each
                         title once; an epoch costs a fraction)
    onepass-penalty-G    onepass whose top-K choice lowers each user by G spreads x log(1 + their
                         training interactions): lighter users picked (filter.onepass.degree_penalty)
    paper-filter         the paper's released candidates, all accepted            (reference)
    paper-refiner        the paper's candidates, its 7B refiner's Yes answers     (reference)
    coldllm-oracle-rR-fF an oracle judge that reads held-out labels: real pairs accepted with
                         probability R, others with F. A diagnostic of the update's response to
                         precision and recall, never a method and never used for selection.

Finished variants are added to ``results/citeulike/<backbone>.json`` with their funnel statistics
(how many filtered / accepted pairs are real cold interactions, how much of the cold test set the
filter covers, the judges' AUC on the candidates of cold validation items) and the time and peak
memory of every stage; ``results/citeulike/README.md`` is regenerated.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import dataclass
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from coldllm.backbones import load_backbone

from coldllm.config import load_config, to_dict
from coldllm.funnel.refiner import user_histories
from coldllm.evaluate import Evaluator, embedding_scorer
from coldllm.funnel.inputs import prompt_template
from coldllm.funnel.update_stage import content_prior, updated_embeddings
from coldllm.funnel.update import prior_candidates
from judge_stats import fit_combined_judge, judges_on_candidates, judges_on_held_out
from coldllm.layout import RunLayout
from coldllm.pipeline import Run, content_vectors
from results import record_seed, results_dir
from coldllm.utils import git_commit
from names import DEFAULT_SEED, preset_for, run_name
from render import render

ROOT = Path(__file__).resolve().parent.parent
FUNNEL = ["prepare", "train", "filter", "finetune", "simulate", "update", "evaluate_coldllm_val"]
METHOD_STAGES = ("filter", "finetune", "simulate", "update")  # the method's cost on top of the backbone
PAPER_FILE = "${COLDLLM_DATA:-../shared/data}/citeulike/paper-outputs/candidates_and_verdicts.csv"
# (r, f): r=1, f=1 is the no-refiner row, so it is not repeated
ORACLE_GRID = [(1.0, 0.0), (1.0, 0.25), (1.0, 0.5), (0.8, 0.0), (0.8, 0.5), (0.6, 0.25)]
PENALTY_GRID = [0.25, 0.5, 1.0]  # filter.onepass.degree_penalty of the onepass-penalty-G rows
KEEP_GRID = [0.02, 0.05, 0.1]  # refiner.keep of the free judges' -keep-S rows


def oracle_name(r: float, f: float) -> str:
    return f"coldllm-oracle-r{r:g}-f{f:g}"


# variant -> (overrides, {stage: variant it is reused from})
VARIANTS = {
    "coldllm": (["--refiner.judge=llm"], {}),
    "coldllm-no-refiner": (["--refiner.judge=all"], {"filter": "coldllm"}),
    "coldllm-cosine": (["--refiner.judge=cosine"], {"filter": "coldllm"}),
    "coldllm-activity": (["--refiner.judge=activity"], {"filter": "coldllm"}),
    "coldllm-collab": (["--filter.towers=collab", "--refiner.judge=cosine"], {}),
    "coldllm-lm": (["--filter.towers=lm", "--refiner.judge=cosine"], {}),
    "coldllm-random": (["--filter.towers=random", "--refiner.judge=cosine"], {}),
    # the frozen sentence vectors, whatever text reader the preset chose (MovieLens-1M's tunes MiniLM)
    "onepass": (["--filter.towers=onepass", "--refiner.judge=all", "--filter.onepass={encoder: vectors}"], {}),
    "coldllm-retrain": (["--refiner.judge=all", "--update.mode=retrain"], {"filter": "coldllm", "simulate": "coldllm-no-refiner"}),
    "paper-filter": (["--filter.towers=file", f"--filter.file={PAPER_FILE}", "--refiner.judge=all"], {}),
    "paper-refiner": (["--filter.towers=file", f"--filter.file={PAPER_FILE}", "--refiner.judge=file"],
                      {"filter": "paper-filter"}),
    # MovieLens-1M: the one-pass simulator reading the title alone (how much the year and genres give);
    # the backbone is the same (it never reads the text)
    "onepass-title": (["--filter.towers=onepass", "--refiner.judge=all", "--data.text_template='{movie_title}'",
                      "--filter.onepass={encoder: vectors}"], {}),
    # the one-pass simulator with a text encoder that learns with its head (issue: does the language
    # model earn its place?), and its controls on the same items, users and objective
    "onepass-minilm-tuned": (["--filter.towers=onepass", "--refiner.judge=all",
                              "--filter.onepass={encoder: text, text_model: minilm, tune: full}"], {}),
    "onepass-llm-frozen": (["--filter.towers=onepass", "--refiner.judge=all",
                            "--filter.onepass={encoder: text, text_model: smollm2-135m, tune: frozen}"], {}),
    "onepass-llm": (["--filter.towers=onepass", "--refiner.judge=all",
                     "--filter.onepass={encoder: text, text_model: smollm2-135m, tune: lora}"], {}),
    # the same with the LM's pooled states standardised per dimension (its states share a few huge
    # dimensions: unrelated titles at cosine ~.95), and with the last token's state instead of the mean
    "onepass-llm-std": (["--filter.towers=onepass", "--refiner.judge=all",
                         "--filter.onepass={encoder: text, text_model: smollm2-135m, tune: lora, standardize: true}"],
                        {}),
    "onepass-llm-last": (["--filter.towers=onepass", "--refiner.judge=all",
                          "--filter.onepass={encoder: text, text_model: smollm2-135m, tune: lora, standardize: true, "
                          "pooling: last}"], {}),
    "onepass-llm-top4": (["--filter.towers=onepass", "--refiner.judge=all",
                          "--filter.onepass={encoder: text, text_model: smollm2-135m, tune: lora, standardize: true, "
                          "lora_layers: 4}"], {}),
    **{f"onepass-penalty-{g:g}": (["--filter.towers=onepass", "--refiner.judge=all",
                                    f"--filter.onepass={{encoder: vectors, degree_penalty: {g:g}}}"], {})
       for g in PENALTY_GRID},
    **{f"coldllm-{judge}-keep-{s:g}": ([f"--refiner.judge={judge}", f"--refiner.keep={s:g}"], {"filter": "coldllm"})
       for judge in ("cosine", "activity") for s in KEEP_GRID},
    **{oracle_name(r, f): (["--refiner.judge=oracle", f"--refiner.oracle_r={r}", f"--refiner.oracle_f={f}"],
                           {"filter": "coldllm"}) for r, f in ORACLE_GRID},
}
# the language-model judge is not in the default list: on 2 CPU cores its fine-tuning and the
# 68k judged pairs take hours (run it with --variants coldllm where a GPU is available)
# nor are the text-encoder one-pass variants (SmolLM2 tuned: ~25 minutes per seed on 2 cores; run them by name)
TEXT_ENCODER_VARIANTS = ("onepass-minilm-tuned", "onepass-llm-frozen", "onepass-llm", "onepass-llm-std",
                         "onepass-llm-last", "onepass-llm-top4")
DEFAULT_VARIANTS = [v for v in VARIANTS if v not in ("coldllm", "onepass-title", *TEXT_ENCODER_VARIANTS)
                    and not v.startswith(("onepass-penalty-", "coldllm-cosine-keep-", "coldllm-activity-keep-"))]


@dataclass(frozen=True)
class Scope:
    """Which backbone run the variants build on: the preset's dataset, the backbone and the model seed."""

    preset: Path
    dataset: str
    seed: int = DEFAULT_SEED

    def base(self, backbone: str) -> str:
        return run_name(self.dataset, backbone, self.seed)

    @property
    def overrides(self) -> list[str]:
        return [f"--seed={self.seed}"]


def overrides_for(scope: Scope, backbone: str, variant: str, stages: list[str], extra: list[str],
                  borrow: dict[str, str] | None = None) -> list[str]:
    changes, shared = VARIANTS[variant]
    base_name = scope.base
    reuse = {"train": base_name(backbone), **{s: f"{base_name(backbone)}-{v}" for s, v in shared.items()}}
    # --borrow stage=backbone: take that stage from the same variant on another backbone
    reuse.update({s: f"{base_name(b)}-{variant}" for s, b in (borrow or {}).items()})
    # the variants are changes to the coupled filter (the preset itself uses the one-pass simulator,
    # the best of them on cold validation)
    return [f"--name={base_name(backbone)}-{variant}", f"--backbone.model={backbone}",
            f"--stages=[{', '.join(stages)}]", "--reuse={" + ", ".join(f"{k}: {v}" for k, v in reuse.items()) + "}",
            "--filter.towers=coupled", *changes, *scope.overrides, *extra]


def run_variant(scope: Scope, backbone: str, variant: str, stages: list[str], extra: list[str],
                borrow: dict[str, str] | None = None, redo_from: str | None = None) -> None:
    redo = ["--redo-from", redo_from] if redo_from in stages and not ran_here(scope, backbone, variant, redo_from,
                                                                             extra, borrow) else []
    cmd = [sys.executable, "-m", "coldllm.cli", "run", "--config", str(scope.preset), *redo,
           *overrides_for(scope, backbone, variant, stages, extra, borrow)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def ran_here(scope: Scope, backbone: str, variant: str, stage: str, extra: list[str],
             borrow: dict[str, str] | None) -> bool:
    """Whether the variant's ``stage`` already ran at the current commit: a redo interrupted part-way
    then resumes with the variants it has not reached, instead of starting over."""
    cfg = load_config(scope.preset, overrides_for(scope, backbone, variant, FUNNEL, extra, borrow))
    manifest = RunLayout(ROOT / cfg.runs_dir / cfg.name).manifest  # the runs go from ROOT
    if not manifest.exists():
        return False
    record = json.loads(manifest.read_text())["stages"].get(stage, {})
    return record.get("status") == "done" and record.get("commit") == git_commit(ROOT)


def funnel_statistics(run: Run) -> dict:
    """Filter, refiner and judge figures of a finished variant (validation and test cold items)."""
    layout, data = run.layout, run.data
    stats: dict = {"filter": json.loads(layout.filter_report.read_text()),
                   "simulate": json.loads(layout.simulate_report.read_text())}
    refiner_report = layout.refiner_report
    vectors = content_vectors(run)
    train = data.matrix("train")
    degree, popularity = np.diff(train.indptr), np.asarray(train.sum(axis=0)).ravel()
    combined = None
    if run.cfg.refiner.judge == "llm" and refiner_report.exists():
        report = json.loads(refiner_report.read_text())
        stats["refiner"] = {k: report[k] for k in ("train_examples", "eval_examples", "before", "after", "threshold")}
        held_out = {name: pd.read_parquet(layout.held_out(name)) for name in report["eval_examples"]}
        stats["held_out_judges"] = {name: judges_on_held_out(frame, vectors, popularity=popularity)
                                    for name, frame in held_out.items()}
        # P(Yes) and the cosine together, fitted on held-out warm pairs only
        combined = fit_combined_judge(pd.concat(held_out.values(), ignore_index=True), vectors)
    # the judge's P(Yes) (the cosine for the cosine judge) beside the free judges, on the pairs it judged
    histories = user_histories(train, prompt_template(run.cfg).max_history, run.cfg.seed)
    simulated = pd.read_parquet(layout.simulated)
    candidates = pd.read_parquet(layout.candidates)
    stats["candidate_judges"] = {
        split: judges_on_candidates(simulated, candidates, data.parts[f"cold_{split}"], histories, vectors, combined,
                                    degree)
        for split in ("val", "test")
    }
    return stats


def prior_test(run: Run) -> dict:
    """Test figures of the prior the update started from, alone: what the simulated pairs add is the
    row's figures minus these."""
    user_emb, item_emb = load_backbone(run.dir / "backbone", run.data).embeddings()
    name = run.manifest["stages"]["update"].get("prior", "knn")
    knn = content_prior(run, user_emb, item_emb)
    path = run.layout.filter_prior
    mapped = load_file(str(path))["cold"] if path.exists() else None
    table = item_emb.clone()
    table[torch.as_tensor(run.data.cold_items)] = prior_candidates(knn, mapped)[name]
    return Evaluator(run.data, "test", run.cfg.eval.ks).evaluate(embedding_scorer(user_emb, table))


def language_model_calls(run: Run) -> dict:
    """Language-model passes the simulation made for the cold items: one over each item's text
    (the filter's language-model tower, or the one-pass simulator), plus one per judged pair when
    the judge is the language model."""
    text = 0 if run.cfg.filter.towers in ("collab", "random", "file") else len(run.data.cold_items)
    judged = 0
    if run.cfg.refiner.judge == "llm":
        judged = len(pd.read_parquet(run.layout.simulated, columns=["user"]))
    return {"llm_calls": text + judged, "llm_calls_detail": {"item_text": text, "judged_pairs": judged}}


def record_variant(scope: Scope, backbone: str, variant: str, extra: list[str],
                   borrow: dict[str, str] | None = None) -> None:
    cfg = load_config(scope.preset, overrides_for(scope, backbone, variant, FUNNEL, extra, borrow))
    run = Run(cfg)
    if not (run.done("update") and run.done("evaluate_coldllm_val")):
        print(f"{cfg.name}: not finished, not recorded", flush=True)
        return
    stages = run.manifest["stages"]
    metrics = stages["evaluate_coldllm_test"]["metrics"]
    own = [s for s in METHOD_STAGES if "reused_from" not in stages[s]]
    record_seed(
        results_dir(cfg.data.name) / f"{backbone}.json", seed=cfg.seed, dataset=cfg.data.name, split=cfg.data.split,
        backbone=backbone, method=variant, metrics=metrics, config=to_dict(cfg),
        extra={
            "seconds": round(sum(stages[s]["seconds"] for s in METHOD_STAGES), 1),
            "peak_memory_mb": max(stages[s]["peak_memory_mb"] for s in METHOD_STAGES),
            "stages": {s: {k: stages[s].get(k) for k in ("seconds", "peak_memory_mb", "commit", "reused_from", "device")}
                       for s in METHOD_STAGES},
            "own_stages": own,
            "val": stages["evaluate_coldllm_val"]["metrics"],
            # where the update started (chosen on validation) and how far the simulated pairs moved it
            "update": {k: stages["update"].get(k) for k in ("prior", "prior_search", "k", "k_search", "best_step",
                                                            "best_val") if k in stages["update"]},
            "prior_test": prior_test(run),
            "funnel": funnel_statistics(run),
            **language_model_calls(run),
            "paper_protocol": Evaluator(run.data, "test", cfg.eval.ks, reference=True).evaluate(
                embedding_scorer(*updated_embeddings(run))),
        },
        commit=stages["update"].get("commit"),
    )
    print(f"{backbone} {variant} seed {cfg.seed}: test cold {metrics['cold']}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["lightgcn", "mf"])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--stages", nargs="+", default=FUNNEL, help="run only up to these stages")
    parser.add_argument("--preset", type=Path, default=ROOT / "configs" / "citeulike.yaml")
    parser.add_argument("--no-record", action="store_true", help="run the stages, write no results")
    parser.add_argument("--borrow", nargs="*", default=[], metavar="STAGE=BACKBONE",
                        help="take a stage from the same variant on another backbone (recorded as reused)")
    parser.add_argument("--redo-from", choices=FUNNEL, help="run this stage of every variant again, and the later "
                        "ones (e.g. update: re-measure on the kept simulated pairs under the current code)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[DEFAULT_SEED],
                        help="model seeds, each on its own backbone run (benchmarks/backbones.py --seeds); each "
                             "row keeps every seed's figures, their mean and standard deviation")
    args, extra = parser.parse_known_args()
    borrow = dict(item.split("=", 1) for item in args.borrow)
    dataset = load_config(args.preset, []).data.name
    for backbone in args.backbones:
        for seed in args.seeds:
            scope = Scope(preset_for(backbone, args.preset), dataset, seed)
            # the method's filter is what most variants reuse: make it even when the method itself (its
            # language-model judge) is not among the variants run
            if "coldllm" not in args.variants and any("coldllm" in VARIANTS[v][1].values() for v in args.variants):
                run_variant(scope, backbone, "coldllm", ["prepare", "train", "filter"], extra, borrow)
            for variant in args.variants:  # 'coldllm' first: the others reuse its stages
                run_variant(scope, backbone, variant, args.stages, extra, borrow, args.redo_from)
                if not args.no_record:
                    record_variant(scope, backbone, variant, extra, borrow)
    if not args.no_record:
        print(render(dataset))


if __name__ == "__main__":
    main()
