"""Small shared helpers: devices, seeds, peak memory, the run manifest."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import torch

PACKAGES = ("torch", "numpy", "scipy", "pandas", "pyarrow", "transformers", "peft", "faiss-cpu",
            "sentence-transformers", "safetensors")


def registrar(table: dict[str, type]) -> Callable[[str], Callable[[type], type]]:
    """A ``@register(name)`` decorator that files a class in ``table`` under ``name`` and names it."""

    def register(name: str) -> Callable[[type], type]:
        def wrap(cls: type) -> type:
            table[name] = cls
            cls.name = name
            return cls

        return wrap

    return register


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def git_commit(cwd: Path | None = None) -> str:
    """The checked-out commit, with ``-dirty`` when tracked files differ from it.

    Changes under ``results/`` do not count: they are what the benchmarks write, not the code that
    wrote them.

    ``$COLDLLM_COMMIT``, when set, wins: a copy of the tree on another machine may carry no git
    folder, or a stale one.
    """
    if os.environ.get("COLDLLM_COMMIT"):
        return os.environ["COLDLLM_COMMIT"]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically: readers never see half a file, a crash never truncates the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def setup_logging(log_file: Path | None = None, level: int = logging.INFO) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
