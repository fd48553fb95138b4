"""Write a step's output files all or nothing, so a failed or killed run leaves the previous outputs whole.

Shared by every step script (training/ and evaluation/ hold a symbolic link to this file; the pipeline
stages its content beside each script). It depends on the standard library only.

Each file is written to a hidden temporary file in its own directory (`.partial.<name>`: the extension is
kept, as some writers pick a format by it), so that moving it into place is an atomic rename on the same
file system, even where an output directory is a mount point (SageMaker local mode mounts each
processing output). Only when every file is written are they
moved into place. A failure removes the temporary files and leaves existing files untouched; files
the step does not write are never deleted (consumers read outputs by name, not by globbing).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

PARTIAL = ".partial."

Writer = Callable[[Path], None]
"""Writes one output's content to the path it is given."""


class OutputError(OSError):
    """An output cannot be written; the message names the path and the reason."""


def _partial(path: Path) -> Path:
    return path.with_name(f"{PARTIAL}{path.name}")


def check_directory(path: Path, what: str = "output directory") -> None:
    """Fail early, with the path named, when `path` cannot become a writable directory."""
    for parent in (path, *path.parents):
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}: cannot create the {what}: {parent} is a file, not a directory")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise OutputError(f"{path}: cannot create the {what}: {parent} is not writable")
            return


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


def write_all(outputs: Mapping[Path, Writer], stale: Iterable[Path] = ()) -> None:
    """Write every output through its writer, then move them all into place (see the module docstring); then remove
    the `stale` files, those a previous run may have written that this run's outputs do not include (so the folder
    holds one run's outputs, never a mix).

    Raises OutputError (one line: the path and the reason) when a directory cannot be made, a write fails
    (read-only file system, disk full) or a writer raises OSError; any other exception propagates after
    the temporary files are removed.
    """
    written: list[Path] = []
    try:
        for path, writer in outputs.items():
            partial = _partial(path)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                written.append(partial)
                writer(partial)
            except OSError as error:
                raise OutputError(f"{path}: cannot write the output ({_reason(error)})") from None
        for path in outputs:
            try:
                os.replace(_partial(path), path)
            except OSError as error:
                raise OutputError(f"{path}: cannot move the output into place ({_reason(error)})") from None
        for path in stale:
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                raise OutputError(f"{path}: cannot remove the previous run's file ({_reason(error)})") from None
    finally:
        for partial in written:
            try:
                partial.unlink(missing_ok=True)
            except OSError:
                pass


def text_writer(content: str) -> Writer:
    """A writer of UTF-8 text."""
    return lambda path: path.write_text(content, encoding="utf-8")


def bytes_writer(content: bytes) -> Writer:
    """A writer of bytes."""
    return lambda path: path.write_bytes(content)
