"""The coupled filter: the cheap first stage that keeps the top-K users per cold item.

Two sub-towers score every user for a cold item:

* collaborative: the ALDI student (``baselines.aldi``) maps item content into the backbone's
  space; its user tower maps the backbone's user embeddings alongside;
* language model: a two-tower over language-model text embeddings, the item side from the item's
  text and the user side from the mean text embedding of the user's training history, each through
  a small MLP, trained with binary cross-entropy on warm pairs, one random negative per positive.

The coupled user and item embeddings are the concatenations of the two towers' outputs, so the
coupled score is the sum of both towers' scores. FAISS returns the top-K users of every cold item
(exact inner product by default; IVF or HNSW for very large user sets).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from ..baselines.aldi import ALDI
from ..baselines.base import FitContext, fit_with_early_stopping
from ..evaluate import Scorer
from ..hparams import LMTowerParams
from ..layers import mlp

log = logging.getLogger(__name__)


class KNNTower:
    """A collaborative sub-tower with nothing to train: the backbone's users against content-KNN
    item vectors (the mean backbone embedding of the item's most title-similar warm items)."""

    def __init__(self, ctx: FitContext, k: int = 20):
        from .update import knn_prior  # the one content-KNN rule, shared with the update's prior

        self.user_student = ctx.user_emb
        self._vectors = lambda ids: knn_prior(ctx.content, ctx.item_emb, ctx.warm, ids, k)

    def item_vectors(self, ctx: FitContext, item_ids: torch.Tensor) -> torch.Tensor:
        return self._vectors(item_ids)


def history_means(train: sp.csr_matrix, item_vectors: np.ndarray) -> np.ndarray:
    """Each user's mean item-text vector over their training items (zeros for no history)."""
    deg = np.asarray(train.sum(1)).ravel()
    inv = np.divide(1.0, deg, out=np.zeros_like(deg, dtype=np.float64), where=deg > 0)
    return np.asarray(sp.diags(inv) @ train @ item_vectors, dtype=np.float32)


class LanguageTower:
    """Two MLPs over LM text embeddings; score = <f_user(mean history), f_item(item text)>."""

    name = "lm_tower"

    def __init__(self, params: LMTowerParams | None = None):
        self.params = params or LMTowerParams()
        self.history: list[dict] = []

    def fit(self, ctx: FitContext, text: np.ndarray) -> "LanguageTower":
        """``text``: (n_items, d) LM embeddings of every item's text."""
        p = self.params
        torch.manual_seed(ctx.seed)  # initial weights from the run's seed, whatever ran before
        item_text = torch.from_numpy(text.astype(np.float32)).to(ctx.device)
        item_text = F.normalize(item_text, dim=1)  # pooled LM states vary in norm; the direction is the content
        user_text = torch.from_numpy(history_means(ctx.data.matrix("train"), item_text.cpu().numpy())).to(ctx.device)
        self.user_net = mlp([text.shape[1], p.hidden, p.out_dim], nn.ReLU).to(ctx.device)
        self.item_net = mlp([text.shape[1], p.hidden, p.out_dim], nn.ReLU).to(ctx.device)
        self._user_text, self._item_text = user_text, item_text
        modules = nn.ModuleDict({"user": self.user_net, "item": self.item_net})

        def step(users, pos, neg):
            u = self.user_net(user_text[users])
            logit_pos = (u * self.item_net(item_text[pos])).sum(1)
            logit_neg = (u * self.item_net(item_text[neg])).sum(1)
            bce = F.binary_cross_entropy_with_logits(
                torch.cat([logit_pos, logit_neg]), torch.cat([torch.ones_like(logit_pos), torch.zeros_like(logit_neg)])
            )
            decay = sum(w.pow(2).sum() for w in modules.parameters())
            return bce + p.reg * decay / len(users)

        fit_with_early_stopping(self, ctx, modules, step, p)
        return self

    def finish(self, ctx: FitContext) -> None:
        self.user_out = self.user_net(self._user_text)
        self.item_out = self.item_net(self._item_text)

    def scorer(self) -> Scorer:
        return lambda users: self.user_out[users] @ self.item_out.T


@dataclass
class CoupledEmbeddings:
    """User and cold-item embeddings whose inner product is the coupled filter score."""

    users: np.ndarray  # (n_users, D)
    cold_items: np.ndarray  # (n_cold, D), rows in the order of ``cold_ids``
    cold_ids: np.ndarray  # item indices


def coupled_embeddings(collab: "ALDI | KNNTower | None", lm: LanguageTower | None, ctx: FitContext,
                       item_ids: torch.Tensor) -> CoupledEmbeddings:
    """Concatenate the sub-towers' user embeddings and their embeddings of ``item_ids``."""
    users, items = [], []
    with torch.no_grad():
        if collab is not None:
            users.append(collab.user_student)
            items.append(collab.item_vectors(ctx, item_ids) if isinstance(collab, KNNTower)
                         else collab.item_tower(ctx.content[item_ids]))
        if lm is not None:
            users.append(lm.user_out)
            items.append(lm.item_out[item_ids])
    if not users:
        raise ValueError("the coupled filter needs at least one sub-tower")
    to_np = lambda parts: np.ascontiguousarray(torch.cat(parts, 1).float().cpu().numpy())  # noqa: E731
    return CoupledEmbeddings(users=to_np(users), cold_items=to_np(items), cold_ids=item_ids.cpu().numpy())


class InnerProductViaL2:
    """Inner-product search answered by an L2 index over the users with one extra coordinate.

    The filter ranks by inner product, and users' vectors differ in norm; IVF's clusters assume a
    metric, which raw inner product over such vectors is not. Each user gains sqrt(R^2 - |u|^2)
    (R: the largest user norm), each query a 0, so the nearest user in L2 is the one with the
    largest inner product (Bachrach et al., 2014). Measured on a million users by
    ``benchmarks/faiss_scale.py``, this is what lets IVF reach the recall of exact search at a
    fraction of its time. The scores returned are the exact inner products of the users found.
    """

    def __init__(self, index, users: np.ndarray):
        self.index, self.users = index, users

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        _, ids = self.index.search(np.hstack([queries, np.zeros((len(queries), 1), np.float32)]), k)
        scores = np.einsum("qkd,qd->qk", self.users[np.maximum(ids, 0)], queries)
        scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        order = np.argsort(-scores, axis=1, kind="stable")  # rounding in L2 may swap near-ties
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def build_index(vectors: np.ndarray, kind: str = "flat", nlist: int = 1024, nprobe: int = 32,
                hnsw_m: int = 32, hnsw_ef_search: int = 256):
    """A FAISS inner-product index over ``vectors``: exact, or approximate for large user sets.

    The approximate defaults come from ``benchmarks/faiss_scale.py`` on a million users
    (``results/scale/faiss.json``): IVF through the L2 reduction, 1024 lists, 32 probed (above 0.95
    recall of the exact top-20 at both widths measured, 64 and 200); HNSW on inner product directly
    (the reduction hurts a graph), M=32, efSearch=256, the first setting above 0.95 at both.
    """
    import faiss  # here, not at the top: the refiner's stages run where only torch is installed

    dim = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "ivf":
        sq = np.einsum("ij,ij->i", vectors, vectors)
        extra = np.sqrt(np.maximum(sq.max() - sq, 0.0)).astype(np.float32)[:, None]
        reduced = np.ascontiguousarray(np.hstack([vectors, extra]), dtype=np.float32)
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim + 1), dim + 1, min(nlist, len(vectors)), faiss.METRIC_L2)
        index.train(reduced)
        index.add(reduced)
        index.nprobe = nprobe
        return InnerProductViaL2(index, vectors)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = hnsw_ef_search
    else:
        raise ValueError(f"filter.index {kind!r} must be flat, ivf or hnsw")
    index.add(vectors)
    return index


