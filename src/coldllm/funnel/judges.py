"""The judges (``refiner.judge``), one class each, registered against their declarations in
``coldllm.components``, and the rules of those that need no language model.

A judge is fitted when it learns (``fit``: the LoRA judge's fine-tuning, ``llm_judge``), decides
every candidate pair of the run's cold items (``apply``, the simulate stage) and, when it can judge
an item it never saw (the ``servable`` ones), is loaded for the service (``load``: an object whose
``verdicts`` judges one new item's candidates the way ``apply`` judged the run's).

* ``cosine``: a free judge. Each candidate pair scores the cosine between the item's text vector
  and the mean text vector of the user's history (as the prompt shows it); each item keeps the
  ``keep`` share of its candidates that score highest.
* ``activity``: a free judge. Each item keeps the ``keep`` share of its candidates with the most
  training interactions. Within one item's candidates the filter's own score barely tells the
  users who take it from those who do not, while how much each user does tells them apart well
  (on MovieLens-1M's cold candidates, AUC within an item .73 against the filter's .56): the rule
  any learned judge should beat.
* ``oracle``: a diagnostic that *reads held-out labels*. A real held-out pair is accepted with
  probability r, any other candidate with probability f (seeded). Sweeping (r, f) gives the
  update's response to the precision and recall of what it is fed; it never selects a model.
* ``file``: verdicts read from a file (the ``answer`` column of the released reference outputs).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import numpy as np
import pandas as pd

from ..components import JUDGES, Declared
from ..config import ConfigError, RunConfig
from ..data import ColdStartData
from ..layout import RunLayout
from ..run import Run, content_vectors
from .inputs import judge_histories


def pair_keys(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    return np.asarray(users, np.int64) * (1 << 32) + np.asarray(items, np.int64)


def is_real(pairs: pd.DataFrame, truth: np.ndarray) -> np.ndarray:
    """Whether each (user, item) row is one of the held-out pairs ``truth`` (n, 2)."""
    return np.isin(pair_keys(pairs["user"], pairs["item"]), pair_keys(truth[:, 0], truth[:, 1]))


def cosine_judge(users: np.ndarray, items: np.ndarray, histories: list[np.ndarray], vectors: np.ndarray) -> np.ndarray:
    """cos(text(item), mean text of the user's history) for each pair (0 for an empty history)."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    means = np.stack([unit[h].mean(0) if len(h) else np.zeros(unit.shape[1], unit.dtype) for h in histories])
    means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return np.einsum("nd,nd->n", means[np.asarray(users)], unit[np.asarray(items)])


def keep_best(pairs: pd.DataFrame, scores: np.ndarray, keep: float) -> pd.DataFrame:
    """user, item, p_yes (``scores``), accepted: the top ``keep`` share of each item's candidates
    (ties go to the earlier row, the filter's better rank)."""
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"refiner.keep must be in (0, 1], got {keep}")
    out = pairs[["user", "item"]].copy()
    out["p_yes"] = np.asarray(scores, np.float32)
    rank = out.groupby("item")["p_yes"].rank(ascending=False, method="first")
    size = out.groupby("item")["p_yes"].transform("size")
    out["accepted"] = rank <= np.ceil(keep * size)
    return out


def cosine_verdicts(candidates: pd.DataFrame, histories: list[np.ndarray], vectors: np.ndarray,
                    keep: float) -> pd.DataFrame:
    """user, item, p_yes (the cosine), accepted (top ``keep`` share of each item's candidates)."""
    return keep_best(candidates, cosine_judge(candidates["user"].to_numpy(), candidates["item"].to_numpy(),
                                              histories, vectors), keep)


def activity_verdicts(candidates: pd.DataFrame, counts: np.ndarray, keep: float) -> pd.DataFrame:
    """user, item, p_yes (log(1 + the user's training interactions): a score, not a probability),
    accepted (the ``keep`` share of each item's candidates that do the most)."""
    return keep_best(candidates, np.log1p(np.asarray(counts, np.float64)[candidates["user"].to_numpy()]), keep)


def oracle_verdicts(candidates: pd.DataFrame, truth: np.ndarray, r: float, f: float, seed: int) -> pd.DataFrame:
    """Accept real pairs (rows of ``truth``) with probability ``r``, the others with ``f``."""
    for name, value in (("oracle_r", r), ("oracle_f", f)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"refiner.{name} must be in [0, 1], got {value}")
    out = candidates[["user", "item"]].copy()
    real = is_real(out, truth)
    draw = np.random.default_rng(seed).random(len(out))
    out["accepted"] = np.where(real, draw < r, draw < f)
    out["p_yes"] = out["accepted"].astype(np.float32)
    return out


def file_verdicts(candidates: pd.DataFrame) -> pd.DataFrame:
    """Accept the pairs whose ``answer`` column says Yes."""
    if "answer" not in candidates:
        raise ValueError("refiner.judge=file needs filter.towers=file with an `answer` column in filter.file")
    yes = candidates["answer"].astype(str).str.strip().str.lower().eq("yes")
    return candidates[["user", "item"]].assign(p_yes=yes.astype(np.float32), accepted=yes.to_numpy())


