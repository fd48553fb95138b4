"""Wall time of the local pipeline per step: tuning budgets, a cached re-run, and the same scripts run bare.

    python benchmarks/local_pipeline.py --rows 5000 100000 --jobs 1 4

For each size: generates the data (untimed); runs `fraud-pipeline local`'s execution (the cloud graph in
containers) once per MaxTuningJobs value, each in a fresh runs/ folder, then re-runs the last one unchanged
(every cacheable step a cache hit); then runs the step scripts as plain processes on the same data (ingest
against the local Feature Store, one training job with the default hyperparameters). Prints seconds per step,
and the ratio of the first run to the bare scripts (the container, S3 and SDK overhead).
Needs a Docker engine and the project image (`make image`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipelines import config as cfg
from pipelines import local
from pipelines.cli import _quiet_sdk
from pipelines.local.feature_store import FeatureStore, serving
from pipelines.local.runner import feature_store_endpoints
from pipelines.synthetic_data import generate

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("DataVersion", "Preprocess", "FeatureStoreIngest", "DataBiasCheck", "Tune", "Evaluate")


def bare_commands(config: cfg.Config, claims: Path, customers: Path, work: Path) -> dict[str, list[str]]:
    """The step scripts with the arguments the pipeline gives them, on paths of this machine."""
    out, bias, store = work / "preprocessed", config.bias, config.feature_store
    thresholds = ",".join(f"{k}={v}" for k, v in sorted(bias.thresholds.items()))
    return {
        "DataVersion": ["processing/data_version.py", "--input", f"claims={claims}",
                        "--input", f"customers={customers}", "--output-dir", str(work / "version")],
        "Preprocess": ["processing/preprocess.py", "--claims", str(claims), "--customers", str(customers),
                       "--output-dir", str(out)],
        "FeatureStoreIngest": ["processing/ingest.py", "--features", str(out / "features"),
                               "--claims-group", store.claims_group, "--customers-group", store.customers_group,
                               "--role-arn", local.runner.LOCAL_ROLE, "--region", config.aws.region,
                               "--offline-store-uri", "s3://bench/feature-store",
                               "--workers", str(store.ingest_workers)],
        "DataBiasCheck": ["processing/bias.py", "--dataset", str(out / "headered" / "train.csv"), "--facet", bias.facet,
                          "--metrics", ",".join(bias.metrics), "--thresholds", thresholds,
                          "--output-dir", str(work / "bias")],
        "Tune": ["training/train.py", "--train", str(out / "train"), "--validation", str(out / "validation"),
                 "--manifest", str(out / "manifest"), "--model-dir", str(work / "model"),
                 "--hyperparameters-file", str(work / "none.json"), "--verbose", "0"],
        "Evaluate": ["evaluation/evaluate.py", "--model", str(work / "model"), "--test", str(out / "test"),
                     "--output-dir", str(work / "evaluation")],
    }  # fmt: skip


def run_bare(config: cfg.Config, claims: Path, customers: Path, work: Path) -> dict[str, float]:
    seconds = {}
    store = FeatureStore(work / "feature-store.json", config.aws.region)
    with serving(store, "127.0.0.1") as url:
        env = {**os.environ, **feature_store_endpoints(url), "AWS_ACCESS_KEY_ID": "l", "AWS_SECRET_ACCESS_KEY": "l"}
        for step, command in bare_commands(config, claims, customers, work).items():
            start = time.perf_counter()
            subprocess.run([sys.executable, *command], cwd=ROOT, check=True, capture_output=True, env=env)
            seconds[step] = time.perf_counter() - start
    return seconds


def run_local(config: cfg.Config, claims: Path, customers: Path, runs: Path, jobs: int) -> tuple[dict, float]:
    start = time.perf_counter()
    parameters = {"MinAuc": "0", "MaxTuningJobs": str(jobs)}  # timing, not quality: never the fail branch
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the containers' output
        result = local.run(config, claims, customers, parameters, runs, lambda _: None)
    total = time.perf_counter() - start
    if result.status != "Succeeded":
        raise SystemExit(f"local run failed: {result.failed_step}: {result.failure}")
    return {s["StepName"]: s["EndTime"] - s["StartTime"] for s in result.steps if "EndTime" in s}, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[5000, 100_000])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1, 4], help="MaxTuningJobs values")
    args = parser.parse_args()
    _quiet_sdk()
    config = cfg.load(environ={})
    local.ensure_docker(install=False)
    local.ensure_image(config.aws.image_uri)
    print(f"{os.cpu_count()} cores; MaxParallelTuningJobs {config.tuning.max_parallel_jobs}")
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            claims, customers = generate(rows, 42, work / "raw")
            columns, totals = {}, {}
            for jobs in args.jobs:
                runs = work / f"runs-{jobs}"
                columns[f"jobs={jobs}"], totals[f"jobs={jobs}"] = run_local(config, claims, customers, runs, jobs)
            columns["cached"], totals["cached"] = run_local(config, claims, customers, runs, args.jobs[-1])
            columns["bare"] = run_bare(config, claims, customers, work)
        first = f"jobs={args.jobs[0]}"
        print(f"\n{rows:,} policies (seconds; totals include the S3 server, uploads and the definition build)")
        print(f"{'step':<20}" + "".join(f"{name:>10}" for name in columns) + f"{'ratio':>8}")
        for step in STEPS:
            cells = "".join(f"{column.get(step, 0.0):>10.1f}" for column in columns.values())
            print(f"{step:<20}{cells}{columns[first][step] / columns['bare'][step]:>8.1f}")
        sums = {name: sum(column.get(s, 0.0) for s in STEPS) for name, column in columns.items()}
        print(
            f"{'sum of steps':<20}"
            + "".join(f"{v:>10.1f}" for v in sums.values())
            + f"{sums[first] / sums['bare']:>8.1f}"
        )
        print(
            f"{'run total':<20}"
            + "".join(f"{totals[name]:>10.1f}" if name in totals else f"{'-':>10}" for name in columns)
        )
        print("(bare Tune: one training job with the default hyperparameters)")


if __name__ == "__main__":
    main()
