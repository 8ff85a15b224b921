"""The ColdLLM stages of a run: filter -> finetune -> simulate -> update (-> evaluate).

Each stage reads the artifacts of the previous ones from the run folder and writes its own:

    filter/    candidates.parquet (cold items' top-K users), warm_candidates.parquet, report.json
    refiner/   adapter/ (LoRA weights + config), threshold.json (the acceptance threshold the
               simulation applies), report.json (judge before/after, loss curve),
               checkpoint.safetensors (where a killed fine-tuning resumes)
    simulate/  shard-*.parquet, simulated.parquet, report.json
    update/    the retrained backbone, report.json; metrics in metrics_coldllm_<split>.json
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from ..backbones import load_backbone
from ..baselines.aldi import ALDI
from ..baselines.runner import make_context
from ..config import ConfigError, ContentConfig, apply_values
from ..content import encode_texts
from ..llm.judge import Judge
from ..llm.lora import LoraParams, add_lora, load_adapter, train_lora
from ..llm.models import load_llm, load_tokenizer, resolve_llm
from ..llm.prompts import PromptEncoder, PromptTemplate
from ..report.model_card import write_model_card
from ..run import Run, content_vectors
from ..utils import atomic_path, peak_memory_mb, resolve_device, write_json
from .filter import COLLAB_SOURCES, TOWERS, KNNTower, LanguageTower, LMTowerParams, coupled_embeddings, funnel_coverage, random_users, \
    read_candidates, top_users
from .refiner import best_threshold, example_parts, finetune_examples, judge_report, judge_sets, simulate, \
    user_histories, with_random_negatives
from .onepass import OnePass, OnePassParams
from .text_encoder import TextEncoder, TextEncoderSpec
from .towers import save_towers
from .judges import cosine_verdicts, file_verdicts, oracle_verdicts
from .update import to_backbone
from .update_stage import evaluate_coldllm, update_stage

log = logging.getLogger(__name__)


def _params(cls: type, values: dict[str, Any], where: str):
    """A hyper-parameter dataclass filled from a config mapping; unknown keys name ``where``."""
    obj = cls()
    apply_values(obj, values, prefix=f"{where}.")
    return obj


def llm_text_vectors(run: Run) -> np.ndarray:
    """Text vectors of the language-model sub-tower: mean-pooled states of ``filter.text_model``, or
    the packaged sentence encoder's vectors (``minilm``, the content vectors: no extra encoding)."""
    if run.cfg.filter.text_model == "minilm":
        return encode_texts(list(run.data.item_text), dataclasses.replace(run.cfg.content, encoder="minilm", model=""))
    cfg = ContentConfig(encoder="llm", model=run.cfg.filter.text_model, cache_dir=run.cfg.content.cache_dir,
                        device=run.cfg.content.device, batch_size=32)
    return encode_texts(list(run.data.item_text), cfg)


