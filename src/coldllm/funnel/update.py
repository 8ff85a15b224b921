"""The update: simulated interactions give cold items ordinary behaviour embeddings.

Every variant starts from a *content prior* that lives in the backbone's own output space (the
space user and item representations are scored in): content-KNN, the mean output embedding of the
item's most title-similar warm items. Before any simulated pair is used, the updated model scores
cold items exactly as that prior does, and the update is selected on cold validation with the
prior itself as the first candidate, so on validation it can only match or beat the prior.

* ``fit_cold_rows`` (``update.mode: fast``, the default): only the cold items' output rows move;
  users and warm items stay as trained (warm scores are the backbone's, bit for bit). Each accepted
  pair is a BPR positive against sampled negatives, optionally weighted by P(Yes), and a pull
  keeps every row near its prior (a Gaussian prior on the embedding; items with no accepted pair
  keep it). Seconds, which is what an online catalogue needs.
* ``augmented_train`` (``update.mode: retrain``): the backbone trained again on warm training
  pairs plus the accepted simulated pairs (the paper's way), from scratch or from the trained
  backbone with the prior written where it scores users exactly as the prior does.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..early_stopping import EarlyStopping

log = logging.getLogger(__name__)


def augmented_train(train: sp.csr_matrix, simulated: pd.DataFrame) -> sp.csr_matrix:
    """Training matrix with the accepted simulated (user, item) pairs added (binary)."""
    accepted = simulated[simulated["accepted"]] if "accepted" in simulated else simulated
    extra = sp.csr_matrix(
        (np.ones(len(accepted), np.float32), (accepted["user"].to_numpy(), accepted["item"].to_numpy())),
        shape=train.shape,
    )
    out = (train + extra).tocsr()
    out.data[:] = 1.0
    return out


@torch.no_grad()
def knn_prior(content: torch.Tensor, item_emb: torch.Tensor, warm: torch.Tensor, cold: torch.Tensor,
              k: int = 20, batch: int = 1024) -> torch.Tensor:
    """Content-KNN in the backbone's output space: each cold item's mean ``item_emb`` over its ``k``
    most cosine-similar warm items (rows in ``cold`` order). The same rule as the ``knn`` control."""
    warm_content = F.normalize(content[warm].float(), dim=1)
    warm_emb = item_emb[warm]
    k = min(k, len(warm))
    out = []
    for block in cold.split(batch):
        _, idx = (F.normalize(content[block].float(), dim=1) @ warm_content.T).topk(k, dim=1)
        out.append(warm_emb[idx].mean(1))
    return torch.cat(out) if out else item_emb.new_zeros((0, item_emb.shape[1]))


@torch.no_grad()
def to_backbone(user_emb: torch.Tensor, scorer_users: torch.Tensor) -> torch.Tensor:
    """The (d_backbone, d_scorer) map that puts item vectors of a bilinear scorer with users of its
    own into the backbone's space, where they score the backbone's users as the scorer scores its
    own, in the least-squares sense over every user.

    A content mapping with users of its own (the one-pass head, an ALDI student) ranks cold items
    well but not in the space the backbone's users score in. Its scores are ``S = V Z^T``; the rows
    ``E = Z V^T U (U^T U)^-1`` minimise ``||U E^T - S||`` over all users: one d x d solve.
    """
    gram = user_emb.T @ user_emb
    ridge = 1e-6 * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + ridge, user_emb.T @ scorer_users.to(user_emb.dtype))


def item_depths(predicted: np.ndarray, mean_depth: int, cap: int, mean: float | None = None) -> np.ndarray:
    """Per item, ``mean_depth`` scaled by its predicted popularity over the mean prediction (``mean``:
    the run's own, for items that come later; default: these items'), in [1, cap]."""
    mean = float(np.mean(predicted)) if mean is None else mean
    scale = predicted / max(mean, 1e-12)
    return np.clip(np.rint(mean_depth * scale), 1, cap).astype(np.int64)


BLENDS = (0.25, 0.5, 0.75)  # weights of the filter's mapping against content-KNN, tried on validation


def prior_candidates(knn: torch.Tensor, mapped: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """The priors ``update.prior: best`` chooses among on validation: content-KNN, the filter's own
    content mapping projected into the backbone's space, and blends of the two."""
    out = {"knn": knn}
    if mapped is not None:
        out["filter"] = mapped
        out.update({f"blend-{w:g}": w * mapped + (1 - w) * knn for w in BLENDS})
    return out


