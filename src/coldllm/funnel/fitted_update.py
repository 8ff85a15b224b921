"""The update as a fitted component: what the update stage chose on validation, saved beside the
rows it made, and applied the same way to the run's cold items and to every item that comes later.

The stage chooses a prior (content-KNN, the filter's own mapping or a blend), a candidate depth
(one for every item, or scaled by predicted popularity) and a number of steps (0 when no step beat
the prior beyond validation's noise). The service has no held-out interactions for a new item, so
it cannot choose; it loads these choices (``update/update.json``, like PEFT's config beside its
weights) and applies them: ``prior`` -> ``depths`` -> ``apply``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import ConfigError
from ..utils import atomic_path
from .update import FastParams, fit_cold_rows, item_depths, knn_prior, prior_candidates


@dataclass
class FittedUpdate:
    prior: str = "knn"  # knn | none | filter | blend-<w>: where rows start
    prior_k: int = 20  # warm neighbours of content-KNN (the prior and the popularity prediction)
    depth: int | None = None  # top candidates kept per item; None: every accepted pair
    popularity_mean: float | None = None  # set: depths scale with predicted popularity over this mean
    cap: int = 20  # the filter's K: no item keeps more
    params: FastParams = dataclasses.field(default_factory=FastParams)  # steps: the count validation kept

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(dataclasses.asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> "FittedUpdate":
        """The choices a run's update saved; a missing or damaged file is a one-line error naming it."""
        try:
            fields = json.loads(Path(path).read_text())
            return cls(**{**fields, "params": FastParams(**fields["params"])})
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found; rerun the update stage (`coldllm run`)") from None
        except (ValueError, TypeError, KeyError) as err:
            raise ConfigError(f"{path}: damaged update choices ({' '.join(str(err).split())[:120]}); "
                              "delete it and rerun the update stage") from None

    # -- what a new item gets ------------------------------------------------------------------------
    def neighbours_mean(self, warm_content: torch.Tensor, warm_values: torch.Tensor,
                        content: np.ndarray) -> torch.Tensor:
        """For each text in ``content``: the mean of ``warm_values`` over its ``prior_k`` most
        text-similar warm items (the content-KNN rule)."""
        n = len(warm_content)
        pool = torch.cat([warm_content, torch.as_tensor(content, dtype=torch.float32)])
        return knn_prior(pool, warm_values, torch.arange(n), torch.arange(n, n + len(content)), self.prior_k)

    def prior_rows(self, knn: torch.Tensor, mapped: torch.Tensor | None) -> torch.Tensor:
        """The chosen prior's rows, from the content-KNN rows and the filter's mapping (if any)."""
        if self.prior == "none":
            return torch.zeros_like(knn)
        return prior_candidates(knn, mapped)[self.prior]

    @property
    def candidates_needed(self) -> int:
        """How many top candidates an item may keep: the depth, or the filter's K when depths scale."""
        return self.cap if self.popularity_mean or self.depth is None else self.depth

    def depths(self, predicted_popularity: np.ndarray | None, n: int) -> np.ndarray:
        """Each item's depth: the chosen one, scaled by predicted popularity when the run's were."""
        if not self.popularity_mean:
            return np.full(n, self.candidates_needed)
        return item_depths(predicted_popularity, self.depth, self.cap, mean=self.popularity_mean)

    def apply(self, user_emb: torch.Tensor, item_emb: torch.Tensor, prior: torch.Tensor, item_ids: np.ndarray,
              pairs: pd.DataFrame) -> torch.Tensor:
        """Rows for ``item_ids`` (rows of ``item_emb``): ``params.steps`` steps from ``prior`` towards
        their accepted ``pairs``; everything else frozen."""
        params = dataclasses.replace(self.params, eval_every=10 ** 9)
        return fit_cold_rows(user_emb, item_emb, prior, item_ids, pairs, params).item_emb[torch.as_tensor(item_ids)]
