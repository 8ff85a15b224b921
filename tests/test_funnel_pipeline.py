"""The whole ColdLLM funnel through the command line, on tiny data with a tiny local LLM."""

import json

import pandas as pd
from typer.testing import CliRunner

from coldllm.cli import app
from test_cli import write_project


def test_funnel_end_to_end(tmp_path, tiny_llm_dir):
    cfg = str(write_project(tmp_path))
    overrides = [
        "--stages=[prepare, train, filter, finetune, simulate, update]",
        f"--filter.text_model={tiny_llm_dir}", "--filter.k=5",
        "--filter.collab={epochs: 2, hidden: 16}", "--filter.lm={epochs: 2, hidden: 16, out_dim: 8}",
        f"--refiner.model={tiny_llm_dir}", "--refiner.train_users=12", "--refiner.eval_users=8",
        "--refiner.lora={epochs: 1, batch_size: 4, lr: 0.01}", "--refiner.shard_users=7",
    ]
    result = CliRunner().invoke(app, ["run", "-c", cfg, *overrides])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    candidates = pd.read_parquet(run_dir / "filter" / "candidates.parquet")
    n_cold = candidates["item"].nunique()
    assert len(candidates) == 5 * n_cold and candidates.groupby("item")["user"].nunique().eq(5).all()
    refiner = json.loads((run_dir / "refiner" / "report.json").read_text())
    assert refiner["train_examples"] > 0 and {"auc", "accuracy"} <= set(refiner["after"])
    assert (run_dir / "refiner" / "adapter" / "adapter_config.json").exists()
    simulated = pd.read_parquet(run_dir / "simulate" / "simulated.parquet")
    assert len(simulated) == len(candidates) and simulated["p_yes"].between(0, 1).all()
    assert list((run_dir / "simulate" / "shards").glob("shard-*.parquet"))
    metrics = json.loads((run_dir / "metrics_coldllm_test.json").read_text())
    assert set(metrics) == {"overall", "cold", "warm"}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert all(manifest["stages"][s]["status"] == "done" for s in ("filter", "finetune", "simulate", "update"))


def test_unknown_stage_is_named(tmp_path):
    cfg = str(write_project(tmp_path))
    result = CliRunner().invoke(app, ["run", "-c", cfg, "--stages=[prepare, simulat]"])
    assert result.exit_code == 2 and "simulat" in result.output