def top_users(emb: CoupledEmbeddings, k: int, index_kind: str = "flat") -> pd.DataFrame:
    """The K highest-scoring users of every cold item: columns item, user, rank, score."""
    index = build_index(emb.users, index_kind)
    k = min(k, len(emb.users))
    scores, users = index.search(emb.cold_items, k)
    out = pd.DataFrame({
        "item": np.repeat(emb.cold_ids, k),
        "user": users.ravel().astype(np.int64),
        "rank": np.tile(np.arange(k), len(emb.cold_ids)),
        "score": scores.ravel().astype(np.float32),
    })
    # an approximate index marks the slots it could not fill with user -1: never a candidate
    missing = out["user"] < 0
    if missing.any():
        log.warning("filter.index=%s found fewer than K=%d users for %d of %d slots; raise its probes",
                    index_kind, k, int(missing.sum()), len(out))
    return out[~missing].reset_index(drop=True)


def random_users(n_users: int, cold_ids: np.ndarray, k: int, seed: int = 0) -> pd.DataFrame:
    """The random-filter ablation: K distinct random users per cold item."""
    rng = np.random.default_rng(seed)
    k = min(k, n_users)
    users = np.stack([rng.choice(n_users, k, replace=False) for _ in cold_ids]) if len(cold_ids) else np.empty((0, k))
    return pd.DataFrame({"item": np.repeat(cold_ids, k), "user": users.ravel().astype(np.int64),
                         "rank": np.tile(np.arange(k), len(cold_ids)), "score": np.zeros(users.size, np.float32)})


