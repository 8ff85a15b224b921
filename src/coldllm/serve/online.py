"""The funnel for items that arrive one at a time, over a finished run.

A new item goes through the run's own stages, reduced to that item: its text is encoded as the
run encoded its catalogue; the run's filter scores every user and keeps the top K; the run's judge
accepts some of them; and the fast update fits that item's row alone (users and every other item
frozen), starting from the prior the run's update chose (content-KNN, the filter's content mapping or
a blend) and pulled towards it as ``fit_cold_rows`` pulls the run's cold items. The row is stored,
then published to the recommendation index.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..config import ConfigError
from ..content import build_encoder, encode_texts
from ..funnel.text_encoder import CONFIG as TEXT_ENCODER_CONFIG, TextEncoder
from ..components import FILTERS
from ..funnel.filters import Filter
from ..funnel.inputs import lm_text_config
from ..funnel.judges import load_online_judge
from ..funnel.fitted_update import FittedUpdate
from ..funnel.guard import centered
from ..funnel.llm_judge import fitted_guard
from ..layout import RunLayout
from ..normalize import TextNormalizer
from ..utils import now_iso, read_safetensors, read_safetensors_metadata
from .index import RecommendationIndex
from .runs import check_finished, read_artifact_parquet, read_manifest, run_config, run_data
from .store import ItemStore, StoredItem

log = logging.getLogger(__name__)


class SteeringText(ValueError):
    """A new item's text lifts the judge's P(Yes) for every reference user far beyond what its
    content predicts: it flatters the judge instead of describing the item (``funnel.guard``)."""

    def __init__(self, item_id: str, position: int, z: float, limit: float):
        super().__init__(f"item {item_id!r}: its text lifts the judge's P(Yes) for the reference users {z:.1f} "
                         f"spreads above what its content predicts (refiner.guard_z={limit:g}); describe the "
                         "item instead of addressing the judge")
        self.position, self.z = position, z


class DuplicateItem(ValueError):
    def __init__(self, item_id: str, position: int | None = None):
        super().__init__(f"item {item_id!r} already exists")
        self.item_id, self.position = item_id, position


@dataclass
class NewItem:
    id: str
    text: str
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Added:
    item: StoredItem
    stages: dict[str, float]  # seconds per stage (filter, judge, update, store)


class LazyEncoder:
    """An encoder built by its first ``encode`` (on the caller's thread)."""

    def __init__(self, build):
        self._build, self._encoder = build, None

    def encode(self, texts: list[str]) -> np.ndarray:
        if self._encoder is None:
            self._encoder = self._build()
        return self._encoder.encode(texts)


class OnlineService:
    """Everything loaded once at start; ``add`` is serialised by the index's lock, reads are not."""

    def __init__(self, run_dir: Path | str):
        start = time.perf_counter()
        self.run_dir = Path(run_dir)
        self.layout = RunLayout(self.run_dir)
        manifest = read_manifest(self.run_dir)
        check_finished(self.run_dir, manifest)
        self.cfg = cfg = run_config(self.run_dir, manifest)
        self.name = self.run_dir.absolute().name
        self.data = data = run_data(self.run_dir, manifest, cfg)
        self.content = encode_texts(list(data.item_text), cfg.content)
        # the sentence encoder takes seconds to import and load and only a new item needs it: the first
        # new item loads it (under the write lock, so never beside another model's loading: that
        # patches torch process-wide, and a model built on another thread meanwhile comes out on the
        # meta device). Reads never wait for it.
        self.encoder = LazyEncoder(lambda: build_encoder(cfg.content))
        self.lm_text = self.lm_encoder = None
        if (self.layout.text_encoder / TEXT_ENCODER_CONFIG).is_file():
            # the one-pass simulator learned its own text encoder: new texts go through it, as the run's did
            self.lm_encoder = TextEncoder.load(self.layout.text_encoder, cfg.content.cache_dir)
        elif cfg.filter.towers in ("coupled", "lm", "onepass"):  # the towers that read the text model's vectors
            text_cfg = lm_text_config(cfg)
            self.lm_text = encode_texts(list(data.item_text), text_cfg)
            same = dataclasses.astuple(text_cfg) == dataclasses.astuple(cfg.content)
            self.lm_encoder = self.encoder if same else LazyEncoder(lambda: build_encoder(text_cfg))
        servable = FILTERS.names("scores_new_items")
        if cfg.filter.towers not in servable:
            raise ConfigError(f"filter.towers={cfg.filter.towers}: the run read its candidates from a file, which has "
                              f"none for a new item; serve a run whose filter scores users ({', '.join(servable)})")
        # the filter the run fitted and evaluated, loaded as its stage saved it (never fitted again)
        self.towers = Filter.load(self.layout, self.content[data.warm_items], cfg.filter.index)
        # what the run's update chose on validation (prior, depth, steps), applied to every new item
        self.update = FittedUpdate.load(self.layout.update_choices)
        if self.update.popularity_mean:  # the warm items' training degrees, whose content-KNN mean predicts it
            self.warm_degree = torch.as_tensor(np.asarray(data.matrix("train").sum(0)).ravel()[data.warm_items],
                                               dtype=torch.float32)[:, None]
        self.judge = load_online_judge(cfg, self.layout, data, self.content)
        # the LoRA judge's reference users: its verdicts are centred on them (refiner.center) and a text
        # that lifts them too far is refused (refiner.guard_z), as the run's simulation did
        r = cfg.refiner
        self.guard = (fitted_guard(cfg, self.layout, data, self.content, lambda: self.judge.p_yes_matrix)
                      if r.judge == "llm" and (r.center or r.guard_z > 0) else None)
        if self.guard is not None:
            self.guard.z = r.guard_z  # the refusal limit is the service's, not part of what was fitted
            # the same reference users are asked about every new item: their history prefixes are
            # computed here, once, so a new item pays only for its own title after each of them
            self.judge.keep_users(self.guard.users)
        # new texts are normalised before the funnel reads or stores them, capped in the judge's
        # tokens when it has a tokenizer (the language-model judge), in characters otherwise
        self.normalize = TextNormalizer(tokenizer=getattr(self.judge, "tokenizer", None))
        path = self.layout.embeddings
        tensors = read_safetensors(path)
        space = read_safetensors_metadata(path).get("fingerprint", "unknown")
        self.user_emb, base_items = tensors["user"].float(), tensors["item"].float()
        self.warm = torch.as_tensor(data.warm_items)
        self.warm_content = torch.as_tensor(self.content[data.warm_items], dtype=torch.float32)
        self.user_pos = {str(u): i for i, u in enumerate(data.user_ids)}
        self.item_pos = {str(i): n for n, i in enumerate(data.item_ids)}
        self.index = RecommendationIndex(self.user_emb.numpy(), base_items.numpy(), [str(i) for i in data.item_ids],
                                         data.is_cold, data.matrix("train"))
        self.run_simulated = self._run_simulated()
        self.online: dict[str, StoredItem] = {}
        self.store = ItemStore(self.layout.store, space, base_items.shape[1])
        stored = self.store.load()
        if stored:
            self._publish(stored)
        self.startup_seconds = time.perf_counter() - start
        log.info("serving run %s: %d users, %d items (%d added online), ready in %.1f s", self.name,
                 data.n_users, self.index.n_items, len(stored), self.startup_seconds)

    def _run_simulated(self) -> dict[int, pd.DataFrame]:
        """The run's own simulated users of its cold items (for ``item_info``)."""
        frame = read_artifact_parquet(self.layout.simulated)
        return {int(item): group for item, group in frame[frame["accepted"]].groupby("item")}

    # -- reads -----------------------------------------------------------------------------------
    def user_index(self, user_id: str) -> int | None:
        return self.user_pos.get(str(user_id))

    def recommend(self, user: int, k: int, only: str) -> list[tuple[str, float]]:
        return self.index.recommend(user, k, only)

    def item_info(self, item_id: str) -> dict[str, Any] | None:
        item = self.online.get(item_id)
        if item is not None:
            users = [{"user": u, "p_yes": p} for u, p, ok in zip(item.users, item.p_yes, item.accepted) if ok]
            return {"id": item.id, "source": "online", "cold": True, "text": item.text, "fields": item.fields,
                    "created": item.created, "candidates": len(item.users), "simulated_users": users}
        pos = self.item_pos.get(item_id)
        if pos is None:
            return None
        group = self.run_simulated.get(pos)
        users = [] if group is None else [{"user": str(self.data.user_ids[u]), "p_yes": float(p)}
                                          for u, p in zip(group["user"], group["p_yes"])]
        return {"id": item_id, "source": "run", "cold": bool(self.data.is_cold[pos]),
                "text": str(self.data.item_text[pos]), "simulated_users": users}

    def exists(self, item_id: str) -> bool:
        return item_id in self.online or item_id in self.item_pos

    # -- the one mutation ------------------------------------------------------------------------
    def add(self, items: list[NewItem]) -> list[Added]:
        """Run the funnel for ``items``, store them in one transaction, then make them recommendable.

        Raises ``DuplicateItem`` (before any work) when an id exists or repeats within ``items``.
        Each text is normalised first (``coldllm.normalize``): what is stored is what was judged.
        """
        items = [dataclasses.replace(item, text=self.normalize(item.text)) for item in items]
        for item in items:
            if not item.text:
                raise ValueError(f"item {item.id!r}: the text has no visible character")
        with self.index.lock:
            seen: set[str] = set()
            for n, item in enumerate(items):
                if self.exists(item.id) or item.id in seen:
                    raise DuplicateItem(item.id, n)
                seen.add(item.id)
            added = self._funnel(items)
            start = time.perf_counter()
            self.store.add([a.item for a in added])
            for a in added:
                a.stages["store"] = time.perf_counter() - start
            self._publish([a.item for a in added])
            return added

    def _funnel(self, items: list[NewItem]) -> list[Added]:
        clock = time.perf_counter
        t0 = clock()
        texts = [item.text for item in items]
        content = self.encoder.encode(texts)
        offsets = np.zeros(len(items))
        if self.guard is not None:  # before any candidate is found: a refused item costs only this
            offsets = self.guard.offsets(self.judge.p_yes_matrix, texts, content)
            z = offsets / self.guard.residual_sd
            for n, item in enumerate(items):
                if self.guard.z > 0 and z[n] > self.guard.z:
                    raise SteeringText(item.id, n, float(z[n]), self.guard.z)
        lm_text = None if self.lm_encoder is None else (
            content if self.lm_encoder is self.encoder else self.lm_encoder.encode(texts))
        first = self.index.n_items
        seeds = [self.cfg.seed + first + n for n in range(len(items))]  # the random filter's draws
        candidates = self.towers.top_users(self.towers.item_vectors(content, lm_text), self.update.candidates_needed, seeds)
        candidates = [(users[:d], scores[:d]) for (users, scores), d in zip(candidates, self.depths(content))]
        t1 = clock()
        verdicts = [self.judge.verdicts(users, text, vec) for (users, _), text, vec in zip(candidates, texts, content)]
        if self.guard is not None and self.cfg.refiner.center:
            verdicts = [centered(p, offset, self.judge.threshold) for (p, _), offset in zip(verdicts, offsets)]
        t2 = clock()
        rows = self._update(content, lm_text, candidates, verdicts, first)
        t3 = clock()
        out, now = [], now_iso()
        for n, item in enumerate(items):
            users, _ = candidates[n]
            p_yes, accepted = verdicts[n]
            stages = {"filter": (t1 - t0) / len(items), "judge": (t2 - t1) / len(items), "update": (t3 - t2) / len(items)}
            out.append(Added(StoredItem(id=item.id, text=item.text, fields=item.fields, embedding=rows[n],
                                        users=[str(self.data.user_ids[u]) for u in users],
                                        p_yes=[float(p) for p in p_yes], accepted=[bool(a) for a in accepted],
                                        created=now, seconds=round(t3 - t0, 4)), stages))
        return out

    def depths(self, content: np.ndarray) -> np.ndarray:
        """How many top candidates each new item keeps: the depth the run's update chose, scaled per
        item by its predicted popularity when the run's depths were (``update.depth: popularity``)."""
        predicted = (self.update.neighbours_mean(self.warm_content, self.warm_degree, content).squeeze(1).numpy()
                     if self.update.popularity_mean else None)
        return self.update.depths(predicted, len(content))

    def _update(self, content: np.ndarray, lm_text: np.ndarray | None, candidates, verdicts, first: int) -> np.ndarray:
        """New rows for the items, from their prior and their accepted users."""
        table = torch.from_numpy(self.index.item_rows())
        n = len(content)
        prior = self._prior(content, lm_text, table)
        ids = np.arange(first, first + n)
        pairs = pd.DataFrame({
            "user": np.concatenate([users[accepted] for (users, _), (_, accepted) in zip(candidates, verdicts)]
                                   + [np.zeros(0, np.int64)]).astype(np.int64),
            "item": np.concatenate([np.full(int(accepted.sum()), i) for i, (_, accepted) in zip(ids, verdicts)]
                                   + [np.zeros(0, np.int64)]).astype(np.int64),
            "p_yes": np.concatenate([p[accepted] for p, accepted in verdicts] + [np.zeros(0, np.float32)]),
        })
        # the new rows join the table at their prior; only they move, everything else is frozen
        return self.update.apply(self.user_emb, torch.cat([table, prior]), prior, ids, pairs).numpy()

    def _prior(self, content: np.ndarray, lm_text: np.ndarray | None, table: torch.Tensor) -> torch.Tensor:
        """The items' prior in the served space, the one the run's update chose for its cold items
        (content-KNN, the filter's own mapping, or their blend), computed the same way."""
        knn = self.update.neighbours_mean(self.warm_content, table[self.warm], content)
        mapped = self.towers.backbone_rows(content, lm_text) if self.update.prior not in ("knn", "none") else None
        return self.update.prior_rows(knn, mapped)

    def _publish(self, items: list[StoredItem]) -> None:
        self.index.add([i.id for i in items], np.stack([i.embedding for i in items]))
        for item in items:
            self.online[item.id] = item

    def close(self) -> None:
        self.store.close()
