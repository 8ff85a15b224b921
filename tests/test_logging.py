"""What reaches the user's terminal and log.txt: one summary line per stage, no library chatter."""

import logging
import warnings

from typer.testing import CliRunner

from coldllm.cli import app
from coldllm.utils import record_summary, setup_logging
from test_cli import write_project


def test_record_summary_by_hand():
    train = {"status": "done", "started": "2026-01-01", "commit": "abc", "best_epoch": 200,
             "best_val": 0.191935960794226, "epochs": 217, "train_seconds": 1981.65, "seconds": 1993.17,
             "peak_memory_mb": 1242.9}
    assert record_summary(train) == "best_epoch=200, best_val=0.1919, epochs=217, train_seconds=1982"
    evaluate = {"metrics": {"cold": {"recall@20": 0.34958, "ndcg@20": 0.21492, "users": 4846}}}
    assert record_summary(evaluate) == "cold.recall@20=0.3496, cold.ndcg@20=0.2149"
    update = {"best_step": 40, "history": [{"step": 0, "val": 0.2}], "accepted_pairs": 33960, "fingerprint": "8b"}
    assert record_summary(update) == "best_step=40, accepted_pairs=33960"
    assert record_summary({"status": "done"}) == "no figures recorded"
    many = record_summary({f"k{i}": i for i in range(20)}, limit=3)
    assert many == "k0=0, k1=1, k2=2, ..."


def test_library_chatter_is_kept_out(tmp_path):
    log_file = tmp_path / "log.txt"
    with warnings.catch_warnings(record=True) as caught:
        setup_logging(log_file)
        logging.getLogger("faiss.loader").info("Loading faiss with AVX512 support.")
        logging.getLogger("coldllm.test").info("what the user needs")
        warnings.warn_explicit("`is_gradient_checkpointing` is deprecated", FutureWarning, "modeling_utils.py",
                               1, module="transformers.modeling_utils")
        warnings.warn_explicit("a warning of ours", UserWarning, "stages.py", 1, module="coldllm.funnel.stages")
    text = log_file.read_text()
    assert "what the user needs" in text and "faiss" not in text
    assert [str(w.message) for w in caught] == ["a warning of ours"]
    logging.getLogger("faiss.loader").warning("a real faiss problem")
    assert "a real faiss problem" in log_file.read_text()  # warnings of those libraries still show


def test_every_stage_logs_a_summary_line(tmp_path):
    cfg = str(write_project(tmp_path))
    result = CliRunner().invoke(app, ["run", "-c", cfg, "--stages=[prepare, train, evaluate_test]"])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "runs" / "tiny" / "log.txt").read_text().splitlines()
    done = {line.split("stage ")[1].split(" done")[0]: line for line in lines if " done in " in line}
    assert set(done) == {"prepare", "train", "evaluate_test"}
    assert "best_epoch=" in done["train"] and "dataset.users=40" in done["prepare"]
    assert "cold.recall@20=" in done["evaluate_test"]
