"""Load test of ``coldllm serve`` over loopback: recommendation latency, and how soon a new item is served.

Starts the service on a finished run as a real uvicorn process, then, from client threads that
each keep one connection open:

* recommendation latency (p50/p99) at 1, 20 and 100 concurrent clients, each client asking for
  random users' top 20 (``only`` cycling through all, cold, warm) for a fixed number of requests
  or until the time budget of that level runs out;
* the time from ``POST /items`` until the item shows up among the cold recommendations of a user
  the simulation accepted (the POST's answer, then reads), over a few new items whose texts are
  titles of the run's cold items (the kind of text the catalogue receives).

Writes ``results/serve.json``. Bounded: at most ``--requests`` per level and ``--seconds`` per
level; the service's start (it loads the filter towers the run's filter stage saved) is outside the
measured figures and recorded separately (``service_start_seconds``), and so is
``run_candidates_agreement``: the share of the run's own candidate pairs (item, user, rank) that
the service's loaded filter gives again for the run's cold items.

``--writers N`` is the write-queue check instead: N concurrent writers each POST new items (with
a write key, the service started with one), and it checks that every acknowledged item (201) is
stored and found, none twice, every refused one (503) absent, and that no write waited longer
than the service's ``--write-timeout`` (the ``queued_seconds`` of each 201; the whole round trip
of each 503). It exits 1 when a check fails and writes ``results/serve_writers.json``.

    python benchmarks/serve_load.py --run runs/bench-citeulike-mf-coldllm-cosine
    python benchmarks/serve_load.py --run runs/bench-citeulike-mf-coldllm-cosine --writers 100
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from coldllm.layout import RunLayout
from coldllm.utils import git_commit, now_iso, write_json

BENCH_KEY = "bench-" + "0123456789abcdef" * 2  # a write key for the service this script starts

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Connection:
    """One keep-alive HTTP/1.1 connection (the way a real client pool talks to the service)."""

    def __init__(self, port: int, key: str | None = None):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.key = key

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if payload is not None else {}
        if self.key:
            headers["authorization"] = f"Bearer {self.key}"
        self.conn.request(method, path, body=payload, headers=headers)
        response = self.conn.getresponse()
        self.last_headers = dict(response.getheaders())
        return response.status, json.loads(response.read())


def start_server(run: Path, port: int, log: Path, wait: float, options: list[str] = (),
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen, float]:
    script = Path(sys.executable).with_name("coldllm")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "coldllm.cli"]
    handle = log.open("ab")
    start = time.perf_counter()
    proc = subprocess.Popen([*command, "serve", str(run), "--port", str(port), *options], stdout=handle,
                            stderr=handle, env={**os.environ, "TQDM_DISABLE": "1", **(env or {})})
    deadline = start + wait
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited with {proc.returncode}; see {log}")
        try:
            if Connection(port).call("GET", "/health")[0] == 200:
                return proc, time.perf_counter() - start
        except OSError:
            time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    raise SystemExit(f"the service did not start within {wait:.0f} s; see {log}")


def run_threads(target, n: int) -> float:
    """``target(i)`` for i < n, each in its own thread, all at once; the wall seconds until all end."""
    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    wall = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - wall


def latency_level(port: int, clients: int, users: list[str], requests: int, seconds: float) -> dict:
    """p50/p99 of recommendation requests with ``clients`` concurrent keep-alive clients."""
    per_client = max(1, requests // clients)
    deadline = time.perf_counter() + seconds
    samples: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    barrier = threading.Barrier(clients)

    def client(n: int) -> None:
        rng = random.Random(n)
        conn = Connection(port)
        conn.call("GET", "/health")  # connect before the clock starts
        barrier.wait()
        for i in range(per_client):
            if time.perf_counter() > deadline:
                break
            only = ("all", "cold", "warm")[i % 3]
            path = f"/users/{rng.choice(users)}/recommendations?k=20&only={only}"
            start = time.perf_counter()
            status, _ = conn.call("GET", path)
            samples[n].append(time.perf_counter() - start)
            errors[n] += status != 200

    wall = run_threads(client, clients)
    ms = np.array([s for c in samples for s in c]) * 1000
    return {"clients": clients, "requests": int(len(ms)), "errors": int(sum(errors)),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2), "throughput_rps": round(len(ms) / wall, 1)}


def new_item_latency(port: int, titles: list[str], tag: str) -> list[dict]:
    """Seconds from sending ``POST /items`` until the item is in an accepted user's top 100 cold items."""
    conn = Connection(port, BENCH_KEY)  # the service runs with keys on: a write needs this one
    out = []
    for n, title in enumerate(titles):
        item_id = f"bench-{tag}-{n}"
        start = time.perf_counter()
        status, body = conn.call("POST", "/items", {"id": item_id, "text": title})
        if status != 201:
            raise SystemExit(f"POST /items answered {status}: {body}")
        users = [u["user"] for u in body["simulated_users"]]
        rank = None
        for user in users:  # the first accepted user whose top 100 cold items hold it
            _, recs = conn.call("GET", f"/users/{user}/recommendations?k=100&only=cold")
            ids = [r["item"] for r in recs["items"]]
            if item_id in ids:
                rank = ids.index(item_id) + 1
                break
        seconds = time.perf_counter() - start
        out.append({"id": item_id, "seconds": round(seconds, 4), "funnel_seconds": body["seconds"],
                    "stages": body["stages"], "accepted": len(users), "cold_rank_for_accepted_user": rank})
    return out


