"""Stages of a run, each reading and writing artifacts under ``runs/<name>/``.

``manifest.json`` records the resolved config, seed, commit, package versions and, per stage, its
wall time, peak memory and outputs. A stage whose outputs exist is skipped unless forced, so an
interrupted ``coldllm run`` continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .backbones import build_backbone, load_backbone, train_backbone
from .content import encode_texts, encoder_key
from .config import ConfigError, RunConfig, to_dict
from .data import ColdStartData, load_dataset
from .data.dataset import cache_key
from .evaluate import Evaluator, embedding_scorer, format_results
from .utils import git_commit, now_iso, package_versions, peak_memory_mb, resolve_device, write_json

log = logging.getLogger(__name__)


# The config sections each stage's artifacts depend on (a change elsewhere leaves them valid).
STAGE_INPUTS = {
    "prepare": ("data",),
    "train": ("data", "backbone", "eval", "seed"),
    "evaluate": ("data", "backbone", "eval", "seed"),
    "content": ("data", "content"),
    "baselines": ("data", "backbone", "eval", "seed", "content", "baselines"),
    "filter": ("data", "backbone", "eval", "seed", "content", "filter"),
    "finetune": ("data", "backbone", "eval", "seed", "content", "filter", "refiner"),
    "simulate": ("data", "backbone", "eval", "seed", "content", "filter", "refiner"),
    "update": ("data", "backbone", "eval", "seed", "content", "filter", "refiner", "update"),
    "evaluate_coldllm": ("data", "backbone", "eval", "seed", "content", "filter", "refiner", "update"),
}


# What each stage leaves behind; a finished stage whose artifact is missing or unreadable is redone.
STAGE_ARTIFACTS = {
    "train": ("backbone/backbone.json", "backbone/best.safetensors"),
    "filter": ("filter/candidates.parquet", "filter/warm_candidates.parquet", "filter/report.json"),
    "finetune": ("refiner/report.json", "refiner/adapter/adapter_config.json"),
    "simulate": ("simulate/simulated.parquet", "simulate/report.json"),
    "update": ("update/embeddings.safetensors",),
}

# Keys that change how a stage runs but not what it produces, so changing them redoes nothing:
# where it runs, how it batches, and budgets (raising or lowering epochs/patience resumes a training
# from its last epoch, or stops it at once when the new budget is already spent).
NOT_INPUTS = {"*": ("device",), "backbone": ("epochs", "patience"), "refiner": ("batch_size", "shard_users", "verdicts_from")}

# The folder each stage writes, for the stages a run may take from another run (``reuse``).
STAGE_FOLDERS = {"train": "backbone", "filter": "filter", "finetune": "refiner", "simulate": "simulate"}


def _inputs(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The config sections ``stage`` depends on (the longest matching stage name wins)."""
    key = max((k for k in STAGE_INPUTS if stage.startswith(k)), key=len, default=None)
    keys = STAGE_INPUTS[key] if key else tuple(config)
    out = {k: config.get(k) for k in keys}
    for section, value in out.items():
        if isinstance(value, dict):
            skip = NOT_INPUTS["*"] + NOT_INPUTS.get(section, ())
            out[section] = {k: v for k, v in value.items() if k not in skip}
    return out


