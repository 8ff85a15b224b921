"""The update stage: cold items get behaviour rows from their accepted simulated pairs.

The prior they start from (content-KNN, the filter's own content mapping, or a blend: chosen on
cold validation with ``update.prior: best``), the candidate depth (``update.k_grid``, fixed or
scaled by predicted popularity), the fast cold-rows update or a retraining, and the evaluation of
what was saved. The update's arithmetic is ``funnel.update``; this module wires it to a run.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from ..backbones import build_backbone, load_backbone, train_backbone
from ..backbones.train import load_embeddings
from ..config import ConfigError
from ..evaluate import Evaluator, embedding_scorer, subset_scorer
from ..run import Run, content_vectors
from ..utils import atomic_path, resolve_device, write_json
from .fitted_update import FittedUpdate
from .update import (FastParams, augmented_train, fit_cold_rows, item_depths, knn_prior, prior_candidates)


UPDATE_MODES, PRIORS, INITS = ("fast", "retrain"), ("knn", "none", "best"), ("scratch", "backbone")


def _check_update(cfg) -> None:
    for key, allowed in (("mode", UPDATE_MODES), ("prior", PRIORS), ("init", INITS),
                         ("select_on", ("cold", "overall", "warm"))):
        if getattr(cfg.update, key) not in allowed:
            raise ConfigError(f"update.{key} {getattr(cfg.update, key)!r} must be one of {allowed}")


def content_prior(run: Run, user_emb: torch.Tensor, item_emb: torch.Tensor) -> torch.Tensor:
    """The cold items' content-KNN rows in the backbone's output space (``data.cold_items`` order);
    zeros with ``update.prior: none``."""
    cold = torch.as_tensor(run.data.cold_items)
    if run.cfg.update.prior == "none":
        return item_emb.new_zeros((len(cold), item_emb.shape[1]))
    content = torch.as_tensor(content_vectors(run), dtype=torch.float32)
    return knn_prior(content, item_emb.cpu(), torch.as_tensor(run.data.warm_items), cold,
                     run.cfg.update.prior_k).to(item_emb.device)


def chosen_prior(run: Run, user_emb: torch.Tensor, item_emb: torch.Tensor,
                 validate: Callable[[torch.Tensor], float]) -> tuple[str, torch.Tensor, dict[str, float]]:
    """The name and rows of the prior the update starts from and, with ``update.prior: best``, each
    candidate's validation score (content-KNN, the filter's mapping, their blends; the best is kept,
    ties to content-KNN)."""
    knn = content_prior(run, user_emb, item_emb)
    if run.cfg.update.prior != "best":
        return run.cfg.update.prior, knn, {}
    path = run.layout.filter_prior
    mapped = load_file(str(path))["cold"].to(item_emb.device, item_emb.dtype) if path.exists() else None
    cold = torch.as_tensor(run.data.cold_items, device=item_emb.device)
    candidates, scores = prior_candidates(knn, mapped), {}
    for name, rows in candidates.items():
        table = item_emb.clone()
        table[cold] = rows
        scores[name] = validate(table)
    best = max(scores, key=scores.get)
    return best, candidates[best], scores


def validation_candidates(data, among: str) -> np.ndarray:
    """The items cold validation ranks (``update.val_candidates``)."""
    if among == "cold":
        return data.cold_items
    if among == "split":
        return np.unique(data.matrix("cold_val").indices)
    # blind: every cold item but the test part's, so items with no held-out user compete as in the test
    return np.setdiff1d(data.cold_items, data.matrix("cold_test").indices)


def cold_validation(run: Run, user_emb: torch.Tensor, device) -> Callable[[torch.Tensor], np.ndarray]:
    """``items -> per-user validation metric`` (``eval.metric``, setting ``update.select_on``) of a
    table of item rows scored against the backbone's users.

    With ``select_on: cold`` the ranking holds ``update.val_candidates``: the validation part's own
    cold items (``split``), those and the cold items no held-out part names (``blind``), or every
    cold item. Only without the test part's items is the score blind to where test items rank, which
    a choice made on validation must be: with every cold item a state that lowers test items lifts
    validation.
    """
    cfg, data = run.cfg, run.data
    setting, metric = cfg.update.select_on, cfg.eval.metric
    validator = Evaluator(data, "val", cfg.eval.ks, cfg.eval.batch_size, settings=(setting,))
    among = validation_candidates(data, cfg.update.val_candidates)

    def per_user(items: torch.Tensor) -> np.ndarray:
        scorer = (subset_scorer(user_emb, items, among) if setting == "cold" else embedding_scorer(user_emb, items))
        return validator.per_user(scorer, device)[setting][metric]

    return per_user


def paired_gain_z(after: np.ndarray, before: np.ndarray) -> float:
    """The mean per-user gain of ``after`` over ``before`` in standard errors of that mean (0 when
    nothing differs; +inf when every user gains the same positive amount)."""
    diff = np.asarray(after, np.float64) - np.asarray(before, np.float64)
    if len(diff) < 2 or not diff.any():
        return 0.0
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    return float(diff.mean() / se) if se > 0 else float(np.sign(diff.mean()) * np.inf)


def within_depth(pairs: pd.DataFrame, ranks: pd.DataFrame, depth: int | pd.Series) -> pd.DataFrame:
    """The ``pairs`` among each item's top-``depth`` candidates of the filter (``ranks``: its
    candidates' item, user and rank); ``depth`` one number, or one per item (a Series indexed by item)."""
    limit = depth if np.isscalar(depth) else ranks["item"].map(depth).to_numpy()
    kept = ranks[ranks["rank"].to_numpy() < limit][["item", "user"]]
    return pairs.merge(kept, on=["item", "user"], how="inner")


