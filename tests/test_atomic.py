"""Artifacts are replaced atomically: whenever a writer dies, the target is the old file (or none)
or the complete new one, never half of either."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from coldllm.utils import atomic_path, write_json


class Died(Exception):
    pass


def write_half_then_die(path, data: bytes):
    """A writer that dies half-way through its file."""
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])
    raise Died(path)


WRITERS = {
    "json": (lambda p, v: p.write_text(json.dumps({"v": v})), lambda p: json.loads(p.read_text())["v"]),
    "parquet": (lambda p, v: pd.DataFrame({"v": [v] * 1000}).to_parquet(p),
                lambda p: int(pd.read_parquet(p)["v"].iloc[-1])),
    "safetensors": (lambda p, v: save_file({"v": torch.full((1000,), v)}, str(p)),
                    lambda p: int(load_file(str(p))["v"][-1])),
    "npy": (lambda p, v: np.save(p, np.full(1000, v), allow_pickle=False), lambda p: int(np.load(p)[-1])),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_writer_that_dies_leaves_the_old_file(tmp_path, kind):
    write, read = WRITERS[kind]
    target = tmp_path / f"artifact.{kind}"
    with atomic_path(target) as tmp:
        write(tmp, 1)
    assert read(target) == 1
    for die in ("before", "half", "after"):  # nothing written, half a file, a whole file
        with pytest.raises(Died), atomic_path(target) as tmp:
            if die == "half":
                write(tmp, 2)
                write_half_then_die(tmp, tmp.read_bytes())
            if die == "after":
                write(tmp, 2)
            raise Died(die)
        assert read(target) == 1 and os.listdir(tmp_path) == [target.name]  # no temporary file left either
    with atomic_path(target) as tmp:
        write(tmp, 3)
    assert read(target) == 3 and os.listdir(tmp_path) == [target.name]


def test_a_folder_is_replaced_whole(tmp_path):
    target = tmp_path / "adapter"
    for version in (1, 2):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "config.json").write_text(json.dumps({"v": version}))
            (tmp / f"weights-{version}").write_text("w")
    assert sorted(os.listdir(target)) == ["config.json", "weights-2"]  # nothing of version 1 is left
    with pytest.raises(Died), atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text("{")
        raise Died()
    assert json.loads((target / "config.json").read_text()) == {"v": 2} and os.listdir(tmp_path) == ["adapter"]


def test_write_json_of_an_unserialisable_object_keeps_the_old_file(tmp_path):
    target = tmp_path / "report.json"
    write_json(target, {"a": 1})
    with pytest.raises(ValueError):
        write_json(target, _circular())
    assert json.loads(target.read_text()) == {"a": 1}


def _circular():
    loop: dict = {}
    loop["loop"] = loop
    return loop


# A child that rewrites one artifact of each kind, round after round, each round holding its number.
CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np, pandas as pd, torch
    from pathlib import Path
    from safetensors.torch import save_file
    from coldllm.utils import atomic_path, write_json

    folder = Path(sys.argv[1])
    for v in range(1, 10**9):
        write_json(folder / "a.json", {"v": v, "pad": [v] * 20000})
        with atomic_path(folder / "a.parquet") as tmp:
            pd.DataFrame({"v": np.full(200000, v)}).to_parquet(tmp)
        with atomic_path(folder / "a.safetensors") as tmp:
            save_file({"v": torch.full((200000,), v)}, str(tmp))
        with atomic_path(folder / "a.npy") as tmp:
            np.save(tmp, np.full(200000, v), allow_pickle=False)
        with atomic_path(folder / "adapter") as tmp:
            tmp.mkdir()
            (tmp / "weights.npy").write_bytes(np.full(200000, v).tobytes())
            (tmp / "config.json").write_text(json.dumps({"v": v}))
        if v == 1:
            print("ready", flush=True)
""")


def test_sigkill_at_any_instant_leaves_complete_artifacts(tmp_path):
    """A writer SIGKILLed at several instants: each artifact is absent or whole and self-consistent."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        seen = set()
        for delay in (0.0, 0.05, 0.1, 0.2, 0.3):
            time.sleep(delay)
            child.send_signal(signal.SIGSTOP)  # a frozen writer is what a killed one leaves behind
            doc = json.loads((tmp_path / "a.json").read_text())
            assert set(doc["pad"]) == {doc["v"]}
            for value in (pd.read_parquet(tmp_path / "a.parquet")["v"], load_file(str(tmp_path / "a.safetensors"))["v"],
                          np.load(tmp_path / "a.npy")):
                assert len(value) == 200000 and (np.asarray(value) == np.asarray(value)[0]).all()
            if (tmp_path / "adapter").exists():  # between the folder's two renames it is briefly absent
                v = json.loads((tmp_path / "adapter" / "config.json").read_text())["v"]
                assert (np.frombuffer((tmp_path / "adapter" / "weights.npy").read_bytes(), np.int64) == v).all()
            seen.add(doc["v"])
            child.send_signal(signal.SIGCONT)
        assert len(seen) > 1  # the instants fell in different rounds
    finally:
        child.kill()
        child.wait()
    # and after the kill itself: the files are whole
    doc = json.loads((tmp_path / "a.json").read_text())
    assert set(doc["pad"]) == {doc["v"]}
    assert len(pd.read_parquet(tmp_path / "a.parquet")) == 200000 and len(np.load(tmp_path / "a.npy")) == 200000


def test_a_stage_dying_while_writing_keeps_its_old_artifact(tmp_path, monkeypatch):
    """The filter rerun under new settings dies half-way through writing its candidates: the old
    candidates are still there, whole."""
    from pathlib import Path

    from coldllm.config import load_config
    from coldllm.funnel.stages import FUNNEL_STAGES
    from coldllm.pipeline import Run, run_all
    from test_cli import write_project

    project = write_project(tmp_path)
    common = ["--stages=[prepare, train, filter]", "--filter.towers=collab", "--filter.collab_source=knn",
              "--backbone.model=mf", "--backbone.epochs=2"]
    run_all(Run(load_config(project, [*common, "--filter.k=3"])))
    path = tmp_path / "runs" / "tiny" / "filter" / "candidates.parquet"
    before = pd.read_parquet(path)
    original = pd.DataFrame.to_parquet

    def write_half_then_die_(frame, target, *args, **kwargs):
        original(frame, target, *args, **kwargs)
        write_half_then_die(target, Path(target).read_bytes())

    monkeypatch.setattr(pd.DataFrame, "to_parquet", write_half_then_die_)
    with pytest.raises(Died):
        FUNNEL_STAGES["filter"](Run(load_config(project, [*common, "--filter.k=4"])))
    pd.testing.assert_frame_equal(pd.read_parquet(path), before)
