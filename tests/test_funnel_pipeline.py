"""The whole ColdLLM funnel through the command line, on tiny data with a tiny local LLM."""

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from coldllm.cli import app
from coldllm.config import load_config
from coldllm.data import load_dataset
from coldllm.funnel.refiner import judge_examples
from coldllm.llm.judge import Judge
from coldllm.llm.lora import load_adapter
from coldllm.llm.models import load_llm
from coldllm.llm.prompts import PromptEncoder, PromptTemplate
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
    assert refiner["train_examples"] > 0
    for when in ("before", "after"):  # both held-out sets: random and the filter's hard negatives
        assert set(refiner[when]) == {"random", "hard"} and {"auc", "accuracy"} <= set(refiner[when]["hard"])
    held = pd.read_parquet(run_dir / "refiner" / "held_out_hard.parquet")
    assert {"p_before", "p_after", "label"} <= set(held.columns) and held["label"].sum() == len(held) / 2
    held_random = pd.read_parquet(run_dir / "refiner" / "held_out_random.parquet")
    same = ["user", "label", "history"]  # the two sets differ in their negatives only
    pd.testing.assert_frame_equal(held_random[same], held[same])
    # the held-out verdicts are the ones the saved adapter gives, loaded as the simulation loads it
    model, tokenizer = load_llm(tiny_llm_dir)
    judge = Judge(load_adapter(model, run_dir / "refiner" / "adapter", merge=True), PromptEncoder(tokenizer, PromptTemplate()))
    titles = load_dataset(load_config(cfg).data).item_text
    np.testing.assert_allclose(judge_examples(judge, held, titles), held["p_after"], atol=1e-5)
    assert (run_dir / "refiner" / "adapter" / "adapter_config.json").exists()
    card = (run_dir / "refiner" / "adapter" / "README.md").read_text()  # the model card beside the weights
    assert f"base_model: {tiny_llm_dir}" in card and "| hard |" in card and manifest_commit(run_dir) in card
    simulated = pd.read_parquet(run_dir / "simulate" / "simulated.parquet")
    assert len(simulated) == len(candidates) and simulated["p_yes"].between(0, 1).all()
    assert list((run_dir / "simulate" / "shards").glob("*/shard-*.parquet"))
    metrics = json.loads((run_dir / "metrics_coldllm_test.json").read_text())
    assert set(metrics) == {"overall", "cold", "warm"}
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert all(manifest["stages"][s]["status"] == "done" for s in ("filter", "finetune", "simulate", "update"))


def manifest_commit(run_dir) -> str:
    return json.loads((run_dir / "manifest.json").read_text())["commit"]


def test_unknown_stage_is_named(tmp_path):
    cfg = str(write_project(tmp_path))
    result = CliRunner().invoke(app, ["run", "-c", cfg, "--stages=[prepare, simulat]"])
    assert result.exit_code == 2 and "simulat" in result.output


def test_fast_update_mode_reuses_the_funnel(tmp_path, tiny_llm_dir):
    """The fast mode keeps warm items' backbone scores and only fits the cold rows."""
    cfg = str(write_project(tmp_path))
    base = ["--stages=[prepare, train, filter, simulate, update]", f"--filter.text_model={tiny_llm_dir}",
            "--filter.k=5", "--filter.collab={epochs: 1, hidden: 16}", "--filter.lm={epochs: 1, hidden: 16}",
            "--refiner.judge=all", "--update.mode=fast", "--update.steps=20"]
    result = CliRunner().invoke(app, ["run", "-c", cfg, *base])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    simulated = pd.read_parquet(run_dir / "simulate" / "simulated.parquet")
    assert simulated["accepted"].all()  # no refiner: every filtered pair is accepted
    metrics = json.loads((run_dir / "metrics_coldllm_test.json").read_text())
    before = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert before["update"]["accepted_pairs"] == len(simulated)
    assert 0.0 <= metrics["cold"]["recall@20"] <= 1.0
    from safetensors.torch import load_file

    from coldllm.backbones import load_backbone
    from coldllm.config import load_config
    from coldllm.data import load_dataset

    data = load_dataset(load_config(cfg).data)
    _, items = load_backbone(run_dir / "backbone", data).embeddings()
    updated = load_file(str(run_dir / "update" / "embeddings.safetensors"))["item"]
    warm = data.warm_items
    assert (updated[warm] == items[warm]).all() and not (updated[data.cold_items] == items[data.cold_items]).all()