def _with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A recorded config completed with the defaults of settings added since it was written.

    A new setting whose default keeps the old behaviour must not make finished stages stale.
    """
    def fill(default: Any, recorded: Any) -> Any:
        if isinstance(default, dict) and isinstance(recorded, dict):
            return {**default, **{k: fill(default.get(k), v) for k, v in recorded.items()}} if default else recorded
        return recorded

    return fill(to_dict(RunConfig()), config)


class Run:
    """One run folder and its manifest."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.dir = cfg.run_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.dir / "manifest.json"
        old = json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else {}
        config = to_dict(cfg)
        stages = {}
        # A stage made under other settings than it depends on is stale: forget it, redo it.
        for stage, record in old.get("stages", {}).items():
            if _inputs(_with_defaults(old.get("config", {})), stage) == _inputs(config, stage):
                stages[stage] = record
            else:
                log.warning("%s: settings of stage %r changed since it ran; it will be redone", self.dir, stage)
        self.stale = set(old.get("stages", {})) - set(stages)
        self.manifest: dict[str, Any] = {
            "name": cfg.name,
            "created": old.get("created", now_iso()),
            "config": config,
            "seed": cfg.seed,
            "commit": git_commit(),
            "versions": package_versions(),
            "stages": stages,
        }
        self._data: ColdStartData | None = None

    @property
    def data(self) -> ColdStartData:
        if self._data is None:
            self._data = load_dataset(self.cfg.data)
        return self._data

    def done(self, stage: str) -> bool:
        return self.manifest["stages"].get(stage, {}).get("status") == "done"

    def broken_artifact(self, stage: str) -> str | None:
        """The first artifact of a finished ``stage`` that is missing or unreadable, else None."""
        record = self.manifest["stages"].get(stage, {})
        if record.get("skipped"):
            return None
        for name in STAGE_ARTIFACTS.get(stage, ()):
            path = self.dir / name
            try:
                if path.suffix == ".parquet":
                    import pyarrow.parquet as pq

                    pq.read_metadata(path)
                elif path.suffix == ".safetensors":
                    from safetensors import safe_open

                    with safe_open(str(path), "pt") as fh:
                        fh.keys()
                elif path.suffix == ".json":
                    json.loads(path.read_text())
                elif not path.exists():
                    raise FileNotFoundError(path)
            except Exception as err:  # noqa: BLE001  (any unreadable file means: redo the stage)
                return f"{path} ({type(err).__name__})"
        return None

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Time a stage and record it in the manifest; a failure is recorded, then re-raised."""
        record: dict[str, Any] = {"status": "running", "started": now_iso(), "commit": self.manifest["commit"]}
        self.manifest["stages"][name] = record
        self.save()
        start = time.perf_counter()
        try:
            yield record
        except BaseException as err:
            record.update(status="failed", error=f"{type(err).__name__}: {err}")
            raise
        else:
            record["status"] = "done"
        finally:
            record["seconds"] = round(time.perf_counter() - start, 2)
            record["peak_memory_mb"] = round(peak_memory_mb(), 1)
            self.save()

    def save(self) -> None:
        write_json(self.manifest_path, self.manifest)


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
        result = train_backbone(model, data, run.cfg, run.dir / "backbone",
                                resume=resume and "train" not in run.stale)
        rec.update(best_epoch=result.best_epoch, best_val=result.best_score, epochs=result.epoch,
                   train_seconds=round(result.seconds, 2))


def evaluate(run: Run, split: str = "test") -> dict[str, dict[str, float]]:
    with run.stage(f"evaluate_{split}") as rec:
        device = resolve_device(run.cfg.backbone.device)
        model = load_backbone(run.dir / "backbone", run.data).to(device)
        user_emb, item_emb = model.embeddings()
        evaluator = Evaluator(run.data, split, run.cfg.eval.ks, run.cfg.eval.batch_size)
        results = evaluator.evaluate(embedding_scorer(user_emb, item_emb), device)
        rec["metrics"] = results
        write_json(run.dir / f"metrics_{split}.json", results)
        log.info("%s results:\n%s", split, format_results(results))
    return results


def content_vectors(run: Run) -> np.ndarray:
    """The item text vectors (cached by model and text hash, so this is cheap after the first call)."""
    return encode_texts(list(run.data.item_text), run.cfg.content)


def content(run: Run) -> None:
    with run.stage("content") as rec:
        vectors = content_vectors(run)
        rec.update(encoder=encoder_key(run.cfg.content), items=len(vectors), dim=int(vectors.shape[1]))


def baselines(run: Run, methods: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Fit and evaluate each cold-start method on the run's backbone; one JSON per method.

    Methods already measured in this run folder are read back, not refitted.
    """
    from .baselines.runner import fit_and_evaluate, make_context

    folder = run.dir / "baselines"
    if "baselines" in run.stale:  # fitted under other settings: none of them may be reused
        shutil.rmtree(folder, ignore_errors=True)
    reports: dict[str, dict[str, Any]] = {}
    with run.stage("baselines") as rec:
        device = resolve_device(run.cfg.baselines.device)
        ctx = None
        for name in methods or run.cfg.baselines.methods:
            path = folder / f"{name}.json"
            if path.exists():
                reports[name] = json.loads(path.read_text())
                continue
            if ctx is None:
                backbone = load_backbone(run.dir / "backbone", run.data)
                ctx = make_context(run.data, backbone, content_vectors(run), device, run.cfg.seed,
                                   run.cfg.eval.ks, run.cfg.eval.metric)
            _, report = fit_and_evaluate(name, run.cfg.baselines.params.get(name), ctx, ks=run.cfg.eval.ks)
            write_json(path, report)
            reports[name] = report
        rec["methods"] = {name: r["test"]["cold"] for name, r in reports.items()}
    return reports


STAGES: dict[str, Callable[[Run], Any]] = {
    "prepare": prepare, "train": train, "evaluate_test": evaluate, "content": content, "baselines": baselines,
}


def all_stages() -> dict[str, Callable[[Run], Any]]:
    from .funnel.stages import FUNNEL_STAGES  # the funnel builds on this module

    return {**STAGES, **FUNNEL_STAGES}


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
    manifest_path = src / "manifest.json"
    if not manifest_path.exists():
        raise ConfigError(f"reuse.{stage}: {manifest_path} not found")
    manifest = json.loads(manifest_path.read_text())
    record = manifest["stages"].get(stage, {})
    if record.get("status") != "done":
        raise ConfigError(f"reuse.{stage}: run {source!r} has no finished {stage!r} stage")
    theirs, ours = _inputs(manifest["config"], stage), _inputs(to_dict(run.cfg), stage)
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


def run_all(run: Run, force: bool = False) -> dict[str, Any]:
    """Run the configured stages in order, skipping those already done in this run folder."""
    stages = all_stages()
    unknown = [s for s in [*run.cfg.stages, *run.cfg.reuse] if s not in stages]
    if unknown:
        raise ConfigError(f"stages: unknown stage(s) {unknown}; known: {list(stages)}")
    upstream_changed = False  # a stage that ran makes every later stage stale: they read its output
    for name in run.cfg.stages:
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
        upstream_changed = True
    return run.manifest
