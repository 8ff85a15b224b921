"""Stages of a run, each reading and writing artifacts under ``runs/<name>/``.

A stage whose outputs exist is skipped unless forced, so an interrupted ``coldllm run`` continues
where it stopped. The run folder and its manifest are ``run.Run``; the stages before the funnel
live here, the funnel's in ``funnel.stages``, and ``STAGES`` lists them all in order.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

from .backbones import build_backbone, load_backbone, train_backbone
from .config import ConfigError, to_dict
from .content import encoder_key
from .data.dataset import cache_key
from .evaluate import Evaluator, embedding_scorer, format_results
from .funnel.stages import FUNNEL_STAGES
from .layout import RunLayout
# re-exported: the run folder is what most callers of the pipeline also need
from .run import Run, content_vectors, stage_inputs, with_defaults  # noqa: F401  (Run, content_vectors: for callers)
from .utils import release_memory, resolve_device, write_json

log = logging.getLogger(__name__)


# The folder each stage writes, for the stages a run may take from another run (``reuse``).
STAGE_FOLDERS = {"train": "backbone", "filter": "filter", "finetune": "refiner", "simulate": "simulate"}


def prepare(run: Run) -> None:
    with run.stage("prepare") as rec:
        summary = run.data.summary()
        rec["dataset"] = summary
        rec["cache"] = str(Path(run.cfg.data.cache_dir) / run.cfg.data.name / cache_key(run.cfg.data))
        log.info("dataset %s: %s", run.cfg.data.name, summary)


def train(run: Run, resume: bool = True) -> None:
    with run.stage("train") as rec:
        data = run.data
        model = build_backbone(run.cfg.backbone, data.matrix("train"), seed=run.cfg.seed)
        result = train_backbone(model, data, run.cfg, run.layout.backbone,
                                resume=resume and "train" not in run.stale, fingerprint=run.fingerprint("train"))
        rec.update(best_epoch=result.best_epoch, best_val=result.best_score, epochs=result.epoch,
                   train_seconds=round(result.seconds, 2))


def evaluate(run: Run, split: str = "test") -> dict[str, dict[str, float]]:
    with run.stage(f"evaluate_{split}") as rec:
        device = resolve_device(run.cfg.backbone.device)
        model = load_backbone(run.layout.backbone, run.data).to(device)
        user_emb, item_emb = model.embeddings()
        evaluator = Evaluator(run.data, split, run.cfg.eval.ks, run.cfg.eval.batch_size)
        results = evaluator.evaluate(embedding_scorer(user_emb, item_emb), device)
        rec["metrics"] = results
        write_json(run.layout.metrics(split), results)
        log.info("%s results:\n%s", split, format_results(results))
    return results


def content(run: Run) -> None:
    with run.stage("content") as rec:
        vectors = content_vectors(run)
        rec.update(encoder=encoder_key(run.cfg.content), items=len(vectors), dim=int(vectors.shape[1]))


def baselines(run: Run, methods: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Fit and evaluate each cold-start method on the run's backbone; one JSON per method.

    Methods already measured in this run folder are read back, not refitted.
    """
    from .baselines.runner import fit_and_evaluate, make_context

    folder = run.layout.baselines
    if "baselines" in run.stale:  # fitted under other settings: none of them may be reused
        shutil.rmtree(folder, ignore_errors=True)
    reports: dict[str, dict[str, Any]] = {}
    with run.stage("baselines") as rec:
        device = resolve_device(run.cfg.baselines.device)
        ctx = None
        for name in methods or run.cfg.baselines.methods:
            path = run.layout.baseline(name)
            if path.exists():
                reports[name] = json.loads(path.read_text())
                continue
            if ctx is None:
                backbone = load_backbone(run.layout.backbone, run.data)
                ctx = make_context(run.data, backbone, content_vectors(run), device, run.cfg.seed,
                                   run.cfg.eval.ks, run.cfg.eval.metric)
            _, report = fit_and_evaluate(name, run.cfg.baselines.params.get(name), ctx, ks=run.cfg.eval.ks)
            write_json(path, report)
            reports[name] = report
        rec["methods"] = {name: r["test"]["cold"] for name, r in reports.items()}
    return reports


