"""Every long stage killed part-way, then run again, ends with exactly the artifacts of a clean run,
even when a setting that changes its result was changed in between.

A kill is a real SIGKILL of a child process at the moment a checkpoint or shard lands on disk (the
child replaces ``os.replace``, which every artifact write ends with), or, where a second kill is
needed, an exception raised from a hook in this process. Tiny data, the tiny in-process Llama.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from coldllm.config import load_config
from coldllm.funnel.guard import reference_pairs
from coldllm.pipeline import Run, run_all
from conftest import make_tiny_llm
from test_cli import write_project

# The child: runs the configured stages and kills itself right after the first file whose name
# matches argv[2] is renamed into place (checkpoints save every step: CHECKPOINT_SECONDS = 0).
CHILD = textwrap.dedent("""
    import fnmatch, os, signal, sys
    from pathlib import Path
    os.environ["TQDM_DISABLE"] = "1"
    from coldllm.config import load_config
    from coldllm.llm import lora
    from coldllm.pipeline import Run, run_all

    lora.CHECKPOINT_SECONDS = 0.0
    replace = os.replace

    def replace_then_die(src, dst, *args, **kwargs):
        replace(src, dst, *args, **kwargs)
        if fnmatch.fnmatch(Path(dst).name, sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace_then_die
    run_all(Run(load_config(sys.argv[1], sys.argv[3:])))
""")

FUNNEL = ["--filter.towers=collab", "--filter.collab_source=knn", "--filter.k=4", "--update.prior_k=5",
          "--refiner.train_users=8", "--refiner.eval_users=4", "--refiner.lora={epochs: 1, batch_size: 4}",
          "--refiner.shard_users=5", "--backbone.epochs=6", "--backbone.eval_every=2"]


class Killed(BaseException):
    """Stands for a kill: nothing in the stages catches it."""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project with a tiny local LLM and one run whose backbone and filter are done (copied by each
    test, so only the stage under test runs)."""
    root = tmp_path_factory.mktemp("project")
    cfg_path = write_project(root)
    model, tokenizer = make_tiny_llm()
    model.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")
    run_all(Run(config(root, root / "base", "--stages=[prepare, train, filter]")))
    return root


def config(root: Path, runs: Path, *overrides: str):
    return load_config(root / "tiny.yaml", [*FUNNEL, f"--refiner.model={root / 'llm'}", f"--runs_dir={runs}",
                                            *overrides])


def start_from_base(root: Path, runs: Path) -> None:
    shutil.copytree(root / "base", runs, symlinks=True)


def kill_child(root: Path, runs: Path, pattern: str, *overrides: str) -> None:
    """Run the stages in a child process, SIGKILLed once a file matching ``pattern`` is written."""
    args = [str(root / "tiny.yaml"), pattern, *FUNNEL, f"--refiner.model={root / 'llm'}", f"--runs_dir={runs}",
            *overrides]
    child = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True,
                           env={**os.environ, "TQDM_DISABLE": "1"})
    assert child.returncode == -9, child.stderr[-3000:]  # killed where meant, not failed elsewhere


def raise_after(monkeypatch, pattern: str) -> None:
    """In this process: the first write of a file named ``pattern`` completes, then the run dies."""
    import fnmatch

    replace = os.replace

    def replace_then_raise(src, dst, *args, **kwargs):
        replace(src, dst, *args, **kwargs)
        if fnmatch.fnmatch(Path(dst).name, pattern):
            raise Killed(dst)

    monkeypatch.setattr(os, "replace", replace_then_raise)