def funnel_coverage(candidates: pd.DataFrame, truth: np.ndarray) -> dict[str, float]:
    """How many candidate pairs of the items in ``truth`` are real, and how much of ``truth`` they keep.

    ``truth``: (n, 2) array of (user, item) held-out cold pairs. Only the candidates of items that
    appear in ``truth`` count: the candidates of another part's items (cold validation vs cold
    test) are a disjoint set of items that cannot hold any of its pairs.
    """
    items = np.unique(truth[:, 1]) if len(truth) else np.empty(0, np.int64)
    scoped = candidates[candidates["item"].isin(items)]
    if not len(scoped):
        return {"pairs": 0, "precision": 0.0, "coverage": 0.0}
    key = lambda u, i: np.asarray(u, np.int64) * (1 << 32) + np.asarray(i, np.int64)  # noqa: E731
    real = np.isin(key(scoped["user"], scoped["item"]), key(truth[:, 0], truth[:, 1]))
    return {"pairs": int(len(scoped)), "precision": float(real.mean()),
            "coverage": float(real.sum() / len(truth))}


def read_candidates(path: str, user_ids: np.ndarray, item_ids: np.ndarray, cold_items: np.ndarray) -> pd.DataFrame:
    """Candidates from a CSV (user,item[,answer] in raw ids): item, user, rank, score[, answer].

    Every user and item must be known and every item cold; the first offending line is named.
    Rows keep the file's order within an item (its rank).
    """
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise ValueError(f"filter.file {path}: cannot be read ({err})") from None
    missing = {"user", "item"} - set(frame.columns)
    if missing:
        raise ValueError(f"filter.file {path}: missing column(s) {sorted(missing)}")
    users = pd.Index(user_ids.astype(str)).get_indexer(frame["user"].str.strip())
    items = pd.Index(item_ids.astype(str)).get_indexer(frame["item"].str.strip())
    cold = np.zeros(len(item_ids), bool)
    cold[cold_items] = True
    for what, bad in (("unknown user", users < 0), ("unknown item", items < 0),
                      ("item is not cold", (items >= 0) & ~cold[np.maximum(items, 0)])):
        if bad.any():
            line = int(np.flatnonzero(bad)[0])
            raise ValueError(f"filter.file {path}, line {line + 2}: {what} {frame.iloc[line].to_dict()}")
    out = pd.DataFrame({"item": items.astype(np.int64), "user": users.astype(np.int64)})
    out["rank"] = out.groupby("item").cumcount()
    out["score"] = np.float32(0.0)
    if "answer" in frame:
        out["answer"] = frame["answer"].to_numpy()
    return out.drop_duplicates(["item", "user"]).reset_index(drop=True)
