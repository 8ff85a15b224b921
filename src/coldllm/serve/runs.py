"""Reading a finished run folder: its resolved config, and what its stages left behind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from ..config import ConfigError, RunConfig, apply_values
from ..data import ColdStartData, load_dataset
from ..data.dataset import cache_key
from ..layout import RunLayout

# what the service reads from the run; each is checked at start so a half-finished run is named
NEEDED = {"update": lambda layout: layout.embeddings, "simulate": lambda layout: layout.simulated,
          "backbone": lambda layout: layout.backbone_meta}


def read_manifest(run_dir: Path) -> dict[str, Any]:
    path = RunLayout(run_dir).manifest
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no manifest.json; give the folder of a finished `coldllm run`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: unreadable ({err})") from None


def _roots(run_dir: Path, manifest: dict[str, Any], runs_dir: str) -> list[Path]:
    """Folders the run's relative paths may be relative to, most likely first: the folder the run
    was made in (recorded since the manifest has ``origin``), the folder that would hold
    ``runs_dir`` if the project moved with its runs, and the current folder."""
    roots = [Path(manifest["origin"])] if manifest.get("origin") else []
    if not Path(runs_dir).is_absolute():
        root = run_dir.parent
        for _ in Path(runs_dir).parts:
            root = root.parent
        roots.append(root)
    roots.append(Path.cwd())
    return list(dict.fromkeys(roots))


def _locate(path: str, roots: list[Path], found: Callable[[Path], bool]) -> str | None:
    """``path`` made absolute against the first root where ``found`` holds (None: nowhere)."""
    candidates = [Path(path)] if Path(path).is_absolute() else [root / path for root in roots]
    return next((str(c) for c in candidates if found(c)), None)


def run_config(run_dir: Path, manifest: dict[str, Any]) -> RunConfig:
    """The run's resolved config, with its relative paths made absolute wherever they are found.

    Relative paths in a run's config (data, caches) are relative to the folder the run was made
    in. The service may be started from anywhere, and the run folder may have been copied away from
    that folder: each path is looked for under every folder of ``_roots``. The raw data may also
    be named by ``COLDLLM_DATA`` (the folder that holds the data folder, as the presets use it).
    A cache found nowhere is rebuilt where the run made it (when that folder is still there), else
    under ``RUN_DIR/serve/``.
    """
    cfg = RunConfig()
    apply_values(cfg, manifest.get("config", {}))
    run_dir = Path(run_dir).absolute()
    roots = _roots(run_dir, manifest, cfg.runs_dir)
    cfg.runs_dir, cfg.name = str(run_dir.parent), run_dir.name
    # a cache found nowhere goes where the run made it when that folder is still there, else in the run
    fallback = roots[0] if roots[0].is_dir() and manifest.get("origin") else run_dir / "serve"

    def cache(path: str, found: Callable[[Path], bool]) -> str:
        return _locate(path, roots, found) or str(Path(path) if Path(path).is_absolute() else fallback / path)

    prepared = f"{cfg.data.name}/{cache_key(cfg.data)}/summary.json"  # the key of the paths as recorded
    cfg.data.cache_dir = cache(cfg.data.cache_dir, lambda p: (p / prepared).is_file())
    # text vectors (content/) and converted language models (models/) share this folder
    cfg.content.cache_dir = cache(cfg.content.cache_dir, lambda p: (p / "content").is_dir() or (p / "models").is_dir())
    cfg.data.path = data_path(cfg.data.path, roots) or cfg.data.path
    if cfg.filter.file:
        cfg.filter.file = _locate(cfg.filter.file, roots, Path.exists) or cfg.filter.file
    # a model may be a registered name (smollm2-135m) or a local folder; only folders move
    for section, key in (("refiner", "model"), ("filter", "text_model"), ("content", "model")):
        value = getattr(getattr(cfg, section), key)
        if value and not Path(value).is_absolute():
            setattr(getattr(cfg, section), key, _locate(value, roots, Path.exists) or value)
    return cfg


def data_path(recorded: str, roots: list[Path]) -> str | None:
    """The run's raw data folder: where it was recorded, else ``$COLDLLM_DATA/<its name>``."""
    found = _locate(recorded, roots, Path.exists)
    shared = os.environ.get("COLDLLM_DATA")
    if found is None and shared and (Path(shared) / Path(recorded).name).exists():
        found = str((Path(shared) / Path(recorded).name).absolute())
    return found


def run_data(run_dir: Path, manifest: dict[str, Any], cfg: RunConfig) -> ColdStartData:
    """The dataset the run prepared (its cache, keyed by the paths as recorded), else read again
    from the raw data; a run whose data is nowhere is a one-line error saying what to set."""
    recorded = RunConfig()
    apply_values(recorded, manifest.get("config", {}))
    folder = Path(cfg.data.cache_dir) / cfg.data.name / cache_key(recorded.data)
    if (folder / "summary.json").is_file():
        return ColdStartData.load(folder)
    if not Path(cfg.data.path).exists():
        name = Path(recorded.data.path).name
        raise ConfigError(
            f"{run_dir}: the run's data {recorded.data.path!r} is neither under the folder the run was made in "
            f"nor under $COLDLLM_DATA/{name}, and its prepared copy is not in {recorded.data.cache_dir!r}; "
            f"set COLDLLM_DATA to the folder that holds {name!r}")
    return load_dataset(cfg.data)


def check_finished(run_dir: Path, manifest: dict[str, Any]) -> None:
    stages = manifest.get("stages", {})
    layout = RunLayout(run_dir)
    for stage, where in NEEDED.items():
        record = stages.get("train" if stage == "backbone" else stage, {})
        artifact = layout.rel(where(layout))
        if record.get("status") != "done" or not where(layout).exists():
            raise ConfigError(f"{run_dir}: stage {stage!r} is not finished ({artifact} missing); "
                              "run `coldllm run` with the filter, simulate and update stages first")


def read_artifact_parquet(path: Path, columns: list[str] | None = None):
    """A Parquet file a stage wrote; a truncated or corrupt one is a one-line error naming it."""
    import pandas as pd

    try:
        return pd.read_parquet(path, columns=columns)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; rerun the stage that writes it") from None
    except Exception as err:  # noqa: BLE001  (Arrow raises a different type for each defect)
        raise ConfigError(f"{path}: truncated or corrupt Parquet file ({' '.join(str(err).split())[:200]}); "
                          "delete it and rerun the stage that writes it") from None
