"""The LoRA-tuned language-model judge (``refiner.judge: llm``) and the engines it judges on.

``fit`` is the finetune stage: warm Yes/No examples, the adapter saved as PEFT saves it (with a
model card), the judge measured on held-out users before and after, and the threshold the
simulation applies. ``apply`` judges every candidate pair through one of the engines
(``refiner.engine``), which all write the same fingerprinted shards, so a simulation started on one
resumes on another. ``load`` gives the service the same judge for new items.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..components import ENGINES, JUDGES, Declared
from ..config import ConfigError, RunConfig
from ..data import ColdStartData
from ..layout import RunLayout
from ..llm.judge import Judge
from ..llm.lora import LoraParams, add_lora, load_adapter, train_lora
from ..llm.models import load_llm, load_tokenizer, resolve_llm
from ..llm.prompts import PromptEncoder, PromptTemplate
from ..report.model_card import write_model_card
from ..run import Run, content_vectors
from ..utils import atomic_path, peak_memory_mb, resolve_device, write_json
from .guard import PYes, PYesGuard, centered_verdicts, reference_pairs
from .inputs import params, prompt_histories, prompt_template
from .judges import JudgeComponent
from .ray_judge import simulate_on_ray
from .refiner import Histories, best_threshold, example_parts, finetune_examples, flattered, item_examples, \
    judge_report, judge_sets, simulate, with_random_negatives
from .vllm_judge import VLLMJudge

log = logging.getLogger(__name__)


# -- engines -----------------------------------------------------------------------------------------
class Engine:
    """Where the judge's P(Yes) are computed: ``judge`` writes every missing shard of ``candidates``
    into ``shards`` and returns all verdicts (user, item, p_yes, accepted at ``threshold``)."""

    declared: ClassVar[Declared]

    def __init__(self, cfg: RunConfig, layout: RunLayout, template: PromptTemplate):
        self.cfg, self.layout, self.template = cfg, layout, template

    def judge(self, candidates: pd.DataFrame, histories: Histories, titles: np.ndarray, shards: Path,
              threshold: float, known: pd.DataFrame | None) -> pd.DataFrame:
        judge = self.pair_judge()
        return simulate(judge, candidates, histories, titles, shards, threshold, self.cfg.refiner.shard_users,
                        known=known)

    def pair_judge(self):
        raise NotImplementedError


@ENGINES.implement("local")
class LocalEngine(Engine):
    def pair_judge(self) -> Judge:
        cfg = self.cfg
        model, tokenizer = load_llm(cfg.refiner.model, cfg.content.cache_dir, resolve_device(cfg.refiner.device))
        # folded into the weights: judged as fast as the base model, P(Yes) equal within 1e-5
        model = load_adapter(model, self.layout.adapter, merge=True)
        return Judge(model, PromptEncoder(tokenizer, self.template), cfg.refiner.batch_size)


@ENGINES.implement("vllm")
class VLLMEngine(Engine):
    def pair_judge(self) -> VLLMJudge:  # imports vllm only when it runs
        cfg = self.cfg
        tokenizer = load_tokenizer(cfg.refiner.model, cfg.content.cache_dir)
        return VLLMJudge(resolve_llm(cfg.refiner.model, cfg.content.cache_dir), self.layout.adapter,
                         PromptEncoder(tokenizer, self.template), cfg.seed, **cfg.refiner.vllm)


@ENGINES.implement("ray")
class RayEngine(Engine):
    def judge(self, candidates, histories, titles, shards, threshold, known):  # imports ray only when it runs
        cfg = self.cfg
        if histories.per_pair:
            raise ConfigError("refiner.template.history=similar (one prompt prefix per pair) runs on the local or "
                              "vllm engine, not ray")
        histories = histories.items
        return simulate_on_ray(resolve_llm(cfg.refiner.model, cfg.content.cache_dir), self.layout.adapter,
                               self.template, candidates, histories, titles, shards, threshold,
                               cfg.refiner.shard_users, known=known, actors=cfg.refiner.ray_actors,
                               batch_size=cfg.refiner.batch_size, device=cfg.refiner.device)


# -- the judge ---------------------------------------------------------------------------------------
# the held-out sets each kind of fine-tuning examples (``refiner.examples``) is measured on
HELD_OUT_SETS = {"random": "per_user", "hard": "per_user", "candidates": "per_item"}


def _split_users(run: Run, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    train = run.data.matrix("train")
    eligible = np.flatnonzero(np.diff(train.indptr) >= 2)
    chosen = rng.permutation(eligible)
    n_train, n_eval = run.cfg.refiner.train_users, run.cfg.refiner.eval_users
    return np.sort(chosen[:n_train]), np.sort(chosen[n_train : n_train + n_eval])


def fingerprint(files, settings: Any) -> str:
    """What a judged artifact depends on: the bytes of ``files`` (a folder's entries that are not
    files count as empty) and the JSON of ``settings``."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes() if path.is_file() else b"")
    digest.update(json.dumps(settings).encode())
    return digest.hexdigest()[:16]


