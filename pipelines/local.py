"""fraud-pipeline local: the local graph in real containers through LocalPipelineSession.

What it starts and stops: moto's S3 server on 127.0.0.1 (the SDK's local mode still moves step code
and data through S3). What it needs: a Docker engine and the project image (built when missing).
Each run's outputs land in runs/<execution-id>/.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import boto3

from pipelines.config import ROOT, Config
from pipelines.publish import canonical_json

LOCAL_ROLE = "arn:aws:iam::000000000000:role/local-pipeline"
LOCAL_BUCKET = "fraud-detection-local"
ENSURE_ENGINE = ROOT / "docker" / "ensure_engine.sh"
FAIL_STEP = "AucBelowThreshold"


class LocalRunError(RuntimeError):
    """The local run cannot start or did not succeed; the message says why in one line."""


@dataclass
class RunResult:
    execution_id: str
    status: str
    run_dir: Path
    steps: list[dict] = field(default_factory=list)
    failure: str = ""
    failed_step: str = ""

    @property
    def fail_branch(self) -> bool:
        return self.failed_step == FAIL_STEP


def _docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_docker(install: bool, say: Callable[[str], None] = print) -> None:
    """A reachable Docker engine; on a Debian host as root, install and start one when allowed."""
    if _docker_answers():
        return
    may_install = install and os.geteuid() == 0 and Path("/etc/debian_version").exists()
    if not may_install:
        raise LocalRunError(
            "no Docker engine is reachable (`docker info` failed): start Docker, "
            "or run as root on a Debian host to let `make local` install and start it"
        )
    say("no Docker engine is reachable: installing and starting one (docker/ensure_engine.sh)")
    if subprocess.run(["bash", str(ENSURE_ENGINE)]).returncode != 0:
        raise LocalRunError("could not start a Docker engine (see docker/ensure_engine.sh's message above)")


def ensure_image(image: str, say: Callable[[str], None] = print) -> None:
    """The project image, built (`make image`) when missing."""
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0:
        return
    say(f"image {image} is missing: building it (make image, a few minutes the first time)")
    if subprocess.run(["make", "-C", str(ROOT), "image", f"IMAGE={image}"]).returncode != 0:
        raise LocalRunError(f"could not build the image {image} (see make image's output above)")


@contextmanager
def local_s3(region: str) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 for the duration of a run; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    overrides = {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": region,
    }
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        yield endpoint
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class ContainerLog(io.TextIOBase):
    """Stands in for stdout while the SDK streams container output: passes it on, and keeps the
    last error line a step script printed (`<script>: error: ...`, `bias check failed: ...`)."""

    ERROR = re.compile(r"(\w+: error: .*|bias check failed: .*)$")

    def __init__(self, out: TextIO):
        self.out = out
        self.last_error = ""

    def write(self, text: str) -> int:
        for line in text.splitlines():
            found = self.ERROR.search(line.rstrip())
            if found:
                self.last_error = found.group(1)
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


class StepProgress(logging.Handler):
    """Prints each step's start, end and duration from the SDK's local executor log."""

    def __init__(self, say: Callable[[str], None]):
        super().__init__(logging.INFO)
        self.say = say
        self.started: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message, args = record.msg, record.args or ()
        if not args or not isinstance(message, str):
            return
        step = args[0]
        if message.startswith("Starting pipeline step"):
            self.started[step] = time.monotonic()
            self.say(f"[{step}] started")
        elif message.startswith("Pipeline step '%s' FAILED"):
            self.say(f"[{step}] FAILED ({self._seconds(step):.1f} s): {args[1] if len(args) > 1 else ''}")
        elif message.startswith("Pipeline step '%s' SUCCEEDED") and step != FAIL_STEP:
            # the SDK logs its Fail step as succeeded, then as failed
            self.say(f"[{step}] succeeded ({self._seconds(step):.1f} s)")

    def _seconds(self, step: str) -> float:
        return time.monotonic() - self.started.get(step, time.monotonic())


def _typed(pipeline, overrides: dict[str, str]) -> dict:
    """Parameter overrides in their declared types; unknown names are an error."""
    declared = {p.name: p for p in pipeline.parameters}
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise LocalRunError(f"unknown pipeline parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(declared))}")
    typed = {}
    for name, text in overrides.items():
        kind = declared[name].parameter_type.python_type
        try:
            typed[name] = text.lower() == "true" if kind is bool else kind(text)
        except ValueError:
            raise LocalRunError(f"parameter {name}: {text!r} is not a {kind.__name__}") from None
    return typed


def _download(s3, bucket: str, prefix: str, target: Path) -> list[Path]:
    """Every object under s3://bucket/prefix, into target (keys relative to the prefix)."""
    files = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            path = target / item["Key"][len(prefix) :].lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, item["Key"], str(path))
            files.append(path)
    return files