@dataclass
class FastParams:
    """The cold-only update's settings (``update.*`` in the config)."""

    steps: int = 300
    lr: float = 0.003
    pull: float = 1.0
    negatives: int = 16
    batch_size: int = 4096
    negative_pool: str = "all"  # warm | cold | all
    weight_by_p_yes: bool = False
    eval_every: int = 10
    patience: int = 5
    seed: int = 0

    @classmethod
    def from_config(cls, update, seed: int) -> "FastParams":
        """The fast mode's settings from an ``UpdateConfig`` (same names, one place)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"seed"}
        return cls(seed=seed, **{name: getattr(update, name) for name in names})


@dataclass
class FastResult:
    item_emb: torch.Tensor
    start: torch.Tensor | None = None  # the table at step 0: the prior in the cold rows
    best_step: int = 0
    best_score: float = float("nan")
    history: list[dict] = field(default_factory=list)


def fit_cold_rows(user_emb: torch.Tensor, item_emb: torch.Tensor, prior: torch.Tensor, cold_ids: np.ndarray,
                  pairs: pd.DataFrame, params: FastParams,
                  validate: Callable[[torch.Tensor], float] | None = None) -> FastResult:
    """New output rows for ``cold_ids`` (starting at ``prior``) from the accepted ``pairs``.

    ``pairs``: user, item (and ``p_yes`` when weighted). Full-batch Adam steps; the loss per cold
    item is the sum of its pairs' BPR terms plus ``pull * ||e - prior||^2``, averaged over cold
    items. ``validate(item_emb) -> score`` (cold validation) runs at step 0 and every
    ``eval_every`` steps; the best state is returned (step 0, the prior, included).
    """
    device = item_emb.device
    gen = torch.Generator().manual_seed(params.seed)
    cold = torch.as_tensor(cold_ids, device=device)
    prior = prior.to(device=device, dtype=item_emb.dtype)
    is_cold = torch.zeros(len(item_emb), dtype=torch.bool, device=device)
    is_cold[cold] = True
    pools = {"warm": torch.nonzero(~is_cold).squeeze(1), "cold": cold, "all": torch.arange(len(item_emb), device=device)}
    if params.negative_pool not in pools:
        raise ValueError(f"update.negative_pool {params.negative_pool!r} must be warm, cold or all")
    pool = pools[params.negative_pool]
    row_of = torch.full((len(item_emb),), -1, dtype=torch.long, device=device)
    row_of[cold] = torch.arange(len(cold), device=device)
    users = torch.as_tensor(pairs["user"].to_numpy(np.int64, copy=True), device=device)
    rows = row_of[torch.as_tensor(pairs["item"].to_numpy(np.int64, copy=True), device=device)]
    if (rows < 0).any():
        raise ValueError("update: a simulated pair's item is not a cold item")
    weights = (torch.as_tensor(pairs["p_yes"].to_numpy(np.float32, copy=True), device=device)
               if params.weight_by_p_yes else torch.ones(len(users), device=device))
    emb = torch.nn.Parameter(prior.clone())
    opt = torch.optim.Adam([emb], lr=params.lr)

    def table() -> torch.Tensor:
        out = item_emb.clone()
        out[cold] = emb.detach()
        return out

    result = FastResult(item_emb=table())
    result.start = result.item_emb
    # no score is below the prior's (step 0), whatever the metric: it is always a candidate
    stopper = EarlyStopping(params.patience, best_score=-float("inf"))
    if validate is not None:
        stopper.update(validate(result.item_emb), 0, result.item_emb)
        result.history.append({"step": 0, "val": stopper.best_score})
    # minibatches of pairs, each scaled to stand for all of them, so the loss per cold item stays
    # "sum of its pairs' BPR terms + pull": gathering every pair's negatives every step would move
    # hundreds of MB per step
    scale = len(users) / min(params.batch_size, max(len(users), 1))
    bar = tqdm(range(1, (params.steps if len(users) else 0) + 1), desc="update cold rows", unit="step", leave=False)
    for step in bar:
        batch = torch.randint(len(users), (min(params.batch_size, len(users)),), generator=gen).to(device)
        u, rows_b = user_emb[users[batch]], rows[batch]
        neg = pool[torch.randint(len(pool), (len(batch), params.negatives), generator=gen).to(device)]
        neg_rows = row_of[neg]
        full = item_emb[neg]
        # cold negatives are the rows being learned: gradients push them away from the user too
        neg_emb = torch.where((neg_rows >= 0).unsqueeze(-1), emb[neg_rows.clamp(min=0)], full)
        pos = (u * emb[rows_b]).sum(1, keepdim=True)
        bpr = F.softplus(torch.einsum("bd,bnd->bn", u, neg_emb) - pos).mean(1)
        loss = (scale * (weights[batch] * bpr).sum() + params.pull * (emb - prior).pow(2).sum()) / len(cold)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if validate is not None and (step % params.eval_every == 0 or step == params.steps):
            current = table()
            score = validate(current)
            result.history.append({"step": step, "loss": float(loss.detach()), "val": score})
            bar.set_postfix(val=round(score, 4))
            stopper.update(score, step, current)
            if stopper.done:
                break
    bar.close()
    if validate is None:
        result.item_emb, result.best_step = table(), params.steps
    else:
        result.item_emb, result.best_step, result.best_score = stopper.best_state, stopper.best_step, stopper.best_score
    return result
