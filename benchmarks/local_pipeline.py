"""Wall time of the local pipeline per step, against the same step scripts run bare.

    python benchmarks/local_pipeline.py --rows 5000 100000

For each size: generates the data (untimed), runs `fraud-pipeline local`'s graph (containers through
LocalPipelineSession; step times from the execution's step list), then runs the same scripts as
plain processes on the same data, and prints both with their ratio (the container overhead).
Needs a Docker engine and the project image (`make image`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines import config as cfg
from pipelines import local
from pipelines.synthetic_data import generate

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("Preprocess", "FeatureStoreIngest", "DataBiasCheck", "Train", "Evaluate")


def bare_commands(config: cfg.Config, claims: Path, customers: Path, work: Path) -> dict[str, list[str]]:
    """The step scripts as the local graph runs them, with paths on this machine."""
    out, bias = work / "preprocessed", config.bias
    return {
        "Preprocess": ["processing/preprocess.py", "--claims", str(claims), "--customers", str(customers),
                       "--output-dir", str(out)],
        "FeatureStoreIngest": ["processing/ingest.py", "--mode", "offline-files", "--features", str(out / "features"),
                               "--claims-group", config.feature_store.claims_group,
                               "--customers-group", config.feature_store.customers_group,
                               "--output-dir", str(work / "offline-store")],
        "DataBiasCheck": ["processing/bias.py", "--dataset", str(out / "headered" / "train.csv"),
                          "--facet", bias.facet, "--metrics", ",".join(bias.metrics),
                          "--output-dir", str(work / "bias")],
        "Train": ["training/train.py", "--train", str(out / "train"), "--validation", str(out / "validation"),
                  "--manifest", str(out / "manifest"), "--model-dir", str(work / "model"),
                  "--hyperparameters-file", str(work / "none.json"), "--verbose", "0"],
        "Evaluate": ["evaluation/evaluate.py", "--model", str(work / "model"), "--test", str(out / "test"),
                     "--output-dir", str(work / "evaluation")],
    }


def run_bare(config: cfg.Config, claims: Path, customers: Path, work: Path) -> dict[str, float]:
    seconds = {}
    for step, command in bare_commands(config, claims, customers, work).items():
        start = time.perf_counter()
        subprocess.run([sys.executable, *command], cwd=ROOT, check=True, capture_output=True)
        seconds[step] = time.perf_counter() - start
    return seconds


def run_local(config: cfg.Config, claims: Path, customers: Path, work: Path) -> tuple[dict[str, float], float]:
    start = time.perf_counter()
    result = local.run(config, claims, customers, {"MinAuc": "0.5"}, work / "runs", say=lambda line: None)
    total = time.perf_counter() - start
    if result.status != "Succeeded":
        raise SystemExit(f"local run failed: {result.failed_step}: {result.failure}")
    return {s["StepName"]: s["EndTime"] - s["StartTime"] for s in result.steps if "EndTime" in s}, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[5000, 100_000])
    args = parser.parse_args()
    config = cfg.load(environ={})
    local.ensure_docker(install=False)
    local.ensure_image(config.aws.image_uri)
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            claims, customers = generate(rows, 42, work / "raw")
            in_containers, total = run_local(config, claims, customers, work)
            bare = run_bare(config, claims, customers, work)
        print(f"\n{rows:,} policies: local pipeline {total:.1f} s in all (with S3 server, uploads, definition)")
        print(f"{'step':<20}{'container s':>12}{'bare s':>10}{'ratio':>8}")
        for step in STEPS:
            print(f"{step:<20}{in_containers[step]:>12.1f}{bare[step]:>10.1f}{in_containers[step] / bare[step]:>8.1f}")
        print(f"{'sum of steps':<20}{sum(in_containers[s] for s in STEPS):>12.1f}{sum(bare.values()):>10.1f}"
              f"{sum(in_containers[s] for s in STEPS) / sum(bare.values()):>8.1f}")


if __name__ == "__main__":
    main()
