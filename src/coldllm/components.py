"""The funnel's interchangeable parts, declared once: which filters, judges and judging engines
exist, what each is for, and which config fields each reads.

A declaration is data (no torch, no model), so the settings module checks a name against it when a
config loads and the run derives from it which stages a changed setting makes stale. The code that
does the work registers itself against its declaration (``FILTERS.implement("onepass")`` on the
class), in the module that needs the heavy imports; a name declared here without an
implementation, or an implementation of an undeclared name, is a test failure, not a silent gap.

What a component reads is a function of the config: the coupled filter reads ``update.prior_k``
only when its collaborative sub-tower is content-KNN. A stage's inputs are what its component reads
plus what the stages before it read (``funnel_inputs``), so no stage keeps a list of its own that
can drift from its code (a test records every field the stages touch and checks it against these).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

Reads = Callable[[dict[str, Any]], tuple[str, ...]]


@dataclass(frozen=True)
class Declared:
    name: str
    help: str
    reads: Reads  # config fields ("section" or "section.key") the component reads, given the config
    flags: frozenset[str] = frozenset()  # what it can do: scores_new_items, finetunes, reads_labels
    # what only its verdicts read, not its fitting: changing one makes the simulation stale, not the
    # hours of fine-tuning before it
    verdict_reads: Reads = lambda config: ()

    def has(self, flag: str) -> bool:
        return flag in self.flags


def _as_reads(reads: tuple[str, ...] | Reads) -> Reads:
    return reads if callable(reads) else (lambda config, fixed=tuple(reads): fixed)


@dataclass
class Registry:
    """Declarations of one kind of component, chosen by the config field ``key``."""

    key: str
    _declared: dict[str, Declared] = field(default_factory=dict)
    _implemented: dict[str, type] = field(default_factory=dict)

    def declare(self, name: str, help: str, reads: tuple[str, ...] | Reads = (), flags: tuple[str, ...] = (),
                verdict_reads: tuple[str, ...] | Reads = ()) -> None:
        if name in self._declared:
            raise ValueError(f"{self.key}: {name!r} is declared twice")
        self._declared[name] = Declared(name, help, _as_reads(reads), frozenset(flags), _as_reads(verdict_reads))

    def declare_each(self, *choices: tuple[str, str]) -> None:
        """``declare`` for each ``(name, help)`` of components that read no config field."""
        for name, help in choices:
            self.declare(name, help)

    def implement(self, name: str) -> Callable[[type], type]:
        """Class decorator: the implementation of the declared component ``name``."""
        def register(cls: type) -> type:
            if name not in self._declared:
                raise ValueError(f"{self.key}: {name!r} is implemented but not declared in coldllm.components")
            self._implemented[name] = cls
            cls.declared = self._declared[name]
            return cls

        return register

    def names(self, flag: str | None = None) -> tuple[str, ...]:
        return tuple(n for n, d in self._declared.items() if flag is None or d.has(flag))

    def __getitem__(self, name: str) -> Declared:
        if name not in self._declared:
            raise KeyError(f"{self.key} {name!r} must be one of {list(self._declared)}")
        return self._declared[name]

    def __iter__(self) -> Iterator[Declared]:
        return iter(self._declared.values())

    def implementation(self, name: str) -> type:
        if name not in self._implemented:
            raise KeyError(f"{self.key} {name!r} has no implementation loaded (import coldllm.funnel first)")
        return self._implemented[name]

    def implemented(self) -> tuple[str, ...]:
        return tuple(self._implemented)


def _section(config: dict[str, Any], dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    return (config.get(section) or {}).get(key)


# -- filters (filter.towers) -----------------------------------------------------------------------
FILTERS = Registry("filter.towers")


def _collab_reads(config: dict[str, Any]) -> tuple[str, ...]:
    # content-KNN item vectors are the update's prior, read with its neighbourhood size
    knn = _section(config, "filter.collab_source") == "knn"
    return ("filter.collab_source", "update.prior_k" if knn else "filter.collab")


_LM_READS = ("filter.lm", "filter.text_model")
_SEARCH_READS = ("filter.normalize_users", "filter.index")

FILTERS.declare("coupled", "the paper's filter: the collaborative (ALDI student or content-KNN) and the "
                "language-model sub-towers, their scores summed",
                lambda c: (*_collab_reads(c), *_LM_READS, *_SEARCH_READS), ("scores_new_items",))
FILTERS.declare("collab", "the collaborative sub-tower alone (an ablation)",
                lambda c: (*_collab_reads(c), *_SEARCH_READS), ("scores_new_items",))
FILTERS.declare("lm", "the language-model sub-tower alone (an ablation)", (*_LM_READS, *_SEARCH_READS),
                ("scores_new_items",))
# the one-pass simulator's text-encoder settings, read only with filter.onepass.encoder=text: a preset
# that sets them must not make a frozen-vectors run stale
_ONEPASS_TEXT = ("text_model", "tune", "pooling", "lora_r", "lora_targets", "text_lr", "max_length", "standardize",
                 "lora_layers")


def _onepass_reads(config: dict[str, Any]) -> tuple[str, ...]:
    onepass = _section(config, "filter.onepass") or {}
    text = onepass.get("encoder") == "text"
    # the text path always batches by items; the vector path does with batching=items
    by_items = text or onepass.get("batching") == "items"
    unread = [] if text else [f"-filter.onepass.{k}" for k in _ONEPASS_TEXT]
    unread += ["-filter.onepass.batching"] if text else []
    unread += [] if by_items else ["-filter.onepass.batch_items"]
    return ("filter.onepass", "filter.text_model", "filter.index", *unread)


FILTERS.declare("onepass", "the one-pass simulator: the item's text read once, a head scores every user",
                _onepass_reads, ("scores_new_items",))
FILTERS.declare("random", "K random users per item (an ablation)", (), ("scores_new_items",))
FILTERS.declare("file", "candidates read from filter.file (e.g. the paper's released ones)", ("filter.file",))

# -- judges (refiner.judge) ------------------------------------------------------------------------
JUDGES = Registry("refiner.judge")
# what the LoRA judge's fine-tuning reads; its verdicts depend on all of it through the adapter
_TUNE_READS = ("refiner.model", "refiner.template", "refiner.train_users", "refiner.pairs_per_user",
               "refiner.eval_users", "refiner.hard_negatives", "refiner.lora", "refiner.threshold", "refiner.augment",
               "refiner.examples", "refiner.train_items", "refiner.eval_items")


def _centering_reads(config: dict[str, Any]) -> tuple[str, ...]:
    # the reference users the centred verdicts are measured against, read only when centring
    centred = _section(config, "refiner.center") is not False  # the default
    return ("refiner.center", *(("refiner.guard_users", "refiner.guard_items") if centred else ()))


JUDGES.declare("llm", "the LoRA-tuned language model: P(Yes) for each (user history, item) prompt", _TUNE_READS,
               ("finetunes", "servable"), verdict_reads=_centering_reads)
JUDGES.declare("cosine", "free: the item text's cosine to the mean text of the user's history; each item keeps "
               "its refiner.keep share", ("refiner.keep", "refiner.template"), ("servable",))
JUDGES.declare("activity", "free: each item keeps its refiner.keep share of candidates, the users with the most "
               "training interactions", ("refiner.keep",), ("servable",))
JUDGES.declare("all", "no refiner: every candidate accepted", (), ("servable",))
JUDGES.declare("file", "the answer column of filter.file", (), ("reads_labels",))
JUDGES.declare("oracle", "a diagnostic that reads held-out labels (never a method)",
               ("refiner.oracle_r", "refiner.oracle_f"), ("reads_labels",))

# -- engines (refiner.engine): where the LoRA judge's simulation runs; never an input (the same
# verdicts whichever runs them, and shards written by one resume under another) ------------------
ENGINES = Registry("refiner.engine")
ENGINES.declare_each(
    ("local", "this process, shard by shard"),
    ("ray", "Ray Data actors, each with its own copy of the model"),
    ("vllm", "vLLM (a GPU) with the adapter applied per request"))

# -- the other named choices of the settings: declared here (the settings check names against these),
# implemented where the work is (a test holds each module's table to its declaration) ----------------
DATA_FORMATS = Registry("data.format")
DATA_FORMATS.declare_each(
    ("citeulike", "the CiteULike files: users.dat-style lists, item texts and a published split"),
    ("csv", "an interactions table and an items table as CSV"),
    ("parquet", "the same tables as Parquet"),
    ("recbole", "RecBole atomic files (.inter, .item)"))

BACKBONE_MODELS = Registry("backbone.model")
BACKBONE_MODELS.declare_each(
    ("mf", "matrix factorisation"),
    ("lightgcn", "LightGCN: embeddings propagated over the interaction graph, layers averaged"),
    ("ngcf", "NGCF: propagation with feature transforms and nonlinearities"))

CONTENT_ENCODERS = Registry("content.encoder")
CONTENT_ENCODERS.declare_each(
    ("minilm", "the packaged sentence encoder"),
    ("llm", "mean-pooled last states of a causal language model"))

BASELINE_METHODS = Registry("baseline.methods")
BASELINE_METHODS.declare_each(
    ("random", "random embeddings (a floor)"), ("knn", "content-KNN: the mean of the most text-similar warm items"),
    ("deepmusic", "DeepMusic"), ("dropoutnet", "DropoutNet"), ("metaemb", "MetaEmb"), ("mtpr", "MTPR"),
    ("clcrec", "CLCRec"), ("gar", "GAR"), ("aldi", "ALDI"))

RUN_STAGES = Registry("run.stages")
RUN_STAGES.declare_each(
    ("prepare", "read and split the data"), ("train", "train the backbone"), ("evaluate_test", "the backbone on test"),
    ("content", "encode every item's text"), ("baselines", "fit and evaluate the content-mapping baselines"),
    ("filter", "each cold item's candidate users"), ("finetune", "tune the language-model judge"),
    ("simulate", "judge the candidates"), ("update", "cold rows from the accepted pairs"),
    ("evaluate_coldllm_val", "the updated model on validation"))
# the stages whose folder another run can take (``run.reuse``)
REUSABLE_STAGES = ("train", "filter", "finetune", "simulate")

# -- stages ----------------------------------------------------------------------------------------
BEFORE_FUNNEL = ("data", "backbone", "eval", "seed")  # the backbone the funnel's stages start from
FUNNEL_ORDER = ("filter", "finetune", "simulate", "update", "evaluate_coldllm")


def funnel_inputs(config: dict[str, Any], stage: str) -> tuple[str, ...]:
    """The config fields a funnel stage depends on: what its own component reads and what every
    stage before it read (a changed filter makes the judge's verdicts and the update stale)."""
    towers, judge = _section(config, "filter.towers"), _section(config, "refiner.judge")
    own = {
        "filter": (*BEFORE_FUNNEL, "content", "filter.towers", "filter.k", *FILTERS[towers].reads(config)),
        "finetune": ("refiner.judge", *(JUDGES[judge].reads(config) if JUDGES[judge].has("finetunes") else ())),
        "simulate": ("refiner.judge", *JUDGES[judge].reads(config), *JUDGES[judge].verdict_reads(config)),
        "update": ("update",),
        "evaluate_coldllm": (),
    }
    out: list[str] = []
    for name in FUNNEL_ORDER[: FUNNEL_ORDER.index(stage) + 1]:
        out += [key for key in own[name] if key not in out]
    return tuple(out)
