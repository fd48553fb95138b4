"""The data version of an execution: a fingerprint of the raw input files' contents.

Runs in a SageMaker processing container (defaults under /opt/ml/processing) or bare:

    python processing/data_version.py --input claims=data/claims.csv --input customers=data/customers.csv \
        --output-dir out/version

Writes <output-dir>/version.json: {"version": <16 hex>, "inputs": {<name>: [{"file", "bytes", "sha256"}]}}.
The version is a SHA-256 over every input's name and its files' relative paths and contents, so it changes
exactly when the data does. The pipeline runs this step uncached and passes the version to Preprocess as an
argument: step caching keys on a step's arguments, not on the contents behind an S3 URI, so without it new
data at the same URI would be a cache hit. Preprocess checks its own inputs against the version.

A missing input exits with code 2; an output that cannot be written (read-only, disk full) exits with code 1
and leaves the previous version.json whole.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import atomic_outputs

PROCESSING = Path("/opt/ml/processing")
CHUNK = 1 << 20


class InputError(ValueError):
    """An input that cannot be read (exit code 2)."""


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def describe(inputs: dict[str, Path]) -> dict:
    """{"version", "inputs"} for named inputs, each a file or a folder of files (as a processing input is)."""
    described: dict[str, list[dict]] = {}
    for name, root in sorted(inputs.items()):
        if root.is_file():
            files = [(root.name, root)]
        elif root.is_dir():
            files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
        else:
            raise InputError(f"{root}: input '{name}' not found")
        if not files:
            raise InputError(f"{root}: input '{name}' holds no file")
        described[name] = [
            {"file": rel, "bytes": path.stat().st_size, "sha256": file_digest(path)} for rel, path in files
        ]
    lines = [f"{name}\t{f['file']}\t{f['sha256']}\n" for name, files in described.items() for f in files]
    return {"version": hashlib.sha256("".join(lines).encode()).hexdigest()[:16], "inputs": described}


def named_path(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=PATH")
    return name, Path(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--input",
        type=named_path,
        action="append",
        help="NAME=PATH, repeated (default: claims and customers under /opt/ml/processing/input)",
    )
    parser.add_argument("--output-dir", type=Path, default=PROCESSING / "output" / "version")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    inputs = dict(args.input or [(name, PROCESSING / "input" / name) for name in ("claims", "customers")])
    try:
        atomic_outputs.check_directory(args.output_dir)
        document = describe(inputs)
        output = atomic_outputs.text_writer(json.dumps(document, indent=2) + "\n")
        atomic_outputs.write_all({args.output_dir / "version.json": output})
    except InputError as error:
        print(f"data_version: error: {error}", file=sys.stderr)
        return 2
    except atomic_outputs.OutputError as error:
        print(f"data_version: error: {error}", file=sys.stderr)
        return 1
    print(f"data version {document['version']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