def known_verdicts(run: Run) -> pd.DataFrame | None:
    """P(Yes) already computed by the same judge in the runs named by ``refiner.verdicts_from``."""
    frames = []
    mine = run.layout.refiner.resolve()
    for name in run.cfg.refiner.verdicts_from:
        other = Path(run.cfg.runs_dir) / name
        if (other / "refiner").resolve() != mine:
            raise ConfigError(f"refiner.verdicts_from: run {name!r} used another judge ({(other / 'refiner').resolve()})")
        path = RunLayout(other).simulated
        if not path.exists():
            raise ConfigError(f"refiner.verdicts_from: {path} not found (run its simulate stage first)")
        # the judge's own P(Yes): a centred simulation keeps it as p_raw (its p_yes is read against
        # the item's offset, which this run takes off again)
        own = "p_raw" if "p_raw" in pq.read_schema(path).names else "p_yes"
        frames.append(pd.read_parquet(path, columns=["user", "item", own]).rename(columns={own: "p_yes"}))
    return pd.concat(frames, ignore_index=True).drop_duplicates(["user", "item"]) if frames else None


@JUDGES.implement("llm")
class LLMJudge(JudgeComponent):
    def fit(self) -> dict[str, Any]:
        run, cfg, data = self.run, self.cfg, self.run.data
        device = resolve_device(cfg.refiner.device)
        model, tokenizer = load_llm(cfg.refiner.model, cfg.content.cache_dir, device)
        prompts = PromptEncoder(tokenizer, prompt_template(cfg))
        titles = data.item_text
        similar = content_vectors(run) if prompts.template.history == "similar" else None
        examples, held_out = (self._item_sets if cfg.refiner.examples == "per_item" else self._user_sets)(
            prompts.template.max_history, similar)
        report: dict[str, Any] = {"device": str(device), "examples": cfg.refiner.examples,
                                  "train_examples": len(examples),
                                  "eval_examples": {k: len(v) for k, v in held_out.items()}}
        judge = Judge(model, prompts, cfg.refiner.batch_size)
        for name, p_yes in judge_sets(judge, held_out, titles).items():
            held_out[name]["p_before"] = p_yes
        lora = params(LoraParams, cfg.refiner.lora, "refiner.lora")
        peft_model = add_lora(model, lora)
        prefixes, suffixes, owner = example_parts(prompts, examples, titles)
        if cfg.refiner.augment:  # flattering text on positives and negatives alike: no label signal in it
            texts = flattered([titles[i] for i in examples["item"]], cfg.refiner.augment, cfg.seed)
            suffixes = [prompts.suffix(t) for t in texts]
        _, history = train_lora(peft_model, prefixes, suffixes, owner, examples["label"].to_numpy(),
                                prompts.yes_id, prompts.no_id, lora,
                                out_dir=run.layout.adapter, checkpoint=run.layout.refiner_checkpoint,
                                base=cfg.refiner.model, gradient_checkpointing=cfg.refiner.gradient_checkpointing)
        # the adapter is saved; merged, the held-out pairs are judged as the simulation judges them
        judge = Judge(peft_model.merge_and_unload(), prompts, cfg.refiner.batch_size)
        for name, p_yes in judge_sets(judge, held_out, titles).items():
            held_out[name]["p_after"] = p_yes
            with atomic_path(run.layout.held_out(name)) as tmp:
                held_out[name].to_parquet(tmp)
        for name in HELD_OUT_SETS.keys() - held_out.keys():  # never a set left by the other kind of examples
            run.layout.held_out(name).unlink(missing_ok=True)
        for when in ("before", "after"):
            report[when] = {k: judge_report(ex["label"].to_numpy(), ex[f"p_{when}"].to_numpy(),
                                            items=ex["item"].to_numpy() if k == "candidates" else None)
                            for k, ex in held_out.items()}
        tune_on = held_out["hard" if "hard" in held_out else "candidates"]  # the pairs most like the simulation's
        report["threshold"] = (best_threshold(tune_on["label"].to_numpy(), tune_on["p_after"].to_numpy())
                               if cfg.refiner.threshold == "tuned" else 0.5)
        report["lora"] = dataclasses.asdict(lora)
        report["loss_history"] = history
        report["peak_memory_mb"] = round(peak_memory_mb(), 1)
        # the simulation's input, in a file of its own: a report is for people and may change shape
        write_json(run.layout.threshold, {"threshold": report["threshold"]})
        write_json(run.layout.refiner_report, report)
        write_model_card(run.layout.adapter, base_model=cfg.refiner.model, dataset=cfg.data.name,
                         train_examples=report["train_examples"], eval_examples=report["eval_examples"],
                         settings=report["lora"], before=report["before"], after=report["after"],
                         threshold=report["threshold"], commit=run.manifest["commit"])
        return report

    def _user_sets(self, max_history: int, similar: np.ndarray | None):
        """``refiner.examples=per_user``: each training user's items against others (the paper's
        pairs), and held-out users measured twice on the same positives and histories: against
        random negatives (mostly off-topic, an easy topic test) and against the filter's own
        top-ranked non-interacted items (*hard*), judged in one pass, one prefix per user."""
        run, cfg, data = self.run, self.cfg, self.run.data
        train = data.matrix("train")
        rng = np.random.default_rng(cfg.seed)
        train_users, eval_users = _split_users(run, rng)
        warm_candidates = pd.read_parquet(run.layout.warm_candidates)
        hard_users = train_users[rng.random(len(train_users)) < cfg.refiner.hard_negatives]
        hard = warm_candidates[warm_candidates["user"].isin(hard_users)].sort_values(["user", "rank"])
        examples = finetune_examples(train, train_users, data.warm_items, max_history, cfg.seed, hard=hard,
                                     pairs=cfg.refiner.pairs_per_user, similar=similar)
        eval_hard = warm_candidates[warm_candidates["user"].isin(eval_users)].sort_values(["user", "rank"])
        hard_set = finetune_examples(train, eval_users, data.warm_items, max_history, cfg.seed + 1, hard=eval_hard,
                                     similar=similar)
        return examples, {"random": with_random_negatives(hard_set, train, data.warm_items, cfg.seed + 1, similar),
                          "hard": hard_set}

    def _item_sets(self, max_history: int, similar: np.ndarray | None):
        """``refiner.examples=per_item``: each training warm item's filter candidates, who took it
        against who did not; held out, every candidate of other warm items (*candidates*), the
        simulation's question on items the judge never trained on. Per-user pairs reward telling
        popular items from obscure ones, which no cold item's candidates ask."""
        cfg, train = self.cfg, self.run.data.matrix("train")
        warm_candidates = pd.read_parquet(self.run.layout.warm_candidates)
        order = np.random.default_rng(cfg.seed).permutation(np.unique(warm_candidates["item"].to_numpy()))
        n_train, n_eval = cfg.refiner.train_items, cfg.refiner.eval_items
        train_items, eval_items = np.sort(order[:n_train]), np.sort(order[n_train : n_train + n_eval])
        examples = item_examples(train, warm_candidates, train_items, max_history, cfg.seed,
                                 pairs=cfg.refiner.pairs_per_user, similar=similar)
        held_out = item_examples(train, warm_candidates, eval_items, max_history, cfg.seed + 1, pairs=None,
                                 similar=similar)
        return examples, {"candidates": held_out}

    def apply(self, candidates: pd.DataFrame, record: dict[str, Any]) -> pd.DataFrame:
        run, cfg = self.run, self.cfg
        record["device"] = str(resolve_device(cfg.refiner.device))
        template = prompt_template(cfg)
        threshold = json.loads(run.layout.threshold.read_text())["threshold"]
        known = known_verdicts(run)
        record["reused_verdicts"] = 0 if known is None else int(
            len(candidates.merge(known[["user", "item"]], on=["user", "item"])))
        content = content_vectors(run)
        histories = prompt_histories(run.data, cfg, content if template.history == "similar" else None)
        judged, guard = candidates, None
        if cfg.refiner.center:  # the reference users judge every item too: its offset (funnel.guard)
            # a second copy of the model only when the guard has not been fitted for this adapter yet
            guard = fitted_guard(cfg, run.layout, run.data, content,
                                 lambda: OnlineLLM(cfg, run.layout, histories, run.data.item_text).p_yes_matrix)
            judged = pd.concat([candidates[["user", "item"]], reference_pairs(candidates["item"].to_numpy(), guard.users)],
                               ignore_index=True).drop_duplicates(["user", "item"])
            record["reference_users"] = len(guard.users)
        # shards of other candidates, another judge or another sharding are never resumed: they live
        # in a folder named by the fingerprint of all three (not of the engine: shards written by
        # one engine resume under another)
        shards = run.layout.simulate / "shards" / fingerprint(
            (run.layout.candidates, *sorted(run.layout.adapter.glob("*"))),
            [dataclasses.asdict(template), threshold, cfg.refiner.shard_users, cfg.seed,
             None if guard is None else guard.users])
        record["shards"], record["engine"] = str(shards), cfg.refiner.engine
        if cfg.refiner.engine == "ray":
            record["ray_actors"] = cfg.refiner.ray_actors
        engine = ENGINES.implementation(cfg.refiner.engine)(cfg, run.layout, template)
        verdicts = engine.judge(judged, histories, run.data.item_text, shards, threshold, known)
        return verdicts if guard is None else centered_verdicts(verdicts, candidates, guard, content, threshold)

    @classmethod
    def load(cls, cfg: RunConfig, layout: RunLayout, data: ColdStartData, content: np.ndarray) -> "OnlineLLM":
        return OnlineLLM(cfg, layout, prompt_histories(data, cfg, content), data.item_text)


