"""API keys: who may add items (``write``) and, when asked for, who may read.

Keys come from the ``COLDLLM_API_KEYS`` environment variable and/or a file (``--keys-file``), one
entry per line (in the variable, entries may also be separated by commas)::

    # comments and blank lines are ignored
    write:4f1c0d...   # may add items, and read
    read:9a7e21...    # may read only

A client sends its key as ``Authorization: Bearer <key>``. Only a SHA-256 digest of each key is
kept, and a presented key is compared with every one of them by ``hmac.compare_digest``: the time
an answer takes says nothing about how much of a key was right. No key is ever logged or echoed:
errors name the file and line, never the text.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError

ENV = "COLDLLM_API_KEYS"
SCOPES = ("read", "write")  # write implies read
COMMENT = re.compile(r"(^|\s)#.*$")
MIN_LENGTH = 16  # characters: a short key is guessable in the time a service is up


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


@dataclass
class ApiKeys:
    """The configured keys (their digests and scopes); ``reads``: reads need a key too."""

    entries: list[tuple[str, bytes]] = field(default_factory=list, repr=False)
    reads: bool = False

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    def scope(self, presented: str) -> str | None:
        """The scope of ``presented`` (``write`` or ``read``), None when it is no key of ours."""
        digest, found = _digest(presented), None
        for scope, known in self.entries:  # every entry, always: no early exit to time
            if hmac.compare_digest(digest, known) and found != "write":
                found = scope
        return found

    @classmethod
    def load(cls, keys_file: Path | None = None, reads: bool = False, env: str | None = None) -> "ApiKeys":
        env = os.environ.get(ENV, "") if env is None else env
        entries = _parse(env.replace(",", "\n"), f"${ENV}")
        if keys_file is not None:
            try:
                text = Path(keys_file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as err:
                raise ConfigError(f"{keys_file}: cannot read the keys file ({type(err).__name__})") from None
            entries += _parse(text, str(keys_file))
        if reads and not entries:
            raise ConfigError(f"--read-keys needs API keys: set {ENV} or give --keys-file")
        return cls(entries=entries, reads=reads)


def _parse(text: str, source: str) -> list[tuple[str, bytes]]:
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = COMMENT.sub("", line).strip()  # a key has no spaces, so ' #' always starts a comment
        if not line:
            continue
        scope, sep, key = line.partition(":")
        where = f"{source}: {'entry' if source.startswith('$') else 'line'} {number}"
        if not sep or scope.strip() not in SCOPES:
            raise ConfigError(f"{where}: an API key is written 'write:<key>' or 'read:<key>'")
        key = key.strip()
        if len(key) < MIN_LENGTH or any(c.isspace() for c in key):
            raise ConfigError(f"{where}: a key must be at least {MIN_LENGTH} characters, with no spaces")
        entries.append((scope.strip(), _digest(key)))
    return entries
