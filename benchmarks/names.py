"""Run folder names the benchmarks share: one backbone run per dataset, backbone and seed, and
the funnel's variants beside it."""

from __future__ import annotations

from pathlib import Path

from coldllm.config import RunConfig

DEFAULT_SEED = RunConfig().seed  # its runs keep the names they had before seeds were varied


def run_name(dataset: str, backbone: str, seed: int = DEFAULT_SEED) -> str:
    base = f"bench-{dataset}-{backbone}"
    return base if seed == DEFAULT_SEED else f"{base}-s{seed}"




def preset_for(backbone: str, default: Path) -> Path:
    """``<preset>-<backbone>.yaml`` beside the preset when it exists (that backbone's own settings), else
    the preset: every benchmark of a backbone reads the same file, so its variants reuse its trained run."""
    specific = default.with_name(f"{default.stem}-{backbone}.yaml")
    return specific if specific.exists() else default
