"""The service's guards at the HTTP edge: bounded bodies, clean 4xx answers, the write queue, API keys.

These need no run: a stand-in service records what reaches it, so each test shows both the answer
and that nothing got past the guard. The run-backed tests are in test_serve.py and
test_serve_startup.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from coldllm.normalize import TextNormalizer, normalize_text, strip_invisible  # noqa: E402
from coldllm.serve.app import MAX_BODY, create_app  # noqa: E402
from coldllm.serve.keys import ApiKeys  # noqa: E402
from coldllm.serve.limits import BodyLimit, Limits, json_problem  # noqa: E402
from coldllm.serve.online import Added  # noqa: E402
from coldllm.serve.store import StoredItem  # noqa: E402
from coldllm.config import ConfigError  # noqa: E402

WRITE_KEY, READ_KEY = "w" * 20 + "-write-key", "r" * 20 + "-read-key"


class StandIn:
    """What ``create_app`` needs of a service; ``add`` records items and may be held on a gate."""

    name = "stand-in"

    def __init__(self):
        self.added: list = []
        self.gate: threading.Event | None = None  # when set, ``add`` waits for it
        self.entered = threading.Event()

    def add(self, items):
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        self.added += items
        return [Added(StoredItem(id=i.id, text=i.text, embedding=np.zeros(2, np.float32), users=["u1"],
                                 p_yes=[0.9], accepted=[True]), {"filter": 0.0}) for i in items]

    def user_index(self, user_id):
        return 0 if user_id == "u1" else None

    def recommend(self, user, k, only):
        return [("i1", 1.0)]


def app_client(keys: ApiKeys | None = None, limits: Limits | None = None) -> tuple[TestClient, StandIn]:
    service = StandIn()
    return TestClient(create_app("unused", service=service, keys=keys, limits=limits)), service


@pytest.fixture
def open_client():
    return app_client()


def loc_names(answer: dict) -> list[str]:
    return [str(part) for error in answer["detail"] for part in error["loc"]]


# -- bounded bodies ---------------------------------------------------------------------------------

def test_chunked_body_is_cut_off_as_soon_as_it_passes_the_limit():
    """A body that declares no length (chunked) is counted as it arrives: 413 once the limit is
    passed, the rest never read (the stream below would be 200 MiB)."""
    chunk, limit = 64 * 1024, 1024 * 1024
    pulled, sent = [], []
    reached = []

    async def app(scope, receive, send):  # reads the whole body, as a JSON route does
        while True:
            message = await receive()
            if not message.get("more_body"):
                break
        reached.append(True)

    async def receive():
        pulled.append(chunk)
        return {"type": "http.request", "body": b"x" * chunk, "more_body": len(pulled) < 3200}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/items", "headers": [(b"transfer-encoding", b"chunked")]}
    asyncio.run(BodyLimit(app, limit)(scope, receive, send))
    assert sent[0]["status"] == 413 and not reached
    assert len(pulled) == limit // chunk + 1  # stopped at the first chunk past the limit
    assert "over 1048576 bytes" in json.loads(sent[1]["body"])["detail"][0]["msg"]


def test_body_within_the_limit_reaches_the_app_whole():
    got = []

    async def app(scope, receive, send):
        message = await receive()
        got.append(message["body"])

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        pass

    scope = {"type": "http", "method": "POST", "path": "/items", "headers": [(b"content-length", b"2")]}
    asyncio.run(BodyLimit(app, 10)(scope, receive, send))
    assert got == [b"{}"]


def test_streamed_body_over_the_limit_through_the_app_is_413(open_client):
    client, service = open_client
    body = json.dumps({"id": "big", "text": "x " * (MAX_BODY // 2 + 10)}).encode()

    def stream():  # no content-length: the client sends it chunked
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]

    response = client.post("/items", content=stream(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "body" in loc_names(response.json())
    assert not service.added


# -- 4xx answers: the field named, the input never echoed whole -----------------------------------

def test_a_huge_text_is_refused_with_a_short_answer(open_client):
    client, service = open_client
    response = client.post("/items", json={"id": "h1", "text": "y" * 1_900_000})
    assert response.status_code == 422 and "text" in loc_names(response.json())
    assert len(response.content) < 2000  # the default answer echoed all 1.9 MB
    assert not service.added


BAD_ITEMS = [
    # (raw JSON body, the field the answer must name)
    ('{"id": "\\ud800", "text": "graph networks"}', "id"),  # a lone surrogate: unencodable as UTF-8
    ('{"id": "s1", "text": "graph \\ud800 networks"}', "text"),
    ('{"id": "s2", "text": "graph \\u0000 networks"}', "text"),  # a control character
    ('{"id": "s\\u0007", "text": "graph networks"}', "id"),
    ('{"id": "admin\\u202e", "text": "graph networks"}', "id"),  # bidi override: looks like another id
    ('{"id": "ad\\u200bmin", "text": "graph networks"}', "id"),  # zero-width space
    ('{"id": "s3", "text": "\\u200b\\u202e\\u2060\\ufeff \\u3164"}', "text"),  # only invisible characters
    ('{"id": "s4", "text": "graph networks", "year": NaN}', "year"),
    ('{"id": "s5", "text": "graph networks", "meta": {"score": Infinity}}', "score"),
    ('{"id": "s6", "text": "graph networks", "note": "\\udfff"}', "note"),
]


@pytest.mark.parametrize("raw,field", BAD_ITEMS, ids=[b[:40] for b, _ in BAD_ITEMS])
def test_bad_characters_and_numbers_are_422_naming_the_field(open_client, raw, field):
    client, service = open_client
    response = client.post("/items", content=raw.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    answer = json.loads(response.content.decode("utf-8"))  # encodable: no surrogate came back
    assert field in loc_names(answer), answer
    assert not service.added


def test_the_same_characters_are_refused_inside_a_batch(open_client):
    client, service = open_client
    raw = '{"items": [{"id": "ok", "text": "fine"}, {"id": "b2", "text": "fine", "year": NaN}]}'
    response = client.post("/items/batch", content=raw.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "items", 1, "year"]
    assert not service.added


def test_deeply_nested_json_is_refused_before_parsing(open_client):
    client, service = open_client
    raw = '{"id": "d1", "text": "graph", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    response = client.post("/items", content=raw.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 422 and "nested 100001 levels deep" in response.json()["detail"][0]["msg"]
    assert not service.added


def test_json_depth_ignores_brackets_inside_strings():
    assert json_problem(b'{"text": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ \\" [[[["}', 4) is None
    assert json_problem(b'[[[[[1]]]]]', 4) == "JSON nested 5 levels deep; at most 4"
    assert json_problem(b'{"n": ' + b"9" * 5000 + b"}", 4) == "a JSON number of 4300 digits or more"


def test_good_items_still_pass_and_their_text_is_what_the_service_gets(open_client):
    client, service = open_client
    response = client.post("/items", json={"id": "ok-1", "text": "Graph\u200b networks", "year": 2024})
    assert response.status_code == 201, response.text
    assert service.added[0].text == "Graph\u200b networks"  # normalised by the service itself (below)
    assert response.json()["queued_seconds"] >= 0


# -- text normalisation ----------------------------------------------------------------------------

def test_normalisation_folds_compatibility_forms_and_drops_invisible_characters():
    assert strip_invisible("\ufb01le  \uff21\u200b\u202eB\u2060C\n\tD") == "file ABC D"
    assert strip_invisible("\u200b\u202e\u2060\ufeff\u3164 ") == ""
    assert normalize_text("word " * 100, max_chars=52) == ("word " * 10).strip()  # cut at a space


def test_normalisation_caps_in_tokens_of_the_judges_tokenizer():
    class Words:  # a stand-in fast tokenizer: one token per word, with character offsets
        def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
            spans, start = [], 0
            for word in text.split(" "):
                spans.append((start, start + len(word)))
                start += len(word) + 1
            return {"offset_mapping": spans}

    cap = TextNormalizer(tokenizer=Words(), max_tokens=3)
    assert cap("one two three four five") == "one two three"
    assert cap("one \u200btwo") == "one two"


# -- the write queue --------------------------------------------------------------------------------

def held_write(client: TestClient, service: StandIn) -> threading.Thread:
    """A write that holds the queue until ``service.gate`` is set."""
    service.gate = threading.Event()
    first = threading.Thread(target=client.post, args=("/items",), kwargs={"json": {"id": "first", "text": "a b"}})
    first.start()
    assert service.entered.wait(10)
    return first


def second_write_behind_a_held_one(client, service):
    """POST a second item while a first write holds the queue; its answer and how long it waited."""
    with client:  # one event loop for every request, as in the server
        first = held_write(client, service)
        start = time.perf_counter()
        response = client.post("/items", json={"id": "second", "text": "c d"})
        waited = time.perf_counter() - start
        service.gate.set()
        first.join(10)
    return response, waited


def test_a_write_that_cannot_get_its_turn_in_time_is_503_with_retry_after():
    client, service = app_client(limits=Limits(write_timeout=0.3, write_queue=4))
    response, waited = second_write_behind_a_held_one(client, service)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert response.json()["detail"][0]["loc"] == ["queue"]
    assert 0.3 <= waited < 3  # it waited its timeout, not for the write ahead of it
    assert [i.id for i in service.added] == ["first"]


def test_a_full_write_queue_answers_503_at_once():
    client, service = app_client(limits=Limits(write_timeout=30, write_queue=0))
    response, waited = second_write_behind_a_held_one(client, service)
    assert response.status_code == 503 and "waiting already" in response.json()["detail"][0]["msg"]
    assert waited < 5  # far below the 30 s timeout


def test_a_write_waiting_within_its_timeout_gets_its_turn():
    client, service = app_client(limits=Limits(write_timeout=10, write_queue=4))
    with client:
        first = held_write(client, service)
        answers = []
        second = threading.Thread(target=lambda: answers.append(client.post("/items", json={"id": "second",
                                                                                            "text": "c d"})))
        second.start()
        time.sleep(0.2)
        service.gate.set()
        first.join(10)
        second.join(10)
    assert answers[0].status_code == 201 and answers[0].json()["queued_seconds"] >= 0.1
    assert [i.id for i in service.added] == ["first", "second"]


# -- API keys ---------------------------------------------------------------------------------------

def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_writes_need_a_write_key_and_reads_stay_open_by_default():
    keys = ApiKeys.load(env=f"write:{WRITE_KEY}, read:{READ_KEY}")
    client, service = app_client(keys=keys)
    item = {"id": "k1", "text": "graph networks"}
    assert client.post("/items", json=item).status_code == 401
    assert client.post("/items", json=item, headers=bearer("w" * 20 + "-wrong-key")).status_code == 401
    assert client.post("/items", json=item, headers=bearer(READ_KEY)).status_code == 403
    assert not service.added
    assert client.post("/items", json=item, headers=bearer(WRITE_KEY)).status_code == 201
    assert client.get("/users/u1/recommendations").status_code == 200


def test_read_keys_when_asked_for():
    client, _ = app_client(keys=ApiKeys.load(env=f"write:{WRITE_KEY}\nread:{READ_KEY}", reads=True))
    assert client.get("/users/u1/recommendations").status_code == 401
    assert client.get("/users/u1/recommendations", headers=bearer("nope" * 5)).status_code == 401
    assert client.get("/users/u1/recommendations", headers=bearer(READ_KEY)).status_code == 200
    assert client.get("/users/u1/recommendations", headers=bearer(WRITE_KEY)).status_code == 200


def test_keys_are_compared_in_constant_time_against_every_key(monkeypatch):
    import coldllm.serve.keys as keys_module

    calls = []
    real = keys_module.hmac.compare_digest
    monkeypatch.setattr(keys_module.hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    keys = ApiKeys.load(env=f"write:{WRITE_KEY}, read:{READ_KEY}, read:{'z' * 30}")
    assert keys.scope(WRITE_KEY) == "write" and len(calls) == 3  # no early exit on the first match
    assert keys.scope("nothing") is None and len(calls) == 6


def test_keys_are_never_logged_or_echoed(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# service keys\nwrite:{WRITE_KEY}  # the loader\nread:{READ_KEY}\n")
    keys = ApiKeys.load(keys_file)
    client, _ = app_client(keys=keys)
    wrong = client.post("/items", json={"id": "k", "text": "a b"}, headers=bearer(READ_KEY))
    assert client.post("/items", json={"id": "k", "text": "a b"}, headers=bearer(WRITE_KEY)).status_code == 201
    assert WRITE_KEY not in caplog.text and READ_KEY not in caplog.text and READ_KEY not in wrong.text
    assert WRITE_KEY not in repr(keys)
    keys_file.write_text(f"write:{WRITE_KEY}\nadmin:{READ_KEY}\n")
    with pytest.raises(ConfigError, match="line 2: an API key is written") as err:
        ApiKeys.load(keys_file)
    assert READ_KEY not in str(err.value)
    with pytest.raises(ConfigError, match="at least 16 characters"):
        ApiKeys.load(env="write:short")


def test_every_service_case_in_bad_input_md_names_a_test_that_exists():
    """The service table of docs/bad-input.md names its tests; each one must exist."""
    import re
    from pathlib import Path

    tests = Path(__file__).parent
    doc = (tests.parent / "docs" / "bad-input.md").read_text()
    rows = [line for line in doc.split("## The service", 1)[1].splitlines() if re.match(r"\| S\d+ ", line)]
    names = {name for row in rows for name in re.findall(r"`(test_\w+)`", row.rsplit("|", 2)[-2])}
    source = "".join(p.read_text() for p in tests.glob("test_serve*.py"))
    assert len(rows) >= 20 and all(re.findall(r"`test_\w+`", row) for row in rows)
    assert {n for n in names if f"def {n}(" not in source} == set()


def test_a_write_without_a_key_is_refused_before_its_body_is_read(monkeypatch):
    """The key is checked first: a keyless client gets 401 whatever it sends, a body the service would
    refuse as too deep or not JSON included, and the body's checker never runs."""
    from coldllm.serve import app as app_module

    keys = ApiKeys.load(env=f"write:{WRITE_KEY}")
    client, service = app_client(keys=keys)
    looked = []
    real = app_module.json_problem
    monkeypatch.setattr(app_module, "json_problem", lambda body, depth: looked.append(len(body)) or real(body, depth))
    deep = "[" * 5000 + "]" * 5000
    for body in (deep, "not json", '{"id": "k1", "text": "graph networks"}'):
        answer = client.post("/items", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 401, answer.text
    assert not looked and not service.added
    answer = client.post("/items", content=deep, headers={"content-type": "application/json", **bearer(WRITE_KEY)})
    assert answer.status_code == 422 and looked  # with the key, the body is read and checked