def fitted_guard(cfg: RunConfig, layout: RunLayout, data: ColdStartData, content: np.ndarray,
                 judge: Callable[[], PYes]) -> PYesGuard:
    """The judge's reference users and warm items (``funnel.guard``), fitted once per adapter and
    settings (``guard_items x guard_users`` judged prompts), then loaded: the batch simulation and
    the service read the same one. ``judge()`` gives the P(Yes) function, asked only to fit."""
    r = cfg.refiner
    key = fingerprint(sorted(layout.adapter.iterdir()) + [layout.threshold],
                      [r.guard_users, r.guard_items, cfg.seed, r.template])
    guard = PYesGuard.load(layout.guard, key)
    if guard is None:
        warm = data.warm_items
        log.info("fitting the judge's guard: %d reference users x %d warm items (once per adapter)",
                 r.guard_users, r.guard_items)
        guard = PYesGuard.fit(judge(), data.n_users, [data.item_text[i] for i in warm], content[warm],
                              r.guard_users, r.guard_items, seed=cfg.seed)
        guard.save(layout.guard, key)
    return guard


class OnlineLLM:
    """The run's base model with its adapter, prompt template and threshold, on one new item's
    candidates: each user's history prefix tokenised once, on first use."""

    def __init__(self, cfg: RunConfig, layout: RunLayout, histories: Histories, titles: np.ndarray):
        if not layout.adapter_config.exists() or not layout.threshold.exists():
            raise ConfigError(f"{layout.root}: refiner.judge=llm but the finetune stage left no adapter in "
                              f"{layout.adapter}")
        model, tokenizer = load_llm(cfg.refiner.model, cfg.content.cache_dir, resolve_device(cfg.refiner.device))
        # merged: the same weights as the adapter on top of the base, at the base model's speed
        model = load_adapter(model, layout.adapter, merge=True)
        self.prompts = PromptEncoder(tokenizer, prompt_template(cfg))
        self.threshold = float(json.loads(layout.threshold.read_text())["threshold"])
        self.judge = Judge(model, self.prompts, cfg.refiner.batch_size)
        self.histories, self.titles = histories, titles
        self.tokenizer = tokenizer  # the service caps new texts in its tokens
        self._prefixes: dict[int, list[int]] = {}

    def prefix(self, user: int, vector: np.ndarray | None) -> list[int]:
        if self.histories.per_pair:  # the user's items closest to this item: a prefix of its own
            return self.prompts.prefix([self.titles[i] for i in self.histories.of(user, vector)])
        if user not in self._prefixes:
            self._prefixes[user] = self.prompts.prefix([self.titles[i] for i in self.histories.of(user)])
        return self._prefixes[user]

    def keep_users(self, users) -> None:
        """Keep the history prefixes' key/value states of ``users`` (the guard's reference users, asked
        about every new item): their questions then cost only the item's own tokens. Nothing is
        kept when the template picks a user's history per item (there is no fixed prefix)."""
        if not self.histories.per_pair:
            self.judge.keep_prefixes({int(u): self.prefix(int(u), None) for u in users})

    def p_yes_matrix(self, users, texts: list[str], vectors: np.ndarray) -> np.ndarray:
        """P(Yes) of every text for every user, (len(texts), len(users)); a user's history prefix is
        computed once for all the texts unless the template picks histories per item, and not at all
        for a user whose prefix is kept (``keep_users``)."""
        users = [int(u) for u in users]
        if users and not self.histories.per_pair and self.judge.keeps(users):
            suffixes = [self.prompts.suffix(t) for t in texts]
            return np.stack([self.judge.p_yes_kept(u, suffixes) for u in users], axis=1).astype(np.float32)
        if self.histories.per_pair:  # one prefix per (text, user)
            prefixes = [self.prefix(u, np.asarray(v, np.float32)) for v in vectors for u in users]
            suffixes = [self.prompts.suffix(t) for t in texts for _ in users]
            p = self.judge.p_yes_grouped(prefixes, suffixes, np.arange(len(prefixes)))
            return np.asarray(p, np.float32).reshape(len(texts), len(users))
        prefixes = [self.prefix(u, np.asarray(vectors[0], np.float32)) for u in users]
        suffixes = [self.prompts.suffix(t) for t in texts] * len(users)
        p = self.judge.p_yes_grouped(prefixes, suffixes, np.repeat(np.arange(len(users)), len(texts)))
        return np.asarray(p, np.float32).reshape(len(users), len(texts)).T

    def verdicts(self, users, text, vector):
        if not len(users):
            return np.zeros(0, np.float32), np.zeros(0, bool)
        prefixes = [self.prefix(int(u), np.asarray(vector, np.float32)) for u in users]
        suffix = self.prompts.suffix(text)
        p = np.asarray(self.judge.p_yes_grouped(prefixes, [suffix] * len(users), np.arange(len(users))), np.float32)
        return p, p > self.threshold
