"""The one training loop every backbone shares: BPR epochs, validation, early stopping, resume.

The checkpoint is one safetensors file (weights, optimiser moments, torch RNG) whose metadata holds
the trainer state (epoch, best score, history, the sampler's RNG state). It is replaced atomically
once per epoch, so a run killed at any moment resumes from its last finished epoch and reproduces
the uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

import torch
from tqdm.auto import tqdm

from ..checkpoint import load_optimizer, optimizer_tensors, save_tensors
from ..config import BackboneConfig, RunConfig
from ..data import BPRSampler, ColdStartData
from ..early_stopping import EarlyStopping
from ..evaluate import Evaluator, embedding_scorer
from ..utils import read_safetensors, read_safetensors_metadata, resolve_device, write_json
from .base import Backbone

log = logging.getLogger(__name__)
# The backbone never sees a cold item, so it is selected on the warm validation set.
SELECT_SETTING = "warm"


@dataclass
class TrainResult:
    best_epoch: int = -1
    best_score: float = -1.0
    epoch: int = 0  # epochs finished
    bad_rounds: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    sampler_state: dict | None = None
    fingerprint: str = ""  # identity of the inputs and settings this training belongs to


def decayed_lr(lr: float, decay: float, history: list[dict], key: str) -> float:
    """The learning rate after ``history``: ``lr`` times ``decay`` for every validation (``key``)
    that did not improve on the best before it."""
    replay = EarlyStopping(patience=len(history) + 1)  # the trainer's own rule of what improves
    misses = sum(not replay.update(record[key], record["epoch"]) for record in history if key in record)
    return lr * decay ** misses


def save_backbone(model: Backbone, folder: Path, name: str = "best") -> None:
    """Weights, and the representations they give on the graph the model was trained on.

    ``<name>_embeddings.safetensors`` is what was validated: a graph model rebuilt on another
    graph (the training part alone, without simulated pairs) would score differently.
    """
    save_tensors(dict(model.state_dict()), folder / f"{name}.safetensors")
    user_emb, item_emb = model.embeddings()
    save_tensors({"user": user_emb, "item": item_emb}, folder / f"{name}_embeddings.safetensors")
    meta = {"model": model.name, **asdict(model.cfg), "n_users": model.n_users, "n_items": model.n_items}
    write_json(folder / "backbone.json", meta)


def load_embeddings(folder: Path, name: str = "best") -> tuple[torch.Tensor, torch.Tensor]:
    """The user and item representations saved with a checkpoint (see ``save_backbone``)."""
    tensors = read_safetensors(folder / f"{name}_embeddings.safetensors")
    return tensors["user"], tensors["item"]


def load_backbone(folder: Path, data: ColdStartData, name: str = "best") -> Backbone:
    """Rebuild a trained backbone from ``<folder>/backbone.json`` and its safetensors weights."""
    from . import build_backbone

    meta = json.loads((folder / "backbone.json").read_text())
    if (meta["n_users"], meta["n_items"]) != (data.n_users, data.n_items):
        raise ValueError(f"{folder}: checkpoint is for {meta['n_users']}x{meta['n_items']}, "
                         f"data is {data.n_users}x{data.n_items}")
    cfg = BackboneConfig(**{k: v for k, v in meta.items() if k not in ("n_users", "n_items")})
    # the saved weights replace any start: a spectral one would be an SVD computed for nothing
    model = build_backbone(replace(cfg, init="normal"), data.matrix("train"))
    model.cfg = cfg
    weights = read_safetensors(folder / f"{name}.safetensors")
    model.load_state_dict({k: v for k, v in weights.items() if not k.startswith("optim.")})
    return model


def train_backbone(
    model: Backbone, data: ColdStartData, cfg: RunConfig, folder: Path, resume: bool = True,
    train: sp.csr_matrix | None = None, select: str = SELECT_SETTING, validate_first: bool = False,
    fingerprint: str = "",
) -> TrainResult:
    """Train ``model`` with BPR; the best weights (on validation setting ``select``) go to ``folder``.

    ``train`` defaults to the dataset's training part; the update stage passes training plus
    simulated interactions. Negatives are drawn from the items that have training pairs.
    ``validate_first``: the starting weights are validated too (epoch 0), so a start that no
    epoch improves on is what is kept. ``fingerprint``: the identity of the inputs and settings;
    a checkpoint with another fingerprint is never resumed (it belongs to other inputs).
    """
    folder.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.backbone.device)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.backbone.lr)
    train = data.matrix("train") if train is None else train
    candidates = np.flatnonzero(np.diff(train.tocsc().indptr) > 0)
    sampler = BPRSampler(train, candidates=candidates, seed=cfg.seed)
    validator = Evaluator(data, "val", cfg.eval.ks, cfg.eval.batch_size, settings=(select,))
    metric = cfg.eval.metric
    last_path = folder / "last.safetensors"

    result = TrainResult(fingerprint=fingerprint)
    saved = None
    if resume and last_path.exists():
        saved = TrainResult(**json.loads(read_safetensors_metadata(last_path)["trainer_state"]))
        if saved.fingerprint != fingerprint:
            log.warning("%s belongs to other inputs or settings; training from the start", last_path)
            saved = None
    if saved is not None:
        result = saved
        tensors = read_safetensors(last_path)
        model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(("optim.", "rng."))})
        load_optimizer(opt, {k: v.to(device) for k, v in tensors.items() if k.startswith("optim.")})
        torch.set_rng_state(tensors["rng.torch"])
        sampler.rng.bit_generator.state = result.sampler_state
        log.info("resumed from epoch %d (best %s=%.4f at %d)", result.epoch, metric,
                 result.best_score, result.best_epoch)
    else:
        torch.manual_seed(cfg.seed)

    # the stopping state lives in ``result`` too: it is what the checkpoint saves and a resume reads
    stopper = EarlyStopping(cfg.backbone.patience, result.best_score, result.best_epoch, result.bad_rounds)

    key = f"val_{select}_{metric}"

    def set_lr() -> None:
        # derived from the validation history alone, so a resumed run steps at the rate it left off at
        for group in opt.param_groups:
            group["lr"] = decayed_lr(cfg.backbone.lr, cfg.backbone.lr_decay, result.history, key)

    def validate(epoch: int) -> float:
        user_emb, item_emb = model.embeddings()
        score = validator.evaluate(embedding_scorer(user_emb, item_emb), device)[select][metric]
        if stopper.update(score, epoch):
            save_backbone(model, folder, "best")  # the best weights are kept on disk, not in memory
        result.best_score, result.best_epoch, result.bad_rounds = stopper.best_score, stopper.best_step, stopper.bad
        return score

    if validate_first and result.epoch == 0 and not result.history:
        result.history.append({"epoch": 0, key: validate(0)})
    set_lr()

    bcfg = cfg.backbone
    bar = tqdm(range(result.epoch, bcfg.epochs), desc=f"train {model.name}", unit="epoch",
               initial=result.epoch, total=bcfg.epochs)
    for epoch in bar:
        if stopper.done:
            break
        start = time.perf_counter()
        model.train()
        total, batches = 0.0, 0
        for users, pos, neg in sampler.epoch(bcfg.batch_size):
            loss = model.bpr_loss(*(torch.from_numpy(a).to(device) for a in (users, pos, neg)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, batches = total + loss.item(), batches + 1
        record = {"epoch": epoch + 1, "loss": total / max(batches, 1)}
        if (epoch + 1) % bcfg.eval_every == 0 or epoch + 1 == bcfg.epochs:
            record[key] = validate(epoch + 1)
        result.seconds += time.perf_counter() - start
        record["seconds"] = round(result.seconds, 2)  # training and validation so far: the time to any epoch
        result.epoch = epoch + 1
        result.history.append(record)
        set_lr()
        bar.set_postfix({k: round(v, 4) for k, v in record.items() if k not in ("epoch", "seconds")})
        result.sampler_state = sampler.rng.bit_generator.state
        save_tensors({**model.state_dict(), **optimizer_tensors(opt), "rng.torch": torch.get_rng_state()},
                     last_path, metadata={"trainer_state": json.dumps(asdict(result))})
    bar.close()
    if result.best_epoch < 0:  # no validation ran (e.g. epochs < eval_every): keep the last weights
        save_backbone(model, folder, "best")
    return result
