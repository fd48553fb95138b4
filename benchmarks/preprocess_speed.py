"""Throughput and peak memory of processing/preprocess.py at several data sizes.

    python benchmarks/preprocess_speed.py [--sizes 10000 100000 1000000 --seed 42]

For each size: generate the raw tables (timed apart, not counted), then run preprocess.py as a child
process, as a container would, and report policies per second of its wall time (interpreter start
included; the launcher's start is not) and its own peak resident memory (peak_memory.run: not the
benchmark's, which a forked child would inherit). Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import peak_memory
from pipelines.synthetic_data import generate

ROOT = Path(__file__).resolve().parents[1]
PREPROCESS = ROOT / "processing" / "preprocess.py"


def run_preprocess(raw: Path, out: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS in bytes of one preprocess.py child process."""
    inputs = ["--claims", str(raw / "claims.csv"), "--customers", str(raw / "customers.csv")]
    argv = [sys.executable, str(PREPROCESS), *inputs, "--output-dir", str(out), "--event-time", "0"]
    with open(out.parent / "preprocess.log", "w") as log:
        start = time.perf_counter()
        done, peak = peak_memory.run(argv, stdout=log, stderr=log)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"preprocess.py failed ({done.returncode}); see {out.parent / 'preprocess.log'}")
    return seconds, peak


def measure(rows: int, seed: int, work: Path) -> dict:
    raw = work / f"raw-{rows}"
    start = time.perf_counter()
    generate(rows, seed, raw)
    generator_seconds = time.perf_counter() - start
    input_mb = sum(p.stat().st_size for p in raw.iterdir()) / 1e6
    seconds, peak = run_preprocess(raw, work / f"out-{rows}")
    return {
        "rows": rows,
        "input_mb": input_mb,
        "generator_s": generator_seconds,
        "preprocess_s": seconds,
        "rows_per_s": rows / seconds,
        "peak_rss_mb": peak / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    print(f"{'policies':>10}{'input MB':>10}{'generate s':>12}{'preprocess s':>14}{'policies/s':>12}{'peak MiB':>10}")
    with tempfile.TemporaryDirectory(prefix="preprocess-speed-") as work:
        for rows in args.sizes:
            r = measure(rows, args.seed, Path(work))
            print(
                f"{r['rows']:>10}{r['input_mb']:>10.1f}{r['generator_s']:>12.2f}{r['preprocess_s']:>14.2f}"
                f"{r['rows_per_s']:>12.0f}{r['peak_rss_mb']:>10.0f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
