"""Full-ranking evaluation for cold-start recommendation: overall, cold and warm settings.

For each setting the held-out pairs are ranked against every candidate item (no sampled negatives):
*overall* ranks all items, *cold* only cold items, *warm* only warm items. A user's training items
are always masked. Every user with at least one held-out item in the setting is evaluated.

Recall@K = hits in the top K / |held-out items|; NDCG@K uses binary gains 1/log2(rank + 1) and an
ideal DCG truncated at min(|held-out items|, K).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch

from .data import ColdStartData

# user indices -> (batch, n_items) scores, a tensor of its own: the evaluator writes its masks into it
Scorer = Callable[[torch.Tensor], torch.Tensor]
SETTINGS = ("overall", "cold", "warm")
PARTS = {
    "val": {"overall": ("warm_val", "cold_val"), "cold": ("cold_val",), "warm": ("warm_val",)},
    "test": {"overall": ("warm_test", "cold_test"), "cold": ("cold_test",), "warm": ("warm_test",)},
}


def ranking_metrics(
    scores: torch.Tensor, truth: torch.Tensor, ks: list[int], n_true: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Per-user Recall@K and NDCG@K.

    ``scores``: (users, items) with masked items already at -inf; ``truth``: (users, items) bool of
    held-out items; ``n_true``: its row sums when the caller has them (summing a dense bool matrix
    costs more than the ranking). Returns ``{"recall@K": (users,), "ndcg@K": (users,)}``.
    """
    k_max = min(max(ks), scores.shape[1])
    top = scores.topk(k_max, dim=1).indices
    hits = truth.gather(1, top).float()
    n_true = (truth.sum(1) if n_true is None else n_true).float()
    discount = 1.0 / torch.log2(torch.arange(2, k_max + 2, dtype=torch.float32, device=scores.device))
    out = {}
    for k in ks:
        kk = min(k, k_max)
        out[f"recall@{k}"] = hits[:, :kk].sum(1) / n_true.clamp(min=1)
        dcg = (hits[:, :kk] * discount[:kk]).sum(1)
        ideal_len = n_true.clamp(max=kk).long()
        idcg = torch.cumsum(discount[:kk], 0)[(ideal_len - 1).clamp(min=0)]
        out[f"ndcg@{k}"] = dcg / idcg
    return out


REFERENCE_USERS = 2000


@dataclass
class _Setting:
    truth: sp.csr_matrix
    users: np.ndarray
    candidates: np.ndarray  # bool per item
    exclude: sp.csr_matrix | None = None  # masked pairs; None: the training pairs


class Evaluator:
    """Evaluates a scorer on the ``val`` or ``test`` parts of a dataset in user batches."""

    def __init__(self, data: ColdStartData, split: str = "test", ks: list[int] | None = None,
                 batch_size: int = 1024, settings: tuple[str, ...] = SETTINGS, reference: bool = False):
        """``reference=True``: the protocol of the released ALDI/ColdLLM code, for comparing with
        their figures: only the first ``REFERENCE_USERS`` users (by index) with held-out items in the
        setting, and every other known positive of the user masked (training and the other parts)."""
        if split not in PARTS:
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        self.ks = list(ks or [20])
        self.batch_size = batch_size
        self.exclude = data.matrix("train")
        all_items = np.ones(data.n_items, dtype=bool)
        candidates = {"overall": all_items, "cold": data.is_cold, "warm": ~data.is_cold}
        self.settings = {}
        for name in settings:
            truth = data.matrix(*PARTS[split][name])
            users = np.flatnonzero(np.diff(truth.indptr) > 0)
            exclude = None
            if reference:
                users = users[:REFERENCE_USERS]
                others = [p for p in data.parts if p not in PARTS[split][name]]
                exclude = data.matrix(*others)
            self.settings[name] = _Setting(truth, users, candidates[name], exclude)

    @torch.no_grad()
    def per_user(self, scorer: Scorer, device: torch.device | str = "cpu") -> dict[str, dict[str, np.ndarray]]:
        """Each setting's metrics per evaluated user (in ``users`` order): what a paired comparison
        of two scorers on the same users needs."""
        results = {}
        for name, setting in self.settings.items():
            blocked = torch.from_numpy(~setting.candidates).to(device)
            parts: dict[str, list[np.ndarray]] = {f"{m}@{k}": [] for k in self.ks for m in ("recall", "ndcg")}
            for start in range(0, len(setting.users), self.batch_size):
                users = setting.users[start : start + self.batch_size]
                scores = scorer(torch.from_numpy(users).to(device)).float()
                scores[:, blocked] = -torch.inf
                seen = (self.exclude if setting.exclude is None else setting.exclude)[users].tocoo()
                scores[torch.from_numpy(seen.row).to(device), torch.from_numpy(seen.col).to(device)] = -torch.inf
                held_out = setting.truth[users]
                truth = torch.from_numpy(held_out.toarray() > 0).to(device)
                n_true = torch.from_numpy(np.diff(held_out.indptr)).to(device)
                for metric, values in ranking_metrics(scores, truth, self.ks, n_true).items():
                    parts[metric].append(values.double().cpu().numpy())
            results[name] = {m: np.concatenate(v) if v else np.zeros(0) for m, v in parts.items()}
        return results

    def evaluate(self, scorer: Scorer, device: torch.device | str = "cpu") -> dict[str, dict[str, float]]:
        """Each setting's metrics averaged over its users (NaN for a setting without users)."""
        results = {}
        for name, metrics in self.per_user(scorer, device).items():
            n = len(self.settings[name].users)
            results[name] = {m: float(v.sum()) / n if n else float("nan") for m, v in metrics.items()}
            results[name]["users"] = n
        return results


def embedding_scorer(user_emb: torch.Tensor, item_emb: torch.Tensor) -> Scorer:
    """Inner-product scores of fixed user and item representations."""
    return lambda users: user_emb[users] @ item_emb.T


def subset_scorer(user_emb: torch.Tensor, item_emb: torch.Tensor, items: np.ndarray) -> Scorer:
    """Inner-product scores of ``items`` only (the others at -inf): the cold setting ranks cold items
    only, so scoring the rest is wasted work (5x for CiteULike's cold items)."""
    index = torch.as_tensor(items, device=item_emb.device)
    subset = item_emb[index]

    def score(users: torch.Tensor) -> torch.Tensor:
        out = torch.full((len(users), len(item_emb)), -torch.inf, device=item_emb.device, dtype=item_emb.dtype)
        out[:, index] = user_emb[users] @ subset.T
        return out

    return score


def format_results(results: dict[str, dict[str, float]]) -> str:
    lines = []
    for name, metrics in results.items():
        body = "  ".join(f"{m}={v:.4f}" for m, v in metrics.items() if m != "users")
        lines.append(f"{name:<8} {body}  (users={metrics.get('users', 0)})")
    return "\n".join(lines)
