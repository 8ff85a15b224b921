"""An on-disk cache of text vectors, keyed by the model and by a hash of each text.

Only texts never seen by that model are encoded, so adding the day's new items to a catalogue
costs just their own encoding. Vectors live in ``.npy`` (read with ``allow_pickle=False``) next to
a Parquet index of text hashes; both are replaced atomically.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..data.readers import DataError
from ..utils import atomic_path
from .encoders import Encoder

log = logging.getLogger(__name__)


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class VectorCache:
    def __init__(self, folder: Path):
        self.folder = folder
        self.index_path, self.vectors_path = folder / "index.parquet", folder / "vectors.npy"
        if self.index_path.exists() and self.vectors_path.exists():
            try:
                self.hashes = pd.read_parquet(self.index_path)["hash"].tolist()
                self.vectors = np.load(self.vectors_path, allow_pickle=False)
            except (OSError, ValueError, KeyError) as err:  # a file cut short, or not the cache's own
                raise DataError(f"{folder}: text-vector cache is corrupt ({' '.join(str(err).split())}); "
                                f"delete the folder to rebuild it") from None
            if len(self.hashes) != len(self.vectors):
                raise DataError(f"{folder}: index and vectors disagree; delete the folder to rebuild it")
        else:
            self.hashes, self.vectors = [], None
        self.position = {h: i for i, h in enumerate(self.hashes)}

    def lookup(self, texts: list[str], make_encoder: Callable[[], Encoder]) -> np.ndarray:
        keys = [text_hash(t) for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self.position))
        if missing:
            first_text = {k: t for k, t in zip(keys, texts)}
            encoder = make_encoder()
            log.info("encoding %d new texts with %s", len(missing), encoder.key)
            fresh = encoder.encode([first_text[k] for k in missing])
            self._append(missing, fresh)
        return self.vectors[[self.position[k] for k in keys]]

    def _append(self, keys: list[str], vectors: np.ndarray) -> None:
        self.vectors = vectors if self.vectors is None else np.concatenate([self.vectors, vectors])
        for k in keys:
            self.position[k] = len(self.hashes)
            self.hashes.append(k)
        self.folder.mkdir(parents=True, exist_ok=True)
        # vectors first, index last: an index never points past the vectors it was written with
        with atomic_path(self.vectors_path) as tmp:
            np.save(tmp, self.vectors, allow_pickle=False)
        with atomic_path(self.index_path) as tmp:
            pd.DataFrame({"hash": self.hashes}).to_parquet(tmp)