def writers_check(port: int, writers: int, per_writer: int, titles: list[str], timeout: float, tag: str) -> dict:
    """``writers`` concurrent clients, each POSTing ``per_writer`` new items; every answer checked."""
    barrier = threading.Barrier(writers)
    answers: list[list[dict]] = [[] for _ in range(writers)]

    def writer(n: int) -> None:
        conn = Connection(port, BENCH_KEY)
        conn.call("GET", "/health")  # connect before the start
        barrier.wait()
        for i in range(per_writer):
            item_id = f"w-{tag}-{n}-{i}"
            start = time.perf_counter()
            try:
                status, body = conn.call("POST", "/items", {"id": item_id, "text": titles[(n + i) % len(titles)]})
            except (OSError, http.client.HTTPException) as err:
                status, body, conn = -1, {"error": type(err).__name__}, Connection(port, BENCH_KEY)
            answers[n].append({"id": item_id, "status": status, "seconds": time.perf_counter() - start,
                               "queued": body.get("queued_seconds") if status == 201 else None,
                               "retry_after": conn.last_headers.get("retry-after") if status == 503 else None})

    before = Connection(port).call("GET", "/health")[1]["online_items"]
    wall = run_threads(writer, writers)
    flat = [a for per in answers for a in per]
    acked = [a for a in flat if a["status"] == 201]
    refused = [a for a in flat if a["status"] == 503]
    reader = Connection(port)
    missing = [a["id"] for a in acked if reader.call("GET", f"/items/{a['id']}")[0] != 200]
    stored_refused = [a["id"] for a in refused if reader.call("GET", f"/items/{a['id']}")[0] != 404]
    after = reader.call("GET", "/health")[1]["online_items"]
    slack = 1.0  # seconds: a 503's round trip is its wait plus the answer's trip back
    checks = {
        "every_acknowledged_item_stored": not missing,
        "none_stored_twice": after - before == len(acked) == len({a["id"] for a in acked}),
        "no_refused_item_stored": not stored_refused,
        "no_write_waited_past_timeout": all(a["queued"] <= timeout for a in acked)
        and all(a["seconds"] <= timeout + slack for a in refused),
        "refusals_carry_retry_after": all(a["retry_after"] for a in refused),
        "only_201_or_503": len(acked) + len(refused) == len(flat),
    }
    return {"writers": writers, "per_writer": per_writer, "write_timeout": timeout, "requests": len(flat),
            "acknowledged": len(acked), "refused_503": len(refused),
            "other": sorted({a["status"] for a in flat} - {201, 503}), "wall_seconds": round(wall, 2),
            "max_queued_seconds": round(max((a["queued"] for a in acked), default=0.0), 4),
            "max_503_seconds": round(max((a["seconds"] for a in refused), default=0.0), 4),
            "online_items_before": before, "online_items_after": after, "checks": checks,
            "passed": all(checks.values()), "missing": missing[:10], "refused_but_stored": stored_refused[:10]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/bench-citeulike-mf-coldllm-cosine", help="A finished run folder.")
    parser.add_argument("--requests", type=int, default=2000, help="Most recommendation requests per level.")
    parser.add_argument("--seconds", type=float, default=60, help="Most seconds per concurrency level.")
    parser.add_argument("--new-items", type=int, default=5, help="New items whose time to be served is measured.")
    parser.add_argument("--start-timeout", type=float, default=1200, help="Most seconds to wait for the start.")
    parser.add_argument("--writers", type=int, default=0, help="Run the write-queue check with this many writers.")
    parser.add_argument("--per-writer", type=int, default=2, help="New items each writer POSTs.")
    parser.add_argument("--write-timeout", type=float, default=10.0, help="The service's --write-timeout.")
    parser.add_argument("--write-queue", type=int, default=32, help="The service's --write-queue.")
    parser.add_argument("--out", default=None, help="Default: results/serve.json (serve_writers.json with --writers).")
    args = parser.parse_args()
    run = Path(args.run)
    manifest = json.loads(RunLayout(run).manifest.read_text())
    port = free_port()
    log = ROOT / "logs" / "serve_load_server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if args.writers:
        return main_writers(args, run, manifest, port, log)
    args.out = args.out or str(ROOT / "results" / "serve.json")
    # keys on, as on a network: writes need the write key, reads stay open (the service's default)
    proc, startup = start_server(run, port, log, args.start_timeout, env={"COLDLLM_API_KEYS": f"write:{BENCH_KEY}"})
    try:
        health = Connection(port).call("GET", "/health")[1]
        users, titles = sample_inputs(run, manifest, args.new_items)
        levels = {c: latency_level(port, c, users, args.requests, args.seconds) for c in (1, 20, 100)}
        fresh = new_item_latency(port, titles, tag=str(int(time.time())))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    times = [f["seconds"] for f in fresh]
    agreement = run_candidates_agreement(run)
    result = {
        "p50_ms_1_client": levels[1]["p50_ms"], "p99_ms_1_client": levels[1]["p99_ms"],
        "p50_ms_20_clients": levels[20]["p50_ms"], "p99_ms_20_clients": levels[20]["p99_ms"],
        "p50_ms_100_clients": levels[100]["p50_ms"], "p99_ms_100_clients": levels[100]["p99_ms"],
        "new_item_seconds": round(float(np.median(times)), 4), "new_item_seconds_max": round(max(times), 4),
        "levels": list(levels.values()), "new_items": fresh,
        "service_start_seconds": round(startup, 2), "served": health, "run_candidates_agreement": agreement,
        "run": run.name, "run_commit": manifest.get("commit"), "commit": git_commit(ROOT), "date": now_iso(),
        "machine": machine(), "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
        "client": "http.client keep-alive connections, one thread per client, in one process beside the service",
        "keys": "on: writes with a write key, reads open",
    }
    write_json(Path(args.out), result)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (list, dict))}, indent=2))


