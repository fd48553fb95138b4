"""Run serve.py from this repository as a child process on loopback, and send it requests.

For the tests and the benchmark, not for the model artifact (train.py copies serve.py, explain.py and features.py only).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
CHUNK = 64 * 1024
"""Bytes per chunk of a chunked body."""


class Reply(NamedTuple):
    status: int
    content_type: str
    text: str

    def json(self) -> dict:
        return json.loads(self.text)


def call(
    address: tuple[str, int],
    body: bytes | str | None = None,
    content_type: str | None = None,
    accept: str | None = None,
    method: str = "POST",
    path: str = "/invocations",
    chunked: bool = False,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One HTTP request on a new connection; `chunked`: the body with Transfer-Encoding: chunked (no Content-Length);
    `headers`: more request headers."""
    headers = {
        **{name: value for name, value in (("Content-Type", content_type), ("Accept", accept)) if value},
        **(headers or {}),
    }
    if chunked:
        data = body.encode() if isinstance(body, str) else body or b""
        body = (data[start : start + CHUNK] for start in range(0, len(data), CHUNK))
    connection = http.client.HTTPConnection(*address, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return Reply(response.status, response.getheader("Content-Type", ""), response.read().decode())
    finally:
        connection.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


@contextmanager
def running(
    model_dir: Path, *args: str, script: Path | None = None, env: dict[str, str] | None = None, startup_s: float = 60
) -> Iterator[tuple[str, int]]:
    """serve.py (as its main() picks the server) on 127.0.0.1 and a free port; yields (host, port) once /ping
    answers 200.

    `script`: a serve.py with its features.py beside it (a model's code/), else this repository's (with
    processing/ on PYTHONPATH). The server's output goes to this process's stderr."""
    address = (HOST, free_port())
    child_env = {**os.environ, **(env or {})}
    if script is None:
        script = ROOT / "serving/serve.py"
        child_env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT / "processing"), os.environ.get("PYTHONPATH")])
        )
    command = [sys.executable, str(script), "--model-dir", str(model_dir), "--host", HOST, "--port", str(address[1])]
    child = subprocess.Popen([*command, *args], env=child_env)
    try:
        wait_until_ready(child, address, startup_s)
        yield address
    finally:
        child.terminate()
        child.wait(timeout=60)


def wait_until_ready(child: subprocess.Popen, address: tuple[str, int], startup_s: float = 60) -> None:
    """Wait until the server that `child` started answers /ping with 200; RuntimeError if it exits or is late."""
    deadline = time.monotonic() + startup_s
    while not _ready(address):
        if child.poll() is not None:
            raise RuntimeError(f"the server exited with code {child.returncode} before answering /ping")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not answer /ping within {startup_s} s")
        time.sleep(0.1)


def _ready(address: tuple[str, int]) -> bool:
    try:
        return call(address, method="GET", path="/ping").status == 200
    except OSError:
        return False


@contextmanager
def stalled_connections(address: tuple[str, int], count: int = 2) -> Iterator[None]:
    """`count` pairs of clients that stall: one connected and silent, one stopped halfway through its body."""
    head = b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: 1000\r\n\r\n0,"
    connections = []
    try:
        for _ in range(count):
            connections.append(socket.create_connection(address))
            connections.append(socket.create_connection(address))
            connections[-1].sendall(head)
        yield
    finally:
        for connection in connections:
            connection.close()