def filter_stage(run: Run) -> dict[str, Any]:
    cfg, data = run.cfg, run.data
    folder = run.layout.filter
    if cfg.filter.towers not in TOWERS:
        raise ConfigError(f"filter.towers {cfg.filter.towers!r} must be one of {TOWERS}")
    if cfg.filter.collab_source not in COLLAB_SOURCES:
        raise ConfigError(f"filter.collab_source {cfg.filter.collab_source!r} must be one of {COLLAB_SOURCES}")
    if cfg.filter.towers == "file" and not cfg.filter.file:
        raise ConfigError("filter.file: a path is needed with filter.towers=file")
    with run.stage("filter") as rec:
        device = resolve_device(cfg.baselines.device)
        backbone = load_backbone(run.layout.backbone, data)
        ctx = make_context(data, backbone, content_vectors(run), device, cfg.seed, cfg.eval.ks, cfg.eval.metric)
        towers = cfg.filter.towers
        collab = lm = mapped = fitted = None
        # whatever another filter left is gone before this one fits: the service loads what is there
        shutil.rmtree(run.layout.text_encoder, ignore_errors=True)
        if towers in ("coupled", "collab"):
            collab = (ALDI(cfg.filter.collab).fit(ctx) if cfg.filter.collab_source == "aldi"
                      else KNNTower(ctx, cfg.update.prior_k))
        if towers in ("coupled", "lm"):
            lm = LanguageTower(_params(LMTowerParams, cfg.filter.lm, "filter.lm")).fit(ctx, llm_text_vectors(run))
        if towers == "onepass":
            params = _params(OnePassParams, cfg.filter.onepass, "filter.onepass")
            if params.encoder == "text":  # the item text through a language model that learns with the head
                spec = TextEncoderSpec(model=params.text_model or cfg.filter.text_model, tune=params.tune,
                                       pooling=params.pooling, max_length=params.max_length, lora_r=params.lora_r,
                                       lora_targets=tuple(params.lora_targets))
                encoder = TextEncoder(spec, cfg.content.cache_dir, device)
                simulator = OnePass(params).fit(ctx, None, encoder, list(data.item_text))
                encoder.save(run.layout.text_encoder)
            elif params.encoder == "vectors":
                simulator = OnePass(params).fit(ctx, llm_text_vectors(run))
            else:
                raise ConfigError(f"filter.onepass.encoder {params.encoder!r} must be vectors or text")
            candidates = top_users(simulator.embeddings(ctx.cold), cfg.filter.k, cfg.filter.index)
            warm = pd.DataFrame({"item": [], "user": [], "rank": [], "score": []})
            rec["onepass_history"] = simulator.history
            # the head's bias is one number per user: it moves no user's ranking of the items, so it is left out
            projection = to_backbone(ctx.user_emb, simulator.head.weight)
            mapped = simulator.item_out[ctx.cold] @ projection.T
            fitted = dict(users=simulator.embeddings(ctx.cold).users, parts={"onepass": simulator.net},
                          to_backbone=projection)
        elif towers in ("random", "file"):
            candidates = (random_users(data.n_users, data.cold_items, cfg.filter.k, cfg.seed) if towers == "random"
                          else read_candidates(cfg.filter.file, data.user_ids, data.item_ids, data.cold_items))
            warm = pd.DataFrame({"item": [], "user": [], "rank": [], "score": []})
        else:
            cold_emb, warm_emb = (coupled_embeddings(collab, lm, ctx, ids) for ids in (ctx.cold, ctx.warm))
            if cfg.filter.normalize_users:
                for emb in (cold_emb, warm_emb):
                    emb.users = emb.users / np.maximum(np.linalg.norm(emb.users, axis=1, keepdims=True), 1e-12)
            candidates = top_users(cold_emb, cfg.filter.k, cfg.filter.index)
            projection = None
            if isinstance(collab, ALDI):  # the student's cold scores, mapped into the backbone's space
                projection = to_backbone(ctx.user_emb, collab.user_student)
                mapped = collab.cold_student @ projection.T
            parts = {**({"aldi": collab.item_tower} if isinstance(collab, ALDI) else {}),
                     **({"lm": lm.item_net} if lm is not None else {})}
            fitted = dict(users=cold_emb.users, parts=parts,
                          knn_items=ctx.item_emb[ctx.warm] if isinstance(collab, KNNTower) else None,
                          knn_k=cfg.update.prior_k, to_backbone=projection)
            # the same filter on warm items gives on-topic non-interacted users: hard negatives
            warm = top_users(warm_emb, cfg.filter.k, cfg.filter.index)
        folder.mkdir(parents=True, exist_ok=True)
        for frame, path in ((candidates, run.layout.candidates), (warm, run.layout.warm_candidates)):
            with atomic_path(path) as tmp:
                frame.to_parquet(tmp)
        # what the filter fitted, for new items later (the service loads it, never fits it again)
        (run.layout.filter_towers).unlink(missing_ok=True)
        if towers == "random":
            fitted = dict(users=np.zeros((data.n_users, 1), np.float32), parts={})
        if fitted is not None:
            save_towers(run.layout.filter_towers, towers, **fitted)
        (run.layout.filter_prior).unlink(missing_ok=True)  # never a mapping left by other settings
        if mapped is not None:
            with atomic_path(run.layout.filter_prior) as tmp:
                save_file({"cold": mapped.detach().float().cpu().contiguous()}, str(tmp))
        report = {"towers": towers, "k": cfg.filter.k, "cold_items": len(data.cold_items),
                  "val": funnel_coverage(candidates, data.parts["cold_val"]),
                  "test": funnel_coverage(candidates, data.parts["cold_test"])}
        write_json(run.layout.filter_report, report)
        rec.update(report)
    return report


def prompt_encoder(run: Run, tokenizer) -> PromptEncoder:
    return PromptEncoder(tokenizer, prompt_template(run.cfg))


