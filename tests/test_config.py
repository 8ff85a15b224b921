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