def main_writers(args, run: Path, manifest: dict, port: int, log: Path) -> None:
    options = ["--write-timeout", str(args.write_timeout), "--write-queue", str(args.write_queue)]
    proc, startup = start_server(run, port, log, args.start_timeout, options,
                                 env={"COLDLLM_API_KEYS": f"write:{BENCH_KEY}"})
    try:
        _, titles = sample_inputs(run, manifest, min(50, args.writers * args.per_writer))
        result = writers_check(port, args.writers, args.per_writer, titles, args.write_timeout, str(int(time.time())))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    result.update({"service_start_seconds": round(startup, 2), "run": run.name, "commit": git_commit(ROOT),
                   "date": now_iso(), "machine": machine(),
                   "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:])})
    write_json(Path(args.out or ROOT / "results" / "serve_writers.json"), result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine",)}, indent=2))
    if not result["passed"]:
        raise SystemExit(1)


def run_candidates_agreement(run: Path) -> float:
    """Share of the run's candidate pairs that the service's filter finds again for the run's own cold
    items (their texts through the service's encoders and the towers it loaded), order included."""
    import pandas as pd

    from coldllm.serve.online import OnlineService

    service = OnlineService(run)
    try:
        data, cold = service.data, service.data.cold_items
        # the text vectors the service holds for the run's items (the run's own cache), else its encoder's
        text = (service.lm_text[cold] if service.lm_text is not None else
                None if service.lm_encoder is None else service.lm_encoder.encode([str(t) for t in data.item_text[cold]]))
        found = service.towers.top_users(service.towers.item_vectors(service.content[cold], text),
                                         service.cfg.filter.k, list(range(len(cold))))
    finally:
        service.close()
    ours = pd.DataFrame([(int(i), int(u), r) for i, (users, _) in zip(cold, found) for r, u in enumerate(users)],
                        columns=["item", "user", "rank"])
    theirs = pd.read_parquet(RunLayout(run).candidates, columns=["item", "user", "rank"])
    return round(len(ours.merge(theirs, on=["item", "user", "rank"])) / max(len(theirs), 1), 6)


def sample_inputs(run: Path, manifest: dict, n: int) -> tuple[list[str], list[str]]:
    """Users to ask for (raw ids) and texts of new items."""
    from coldllm.serve.runs import run_config, run_data

    data = run_data(run, manifest, run_config(run, manifest))
    rng = np.random.default_rng(0)
    users = [str(u) for u in data.user_ids]
    # a new item's text: a cold item's title (the kind of text the catalogue receives)
    picks = rng.choice(data.cold_items, min(n, len(data.cold_items)), replace=False)
    return users, [str(data.item_text[i]) for i in picks]


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}


if __name__ == "__main__":
    main()
