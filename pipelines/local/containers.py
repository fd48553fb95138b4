"""The Docker engine and the project image that local runs need."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from pipelines.config import ROOT

ENSURE_ENGINE = ROOT / "docker" / "ensure_engine.sh"
NETWORK = "sagemaker-local"
"""The network SageMaker local mode's compose files put every job on."""


class LocalRunError(RuntimeError):
    """The local run cannot start or did not succeed; the message says why in one line."""


def _docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_docker(install: bool, say: Callable[[str], None] = print) -> None:
    """A reachable Docker engine; on a Debian host as root, install and start one when allowed."""
    if _docker_answers():
        return
    may_install = install and os.geteuid() == 0 and Path("/etc/debian_version").exists()
    if not may_install:
        raise LocalRunError(
            "no Docker engine is reachable (`docker info` failed): start Docker, "
            "or run as root on a Debian host to let `make local` install and start it"
        )
    say("no Docker engine is reachable: installing and starting one (docker/ensure_engine.sh)")
    if subprocess.run(["bash", str(ENSURE_ENGINE)]).returncode != 0:
        raise LocalRunError("could not start a Docker engine (see docker/ensure_engine.sh's message above)")


def ensure_image(image: str, say: Callable[[str], None] = print) -> None:
    """The project image, built (`make image`) when missing."""
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0:
        return
    say(f"image {image} is missing: building it (make image, a few minutes the first time)")
    if subprocess.run(["make", "-C", str(ROOT), "image", f"IMAGE={image}"]).returncode != 0:
        raise LocalRunError(f"could not build the image {image} (see make image's output above)")


def ensure_network() -> None:
    """The jobs' network, made once up front: training jobs that start at once would race to create it."""
    if subprocess.run(["docker", "network", "inspect", NETWORK], capture_output=True).returncode != 0:
        subprocess.run(["docker", "network", "create", NETWORK], capture_output=True, check=False)


def network_gateway() -> str:
    """The host's address on the jobs' network: where a job reaches a server of the local run."""
    ensure_network()
    found = subprocess.run(
        ["docker", "network", "inspect", NETWORK, "-f", "{{range .IPAM.Config}}{{.Gateway}} {{end}}"],
        capture_output=True,
        text=True,
    )
    gateways = [g for g in found.stdout.split() if "." in g]
    if found.returncode != 0 or not gateways:
        raise LocalRunError(
            f"docker network {NETWORK} has no IPv4 gateway ({found.stderr.strip() or found.stdout.strip()})"
        )
    return gateways[0]
