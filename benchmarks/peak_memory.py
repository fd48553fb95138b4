"""Peak resident memory of a child process, its own and nothing else.

Linux keeps a process's ru_maxrss across exec, and a child that Python forks (or vforks) from a big
process starts with that process's high-water mark: a child of a 900 MiB test runner reports at least
900 MiB, however little it uses. So the command runs under a small launcher interpreter; the launcher
forks it and reports its peak from os.wait4.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(str(usage.ru_maxrss * 1024))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def run(argv: list[str], **popen: object) -> tuple[subprocess.CompletedProcess, int]:
    """Run `argv` to its end (subprocess.run's keywords) -> (the completed process, its peak RSS in bytes)."""
    with tempfile.NamedTemporaryFile(prefix="peak-rss-") as report:
        done = subprocess.run([sys.executable, "-c", LAUNCHER, report.name, *argv], **popen)
        return done, int(Path(report.name).read_text() or 0)


if __name__ == "__main__":  # python benchmarks/peak_memory.py COMMAND...: its peak RSS in MiB on stderr
    completed, peak = run(sys.argv[1:])
    print(f"peak RSS {peak / 2**20:.0f} MiB", file=sys.stderr)
    sys.exit(completed.returncode)
