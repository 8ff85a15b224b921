"""One run folder and its manifest: which stages are done, under which settings, and whether their
artifacts are still there.

``manifest.json`` records the resolved config, seed, commit, package versions and, per stage, its
wall time, peak memory and outputs. Every stage module builds on this one and none of them on
another's module, so the stages can be listed in one table (``pipeline.STAGES``) without an import
cycle.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .components import FUNNEL_ORDER, funnel_inputs
from .config import RunConfig, default_tree, to_dict
from .content import encode_texts
from .data import ColdStartData, load_dataset
from .layout import RunLayout, stage_artifacts
from .utils import git_commit, now_iso, package_versions, peak_memory_mb, record_summary, write_json

log = logging.getLogger(__name__)


# The config sections each stage before the funnel depends on (a change elsewhere leaves them valid);
# the funnel's stages derive theirs from what their components declare (``components.funnel_inputs``).
STAGE_INPUTS = {
    "prepare": ("data",),
    "train": ("data", "backbone", "eval", "seed"),
    "evaluate": ("data", "backbone", "eval", "seed"),
    "content": ("data", "content"),
    "baselines": ("data", "backbone", "eval", "seed", "content", "baselines"),
}
# Fields of those sections a stage does not read: the backbone never sees the item text, so a run that
# only writes the text otherwise (title only, say) trains, or reuses, the same backbone.
STAGE_IGNORES = {"train": ("data.text_fields", "data.text_template"),
                 "evaluate": ("data.text_fields", "data.text_template")}


# Keys that change how a stage runs but not what it produces, so changing them redoes nothing:
# where it runs, how it batches, and budgets (raising or lowering epochs/patience resumes a training
# from its last epoch, or stops it at once when the new budget is already spent).
NOT_INPUTS = {"*": ("device",), "backbone": ("epochs", "patience")}

def stage_inputs(config: dict[str, Any], stage: str) -> dict[str, Any]:
    """The config sections (or single ``section.key`` fields, less any ``-section.key.field`` its
    component declares unread) ``stage`` depends on (the longest matching stage name wins)."""
    key = max((k for k in (*STAGE_INPUTS, *FUNNEL_ORDER) if stage.startswith(k)), key=len, default=None)
    if key in FUNNEL_ORDER:
        try:
            keys = funnel_inputs(config, key)
        except KeyError as err:  # a component this code no longer has: nothing it made can be kept
            return {"unknown component": str(err)}
    else:
        keys = STAGE_INPUTS[key] if key else tuple(config)
    # "-section.key.field": a field of a mapping the component does not read under this config
    excluded = {name[1:] for name in keys if name.startswith("-")}
    keys = [name for name in keys if not name.startswith("-")]
    out = {}
    for name in keys:
        section, _, field = name.partition(".")
        out[name] = (config.get(section) or {}).get(field) if field else config.get(name)
    ignored = (*STAGE_IGNORES.get(key, ()), *excluded)
    for section, value in out.items():
        if isinstance(value, dict):
            skip = NOT_INPUTS["*"] + NOT_INPUTS.get(section, ())
            out[section] = {k: v for k, v in value.items() if k not in skip and f"{section}.{k}" not in ignored}
    return out


# Settings added with a default that changed what a stage makes, and the value that stands for the
# behaviour before them: a stage recorded without the setting ran under that value, so it is stale
# under the new default.
ADDED_WITH_NEW_BEHAVIOUR = {("update", "val_candidates"): "cold", ("update", "min_gain_se"): 0.0,
                            ("refiner", "center"): False}


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A recorded config completed with the defaults of settings added since it was written.

    A new setting whose default keeps the old behaviour must not make finished stages stale; one
    whose default changed it (``ADDED_WITH_NEW_BEHAVIOUR``) is filled with its old behaviour's value.
    """
    config = copy.deepcopy(config)
    for (section, key), before in ADDED_WITH_NEW_BEHAVIOUR.items():
        if isinstance(config.get(section), dict) and key not in config[section]:
            config[section][key] = before

    def fill(default: Any, recorded: Any) -> Any:
        if isinstance(default, dict) and isinstance(recorded, dict):
            return {**default, **{k: fill(default.get(k), v) for k, v in recorded.items()}} if default else recorded
        return recorded

    return fill(default_tree(), config)


class Run:
    """One run folder and its manifest."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.dir = cfg.run_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.layout = RunLayout(self.dir)
        self.manifest_path = self.layout.manifest
        old = json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else {}
        config = to_dict(cfg)
        stages = {}
        # A stage made under other settings than it depends on is stale: forget it, redo it.
        for stage, record in old.get("stages", {}).items():
            if stage_inputs(with_defaults(old.get("config", {})), stage) == stage_inputs(with_defaults(config), stage):
                stages[stage] = record
            else:
                log.warning("%s: settings of stage %r changed since it ran; it will be redone", self.dir, stage)
        self.stale = set(old.get("stages", {})) - set(stages)
        self.manifest: dict[str, Any] = {
            "name": cfg.name,
            "created": old.get("created", now_iso()),
            # the folder the run's relative paths (data, caches) are relative to: a run folder copied
            # elsewhere still finds its data through it
            "origin": str(Path.cwd().resolve()),
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

    def fingerprint(self, stage: str) -> str:
        """The identity of the settings ``stage`` depends on, for the checkpoints it resumes from.

        The manifest forgets a change of settings as soon as the stage starts again, so a
        checkpoint carries this itself: one written under other settings is never resumed, however
        many times the stage was killed in between.
        """
        inputs = json.dumps(stage_inputs(self.manifest["config"], stage), sort_keys=True, default=str)
        return hashlib.sha256(inputs.encode()).hexdigest()[:16]

    def done(self, stage: str) -> bool:
        return self.manifest["stages"].get(stage, {}).get("status") == "done"

    def broken_artifact(self, stage: str) -> str | None:
        """The first artifact of a finished ``stage`` that is missing or unreadable, else None."""
        record = self.manifest["stages"].get(stage, {})
        if record.get("skipped"):
            return None
        for path in stage_artifacts(self.layout).get(stage, ()):
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
        """Time a stage and record it in the manifest; a failure is recorded, then re-raised. A stage
        that resumed work begun in an earlier session sets ``earlier_seconds`` in its record: its
        ``seconds`` are then the whole cost, this session's and those."""
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
            record["seconds"] = round(time.perf_counter() - start + record.get("earlier_seconds", 0.0), 2)
            record["peak_memory_mb"] = round(peak_memory_mb(), 1)
            self.save()
            if record["status"] == "done":  # what the stage did, one line on the terminal and in log.txt
                log.info("stage %s done in %.1f s, peak %.0f MB: %s", name, record["seconds"],
                         record["peak_memory_mb"], record_summary(record))

    def save(self) -> None:
        write_json(self.manifest_path, self.manifest)



def content_vectors(run: Run) -> np.ndarray:
    """The item text vectors (cached by model and text hash, so this is cheap after the first call)."""
    return encode_texts(list(run.data.item_text), run.cfg.content)
