"""Reading a finished run folder: its resolved config, and what its stages left behind."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..config import ConfigError, ContentConfig, RunConfig, _apply

# what the service reads from the run; each is checked at start so a half-finished run is named
NEEDED = {"update": "update/embeddings.safetensors", "simulate": "simulate/simulated.parquet",
          "backbone": "backbone/backbone.json"}


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no manifest.json; give the folder of a finished `coldllm run`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: unreadable ({err})") from None


def run_config(run_dir: Path, manifest: dict[str, Any]) -> RunConfig:
    """The run's resolved config, with its relative paths made absolute.

    Relative paths in a run's config (data, caches) are relative to the folder the run was started
    from: the one that holds ``runs_dir``. The service may be started from anywhere.
    """
    cfg = RunConfig()
    _apply(cfg, manifest.get("config", {}))
    run_dir = Path(run_dir).absolute()
    root = Path.cwd()
    if not Path(cfg.runs_dir).is_absolute():
        root = run_dir.parent
        for _ in Path(cfg.runs_dir).parts:
            root = root.parent
    cfg.runs_dir, cfg.name = str(run_dir.parent), run_dir.name

    def absolute(path: str) -> str:
        return path if not path or Path(path).is_absolute() else str(root / path)

    cfg.data.path, cfg.data.cache_dir = absolute(cfg.data.path), absolute(cfg.data.cache_dir)
    cfg.content.cache_dir, cfg.filter.file = absolute(cfg.content.cache_dir), absolute(cfg.filter.file)
    # a model may be a registered name (smollm2-135m) or a local folder; only folders move
    for section, key in (("refiner", "model"), ("filter", "text_model"), ("content", "model")):
        value = getattr(getattr(cfg, section), key)
        if value and not Path(value).is_absolute() and (root / value).exists():
            setattr(getattr(cfg, section), key, str(root / value))
    return cfg


def check_finished(run_dir: Path, manifest: dict[str, Any]) -> None:
    stages = manifest.get("stages", {})
    for stage, artifact in NEEDED.items():
        record = stages.get("train" if stage == "backbone" else stage, {})
        if record.get("status") != "done" or not (run_dir / artifact).exists():
            raise ConfigError(f"{run_dir}: stage {stage!r} is not finished ({artifact} missing); "
                              "run `coldllm run` with the filter, simulate and update stages first")


def update_steps(manifest: dict[str, Any], default: int) -> int:
    """How many steps the online update takes: the step the run's own update validated best.

    A new item has no held-out interactions to stop on, so the count validated on the run's cold
    items stands in for it; a run whose update has no such record (the retraining mode) uses the
    configured budget.
    """
    best = manifest.get("stages", {}).get("update", {}).get("best_step")
    return int(best) if best is not None else int(default)


def lm_text_config(cfg: RunConfig) -> ContentConfig:
    """The encoder of the language-model sub-tower's text vectors (as the run's filter stage chose it)."""
    if cfg.filter.text_model == "minilm":
        return dataclasses.replace(cfg.content, encoder="minilm", model="")
    return ContentConfig(encoder="llm", model=cfg.filter.text_model, cache_dir=cfg.content.cache_dir,
                         device=cfg.content.device, batch_size=32)