class OnlineJudge(Protocol):
    def verdicts(self, users: np.ndarray, text: str, vector: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p_yes, accepted) for each candidate user of one item with ``text`` and content ``vector``."""


class JudgeComponent:
    """Base of the judges: nothing to fit, nothing to serve unless a judge says otherwise."""

    declared: ClassVar[Declared]

    def __init__(self, run: Run):
        self.run, self.cfg = run, run.cfg

    def fit(self) -> dict[str, Any]:
        """Learn what the judge needs (the finetune stage); the report of what it learned."""
        return {}

    def apply(self, candidates: pd.DataFrame, record: dict[str, Any]) -> pd.DataFrame:
        """user, item, p_yes, accepted for every candidate pair (``record``: the stage's manifest entry)."""
        raise NotImplementedError

    @classmethod
    def load(cls, cfg: RunConfig, layout: RunLayout, data: ColdStartData, content: np.ndarray) -> OnlineJudge:
        raise ConfigError(f"refiner.judge={cls.declared.name}: it reads labels a new item does not have; serve a "
                          f"run judged by {', '.join(JUDGES.names('servable'))}")


class AcceptAll:
    def verdicts(self, users, text, vector):
        return np.ones(len(users), np.float32), np.ones(len(users), bool)


class OnlineCosine:
    """The cosine rule on one new item: its candidates' history items and the new item, renumbered,
    go through ``cosine_verdicts`` itself (a small local problem instead of the whole catalogue)."""

    def __init__(self, histories: list[np.ndarray], content: np.ndarray, keep: float):
        self.histories, self.content, self.keep = histories, content, keep

    def verdicts(self, users, text, vector):
        if not len(users):
            return np.zeros(0, np.float32), np.zeros(0, bool)
        items, local = np.unique(np.concatenate([self.histories[u] for u in users]), return_inverse=True)
        bounds = np.cumsum([0] + [len(self.histories[u]) for u in users])
        histories = [local[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        vectors = np.vstack([self.content[items], np.asarray(vector, np.float32)[None]])
        pairs = pd.DataFrame({"user": np.arange(len(users)), "item": len(items)})
        out = cosine_verdicts(pairs, histories, vectors, self.keep)
        return out["p_yes"].to_numpy(np.float32), out["accepted"].to_numpy(bool)


class OnlineActivity:
    def __init__(self, counts: np.ndarray, keep: float):
        self.counts, self.keep = counts, keep

    def verdicts(self, users, text, vector):
        pairs = pd.DataFrame({"user": np.asarray(users, np.int64), "item": 0})
        out = activity_verdicts(pairs, self.counts, self.keep)
        return out["p_yes"].to_numpy(np.float32), out["accepted"].to_numpy(bool)


def training_counts(data: ColdStartData) -> np.ndarray:
    """Each user's number of training interactions."""
    return np.diff(data.matrix("train").indptr)


@JUDGES.implement("all")
class AllJudge(JudgeComponent):
    """The no-refiner ablation: every filtered pair becomes an interaction."""

    def apply(self, candidates, record):
        return candidates[["user", "item"]].assign(p_yes=1.0, accepted=True)

    @classmethod
    def load(cls, cfg, layout, data, content):
        return AcceptAll()


@JUDGES.implement("cosine")
class CosineJudge(JudgeComponent):
    def apply(self, candidates, record):
        return cosine_verdicts(candidates, judge_histories(self.run, self.cfg), content_vectors(self.run),
                               self.cfg.refiner.keep)

    @classmethod
    def load(cls, cfg, layout, data, content):
        return OnlineCosine(judge_histories(data, cfg), content, cfg.refiner.keep)


@JUDGES.implement("activity")
class ActivityJudge(JudgeComponent):
    def apply(self, candidates, record):
        return activity_verdicts(candidates, training_counts(self.run.data), self.cfg.refiner.keep)

    @classmethod
    def load(cls, cfg, layout, data, content):
        return OnlineActivity(training_counts(data), cfg.refiner.keep)


@JUDGES.implement("oracle")
class OracleJudge(JudgeComponent):
    """A diagnostic: reads the held-out cold pairs."""

    def apply(self, candidates, record):
        data = self.run.data
        truth = np.concatenate([data.parts["cold_val"], data.parts["cold_test"]])
        return oracle_verdicts(candidates, truth, self.cfg.refiner.oracle_r, self.cfg.refiner.oracle_f, self.cfg.seed)


@JUDGES.implement("file")
class FileJudge(JudgeComponent):
    def apply(self, candidates, record):
        return file_verdicts(candidates)


def build_judge(run: Run) -> JudgeComponent:
    return JUDGES.implementation(run.cfg.refiner.judge)(run)


def load_online_judge(cfg: RunConfig, layout: RunLayout, data: ColdStartData, content: np.ndarray) -> OnlineJudge:
    """The run's judge, for new items (the service)."""
    return JUDGES.implementation(cfg.refiner.judge).load(cfg, layout, data, content)
