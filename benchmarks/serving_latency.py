"""Latency and throughput of serving/serve.py over real HTTP on loopback, one record per request.

    python benchmarks/serving_latency.py [--rows 5000 --requests 2000 --clients 4 --max-seconds 20 --workers N
                                          --batch 1000]

Generates raw data, runs preprocess.py and train.py on it as child processes, and starts serve.py as its own
process on 127.0.0.1 (gunicorn's gevent workers when installed, else werkzeug's threaded server). Then, for each
payload (a text/csv feature row of the test split; an application/json raw claim + customer record), it sends
single-record requests, each on a new connection, first from one client, then from --clients threads at once,
up to --requests per run or --max-seconds, and prints the p50 and p99 latency and the requests per second.
Then the same for batches: --batch rows or records in one request (`csv x1000`, `json x1000`).
Every reply must be a 200; asserts nothing else.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import itertools
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.synthetic_data import generate

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "serving"), str(ROOT / "processing")]

from harness import call, running  # noqa: E402
from serve import missing_server_packages  # noqa: E402

WARMUP = 50
PATH = "/invocations"


def train_model(rows: int, seed: int, work: Path) -> Path:
    """Generated data -> preprocess.py -> train.py, as child processes; returns the model directory."""
    raw, splits, model = work / "raw", work / "splits", work / "model"
    generate(rows, seed, raw)
    steps = [
        ["processing/preprocess.py", "--claims", str(raw / "claims.csv"), "--customers", str(raw / "customers.csv")],
        ["training/train.py", "--train", str(splits / "train"), "--validation", str(splits / "validation")],
    ]
    steps[0] += ["--output-dir", str(splits), "--event-time", "0"]
    steps[1] += ["--manifest", str(splits / "manifest"), "--model-dir", str(model), "--verbose", "0"]
    for script, *args in steps:
        done = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{script} failed ({done.returncode}):\n{done.stderr}")
    return model


def payloads(work: Path, count: int, batch: int) -> dict[str, tuple[str, list[str], str]]:
    """{name: (content type, bodies, path)}: test-split feature rows and raw records of the same policies as JSON,
    one per body (also with 3 reasons each: ?explain=3), then `batch` of them (cycled) in one body."""
    test = pd.read_csv(work / "splits/headered/test.csv", dtype=str, keep_default_na=False).head(count)
    features = test.columns[2:]  # policy_id, fraud, then the features in order
    rows = [",".join(values) for values in test[features].itertuples(index=False)]
    read = {"dtype": str, "keep_default_na": False}
    claims = pd.read_csv(work / "raw/claims.csv", **read).drop(columns="fraud")
    raw = claims.merge(pd.read_csv(work / "raw/customers.csv", **read), on="policy_id")
    records = raw.set_index("policy_id").loc[test["policy_id"]].reset_index()
    records = records.to_json(orient="records", lines=True).splitlines()

    def batched(bodies: list[str]) -> list[str]:
        return list(itertools.islice(itertools.cycle(bodies), batch))

    return {
        "csv": ("text/csv", rows, PATH),
        "json": ("application/json", records, PATH),
        "json explain=3": ("application/json", records, f"{PATH}?explain=3"),
        f"csv x{batch}": ("text/csv", ["\n".join(batched(rows))], PATH),
        f"json x{batch}": ("application/json", [f"[{','.join(batched(records))}]"], PATH),
    }


def load(
    address: tuple[str, int],
    content_type: str,
    bodies: list[str],
    path: str,
    requests: int,
    clients: int,
    limit_s: float,
):
    """Send `requests` requests (or stop after `limit_s`) from `clients` threads; (latencies in s, wall s)."""
    work = itertools.islice(itertools.cycle(bodies), requests)
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    deadline = time.monotonic() + limit_s

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                body = next(work, None)
            if body is None:
                return
            start = time.perf_counter()
            reply = call(address, body, content_type, path=path)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                if reply.status != 200:
                    failures.append(f"{reply.status}: {reply.text}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if failures:
        sys.exit(f"{len(failures)} request(s) failed, the first: {failures[0]}")
    return np.array(latencies), wall


def server_name(workers: int) -> str:
    missing = missing_server_packages()
    if missing:
        return f"werkzeug threaded server ({', '.join(missing)} not installed), 1 process"
    return f"gunicorn {importlib.metadata.version('gunicorn')}, {workers} gevent worker(s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000, help="policies to generate and train on")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--requests", type=int, default=2_000, help="requests per run, at most")
    parser.add_argument("--clients", type=int, default=4, help="client threads of the concurrent runs")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="time limit of each run")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="gunicorn workers")
    parser.add_argument("--batch", type=int, default=1_000, help="rows or records per request of the batch runs")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="serving-latency-") as tmp:
        work = Path(tmp)
        model = train_model(args.rows, args.seed, work)
        bodies = payloads(work, 200, args.batch)
        with running(model, "--workers", str(args.workers), "--threshold", "0.5") as address:
            print(f"server: {server_name(args.workers)}; {os.cpu_count()} CPUs; loopback, a new connection each")
            print(f"{'payload':<16}{'clients':>8}{'requests':>10}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}")
            for name, (content_type, samples, path) in bodies.items():
                load(address, content_type, samples, path, WARMUP, 1, args.max_seconds)
                for clients in (1, args.clients):
                    latencies, wall = load(
                        address, content_type, samples, path, args.requests, clients, args.max_seconds
                    )
                    p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
                    print(
                        f"{name:<16}{clients:>8}{len(latencies):>10}{p50:>9.2f}{p99:>9.2f}{len(latencies) / wall:>9.0f}"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