def predicted_popularity(run: Run) -> np.ndarray:
    """Each cold item's predicted number of users: the mean training degree of its ``update.prior_k``
    most text-similar warm items, the content-KNN rule of the prior."""
    data = run.data
    degree = torch.as_tensor(np.asarray(data.matrix("train").sum(0)).ravel(), dtype=torch.float32)[:, None]
    return knn_prior(torch.as_tensor(content_vectors(run), dtype=torch.float32), degree,
                     torch.as_tensor(data.warm_items), torch.as_tensor(data.cold_items),
                     run.cfg.update.prior_k).squeeze(1).numpy()


def update_fingerprint(run: Run) -> str:
    """The update's inputs: its simulated pairs, the backbone it starts from and its settings (a
    retraining killed under one learning rate must not be resumed under another)."""
    digest = hashlib.sha256(run.fingerprint("update").encode())
    for path in (run.layout.simulated, run.layout.backbone_best):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def update_stage(run: Run) -> dict[str, Any]:
    cfg, data = run.cfg, run.data
    folder = run.layout.update
    _check_update(cfg)
    with run.stage("update") as rec:
        simulated = pd.read_parquet(run.layout.simulated)
        accepted = simulated[simulated["accepted"]]
        device = resolve_device(cfg.backbone.device)
        user_emb, item_emb = load_backbone(run.layout.backbone, data).to(device).embeddings()
        per_user = cold_validation(run, user_emb, device)

        def validate(items: torch.Tensor) -> float:
            return float(per_user(items).mean())

        # a retraining chooses too: its prior is where the service's later items start (and, with
        # update.init=backbone, where the cold rows start)
        name, prior, prior_scores = chosen_prior(run, user_emb, item_emb, validate)
        prior = prior.to(device)
        if prior_scores:
            rec.update(prior=name, prior_search=prior_scores)
        folder.mkdir(parents=True, exist_ok=True)
        fingerprint = update_fingerprint(run)
        if cfg.update.mode == "retrain":
            train = augmented_train(data.matrix("train"), simulated)
            model = build_backbone(cfg.backbone, train, seed=cfg.seed)
            if cfg.update.init == "backbone":
                warm_start(model, run, prior)
            # the update's own budget, not the backbone's
            ucfg = dataclasses.replace(cfg, backbone=dataclasses.replace(
                cfg.backbone, epochs=cfg.update.epochs, lr=cfg.update.retrain_lr,
                eval_every=cfg.update.eval_every, patience=cfg.update.patience))
            result = train_backbone(model, data, ucfg, folder, train=train, select=cfg.update.select_on,
                                    validate_first=True, fingerprint=fingerprint)
            user_out, item_out = load_embeddings(folder)
            rec.update(best_epoch=result.best_epoch, best_val=result.best_score, train_pairs=int(train.nnz),
                       history=result.history)
            # a retraining has no steps to repeat for a later item: it gets the fast update's budget
            fitted = FittedUpdate(prior=name, prior_k=cfg.update.prior_k, cap=cfg.filter.k,
                                  params=FastParams.from_config(cfg.update, cfg.seed))
        else:  # only the cold items' rows move; the backbone's users and warm items stay as trained
            params = FastParams.from_config(cfg.update, cfg.seed)
            depths = sorted(set(cfg.update.k_grid))
            if depths and depths[-1] > cfg.filter.k:
                raise ConfigError(f"update.k_grid {cfg.update.k_grid}: every depth must be <= filter.k={cfg.filter.k}")
            searched, popular = [], None
            ranks = pd.read_parquet(run.layout.candidates, columns=["item", "user", "rank"]) if depths else None
            if depths and cfg.update.depth == "popularity":
                popular = predicted_popularity(run)
                rec["predicted_popularity_mean"] = float(popular.mean())
            for depth in depths or [None]:
                per_item = depth if popular is None else pd.Series(item_depths(popular, depth, cfg.filter.k),
                                                                   index=data.cold_items)
                pairs = accepted if depth is None else within_depth(accepted, ranks, per_item)
                result = fit_cold_rows(user_emb, item_emb, prior, data.cold_items, pairs, params, validate=validate)
                searched.append((depth, len(pairs), result))
            depth, used, result = max(searched, key=lambda s: s[2].best_score)  # the first of equals: the shallowest
            at_prior = per_user(result.start)  # every depth starts at the same prior
            gain_z = paired_gain_z(per_user(result.item_emb), at_prior)
            if result.best_step and gain_z <= cfg.update.min_gain_se:  # a gain within validation's noise
                rec.update(searched_step=result.best_step, searched_val=result.best_score)
                result = dataclasses.replace(result, item_emb=result.start, best_step=0,
                                             best_score=float(at_prior.mean()))
            user_out, item_out = user_emb, result.item_emb
            rec.update(best_step=result.best_step, best_val=result.best_score, gain_z=gain_z, history=result.history)
            fitted = FittedUpdate(prior=name, prior_k=cfg.update.prior_k, depth=depth, cap=cfg.filter.k,
                                  popularity_mean=float(popular.mean()) if popular is not None else None,
                                  params=dataclasses.replace(params, steps=result.best_step))
            if depths:
                rec.update(k=depth, used_pairs=used,
                           k_search=[{"k": d, "pairs": n, "best_val": r.best_score, "best_step": r.best_step}
                                     for d, n, r in searched])
        fitted.save(run.layout.update_choices)
        with atomic_path(run.layout.embeddings) as tmp:
            save_file({"user": user_out.float().cpu().contiguous(), "item": item_out.float().cpu().contiguous()},
                      str(tmp), metadata={"fingerprint": fingerprint})
        rec.update(accepted_pairs=len(accepted), fingerprint=fingerprint)
    return evaluate_coldllm(run)


