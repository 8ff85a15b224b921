"""The funnel's components: one registry each, every declared one implemented, and staleness that
follows what each component reads, checked against what the stages' code really reads."""

import copy
import dataclasses

import pytest

import coldllm.funnel  # noqa: F401  (registers the implementations)
from coldllm.components import ENGINES, FILTERS, FUNNEL_ORDER, JUDGES, funnel_inputs
from coldllm.config import ConfigError, RunConfig, load_config, to_dict
from coldllm.pipeline import STAGES, Run
from coldllm.run import stage_inputs, with_defaults
from test_cli import write_project


@pytest.mark.parametrize("registry", [FILTERS, JUDGES, ENGINES], ids=lambda r: r.key)
def test_every_declared_component_has_one_implementation(registry):
    assert set(registry.implemented()) == set(registry.names())
    for name in registry.names():
        assert registry.implementation(name).declared is registry[name]


def test_an_undeclared_implementation_or_an_unknown_name_is_refused():
    with pytest.raises(ValueError, match="not declared"):
        FILTERS.implement("telepathy")(type("Telepathy", (), {}))
    with pytest.raises(ConfigError, match="filter.towers"):
        load_config(None, ["--filter.towers=telepathy"])


def changed(value):
    """Another value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, list):
        return [*value, "other"]
    if isinstance(value, dict):
        return {**value, "other": 1}
    raise TypeError(value)


def with_field(config: dict, key: str, value) -> dict:
    out = copy.deepcopy(config)
    section, _, field = key.partition(".")
    if field:
        out[section][field] = value
    else:
        out[section] = value
    return out


def stale_after(config: dict, key: str) -> set[str]:
    other = with_field(config, key, changed(config[key.partition(".")[0]][key.partition(".")[2]]
                                            if "." in key else config[key]))
    return {s for s in FUNNEL_ORDER if stage_inputs(other, s) != stage_inputs(config, s)}


FUNNELS = [("coupled", "llm", "aldi"), ("coupled", "cosine", "knn"), ("collab", "all", "knn"),
           ("onepass", "all", "aldi"), ("lm", "oracle", "aldi"), ("random", "cosine", "aldi")]


@pytest.mark.parametrize("towers,judge,collab", FUNNELS)
def test_a_changed_field_makes_exactly_the_stages_that_read_it_stale(towers, judge, collab):
    config = to_dict(RunConfig())
    config["filter"].update(towers=towers, collab_source=collab)
    config["refiner"]["judge"] = judge
    after_filter = {"filter", "finetune", "simulate", "update", "evaluate_coldllm"}
    for key in (k for k in FILTERS[towers].reads(config) if not k.startswith("-")):
        assert stale_after(config, key) == after_filter, key
    for key in JUDGES[judge].reads(config):
        tuned = {"finetune"} if JUDGES[judge].has("finetunes") else set()
        assert stale_after(config, key) == {*tuned, "simulate", "update", "evaluate_coldllm"}, key
    for key in [f"update.{k}" for k in config["update"] if k != "device"]:
        expected = after_filter if key in FILTERS[towers].reads(config) else {"update", "evaluate_coldllm"}
        assert stale_after(config, key) == expected, key
    # what no component of this funnel reads makes nothing stale
    read = set(funnel_inputs(config, "evaluate_coldllm"))
    for section in ("filter", "refiner"):
        for field in config[section]:
            key = f"{section}.{field}"
            if key not in read and field != "device":
                assert stale_after(config, key) == set(), key


def test_the_one_pass_text_settings_are_inputs_only_when_it_reads_text():
    config = with_defaults(to_dict(RunConfig()))
    config["filter"]["towers"] = "onepass"
    text_model = {**config["filter"]["onepass"], "text_model": "minilm", "tune": "full"}
    assert stage_inputs(with_field(config, "filter.onepass", text_model), "filter") == stage_inputs(config, "filter")
    config["filter"]["onepass"]["encoder"] = "text"
    text_model["encoder"] = "text"
    assert stage_inputs(with_field(config, "filter.onepass", text_model), "filter") != stage_inputs(config, "filter")
    # what every setting reads is compared with its defaults filled in: a key a run left out means its default
    recorded = to_dict(RunConfig())
    recorded["filter"].update(towers="onepass", onepass={"epochs": 20})
    assert stage_inputs(with_defaults(recorded), "filter") == stage_inputs(with_defaults(
        {**recorded, "filter": {**recorded["filter"], "onepass": {}}}), "filter")


def test_the_batch_of_items_is_an_input_only_where_items_are_batched():
    config = with_defaults(to_dict(RunConfig()))
    config["filter"]["towers"] = "onepass"
    onepass = config["filter"]["onepass"]
    inputs = lambda **change: stage_inputs(with_field(config, "filter.onepass", {**onepass, **change}), "filter")  # noqa: E731
    assert inputs(batch_items=7) == inputs()  # vectors batched by pairs: the item batch is never read
    assert inputs(batching="items", batch_items=7) != inputs(batching="items")
    assert inputs(batching="items") != inputs()
    # the text path always batches by items: its batch counts, the vector path's batching does not
    assert inputs(encoder="text", batching="items") == inputs(encoder="text")
    assert inputs(encoder="text", batch_items=7) != inputs(encoder="text")


def test_the_knn_filter_reads_the_priors_neighbourhood_and_the_aldi_filter_does_not():
    config = to_dict(RunConfig())
    assert "filter" not in stale_after(config, "update.prior_k")  # aldi: the prior's k is the update's alone
    config["filter"]["collab_source"] = "knn"
    assert "filter" in stale_after(config, "update.prior_k")


# -- what the stages' code reads, recorded ---------------------------------------------------------
# Fields that change how a stage runs and never what it makes (where, how it batches, run bookkeeping)
RUNTIME = {"name", "runs_dir", "stages", "reuse", "refiner.batch_size", "refiner.gradient_checkpointing",
           "refiner.shard_users", "refiner.verdicts_from", "refiner.engine", "refiner.ray_actors", "refiner.vllm"}


def recording(obj, seen: set[str], prefix: str = ""):
    """A copy of a config whose field reads are added to ``seen`` as ``section.field``."""
    fields = {f.name for f in dataclasses.fields(obj)}

    def getattribute(self, name):
        value = object.__getattribute__(self, name)
        if name in fields and not dataclasses.is_dataclass(value):
            seen.add(f"{prefix}{name}")
        return value

    out = copy.copy(obj)
    out.__class__ = type(f"Recording{type(obj).__name__}", (type(obj),), {"__getattribute__": getattribute})
    for name in fields:
        value = getattr(obj, name)
        if dataclasses.is_dataclass(value):
            object.__setattr__(out, name, recording(value, seen, f"{prefix}{name}."))
    return out


def covered(key: str, inputs: tuple[str, ...]) -> bool:
    section = key.split(".")[0]
    return key in RUNTIME or key.endswith(".device") or any(key == i or key.startswith(i + ".") or i == section
                                                           for i in inputs)


@pytest.mark.parametrize("towers,judge,collab", [("coupled", "llm", "knn"), ("onepass", "cosine", "aldi"),
                                                 ("random", "oracle", "aldi")])
def test_each_stage_reads_only_what_its_components_declare(tmp_path, tiny_llm_dir, towers, judge, collab):
    cfg = load_config(write_project(tmp_path), [
        f"--filter.towers={towers}", f"--filter.collab_source={collab}", f"--refiner.judge={judge}",
        f"--filter.text_model={tiny_llm_dir}", "--filter.k=4", "--filter.collab={epochs: 1, hidden: 8}",
        "--filter.lm={epochs: 1, hidden: 8, out_dim: 4}", "--filter.onepass={epochs: 1, hidden: 8}",
        f"--refiner.model={tiny_llm_dir}", "--refiner.train_users=8", "--refiner.eval_users=4",
        "--refiner.lora={epochs: 1, batch_size: 4}", "--update.k_grid=[2, 4]", "--update.steps=5",
        "--backbone.epochs=2"])
    run, seen_by = Run(cfg), {}
    for stage in ("prepare", "train", "filter", "finetune", "simulate", "update", "evaluate_coldllm_val"):
        seen = seen_by[stage] = set()
        run.cfg = recording(cfg, seen)
        STAGES[stage](run)
        run.cfg = cfg
        inputs = tuple(stage_inputs(to_dict(cfg), stage))
        undeclared = sorted(k for k in seen if not covered(k, inputs))
        assert not undeclared, f"stage {stage} reads {undeclared} but its inputs are {inputs}"
    # the recording sees what the code reads: the content-KNN sub-tower reads the prior's k
    assert ("update.prior_k" in seen_by["filter"]) == (collab == "knn" and towers == "coupled")
    assert {"filter.k", "refiner.judge"} <= seen_by["filter"] | seen_by["simulate"]


def test_a_run_recorded_before_a_setting_that_changed_behaviour_is_stale():
    """update.val_candidates and update.min_gain_se came with defaults that change what the update
    makes: an update recorded without them ran under the old behaviour and must be redone."""
    recorded = to_dict(RunConfig())
    for key in ("val_candidates", "min_gain_se"):
        del recorded["update"][key]
    current = with_defaults(to_dict(RunConfig()))
    assert stage_inputs(with_defaults(recorded), "update") != stage_inputs(current, "update")
    assert stage_inputs(with_defaults(recorded), "filter") == stage_inputs(current, "filter")
    assert with_defaults(recorded)["update"]["val_candidates"] == "cold"


def test_a_judge_recorded_before_centring_is_stale_under_it():
    """refiner.center came with a default (on) that changes the LoRA judge's verdicts: a simulation
    recorded without it ran uncentred and is redone, its fine-tuning is not; the judges that never
    read it are untouched, and the reference users' settings count only while centring."""
    def llm(**refiner):
        config = to_dict(RunConfig())
        config["refiner"].update(judge="llm", **refiner)
        return config

    recorded = llm()
    del recorded["refiner"]["center"]
    assert with_defaults(recorded)["refiner"]["center"] is False
    current = with_defaults(llm())
    assert stage_inputs(with_defaults(recorded), "simulate") != stage_inputs(current, "simulate")
    assert stage_inputs(with_defaults(recorded), "finetune") == stage_inputs(current, "finetune")
    assert {"refiner.center", "refiner.guard_users", "refiner.guard_items"} <= set(funnel_inputs(current, "simulate"))
    assert "refiner.guard_users" not in funnel_inputs(llm(center=False), "simulate")
    cosine = to_dict(RunConfig())
    cosine["refiner"]["judge"] = "cosine"
    assert "refiner.center" not in funnel_inputs(cosine, "simulate")


def test_every_declared_name_has_its_implementation_and_no_other():
    from coldllm import components
    from coldllm.backbones import BACKBONES
    from coldllm.baselines import METHODS
    from coldllm.content import ENCODERS
    from coldllm.data.readers import READERS
    from coldllm.hparams import METHOD_PARAMS
    from coldllm.pipeline import STAGE_FOLDERS, all_stages

    for declared, implemented in ((components.DATA_FORMATS, READERS), (components.BACKBONE_MODELS, BACKBONES),
                                  (components.CONTENT_ENCODERS, ENCODERS), (components.BASELINE_METHODS, METHODS),
                                  (components.RUN_STAGES, all_stages())):
        assert sorted(declared.names()) == sorted(implemented), declared.key
    assert sorted(components.REUSABLE_STAGES) == sorted(STAGE_FOLDERS)
    # each method is built from the hyper-parameters its setting is checked against
    assert {name: cls.Params for name, cls in METHODS.items()} == METHOD_PARAMS
