"""The online service over a tiny finished run: the funnel for new items, the store, the HTTP API.

One tiny run (cosine judge) is built per module. The end-to-end test starts ``coldllm serve`` as a
real process, adds an item, kills the process with SIGKILL and finds the item again after a
restart; malformed requests of every kind are sent to that same live process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from coldllm.cli import app as cli  # noqa: E402
from coldllm.backbones import load_backbone  # noqa: E402
from coldllm.funnel.guard import centered  # noqa: E402
from coldllm.funnel.update_stage import content_prior, predicted_popularity  # noqa: E402
from coldllm.layout import RunLayout  # noqa: E402
from coldllm.funnel.update import item_depths, knn_prior, prior_candidates  # noqa: E402
from coldllm.pipeline import Run  # noqa: E402
from coldllm.serve.app import create_app  # noqa: E402
from coldllm.serve.online import DuplicateItem, NewItem, OnlineService, SteeringText  # noqa: E402
from coldllm.serve.store import ItemStore, StoredItem, StoreError  # noqa: E402
from test_cli import write_project  # noqa: E402


def finished_run(tmp: Path, *overrides: str) -> Path:
    """A tiny run through every stage the service needs (filter, simulate, update)."""
    cfg = str(write_project(tmp))
    result = CliRunner().invoke(cli, [
        "run", "-c", cfg, "--stages=[prepare, train, filter, simulate, update]", "--filter.text_model=minilm",
        "--filter.k=5", "--update.steps=20", *overrides])
    assert result.exit_code == 0, result.output
    return tmp / "runs" / "tiny"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    # a run whose update takes steps (any gain counts), so a new item's row moves as the run's did
    return finished_run(tmp_path_factory.mktemp("serve"), "--filter.collab={epochs: 2, hidden: 16}",
                        "--filter.lm={epochs: 2, hidden: 16, out_dim: 8}", "--refiner.judge=cosine",
                        "--update.min_gain_se=0")


def fresh(run_dir: Path) -> Path:
    """The run with no item added online yet (the filter's cached towers are kept)."""
    for suffix in ("", "-wal", "-shm"):
        (run_dir / "serve" / f"items.sqlite{suffix}").unlink(missing_ok=True)
    return run_dir


@pytest.fixture(scope="module")
def service(run_dir):
    svc = OnlineService(fresh(run_dir))
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(service):
    return TestClient(create_app(service.run_dir, service=service))


def cold_count(service) -> int:
    return len(service.index.snapshot.subsets["cold"].index)


def test_added_item_is_recommended_to_its_simulated_users(client, service):
    response = client.post("/items", json={"id": "n1", "text": "graph networks paper 999", "venue": "KDD"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["candidates"] == 5 and body["simulated_users"]
    assert set(body["stages"]) == {"filter", "judge", "update", "store"}
    assert all(-1.0 <= u["p_yes"] <= 1.0 for u in body["simulated_users"])  # the cosine judge's P(Yes)
    for user in (u["user"] for u in body["simulated_users"]):
        recs = client.get(f"/users/{user}/recommendations", params={"k": cold_count(service), "only": "cold"})
        assert "n1" in [r["item"] for r in recs.json()["items"]]
    info = client.get("/items/n1").json()
    assert info["source"] == "online" and info["fields"] == {"venue": "KDD"}
    assert info["simulated_users"] == body["simulated_users"]


def test_a_run_that_kept_its_prior_gives_new_items_their_prior(tmp_path):
    run_dir = finished_run(tmp_path, "--filter.towers=collab", "--filter.collab_source=knn", "--refiner.judge=all",
                           "--update.min_gain_se=1e9")
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["update"]["best_step"] == 0
    service = OnlineService(run_dir)
    try:
        before = torch.as_tensor(service.index.item_rows().copy())
        text = "protein folding paper 1234"
        service.add([NewItem(id="n3", text=text)])
        warm = service.data.warm_items
        pool = torch.cat([torch.as_tensor(service.content[warm]), torch.as_tensor(service.encoder.encode([text]))])
        prior = knn_prior(pool, before[warm], torch.arange(len(warm)), torch.tensor([len(warm)]),
                          service.cfg.update.prior_k)[0]
        torch.testing.assert_close(torch.as_tensor(service.index.item_rows()[-1]), prior)
    finally:
        service.close()


def test_update_moves_only_the_new_row_from_its_prior_towards_accepted_users(service):
    before = service.index.item_rows().copy()
    text = "protein folding paper 1234"
    (added,) = service.add([NewItem(id="n2", text=text)])
    after = service.index.item_rows()
    assert np.array_equal(after[: len(before)], before)  # every other row frozen
    vector = torch.as_tensor(service.encoder.encode([text]))
    table = torch.as_tensor(before)
    warm = service.data.warm_items
    pool = torch.cat([torch.as_tensor(service.content[warm]), vector])
    prior = knn_prior(pool, table[warm], torch.arange(len(warm)), torch.tensor([len(warm)]), service.cfg.update.prior_k)[0]
    row = torch.as_tensor(after[-1])
    users = [service.user_index(u) for u, ok in zip(added.item.users, added.item.accepted) if ok]
    assert users and not torch.equal(row, prior)
    user_emb = service.user_emb[users]
    assert (user_emb @ row).mean() > (user_emb @ prior).mean()  # the accepted users now score it higher


def test_new_text_is_normalised_before_the_funnel_and_the_store(client, service):
    """What is stored (and judged) is the NFKC text without invisible characters, one line."""
    response = client.post("/items", json={"id": "norm1", "text": "\ufb01ne  graph\u200b net\u202eworks\n\tpaper"})
    assert response.status_code == 201, response.text
    assert client.get("/items/norm1").json()["text"] == "fine graph networks paper"
    assert service.store.load()[-1].text == "fine graph networks paper"


def test_recommendations_exclude_training_items_and_respect_only(client, service):
    data = service.data
    train = data.matrix("train")
    user = 3
    seen = {str(data.item_ids[i]) for i in train.indices[train.indptr[user]:train.indptr[user + 1]]}
    uid = str(data.user_ids[user])
    everything = client.get(f"/users/{uid}/recommendations", params={"k": 1000}).json()["items"]
    ids = [r["item"] for r in everything]
    assert seen and not seen & set(ids) and len(ids) == service.index.n_items - len(seen)
    assert [r["score"] for r in everything] == sorted((r["score"] for r in everything), reverse=True)
    warm = {str(data.item_ids[i]) for i in data.warm_items}
    only_warm = client.get(f"/users/{uid}/recommendations", params={"k": 7, "only": "warm"}).json()["items"]
    assert len(only_warm) == 7 and {r["item"] for r in only_warm} <= warm - seen
    only_cold = client.get(f"/users/{uid}/recommendations", params={"k": 1000, "only": "cold"}).json()["items"]
    assert not {r["item"] for r in only_cold} & warm and len(only_cold) == cold_count(service)


def test_dataset_items_show_the_runs_own_simulated_users(client, service):
    cold = str(service.data.item_ids[service.data.cold_items[0]])
    info = client.get(f"/items/{cold}").json()
    assert info["source"] == "run" and info["cold"] and info["simulated_users"]
    warm = client.get(f"/items/{service.data.item_ids[service.data.warm_items[0]]}").json()
    assert not warm["cold"] and warm["simulated_users"] == []


def test_batch_is_stored_whole_or_not_at_all(client, service):
    ok = client.post("/items/batch", json={"items": [{"id": "b1", "text": "graph networks a"},
                                                     {"id": "b2", "text": "protein folding b"}]})
    assert ok.status_code == 201 and [i["id"] for i in ok.json()["items"]] == ["b1", "b2"]
    n = service.index.n_items
    clash = client.post("/items/batch", json={"items": [{"id": "b3", "text": "graph networks c"},
                                                        {"id": "b1", "text": "again"}]})
    assert clash.status_code == 409 and clash.json()["detail"][0]["loc"] == ["body", "items", 1, "id"]
    assert service.index.n_items == n and client.get("/items/b3").status_code == 404


def test_concurrent_adds_and_reads_stay_consistent(service):
    errors: list[BaseException] = []
    duplicates = []

    def adder(name: str) -> None:
        try:
            service.add([NewItem(id=name, text=f"graph networks {name}")])
        except DuplicateItem:
            duplicates.append(name)
        except BaseException as err:  # noqa: BLE001  (reported below)
            errors.append(err)

    def reader() -> None:
        for _ in range(30):
            snap = service.index.snapshot
            assert all(len(s.index) == len(s.items) for s in snap.subsets.values())
            service.recommend(0, 5, "cold")

    n = service.index.n_items
    threads = [threading.Thread(target=adder, args=(f"c{i % 4}",)) for i in range(8)]
    threads += [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(duplicates) == 4  # each of the 4 ids added exactly once
    assert service.index.n_items == n + 4 and len(set(service.index.snapshot.item_ids)) == n + 4


def test_store_keeps_float32_bytes_and_refuses_another_space(tmp_path):
    path = tmp_path / "items.sqlite"
    store = ItemStore(path, space="abc", dim=3)
    row = np.array([0.1, -2.5, 3e-8], np.float32)
    item = StoredItem(id="x", text="t", embedding=row, users=["u1", "u2"], p_yes=[0.9, 0.2],
                      accepted=[True, False], fields={"a": [1, 2]})
    store.add([item])
    with pytest.raises(Exception):  # the second item repeats an id: the whole call rolls back
        store.add([StoredItem(id="y", text="t", embedding=row, users=[], p_yes=[], accepted=[]), item])
    store.close()
    (back,) = ItemStore(path, space="abc", dim=3).load()
    assert back.embedding.tobytes() == row.tobytes() and back.users == ["u1", "u2"] and back.accepted == [True, False]
    assert back.fields == {"a": [1, 2]}
    with pytest.raises(StoreError, match="space"):
        ItemStore(path, space="other", dim=3)


# -- a real process --------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def declared_only(url: str, length: int) -> tuple[int, dict]:
    """A POST that declares a ``length``-byte body and sends none: the answer must come first."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest("POST", parts.path)
    conn.putheader("content-type", "application/json")
    conn.putheader("content-length", str(length))
    conn.endheaders()
    response = conn.getresponse()
    try:
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def request(url: str, method: str = "GET", body: bytes | None = None, json_body=None) -> tuple[int, dict]:
    headers = {}
    if json_body is not None:
        body = json.dumps(json_body).encode()
    if body is not None:
        headers["content-type"] = "application/json"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


class LiveServer:
    """``coldllm serve`` in its own process; ``restart`` after ``kill`` reuses the run folder."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.proc, self.url = run_dir, None, ""
        self.log = run_dir.parent / "serve-test.log"  # a file, not a pipe: a full pipe would stall the server

    def start(self) -> None:
        port = free_port()
        script = Path(sys.executable).with_name("coldllm")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "coldllm.cli"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen([*command, "serve", str(self.run_dir), "--port", str(port)],
                                         stdout=log, stderr=log, env={**os.environ, "TQDM_DISABLE": "1"})
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if request(self.url + "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.kill()  # never leave a process behind
        raise AssertionError(f"server did not answer /health in time: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def live(run_dir, service, client):
    # after the in-process tests (the same run folder, so the same store file is shared)
    server = LiveServer(run_dir)
    try:
        server.start()
        yield server
    finally:
        server.kill()


def test_end_to_end_item_survives_sigkill(live):
    status, body = request(live.url + "/items", "POST", json_body={"id": "e2e", "text": "graph networks deep learning"})
    assert status == 201 and body["simulated_users"], body
    user = body["simulated_users"][0]["user"]

    def recommended() -> list[str]:
        status, recs = request(f"{live.url}/users/{user}/recommendations?k=1000&only=cold")
        assert status == 200
        return [r["item"] for r in recs["items"]]

    assert "e2e" in recommended()
    online = request(live.url + "/health")[1]["online_items"]
    live.kill()  # no shutdown of any kind: only what was committed survives
    live.start()
    assert "e2e" in recommended()
    assert request(live.url + "/health")[1]["online_items"] == online
    assert request(live.url + "/items/e2e")[1]["simulated_users"] == body["simulated_users"]


MALFORMED = [
    # (method, path, body: JSON | raw bytes | None | a declared length, status, a field the answer names)
    ("POST", "/items", b"{not json", 422, "body"),
    ("POST", "/items", None, 422, "body"),
    ("POST", "/items", [1, 2], 422, "body"),
    ("POST", "/items", {"text": "graph networks"}, 422, "id"),
    ("POST", "/items", {"id": "m1"}, 422, "text"),
    ("POST", "/items", {"id": "m2", "text": ""}, 422, "text"),
    ("POST", "/items", {"id": "m3", "text": "   \n"}, 422, "text"),
    ("POST", "/items", {"id": "m4", "text": "x" * 10_001}, 422, "text"),
    ("POST", "/items", {"id": 5, "text": "graph networks"}, 422, "id"),
    ("POST", "/items", {"id": "a/b", "text": "graph networks"}, 422, "id"),
    ("POST", "/items", {"id": "", "text": "graph networks"}, 422, "id"),
    ("POST", "/items", {"id": "i0", "text": "graph networks"}, 409, "id"),  # a dataset item
    ("POST", "/items", {"id": "m5", "text": "graph networks", "extra": "x" * 20_000}, 422, "body"),
    ("POST", "/items", 3_000_000, 413, "content-length"),  # a body over the limit: refused unread
    ("POST", "/items", b'{"id": "\\ud800", "text": "graph networks"}', 422, "id"),  # a lone surrogate
    ("POST", "/items", b'{"id": "m9", "text": "graph networks", "year": NaN}', 422, "year"),
    ("POST", "/items", b'{"id": "m10", "text": "\\u200b\\u202e"}', 422, "text"),  # nothing visible
    ("POST", "/items", b'{"id": "m11", "text": "a", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", 422, "body"),
    ("POST", "/items/batch", {"items": []}, 422, "items"),
    ("POST", "/items/batch", {"id": "m7", "text": "graph networks"}, 422, "items"),
    ("POST", "/items/batch", {"items": [{"id": "m8", "text": "a b"}, {"id": "m8", "text": "c d"}]}, 409, "id"),
    ("GET", "/users/nobody/recommendations", None, 404, "user_id"),
    ("GET", "/users/u0/recommendations?k=0", None, 422, "k"),
    ("GET", "/users/u0/recommendations?k=abc", None, 422, "k"),
    ("GET", "/users/u0/recommendations?k=100000", None, 422, "k"),
    ("GET", "/users/u0/recommendations?only=hot", None, 422, "only"),
    ("GET", "/items/nothing-here", None, 404, "item_id"),
]


@pytest.mark.parametrize("method,path,body,status,field", MALFORMED,
                         ids=[f"{m} {p[:32]} {str(b)[:24]}" for m, p, b, *_ in MALFORMED])
def test_malformed_requests_are_refused_with_the_field_named(live, method, path, body, status, field):
    before = request(live.url + "/health")[1]["online_items"]
    if isinstance(body, int):
        got, answer = declared_only(live.url + path, body)
    else:
        raw = body if isinstance(body, bytes) else None
        got, answer = request(live.url + path, method, body=raw, json_body=None if raw is not None or body is None else body)
    assert got == status, answer
    assert any(field in [str(part) for part in error["loc"]] for error in answer["detail"]), answer
    assert request(live.url + "/health")[1]["online_items"] == before  # nothing stored half-way


def test_a_chunked_body_is_refused_once_past_the_limit_not_read_whole(live):
    """A 200 MiB chunked body (no length declared): the server answers 413 after about the limit
    and stops reading; the client sees the answer long before it could have sent it all."""
    import select
    from urllib.parse import urlsplit

    parts = urlsplit(live.url)
    chunk = b"x" * 65536
    total, sent, status = 200 * 1024 * 1024, 0, None
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(b"POST /items HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")
        try:
            while sent < total:
                if select.select([sock], [], [], 0)[0]:
                    break  # the answer came
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection after answering
        head = sock.recv(65536).split(b"\r\n", 1)[0]
        status = int(head.split()[1])
    assert status == 413
    assert sent < 64 * 1024 * 1024  # stopped near the 2 MiB limit (socket buffers hold a few more)


def test_ranked_run_items_merged_with_new_ones_give_the_full_ranking(service):
    """The start-time top-m per user, merged with the items added online, ranks as scoring them all does."""
    from coldllm.serve.index import RecommendationIndex

    data = service.data
    index = RecommendationIndex(service.user_emb.numpy(), service.index.item_rows()[: data.n_items],
                                [str(i) for i in data.item_ids], data.is_cold, data.matrix("train"), top_m=4)
    index.add(["x1", "x2"], service.index.item_rows()[:2] * 3.0)  # rows that rank high for some users
    for user in range(0, data.n_users, 3):
        for only in ("all", "cold", "warm"):
            merged = index.recommend(user, 4, only)
            full = index.recommend(user, 10_000, only)[:4]
            assert [i for i, _ in merged] == [i for i, _ in full] and len(merged) == 4


@pytest.mark.parametrize("towers", ["onepass", "coupled"])
def test_the_service_scores_with_the_filter_the_run_fitted(tmp_path, towers):
    """The service loads the towers the filter stage saved (nothing is fitted again): scoring the
    run's own cold items with them gives the run's candidates, every one, in the same order; and a
    new item's simulated users are the loaded towers' top users."""
    extra = (["--filter.onepass={epochs: 2, hidden: 16}", "--refiner.judge=all"] if towers == "onepass"
             else ["--filter.collab={epochs: 2, hidden: 16}", "--filter.lm={epochs: 2, hidden: 16, out_dim: 8}",
                   "--refiner.judge=cosine"])
    run = finished_run(tmp_path, f"--filter.towers={towers}", *extra)
    service = OnlineService(run)
    try:
        data, candidates = service.data, pd.read_parquet(run / "filter" / "candidates.parquet")
        cold = data.cold_items
        text = service.lm_text[cold] if service.lm_text is not None else None
        found = service.towers.top_users(service.towers.item_vectors(service.content[cold], text),
                                         service.cfg.filter.k, list(range(len(cold))))
        for item, (users, _) in zip(cold, found):
            run_users = candidates[candidates["item"] == item].sort_values("rank")["user"].tolist()
            assert users.tolist() == run_users, item
        assert not (run / "serve" / "filter.safetensors").exists()  # no refitted copy
        (added,) = service.add([NewItem(id="n1", text="graph networks paper 999")])
        vector = service.towers.item_vectors(service.encoder.encode(["graph networks paper 999"]),
                                             service.lm_encoder.encode(["graph networks paper 999"]))
        (best, _), = service.towers.top_users(vector, service.cfg.filter.k, [0])
        if towers == "onepass":  # the head's top users, every one accepted: a one-pass run has no judge
            assert [service.user_index(u) for u in added.item.users] == best.tolist() and all(added.item.accepted)
        else:
            assert {service.user_index(u) for u in added.item.users} == set(best.tolist())
    finally:
        service.close()


def test_a_new_item_starts_where_the_runs_update_started_its_cold_items(tmp_path):
    """With update.prior=best the run may start its cold items at the filter's own mapping or a
    blend, and take the candidates to a depth chosen on validation; a new item gets the same: the
    service's prior for a run's cold item's text is the row the run started that item from."""
    run = finished_run(tmp_path, "--filter.towers=onepass", "--filter.onepass={epochs: 2, hidden: 16}",
                       "--refiner.judge=all", "--update.prior=best", "--update.k_grid=[2, 5]",
                       "--stages=[prepare, train, filter, simulate, update]")
    service = OnlineService(run)
    try:
        record = json.loads((run / "manifest.json").read_text())["stages"]["update"]
        assert service.update.prior == record["prior"] and service.update.depth == record["k"]
        user_emb, item_emb = load_backbone(run / "backbone", service.data).embeddings()
        cold = service.data.cold_items
        expected = prior_candidates(content_prior(Run(service.cfg), user_emb, item_emb),
                                    load_file(str(RunLayout(run).filter_prior))["cold"])
        table = torch.from_numpy(service.index.item_rows())
        for name in expected:  # every candidate the run could choose, computed as the service computes it
            service.update.prior = name
            got = service._prior(service.content[cold], service.lm_text[cold], table)
            torch.testing.assert_close(got, expected[name].float(), rtol=1e-4, atol=1e-5)
        (added,) = service.add([NewItem(id="n1", text="graph networks paper 999")])
        assert len(added.item.users) == record["k"]
    finally:
        service.close()


def test_a_run_whose_one_pass_learned_its_text_encoder_is_served_with_it(tmp_path, tiny_llm_dir):
    """filter.onepass.encoder=text: the filter stage saves the tuned encoder beside its towers; the
    service encodes texts through that encoder, so the run's cold items get the run's candidates."""
    run = finished_run(tmp_path, "--filter.towers=onepass", "--refiner.judge=all",
                       f"--filter.onepass={{epochs: 1, hidden: 16, encoder: text, text_model: '{tiny_llm_dir}', "
                       f"tune: lora, batch_items: 8, lora_r: 2}}")
    assert (run / "filter" / "text_encoder" / "weights.safetensors").is_file()
    card = (run / "filter" / "text_encoder" / "README.md").read_text()  # the model card, with its epochs
    assert f"base_model: {tiny_llm_dir}" in card and "| 1 |" in card
    service = OnlineService(run)
    try:
        assert service.lm_encoder.spec.tune == "lora"
        data, candidates = service.data, pd.read_parquet(run / "filter" / "candidates.parquet")
        cold = data.cold_items
        vectors = service.towers.item_vectors(service.content[cold], service.lm_encoder.encode(list(data.item_text[cold])))
        found = service.towers.top_users(vectors, service.cfg.filter.k, list(range(len(cold))))
        for item, (users, _) in zip(cold, found):
            assert users.tolist() == candidates[candidates["item"] == item].sort_values("rank")["user"].tolist()
    finally:
        service.close()


def test_popularity_depths_are_the_runs_for_its_own_cold_items(tmp_path):
    run = finished_run(tmp_path, "--filter.towers=onepass", "--filter.onepass={epochs: 1, hidden: 16}",
                       "--refiner.judge=all", "--update.k_grid=[2, 4]", "--update.depth=popularity")
    service = OnlineService(run)
    try:
        record = json.loads((run / "manifest.json").read_text())["stages"]["update"]
        cold = service.data.cold_items
        expected = item_depths(predicted_popularity(Run(service.cfg)), record["k"], service.cfg.filter.k)
        np.testing.assert_array_equal(service.depths(service.content[cold]), expected)
    finally:
        service.close()


def test_the_language_model_judges_guard_refuses_a_steering_text(tmp_path, tiny_llm_dir):
    """With the LoRA judge the service fits its P(Yes) guard once per adapter (serve/guard.json) and
    refuses, with a 422 naming the text, an item whose z is above refiner.guard_z; below it the item
    is added. The guard asks the judge the same question its verdicts answer."""
    run = finished_run(tmp_path, "--filter.towers=collab", "--filter.collab_source=knn", "--refiner.judge=llm",
                       f"--refiner.model={tiny_llm_dir}", "--refiner.train_users=8", "--refiner.eval_users=4",
                       "--refiner.lora={epochs: 1, batch_size: 4}", "--refiner.guard_users=4",
                       "--refiner.guard_items=6", "--stages=[prepare, train, filter, finetune, simulate, update]")
    guard_file = run / "serve" / "guard.json"
    assert guard_file.exists()  # the simulation centred its verdicts on the same reference users
    fitted = guard_file.stat().st_mtime_ns
    service = OnlineService(run)
    try:
        assert service.guard is not None and len(service.guard.users) == 4
        assert guard_file.stat().st_mtime_ns == fitted  # loaded, not fitted again
        # the reference users' prefixes are kept: what follows asks them through the kept states
        assert service.judge.judge.keeps(service.guard.users)
        # one of the run's cold items judged by the service as the simulation judged it: the same
        # offset, the same centred P(Yes), the same verdicts
        simulated = pd.read_parquet(RunLayout(run).simulated)
        item = int(simulated["item"].iloc[0])
        rows = simulated[simulated["item"] == item]
        text, vector = service.data.item_text[item], service.content[item]
        (offset,) = service.guard.offsets(service.judge.p_yes_matrix, [text], vector[None])
        np.testing.assert_allclose(rows["offset"], offset, atol=1e-4)
        p_raw, _ = service.judge.verdicts(rows["user"].to_numpy(), text, vector)
        np.testing.assert_allclose(rows["p_raw"], p_raw, atol=1e-4)
        p_yes, accepted = centered(p_raw, offset, service.judge.threshold)
        np.testing.assert_allclose(rows["p_yes"], p_yes, atol=1e-4)
        clear = np.abs(rows["p_raw"].to_numpy() - offset - service.judge.threshold) > 1e-3  # not on the line
        assert (rows["accepted"].to_numpy() == accepted)[clear].all()
        text = "graph networks paper 999"
        vector = service.encoder.encode([text])
        users = np.array(service.guard.users)
        np.testing.assert_allclose(service.judge.p_yes_matrix(users, [text], vector)[0],
                                   service.judge.verdicts(users, text, vector[0])[0], atol=1e-5)
        (z,) = service.guard.z_scores(service.judge.p_yes_matrix, [text], vector)
        service.guard.z = z - 1e-3  # this text is now above the limit
        with pytest.raises(SteeringText, match="refiner.guard_z"):
            service.add([NewItem(id="steer", text=text)])
        response = TestClient(create_app(run, service=service)).post("/items", json={"id": "steer", "text": text})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["body", "text"]
        assert not service.exists("steer")  # nothing was stored
        service.guard.z = z + 1.0
        (added,) = service.add([NewItem(id="steer", text=text)])
        assert added.item.id == "steer"
        # what is stored is the centred verdict
        (offset,) = service.guard.offsets(service.judge.p_yes_matrix, [text], vector)
        users = np.array([service.user_index(u) for u in added.item.users])
        expected, _ = centered(service.judge.verdicts(users, text, vector[0])[0], offset, service.judge.threshold)
        np.testing.assert_allclose(added.item.p_yes, expected, atol=1e-4)
    finally:
        service.close()
    again = OnlineService(fresh(run))  # the saved guard is loaded, not fitted again
    try:
        assert guard_file.stat().st_mtime_ns == fitted and again.guard.users == service.guard.users
    finally:
        again.close()