def warm_start(model, run: Run, prior: torch.Tensor) -> None:
    """Load the trained backbone's weights; the cold rows (never trained) take the prior.

    The prior lives in the output space; a cold item has no edge in the training graph, so its
    output is its ego row times the model's ``isolated_scale`` (1 for MF, 1/(layers+1) for
    LightGCN). Dividing by it makes the backbone on its training graph score cold items exactly as
    the prior does; the simulated edges then move them.
    """
    weights = load_file(str(run.layout.backbone_best))
    model.load_state_dict({k: v for k, v in weights.items() if not k.startswith(("optim.", "rng."))})
    scale = model.isolated_scale()
    if scale is None:
        raise ConfigError(f"update.init=backbone: no prior start for {model.name}; use update.init=scratch")
    with torch.no_grad():
        model.item.weight[run.data.cold_items] = (prior / scale).to(model.item.weight.dtype).to(model.item.weight.device)


def updated_embeddings(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """User and item representations after the update, exactly as it validated them."""
    tensors = load_file(str(run.layout.embeddings))
    return tensors["user"], tensors["item"]


def evaluate_coldllm(run: Run, split: str = "test") -> dict[str, Any]:
    with run.stage(f"evaluate_coldllm_{split}") as rec:
        device = resolve_device(run.cfg.backbone.device)
        user_emb, item_emb = (t.to(device) for t in updated_embeddings(run))
        evaluator = Evaluator(run.data, split, run.cfg.eval.ks, run.cfg.eval.batch_size)
        metrics = evaluator.evaluate(embedding_scorer(user_emb, item_emb), device)
        write_json(run.layout.metrics(split, "coldllm"), metrics)
        rec["metrics"] = metrics
    return metrics
