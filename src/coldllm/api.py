"""A finished run as a recommender, with the face of implicit's models: load, recommend, add items.

    from coldllm.api import Recommender

    with Recommender.load("runs/citeulike-lightgcn") as rec:
        rec.recommend(["1", "2"], k=10, only="cold")       # per user: [(item id, score), ...]
        rec.add_items(["Graph neural networks for recommendation"], ids=["paper-new-1"])

It holds the objects ``coldllm serve`` holds (the run's backbone rows, the filter its filter stage
fitted, its judge, its update settings, the store of items added online), so what it answers is what
the service answers; nothing is fitted again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from .config import ConfigError
from .serve.online import NewItem, OnlineService

ONLY = ("all", "cold", "warm")


class Recommender:
    def __init__(self, service: OnlineService):
        self.service = service

    @classmethod
    def load(cls, run_dir: str | Path) -> "Recommender":
        """A finished run folder (its filter, simulate and update stages done)."""
        return cls(OnlineService(run_dir))

    @property
    def user_ids(self) -> list[str]:
        return [str(u) for u in self.service.data.user_ids]

    def recommend(self, user_ids: Iterable[str], k: int = 20, only: str = "all") -> list[list[tuple[str, float]]]:
        """The ``k`` best items of each user, their training items left out; ``only`` = cold (new
        items: the run's cold items and those added online) | warm | all."""
        if only not in ONLY:
            raise ConfigError(f"only={only!r} must be one of {list(ONLY)}")
        if k < 1:
            raise ConfigError(f"k={k} must be >= 1")
        out = []
        for user in user_ids:
            index = self.service.user_index(str(user))
            if index is None:
                raise ConfigError(f"user {user!r} is not a user of this run")
            out.append(self.service.recommend(index, k, only))
        return out

    def add_items(self, texts: list[str], ids: list[str] | None = None,
                  fields: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """New items through the run's funnel (filter, judge, update), stored, then recommendable.
        Returns per item its id, the simulated users with P(Yes) and whether each was accepted."""
        ids = ids if ids is not None else [f"new-{self.service.index.n_items + n}" for n in range(len(texts))]
        if len(ids) != len(texts) or (fields is not None and len(fields) != len(texts)):
            raise ConfigError(f"{len(texts)} texts need as many ids (got {len(ids)}) and fields")
        items = [NewItem(id=str(i), text=t, fields=(fields or [{}] * len(texts))[n])
                 for n, (i, t) in enumerate(zip(ids, texts))]
        return [{"id": a.item.id, "users": a.item.users, "p_yes": a.item.p_yes, "accepted": a.item.accepted}
                for a in self.service.add(items)]

    def close(self) -> None:
        self.service.close()

    def __enter__(self) -> "Recommender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
