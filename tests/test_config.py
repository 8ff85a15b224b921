import re

import pytest

from coldllm.config import ConfigError, load_config, parse_overrides


def test_overrides_are_typed_and_nested():
    cfg = load_config(None, ["--backbone.lr=0.05", "--backbone.dim=32", "--eval.ks=[10,20]", "--name=x"])
    assert cfg.backbone.lr == 0.05 and isinstance(cfg.backbone.lr, float)
    assert cfg.backbone.dim == 32 and cfg.eval.ks == [10, 20] and cfg.name == "x"


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(ConfigError, match="backbone.lrr"):
        load_config(None, ["--backbone.lrr=0.1"])


def test_bad_value_type_names_the_key():
    with pytest.raises(ConfigError, match="backbone.dim"):
        load_config(None, ["--backbone.dim=big"])
    with pytest.raises(ConfigError, match="backbone.dim"):
        load_config(None, ["--backbone.dim=1.5"])


def test_preset_extends_and_unknown_key_in_file(tmp_path):
    (tmp_path / "base.yaml").write_text("backbone:\n  model: mf\n  dim: 8\n")
    (tmp_path / "top.yaml").write_text("extends: base.yaml\nbackbone:\n  dim: 12\n")
    cfg = load_config(tmp_path / "top.yaml")
    assert (cfg.backbone.model, cfg.backbone.dim) == ("mf", 12)
    (tmp_path / "bad.yaml").write_text("data:\n  pathh: x\n")
    with pytest.raises(ConfigError, match="data.pathh"):
        load_config(tmp_path / "bad.yaml")


def test_env_expansion_in_data_path(monkeypatch):
    monkeypatch.setenv("COLDLLM_DATA", "/somewhere")
    assert load_config(None).data.path == "/somewhere/citeulike"
    monkeypatch.delenv("COLDLLM_DATA")
    assert load_config(None).data.path == "../shared/data/citeulike"


def test_override_needs_equals():
    with pytest.raises(ConfigError, match="--backbone.lr"):
        parse_overrides(["--backbone.lr"])


def test_every_preset_validates():
    from pathlib import Path

    presets = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
    assert presets
    for preset in presets:
        load_config(preset)  # raises ConfigError naming the key if a preset drifted out of range


def test_every_setting_with_a_choice_or_range_declares_its_check():
    """Numbers and enumerations carry their checks beside their help text (free text and flags need none)."""
    import dataclasses

    from coldllm.config import RunConfig

    free = {"data.timestamp_field", "content.model", "filter.file", "filter.normalize_users",
            "update.weight_by_p_yes", "refiner.gradient_checkpointing", "refiner.center", "baselines.params", "filter.collab", "filter.lm", "refiner.template",
            "refiner.lora", "refiner.vllm"}  # refiner.vllm: vllm.LLM's own arguments, checked by vllm
    missing = []
    for section in dataclasses.fields(RunConfig):
        value = getattr(RunConfig(), section.name)
        fields = dataclasses.fields(value) if dataclasses.is_dataclass(value) else [section]
        for f in fields:
            key = f"{section.name}.{f.name}" if dataclasses.is_dataclass(value) else f.name
            if key not in free and not f.metadata.get("checks") and f.metadata.get("params") is None:
                missing.append(key)
    assert not missing


@pytest.mark.parametrize("override,key", [
    ("--update.mode=slow", "update.mode"), ("--update.prior=mean", "update.prior"),
    ("--update.select_on=test", "update.select_on"), ("--update.init=random", "update.init"),
    ("--update.steps=0", "update.steps"), ("--update.pull=-1", "update.pull"),
    ("--update.negatives=0", "update.negatives"), ("--update.prior_k=0", "update.prior_k"),
    ("--update.retrain_lr=0", "update.retrain_lr"), ("--filter.towers=both", "filter.towers"),
    ("--filter.collab_source=mf", "filter.collab_source"), ("--refiner.judge=gpt", "refiner.judge"),
    ("--refiner.hard_negatives=1.5", "refiner.hard_negatives"), ("--refiner.shard_users=0", "refiner.shard_users"),
    ("--refiner.train_users=0", "refiner.train_users"), ("--data.format=xlsx", "data.format"),
    ("--data.split=temporal", "data.split"), ("--data.text_fields=[]", "data.text_fields"),
    ("--backbone.dropout=1", "backbone.dropout"), ("--backbone.layers=-1", "backbone.layers"),
    ("--backbone.patience=0", "backbone.patience"), ("--content.max_length=0", "content.max_length"),
    ("--eval.batch_size=0", "eval.batch_size"), ("--seed=-1", "seed"), ("--name=", "name"),
    ("--reuse={evaluate_test: other}", "reuse"), ("--filter.lm.hidden=0", "filter.lm.hidden"),
    ("--filter.collab.epochs=0", "filter.collab.epochs"), ("--refiner.lora.dropout=1", "refiner.lora.dropout"),
    ("--refiner.template.max_history=-1", "refiner.template.max_history"),
    ("--refiner.lora.rank=8", "refiner.lora.rank"),
])
def test_out_of_range_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(f"'{key}")):
        load_config(None, [override])


