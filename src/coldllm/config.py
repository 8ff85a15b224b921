"""Typed run configuration: dataclasses, YAML presets and ``--key.sub=value`` overrides.

A preset is a YAML file whose keys mirror the dataclasses below; it may name another preset under
``extends`` to layer on top of it. Unknown keys are errors (never warnings): a typo in a
hyper-parameter silently falling back to its default is the classic way to publish a wrong number.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or override that cannot be applied; the message names the key."""


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class DataConfig:
    name: str = _help("Dataset name; names the cache folder.", "citeulike")
    format: str = _help("Reader: citeulike | csv | parquet | recbole.", "citeulike")
    path: str = _help(
        "Directory of the raw files. ${VAR:-default} is expanded from the environment.",
        "${COLDLLM_DATA:-../shared/data}/citeulike",
    )
    interactions: str = _help("csv/parquet: interactions file inside `path`.", "interactions.csv")
    items: str = _help("csv/parquet: item table inside `path` (id column + text fields).", "items.csv")
    user_field: str = _help("Column holding the user id.", "user")
    item_field: str = _help("Column holding the item id.", "item")
    timestamp_field: str = _help("Optional timestamp column ('' for none).", "")
    text_fields: list[str] = _help(
        "Item-table columns joined into the item text.", factory=lambda: ["title"]
    )
    split: str = _help("published: read the split files; random: the seeded ColdRec split.", "published")
    split_dir: str = _help("Folder (inside `path`) of the published split files.", "split")
    cold_ratio: float = _help("random split: share of items that become cold.", 0.2)
    warm_ratios: list[float] = _help(
        "random split: warm interactions train/val/test shares.", factory=lambda: [0.8, 0.1, 0.1]
    )
    seed: int = _help("Seed of the random split and of the user sample.", 2023)
    sample_users: int = _help("Keep a seeded sample of N users and the items they touched (0 = all).", 0)
    cache_dir: str = _help("Where prepared datasets are cached.", "cache")


@dataclass
class BackboneConfig:
    model: str = _help("mf | lightgcn | ngcf.", "lightgcn")
    dim: int = _help("Embedding size.", 64)
    layers: int = _help("Propagation layers (graph models).", 3)
    lr: float = _help("Adam learning rate.", 1e-3)
    reg: float = _help("L2 weight on the batch's ego embeddings (BPR regulariser).", 1e-4)
    dropout: float = _help("NGCF message dropout.", 0.1)
    batch_size: int = _help("BPR triples per step.", 2048)
    epochs: int = _help("Maximum epochs.", 300)
    eval_every: int = _help("Validate every N epochs.", 5)
    patience: int = _help("Stop after N validations without a better val NDCG.", 6)
    device: str = _help("auto | cpu | cuda | cuda:N.", "auto")


@dataclass
class ContentConfig:
    encoder: str = _help("minilm (sentence encoder) | llm (mean-pooled causal-LM states).", "minilm")
    model: str = _help("'' = the packaged default; else a local model folder (or smollm2-135m).", "")
    batch_size: int = _help("Texts per forward pass.", 64)
    max_length: int = _help("Tokens kept per text (longer texts are truncated).", 128)
    cache_dir: str = _help("Where converted models and text vectors are cached.", "cache")
    device: str = _help("auto | cpu | cuda | cuda:N.", "auto")


@dataclass
class BaselineConfig:
    methods: list[str] = _help(
        "Cold-start methods to fit and evaluate.",
        factory=lambda: ["random", "knn", "deepmusic", "dropoutnet", "metaemb", "mtpr", "clcrec", "gar", "aldi"],
    )
    params: dict = _help("Per-method hyper-parameters: {method: {key: value}}.", factory=dict)
    device: str = _help("auto | cpu | cuda | cuda:N.", "auto")


@dataclass
class FilterConfig:
    k: int = _help("Users kept per cold item (K).", 20)
    towers: str = _help("coupled | collab | lm | random (ablations) | file (candidates read from `file`).",
                        "coupled")
    collab_source: str = _help("What the collaborative sub-tower is: aldi (the paper's student) | knn "
                               "(content-KNN item vectors against the backbone's users).", "aldi")
    file: str = _help("towers=file: CSV with columns user,item[,answer] in the dataset's raw ids.", "")
    normalize_users: bool = _help(
        "Rank users by cosine instead of inner product (each user's coupled vector at unit length), so heavy "
        "users with long vectors do not fill every item's top-K.", False)
    index: str = _help("FAISS index: flat (exact) | ivf | hnsw (approximate, for large user sets).", "flat")
    text_model: str = _help("Language model of the language-model sub-tower: a causal LM whose mean-pooled states "
                            "are used (smollm2-135m, a local folder), or minilm (the packaged sentence encoder; "
                            "minutes instead of an hour of encoding on 2 CPU cores).", "smollm2-135m")
    collab: dict = _help("ALDI student hyper-parameters (baselines.aldi.ALDIParams).", factory=dict)
    lm: dict = _help("Language-model tower hyper-parameters (funnel.filter.LMTowerParams).", factory=dict)


