"""The HTTP face of the online funnel: ``create_app(run_dir)`` gives the FastAPI application.

Every input is checked before anything runs: a bad request is answered 4xx with the offending
field in ``loc`` (FastAPI's own shape, used for our errors too) and at most a short excerpt of what
was sent, and nothing is stored for it. Recommendation reads are plain ``async`` handlers (a
mat-vec and a partial sort, well under a millisecond: cheaper on the event loop than a hop to a
worker thread); adding items waits for its turn in the bounded ``WriteQueue``, then runs in a
worker thread, so a funnel in progress never blocks reads. What a request may cost is in
``limits``, who may ask in ``keys``; both are described in docs/service.md.
"""

from __future__ import annotations

import json
import math
import time
import unicodedata
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Path as PathParam, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..normalize import is_invisible, strip_invisible
from .keys import ApiKeys
from .limits import BodyLimit, Limits, QueueFull, WriteQueue, error as _error, excerpt, json_problem
from .online import Added, DuplicateItem, NewItem, OnlineService, SteeringText

MAX_TEXT = 10_000  # characters of an item's text; titles and abstracts fit, whole books do not
MAX_ID = 256
MAX_FIELDS = 16_384  # bytes of JSON for the optional fields stored with an item
MAX_BATCH = 64
MAX_K = 1000
MAX_BODY = Limits.body


def _first_bad(value: str, bad) -> str | None:
    """'U+202E at position 3' for the first character ``bad`` refuses (the code point, never the text)."""
    for n, ch in enumerate(value):
        if bad(ch):
            return f"U+{ord(ch):04X} at position {n}"
    return None


def _bad_in_id(ch: str) -> bool:
    # controls, surrogates, and anything invisible (bidi controls, zero-width characters): two ids
    # that print the same must be the same id
    return ch == "/" or unicodedata.category(ch) in ("Cc", "Zl", "Zp") or is_invisible(ch)


def _bad_in_text(ch: str) -> bool:
    # a lone surrogate cannot be stored or answered as UTF-8; a control character other than a tab
    # or a line break is no part of a title (format characters are removed by normalisation)
    return unicodedata.category(ch) in ("Cs", "Cc") and ch not in "\t\n\r"


