"""Typed run configuration: dataclasses, YAML presets and ``--key.sub=value`` overrides.

A preset is a YAML file whose keys mirror the dataclasses below; it may name another preset under
``extends`` to layer on top of it. Unknown keys are errors (never warnings): a typo in a
hyper-parameter silently falling back to its default is the classic way to publish a wrong number.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import string
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .components import (BACKBONE_MODELS, BASELINE_METHODS, CONTENT_ENCODERS, DATA_FORMATS, ENGINES, FILTERS, JUDGES,
                         REUSABLE_STAGES, RUN_STAGES, Registry)
from .hparams import METHOD_PARAMS, ALDIParams, LMTowerParams, LoraParams, OnePassParams, PromptTemplate


class ConfigError(ValueError):
    """A configuration file or override that cannot be applied; the message names the key."""


# -- what a value may be --------------------------------------------------------------------------
# A check takes a value and returns what is wrong with it ("must be >= 1"), or None when it is fine.
# Each field names its checks next to its help text (``check=``), so the allowed values of a setting
# are read where the setting is declared, and ``validate`` applies them all when a config is loaded.
Check = Callable[[Any], "str | None"]


def _allows(words: str | Callable[[], str]) -> Callable[[Check], Check]:
    """Attach to a check the words for what it allows (the configuration reference prints them);
    a callable is read when asked, so a registry's names are the ones registered by then."""

    def mark(check: Check) -> Check:
        check.allows = words  # type: ignore[attr-defined]
        return check

    return mark


def allowed(check: Check) -> str:
    """What ``check`` allows, in words ('>= 1', "one of: flat, ivf, hnsw"); '' when it does not say."""
    words = getattr(check, "allows", "")
    return words() if callable(words) else words


def at_least(low: float) -> Check:
    return _allows(f">= {low}")(lambda v: None if v >= low else f"must be >= {low}")


def above(low: float) -> Check:
    return _allows(f"> {low}")(lambda v: None if v > low else f"must be > {low}")


