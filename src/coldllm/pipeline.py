"""Stages of a run, each reading and writing artifacts under ``runs/<name>/``.

``manifest.json`` records the resolved config, seed, commit, package versions and, per stage, its
wall time, peak memory and outputs. A stage whose outputs exist is skipped unless forced, so an
interrupted ``coldllm run`` continues where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from .backbones import build_backbone, load_backbone, train_backbone
from .config import RunConfig, to_dict
from .data import ColdStartData, load_dataset
from .data.dataset import cache_key
from .evaluate import Evaluator, embedding_scorer, format_results
from .utils import git_commit, now_iso, package_versions, peak_memory_mb, resolve_device, write_json

log = logging.getLogger(__name__)


class Run:
    """One run folder and its manifest."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.dir = cfg.run_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.dir / "manifest.json"
        old = json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else {}
        # Artifacts made under another config are stale: forget them rather than mix two settings.
        self.config_changed = bool(old) and old.get("config") != to_dict(cfg)
        if self.config_changed:
            log.warning("%s: config differs from the one its stages ran with; redoing them", self.dir)
            old = {}
        self.manifest: dict[str, Any] = {
            "name": cfg.name,
            "created": old.get("created", now_iso()),
            "config": to_dict(cfg),
            "seed": cfg.seed,
            "commit": git_commit(),
            "versions": package_versions(),
            "stages": old.get("stages", {}),
        }
        self._data: ColdStartData | None = None

    @property
    def data(self) -> ColdStartData:
        if self._data is None:
            self._data = load_dataset(self.cfg.data)
        return self._data

    def done(self, stage: str) -> bool:
        return self.manifest["stages"].get(stage, {}).get("status") == "done"

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Time a stage and record it in the manifest; a failure is recorded, then re-raised."""
        record: dict[str, Any] = {"status": "running", "started": now_iso()}
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
                                resume=resume and not run.config_changed)
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


STAGES: dict[str, Callable[[Run], Any]] = {"prepare": prepare, "train": train, "evaluate_test": evaluate}


def run_all(run: Run, force: bool = False) -> dict[str, Any]:
    """Run every stage in order, skipping those already done in this run folder."""
    for name, fn in STAGES.items():
        if run.done(name) and not force:
            log.info("stage %s: done, skipped", name)
            continue
        fn(run)
    return run.manifest
