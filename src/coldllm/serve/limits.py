"""What one request may cost the service: its body's size and nesting, and its wait for a write.

* ``BodyLimit`` counts the bytes of a body as they arrive, whether a length was declared or the
  body is chunked, and stops reading with 413 as soon as the limit is passed: a declared length
  only says what the client claims, and a chunked body declares none.
* ``json_problem`` refuses, before anything parses it, a JSON body nested deeper than a request
  needs (Python's parser recurses once per level) or holding a number of thousands of digits
  (Python refuses to convert one past 4,300 digits, after the work).
* ``WriteQueue`` lets one write run at a time and a bounded number wait, each for a bounded time;
  past either bound a write is answered 503 with ``Retry-After`` at once, instead of piling up
  behind the lock while its client has long given up.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

import numpy as np
from fastapi import HTTPException


@dataclass
class Limits:
    body: int = 2 * 1024 * 1024  # bytes: the largest batch of the largest items, with room to spare
    depth: int = 32  # JSON levels: a batch of items with nested optional fields needs a handful
    write_queue: int = 32  # writes that may wait behind the one running
    write_timeout: float = 10.0  # seconds a write may wait for its turn


def error(status: int, loc: list[Any], msg: str, kind: str, headers: dict[str, str] | None = None) -> HTTPException:
    """An HTTP error in FastAPI's own shape: the offending field in ``loc``."""
    return HTTPException(status, detail=[{"loc": loc, "msg": msg, "type": kind}], headers=headers)


def excerpt(value: Any, limit: int = 40) -> str:
    """At most ``limit`` characters of ``value`` as text that always encodes (a lone surrogate is
    written as its escape): an error names what was wrong, it never sends the input back."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text[: limit + 1].encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` mid-body; an ``HTTPException`` so that FastAPI, which turns any other
    error while reading a body into a 400, lets it through as the 413 it is."""

    def __init__(self, received: int, limit: int):
        super().__init__(413, detail=[{"loc": ["body"], "msg": f"request body over {limit} bytes "
                                       f"(stopped reading at {received})", "type": "body_size"}],
                         headers={"connection": "close"})


class BodyLimit:
    """Plain ASGI middleware (a Starlette ``BaseHTTPMiddleware`` would cost every recommendation a
    task hop); a request without a body passes through untouched."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is None and b"transfer-encoding" not in headers:
            return await self.app(scope, receive, send)  # no body follows
        if declared is not None and not declared.isdigit():
            return await _answer(send, 400, ["header", "content-length"], "content-length is not a number")
        if declared is not None and int(declared) > self.limit:  # refused before a byte is read
            return await _answer(send, 413, ["header", "content-length"],
                                 f"request body of {int(declared)} bytes; at most {self.limit}")
        received, started = 0, False

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(received, self.limit)
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as err:  # read by something other than a FastAPI route
            if started:
                raise
            await _answer(send, 413, ["body"], err.detail[0]["msg"])


async def _answer(send, status: int, loc: list[str], msg: str) -> None:
    body = json.dumps({"detail": [{"loc": loc, "msg": msg, "type": "body_size"}]}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)  # linear: the two alternatives never overlap
_LONG_NUMBER = re.compile(rb"[0-9]{4300}")
_OPEN, _CLOSE = np.zeros(256, np.int8), np.zeros(256, np.int8)
_OPEN[[ord("["), ord("{")]] = 1
_CLOSE[[ord("]"), ord("}")]] = 1


def json_problem(body: bytes, max_depth: int) -> str | None:
    """Why ``body`` is refused before parsing (too deep, a huge number), None when it may be parsed.

    Strings are blanked first (a bracket inside one is text), then the nesting is a running sum
    over the bytes, done by numpy: a linear pass at C speed, whatever the body holds.
    """
    bare = _STRINGS.sub(b'""', body)
    codes = np.frombuffer(bare, np.uint8)
    if codes.size:
        depth = int(np.cumsum(_OPEN[codes].astype(np.int32) - _CLOSE[codes]).max())
        if depth > max_depth:
            return f"JSON nested {depth} levels deep; at most {max_depth}"
    if _LONG_NUMBER.search(bare):
        return "a JSON number of 4300 digits or more"
    return None


class QueueFull(Exception):
    pass


class WriteQueue:
    """One write at a time; at most ``depth`` waiting, each at most ``timeout`` seconds.

    An asyncio lock, so a waiting write holds no worker thread (a thread pool of 40 would otherwise
    queue writes where no timeout reaches them). It is created in the server's event loop on
    first use: one service, one loop.
    """

    def __init__(self, depth: int, timeout: float):
        self.depth, self.timeout, self.waiting = depth, timeout, 0
        self._lock: asyncio.Lock | None = None

    @property
    def retry_after(self) -> str:
        return str(max(1, math.ceil(self.timeout)))

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[float]:
        """Wait for this write's turn; yields the seconds waited. Raises ``QueueFull``."""
        lock = self._lock = self._lock or asyncio.Lock()
        start = time.perf_counter()
        if lock.locked():
            if self.waiting >= self.depth:
                raise QueueFull(f"{self.waiting} writes are waiting already")
            self.waiting += 1
            try:
                await asyncio.wait_for(lock.acquire(), self.timeout)
            except asyncio.TimeoutError:
                raise QueueFull(f"no turn within {self.timeout:g} s") from None
            finally:
                self.waiting -= 1
        else:
            await lock.acquire()  # free: taken at once, without a suspension point
        try:
            yield time.perf_counter() - start
        finally:
            lock.release()