class ItemIn(BaseModel):
    """A new item: its id (the catalogue's raw id), its text, and any optional fields (kept as given)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={
        "examples": [{"id": "paper-123", "text": "Graph neural networks for citation recommendation",
                      "year": 2024}]})
    id: str = Field(min_length=1, max_length=MAX_ID, description="Raw item id, new to the catalogue.")
    text: str = Field(min_length=1, max_length=MAX_TEXT, description="The text the funnel reads (e.g. the title).")

    @field_validator("id")
    @classmethod
    def _plain_id(cls, value: str) -> str:
        if value != value.strip():
            raise ValueError("must have no surrounding spaces")
        bad = _first_bad(value, _bad_in_id)
        if bad:
            raise ValueError(f"must have no '/', control, invisible (bidi, zero-width) or surrogate characters; "
                             f"found {bad}")
        return value

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        bad = _first_bad(value, _bad_in_text)
        if bad:
            raise ValueError(f"must have no control or surrogate characters; found {bad}")
        if not strip_invisible(value):
            raise ValueError("must not be blank (it has no visible character)")
        return value

    @model_validator(mode="after")
    def _small_fields(self) -> "ItemIn":
        size = len(json.dumps(self.model_extra or {}))
        if size > MAX_FIELDS:
            raise ValueError(f"optional fields take {size} bytes of JSON, at most {MAX_FIELDS}")
        return self


def _field_problem(value: Any, loc: list[Any]) -> tuple[list[Any], str] | None:
    """Where an optional field holds what JSON cannot answer back: NaN or Infinity (Python's parser
    accepts them, no client's does), or a lone surrogate (unencodable as UTF-8)."""
    if isinstance(value, float) and not math.isfinite(value):
        return loc, f"must be a finite number, got {value}"
    if isinstance(value, str):
        bad = _first_bad(value, lambda ch: unicodedata.category(ch) == "Cs")
        return (loc, f"must have no surrogate characters; found {bad}") if bad else None
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        if isinstance(key, str) and _first_bad(key, lambda ch: unicodedata.category(ch) == "Cs"):
            return loc, "a key has a surrogate character"
        found = _field_problem(child, [*loc, key])
        if found:
            return found
    return None


def _check_fields(item: ItemIn, loc: list[Any]) -> None:
    found = _field_problem(dict(item.model_extra or {}), loc)
    if found:
        raise _error(422, found[0], found[1], "value_error")


class ItemBatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[ItemIn] = Field(min_length=1, max_length=MAX_BATCH)


class SimulatedUser(BaseModel):
    user: str
    p_yes: float


class ItemOut(BaseModel):
    id: str
    candidates: int = Field(description="Users the filter kept (top K).")
    simulated_users: list[SimulatedUser] = Field(description="Candidates the judge accepted, with P(Yes).")
    seconds: float = Field(description="Wall time of this item's funnel, store included.")
    stages: dict[str, float] = Field(description="Seconds per stage: filter, judge, update, store.")
    queued_seconds: float = Field(0.0, description="Seconds this write waited for its turn in the write queue.")


class BatchOut(BaseModel):
    items: list[ItemOut]
    seconds: float
    queued_seconds: float = 0.0


class Recommendation(BaseModel):
    item: str
    score: float


class Recommendations(BaseModel):
    user: str
    only: str
    k: int
    items: list[Recommendation]


def _item_out(added: Added, waited: float = 0.0) -> ItemOut:
    item = added.item
    users = [SimulatedUser(user=u, p_yes=p) for u, p, ok in zip(item.users, item.p_yes, item.accepted) if ok]
    return ItemOut(id=item.id, candidates=len(item.users), simulated_users=users,
                   seconds=round(sum(added.stages.values()), 4),
                   stages={k: round(v, 4) for k, v in added.stages.items()}, queued_seconds=round(waited, 4))


def _checked_route(max_depth: int, authorize_write=None) -> type[APIRoute]:
    """Routes whose JSON body is refused (422) when ``json_problem`` finds it too deep to parse; with
    ``authorize_write``, a write's key is checked before its body is read at all, so a client without
    one cannot make the service read and parse a body."""

    class CheckedRoute(APIRoute):
        def get_route_handler(self):
            handler = super().get_route_handler()

            async def checked(request: Request):
                if request.method == "POST":
                    if authorize_write is not None:
                        authorize_write(request)
                    problem = json_problem(await request.body(), max_depth)  # the body is read once, kept
                    if problem:
                        raise _error(422, ["body"], problem, "json_invalid")
                return await handler(request)

            return checked

    return CheckedRoute


async def _short_errors(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 with each error's input cut to an excerpt: its default answer sends the whole
    input back (a 1.9 MB text gave a 1.9 MB error, a lone surrogate an unencodable one)."""
    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", "")),
               **({"input": excerpt(e["input"])} if e.get("input") not in (None, {}) else {})}
              for e in exc.errors()]
    for entry in detail:
        entry["loc"] = [part if isinstance(part, int) else excerpt(part) for part in entry["loc"]]
        entry["msg"] = excerpt(entry["msg"], 300)
    return JSONResponse({"detail": detail}, status_code=422)


def _authorizer(keys: ApiKeys, scope: str):
    """A dependency that lets a request through when its bearer key has ``scope`` (write implies read)."""

    def authorize(request: Request) -> None:
        kind, _, presented = request.headers.get("authorization", "").partition(" ")
        found = keys.scope(presented.strip()) if kind.lower() == "bearer" and presented.strip() else None
        if found is None:
            raise _error(401, ["header", "authorization"], "an API key is needed: Authorization: Bearer <key>",
                         "unauthorized", headers={"WWW-Authenticate": "Bearer"})
        if scope == "write" and found != "write":
            raise _error(403, ["header", "authorization"], "this key may read only; adding items needs a write key",
                         "forbidden")

    return authorize


def create_app(run_dir: Path | str, service: OnlineService | None = None, keys: ApiKeys | None = None,
               limits: Limits | None = None) -> FastAPI:
    """The service over the finished run in ``run_dir`` (models loaded here, once).

    ``keys``: when any is configured, adding items needs a write key, and reads need a key too
    when ``keys.reads``; with none, the service is open (``coldllm serve`` allows that on loopback
    only). ``limits``: body size and nesting, and the write queue.
    """
    service = service or OnlineService(run_dir)
    keys, limits = keys or ApiKeys(), limits or Limits()
    app = FastAPI(title="coldllm", description="Cold-start items, recommendable as they arrive: the ColdLLM "
                  f"funnel over run {service.name!r}.", version="1")
    app.router.route_class = _checked_route(limits.depth, _authorizer(keys, "write") if keys.enabled else None)
    app.state.service, app.state.writes = service, WriteQueue(limits.write_queue, limits.write_timeout)
    app.add_middleware(BodyLimit, limit=limits.body)
    app.add_exception_handler(RequestValidationError, _short_errors)
    writer = [Depends(_authorizer(keys, "write"))] if keys.enabled else []
    # an open read costs nothing extra: no dependency at all on the hot path
    reader = [Depends(_authorizer(keys, "read"))] if keys.enabled and keys.reads else []

    def add(items: list[ItemIn]) -> list[Added]:
        new = [NewItem(id=i.id, text=i.text, fields=dict(i.model_extra or {})) for i in items]
        try:
            return service.add(new)
        except DuplicateItem as err:
            loc = ["body", "id"] if len(items) == 1 else ["body", "items", err.position, "id"]
            raise _error(409, loc, str(err), "duplicate") from None
        except SteeringText as err:
            loc = ["body", "text"] if len(items) == 1 else ["body", "items", err.position, "text"]
            raise _error(422, loc, str(err), "steering_text") from None

    async def add_in_turn(items: list[ItemIn]) -> tuple[list[Added], float]:
        """``add`` once this write's turn comes (seconds waited too); 503 when it does not come in time."""
        writes = app.state.writes
        try:
            async with writes.turn() as waited:
                return await run_in_threadpool(add, items), waited
        except QueueFull as err:
            raise _error(503, ["queue"], f"the write queue is full ({err}); retry after {writes.retry_after} s",
                         "queue_full", headers={"Retry-After": writes.retry_after}) from None

    @app.get("/health", dependencies=reader)
    async def health() -> dict[str, Any]:
        """The service's state: its run, users, items (those added online counted apart), judge, backbone,
        the filter's K, the update's steps and how long it took to start."""
        snap = service.index.snapshot
        return {"status": "ok", "run": service.name, "users": service.data.n_users,
                "items": len(snap.item_ids), "online_items": len(service.online),
                "judge": service.cfg.refiner.judge, "backbone": service.cfg.backbone.model,
                "filter_k": service.cfg.filter.k, "update_steps": service.update.params.steps,
                "startup_seconds": round(service.startup_seconds, 2)}

    @app.post("/items", status_code=201, response_model=ItemOut, dependencies=writer)
    async def add_item(item: ItemIn) -> ItemOut:
        """Run the funnel for one new item; it is recommendable when this answers."""
        _check_fields(item, ["body"])
        (added,), waited = await add_in_turn([item])
        return _item_out(added, waited)

    @app.post("/items/batch", status_code=201, response_model=BatchOut, dependencies=writer)
    async def add_items(batch: ItemBatch) -> BatchOut:
        """Several new items through one funnel pass and one transaction (all stored, or none)."""
        start = time.perf_counter()
        for n, item in enumerate(batch.items):
            _check_fields(item, ["body", "items", n])
        added, waited = await add_in_turn(batch.items)
        return BatchOut(items=[_item_out(a, waited) for a in added], seconds=round(time.perf_counter() - start, 4),
                        queued_seconds=round(waited, 4))

    @app.get("/items/{item_id}", dependencies=reader)
    async def item_info(item_id: str = PathParam(min_length=1, max_length=MAX_ID)) -> dict[str, Any]:
        """An item and its simulated users (the run's own for its cold items, empty for warm ones)."""
        info = service.item_info(item_id)
        if info is None:
            raise _error(404, ["path", "item_id"], f"unknown item {excerpt(item_id)!r}", "not_found")
        return info

    @app.get("/users/{user_id}/recommendations", response_model=Recommendations, dependencies=reader)
    async def recommendations(user_id: str = PathParam(min_length=1, max_length=MAX_ID),
                              k: int = Query(20, ge=1, le=MAX_K, description="How many items."),
                              only: Literal["all", "cold", "warm"] = Query(
                                  "all", description="Rank cold items (new ones included), warm ones, or all.")
                              ):
        """The user's top k, their training items excluded."""
        user = service.user_index(user_id)
        if user is None:
            raise _error(404, ["path", "user_id"], f"unknown user {excerpt(user_id)!r}", "not_found")
        items = [{"item": i, "score": s} for i, s in service.recommend(user, k, only)]
        # the hot path: a plain JSON answer, not re-validated against the schema it is built to
        return JSONResponse({"user": user_id, "only": only, "k": k, "items": items})

    return app
