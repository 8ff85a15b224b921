"""Checkpoints that make a long training resumable: tensors (weights, optimiser moments, RNG) in
one safetensors file, the trainer's own state as JSON in its metadata, replaced atomically.

The backbone trainer and the LoRA fine-tuning both save this way, so a process killed at any
instant resumes from its last checkpoint and ends with the numbers of an uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from .utils import atomic_path


def save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """``tensors`` (moved to the CPU) to ``path``, all or nothing."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimiser's per-parameter state as flat ``optim.<index>.<key>`` tensors."""
    out = {}
    for idx, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            out[f"optim.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Restore what ``optimizer_tensors`` saved (other keys in ``tensors`` are ignored)."""
    state_dict = opt.state_dict()
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    state_dict["state"] = state
    opt.load_state_dict(state_dict)
