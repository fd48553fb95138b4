"""fraud-pipeline: the project's command line.

Every command prints a one-line error and exits non-zero on bad input; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path


def _quiet_sdk() -> None:
    """No INFO chatter and no pipeline-session warnings from the SDK."""
    warnings.filterwarnings("ignore", message="Running within a PipelineSession")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("sagemaker", "sagemaker.config", "botocore.credentials"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _config(args: argparse.Namespace):
    from pipelines.config import load

    return load(args.config)


def _definition(args: argparse.Namespace) -> int:
    from pipelines.publish import definition

    document = definition(_config(args))
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(document)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(document)
    return 0


def _upsert(args: argparse.Namespace) -> int:
    from pipelines.publish import upsert

    print(f"upserted {upsert(_config(args))}")
    return 0


def _start(args: argparse.Namespace) -> int:
    from pipelines import publish

    config = _config(args)
    client = publish.boto_session(config).client("sagemaker")
    arn = publish.start(config, publish.parse_parameters(args.param), client=client)
    print(f"started {arn}")
    if args.wait:
        for line in publish.watch(client, arn, poll_s=args.poll):
            print(line, flush=True)
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from pipelines.publish import schedule

    action = "delete" if args.delete else "disable" if args.disable else "upsert"
    print(schedule(_config(args), action))
    return 0


def _status(args: argparse.Namespace) -> int:
    from pipelines.publish import status

    print("\n".join(status(_config(args), limit=args.limit)))
    return 0


def _data(args: argparse.Namespace) -> int:
    from pipelines.synthetic_data import generate

    claims, customers = generate(args.rows, args.seed, args.out)
    print(f"wrote {args.rows} policies: {claims} and {customers}")
    return 0


def _local(args: argparse.Namespace) -> int:
    from pipelines import local
    from pipelines.publish import parse_parameters
    from pipelines.synthetic_data import generate

    config = _config(args)
    if bool(args.claims) != bool(args.customers):
        raise ValueError("--claims and --customers go together")
    local.ensure_docker(install=not args.no_install)
    local.ensure_image(config.aws.image_uri)
    claims, customers = args.claims, args.customers
    if not claims:
        data = Path("build") / "local-data" / f"{args.rows}-{args.seed}"
        print(f"generating {args.rows} policies (seed {args.seed}) in {data}")
        claims, customers = generate(args.rows, args.seed, data)
    result = local.run(config, claims, customers, parse_parameters(args.param), args.runs_dir)
    print("\n".join(local.summary(result)))
    return 0 if result.status == "Succeeded" else 1


def _serve(args: argparse.Namespace) -> int:
    """Serve a model directory (a run's model/, or the run folder itself) on this machine."""
    import json
    import os
    import subprocess

    from pipelines.config import ROOT

    model = args.model / "model" if (args.model / "model" / "xgboost-model.json").is_file() else args.model
    if not (model / "xgboost-model.json").is_file():
        raise ValueError(f"{args.model}: no xgboost-model.json there (expected a run's model/ directory)")
    threshold = args.threshold
    evaluation = model.parent / "evaluation" / "evaluation.json"
    if threshold is None and evaluation.is_file():
        threshold = json.loads(evaluation.read_text())["threshold"]["value"]
        print(f"threshold {threshold} from {evaluation}")
    own_code = model / "code" / "serve.py"
    server = own_code if own_code.is_file() else ROOT / "serving" / "serve.py"
    python_path = os.pathsep.join([str(server.parent), str(ROOT / "processing")])
    command = [sys.executable, str(server), "--model-dir", str(model), "--port", str(args.port), "--host", args.host]
    if threshold is not None:
        command += ["--threshold", str(threshold)]
    if args.workers:
        command += ["--workers", str(args.workers)]
    return subprocess.run(command, env={**os.environ, "PYTHONPATH": python_path}).returncode


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fraud-pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="pipeline.yaml to use (default: the project's)")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="write synthetic claims.csv and customers.csv")
    data.add_argument("--rows", type=int, default=20_000, help="number of policies")
    data.add_argument("--seed", type=int, default=42)
    data.add_argument("--out", type=Path, default=Path("data"))
    data.set_defaults(run=_data)

    definition = commands.add_parser("definition", help="write the pipeline definition JSON (offline)")
    definition.add_argument("--output", type=Path, default=None, help="file to write (default: stdout)")
    definition.set_defaults(run=_definition)

    commands.add_parser("upsert", help="create or update the pipeline in SageMaker").set_defaults(run=_upsert)

    start = commands.add_parser("start", help="start a pipeline execution")
    start.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="parameter override")
    start.add_argument("--wait", action="store_true", help="print step status changes until the execution ends")
    start.add_argument("--poll", type=float, default=15.0, help="seconds between status checks with --wait")
    start.set_defaults(run=_start)

    schedule = commands.add_parser("schedule", help="create or update the EventBridge schedule")
    state = schedule.add_mutually_exclusive_group()
    state.add_argument("--disable", action="store_true", help="keep the schedule but stop it from firing")
    state.add_argument("--delete", action="store_true", help="delete the schedule")
    schedule.set_defaults(run=_schedule)

    local = commands.add_parser("local", help="run the whole pipeline on this machine in containers")
    local.add_argument("--claims", type=Path, help="raw claims.csv (default: generated)")
    local.add_argument("--customers", type=Path, help="raw customers.csv (default: generated)")
    local.add_argument("--rows", type=int, default=20_000, help="policies to generate when no files are given")
    local.add_argument("--seed", type=int, default=42)
    local.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="parameter override")
    local.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where runs/<execution-id>/ go")
    local.add_argument("--no-install", action="store_true", help="never install or start a Docker engine")
    local.set_defaults(run=_local)

    serve = commands.add_parser("serve", help="serve a model over HTTP (/ping, /invocations) on this machine")
    serve.add_argument("--model", type=Path, required=True, help="a run's model/ directory (or the run folder)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--threshold", type=float, default=None, help="default: the run's evaluation.json")
    serve.add_argument("--workers", type=int, default=None)
    serve.set_defaults(run=_serve)

    status = commands.add_parser("status", help="the latest executions and their steps")
    status.add_argument("--limit", type=int, default=5)
    status.set_defaults(run=_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipelines.config import ConfigError
    from pipelines.local import LocalRunError
    from pipelines.publish import PublishError

    args = build_parser().parse_args(argv)
    _quiet_sdk()
    try:
        return args.run(args)
    except (ConfigError, PublishError, LocalRunError, ValueError, OSError) as error:
        print(f"fraud-pipeline {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
