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
level; the service's start (which fits the run's filter towers once, then reads them from
``RUN/serve/``) is outside the measured figures and recorded separately.

    python benchmarks/serve_load.py --run runs/bench-citeulike-mf-coldllm-cosine
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

from coldllm.utils import git_commit, now_iso, write_json

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Connection:
    """One keep-alive HTTP/1.1 connection (the way a real client pool talks to the service)."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if payload is not None else {}
        self.conn.request(method, path, body=payload, headers=headers)
        response = self.conn.getresponse()
        return response.status, json.loads(response.read())


def start_server(run: Path, port: int, log: Path, wait: float) -> tuple[subprocess.Popen, float]:
    script = Path(sys.executable).with_name("coldllm")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "coldllm.cli"]
    handle = log.open("ab")
    start = time.perf_counter()
    proc = subprocess.Popen([*command, "serve", str(run), "--port", str(port)], stdout=handle, stderr=handle,
                            env={**os.environ, "TQDM_DISABLE": "1"})
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

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    wall = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - wall
    ms = np.array([s for c in samples for s in c]) * 1000
    return {"clients": clients, "requests": int(len(ms)), "errors": int(sum(errors)),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2), "throughput_rps": round(len(ms) / wall, 1)}


def new_item_latency(port: int, titles: list[str], tag: str) -> list[dict]:
    """Seconds from sending ``POST /items`` until the item is in an accepted user's top 100 cold items."""
    conn = Connection(port)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/bench-citeulike-mf-coldllm-cosine", help="A finished run folder.")
    parser.add_argument("--requests", type=int, default=2000, help="Most recommendation requests per level.")
    parser.add_argument("--seconds", type=float, default=60, help="Most seconds per concurrency level.")
    parser.add_argument("--new-items", type=int, default=5, help="New items whose time to be served is measured.")
    parser.add_argument("--start-timeout", type=float, default=1200, help="Most seconds to wait for the start.")
    parser.add_argument("--out", default=str(ROOT / "results" / "serve.json"))
    args = parser.parse_args()
    run = Path(args.run)
    manifest = json.loads((run / "manifest.json").read_text())
    port = free_port()
    log = ROOT / "logs" / "serve_load_server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc, startup = start_server(run, port, log, args.start_timeout)
    try:
        health = Connection(port).call("GET", "/health")[1]
        users, titles = sample_inputs(run, manifest, args.new_items)
        levels = {c: latency_level(port, c, users, args.requests, args.seconds) for c in (1, 20, 100)}
        fresh = new_item_latency(port, titles, tag=str(int(time.time())))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    times = [f["seconds"] for f in fresh]
    result = {
        "p50_ms_1_client": levels[1]["p50_ms"], "p99_ms_1_client": levels[1]["p99_ms"],
        "p50_ms_20_clients": levels[20]["p50_ms"], "p99_ms_20_clients": levels[20]["p99_ms"],
        "p50_ms_100_clients": levels[100]["p50_ms"], "p99_ms_100_clients": levels[100]["p99_ms"],
        "new_item_seconds": round(float(np.median(times)), 4), "new_item_seconds_max": round(max(times), 4),
        "levels": list(levels.values()), "new_items": fresh,
        "service_start_seconds": round(startup, 2), "served": health,
        "run": run.name, "run_commit": manifest.get("commit"), "commit": git_commit(ROOT), "date": now_iso(),
        "machine": machine(), "command": "python benchmarks/serve_load.py " + " ".join(sys.argv[1:]),
        "client": "http.client keep-alive connections, one thread per client, in one process beside the service",
    }
    write_json(Path(args.out), result)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (list, dict))}, indent=2))


def sample_inputs(run: Path, manifest: dict, n: int) -> tuple[list[str], list[str]]:
    """Users to ask for (raw ids) and texts of new items."""
    from coldllm.data import load_dataset
    from coldllm.serve.runs import run_config

    data = load_dataset(run_config(run, manifest).data)
    rng = np.random.default_rng(0)
    users = [str(u) for u in data.user_ids]
    # a new item's text: a cold item's title (the kind of text the catalogue receives)
    picks = rng.choice(data.cold_items, n, replace=False)
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