def assert_same_tensors(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert sorted(ta) == sorted(tb)
    for key in ta:
        assert torch.equal(ta[key], tb[key]), (a, key)


def test_train_killed_across_a_settings_change_ends_as_a_clean_run(project, tmp_path, monkeypatch):
    """Killed under one learning rate, started under another and killed again before its first
    checkpoint, then resumed: the checkpoint of the old rate is never taken up."""
    runs, stages = tmp_path / "runs", "--stages=[prepare, train]"
    kill_child(project, runs, "last.safetensors", stages)
    new = (stages, "--backbone.lr=0.02")

    def die_at_first_epoch(*args, **kwargs):
        raise Killed("first epoch")

    from coldllm.backbones import train as train_module

    with monkeypatch.context() as patch:
        patch.setattr(train_module.BPRSampler, "epoch", die_at_first_epoch)
        with pytest.raises(Killed):
            run_all(Run(config(project, runs, *new)))
    run_all(Run(config(project, runs, *new)))
    run_all(Run(config(project, tmp_path / "clean", *new)))
    for name in ("best.safetensors", "last.safetensors"):
        assert_same_tensors(runs / "tiny" / "backbone" / name, tmp_path / "clean" / "tiny" / "backbone" / name)


def test_finetune_resumes_its_checkpoint_and_never_another_settings(project, tmp_path, monkeypatch):
    """A fine-tuning killed after its first step resumes there and learns what an uninterrupted one
    learns; a changed learning rate starts afresh instead."""
    from coldllm.llm import lora

    monkeypatch.setattr(lora, "CHECKPOINT_SECONDS", 0.0)
    stages = "--stages=[prepare, train, filter, finetune]"
    runs, clean = tmp_path / "runs", tmp_path / "clean"
    for folder in (runs, clean):
        start_from_base(project, folder)
    kill_child(project, runs, "checkpoint.safetensors", stages)  # under the preset's learning rate
    new = (stages, "--refiner.lora={epochs: 1, batch_size: 4, lr: 0.002}")
    with monkeypatch.context() as patch:  # killed again, after one step under the new rate
        raise_after(patch, "checkpoint.safetensors")
        with pytest.raises(Killed):
            run_all(Run(config(project, runs, *new)))
    steps = []
    original = lora.answer_loss
    monkeypatch.setattr(lora, "answer_loss", lambda *a, **k: steps.append(1) or original(*a, **k))
    run_all(Run(config(project, runs, *new)))
    resumed_steps = len(steps)
    run_all(Run(config(project, clean, *new)))
    assert 0 < resumed_steps == len(steps) - resumed_steps - 1  # the resumed run skipped the one step done
    ours, theirs = runs / "tiny" / "refiner", clean / "tiny" / "refiner"
    assert_same_tensors(ours / "adapter" / "adapter_model.safetensors", theirs / "adapter" / "adapter_model.safetensors")
    assert (ours / "threshold.json").read_text() == (theirs / "threshold.json").read_text()
    pd.testing.assert_frame_equal(pd.read_parquet(ours / "held_out_hard.parquet"),
                                  pd.read_parquet(theirs / "held_out_hard.parquet"))


def test_simulation_killed_after_a_shard_ends_as_a_clean_run(project, tmp_path, monkeypatch):
    """Killed after its first shard, resumed with the same settings it judges only the rest (of the
    candidates and the reference pairs that centre them); killed again and resumed with more candidates per item, it holds exactly the new candidates' verdicts."""
    stages = "--stages=[prepare, train, filter, finetune, simulate]"
    runs, clean = tmp_path / "runs", tmp_path / "clean"
    start_from_base(project, runs)
    kill_child(project, runs, "shard-*.parquet", stages)
    from coldllm.llm.judge import Judge

    judged = []
    original = Judge.p_yes_grouped
    monkeypatch.setattr(Judge, "p_yes_grouped", lambda self, p, s, o: judged.append(len(s)) or original(self, p, s, o))
    run_all(Run(config(project, runs, stages)))
    simulated = pd.read_parquet(runs / "tiny" / "simulate" / "simulated.parquet")
    candidates = pd.read_parquet(runs / "tiny" / "filter" / "candidates.parquet")
    # the shards hold the candidates and the reference users' pairs that centre them; the guard was
    # fitted before the kill, so only the unfinished shards are judged
    guard = json.loads((runs / "tiny" / "serve" / "guard.json").read_text())
    pairs = pd.concat([candidates[["user", "item"]], reference_pairs(candidates["item"].to_numpy(), guard["users"])])
    pairs = pairs.drop_duplicates(["user", "item"])
    shard_pairs = pairs.groupby("user").size().sort_index().to_numpy()[:5].sum()
    assert len(simulated) == len(candidates) and sum(judged) == len(pairs) - shard_pairs

    new = (stages, "--filter.k=6")
    with monkeypatch.context() as patch:
        raise_after(patch, "shard-*.parquet")
        with pytest.raises(Killed):
            run_all(Run(config(project, runs, *new)))
    run_all(Run(config(project, runs, *new)))
    start_from_base(project, clean)
    run_all(Run(config(project, clean, *new)))
    ours, theirs = (pd.read_parquet(r / "tiny" / "simulate" / "simulated.parquet") for r in (runs, clean))
    pd.testing.assert_frame_equal(ours, theirs)
    assert len(ours) == len(pd.read_parquet(runs / "tiny" / "filter" / "candidates.parquet"))


def test_retrain_update_never_resumes_another_learning_rate(project, tmp_path):
    """The update's retraining killed after its first epoch, then run with another learning rate:
    the old rate's checkpoint (same simulated pairs, same backbone) is not taken up."""
    stages = "--stages=[prepare, train, filter, simulate, update]"
    common = (stages, "--refiner.judge=all", "--update.mode=retrain", "--update.epochs=4", "--update.eval_every=2")
    runs, clean = tmp_path / "runs", tmp_path / "clean"
    for folder in (runs, clean):
        start_from_base(project, folder)
    kill_child(project, runs, "last.safetensors", *common)
    assert (runs / "tiny" / "update" / "last.safetensors").exists()
    new = (*common, "--update.retrain_lr=0.02")
    run_all(Run(config(project, runs, *new)))
    run_all(Run(config(project, clean, *new)))
    for name in ("embeddings.safetensors", "last.safetensors"):
        assert_same_tensors(runs / "tiny" / "update" / name, clean / "tiny" / "update" / name)


def test_a_retraining_chooses_its_prior_on_validation_too(project, tmp_path):
    """update.prior=best (the presets') with the paper's update, the backbone trained again: the
    prior the service's later items start from is the best on cold validation, as in the fast update."""
    import json

    runs = tmp_path / "runs"
    start_from_base(project, runs)
    run_all(Run(config(project, runs, "--stages=[prepare, train, filter, simulate, update]", "--refiner.judge=all",
                       "--update.mode=retrain", "--update.epochs=2", "--update.eval_every=1", "--update.prior=best")))
    record = json.loads((runs / "tiny" / "manifest.json").read_text())["stages"]["update"]
    searched = record["prior_search"]  # this filter has no content mapping of its own: content-KNN alone
    assert searched and searched[record["prior"]] == max(searched.values())


def test_redo_from_reruns_that_stage_and_later_ones_only(project, tmp_path, monkeypatch):
    """``coldllm run --redo-from filter``: the filter runs again on the kept backbone; the backbone is
    not retrained; a stage the run does not have is a one-line error before anything runs. The memory
    a stage freed goes back to the system after each stage that ran (not after a skipped one)."""
    import json

    from coldllm import pipeline
    from coldllm.config import ConfigError

    released = []
    monkeypatch.setattr(pipeline, "release_memory", lambda: released.append(True))

    runs = tmp_path / "runs"
    start_from_base(project, runs)
    stages = "--stages=[prepare, train, filter]"
    manifest = runs / "tiny" / "manifest.json"
    marked = json.loads(manifest.read_text())
    for stage in ("train", "filter"):  # marks that a stage which runs again overwrites
        marked["stages"][stage]["started"] = "before"
    manifest.write_text(json.dumps(marked))
    with pytest.raises(ConfigError, match="redo_from: 'update'"):
        run_all(Run(config(project, runs, stages)), redo_from="update")
    run_all(Run(config(project, runs, stages)), redo_from="filter")
    after = json.loads(manifest.read_text())["stages"]
    assert after["train"]["started"] == "before"
    assert after["filter"]["started"] != "before"
    assert after["filter"]["status"] == "done"
    assert len(released) == 1  # prepare and train were skipped; the filter ran


def test_the_filter_goes_stale_with_the_prior_it_reads_and_no_other_update_setting():
    from coldllm.config import RunConfig, to_dict
    from coldllm.run import stage_inputs

    base = to_dict(RunConfig())
    base["filter"]["collab_source"] = "knn"  # the content-KNN sub-tower is the update's prior
    changed = lambda **kw: {**base, "update": {**base["update"], **kw}}  # noqa: E731
    for stage in ("filter", "finetune", "simulate", "update"):
        assert stage_inputs(changed(prior_k=5), stage) != stage_inputs(base, stage), stage
    for stage in ("filter", "finetune", "simulate"):
        assert stage_inputs(changed(k_grid=[5], lr=0.1, pull=2.0), stage) == stage_inputs(base, stage), stage
    assert stage_inputs(changed(k_grid=[5]), "update") != stage_inputs(base, "update")


def test_the_backbone_does_not_depend_on_how_the_item_text_is_written():
    from coldllm.config import RunConfig, to_dict
    from coldllm.run import stage_inputs

    base = to_dict(RunConfig())
    other = {**base, "data": {**base["data"], "text_template": "{title}", "text_fields": ["title", "abstract"]}}
    for stage in ("train", "evaluate_test"):
        assert stage_inputs(other, stage) == stage_inputs(base, stage), stage
    for stage in ("prepare", "content", "filter", "update"):
        assert stage_inputs(other, stage) != stage_inputs(base, stage), stage
    moved = {**base, "data": {**base["data"], "min_rating": 4.0}}
    assert stage_inputs(moved, "train") != stage_inputs(base, "train")


def test_a_stage_that_resumed_counts_the_seconds_of_its_earlier_sessions(project, tmp_path):
    """A stage that took work from a checkpoint reports what the whole of it cost: its seconds are
    this session's plus the ``earlier_seconds`` it names (the one-pass fit's resumed epochs)."""
    run = Run(config(project, tmp_path / "runs"))
    with run.stage("filter") as rec:
        rec["earlier_seconds"] = 1000.0
    with run.stage("simulate"):
        pass
    stages = json.loads(run.manifest_path.read_text())["stages"]
    assert 1000.0 <= stages["filter"]["seconds"] < 1000.0 + 60  # this session's part: an empty block
    assert stages["simulate"]["seconds"] < 60 and "earlier_seconds" not in stages["simulate"]
