"""A tiny end-to-end run through the command line: prepare, train, evaluate, run (skips)."""

import json

import pandas as pd
from typer.testing import CliRunner

from coldllm.cli import app
from conftest import community_raw


def write_project(tmp_path):
    raw = community_raw()
    raw.interactions.to_csv(tmp_path / "inter.csv", index=False)
    raw.items.rename(columns={"text": "title"}).to_csv(tmp_path / "items.csv", index=False)
    (tmp_path / "tiny.yaml").write_text(f"""
name: tiny
runs_dir: {tmp_path / 'runs'}
data:
  name: tiny
  format: csv
  path: {tmp_path}
  interactions: inter.csv
  items: items.csv
  split: random
  cache_dir: {tmp_path / 'cache'}
backbone: {{model: lightgcn, dim: 16, layers: 2, lr: 0.01, batch_size: 64, epochs: 10, eval_every: 5}}
eval: {{ks: [10, 20]}}
content: {{cache_dir: {tmp_path / 'cache'}}}
baselines: {{methods: [random, knn, aldi], params: {{aldi: {{epochs: 2, hidden: 16}}}}}}
""")
    return tmp_path / "tiny.yaml"


def test_stages_end_to_end(tmp_path):
    cfg = str(write_project(tmp_path))
    runner = CliRunner()
    for cmd in (["prepare"], ["train"], ["evaluate"], ["evaluate", "--split", "val"]):
        result = runner.invoke(app, [*cmd, "-c", cfg])
        assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert {"prepare", "train", "evaluate_test", "evaluate_val"} <= set(manifest["stages"])
    assert all(s["status"] == "done" and s["seconds"] >= 0 for s in manifest["stages"].values())
    assert manifest["config"]["backbone"]["dim"] == 16 and manifest["commit"]
    metrics = json.loads((run_dir / "metrics_test.json").read_text())
    assert set(metrics) == {"overall", "cold", "warm"}
    assert 0.0 <= metrics["warm"]["recall@20"] <= 1.0 and "ndcg@10" in metrics["cold"]
    assert (run_dir / "backbone" / "best.safetensors").exists() and (run_dir / "log.txt").exists()

    before = (run_dir / "backbone" / "best.safetensors").stat().st_mtime_ns
    result = runner.invoke(app, ["run", "-c", cfg])  # adds content + baselines, redoes nothing else
    assert result.exit_code == 0, result.output
    assert (run_dir / "backbone" / "best.safetensors").stat().st_mtime_ns == before
    report = json.loads((run_dir / "baselines" / "aldi.json").read_text())
    assert set(report["test"]) == {"overall", "cold", "warm"} and len(report["history"]) <= 2
    assert report["params"]["hidden"] == 16
    stamp = (run_dir / "baselines" / "aldi.json").stat().st_mtime_ns
    assert runner.invoke(app, ["run", "-c", cfg]).exit_code == 0
    assert (run_dir / "baselines" / "aldi.json").stat().st_mtime_ns == stamp


def test_bad_config_key_exits_cleanly(tmp_path):
    cfg = str(write_project(tmp_path))
    result = CliRunner().invoke(app, ["prepare", "-c", cfg, "--backbone.dimm=3"])
    assert result.exit_code == 2
    assert "unknown config key 'backbone.dimm'" in result.output


def test_bad_data_file_exits_cleanly(tmp_path):
    cfg = str(write_project(tmp_path))
    pd.DataFrame({"user": ["a"], "wrong": [1]}).to_csv(tmp_path / "inter.csv", index=False)
    result = CliRunner().invoke(app, ["prepare", "-c", cfg])
    assert result.exit_code == 2
    assert "inter.csv" in result.output and "'item'" in result.output


def test_changed_config_redoes_stages(tmp_path):
    cfg = str(write_project(tmp_path))
    runner = CliRunner()
    assert runner.invoke(app, ["run", "-c", cfg]).exit_code == 0
    result = runner.invoke(app, ["run", "-c", cfg, "--backbone.dim=8"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "runs" / "tiny" / "backbone" / "backbone.json").read_text())
    assert meta["dim"] == 8


def test_only_stages_whose_settings_changed_are_redone(tmp_path):
    cfg = str(write_project(tmp_path))
    runner = CliRunner()
    assert runner.invoke(app, ["run", "-c", cfg]).exit_code == 0
    run_dir = tmp_path / "runs" / "tiny"
    backbone_stamp = (run_dir / "backbone" / "best.safetensors").stat().st_mtime_ns
    result = runner.invoke(app, ["run", "-c", cfg, "--baselines.params.aldi.hidden=8"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "backbone" / "best.safetensors").stat().st_mtime_ns == backbone_stamp
    assert json.loads((run_dir / "baselines" / "aldi.json").read_text())["params"]["hidden"] == 8


def test_a_new_epoch_budget_resumes_instead_of_retraining(tmp_path, monkeypatch):
    from coldllm.backbones import train as train_module

    cfg = str(write_project(tmp_path))
    runner = CliRunner()
    assert runner.invoke(app, ["train", "-c", cfg, "--backbone.epochs=4", "--backbone.eval_every=2"]).exit_code == 0
    run_dir = tmp_path / "runs" / "tiny"
    epochs_run = []
    original = train_module.BPRSampler.epoch
    monkeypatch.setattr(train_module.BPRSampler, "epoch", lambda self, b: epochs_run.append(1) or original(self, b))
    result = runner.invoke(app, ["train", "-c", cfg, "--backbone.epochs=6", "--backbone.eval_every=2"])
    assert result.exit_code == 0, result.output
    assert len(epochs_run) == 2  # only epochs 5 and 6 ran
    stage = json.loads((run_dir / "manifest.json").read_text())["stages"]["train"]
    assert stage["epochs"] == 6
    from safetensors import safe_open

    with safe_open(str(run_dir / "backbone" / "last.safetensors"), "pt") as fh:
        history = json.loads(fh.metadata()["trainer_state"])["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]  # epochs 1-4 were not redone


def test_a_new_setting_at_its_default_keeps_finished_stages(tmp_path):
    """Settings added to the code later (absent from an old manifest) do not make stages stale."""
    import json

    from coldllm.config import load_config
    from coldllm.pipeline import Run

    cfg_path = write_project(tmp_path)
    assert CliRunner().invoke(app, ["run", "-c", str(cfg_path), "--stages=[prepare, train]"]).exit_code == 0
    manifest_path = tmp_path / "runs" / "tiny" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["config"]["data"]["sample_users"]  # as written before the setting existed
    manifest_path.write_text(json.dumps(manifest))
    assert Run(load_config(cfg_path)).done("train")
    assert not Run(load_config(cfg_path, ["--data.sample_users=5"])).done("train")  # a real change still counts