def between(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Check:
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"

    @_allows(f"in {interval}")
    def check(v: Any) -> str | None:
        ok = (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
        return None if ok else f"must be in {interval}"

    return check


def _choices(registry: Registry) -> str:
    """A registry's names and what each is, for a field's help (the reference page shows it)."""
    return " | ".join(f"{d.name} ({d.help})" for d in registry)


def one_of(*choices: Any) -> Check:
    def options() -> list[Any]:
        return list(choices[0]()) if len(choices) == 1 and callable(choices[0]) else list(choices)

    @_allows(lambda: "one of: " + ", ".join(str(c) for c in options()))
    def check(v: Any) -> str | None:
        choices_now = options()
        if v in choices_now:
            return None
        return f"must be one of {choices_now}"

    return check


@_allows("not empty")
def nonempty(v: Any) -> str | None:
    return None if len(v) else "must not be empty"


def matches(pattern: str, shape: str) -> Check:
    return _allows(shape)(lambda v: None if re.fullmatch(pattern, v) else f"must look like {shape}")


def each(*checks: Check) -> Check:
    """Apply ``checks`` to every entry of a list (or every key of a mapping)."""

    @_allows(lambda: "each entry " + "; ".join(allowed(c) for c in checks))
    def check(v: Any) -> str | None:
        for item in v:
            for one in checks:
                problem = one(item)
                if problem:
                    return f"entry {item!r} {problem}"
        return None

    return check


DEVICE = matches(r"auto|cpu|mps|cuda(:\d+)?", "auto, cpu, mps, cuda or cuda:N")


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING,
          check: Check | tuple[Check, ...] = (), params: "type | dict[str, type] | None" = None):
    """A field with its help text, its checks and, for a mapping of hyper-parameters, the dataclass
    (``params``; a dict of them, one per name) whose fields the mapping may set."""
    metadata = {"help": text, "checks": check if isinstance(check, tuple) else (check,), "params": params}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@_allows("'' or a text whose {fields} each name a column of the item table")
def _text_template(v: str) -> str | None:
    """'' or a text whose replacement fields all name a column: '{movie_title} ({release_year})'."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(v) if name is not None]
    except ValueError as err:
        return f"must be a text with {{column}} fields ({err})"
    if any(not name.isidentifier() for name in names):
        return "must name a column in every {field} (no {} or {0})"
    return None


@_allows("three shares (train, val, test), each >= 0, train > 0, summing to 1")
def _warm_shares(v: list[float]) -> str | None:
    """The train/val/test shares of the warm interactions: three, none negative, training > 0, sum 1."""
    if len(v) != 3 or min(v) < 0 or v[0] <= 0 or abs(sum(v) - 1) > 1e-6:
        return "must be three shares (train, val, test), each >= 0, train > 0, summing to 1"
    return None


@dataclass
class DataConfig:
    name: str = _help("Dataset name; names the cache folder.", "citeulike", check=nonempty)
    format: str = _help(f"Reader: {_choices(DATA_FORMATS)}.", "citeulike", check=one_of(*DATA_FORMATS.names()))
    path: str = _help(
        "Directory of the raw files. ${VAR:-default} is expanded from the environment. Written in a preset, a "
        "relative path is relative to the preset's folder; from the environment or the command line, to the "
        "current directory.",
        "${COLDLLM_DATA:-../shared/data}/citeulike", check=nonempty,
    )
    interactions: str = _help("csv/parquet: interactions file inside `path`.", "interactions.csv", check=nonempty)
    items: str = _help("csv/parquet: item table inside `path` (id column + text fields).", "items.csv",
                       check=nonempty)
    user_field: str = _help("Column holding the user id.", "user", check=nonempty)
    item_field: str = _help("Column holding the item id.", "item", check=nonempty)
    timestamp_field: str = _help("Optional timestamp column ('' for none): read and checked, not used by the "
                                 "split (cold items are chosen at random, not by time).", "")
    rating_field: str = _help("csv/parquet/recbole: column holding an explicit rating (read with min_rating).",
                              "rating", check=nonempty)
    min_rating: float = _help("Keep only interactions rated at least this (e.g. 4 of 5 stars: a 1-2 is not a "
                              "like); 0 keeps every row and reads no rating.", 0.0, check=at_least(0))
    text_fields: list[str] = _help(
        "Item-table columns joined into the item text.", factory=lambda: ["title"], check=(nonempty, each(nonempty))
    )
    text_template: str = _help(
        "Item text written from the item table's columns, e.g. '{movie_title} ({release_year}). Genres: "
        "{genre:list}.' (`:list` writes a space-separated token list with commas); '' joins `text_fields` "
        "with '. '.", "", check=_text_template)
    split: str = _help("published: read the split files; random: the seeded ColdRec split.", "published",
                       check=one_of("published", "random"))
    split_dir: str = _help("Folder (inside `path`) of the published split files.", "split", check=nonempty)
    cold_ratio: float = _help("random split: share of items that become cold.", 0.2,
                              check=between(0, 1, low_open=True, high_open=True))
    warm_ratios: list[float] = _help(
        "random split: warm interactions train/val/test shares.", factory=lambda: [0.8, 0.1, 0.1], check=_warm_shares
    )
    seed: int = _help("Seed of the random split and of the user sample.", 2023, check=at_least(0))
    sample_users: int = _help("Keep a seeded sample of N users and the items they touched (0 = all).", 0,
                              check=at_least(0))
    cache_dir: str = _help("Where prepared datasets are cached.", "cache", check=nonempty)


@dataclass
class BackboneConfig:
    model: str = _help(f"{_choices(BACKBONE_MODELS)}.", "lightgcn", check=one_of(*BACKBONE_MODELS.names()))
    dim: int = _help("Embedding size.", 64, check=at_least(1))
    layers: int = _help("Propagation layers (graph models).", 3, check=at_least(0))
    lr: float = _help("Adam learning rate.", 1e-3, check=above(0))
    lr_decay: float = _help("Each validation that does not improve the best multiplies the learning rate by this "
                            "(1: constant): a high rate that gets close fast, then smaller steps that settle.", 1.0,
                            check=between(0, 1, low_open=True))
    reg: float = _help("L2 weight on the batch's ego embeddings (BPR regulariser).", 1e-4, check=at_least(0))
    init: str = _help("Starting embeddings: normal (random) | spectral (the top singular vectors of the normalised "
                      "interaction matrix: the start already ranks like a spectral filter, so training is shorter).",
                      "normal", check=one_of("normal", "spectral"))
    init_scale: float = _help("Root mean square of the starting embeddings (normal: its standard deviation).", 0.1,
                              check=above(0))
    dropout: float = _help("NGCF message dropout.", 0.1, check=between(0, 1, high_open=True))
    batch_size: int = _help("BPR triples per step.", 2048, check=at_least(1))
    epochs: int = _help("Maximum epochs.", 300, check=at_least(1))
    eval_every: int = _help("Validate every N epochs.", 5, check=at_least(1))
    patience: int = _help("Stop after N validations without a better val NDCG.", 6, check=at_least(1))
    device: str = _help("auto | cpu | cuda | cuda:N | mps.", "auto", check=DEVICE)


@dataclass
class ContentConfig:
    encoder: str = _help(f"{_choices(CONTENT_ENCODERS)}.", "minilm", check=one_of(*CONTENT_ENCODERS.names()))
    model: str = _help("'' = the packaged default; else a local model folder (or smollm2-135m).", "")
    batch_size: int = _help("Texts per forward pass.", 64, check=at_least(1))
    max_length: int = _help("Tokens kept per text (longer texts are truncated).", 128, check=at_least(1))
    cache_dir: str = _help("Where converted models and text vectors are cached.", "cache", check=nonempty)
    device: str = _help("auto | cpu | cuda | cuda:N | mps.", "auto", check=DEVICE)


@dataclass
class BaselineConfig:
    methods: list[str] = _help(
        "Cold-start methods to fit and evaluate.",
        factory=lambda: ["random", "knn", "deepmusic", "dropoutnet", "metaemb", "mtpr", "clcrec", "gar", "aldi"],
        check=each(one_of(*BASELINE_METHODS.names())),
    )
    params: dict = _help("Per-method hyper-parameters: {method: {key: value}}.", factory=dict,
                         params=METHOD_PARAMS)
    device: str = _help("auto | cpu | cuda | cuda:N | mps.", "auto", check=DEVICE)


@dataclass
class FilterConfig:
    k: int = _help("Users kept per cold item (K).", 20, check=at_least(1))
    towers: str = _help(f"Which filter finds each cold item's candidate users: {_choices(FILTERS)}. With "
                        "refiner.judge=all the one-pass simulator's top-K are the simulated pairs.",
                        "coupled", check=one_of(*FILTERS.names()))
    collab_source: str = _help("What the collaborative sub-tower is: aldi (the paper's student) | knn "
                               "(content-KNN item vectors against the backbone's users).", "aldi",
                               check=one_of("aldi", "knn"))
    file: str = _help("towers=file: CSV with columns user,item[,answer] in the dataset's raw ids.", "")
    normalize_users: bool = _help(
        "Rank users by cosine instead of inner product (each user's coupled vector at unit length), so heavy "
        "users with long vectors do not fill every item's top-K.", False)
    index: str = _help("FAISS index: flat (exact) | ivf | hnsw (approximate, for large user sets).", "flat",
                       check=one_of("flat", "ivf", "hnsw"))
    text_model: str = _help("Language model of the language-model sub-tower: a causal LM whose mean-pooled states "
                            "are used (smollm2-135m, a local folder), or minilm (the packaged sentence encoder; "
                            "seconds instead of minutes of encoding on 2 CPU cores; results/speed/cpu.json, encode).", "smollm2-135m", check=nonempty)
    collab: dict = _help("ALDI student hyper-parameters (baselines.aldi.ALDIParams).", factory=dict,
                         params=ALDIParams)
    lm: dict = _help("Language-model tower hyper-parameters (funnel.filter.LMTowerParams).", factory=dict,
                     params=LMTowerParams)
    onepass: dict = _help("One-pass simulator hyper-parameters (funnel.onepass.OnePassParams).", factory=dict,
                          params=OnePassParams)


@dataclass
class RefinerConfig:
    judge: str = _help(f"Which filtered pairs are accepted: {_choices(JUDGES)}.", "llm", check=one_of(*JUDGES.names()))
    keep: float = _help("cosine / activity judge: share of each item's candidates accepted (the most similar / the "
                        "users with the most training interactions).", 0.5,
                        check=between(0, 1, low_open=True))
    oracle_r: float = _help("oracle judge: probability a real held-out pair is accepted.", 1.0, check=between(0, 1))
    oracle_f: float = _help("oracle judge: probability any other candidate pair is accepted.", 0.0,
                            check=between(0, 1))
    model: str = _help("Causal LM to fine-tune: smollm2-135m, gemma3-270m (extra: gemma) or a local Hugging Face "
                       "folder.", "smollm2-135m",
                       check=nonempty)
    template: dict = _help("Prompt template fields (llm.prompts.PromptTemplate), per domain.", factory=dict,
                           params=PromptTemplate)
    train_users: int = _help("Users giving fine-tuning examples: pairs_per_user positives + as many negatives each.",
                             600, check=at_least(1))
    pairs_per_user: int = _help("Positive/negative pairs per fine-tuning user, all on the user's one history: the "
                                "packed rows pay for that history once per user, so more pairs per user cost fewer "
                                "tokens per example (held-out users always give one pair); with examples=per_item, "
                                "per fine-tuning item.", 1, check=at_least(1))
    eval_users: int = _help("Held-out warm users for the judge's accuracy / AUC.", 300, check=at_least(1))
    examples: str = _help(
        "What the judge learns to tell apart. per_user: a user's items from items the user did not take (the "
        "paper's pairs; held out: other users, random and hard negatives). per_item: one warm item's filter "
        "candidates who took it from those who did not, the question the simulation asks of a cold item "
        "(held out: every candidate of other warm items).", "per_user", check=one_of("per_user", "per_item"))
    train_items: int = _help("examples=per_item: warm items giving fine-tuning examples.", 600, check=at_least(1))
    eval_items: int = _help("examples=per_item: held-out warm items whose every candidate is judged.", 100,
                            check=at_least(1))
    hard_negatives: float = _help("Share of fine-tuning negatives taken from the filter's top-K.", 0.5,
                                  check=between(0, 1))
    lora: dict = _help("LoRA hyper-parameters (llm.lora.LoraParams).", factory=dict,
                       params=LoraParams)
    gradient_checkpointing: bool = _help(
        "Fine-tuning recomputes each layer's activations in the backward pass instead of keeping them: "
        "far less memory for long packed rows, about a third more time, the same adapter.", False)
    threshold: str = _help("yes: accept when P(Yes) > P(No) (the paper); tuned: best on held-out pairs.", "yes",
                           check=one_of("yes", "tuned"))
    batch_size: int = _help("Candidates judged per forward pass.", 32, check=at_least(1))
    shard_users: int = _help("Users per simulation shard (the unit of resumption).", 128, check=at_least(1))
    verdicts_from: list[str] = _help(
        "Runs with the same judge (the same refiner folder) whose verdicts are reused, not recomputed.",
        factory=list, check=each(nonempty),
    )
    device: str = _help("auto | cpu | cuda | cuda:N | mps.", "auto", check=DEVICE)
    engine: str = _help(f"How the llm judge's simulation runs: {_choices(ENGINES)} (ray: a local Ray, or the "
                        "cluster named by RAY_ADDRESS, needs the ray extra; vllm: needs the vllm extra). Same shards "
                        "every way.", "local", check=one_of(*ENGINES.names()))
    ray_actors: int = _help("engine=ray: judge actors, each with its own copy of the model.", 1, check=at_least(1))
    augment: float = _help(
        "llm judge: share of fine-tuning examples whose candidate text is rewritten to flatter the judge (praise, "
        "a repeated title, an instruction to answer Yes), positives and negatives alike, so such text carries "
        "no label signal.", 0.0, check=between(0, 1))
    center: bool = _help(
        "llm judge: each item's P(Yes) are read against its own level over the guard's reference users: the "
        "amount its text lifts that level above what its content predicts is taken off every pair before the "
        "threshold, so text that flatters the judge for everyone (an appended 'Answer: Yes', a flood, a bare "
        "title) buys no accepted pair. Costs guard_users judged prompts per item.", True)
    guard_z: float = _help(
        "llm judge, in the service: refuse a new item whose text lifts the judge's mean P(Yes) over fixed "
        "reference users this many spreads above what its content predicts (text that flatters the judge "
        "rather than describes the item); 0: no guard.", 3.0, check=at_least(0))
    guard_users: int = _help("The guard's reference users (each new item costs this many judged prompts).", 16,
                             check=at_least(1))
    guard_items: int = _help("The guard's reference warm items (judged once per adapter, then cached).", 48,
                             check=at_least(3))
    vllm: dict = _help("engine=vllm: keyword arguments for vllm.LLM (e.g. gpu_memory_utilization, dtype).",
                       factory=dict)


@dataclass
class UpdateConfig:
    mode: str = _help("fast: only the cold items' rows move (default); retrain: the backbone trained again on "
                      "real + simulated pairs (the paper's way).", "fast", check=one_of("fast", "retrain"))
    prior: str = _help("Where cold rows start, in the backbone's output space: knn (content-KNN) | none (zeros) | "
                       "best (fast mode: the best on validation of content-KNN, the filter's own content mapping "
                       "projected into the backbone's space, and blends of the two).",
                       "knn", check=one_of("knn", "none", "best"))
    prior_k: int = _help("knn prior: warm neighbours per cold item.", 20, check=at_least(1))
    k_grid: list[int] = _help(
        "fast: candidate depths tried, each a separate update from the accepted pairs among each item's top-k "
        "candidates (filter ranks; every k <= filter.k); the depth with the best validation score is kept. "
        "[] uses every accepted pair. Where items have many more real users than K, a deeper list covers more "
        "of them at a lower precision, and validation says which wins.", factory=list, check=each(at_least(1)))
    depth: str = _help(
        "fast with k_grid: how each item's depth is set. fixed: every item takes its top-k candidates; popularity: "
        "each item takes k times its predicted popularity over the mean prediction (the mean training degree of "
        "its prior_k most text-similar warm items), between 1 and filter.k, so an item likely to have many users "
        "gets more simulated ones (with the same k for all, every new item looks equally popular).", "fixed",
        check=one_of("fixed", "popularity"))
    select_on: str = _help("Validation setting that selects the update's state: cold | overall | warm.", "cold",
                           check=one_of("cold", "overall", "warm"))
    val_candidates: str = _help(
        "fast, select_on cold: the items cold validation ranks. split: only the validation part's own cold "
        "items; blind: those and every cold item no held-out part names (catalogue items nobody took, which the "
        "test ranks against too), without the test part's; cold: every cold item (the reported protocol). With "
        "cold, a state that lifts validation items over test items scores higher on validation and lower on "
        "test, so the update's choices (prior, depth, step) are made with split or blind.", "split",
        check=one_of("split", "blind", "cold"))
    min_gain_se: float = _help(
        "fast: the update's chosen state replaces its prior only when its gain in validation score over the "
        "prior's, paired per validation user, is above this many standard errors; otherwise the prior is kept "
        "(0: any gain counts).", 2.0, check=at_least(0))
    eval_every: int = _help("Validate every N steps (fast) or epochs (retrain); the start is validated too.", 10,
                            check=at_least(1))
    patience: int = _help("Stop after N validations without a better score.", 5, check=at_least(1))
    steps: int = _help("fast: maximum full-batch Adam steps.", 300, check=at_least(1))
    lr: float = _help("fast: Adam learning rate of the cold rows.", 0.003, check=above(0))
    pull: float = _help("fast: weight of ||e - prior||^2 per cold item (0: the prior is only the start).", 1.0,
                        check=at_least(0))
    negatives: int = _help("fast: sampled negatives per accepted pair.", 16, check=at_least(1))
    batch_size: int = _help("fast: accepted pairs per step (sampled; the loss stands for all pairs).", 4096,
                            check=at_least(1))
    negative_pool: str = _help("fast: negatives drawn from warm | cold | all items (cold ones move too).", "all",
                               check=one_of("warm", "cold", "all"))
    weight_by_p_yes: bool = _help("fast: weight each accepted pair by the judge's P(Yes).", False)
    init: str = _help("retrain: scratch (fresh weights, the paper) | backbone (the trained backbone, cold rows "
                      "at the prior).", "backbone", check=one_of("scratch", "backbone"))
    epochs: int = _help("retrain: maximum epochs.", 100, check=at_least(1))
    retrain_lr: float = _help("retrain: Adam learning rate.", 0.001, check=above(0))


@dataclass
class EvalConfig:
    ks: list[int] = _help("Cut-offs for Recall@K / NDCG@K.", factory=lambda: [20], check=(nonempty, each(at_least(1))))
    batch_size: int = _help("Users scored per matrix product.", 1024, check=at_least(1))
    metric: str = _help("Early-stopping metric, recall@K or ndcg@K with K one of `ks`, e.g. ndcg@20.", "ndcg@20",
                        check=matches(r"(recall|ndcg)@\d+", "recall@K or ndcg@K"))


@dataclass
class RunConfig:
    name: str = _help("Run name: artifacts go to <runs_dir>/<name>/.", "default", check=nonempty)
    runs_dir: str = _help("Parent folder of runs.", "runs", check=nonempty)
    seed: int = _help("Seed of model initialisation and sampling.", 2023, check=at_least(0))
    stages: list[str] = _help(
        f"Stages `coldllm run` executes, in order: {_choices(RUN_STAGES)}.",
        factory=lambda: ["prepare", "train", "evaluate_test", "content", "baselines"],
        check=each(one_of(*RUN_STAGES.names())),
    )
    reuse: dict = _help(
        "Stages taken from another finished run instead of recomputed: {stage: run name}, e.g. "
        "{train: my-backbone-run}. Only train, filter, finetune and simulate can be reused.",
        factory=dict, check=each(one_of(*REUSABLE_STAGES)),
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


class _Loader(yaml.SafeLoader):
    """YAML with only true/false as booleans (as in YAML 1.2).

    YAML 1.1 also reads yes/no/on/off as booleans, which would turn ``threshold: yes`` into the
    text 'True'; a boolean setting still accepts yes/no, since ``_coerce`` reads them as text.
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506  (a SafeLoader: plain data only)


_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_env(text: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` so presets carry no machine-specific paths."""
    return _ENV.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), text)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = _yaml(value)
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
            if isinstance(value, (dict, list)):  # `{title}` unquoted is a YAML mapping, not a text
                raise ValueError(value)
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config key '{key}' expects {hint.__name__}, got {value!r}") from None
    return value


def apply_values(obj: Any, values: dict[str, Any], prefix: str = "") -> None:
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
            apply_values(current, value, prefix=f"{full}.")
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
        values = _yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {err.object[err.start]:#04x})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where}: invalid YAML: {' '.join(str(problem).split())}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    _anchor_paths(values, path.parent)
    parent = values.pop("extends", None)
    if parent is None:
        return values
    base = _read_preset(path.parent / parent, seen + (path,))
    return _merge(base, values)


# The settings that name files: in a preset they are relative to the preset's folder, so a preset
# means the same data whichever folder the command is started from.
PATH_KEYS = (("data", "path"), ("filter", "file"))


def _anchor_paths(values: dict[str, Any], folder: Path) -> None:
    """Resolve the relative ``PATH_KEYS`` of one preset against its ``folder``.

    A variable's value comes from the shell, so a relative one that starts the path is relative to
    the current directory, as any path typed there; a default written in the preset is relative to
    the preset. A relative result is written relative to the current directory (run folders record
    paths relative to the folder that holds ``runs_dir``, and the data cache is keyed by the
    recorded path); an absolute one stays as it was given.
    """
    for section, key in PATH_KEYS:
        raw = values.get(section, {}).get(key) if isinstance(values.get(section), dict) else None
        if not isinstance(raw, str) or not raw:
            continue
        expanded = expand_env(raw)
        if os.path.isabs(expanded):
            values[section][key] = os.path.normpath(expanded)
            continue
        lead = _ENV.match(raw)
        from_shell = lead is not None and bool(os.environ.get(lead.group(1)))
        target = os.path.normpath((Path.cwd() if from_shell else folder.resolve()) / expanded)
        try:
            values[section][key] = os.path.relpath(target, Path.cwd())
        except ValueError:  # another drive: no relative path exists
            values[section][key] = target


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
        try:
            value = _yaml(raw) if raw else ""
        except yaml.YAMLError as err:
            # a value YAML cannot read ('{} x', an unclosed bracket): name the override, not the parser's state
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"override {arg!r}: the value is not valid YAML ({problem}); quote it, "
                              f"e.g. --{key}='\"...\"'") from None
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def load_config(preset: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """The default config, a preset on top, overrides on top of both; every value is then checked."""
    cfg = RunConfig()
    if preset is not None:
        apply_values(cfg, _read_preset(Path(preset)))
    if overrides:
        apply_values(cfg, parse_overrides(overrides))
    cfg.data.path = expand_env(cfg.data.path)
    cfg.filter.file = expand_env(cfg.filter.file)
    return validate(cfg)


# -- validation -------------------------------------------------------------------------------------
# The hyper-parameter dataclasses of other modules (ALDI, the language-model tower, LoRA, the prompt,
# each baseline) carry help but no checks; their fields are checked by name, since each of these names
# means the same thing in every one of them. A field that declares its own ``checks`` wins.
PARAM_CHECKS: dict[str, tuple[Check, ...]] = {
    "lr": (above(0),), "inner_lr": (above(0),), "tau": (above(0),),
    "reg": (at_least(0),), "init_scale": (at_least(0),), "init_std": (at_least(0),),
    "dropout": (between(0, 1, high_open=True),), "gen_dropout": (between(0, 1, high_open=True),),
    "batch_size": (at_least(1),), "batch": (at_least(1),), "epochs": (at_least(1),), "patience": (at_least(1),),
    "hidden": (at_least(1),), "out_dim": (at_least(0),), "layers": (at_least(0),), "r": (at_least(1),),
    "k": (at_least(1),), "n_neg": (at_least(1),), "seed": (at_least(0),), "align": (at_least(0),),
    "max_history": (at_least(0),), "history": (one_of("sample", "similar"),), "max_title_chars": (at_least(2),), "max_title_tokens": (at_least(1),),
    "batching": (one_of("pairs", "items"),), "batch_items": (at_least(1),),
}


def validate(cfg: RunConfig) -> RunConfig:
    """Check every setting against its field's checks, then the rules that tie settings together.

    Runs when a config is loaded, before any stage writes anything: a value that a stage would
    silently replace (an unknown judge threshold becoming 0.5) or trip over hours later is an error
    naming the key now.
    """
    _check_fields(cfg, "")
    for rule in CROSS_CHECKS:
        problem = rule(cfg)
        if problem:
            raise ConfigError(problem)
    return cfg


def checks_of(f: dataclasses.Field) -> tuple[Check, ...]:
    """The checks that apply to a field: its own, or (a hyper-parameter field without any) its name's."""
    return f.metadata["checks"] if "checks" in f.metadata else PARAM_CHECKS.get(f.name, ())


def params_of(f: dataclasses.Field) -> "type | dict[str, type] | None":
    """The dataclass whose fields a mapping setting may set (a dict of them: one per method), or None."""
    return f.metadata.get("params")


def _check_fields(obj: Any, prefix: str) -> None:
    for f in dataclasses.fields(obj):
        key, value = f"{prefix}{f.name}", getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_fields(value, f"{key}.")
            continue
        for check in checks_of(f):
            problem = check(value)
            if problem:
                raise ConfigError(f"config key '{key}' {problem}, got {value!r}")
        if (target := params_of(f)) is not None:
            _check_params(key, value, target)


def _check_params(key: str, values: dict[str, Any], target: Any) -> None:
    """A mapping of hyper-parameters: known keys, right types, allowed values (a dict: one class per name)."""
    if isinstance(target, dict):
        for name, sub in values.items():
            if name not in target:
                raise ConfigError(f"config key '{key}.{name}': no such method (known: {', '.join(sorted(target))})")
            if not isinstance(sub, dict):
                raise ConfigError(f"config key '{key}.{name}' expects a mapping, got {sub!r}")
            _check_params(f"{key}.{name}", sub, target[name])
        return
    obj = target()
    apply_values(obj, values, prefix=f"{key}.")
    _check_fields(obj, f"{key}.")


def _metric_in_ks(cfg: RunConfig) -> str | None:
    k = int(cfg.eval.metric.split("@")[1])
    if k not in cfg.eval.ks:
        return f"config key 'eval.metric' is {cfg.eval.metric!r} but {k} is not in eval.ks {cfg.eval.ks}; add it there"
    return None


def _candidate_file(cfg: RunConfig) -> str | None:
    if cfg.refiner.judge == "file" and cfg.filter.towers != "file":
        return "config key 'refiner.judge' is 'file', which reads the answers of filter.file: set filter.towers=file"
    if cfg.filter.towers == "file" and not cfg.filter.file:
        return "config key 'filter.file' must name a CSV of candidates when filter.towers is 'file'"
    return None


def _template_placeholders(cfg: RunConfig) -> str | None:
    """A prompt that would fail to format at the first judged pair, hours into a run, fails here."""
    from .llm.prompts import prefix_text, suffix_text  # deferred: the llm package loads torch and transformers

    template = PromptTemplate()
    apply_values(template, cfg.refiner.template, prefix="refiner.template.")
    try:
        prefix_text(template, ["a title"]), suffix_text(template, "a title")
        return None
    except (KeyError, IndexError, ValueError, AttributeError) as err:
        problem = err
    # name the field that broke: the first whose own text does not format with a title alone
    for f in dataclasses.fields(template):
        text, key = getattr(template, f.name), f"config key 'refiner.template.{f.name}'"
        if not isinstance(text, str):
            continue
        try:
            text.format(title="a title")
        except KeyError as err:
            return f"{key} has an unknown placeholder {{{err.args[0]}}}; the only placeholder is {{title}}"
        except IndexError:
            return f"{key} has a placeholder {{}} without a name; the only placeholder is {{title}}"
        except (ValueError, AttributeError) as err:
            return f"{key} cannot be formatted with a title: {err} (a literal brace is written {{{{ or }}}})"
    return f"config key 'refiner.template' cannot be formatted: {problem}"


def _ratings(cfg: RunConfig) -> str | None:
    if cfg.data.min_rating <= 0:
        return None
    if cfg.data.format == "citeulike":
        return "config key 'data.min_rating' is set but CiteULike has no ratings (every saved article is a like)"
    if cfg.data.split == "published":
        return ("config key 'data.min_rating' filters the interactions file, which data.split 'published' does "
                "not split: filter the split files themselves, or use data.split 'random'")
    return None


# Rules that tie settings together; each returns what is wrong, or None.
CROSS_CHECKS: tuple[Callable[[RunConfig], "str | None"], ...] = (
    _metric_in_ks, _candidate_file, _template_placeholders, _ratings,
)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def default_tree(cfg: Any = None) -> dict[str, Any]:
    """Every setting's default as a nested mapping, the hyper-parameter mappings (a field with a
    ``params`` dataclass, e.g. ``filter.onepass``) included with their dataclass's defaults: what a
    mapping that leaves a key out means."""
    cfg = RunConfig() if cfg is None else cfg
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        params = params_of(f)
        if dataclasses.is_dataclass(value):
            out[f.name] = default_tree(value)
        elif isinstance(params, type):
            out[f.name] = dataclasses.asdict(params())
        else:
            out[f.name] = copy.deepcopy(value)
    return out
