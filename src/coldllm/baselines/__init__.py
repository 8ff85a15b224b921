"""Content-mapping cold-start methods, one module each, behind one interface (see ``base``)."""

from __future__ import annotations

from typing import Any

# Each module registers its methods on import.
from . import aldi, controls, deepmusic  # noqa: F401
from . import dropoutnet, metaemb, mtpr  # noqa: F401
from . import clcrec, gar  # noqa: F401
from .base import METHODS, ColdStartMethod, EmbeddingMethod, FitContext, TrainParams, register


def build_method(name: str, params: dict[str, Any] | None = None) -> ColdStartMethod:
    if name not in METHODS:
        raise ValueError(f"unknown cold-start method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name](params)


__all__ = ["METHODS", "ColdStartMethod", "EmbeddingMethod", "FitContext", "TrainParams", "build_method",
           "register"]
