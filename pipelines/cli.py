"""fraud-pipeline: the project's command line.

Every command prints a one-line error and exits non-zero on bad input; no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _data(args: argparse.Namespace) -> int:
    from pipelines.synthetic_data import generate

    claims, customers = generate(args.rows, args.seed, args.out)
    print(f"wrote {args.rows} policies: {claims} and {customers}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fraud-pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="pipeline.yaml to use (default: the project's)")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="write synthetic claims.csv and customers.csv")
    data.add_argument("--rows", type=int, default=20_000, help="number of policies")
    data.add_argument("--seed", type=int, default=42)
    data.add_argument("--out", type=Path, default=Path("data"))
    data.set_defaults(run=_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as error:
        print(f"fraud-pipeline {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