def _split_users(run: Run, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    train = run.data.matrix("train")
    eligible = np.flatnonzero(np.diff(train.indptr) >= 2)
    chosen = rng.permutation(eligible)
    n_train, n_eval = run.cfg.refiner.train_users, run.cfg.refiner.eval_users
    return np.sort(chosen[:n_train]), np.sort(chosen[n_train : n_train + n_eval])


def finetune_stage(run: Run) -> dict[str, Any]:
    cfg, data = run.cfg, run.data
    folder = run.layout.refiner
    with run.stage("finetune") as rec:
        if cfg.refiner.judge != "llm":
            rec["skipped"] = f"refiner.judge is {cfg.refiner.judge!r}: no language model to tune"
            return {}
        device = resolve_device(cfg.refiner.device)
        rec["device"] = str(device)
        model, tokenizer = load_llm(cfg.refiner.model, cfg.content.cache_dir, device)
        prompts = prompt_encoder(run, tokenizer)
        titles = data.item_text
        train = data.matrix("train")
        rng = np.random.default_rng(cfg.seed)
        train_users, eval_users = _split_users(run, rng)
        warm_candidates = pd.read_parquet(run.layout.warm_candidates)
        hard_users = train_users[rng.random(len(train_users)) < cfg.refiner.hard_negatives]
        hard = warm_candidates[warm_candidates["user"].isin(hard_users)].sort_values(["user", "rank"])
        max_history = prompts.template.max_history
        examples = finetune_examples(train, train_users, data.warm_items, max_history, cfg.seed, hard=hard,
                                     pairs=cfg.refiner.pairs_per_user)
        # The judge is measured twice on held-out users, on the same positives and histories:
        # against random negatives (mostly off-topic, an easy topic test) and against the filter's
        # own top-ranked non-interacted items, the kind of pair it judges in the simulation. Both
        # sets are judged in one pass, one prefix per user.
        eval_hard = warm_candidates[warm_candidates["user"].isin(eval_users)].sort_values(["user", "rank"])
        hard_set = finetune_examples(train, eval_users, data.warm_items, max_history, cfg.seed + 1, hard=eval_hard)
        held_out = {"random": with_random_negatives(hard_set, train, data.warm_items, cfg.seed + 1), "hard": hard_set}
        report: dict[str, Any] = {"train_examples": len(examples),
                                  "eval_examples": {k: len(v) for k, v in held_out.items()}}
        judge = Judge(model, prompts, cfg.refiner.batch_size)
        for name, p_yes in judge_sets(judge, held_out, titles).items():
            held_out[name]["p_before"] = p_yes
        lora = _params(LoraParams, cfg.refiner.lora, "refiner.lora")
        peft_model = add_lora(model, lora)
        _, history = train_lora(peft_model, *example_parts(prompts, examples, titles), examples["label"].to_numpy(),
                                prompts.yes_id, prompts.no_id, lora,
                                out_dir=run.layout.adapter, checkpoint=run.layout.refiner_checkpoint,
                                base=cfg.refiner.model, gradient_checkpointing=cfg.refiner.gradient_checkpointing)
        # the adapter is saved; merged, the held-out pairs are judged as the simulation judges them
        judge = Judge(peft_model.merge_and_unload(), prompts, cfg.refiner.batch_size)
        for name, p_yes in judge_sets(judge, held_out, titles).items():
            held_out[name]["p_after"] = p_yes
            with atomic_path(folder / f"held_out_{name}.parquet") as tmp:
                held_out[name].to_parquet(tmp)
        report["before"] = {k: judge_report(ex["label"].to_numpy(), ex["p_before"].to_numpy()) for k, ex in held_out.items()}
        report["after"] = {k: judge_report(ex["label"].to_numpy(), ex["p_after"].to_numpy()) for k, ex in held_out.items()}
        hard_ex = held_out["hard"]
        report["threshold"] = (best_threshold(hard_ex["label"].to_numpy(), hard_ex["p_after"].to_numpy())
                               if cfg.refiner.threshold == "tuned" else 0.5)
        report["lora"] = dataclasses.asdict(lora)
        report["loss_history"] = history
        report["peak_memory_mb"] = round(peak_memory_mb(), 1)
        # the simulation's input, in a file of its own: a report is for people and may change shape
        write_json(run.layout.threshold, {"threshold": report["threshold"]})
        write_json(run.layout.refiner_report, report)
        rec.update({k: report[k] for k in ("train_examples", "before", "after", "threshold")})
        write_model_card(run.layout.adapter, base_model=cfg.refiner.model, dataset=cfg.data.name,
                         train_examples=report["train_examples"], eval_examples=report["eval_examples"],
                         settings=report["lora"], before=report["before"], after=report["after"],
                         threshold=report["threshold"], commit=run.manifest["commit"])
    return report


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
        frames.append(pd.read_parquet(path, columns=["user", "item", "p_yes"]))
    return pd.concat(frames, ignore_index=True).drop_duplicates(["user", "item"]) if frames else None


JUDGES = ("llm", "cosine", "all", "file", "oracle")


def simulate_stage(run: Run) -> dict[str, Any]:
    cfg, data = run.cfg, run.data
    folder = run.layout.simulate
    if cfg.refiner.judge not in JUDGES:
        raise ConfigError(f"refiner.judge {cfg.refiner.judge!r} must be one of {JUDGES}")
    with run.stage("simulate") as rec:
        candidates = pd.read_parquet(run.layout.candidates)
        judge_kind = cfg.refiner.judge
        if judge_kind == "llm":
            device = resolve_device(cfg.refiner.device)
            rec["device"] = str(device)
            template = prompt_template(cfg)
            threshold = json.loads((run.layout.threshold).read_text())["threshold"]
            histories = user_histories(data.matrix("train"), template.max_history, cfg.seed)
            known = known_verdicts(run)
            rec["reused_verdicts"] = 0 if known is None else int(
                len(candidates.merge(known[["user", "item"]], on=["user", "item"])))
            # shards of other candidates, another judge or another sharding are never resumed: they
            # live in a folder named by the fingerprint of all three
            digest = hashlib.sha256()
            for path in (run.layout.candidates, *sorted((run.layout.adapter).glob("*"))):
                digest.update(path.read_bytes() if path.is_file() else b"")
            # (the engine is not in it: shards written by one engine resume under the other)
            digest.update(json.dumps([dataclasses.asdict(template), threshold, cfg.refiner.shard_users,
                                      cfg.seed]).encode())
            shards = folder / "shards" / digest.hexdigest()[:16]
            rec["shards"], rec["engine"] = str(shards), cfg.refiner.engine
            if cfg.refiner.engine == "ray":  # imports ray only when asked for
                from .ray_judge import simulate_on_ray

                rec["ray_actors"] = cfg.refiner.ray_actors
                simulated = simulate_on_ray(resolve_llm(cfg.refiner.model, cfg.content.cache_dir),
                                            run.layout.adapter, template, candidates, histories,
                                            data.item_text, shards, threshold, cfg.refiner.shard_users, known=known,
                                            actors=cfg.refiner.ray_actors, batch_size=cfg.refiner.batch_size,
                                            device=cfg.refiner.device)
            elif cfg.refiner.engine == "vllm":  # imports vllm only when asked for
                from .vllm_judge import VLLMJudge

                tokenizer = load_tokenizer(cfg.refiner.model, cfg.content.cache_dir)
                judge = VLLMJudge(resolve_llm(cfg.refiner.model, cfg.content.cache_dir), run.layout.adapter,
                                  PromptEncoder(tokenizer, template), cfg.seed, **cfg.refiner.vllm)
            else:
                model, tokenizer = load_llm(cfg.refiner.model, cfg.content.cache_dir, device)
                # folded into the weights: judged as fast as the base model, P(Yes) equal within 1e-5
                model = load_adapter(model, run.layout.adapter, merge=True)
                judge = Judge(model, PromptEncoder(tokenizer, template), cfg.refiner.batch_size)
            if cfg.refiner.engine != "ray":  # both in-process judges go through the same shard loop
                simulated = simulate(judge, candidates, histories, data.item_text, shards, threshold,
                                     cfg.refiner.shard_users, known=known)
        elif judge_kind == "cosine":
            histories = user_histories(data.matrix("train"), prompt_template(cfg).max_history, cfg.seed)
            simulated = cosine_verdicts(candidates, histories, content_vectors(run), cfg.refiner.keep)
        elif judge_kind == "oracle":  # a diagnostic: reads the held-out cold pairs
            truth = np.concatenate([data.parts["cold_val"], data.parts["cold_test"]])
            simulated = oracle_verdicts(candidates, truth, cfg.refiner.oracle_r, cfg.refiner.oracle_f, cfg.seed)
        elif judge_kind == "file":
            simulated = file_verdicts(candidates)
        else:  # the no-refiner ablation: every filtered pair becomes an interaction
            simulated = candidates[["user", "item"]].assign(p_yes=1.0, accepted=True)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(run.layout.simulated) as tmp:
            simulated.to_parquet(tmp)
        accepted = simulated[simulated["accepted"]]
        report = {"judge": judge_kind, "pairs": len(simulated), "accepted": len(accepted),
                  "accept_rate": float(simulated["accepted"].mean()) if len(simulated) else 0.0,
                  "refined_test": funnel_coverage(accepted, data.parts["cold_test"]),
                  "refined_val": funnel_coverage(accepted, data.parts["cold_val"])}
        write_json(run.layout.simulate_report, report)
        rec.update(report)
    return report


def prompt_template(cfg) -> PromptTemplate:
    return _params(PromptTemplate, cfg.refiner.template, "refiner.template")


FUNNEL_STAGES = {"filter": filter_stage, "finetune": finetune_stage, "simulate": simulate_stage,
                 "update": update_stage, "evaluate_coldllm_val": lambda run: evaluate_coldllm(run, "val")}
