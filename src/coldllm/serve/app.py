"""The HTTP face of the online funnel: ``create_app(run_dir)`` gives the FastAPI application.

Every input is checked before anything runs: a bad request is answered 4xx with the offending
field in ``loc`` (FastAPI's own shape, used for our errors too), and nothing is stored for it.
Recommendation reads are plain ``async`` handlers (a mat-vec and a partial sort, well under a
millisecond: cheaper on the event loop than a hop to a worker thread); adding items runs in a
worker thread, so a funnel in progress never blocks reads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, HTTPException, Path as PathParam, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .online import Added, DuplicateItem, NewItem, OnlineService

MAX_TEXT = 10_000  # characters of an item's text; titles and abstracts fit, whole books do not
MAX_ID = 256
MAX_FIELDS = 16_384  # bytes of JSON for the optional fields stored with an item
MAX_BATCH = 64
MAX_K = 1000
MAX_BODY = 2 * 1024 * 1024  # bytes: the largest batch of the largest items, with room to spare


def _error(status: int, loc: list[Any], msg: str, kind: str) -> HTTPException:
    return HTTPException(status, detail=[{"loc": loc, "msg": msg, "type": kind}])


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
        if value != value.strip() or any(c == "/" or ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("must have no surrounding spaces, '/' or control characters")
        return value

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @model_validator(mode="after")
    def _small_fields(self) -> "ItemIn":
        size = len(json.dumps(self.model_extra or {}))
        if size > MAX_FIELDS:
            raise ValueError(f"optional fields take {size} bytes of JSON, at most {MAX_FIELDS}")
        return self


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


class BatchOut(BaseModel):
    items: list[ItemOut]
    seconds: float


class Recommendation(BaseModel):
    item: str
    score: float


class Recommendations(BaseModel):
    user: str
    only: str
    k: int
    items: list[Recommendation]


def _item_out(added: Added) -> ItemOut:
    item = added.item
    users = [SimulatedUser(user=u, p_yes=p) for u, p, ok in zip(item.users, item.p_yes, item.accepted) if ok]
    return ItemOut(id=item.id, candidates=len(item.users), simulated_users=users,
                   seconds=round(sum(added.stages.values()), 4),
                   stages={k: round(v, 4) for k, v in added.stages.items()})


class BodyLimit:
    """Refuse a declared body over ``limit`` bytes before it is read (413), as plain ASGI: a
    per-request middleware class of Starlette's would cost every recommendation a task hop."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            declared = dict(scope["headers"]).get(b"content-length")
            problem = None
            if declared is not None and not declared.isdigit():
                problem = (400, "content-length is not a number")
            elif declared is not None and int(declared) > self.limit:
                problem = (413, f"request body of {int(declared)} bytes; at most {self.limit}")
            if problem:
                body = json.dumps({"detail": [{"loc": ["header", "content-length"], "msg": problem[1],
                                               "type": "body_size"}]}).encode()
                await send({"type": "http.response.start", "status": problem[0],
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def create_app(run_dir: Path | str, service: OnlineService | None = None) -> FastAPI:
    """The service over the finished run in ``run_dir`` (models loaded here, once)."""
    service = service or OnlineService(run_dir)
    app = FastAPI(title="coldllm", description="Cold-start items, recommendable as they arrive: the ColdLLM "
                  f"funnel over run {service.name!r}.", version="1")
    app.state.service = service
    app.add_middleware(BodyLimit, limit=MAX_BODY)

    def add(items: list[ItemIn]) -> list[Added]:
        new = [NewItem(id=i.id, text=i.text, fields=dict(i.model_extra or {})) for i in items]
        try:
            return service.add(new)
        except DuplicateItem as err:
            loc = ["body", "id"] if len(items) == 1 else ["body", "items", err.position, "id"]
            raise _error(409, loc, str(err), "duplicate") from None

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """The service's state: its run, users, items (those added online counted apart), judge, backbone,
        the filter's K, the update's steps and how long it took to start."""
        snap = service.index.snapshot
        return {"status": "ok", "run": service.name, "users": service.data.n_users,
                "items": len(snap.item_ids), "online_items": len(service.online),
                "judge": service.cfg.refiner.judge, "backbone": service.cfg.backbone.model,
                "filter_k": service.cfg.filter.k, "update_steps": service.params.steps,
                "startup_seconds": round(service.startup_seconds, 2)}

    @app.post("/items", status_code=201, response_model=ItemOut)
    def add_item(item: ItemIn) -> ItemOut:
        """Run the funnel for one new item; it is recommendable when this answers."""
        return _item_out(add([item])[0])

    @app.post("/items/batch", status_code=201, response_model=BatchOut)
    def add_items(batch: ItemBatch) -> BatchOut:
        """Several new items through one funnel pass and one transaction (all stored, or none)."""
        start = time.perf_counter()
        added = add(batch.items)
        return BatchOut(items=[_item_out(a) for a in added], seconds=round(time.perf_counter() - start, 4))

    @app.get("/items/{item_id}")
    async def item_info(item_id: str = PathParam(min_length=1, max_length=MAX_ID)) -> dict[str, Any]:
        """An item and its simulated users (the run's own for its cold items, empty for warm ones)."""
        info = service.item_info(item_id)
        if info is None:
            raise _error(404, ["path", "item_id"], f"unknown item {item_id!r}", "not_found")
        return info

    @app.get("/users/{user_id}/recommendations", response_model=Recommendations)
    async def recommendations(user_id: str = PathParam(min_length=1, max_length=MAX_ID),
                              k: int = Query(20, ge=1, le=MAX_K, description="How many items."),
                              only: Literal["all", "cold", "warm"] = Query(
                                  "all", description="Rank cold items (new ones included), warm ones, or all.")
                              ):
        """The user's top k, their training items excluded."""
        user = service.user_index(user_id)
        if user is None:
            raise _error(404, ["path", "user_id"], f"unknown user {user_id!r}", "not_found")
        items = [{"item": i, "score": s} for i, s in service.recommend(user, k, only)]
        # the hot path: a plain JSON answer, not re-validated against the schema it is built to
        return JSONResponse({"user": user_id, "only": only, "k": k, "items": items})

    return app
