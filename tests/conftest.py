"""Shared fixtures: one small synthetic data set, preprocessed once, and one model trained on it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


# Runs a step script (argv: marker file, script, its arguments) that hangs where it would move its first
# `.partial.` output into place, once every output is written, after creating the marker file.
HANG_BEFORE_MOVING = """
import os, runpy, sys, time
marker, script = sys.argv[1:3]
replace = os.replace
def hang(source, target, *args, **kwargs):
    if ".partial." in os.fspath(source):
        open(marker, "w").close()
        time.sleep(600)
    return replace(source, target, *args, **kwargs)
os.replace = hang
sys.argv = sys.argv[2:]
sys.path.insert(0, os.path.dirname(script))
runpy.run_path(script, run_name="__main__")
"""


def kill_mid_write(script: str, args: list[str], marker: Path) -> None:
    """Run a step script and SIGKILL it once its outputs are written and none is moved into place yet."""
    argv = [sys.executable, "-c", HANG_BEFORE_MOVING, str(marker), str(ROOT / script), *args]
    process = subprocess.Popen(argv, cwd=ROOT.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.kill()
    process.wait()
    assert marker.exists(), f"{script} ended (code {process.returncode}) without writing a .partial. output"


def outputs(disk: Path) -> dict[str, bytes]:
    """The step outputs on a disk, by relative path (temporary .partial. files and the filler left out)."""
    return {
        p.relative_to(disk).as_posix(): p.read_bytes()
        for p in files_under(disk)
        if not p.name.startswith(".partial.") and p.name != "filler"
    }


def assert_one_line_error(result: subprocess.CompletedProcess, disk: Path, *reasons: str) -> None:
    """Exit code 1 and one error line naming a path on the disk and one of the reasons (no traceback)."""
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert len(errors) == 1 and str(disk) in errors[0], result.stderr
    assert any(reason in errors[0] for reason in reasons), errors[0]


def assert_outputs_survive_faults(script: str, disk: Path, first: list[str], rerun: list[str], marker: Path) -> None:
    """Run `script` with `first` into a small disk, then rerun it with `rerun` (other outputs) (b) with the disk
    full and (c) killed mid-write: the first outputs stay byte-identical. Then a rerun with room replaces them
    all, leaving no temporary file, and (a) a run on the disk made read-only keeps those. Failures are one-line
    errors. (The disk fills first: the temporary files a killed run leaves would make room for the rerun's.)"""
    assert run_script(script, *first).returncode == 0
    before = outputs(disk)
    fill_up(disk)
    assert_one_line_error(run_script(script, *rerun), disk, "No space left on device")
    assert outputs(disk) == before
    (disk / "filler").unlink()
    kill_mid_write(script, rerun, marker)
    assert outputs(disk) == before
    assert run_script(script, *rerun).returncode == 0
    after = outputs(disk)
    assert after.keys() >= before.keys() and after != before
    assert not [p for p in files_under(disk) if p.name.startswith(".partial.")]
    make_read_only(disk)
    assert_one_line_error(run_script(script, *first), disk, "not writable", "Read-only file system")
    assert outputs(disk) == after