def _collect(s3, config: Config, execution_id: str, run_dir: Path) -> None:
    """The run's model, evaluation, bias report and manifest, from the local S3 into run_dir."""
    prefix = f"{config.aws.prefix}/{execution_id}"
    _download(s3, LOCAL_BUCKET, f"{prefix}/evaluate/evaluation", run_dir / "evaluation")
    _download(s3, LOCAL_BUCKET, f"{prefix}/bias/report", run_dir / "bias")
    _download(s3, LOCAL_BUCKET, f"{prefix}/preprocess/manifest", run_dir)
    for archive in _download(s3, LOCAL_BUCKET, f"{config.aws.prefix}/models", run_dir / "model-artifacts"):
        if archive.name == "model.tar.gz":
            with tarfile.open(archive) as tar:
                tar.extractall(run_dir / "model", filter="data")
            shutil.move(archive, run_dir / "model.tar.gz")
    shutil.rmtree(run_dir / "model-artifacts", ignore_errors=True)


def _write_registry_record(config: Config, run_dir: Path, execution_id: str, approval_status: str) -> None:
    """What RegisterModel would record in the model registry, for a local run."""
    evaluation = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    record = {
        "model_package_group": config.registry.model_package_group,
        "approval_status": approval_status,
        "execution_id": execution_id,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "image": config.aws.image_uri,
        "model_data": str(run_dir / "model.tar.gz"),
        "content_types": config.registry.content_types,
        "response_types": config.registry.response_types,
        "model_quality": evaluation["binary_classification_metrics"],
        "customer_metadata": {
            "threshold": str(evaluation["threshold"]["value"]),
            "threshold_method": evaluation["threshold"]["method"],
        },
    }
    bias = run_dir / "bias" / "analysis.json"
    if bias.exists():
        record["bias_pre_training"] = json.loads(bias.read_text())
    (run_dir / "registry.json").write_text(json.dumps(record, indent=2) + "\n")


def _sessions(config: Config, endpoint: str):
    from sagemaker.workflow.pipeline_context import LocalPipelineSession

    boto = boto3.Session(region_name=config.aws.region)
    session = LocalPipelineSession(boto_session=boto, default_bucket=LOCAL_BUCKET, s3_endpoint_url=endpoint)
    session.config = {"local": {"local_code": False}}
    code_session = LocalPipelineSession(boto_session=boto, default_bucket=LOCAL_BUCKET, s3_endpoint_url=endpoint)
    code_session.config = {"local": {"local_code": True}}
    return session, code_session


