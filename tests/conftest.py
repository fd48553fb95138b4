"""Shared fixtures: one small synthetic data set, preprocessed once, and one model trained on it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import preprocess
from pipelines.synthetic_data import generate

ROOT = Path(__file__).resolve().parents[1]
ROWS = 5_000
SEED = 7


def run_script(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a step script bare, as a shell would (`python <script> ...`), from a neutral directory."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT.parent,
        check=False,
    )


def files_under(directory: Path) -> list[Path]:
    """Every file below a directory (none when it does not exist)."""
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


@pytest.fixture(scope="session")
def raw_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Generated claims.csv and customers.csv ({'claims': path, 'customers': path})."""
    claims, customers = generate(ROWS, SEED, tmp_path_factory.mktemp("raw"))
    return {"claims": claims, "customers": customers}


@pytest.fixture(scope="session")
def splits(raw_data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """preprocess.py's output directory for `raw_data` (event time 0, so it is reproducible)."""
    out = tmp_path_factory.mktemp("preprocessed")
    argv = ["--claims", str(raw_data["claims"]), "--customers", str(raw_data["customers"]), "--output-dir", str(out)]
    assert preprocess.main([*argv, "--event-time", "0"]) == 0
    return out


@pytest.fixture(scope="session")
def trained(splits: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """train.py run bare with SageMaker's environment variables: (model directory, its stdout)."""
    model_dir = tmp_path_factory.mktemp("model")
    env = {
        "SM_CHANNEL_TRAIN": str(splits / "train"),
        "SM_CHANNEL_VALIDATION": str(splits / "validation"),
        "SM_CHANNEL_MANIFEST": str(splits / "manifest"),
        "SM_MODEL_DIR": str(model_dir),
    }
    result = run_script("training/train.py", env=env)
    assert result.returncode == 0, result.stderr
    return model_dir, result.stdout


@pytest.fixture
def small_disk(tmp_path: Path):
    """A factory of small tmpfs mounts, `small_disk(kib) -> Path`, for fault-injection tests: fill one up
    (`fill_up`) or make it read-only (`make_read_only`) between two runs of a step script. Needs root's
    `mount` (CI runs as root); elsewhere the test is skipped with the reason."""
    mounts: list[Path] = []

    def make(kib: int) -> Path:
        path = tmp_path / f"disk{len(mounts)}"
        path.mkdir()
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path)], capture_output=True, text=True
        )
        if mounted.returncode:
            pytest.skip(f"cannot mount a tmpfs for fault injection: {mounted.stderr.strip()}")
        mounts.append(path)
        return path

    yield make
    for path in reversed(mounts):
        subprocess.run(["umount", "--lazy", str(path)], check=False)


def make_read_only(mount: Path) -> None:
    """Remount a `small_disk` read-only (root ignores file modes, so chmod would not do)."""
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)


def fill_up(mount: Path) -> None:
    """Fill a `small_disk` until a write fails with ENOSPC (the filler file stays)."""
    with (mount / "filler").open("wb", buffering=0) as stream:
        try:
            while True:
                stream.write(b"\0" * 4096)
        except OSError:
            pass