@dataclass
class RefinerConfig:
    judge: str = _help(
        "Which filtered pairs are accepted: llm (the LoRA-tuned language model) | cosine (free: text "
        "similarity of the item to the user's history) | all (no refiner) | file (the `answer` column of "
        "filter.file) | oracle (a diagnostic that reads held-out labels; never a method).", "llm")
    keep: float = _help("cosine judge: share of each item's candidates accepted (the most similar).", 0.5)
    oracle_r: float = _help("oracle judge: probability a real held-out pair is accepted.", 1.0)
    oracle_f: float = _help("oracle judge: probability any other candidate pair is accepted.", 0.0)
    model: str = _help("Causal LM to fine-tune: smollm2-135m or a local Hugging Face folder.", "smollm2-135m")
    template: dict = _help("Prompt template fields (llm.prompts.PromptTemplate), per domain.", factory=dict)
    train_users: int = _help("Users giving one positive + one negative fine-tuning example each.", 600)
    eval_users: int = _help("Held-out warm users for the judge's accuracy / AUC.", 300)
    hard_negatives: float = _help("Share of fine-tuning negatives taken from the filter's top-K.", 0.5)
    lora: dict = _help("LoRA hyper-parameters (llm.lora.LoraParams).", factory=dict)
    threshold: str = _help("yes: accept when P(Yes) > P(No) (the paper); tuned: best on held-out pairs.", "yes")
    batch_size: int = _help("Candidates judged per forward pass.", 32)
    shard_users: int = _help("Users per simulation shard (the unit of resumption).", 128)
    verdicts_from: list[str] = _help(
        "Runs with the same judge (the same refiner folder) whose verdicts are reused, not recomputed.",
        factory=list,
    )
    device: str = _help("auto | cpu | cuda | cuda:N.", "auto")


@dataclass
class UpdateConfig:
    mode: str = _help("fast: only the cold items' rows move (default); retrain: the backbone trained again on "
                      "real + simulated pairs (the paper's way).", "fast")
    prior: str = _help("Where cold rows start, in the backbone's output space: knn (content-KNN) | none (zeros).",
                       "knn")
    prior_k: int = _help("knn prior: warm neighbours per cold item.", 20)
    select_on: str = _help("Validation setting that selects the update's state: cold | overall | warm.", "cold")
    eval_every: int = _help("Validate every N steps (fast) or epochs (retrain); the start is validated too.", 10)
    patience: int = _help("Stop after N validations without a better score.", 5)
    steps: int = _help("fast: maximum full-batch Adam steps.", 300)
    lr: float = _help("fast: Adam learning rate of the cold rows.", 0.003)
    pull: float = _help("fast: weight of ||e - prior||^2 per cold item (0: the prior is only the start).", 1.0)
    negatives: int = _help("fast: sampled negatives per accepted pair.", 16)
    batch_size: int = _help("fast: accepted pairs per step (sampled; the loss stands for all pairs).", 4096)
    negative_pool: str = _help("fast: negatives drawn from warm | cold | all items (cold ones move too).", "all")
    weight_by_p_yes: bool = _help("fast: weight each accepted pair by the judge's P(Yes).", False)
    init: str = _help("retrain: scratch (fresh weights, the paper) | backbone (the trained backbone, cold rows "
                      "at the prior).", "backbone")
    epochs: int = _help("retrain: maximum epochs.", 100)
    retrain_lr: float = _help("retrain: Adam learning rate.", 0.001)


@dataclass
class EvalConfig:
    ks: list[int] = _help("Cut-offs for Recall@K / NDCG@K.", factory=lambda: [20])
    batch_size: int = _help("Users scored per matrix product.", 1024)
    metric: str = _help("Early-stopping metric, e.g. ndcg@20.", "ndcg@20")


@dataclass
class RunConfig:
    name: str = _help("Run name: artifacts go to <runs_dir>/<name>/.", "default")
    runs_dir: str = _help("Parent folder of runs.", "runs")
    seed: int = _help("Seed of model initialisation and sampling.", 2023)
    stages: list[str] = _help(
        "Stages `coldllm run` executes, in order (prepare, train, evaluate_test, content, baselines, "
        "filter, finetune, simulate, update).",
        factory=lambda: ["prepare", "train", "evaluate_test", "content", "baselines"],
    )
    reuse: dict = _help(
        "Stages taken from another finished run instead of recomputed: {stage: run name}, e.g. "
        "{train: my-backbone-run}. Only train, filter, finetune and simulate can be reused.",
        factory=dict,
    )
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    refiner: RefinerConfig = field(default_factory=RefinerConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name


_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` so presets carry no machine-specific paths."""
    return _ENV.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), text)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        (inner,) = typing.get_args(hint)[:1]
        return [_coerce(v, inner, key) for v in value]
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value in (None, "null", "None") else _coerce(value, inner[0], key)
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{key}' expects {hint.__name__}, got {value!r}") from None
    return value


def _apply(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{full}' (known: {', '.join(sorted(names))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full}' is a section; give it a mapping")
            _apply(current, value, prefix=f"{full}.")
        elif isinstance(current, dict):  # free-form mappings (per-method params) merge, not replace
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{full}' expects a mapping, got {value!r}")
            setattr(obj, key, _merge(current, value))
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def _read_preset(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' forms a cycle")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    parent = values.pop("extends", None)
    if parent is None:
        return values
    base = _read_preset(path.parent / parent, seen + (path,))
    return _merge(base, values)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--backbone.lr=0.01", "name=x"]`` -> nested dict; values are parsed as YAML scalars."""
    nested: dict[str, Any] = {}
    for arg in args:
        body = arg[2:] if arg.startswith("--") else arg
        if "=" not in body:
            raise ConfigError(f"override {arg!r} must look like --key.sub=value")
        key, raw = body.split("=", 1)
        value = yaml.safe_load(raw) if raw else ""
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def load_config(preset: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    cfg = RunConfig()
    if preset is not None:
        _apply(cfg, _read_preset(Path(preset)))
    if overrides:
        _apply(cfg, parse_overrides(overrides))
    cfg.data.path = expand_env(cfg.data.path)
    cfg.filter.file = expand_env(cfg.filter.file)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
