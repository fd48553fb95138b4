"""benchmarks/peak_memory.py: a child's own peak memory, whatever the size of the process that starts it."""

from __future__ import annotations

import sys

import peak_memory

BALLAST_MIB = 512


def test_a_small_child_of_a_big_process_reports_its_own_peak() -> None:
    """A forked child inherits its parent's ru_maxrss on Linux; peak_memory.run must not report it."""
    ballast = bytearray(BALLAST_MIB * 2**20)
    ballast[::4096] = b"\x01" * len(range(0, len(ballast), 4096))  # touch every page: it is resident
    done, peak = peak_memory.run([sys.executable, "-c", "block = bytearray(64 * 2**20)"])
    assert done.returncode == 0
    assert 64 * 2**20 < peak < 200 * 2**20


def test_the_exit_code_and_output_are_the_commands() -> None:
    done, _ = peak_memory.run(
        [sys.executable, "-c", "import sys; print('out'); sys.exit(3)"], capture_output=True, text=True
    )
    assert (done.returncode, done.stdout) == (3, "out\n")


def test_a_missing_command_exits_127() -> None:
    done, _ = peak_memory.run(["/nonexistent/command"], capture_output=True)
    assert done.returncode == 127