def run(
    config: Config,
    claims: Path,
    customers: Path,
    overrides: dict[str, str],
    runs_dir: Path,
    say: Callable[[str], None] = print,
) -> RunResult:
    """Run the local graph on these raw files; copy the outputs to runs_dir/<execution-id>/."""
    from pipelines.pipeline import get_local_pipeline, project_root

    aws = config.aws.model_copy(update={"bucket": LOCAL_BUCKET, "role_arn": config.aws.role_arn or LOCAL_ROLE})
    config = config.model_copy(update={"aws": aws})
    for path in (claims, customers):
        if not path.is_file():
            raise LocalRunError(f"{path}: file not found")
    with local_s3(config.aws.region) as endpoint, project_root():
        s3 = boto3.client("s3", region_name=config.aws.region, endpoint_url=endpoint)
        s3.create_bucket(Bucket=LOCAL_BUCKET)
        inputs = {}
        for name, table, path in (("ClaimsUri", "claims", claims), ("CustomersUri", "customers", customers)):
            key = f"{config.aws.prefix}/raw/{table}/{path.name}"
            s3.upload_file(str(path), LOCAL_BUCKET, key)
            inputs[name] = f"s3://{LOCAL_BUCKET}/{key}"
        session, code_session = _sessions(config, endpoint)
        pipeline = get_local_pipeline(config, session, code_session)
        parameters = {**inputs, **_typed(pipeline, overrides)}
        definition = pipeline.definition()
        pipeline.create(role_arn=config.aws.role_arn)

        progress = StepProgress(say)
        executor_log = logging.getLogger("sagemaker.local.entities")
        executor_log.addHandler(progress)
        executor_log.setLevel(logging.INFO)
        executor_log.propagate = False
        container_log = ContainerLog(sys.stdout)
        try:
            with redirect_stdout(container_log):
                execution = pipeline.start(parameters=parameters)
        finally:
            executor_log.removeHandler(progress)
            executor_log.propagate = True
        execution_id = execution.pipeline_execution_name
        run_dir = runs_dir / execution_id
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "definition.json").write_text(canonical_json(definition))
        _collect(s3, config, execution_id, run_dir)

    described = execution.describe()
    steps = execution.list_steps()["PipelineExecutionSteps"]
    failed = [s for s in steps if s.get("StepStatus") == "Failed"]
    failure = failed[0].get("FailureReason", "") if failed else described.get("FailureReason", "")
    if failed and failed[0]["StepName"] != FAIL_STEP and container_log.last_error:
        failure = container_log.last_error  # the script's own message says more than docker-compose's exit code
    result = RunResult(
        execution_id=execution_id,
        status=described["PipelineExecutionStatus"],
        run_dir=run_dir,
        steps=steps,
        failure=failure,
        failed_step=failed[0]["StepName"] if failed else "",
    )
    if result.status == "Succeeded":
        approval = str(parameters.get("ModelApprovalStatus", config.registry.approval_status))
        _write_registry_record(config, run_dir, execution_id, approval)
    return result


def summary(result: RunResult) -> list[str]:
    """What a person wants to read after a run: the outcome, AUC, threshold, bias metrics, where the files are."""
    lines = [f"execution {result.execution_id}: {result.status}"]
    evaluation = result.run_dir / "evaluation" / "evaluation.json"
    if evaluation.exists():
        report = json.loads(evaluation.read_text())
        auc = report["binary_classification_metrics"]["auc"]["value"]
        threshold = report["threshold"]
        lines.append(f"AUC {auc:.4f}; threshold {threshold['value']:.4f} ({threshold['method']})")
    analysis = result.run_dir / "bias" / "analysis.json"
    if analysis.exists():
        facets = json.loads(analysis.read_text())["pre_training_bias_metrics"]["facets"]
        for facet, groups in facets.items():
            for group in groups:
                values = ", ".join(
                    f"{m['name']} {m['value']:.4f}" for m in group["metrics"] if m.get("value") is not None
                )
                lines.append(f"bias ({facet}={group['value_or_threshold']}): {values}")
    if result.fail_branch:
        lines.append(f"fail branch: {result.failure}")
    elif result.failed_step:
        lines.append(f"step {result.failed_step} failed: {result.failure}")
    if (result.run_dir / "registry.json").exists():
        lines.append(f"registry record: {result.run_dir / 'registry.json'}")
    lines.append(f"outputs: {result.run_dir}")
    return lines
