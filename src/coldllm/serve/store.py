"""Items added online, kept in one SQLite file so a restart (or a SIGKILL) loses none of them.

Each call to ``ItemStore.add`` is one transaction: an item is on disk with its embedding and its
simulated users, or not at all. Embeddings are raw little-endian float32 bytes, never pickles.
The file also records which update it was written against: rows fitted in one embedding space
are meaningless in another, so a run whose update changed refuses the old file instead of
serving nonsense.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    position INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    text TEXT NOT NULL,
    fields TEXT NOT NULL,
    embedding BLOB NOT NULL,
    created TEXT NOT NULL,
    seconds REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS simulated (
    item_id TEXT NOT NULL REFERENCES items(id),
    rank INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    p_yes REAL NOT NULL,
    accepted INTEGER NOT NULL,
    PRIMARY KEY (item_id, rank)
);
"""


class StoreError(ValueError):
    """The store cannot serve this run (written for another update, or damaged)."""


@dataclass
class StoredItem:
    id: str
    text: str
    embedding: np.ndarray  # (dim,) float32, in the served run's output space
    users: list[str]  # the filter's candidates (raw user ids), best first
    p_yes: list[float]
    accepted: list[bool]
    fields: dict[str, Any] = field(default_factory=dict)  # optional request fields, kept as given
    created: str = ""
    seconds: float = 0.0


class ItemStore:
    def __init__(self, path: Path, space: str, dim: int):
        """``space`` names the embedding space (the update's fingerprint), ``dim`` its width."""
        self.path, self.dim = Path(path), dim
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # one connection, written only under the service's lock; FULL sync so a committed item
        # survives even the machine going down, not just the process
        self.conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.executescript(SCHEMA)
            self._check()
            self._claim(space)
        except sqlite3.DatabaseError as err:
            self.conn.close()
            raise self._damaged(err) from None

    def _check(self) -> None:
        """SQLite reads a damaged page only when a query reaches it: read every page once now (a
        quick_check is linear in the file), so damage stops the start, not a request later."""
        problems = [row[0] for row in self.conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(problems[:2]))

    def _damaged(self, err: Exception) -> StoreError:
        return StoreError(f"{self.path}: damaged SQLite store ({' '.join(str(err).split())[:160]}); move it "
                          "away (with its -wal and -shm files) to start with no online items, or restore a backup")

    def _claim(self, space: str) -> None:
        rows = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        expected = {"space": space, "dim": str(self.dim)}
        if not rows:
            with self._transaction():
                self.conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", expected.items())
            return
        for key, value in expected.items():
            if rows.get(key) != value:
                raise StoreError(f"{self.path}: written for {key} {rows.get(key)!r}, the run now has {value!r}; "
                                 "its items live in another embedding space (move the file away to start empty)")

    def _transaction(self):
        return _Transaction(self.conn)

    def add(self, items: list[StoredItem]) -> None:
        """Write ``items`` in one transaction (all of them or none)."""
        with self._transaction():
            for item in items:
                vector = np.ascontiguousarray(item.embedding, dtype="<f4")
                if vector.shape != (self.dim,):
                    raise StoreError(f"item {item.id!r}: embedding of shape {vector.shape}, expected ({self.dim},)")
                self.conn.execute(
                    "INSERT INTO items (id, text, fields, embedding, created, seconds) VALUES (?, ?, ?, ?, ?, ?)",
                    (item.id, item.text, json.dumps(item.fields), vector.tobytes(), item.created, item.seconds))
                self.conn.executemany(
                    "INSERT INTO simulated (item_id, rank, user_id, p_yes, accepted) VALUES (?, ?, ?, ?, ?)",
                    [(item.id, rank, user, float(p), int(ok))
                     for rank, (user, p, ok) in enumerate(zip(item.users, item.p_yes, item.accepted))])

    def load(self) -> list[StoredItem]:
        """Every stored item, in the order they were added."""
        try:
            return self._load()
        except sqlite3.DatabaseError as err:
            raise self._damaged(err) from None

    def _load(self) -> list[StoredItem]:
        simulated: dict[str, list[tuple]] = {}
        for item_id, user, p, ok in self.conn.execute(
                "SELECT item_id, user_id, p_yes, accepted FROM simulated ORDER BY item_id, rank"):
            simulated.setdefault(item_id, []).append((user, p, bool(ok)))
        out = []
        for item_id, text, fields, blob, created, seconds in self.conn.execute(
                "SELECT id, text, fields, embedding, created, seconds FROM items ORDER BY position"):
            vector = np.frombuffer(blob, dtype="<f4")
            if vector.shape != (self.dim,):
                raise StoreError(f"{self.path}: item {item_id!r} has {vector.size} values, expected {self.dim}")
            rows = simulated.get(item_id, [])
            out.append(StoredItem(id=item_id, text=text, embedding=vector.astype(np.float32), fields=json.loads(fields),
                                  users=[r[0] for r in rows], p_yes=[r[1] for r in rows],
                                  accepted=[r[2] for r in rows], created=created, seconds=seconds))
        return out

    def close(self) -> None:
        self.conn.close()


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error (the connection is in autocommit mode,
    so the transaction boundaries are exactly these)."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, tb) -> bool:
        self.conn.execute("ROLLBACK" if kind else "COMMIT")
        return False
