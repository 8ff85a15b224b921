"""The filters (``filter.towers``), one class each, registered against their declarations in
``coldllm.components``.

A filter is fitted on the run's warm items (``fit``: its cold items' top-K users, the warm items'
own top-K as the judge's hard negatives, and whatever scores a new item later), saved by the filter
stage (``save``: candidates, the fitted towers, the content mapping the update may start from), and
loaded by whoever scores new items (``load``: ``FilterTowers``, whose ``apply`` gives a new text's
top users with no refit).
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from ..baselines.aldi import ALDI
from ..baselines.base import FitContext
from ..components import FILTERS, Declared
from ..config import ConfigError
from ..layout import RunLayout
from ..report.model_card import write_encoder_card
from ..run import Run
from ..utils import atomic_path
from .filter import KNNTower, LanguageTower, LMTowerParams, coupled_embeddings, random_users, read_candidates, \
    top_users
from .inputs import llm_text_vectors, params
from .onepass import OnePass, OnePassParams
from .text_encoder import TextEncoder, TextEncoderSpec
from .towers import FilterTowers, load_towers, save_towers
from .update import to_backbone

NO_PAIRS = {"item": [], "user": [], "rank": [], "score": []}


@dataclass
class FilterFit:
    """What a fitted filter gives the stage to save."""

    candidates: pd.DataFrame  # item, user, rank, score[, answer]: the cold items' top-K users
    warm: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(NO_PAIRS))  # warm items' top-K
    towers: dict[str, Any] | None = None  # save_towers' keyword arguments: what scores a new item
    mapped: torch.Tensor | None = None  # the cold items' content mapping in the backbone's space
    record: dict[str, Any] = field(default_factory=dict)  # for the stage's manifest record


class Filter:
    """Base of the filters: ``fit`` (per kind), ``save`` and ``load`` (shared)."""

    declared: ClassVar[Declared]

    def __init__(self, run: Run):
        self.run, self.cfg = run, run.cfg

    def fit(self, ctx: FitContext) -> FilterFit:
        raise NotImplementedError

    def save(self, fit: FilterFit, layout: RunLayout) -> None:
        layout.filter.mkdir(parents=True, exist_ok=True)
        for frame, path in ((fit.candidates, layout.candidates), (fit.warm, layout.warm_candidates)):
            with atomic_path(path) as tmp:
                frame.to_parquet(tmp)
        # what the filter fitted, for new items later (the service loads it, never fits it again);
        # never a file left by a filter of other settings
        layout.filter_towers.unlink(missing_ok=True)
        if fit.towers is not None:
            save_towers(layout.filter_towers, self.declared.name, **fit.towers)
        layout.filter_prior.unlink(missing_ok=True)
        if fit.mapped is not None:
            with atomic_path(layout.filter_prior) as tmp:
                save_file({"cold": fit.mapped.detach().float().cpu().contiguous()}, str(tmp))

    @staticmethod
    def load(layout: RunLayout, warm_content: np.ndarray, index_kind: str = "flat") -> FilterTowers:
        return load_towers(layout.filter_towers, warm_content, index_kind)


class _Towers(Filter):
    """The coupled filter and its one-tower ablations: sub-towers whose scores add up."""

    collab_tower: ClassVar[bool] = True
    lm_tower: ClassVar[bool] = True

    def fit(self, ctx: FitContext) -> FilterFit:
        cfg = self.cfg
        collab = lm = None
        if self.collab_tower:
            collab = (ALDI(cfg.filter.collab).fit(ctx) if cfg.filter.collab_source == "aldi"
                      else KNNTower(ctx, cfg.update.prior_k))
        if self.lm_tower:
            lm = LanguageTower(params(LMTowerParams, cfg.filter.lm, "filter.lm")).fit(ctx, llm_text_vectors(self.run))
        cold_emb, warm_emb = (coupled_embeddings(collab, lm, ctx, ids) for ids in (ctx.cold, ctx.warm))
        if cfg.filter.normalize_users:
            for emb in (cold_emb, warm_emb):
                emb.users = emb.users / np.maximum(np.linalg.norm(emb.users, axis=1, keepdims=True), 1e-12)
        projection = mapped = None
        if isinstance(collab, ALDI):  # the student's cold scores, mapped into the backbone's space
            projection = to_backbone(ctx.user_emb, collab.user_student)
            mapped = collab.cold_student @ projection.T
        parts = {**({"aldi": collab.item_tower} if isinstance(collab, ALDI) else {}),
                 **({"lm": lm.item_net} if lm is not None else {})}
        towers = dict(users=cold_emb.users, parts=parts,
                      knn_items=ctx.item_emb[ctx.warm] if isinstance(collab, KNNTower) else None,
                      knn_k=cfg.update.prior_k, to_backbone=projection)
        # the same filter on warm items gives on-topic non-interacted users: hard negatives
        return FilterFit(top_users(cold_emb, cfg.filter.k, cfg.filter.index),
                         warm=top_users(warm_emb, cfg.filter.k, cfg.filter.index), towers=towers, mapped=mapped)


@FILTERS.implement("coupled")
class CoupledFilter(_Towers):
    pass


@FILTERS.implement("collab")
class CollabFilter(_Towers):
    lm_tower = False


@FILTERS.implement("lm")
class LMFilter(_Towers):
    collab_tower = False


@FILTERS.implement("onepass")
class OnePassFilter(Filter):
    def fit(self, ctx: FitContext) -> FilterFit:
        cfg, run = self.cfg, self.run
        p = params(OnePassParams, cfg.filter.onepass, "filter.onepass")
        # whatever an earlier filter of the run left is gone before this one fits: the service loads what is there
        shutil.rmtree(run.layout.text_encoder, ignore_errors=True)
        if p.encoder == "text":  # the item text through a language model that learns with the head
            spec = TextEncoderSpec(model=p.text_model or cfg.filter.text_model, tune=p.tune, pooling=p.pooling,
                                   max_length=p.max_length, lora_r=p.lora_r, lora_targets=tuple(p.lora_targets),
                                   standardize=p.standardize, lora_layers=p.lora_layers)
            encoder = TextEncoder(spec, cfg.content.cache_dir, ctx.device)
            simulator = OnePass(p).fit(ctx, None, encoder, list(run.data.item_text),
                                       checkpoint=run.layout.onepass_checkpoint, fingerprint=run.fingerprint("filter"))
            encoder.save(run.layout.text_encoder)
            write_encoder_card(run.layout.text_encoder, spec=dataclasses.asdict(spec), dataset=cfg.data.name,
                               history=simulator.history, commit=run.manifest["commit"])
        elif p.encoder == "vectors":
            simulator = OnePass(p).fit(ctx, llm_text_vectors(run))
        else:
            raise ConfigError(f"filter.onepass.encoder {p.encoder!r} must be vectors or text")
        # the head's bias is one number per user: it moves no user's ranking of the items, so it is left out
        projection = to_backbone(ctx.user_emb, simulator.head.weight)
        emb = simulator.embeddings(ctx.cold)
        if p.degree_penalty:  # in the bias coordinate: the saved users carry it, so the service ranks alike
            emb.users[:, -1] -= degree_penalty(simulator, ctx, p.degree_penalty)
        return FilterFit(top_users(emb, cfg.filter.k, cfg.filter.index),
                         towers=dict(users=emb.users, parts={"onepass": simulator.net}, to_backbone=projection),
                         mapped=simulator.item_out[ctx.cold] @ projection.T,
                         record={"onepass_history": simulator.history,
                                 **({"earlier_seconds": simulator.earlier_seconds} if simulator.earlier_seconds else {})})


def degree_penalty(simulator: OnePass, ctx: FitContext, strength: float, sample: int = 2000) -> np.ndarray:
    """Each user's penalty: ``strength`` standard deviations of the head's scores (over the first
    ``sample`` warm items and every user) times log(1 + the user's training interactions)."""
    with torch.no_grad():
        spread = float(simulator.head(simulator.item_out[ctx.warm[:sample]]).std())
    degree = np.asarray(ctx.data.matrix("train").sum(1)).ravel()
    return (strength * spread * np.log1p(degree)).astype(np.float32)


@FILTERS.implement("random")
class RandomFilter(Filter):
    def fit(self, ctx: FitContext) -> FilterFit:
        data = self.run.data
        return FilterFit(random_users(data.n_users, data.cold_items, self.cfg.filter.k, self.cfg.seed),
                         towers=dict(users=np.zeros((data.n_users, 1), np.float32), parts={}))


@FILTERS.implement("file")
class FileFilter(Filter):
    def fit(self, ctx: FitContext) -> FilterFit:
        if not self.cfg.filter.file:
            raise ConfigError("filter.file: a path is needed with filter.towers=file")
        data = self.run.data
        return FilterFit(read_candidates(self.cfg.filter.file, data.user_ids, data.item_ids, data.cold_items))


def build_filter(run: Run) -> Filter:
    return FILTERS.implementation(run.cfg.filter.towers)(run)

