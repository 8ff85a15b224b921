"""The common face of every content-mapping cold-start method, and the loop most of them share.

A method is fitted on the warm training interactions, the item content vectors and the frozen,
trained backbone; it then scores every (user, item) pair. ``keeps_warm`` says whether warm items
keep the backbone's scores (true for methods that only invent embeddings for cold items).

Hyper-parameters are a per-method dataclass (``Params``), filled from ``baseline.params`` in the
config; an unknown key is an error naming it, as everywhere else.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import ConfigError, apply_values
from ..data import BPRSampler, ColdStartData
from ..early_stopping import EarlyStopping
from ..evaluate import Evaluator, Scorer
from ..hparams import TrainParams
from ..utils import registrar

log = logging.getLogger(__name__)
METHODS: dict[str, type["ColdStartMethod"]] = {}
register = registrar(METHODS)


@dataclass
class FitContext:
    """Everything a method may learn from: warm training data only, never held-out pairs."""

    data: ColdStartData
    content: torch.Tensor  # (n_items, d) item content vectors, for warm and cold items alike
    user_emb: torch.Tensor  # (n_users, k) backbone user representations (frozen)
    item_emb: torch.Tensor  # (n_items, k) backbone item representations (cold rows untrained)
    device: torch.device
    seed: int = 0
    validator: Evaluator | None = None  # cold validation set, for early stopping
    metric: str = "ndcg@20"

    @property
    def warm(self) -> torch.Tensor:
        return torch.from_numpy(self.data.warm_items).to(self.device)

    @property
    def cold(self) -> torch.Tensor:
        return torch.from_numpy(self.data.cold_items).to(self.device)


class ColdStartMethod:
    name: ClassVar[str] = "method"
    keeps_warm: ClassVar[bool] = True
    Params: ClassVar[type] = TrainParams

    def __init__(self, params: dict[str, Any] | None = None):
        self.params = self.Params()
        try:
            apply_values(self.params, params or {}, prefix="baseline.params.")
        except ConfigError as err:
            raise ConfigError(f"{self.name}: {err}") from None
        self.history: list[dict[str, float]] = []

    def fit(self, ctx: FitContext) -> "ColdStartMethod":
        """Learn from ``ctx``; afterwards ``scorer()`` ranks warm and cold items together."""
        # initial weights from the run's seed, whatever ran before in the process
        torch.manual_seed(ctx.seed)
        self.fit_model(ctx)
        return self

    def fit_model(self, ctx: FitContext) -> None:
        """What ``fit`` does for this method, after seeding."""
        raise NotImplementedError

    def finish(self, ctx: FitContext) -> None:
        """Refresh whatever ``scorer()`` reads from the current weights (called after each epoch)."""

    def scorer(self) -> Scorer:
        raise NotImplementedError


class EmbeddingMethod(ColdStartMethod):
    """Methods that give cold items an embedding in the backbone's space; warm items keep theirs.

    Subclasses implement ``cold_embeddings`` and, if they learn anything, ``train``.
    """

    def fit_model(self, ctx: FitContext) -> None:
        self.user_emb = ctx.user_emb
        self.item_emb = ctx.item_emb.clone()
        self.train(ctx)
        self.finish(ctx)

    def train(self, ctx: FitContext) -> None:
        pass

    def finish(self, ctx: FitContext) -> None:
        with torch.no_grad():
            self.item_emb[ctx.cold] = self.cold_embeddings(ctx).to(self.item_emb.dtype)

    def cold_embeddings(self, ctx: FitContext) -> torch.Tensor:
        raise NotImplementedError

    def scorer(self) -> Scorer:
        return lambda users: self.user_emb[users] @ self.item_emb.T


def fit_with_early_stopping(
    method: ColdStartMethod,
    ctx: FitContext,
    modules: nn.Module,
    step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    params: TrainParams,
    optimize: bool = True,
    batches: Callable[[np.random.Generator], Iterable[tuple[torch.Tensor, ...]]] | None = None,
) -> None:
    """Epochs of BPR triples over warm training pairs; ``step(users, pos, neg)`` returns the loss.
    ``batches(rng)``, when given, makes an epoch's batches instead (each passed to ``step`` as its
    arguments), shuffled by a generator seeded once from ``ctx.seed``.

    After each epoch the method is validated on the cold validation set; the best state of
    ``modules`` is restored at the end (early stopping with ``params.patience``). With
    ``optimize=False`` ``step`` updates the weights itself (methods with several optimizers, such
    as adversarial ones) and returns a detached loss, only recorded.
    """
    torch.manual_seed(ctx.seed)
    if batches is None:
        sampler = BPRSampler(ctx.data.matrix("train"), candidates=ctx.data.warm_items, seed=ctx.seed)
        batches = lambda _: ([torch.from_numpy(a).to(ctx.device) for a in b]  # noqa: E731
                             for b in sampler.epoch(params.batch_size))
    rng = np.random.default_rng(ctx.seed)
    opt = torch.optim.Adam(modules.parameters(), lr=params.lr) if optimize else None
    stopper = EarlyStopping(params.patience)
    bar = tqdm(range(params.epochs), desc=f"fit {method.name}", unit="epoch")
    for epoch in bar:
        start, total, n = time.perf_counter(), 0.0, 0
        modules.train()
        for batch in batches(rng):
            loss = step(*batch)
            if opt is not None:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            total, n = total + loss.item(), n + 1
        modules.eval()
        record = {"epoch": epoch + 1, "loss": total / max(n, 1), "seconds": time.perf_counter() - start}
        if ctx.validator is not None:
            with torch.no_grad():
                method.finish(ctx)
                score = ctx.validator.evaluate(method.scorer(), ctx.device)["cold"][ctx.metric]
            record["val_cold"] = score
            stopper.update(score, epoch + 1, modules.state_dict())
        method.history.append(record)
        bar.set_postfix({k: round(v, 4) for k, v in record.items() if k not in ("epoch", "seconds")})
        if ctx.validator is not None and stopper.done:
            break
    if stopper.best_state is not None:
        modules.load_state_dict(stopper.best_state)
    modules.eval()
    with torch.no_grad():
        method.finish(ctx)
