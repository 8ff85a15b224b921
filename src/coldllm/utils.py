"""Small shared helpers: devices, seeds, peak memory, the run manifest."""

from __future__ import annotations

import ctypes
import datetime as dt
import gc
import json
import logging
import os
import platform
import resource
import secrets
import shutil
import subprocess
import sys
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

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


# glibc's malloc_trim, looked up once (None where the C library has none: musl, macOS)
_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)


def release_memory() -> None:
    """Give memory freed by a finished stage back to the operating system.

    glibc keeps freed heap pages for reuse: after the judge's fine-tune (peak ~16 GB on MovieLens-1M)
    the same process went on holding ~14 GB through the simulation that needs ~1.5 GB. ``malloc_trim``
    returns them; elsewhere there is nothing to call and the pages stay.
    """
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


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


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """A temporary path beside ``path``; when the block ends normally it is renamed onto ``path``.

    Every artifact is written this way, so a process killed at any instant leaves the old file (or
    none) or the complete new one, never a truncated one. The temporary name is in the same folder
    (a rename is atomic only within one filesystem), starts with a dot (globs over artifacts skip
    it) and keeps the suffix (``np.save`` appends ``.npy`` to a name without it). A folder written
    there (a saved adapter) replaces the old folder in two renames: a kill between them leaves no
    folder, which a reader sees as missing, not as half written. No fsync: a killed process's
    writes are already in the page cache; only a machine crash could lose them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        if tmp.is_dir() and not tmp.is_symlink():
            old = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.old")
            if path.is_dir() and not path.is_symlink():
                os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically: readers never see half a file, a crash never truncates the old one."""
    text = json.dumps(obj, indent=2, default=str) + "\n"  # serialised first: a bad object writes nothing
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _unreadable_safetensors(path: Path, err: Exception) -> Exception:
    from .data.readers import DataError  # here: the data package is not needed to import utils

    if isinstance(err, FileNotFoundError):
        return DataError(f"{path}: file not found")
    return DataError(f"{path}: truncated or corrupt safetensors file ({' '.join(str(err).split())}); "
                     f"delete it and rerun the stage that writes it")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, truncated or corrupt file is a ``DataError``
    naming it, so a command stops with one line instead of a deserializer's traceback."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001  (safetensors raises its own error type for every defect)
        raise _unreadable_safetensors(Path(path), err) from None


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file (the trainer state of a checkpoint), read as above."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            return fh.metadata() or {}
    except Exception as err:  # noqa: BLE001
        raise _unreadable_safetensors(Path(path), err) from None


# Libraries whose INFO lines say nothing a user acts on (faiss lists every CPU build it tried to load);
# their warnings still show.
QUIET_LOGGERS = ("faiss", "transformers", "sentence_transformers", "huggingface_hub", "peft", "accelerate",
                 "httpx", "urllib3", "filelock", "matplotlib", "PIL")
# Warnings of library internals that no setting of ours can change: (category, message, module).
KNOWN_WARNINGS = (
    (FutureWarning, "", r"(transformers|peft)(\..*)?$"),
    (DeprecationWarning, "", r"(transformers|peft|huggingface_hub|sentence_transformers)(\..*)?$"),
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", ""),  # raised from peft's call
    (UserWarning, r"Sparse CSR tensor support is in beta", ""),  # LightGCN's adjacency: works as intended
)


def quiet_libraries() -> None:
    """Keep third-party chatter off the terminal: INFO lines, known deprecation warnings and the
    "Loading weights" progress bar of every model load."""
    import warnings

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for category, message, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    # transformers reads this when it is imported; when it already is, it is told directly
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def setup_logging(log_file: Path | None = None, level: int = logging.INFO) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    quiet_libraries()


# Record entries that are bookkeeping or too long for one line (curves, paths, fingerprints).
NOT_SUMMARISED = {"status", "started", "commit", "seconds", "peak_memory_mb", "history", "loss_history",
                  "fingerprint", "shards", "cache", "device", "differs"}


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, sub in value.items():
            # the number of users evaluated is context, not a result
            if key not in NOT_SUMMARISED and not (key == "users" and prefix.startswith("metrics")):
                yield from _flatten(f"{prefix}.{key}" if prefix else str(key), sub)
    elif isinstance(value, (bool, int, float, str)):
        yield prefix, value


def record_summary(record: dict[str, Any], limit: int = 12, width: int = 400) -> str:
    """What a stage did, in one line, from its manifest record: ``best_epoch=200, best_val=0.1919``.

    Nested results read as dotted keys (``cold.recall@20=0.3496``; a ``metrics`` level is left
    out); floats keep four significant digits. At most ``limit`` entries and ``width`` characters.
    """
    parts = []
    for key, value in _flatten("", record):
        key = key.removeprefix("metrics.")
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    line = ", ".join(parts[:limit])
    if len(parts) > limit or len(line) > width:
        line = line[: width - 4].rstrip(", ") + ", ..."
    return line or "no figures recorded"