# Every stage a run may list, in pipeline order: the ones above, then the funnel's.
STAGES: dict[str, Callable[[Run], Any]] = {
    "prepare": prepare, "train": train, "evaluate_test": evaluate, "content": content, "baselines": baselines,
    **FUNNEL_STAGES,
}


def all_stages() -> dict[str, Callable[[Run], Any]]:
    return dict(STAGES)


def reuse_stage(run: Run, stage: str, source: str) -> dict[str, Any]:
    """Take ``stage``'s artifacts from the finished run ``source`` (a link, not a copy).

    Ablations share what they do not vary: every variant of a benchmark reuses one trained
    backbone, and the filter ablations reuse one fine-tuned judge. The record names the source and
    the config sections in which the two runs differ; a backbone is only ever taken from a run with
    the same data, backbone, evaluation and seed settings.
    """
    if stage not in STAGE_FOLDERS:
        raise ConfigError(f"reuse.{stage}: only {sorted(STAGE_FOLDERS)} can be reused")
    src = Path(run.cfg.runs_dir) / source
    manifest_path = RunLayout(src).manifest
    if not manifest_path.exists():
        raise ConfigError(f"reuse.{stage}: {manifest_path} not found")
    manifest = json.loads(manifest_path.read_text())
    record = manifest["stages"].get(stage, {})
    if record.get("status") != "done":
        raise ConfigError(f"reuse.{stage}: run {source!r} has no finished {stage!r} stage")
    # settings added since that run was made count at their defaults, as for staleness
    theirs, ours = (stage_inputs(with_defaults(c), stage) for c in (manifest["config"], to_dict(run.cfg)))
    differs = sorted(k for k in ours if ours[k] != theirs.get(k))
    if stage == "train" and differs:
        raise ConfigError(f"reuse.train: run {source!r} trained its backbone under other {differs} settings")
    target = run.dir / STAGE_FOLDERS[stage]
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target)
    target.symlink_to(Path("..") / source / STAGE_FOLDERS[stage], target_is_directory=True)
    run.manifest["stages"][stage] = {**record, "reused_from": source, "differs": differs}
    run.save()
    log.info("stage %s: reused from run %s (settings that differ: %s)", stage, source, differs or "none")
    return record


def run_all(run: Run, force: bool = False, redo_from: str | None = None) -> dict[str, Any]:
    """Run the configured stages in order, skipping those already done in this run folder.

    ``redo_from``: that stage and every later one run again even when done (their inputs are kept:
    e.g. the update re-measured on the same simulated pairs under newer code).
    """
    stages = all_stages()
    unknown = [s for s in [*run.cfg.stages, *run.cfg.reuse] if s not in stages]
    if unknown:
        raise ConfigError(f"stages: unknown stage(s) {unknown}; known: {list(stages)}")
    if redo_from is not None and redo_from not in run.cfg.stages:
        raise ConfigError(f"redo_from: {redo_from!r} is not among this run's stages {run.cfg.stages}")
    upstream_changed = False  # a stage that ran makes every later stage stale: they read its output
    for name in run.cfg.stages:
        upstream_changed = upstream_changed or name == redo_from
        broken = run.broken_artifact(name) if run.done(name) else None
        if broken:
            log.warning("stage %s: its artifact %s is missing or unreadable; redoing the stage", name, broken)
        if run.done(name) and not (force or broken or upstream_changed):
            log.info("stage %s: done, skipped", name)
            continue
        if name in run.cfg.reuse:
            reuse_stage(run, name, run.cfg.reuse[name])
        else:
            stages[name](run)
        release_memory()  # a stage's peak (the fine-tune's) should not stay resident through the next ones
        upstream_changed = True
    return run.manifest
