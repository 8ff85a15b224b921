"""``coldllm report``: the figures a person reads, recomputed from a tiny finished run."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from coldllm.cli import app
from coldllm.report.funnel import funnel_steps, judge_scores
from coldllm.report.model_card import write_model_card
from test_cli import write_project

FUNNEL = ["--stages=[prepare, train, evaluate_test, content, baselines, filter, simulate, update]",
          "--baselines.methods=[random, knn]", "--filter.collab_source=knn", "--filter.text_model=minilm",
          "--filter.k=5", "--filter.lm={epochs: 1, hidden: 16}", "--refiner.judge=cosine", "--update.steps=20"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    cfg = write_project(root)
    result = CliRunner().invoke(app, ["run", "-c", str(cfg), *FUNNEL])
    assert result.exit_code == 0, result.output
    return cfg, root / "runs" / "tiny"


def test_report_rescores_every_method_and_matches_the_run(finished_run):
    _, run_dir = finished_run
    result = CliRunner().invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    out = run_dir / "report"
    for name in ("report.md", "curves.json", "curves.png", "funnel.png", "judge.png", "stages.png"):
        assert (out / name).stat().st_size > 0, name
    curves = json.loads((out / "curves.json").read_text())
    assert curves["ks"] == list(range(5, 101, 5))
    assert list(curves["methods"]) == ["backbone", "random", "knn", "prior", "coldllm"]
    i = curves["ks"].index(20)
    # every figure the run recorded at K=20 is what the report scores again from the saved state
    recorded = {"backbone": json.loads((run_dir / "metrics_test.json").read_text()),
                "coldllm": json.loads((run_dir / "metrics_coldllm_test.json").read_text()),
                "knn": json.loads((run_dir / "baselines" / "knn.json").read_text())["test"],
                "random": json.loads((run_dir / "baselines" / "random.json").read_text())["test"]}
    for method, metrics in recorded.items():
        for setting in ("cold", "warm", "overall"):
            for metric in ("recall", "ndcg"):
                assert curves["methods"][method][setting][metric][i] == pytest.approx(
                    metrics[setting][f"{metric}@20"], abs=1e-6), (method, setting, metric)
    for entry in curves["methods"].values():  # a cut-off further down never finds fewer items
        assert np.all(np.diff(entry["cold"]["recall"]) >= -1e-12)
    text = (out / "report.md").read_text()
    assert "![" in text and "(curves.png)" in text and "(funnel.png)" in text and "| cold test | accepted |" in text
    assert "the same as stage `evaluate_coldllm_test` recorded" in text
    assert "cold R@20" in result.output and str(out / "report.md") in result.output


def test_report_by_config_and_elsewhere(finished_run, tmp_path):
    cfg, run_dir = finished_run
    result = CliRunner().invoke(app, ["report", "-c", str(cfg), "--out", str(tmp_path / "rep"), "--split", "val"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rep" / "report.md").exists() and "val set" in result.output
    assert CliRunner().invoke(app, ["report"]).exit_code == 2  # neither a folder nor a config


def test_report_of_a_run_without_a_backbone_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["report", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "no manifest.json" in result.output


def test_funnel_steps_by_hand(tiny_data):
    truth = tiny_data.parts["cold_test"]
    item = truth[0, 1]
    real_users = truth[truth[:, 1] == item, 0][:2]
    others = np.setdiff1d(np.arange(tiny_data.n_users), truth[truth[:, 1] == item, 0])[:3]
    simulated = pd.DataFrame({"user": np.concatenate([real_users, others]), "item": item,
                              "p_yes": [0.9, 0.2, 0.8, 0.1, 0.1], "accepted": [True, False, True, False, False]})
    n_items, n_real = len(np.unique(truth[:, 1])), len(truth)
    all_users, candidates, accepted = funnel_steps(tiny_data, simulated, "cold_test")
    assert all_users == {"step": "all users", "pairs": tiny_data.n_users * n_items, "real": n_real,
                         "share_real": n_real / (tiny_data.n_users * n_items), "coverage": 1.0}
    assert (candidates["pairs"], candidates["real"], candidates["share_real"]) == (5, 2, 0.4)
    assert (accepted["pairs"], accepted["real"], accepted["share_real"]) == (2, 1, 0.5)
    assert accepted["coverage"] == pytest.approx(1 / n_real)
    scores = judge_scores(tiny_data, simulated)
    # real pairs score 0.9 and 0.2 against 0.8, 0.1, 0.1: 0.9 wins 3 comparisons, 0.2 wins 2, of 6
    assert sorted(scores["real"]) == pytest.approx([0.2, 0.9]) and scores["auc"] == pytest.approx(5 / 6)


def test_model_card(tmp_path):
    path = write_model_card(tmp_path, base_model="smollm2-135m", dataset="citeulike", train_examples=6000,
                            eval_examples={"random": 800, "hard": 800}, settings={"r": 8, "alpha": 16},
                            before={"hard": {"auc": 0.51, "accuracy": 0.5}},
                            after={"hard": {"auc": 0.62, "accuracy": 0.58}}, threshold=0.5, commit="abc123",
                            date="2026-01-02T00:00:00+00:00")
    text = path.read_text()
    assert path.name == "README.md" and text.startswith("---\nlibrary_name: peft\nbase_model: smollm2-135m\n")
    assert "| hard | 0.5100 | 0.6200 | 0.5000 | 0.5800 |" in text
    assert "6,000 tuning prompts" in text and "`abc123`" in text and "2026-01-02" in text and "r=8, alpha=16" in text


def test_the_closing_words_say_which_row_is_the_method_and_how_far_it_moved():
    from coldllm.report.build import what_moved

    row = lambda r: {"cold": {"recall": r, "ndcg": r / 2}}  # noqa: E731
    words = what_moved({"backbone": row(0.01), "knn": row(0.30), "prior": row(0.30), "coldllm": row(0.325)}, 20)
    assert words == ("The method is the ColdLLM row: it moved cold Recall@20 by +0.0250 from its prior; "
                     "controls: backbone, knn.")
    kept = what_moved({"prior": row(0.3), "coldllm": row(0.3)}, 20)
    assert "left cold Recall@20 where its prior put it" in kept


def test_the_closing_time_line_counts_the_stages_that_worked_here():
    from coldllm.report.funnel import stage_line, stage_table

    manifest = {"stages": {
        "prepare": {"status": "done", "seconds": 0.1, "peak_memory_mb": 300},
        "train": {"status": "done", "seconds": 50.0, "peak_memory_mb": 900, "reused_from": "bench-mf"},
        "finetune": {"status": "done", "seconds": 0.0, "peak_memory_mb": 900, "skipped": "no judge"},
        "update": {"status": "done", "seconds": 30.4, "peak_memory_mb": 1000}}}
    assert stage_line(stage_table(manifest)) == ("time: prepare 0.1 s, train 50.0 s (reused), update 30.4 s; "
                                                 "30 s in all, peak 1000 MB")
    assert stage_line([]) == ""


def test_the_report_shows_the_prior_the_update_chose(tmp_path):
    cfg = str(write_project(tmp_path))
    result = CliRunner().invoke(app, [
        "run", "-c", cfg, "--stages=[prepare, train, filter, simulate, update]", "--filter.text_model=minilm",
        "--filter.towers=onepass", "--filter.onepass={epochs: 2, hidden: 16}", "--refiner.judge=all",
        "--filter.k=5", "--update.steps=20", "--update.prior=best",
        "--update.val_candidates=cold"])  # the report ranks every cold item, as the protocol does
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny"
    chosen = json.loads((run_dir / "manifest.json").read_text())["stages"]["update"]["prior"]
    result = CliRunner().invoke(app, ["report", str(run_dir), "--split", "val"])
    assert result.exit_code == 0, result.output
    curves = json.loads((run_dir / "report" / "curves.json").read_text())
    label = curves["methods"]["prior"]["label"]
    assert (chosen in label) if chosen != "knn" else "content-KNN" in label
    # on validation, the prior row scores what the update's first validation (step 0) scored
    start = json.loads((run_dir / "manifest.json").read_text())["stages"]["update"]["history"][0]["val"]
    assert curves["methods"]["prior"]["cold"]["ndcg"][curves["ks"].index(20)] == pytest.approx(start, abs=1e-6)
