"""The one-pass simulator: an item's text in, a distribution over every user out.

The pairwise funnel asks a language model about each (user, item) pair, ~K calls per new item.
Here the item's text is read once: its language-model vector goes through an MLP into the
backbone's space, and a *user-vocabulary head* (one row per user, initialised from the backbone's
user embeddings, trained) turns it into a score for every user. Training uses warm items only:

* cross-entropy over all users for each warm training pair (the item's users are the targets),
* an alignment loss pulling the item's mapped vector toward its behaviour embedding, so the head's
  rows stay in the space the backbone's users live in.

For a cold item the head's top-K users become its simulated interactions (all accepted: there is
no judge), and the same update stage gives it an embedding. The top-K search goes through FAISS
like the filter's (the head's bias is one more coordinate), so it scales the same way.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..baselines.base import FitContext, fit_with_early_stopping
from ..checkpoint import load_optimizer, optimizer_tensors, save_tensors
from ..early_stopping import EarlyStopping
from ..evaluate import Scorer
from ..hparams import OnePassParams
from ..layers import mlp
from ..utils import read_safetensors, read_safetensors_metadata
from .filter import CoupledEmbeddings
from .text_encoder import TextEncoder

log = logging.getLogger(__name__)


class OnePass:
    name = "onepass"

    def __init__(self, params: OnePassParams | None = None):
        self.params = params or OnePassParams()
        self.history: list[dict] = []
        # the seconds the epochs taken from a checkpoint cost in earlier sessions: the stage adds them
        # to its own, so a resumed fit reports what the whole fit cost, not what its last session did
        self.earlier_seconds = 0.0

    def fit(self, ctx: FitContext, text: np.ndarray | None, encoder: TextEncoder | None = None,
            texts: list[str] | None = None, checkpoint: Path | None = None, fingerprint: str = "") -> "OnePass":
        """``text``: (n_items, d) frozen vectors of every item's text; or, with ``encoder``, the item
        ``texts`` read by it (trained with the head unless it is frozen). ``checkpoint``: where an
        end-to-end fit keeps its place after every epoch (resumed only under the same ``fingerprint``)."""
        self.encoder, self.checkpoint, self.fingerprint = encoder, checkpoint, fingerprint
        if encoder is None:
            self._build(ctx, text)
            return self._fit_vectors(ctx)
        self._ids = encoder.tokenize(list(texts))
        # with adapters on the top layers only, the frozen layers below read each text once, here:
        # the statistics, the start and every epoch after begin from what they made of it
        with encoder.frozen_states_kept(self._ids):
            if encoder.spec.standardize:
                encoder.standardize_on(self._ids)
            self._build(ctx, encoder.encode_ids(self._ids).cpu().numpy())  # a frozen encoder's vectors; the tuned start
            return self._fit_vectors(ctx) if encoder.spec.tune == "frozen" else self._fit_text(ctx)

    def _build(self, ctx: FitContext, text: np.ndarray) -> None:
        p = self.params
        torch.manual_seed(ctx.seed)
        self._text = F.normalize(torch.from_numpy(text.astype(np.float32)).to(ctx.device), dim=1)
        dim = ctx.user_emb.shape[1]
        self.net = mlp([self._text.shape[1], p.hidden, dim], nn.ReLU).to(ctx.device)
        self.head = nn.Linear(dim, ctx.user_emb.shape[0]).to(ctx.device)
        with torch.no_grad():  # scores start as the backbone's user-item scores of the mapped text
            self.head.weight.copy_(ctx.user_emb)
            self.head.bias.zero_()

    def _fit_vectors(self, ctx: FitContext) -> "OnePass":
        p = self.params
        item_text, behaviour = self._text, ctx.item_emb
        modules = nn.ModuleDict({"net": self.net, "head": self.head})
        if p.batching == "items":
            targets = ItemTargets(ctx)
            step = lambda items: self._item_loss(self.net(item_text[items]), items, targets, ctx)  # noqa: E731
            fit_with_early_stopping(self, ctx, modules, step, p,
                                    batches=lambda rng: targets.batches(rng.permutation(targets.items), p.batch_items))
            return self

        def step(users, pos, neg):  # negatives unused: the softmax runs over every user
            z = self.net(item_text[pos])
            ce = F.cross_entropy(self.head(z), users)
            align = (z - behaviour[pos]).pow(2).sum(1).mean()
            decay = sum(w.pow(2).sum() for w in self.net.parameters())
            return ce + p.align * align + p.reg * decay / len(users)

        fit_with_early_stopping(self, ctx, modules, step, p)
        return self

    def _item_loss(self, z: torch.Tensor, items: torch.Tensor, targets: "ItemTargets", ctx: FitContext) -> torch.Tensor:
        """The pair loss summed over each item's training users, from one row of logits per item: the
        cross-entropy of every (item, user) pair, the item's alignment weighted by its pair count,
        both averaged over the batch's pairs (what a batch of those pairs would give)."""
        logp = F.log_softmax(self.head(z), dim=1)
        rows, users, counts = targets.of(items)
        ce = -logp[rows, users].sum()
        align = (counts * (z - ctx.item_emb[items]).pow(2).sum(1)).sum()
        decay = sum(w.pow(2).sum() for w in self.net.parameters())
        return (ce + self.params.align * align) / counts.sum() + self.params.reg * decay / len(items)

    def _fit_text(self, ctx: FitContext) -> "OnePass":
        """End to end: batches of warm items (length-sorted, visited in random order), each item's
        text encoded, mapped and scored against every user, its training users the targets; the
        same loss per (item, user) pair as the vector path, and the same early stop on cold
        validation after each epoch."""
        p, encoder = self.params, self.encoder
        targets = ItemTargets(ctx)
        warm = targets.items
        order = warm[np.argsort([len(self._ids[i]) for i in warm], kind="stable")]
        batches = [order[s:s + p.batch_items] for s in range(0, len(order), p.batch_items)]
        opt = torch.optim.Adam([{"params": [*self.net.parameters(), *self.head.parameters()], "lr": p.lr},
                                {"params": encoder.trainable(), "lr": p.text_lr}])
        rng = np.random.default_rng(ctx.seed)
        stopper = EarlyStopping(p.patience)
        state = lambda: {"net": {k: v.clone() for k, v in self.net.state_dict().items()},  # noqa: E731
                         "head": {k: v.clone() for k, v in self.head.state_dict().items()},
                         "encoder": encoder.trained_state()}
        start_epoch = self._resume(opt, rng, stopper)
        bar = tqdm(range(start_epoch, p.epochs), desc="fit onepass (text)", unit="epoch", initial=start_epoch,
                   total=p.epochs)
        for epoch in bar:
            if stopper.done:  # a resumed fit that had already stopped
                break
            start, total, pairs = time.perf_counter(), 0.0, 0
            encoder.train()
            for b in rng.permutation(len(batches)):
                items = batches[b]
                z = self.net(F.normalize(encoder([self._ids[i] for i in items]), dim=1))
                items = torch.as_tensor(items, device=ctx.device)
                loss = self._item_loss(z, items, targets, ctx)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                n = targets.pairs(items)
                total, pairs = total + loss.item() * n, pairs + n
            encoder.eval()
            with torch.no_grad():
                self._text = F.normalize(encoder.encode_ids(self._ids), dim=1)
                self.finish(ctx)
                score = ctx.validator.evaluate(self.scorer(), ctx.device)["cold"][ctx.metric]
            record = {"epoch": epoch + 1, "loss": total / max(pairs, 1), "seconds": time.perf_counter() - start,
                      "val_cold": score}
            self.history.append(record)
            bar.set_postfix(loss=round(record["loss"], 4), val_cold=round(score, 4))
            stopper.update(score, epoch + 1, state())
            self._save(state(), opt, rng, stopper)
            if stopper.done:
                break
        best = stopper.best_state
        self.net.load_state_dict(best["net"])
        self.head.load_state_dict(best["head"])
        encoder.load_trained_state(best["encoder"])
        encoder.eval()
        with torch.no_grad():
            self._text = F.normalize(encoder.encode_ids(self._ids), dim=1)
            self.finish(ctx)
        return self

    # -- the end-to-end fit's checkpoint: current and best weights, the optimiser, the shuffling RNG,
    # the stopper and the history, written after every epoch, all or nothing -----------------------
    def _save(self, current: dict, opt: torch.optim.Optimizer, rng: np.random.Generator, stopper: EarlyStopping) -> None:
        if self.checkpoint is None:
            return
        tensors = {f"{when}.{part}.{k}": v for when, parts in (("current", current), ("best", stopper.best_state))
                   for part, weights in parts.items() for k, v in weights.items()}
        meta = {"fingerprint": self.fingerprint, "history": json.dumps(self.history),
                "rng": json.dumps(rng.bit_generator.state),
                "stopper": json.dumps({"best_score": stopper.best_score, "best_step": stopper.best_step,
                                       "bad": stopper.bad})}
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        save_tensors({**tensors, **optimizer_tensors(opt)}, self.checkpoint, metadata=meta)

    def _resume(self, opt: torch.optim.Optimizer, rng: np.random.Generator, stopper: EarlyStopping) -> int:
        """The epoch to start at: 0, or where a checkpoint of the same fit left off (loaded)."""
        path = self.checkpoint
        if path is None or not path.exists():
            return 0
        meta = read_safetensors_metadata(path)
        if meta.get("fingerprint") != self.fingerprint:
            log.warning("%s belongs to another fit; starting from the first epoch", path)
            return 0
        tensors = read_safetensors(path)

        def weights(when: str, part: str) -> dict[str, torch.Tensor]:
            prefix = f"{when}.{part}."
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        self.net.load_state_dict(weights("current", "net"))
        self.head.load_state_dict(weights("current", "head"))
        self.encoder.load_trained_state(weights("current", "encoder"))
        load_optimizer(opt, tensors)
        rng.bit_generator.state = json.loads(meta["rng"])
        for key, value in json.loads(meta["stopper"]).items():
            setattr(stopper, key, value)
        stopper.best_state = {part: weights("best", part) for part in ("net", "head", "encoder")}
        self.history = json.loads(meta["history"])
        self.earlier_seconds = sum(h["seconds"] for h in self.history)
        log.info("one-pass fit resumed after epoch %d", len(self.history))
        return len(self.history)

    def finish(self, ctx: FitContext) -> None:
        self.item_out = self.net(self._text)

    def scorer(self) -> Scorer:
        return lambda users: self.head.weight[users] @ self.item_out.T + self.head.bias[users, None]

    @torch.no_grad()
    def embeddings(self, item_ids: torch.Tensor) -> CoupledEmbeddings:
        """Users and items whose inner product is the head's score (the bias as a last coordinate)."""
        users = torch.cat([self.head.weight, self.head.bias[:, None]], 1)
        items = self.item_out[item_ids]
        items = torch.cat([items, torch.ones(len(items), 1, device=items.device)], 1)
        to_np = lambda t: np.ascontiguousarray(t.float().cpu().numpy())  # noqa: E731
        return CoupledEmbeddings(users=to_np(users), cold_items=to_np(items), cold_ids=item_ids.cpu().numpy())


