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
    from pipelines.publish import definition, definition_uploaded

    config = _config(args)
    document = definition_uploaded(config) if args.upload else definition(config)
    if not args.upload:
        print(
            "note: built offline: the S3 objects this definition names (step code, bias baseline and configs) went to "
            "an in-memory S3, and the image is not pinned to a digest; to deploy the JSON yourself, build it with "
            "--upload (AWS credentials), or publish with `make upsert`",
            file=sys.stderr,
        )
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


def _registry(args: argparse.Namespace):
    from pipelines.local.registry import Registry
    from pipelines.local.runner import STATE_FOLDER
    from pipelines.local.state import LocalState

    config = _config(args)
    state = LocalState(args.runs_dir / STATE_FOLDER)
    return config.registry.model_package_group, Registry(state.registry_path, config.aws.region), state


def _package_auc(state, package: dict) -> str:
    """The AUC in the package's model quality report (from the local S3's saved objects), or '-'."""
    import json

    uri = package.get("ModelMetrics", {}).get("ModelQuality", {}).get("Statistics", {}).get("S3Uri", "")
    report = state.saved_object(uri) if uri else None
    if not report or not report.is_file():
        return "-"
    return f"{json.loads(report.read_text())['binary_classification_metrics']['auc']['value']:.4f}"


def _registry_list(args: argparse.Namespace) -> int:
    group, registry, state = _registry(args)
    packages = registry.packages(group)
    if not packages:
        print(f"{group}: no model packages yet (a successful `fraud-pipeline local` registers one)")
        return 0
    print(f"{'version':>7}  {'status':<22}  {'created (UTC)':<19}  {'auc':>6}  {'threshold':>9}  data version")
    for package in packages:
        metadata = package.get("CustomerMetadataProperties", {})
        created = package["CreationTime"][:19].replace("T", " ")
        print(
            f"{package['ModelPackageVersion']:>7}  {package['ModelApprovalStatus']:<22}  {created:<19}"
            f"  {_package_auc(state, package):>6}  {float(metadata.get('threshold', 'nan')):>9.4f}"
            f"  {metadata.get('data_version', '-')}"
        )
    return 0


def _registry_show(args: argparse.Namespace) -> int:
    import json

    group, registry, _ = _registry(args)
    print(json.dumps(registry.describe(group, args.version), indent=2, sort_keys=True))
    return 0


def _registry_approve(args: argparse.Namespace) -> int:
    import datetime

    group, registry, _ = _registry(args)
    status = "Approved" if args.command_name == "approve" else "Rejected"
    now = datetime.datetime.now(datetime.UTC)
    package = registry.update_approval(group, args.version, status, now, args.description)
    print(f"{package['ModelPackageArn']}: {package['ModelApprovalStatus']}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    """Serve a model directory (a run's model/, or the run folder itself), or a registered version.

    This process becomes the server (exec), so a signal to it reaches the server and nothing outlives it."""
    import json
    import os
    import tarfile

    from pipelines.config import ROOT

    def threshold_in(value: object, where: str) -> float:
        """A threshold read from a file: a number in [0, 1], else ValueError naming `where`."""
        try:
            number = float(value)  # the registry's metadata holds strings, evaluation.json numbers
        except (TypeError, ValueError):
            number = float("nan")
        if isinstance(value, bool) or not 0 <= number <= 1:
            raise ValueError(f"{where}: expected a number in [0, 1], got {value!r}")
        return number

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers {args.workers}: expected at least 1 worker process")
    threshold = args.threshold
    if args.model_package is not None:
        group, registry, state = _registry(args)
        package = registry.describe(group, args.model_package)
        [container] = package["InferenceSpecification"]["Containers"]
        archive = state.saved_object(container["ModelDataUrl"])
        if not archive.is_file():
            raise ValueError(f"{container['ModelDataUrl']}: not among the local S3's saved objects ({archive})")
        model = state.root / "served" / f"{group}-{args.model_package}"
        if not (model / "xgboost-model.json").is_file():
            with tarfile.open(archive) as tar:
                tar.extractall(model, filter="data")
        metadata = package.get("CustomerMetadataProperties", {})
        if threshold is None and "threshold" in metadata:
            where = f"{package['ModelPackageArn']}: CustomerMetadataProperties.threshold"
            threshold = threshold_in(metadata["threshold"], where)
            print(f"threshold {threshold} from {package['ModelPackageArn']}")
    else:
        model = args.model / "model" if (args.model / "model" / "xgboost-model.json").is_file() else args.model
        if not (model / "xgboost-model.json").is_file():
            raise ValueError(f"{args.model}: no xgboost-model.json there (expected a run's model/ directory)")
        evaluation = model.parent / "evaluation" / "evaluation.json"
        if threshold is None and evaluation.is_file():
            try:
                value = json.loads(evaluation.read_text())["threshold"]["value"]
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{evaluation}: expected a JSON object with threshold.value ({error!r})") from None
            threshold = threshold_in(value, f"{evaluation}: threshold.value")
            print(f"threshold {threshold} from {evaluation}")
    own_code = model / "code" / "serve.py"
    server = own_code if own_code.is_file() else ROOT / "serving" / "serve.py"
    python_path = os.pathsep.join([str(server.parent), str(ROOT / "processing")])
    command = [sys.executable, str(server), "--model-dir", str(model), "--port", str(args.port), "--host", args.host]
    if threshold is not None:
        command += ["--threshold", str(threshold)]
    if args.workers is not None:
        command += ["--workers", str(args.workers)]
    sys.stdout.flush()
    os.execve(sys.executable, command, {**os.environ, "PYTHONPATH": python_path})


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
    definition.add_argument(
        "--upload", action="store_true", help="upload what it names to aws.bucket and pin the image (AWS credentials)"
    )
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
    which = serve.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=Path, help="a run's model/ directory (or the run folder)")
    which.add_argument("--model-package", type=int, metavar="N", help="version N of the local model registry")
    serve.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where the local registry is (runs/)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--threshold", type=float, default=None, help="default: the run's evaluation.json")
    serve.add_argument("--workers", type=int, default=None, help="server processes, at least 1 (default: the CPUs)")
    serve.set_defaults(run=_serve)

    registry = commands.add_parser("registry", help="the local model registry (runs/local-aws/registry.json)")
    registry.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where local runs keep it (runs/)")
    actions = registry.add_subparsers(dest="command_name", required=True)
    actions.add_parser("list", help="the group's versions").set_defaults(run=_registry_list)
    show = actions.add_parser("show", help="one version, as DescribeModelPackage gives it")
    show.add_argument("version", type=int)
    show.set_defaults(run=_registry_show)
    for verb in ("approve", "reject"):
        decide = actions.add_parser(verb, help=f"{verb} a version (its ModelApprovalStatus)")
        decide.add_argument("version", type=int)
        decide.add_argument("--description", default="", help="ApprovalDescription")
        decide.set_defaults(run=_registry_approve)

    status = commands.add_parser("status", help="the latest executions and their steps")
    status.add_argument("--limit", type=int, default=5)
    status.set_defaults(run=_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipelines.config import ConfigError
    from pipelines.local import LocalRunError
    from pipelines.local.registry import RegistryError
    from pipelines.publish import PublishError

    args = build_parser().parse_args(argv)
    _quiet_sdk()
    try:
        return args.run(args)
    except (ConfigError, PublishError, LocalRunError, RegistryError, ValueError, OSError) as error:
        print(f"fraud-pipeline {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
