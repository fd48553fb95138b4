"""Time and peak memory of each step script, bare, as data grows: preprocess, train, evaluate.

    python benchmarks/step_scaling.py [--sizes 100000 1000000 --seed 42]

For each size: generate the raw tables (not counted), then run processing/preprocess.py, training/train.py
(default hyperparameters) and evaluation/evaluate.py one after the other as child processes, as their
containers would, each on the previous one's outputs. Prints each step's wall seconds (interpreter start
included) and its own peak resident memory (peak_memory.run), for docs/scaling.md. Asserts nothing.
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


def steps(raw: Path, work: Path) -> dict[str, list[str]]:
    """Each step's command line, reading the previous step's outputs under `work`."""
    splits, model = work / "splits", work / "model"
    return {
        "preprocess": [
            *("processing/preprocess.py", "--claims", str(raw / "claims.csv")),
            *("--customers", str(raw / "customers.csv"), "--output-dir", str(splits), "--event-time", "0"),
        ],
        "train": [
            *("training/train.py", "--train", str(splits / "train"), "--validation", str(splits / "validation")),
            *("--manifest", str(splits / "manifest"), "--model-dir", str(model), "--verbose", "0"),
        ],
        "evaluate": [
            *("evaluation/evaluate.py", "--model", str(model), "--test", str(splits / "test")),
            *("--output-dir", str(work / "evaluation")),
        ],
    }


def measure(rows: int, seed: int, work: Path) -> list[tuple[str, float, int]]:
    """(step, wall seconds, peak RSS bytes) of each step on `rows` generated policies."""
    raw = work / "raw"
    generate(rows, seed, raw)
    figures = []
    for name, (script, *args) in steps(raw, work).items():
        with open(work / f"{name}.log", "w") as log:
            start = time.perf_counter()
            done, peak = peak_memory.run([sys.executable, str(ROOT / script), *args], stdout=log, stderr=log)
            seconds = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"{script} failed ({done.returncode}):\n{(work / f'{name}.log').read_text()[-2000:]}")
        figures.append((name, seconds, peak))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    print(f"{'policies':>10}  {'step':<11}{'seconds':>9}{'peak MiB':>10}")
    for rows in args.sizes:
        with tempfile.TemporaryDirectory(prefix="step-scaling-") as work:
            for name, seconds, peak in measure(rows, args.seed, Path(work)):
                print(f"{rows:>10}  {name:<11}{seconds:>9.1f}{peak / 2**20:>10.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