def test_unquoted_yes_and_no_stay_words():
    cfg = load_config(None, ["--refiner.threshold=yes", "--filter.normalize_users=no"])
    assert cfg.refiner.threshold == "yes" and cfg.filter.normalize_users is False


def test_a_preset_path_is_relative_to_the_preset(tmp_path, monkeypatch):
    """The same preset names the same data from any folder; paths from the shell stay the shell's."""
    import os

    (tmp_path / "project" / "configs").mkdir(parents=True)
    preset = tmp_path / "project" / "configs" / "mine.yaml"
    preset.write_text("data: {format: csv, path: ../data, split: random}\n"
                      "filter: {towers: file, file: ../candidates.csv}\n")
    (tmp_path / "elsewhere").mkdir()
    for cwd in (tmp_path / "project", tmp_path / "elsewhere", tmp_path / "project" / "configs"):
        monkeypatch.chdir(cwd)
        cfg = load_config(preset)
        assert os.path.realpath(cfg.data.path) == os.path.realpath(tmp_path / "project" / "data")
        assert os.path.realpath(cfg.filter.file) == os.path.realpath(tmp_path / "project" / "candidates.csv")
        assert not os.path.isabs(cfg.data.path)  # recorded relative to the folder that holds runs/
    monkeypatch.chdir(tmp_path / "project")
    assert load_config(preset).data.path == "data"
    # a child preset inherits the path as its parent meant it
    (tmp_path / "project" / "child.yaml").write_text("extends: configs/mine.yaml\nname: child\n")
    assert load_config(tmp_path / "project" / "child.yaml").data.path == "data"
    # the command line and the environment speak for the current folder
    assert load_config(preset, ["--data.path=here"]).data.path == "here"
    (tmp_path / "project" / "configs" / "env.yaml").write_text("data: {path: '${MY_DATA:-../data}/ml'}\n")
    assert load_config(tmp_path / "project" / "configs" / "env.yaml").data.path == "data/ml"
    monkeypatch.setenv("MY_DATA", "shell")
    assert load_config(tmp_path / "project" / "configs" / "env.yaml").data.path == "shell/ml"
    monkeypatch.setenv("MY_DATA", "/abs/data")
    assert load_config(tmp_path / "project" / "configs" / "env.yaml").data.path == "/abs/data/ml"


def test_the_citeulike_preset_runs_the_whole_funnel():
    """`coldllm run -c configs/citeulike.yaml` goes on to the funnel, as the README says."""
    from pathlib import Path

    cfg = load_config(Path(__file__).parent.parent / "configs" / "citeulike.yaml")
    assert cfg.stages[-4:] == ["filter", "finetune", "simulate", "update"] and cfg.stages[:2] == ["prepare", "train"]


def test_min_rating_is_checked_against_the_data(tmp_path):
    with pytest.raises(ConfigError, match="CiteULike has no ratings"):
        load_config(None, ["--data.min_rating=4"])
    with pytest.raises(ConfigError, match="split 'published'"):
        load_config(None, ["--data.format=csv", "--data.min_rating=4"])
    assert load_config(None, ["--data.format=csv", "--data.split=random", "--data.min_rating=4"]).data.min_rating == 4


def test_an_override_yaml_cannot_read_is_one_line_naming_it():
    with pytest.raises(ConfigError, match=r"override '--data\.text_template=\{\} x': the value is not valid YAML"):
        load_config(None, ["--data.text_template={} x"])
    with pytest.raises(ConfigError, match=r"data\.text_template' must name a column in every \{field\}"):
        load_config(None, ["--data.text_template='{0} x'"])


def test_a_text_setting_given_a_mapping_is_refused_not_stringified():
    # `{movie_title}` unquoted reads as a YAML mapping: say so instead of storing "{'movie_title': None}"
    with pytest.raises(ConfigError, match=r"config key 'data\.text_template' expects str, got \{'movie_title': None\}"):
        load_config(None, ["--data.text_template={movie_title}"])
    assert load_config(None, ["--data.text_template='{movie_title}'"]).data.text_template == "{movie_title}"
