"""What a local run prints: container output (kept per job for its executor) and each step's progress."""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

SCRIPT_ERROR = re.compile(r"(\w+: error: .*|bias check failed: .*)$")
"""The one-line reasons the step scripts print when they fail."""


class ContainerOutput(io.TextIOBase):
    """Stands in for stdout while the SDK streams container output (it writes each line from the thread that
    runs the job): passes every line on, and keeps the lines written on a thread for each capture open on
    it (a step's, and inside it a training job's, whose name prefixes its lines)."""

    def __init__(self, out: TextIO):
        self.out = out
        self.lock = threading.Lock()
        self.local = threading.local()

    @contextmanager
    def capture(self, prefix: str = "") -> Iterator[list[str]]:
        """The lines this thread writes while the block runs."""
        lines: list[str] = []
        stack = self.local.__dict__.setdefault("captures", [])
        stack.append((lines, prefix))
        try:
            yield lines
        finally:
            stack.pop()  # captures on a thread nest

    def write(self, text: str) -> int:
        stack = getattr(self.local, "captures", [])
        for lines, _ in stack:
            lines.extend(text.splitlines())
        prefix = stack[-1][1] if stack else ""
        with self.lock:
            self.out.write("".join(f"{prefix}{line}\n" for line in text.splitlines()) if prefix else text)
        return len(text)

    def flush(self) -> None:
        self.out.flush()


def script_error(lines: list[str]) -> str:
    """The last one-line reason a step script printed, or ''."""
    for line in reversed(lines):
        found = SCRIPT_ERROR.search(line.rstrip())
        if found:
            return found.group(1)
    return ""


class StepProgress(logging.Handler):
    """Prints each step's start, end and duration from the SDK's executor log, and what the project's
    executors say about a step (logger pipelines.local.steps, the step's name as `step`)."""

    def __init__(self, say: Callable[[str], None], fail_step: str):
        super().__init__(logging.INFO)
        self.say = say
        self.fail_step = fail_step
        self.started: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "step"):
            self.say(f"[{record.step}] {record.getMessage()}")
            return
        message, args = record.msg, record.args or ()
        if not args or not isinstance(message, str):
            return
        step = args[0]
        if message.startswith("Starting pipeline step"):
            self.started[step] = time.monotonic()
            self.say(f"[{step}] started")
        elif message.startswith("Pipeline step '%s' FAILED"):
            self.say(f"[{step}] FAILED ({self._seconds(step):.1f} s): {args[1] if len(args) > 1 else ''}")
        elif message.startswith("Pipeline step '%s' SUCCEEDED") and step != self.fail_step:
            # the SDK logs its Fail step as succeeded, then as failed
            self.say(f"[{step}] succeeded ({self._seconds(step):.1f} s)")

    def _seconds(self, step: str) -> float:
        return time.monotonic() - self.started.get(step, time.monotonic())


step_log = logging.getLogger("pipelines.local.steps")


def say(step: str, message: str, *args) -> None:
    """A line in the run's progress about one step."""
    step_log.info(message, *args, extra={"step": step})
