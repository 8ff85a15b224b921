"""Starting ``coldllm serve``: damaged artifacts are one line and exit code 2 (a damaged cache is
rebuilt), a run folder copied elsewhere serves as before, and binding beyond loopback needs a key.

One tiny run is made per module in a project with relative paths (as a user's project has them);
each test serves a copy of it. ``uvicorn.run`` is replaced by a recorder, so a start that succeeds
returns at once instead of serving.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("fastapi")

from coldllm.cli import app  # noqa: E402
from coldllm.serve.online import NewItem, OnlineService  # noqa: E402
from test_bad_input import error_lines, write_project  # noqa: E402


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder (data, cache, runs/tiny) made with relative paths, from inside it."""
    root = tmp_path_factory.mktemp("project")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        write_project(root)
        result = CliRunner().invoke(app, [
            "run", "-c", "tiny.yaml", "--stages=[prepare, train, filter, simulate, update]",
            "--filter.text_model=minilm", "--filter.k=5", "--update.steps=20", "--refiner.judge=cosine",
            "--filter.collab={epochs: 2, hidden: 16}", "--filter.lm={epochs: 2, hidden: 16, out_dim: 8}"])
        assert result.exit_code == 0, result.output
        service = OnlineService(root / "runs" / "tiny")  # fits and caches the filter towers once
        service.close()
    return root


@pytest.fixture
def served(monkeypatch):
    """``coldllm serve`` whose server part only records that it would have started."""
    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: started.append((application, kw)))
    return started


def serve(*args: str):
    result = CliRunner().invoke(app, ["serve", *args])
    return result, error_lines(result.output)


def copy_run(project: Path, to: Path) -> Path:
    shutil.copytree(project / "runs" / "tiny", to)
    return to


def test_a_copied_run_serves_from_anywhere_with_the_runs_own_data(project, tmp_path, monkeypatch, served):
    run = copy_run(project, tmp_path / "elsewhere" / "copy")
    monkeypatch.chdir(tmp_path)
    prepared = sorted((project / "cache" / "tiny").iterdir())
    result, _ = serve(str(run))
    assert result.exit_code == 0, result.output
    assert len(served) == 1 and served[0][0].state.service.data.n_users == 40
    assert sorted((project / "cache" / "tiny").iterdir()) == prepared  # the run's prepared data, not a new copy


def test_a_moved_project_finds_its_data_through_coldllm_data(project, tmp_path, monkeypatch, served):
    moved = tmp_path / "moved"
    shutil.copytree(project / "data", moved / "data")  # the data alone, without the project's caches
    run = copy_run(project, tmp_path / "run")
    (run / "manifest.json").write_text(json.dumps({**json.loads((run / "manifest.json").read_text()),
                                                   "origin": str(tmp_path / "gone")}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COLDLLM_DATA", raising=False)
    result, lines = serve(str(run))
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "the run's data 'data'" in lines[0] and "set COLDLLM_DATA to the folder that holds 'data'" in lines[0]
    monkeypatch.setenv("COLDLLM_DATA", str(moved))
    result, _ = serve(str(run))
    assert result.exit_code == 0, result.output
    assert served[0][0].state.service.data.n_users == 40


def truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def with_items(run: Path) -> Path:
    service = OnlineService(run)
    service.add([NewItem(id=f"n{i}", text=f"graph networks paper {i}") for i in range(40)])
    service.close()  # checkpoints the write-ahead log into items.sqlite
    return run / "serve" / "items.sqlite"


DAMAGE = [
    # (id, what is done to the run, the file the line names, what it says)
    ("store-garbage", lambda run: (run / "serve" / "items.sqlite").write_bytes(b"not a database" * 500),
     "serve/items.sqlite", "damaged SQLite store"),
    ("store-truncated", lambda run: truncate(with_items(run)), "serve/items.sqlite", "damaged SQLite store"),
    ("embeddings-truncated", lambda run: truncate(run / "update" / "embeddings.safetensors"),
     "update/embeddings.safetensors", "truncated or corrupt safetensors"),
    ("embeddings-empty", lambda run: (run / "update" / "embeddings.safetensors").write_bytes(b""),
     "update/embeddings.safetensors", "truncated or corrupt safetensors"),
    ("simulated-truncated", lambda run: truncate(run / "simulate" / "simulated.parquet"),
     "simulate/simulated.parquet", "truncated or corrupt Parquet"),
    # the filter the run fitted is served as saved, never fitted again: damaged, it is named
    ("towers-truncated", lambda run: truncate(run / "filter" / "towers.safetensors"),
     "filter/towers.safetensors", "truncated or corrupt safetensors"),
    ("towers-empty", lambda run: (run / "filter" / "towers.safetensors").write_bytes(b""),
     "filter/towers.safetensors", "truncated or corrupt safetensors"),
    ("towers-missing", lambda run: (run / "filter" / "towers.safetensors").unlink(),
     "filter/towers.safetensors", "file not found; the filter stage saves its towers there"),
    # what the update chose, applied to every new item: damaged, it is named, never guessed
    ("update-choices-garbage", lambda run: (run / "update" / "update.json").write_text("{not json"),
     "update/update.json", "damaged update choices"),
]


@pytest.mark.parametrize("damage,name,says", [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_a_damaged_artifact_is_one_line_naming_it(project, tmp_path, monkeypatch, served, damage, name, says):
    run = copy_run(project, tmp_path / "run")
    monkeypatch.chdir(project)
    damage(run)
    result, lines = serve(str(run))
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert f"{run / name}: {says}" in lines[0] and not served


def test_a_store_with_items_is_read_back(project, tmp_path, monkeypatch, served):
    """The damage cases above are damage, not the store's ordinary state: the same store undamaged serves."""
    run = copy_run(project, tmp_path / "run")
    monkeypatch.chdir(project)
    with_items(run)
    result, _ = serve(str(run))
    assert result.exit_code == 0, result.output
    assert len(served[0][0].state.service.online) == 40
    with sqlite3.connect(run / "serve" / "items.sqlite") as conn:
        assert conn.execute("SELECT COUNT(*) FROM items").fetchone() == (40,)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::"])
def test_binding_beyond_loopback_needs_a_key_or_insecure(tmp_path, monkeypatch, served, host):
    monkeypatch.delenv("COLDLLM_API_KEYS", raising=False)
    result, lines = serve(str(tmp_path / "no-run"), "--host", host)
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"--host {host} reaches beyond this machine and no API key is set" in lines[0]
    # with a key, or told --insecure, the bind check passes (and the missing run is what stops it)
    monkeypatch.setenv("COLDLLM_API_KEYS", "write:" + "k" * 24)
    assert "no manifest.json" in serve(str(tmp_path / "no-run"), "--host", host)[1][0]
    monkeypatch.delenv("COLDLLM_API_KEYS")
    assert "no manifest.json" in serve(str(tmp_path / "no-run"), "--host", host, "--insecure")[1][0]
    assert "no manifest.json" in serve(str(tmp_path / "no-run"))[1][0]  # loopback: no key needed


def test_a_bad_keys_file_is_one_line_without_the_key(tmp_path, served):
    keys = tmp_path / "keys"
    keys.write_text("write:" + "s" * 30 + "\nwrite " + "t" * 30 + "\n")
    result, lines = serve(str(tmp_path / "no-run"), "--keys-file", str(keys))
    assert result.exit_code == 2 and len(lines) == 1 and f"{keys}: line 2" in lines[0]
    assert "t" * 30 not in result.output