def test_variants_reuse_a_backbone_and_a_judge(tmp_path, tiny_llm_dir):
    """An ablation run links the stages it shares with another run instead of recomputing them."""
    cfg = str(write_project(tmp_path))
    common = [f"--filter.text_model={tiny_llm_dir}", "--filter.k=5", "--filter.collab={epochs: 1, hidden: 16}",
              "--filter.lm={epochs: 1, hidden: 16}", f"--refiner.model={tiny_llm_dir}",
              "--refiner.train_users=8", "--refiner.eval_users=4", "--refiner.lora={epochs: 1, batch_size: 4}"]
    first = CliRunner().invoke(app, ["run", "-c", cfg, "--stages=[prepare, train, filter, finetune]", *common])
    assert first.exit_code == 0, first.output
    variant = ["--name=variant", "--filter.towers=lm", "--reuse={train: tiny, finetune: tiny}",
               "--stages=[prepare, train, filter, finetune, simulate, update]", "--update.init=backbone"]
    result = CliRunner().invoke(app, ["run", "-c", cfg, *common, *variant])
    assert result.exit_code == 0, result.output
    runs = tmp_path / "runs"
    assert (runs / "variant" / "backbone").is_symlink() and (runs / "variant" / "refiner").is_symlink()
    stages = json.loads((runs / "variant" / "manifest.json").read_text())["stages"]
    assert stages["train"]["reused_from"] == "tiny" and stages["train"]["differs"] == []
    assert stages["finetune"]["differs"] == ["filter.towers"]  # the judge was tuned with another filter's negatives
    assert stages["update"]["status"] == "done"
    # a backbone trained under other settings is never taken silently
    other = CliRunner().invoke(app, ["run", "-c", cfg, *common, "--name=v2", "--backbone.dim=8",
                                     "--reuse={train: tiny}", "--stages=[prepare, train]"])
    assert other.exit_code == 2 and "reuse.train" in other.output
    # a setting added after the backbone was trained counts at its default: still the same backbone
    manifest_path = runs / "tiny" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    del manifest["config"]["data"]["min_rating"]
    manifest_path.write_text(json.dumps(manifest))
    later = CliRunner().invoke(app, ["run", "-c", cfg, *common, "--name=v3", "--reuse={train: tiny}",
                                     "--stages=[prepare, train]"])
    assert later.exit_code == 0, later.output


def test_a_judge_tuned_per_item_is_measured_on_every_candidate_of_held_out_items(tmp_path, tiny_llm_dir):
    cfg = str(write_project(tmp_path))
    common = ["--stages=[prepare, train, filter, finetune]", f"--filter.text_model={tiny_llm_dir}", "--filter.k=5",
              "--filter.collab={epochs: 1, hidden: 16}", "--filter.lm={epochs: 1, hidden: 16}",
              f"--refiner.model={tiny_llm_dir}", "--refiner.train_users=8", "--refiner.eval_users=4",
              "--refiner.lora={epochs: 1, batch_size: 4}"]
    assert CliRunner().invoke(app, ["run", "-c", cfg, *common]).exit_code == 0
    refiner = tmp_path / "runs" / "tiny" / "refiner"
    assert (refiner / "held_out_hard.parquet").exists()
    per_item = ["--refiner.examples=per_item", "--refiner.train_items=10", "--refiner.eval_items=4",
                "--refiner.pairs_per_user=2"]
    result = CliRunner().invoke(app, ["run", "-c", cfg, *common, *per_item])
    assert result.exit_code == 0, result.output
    report = json.loads((refiner / "report.json").read_text())
    assert report["examples"] == "per_item" and 0 < report["train_examples"] <= 10 * 2 * 2
    assert set(report["after"]) == {"candidates"} and "auc_within_item" in report["after"]["candidates"]
    # the per-user sets of the judge before are gone: nothing downstream reads a stale one
    assert sorted(p.name for p in refiner.glob("held_out_*")) == ["held_out_candidates.parquet"]
    held = pd.read_parquet(refiner / "held_out_candidates.parquet")
    warm = pd.read_parquet(tmp_path / "runs" / "tiny" / "filter" / "warm_candidates.parquet")
    assert held["item"].nunique() == 4 and held.groupby("item").size().eq(5).all()
    assert set(zip(held["user"], held["item"])) == set(zip(*warm[warm["item"].isin(held["item"])][["user", "item"]].T.values))
    data = load_dataset(load_config(cfg).data)
    train = data.matrix("train")
    assert held["label"].tolist() == [int(train[u, i] > 0) for u, i in zip(held["user"], held["item"])]
    assert not any(i in h for i, h in zip(held["item"], held["history"]))


def test_simulation_never_resumes_shards_of_other_settings(tmp_path, tiny_llm_dir):
    """New candidates (and another sharding) start new shards: every candidate of the new settings is
    judged, none of the old shards is counted."""
    cfg = str(write_project(tmp_path))
    common = ["--stages=[prepare, train, filter, finetune, simulate]", f"--filter.text_model={tiny_llm_dir}",
              "--filter.collab={epochs: 1, hidden: 16}", "--filter.lm={epochs: 1, hidden: 16}",
              f"--refiner.model={tiny_llm_dir}", "--refiner.train_users=8", "--refiner.eval_users=4",
              "--refiner.lora={epochs: 1, batch_size: 4}"]
    for k, shard_users in ((5, 7), (3, 3)):
        result = CliRunner().invoke(app, ["run", "-c", cfg, *common, f"--filter.k={k}",
                                          f"--refiner.shard_users={shard_users}"])
        assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    candidates = pd.read_parquet(run_dir / "filter" / "candidates.parquet")
    simulated = pd.read_parquet(run_dir / "simulate" / "simulated.parquet")
    assert len(simulated) == len(candidates)
    assert len(list((run_dir / "simulate" / "shards").iterdir())) == 2  # one folder per fingerprint