class ItemTargets:
    """Each warm item's training users, for losses that score an item once against every user."""

    def __init__(self, ctx: FitContext):
        train = ctx.data.matrix("train").tocsc()
        self.device = ctx.device
        self.items = np.array([i for i in ctx.data.warm_items if train.indptr[i + 1] > train.indptr[i]], dtype=np.int64)
        self._indptr = torch.as_tensor(train.indptr, dtype=torch.long)
        self._users = torch.as_tensor(train.indices, dtype=torch.long)

    def batches(self, order: np.ndarray, size: int):
        for s in range(0, len(order), size):
            yield (torch.as_tensor(order[s:s + size], device=self.device),)

    def pairs(self, items: torch.Tensor) -> int:
        items = items.cpu()
        return int((self._indptr[items + 1] - self._indptr[items]).sum())

    def of(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row in the batch, user) of every training pair of ``items``, and each item's pair count."""
        cpu = items.cpu()
        starts, counts = self._indptr[cpu], self._indptr[cpu + 1] - self._indptr[cpu]
        rows = torch.repeat_interleave(torch.arange(len(cpu)), counts)
        offsets = torch.arange(int(counts.sum())) - torch.repeat_interleave(counts.cumsum(0) - counts, counts)
        users = self._users[torch.repeat_interleave(starts, counts) + offsets]
        return rows.to(self.device), users.to(self.device), counts.to(self.device, torch.float32)
