"""Publish and operate the pipeline in an AWS account: definition, upsert, start, schedule, status."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from pipelines.config import Config

PLACEHOLDER_BUCKET = "sagemaker-artifacts-placeholder"
PLACEHOLDER_ROLE = "arn:aws:iam::000000000000:role/SageMakerExecutionRolePlaceholder"
TERMINAL = {"Succeeded", "Failed", "Stopped"}


class PublishError(RuntimeError):
    """An AWS operation that cannot go ahead; the message says why in one line."""


def _aws_errors(function: Callable) -> Callable:
    """Turn AWS, credential and network errors into a one-line PublishError."""

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except NoCredentialsError:
            raise PublishError("no AWS credentials found (set AWS_PROFILE or AWS_ACCESS_KEY_ID)") from None
        except NoRegionError:
            raise PublishError("no AWS region (set aws.region in pipeline.yaml or AWS_REGION)") from None
        except ClientError as error:
            info = error.response.get("Error", {})
            raise PublishError(f"{info.get('Code', 'error')}: {info.get('Message', error)}") from None
        except BotoCoreError as error:
            raise PublishError(str(error)) from None

    return wrapped


def boto_session(config: Config) -> boto3.Session:
    return boto3.Session(region_name=config.aws.region)


@contextmanager
def offline_session(config: Config) -> Iterator[tuple[Config, object]]:
    """A PipelineSession on an in-memory AWS (moto), with the configured (or a placeholder) bucket and role:
    the SDK uploads step code while it builds a definition, and the builder its bias baseline and configs."""
    from moto import mock_aws
    from sagemaker.workflow.pipeline_context import PipelineSession

    aws = config.aws.model_copy(
        update={"bucket": config.aws.bucket or PLACEHOLDER_BUCKET, "role_arn": config.aws.role_arn or PLACEHOLDER_ROLE}
    )
    config = config.model_copy(update={"aws": aws})
    with mock_aws():
        session = boto_session(config)
        s3 = session.client("s3")
        if config.aws.region == "us-east-1":
            s3.create_bucket(Bucket=aws.bucket)
        else:
            s3.create_bucket(Bucket=aws.bucket, CreateBucketConfiguration={"LocationConstraint": config.aws.region})
        yield config, PipelineSession(boto_session=session, default_bucket=aws.bucket)


def definition(config: Config) -> str:
    """The pipeline definition JSON, built offline: no credentials, no network.

    The SDK uploads step code while it builds; here those uploads go to an in-memory S3 (moto).
    Code paths are keyed by content hash, so the JSON equals what `upsert` publishes for the same
    bucket and role. Without them configured, placeholders stand in.
    """
    from pipelines.pipeline import get_pipeline, project_root

    with offline_session(config) as (config, session), project_root():
        return canonical_json(get_pipeline(config, session).definition())


def canonical_json(document: str) -> str:
    """A JSON document with sorted keys and indentation, as the project writes definitions."""
    return json.dumps(json.loads(document), indent=2, sort_keys=True) + "\n"


def _tags(config: Config) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in sorted(config.project.tags.items())]


@_aws_errors
def upsert(config: Config) -> str:
    """Create or update the pipeline (description and tags from the config); returns its ARN."""
    from sagemaker.workflow.pipeline_context import PipelineSession

    from pipelines.pipeline import get_pipeline, project_root

    if not config.aws.role_arn:
        raise PublishError("aws.role_arn is empty: set SAGEMAKER_ROLE_ARN to the pipeline's execution role")
    session = PipelineSession(boto_session=boto_session(config), default_bucket=config.aws.bucket or None)
    with project_root():
        pipeline = get_pipeline(config, session)
        response = pipeline.upsert(
            role_arn=config.aws.role_arn, description=config.project.description, tags=_tags(config)
        )
    return response["PipelineArn"]


def parse_parameters(pairs: list[str]) -> dict[str, str]:
    """['MinAuc=0.8', ...] -> {'MinAuc': '0.8'}."""
    parameters = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise PublishError(f"--param {pair!r}: expected Name=Value")
        parameters[name] = value
    return parameters


def _check_parameters(client, name: str, parameters: dict[str, str]) -> None:
    """Every override must name a parameter of the published pipeline."""
    document = json.loads(client.describe_pipeline(PipelineName=name)["PipelineDefinition"])
    known = {p["Name"] for p in document.get("Parameters", [])}
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise PublishError(f"unknown pipeline parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


@_aws_errors
def start(config: Config, parameters: dict[str, str], client=None) -> str:
    """Start an execution with parameter overrides; returns its ARN."""
    client = client or boto_session(config).client("sagemaker")
    _check_parameters(client, config.project.name, parameters)
    response = client.start_pipeline_execution(
        PipelineName=config.project.name,
        PipelineParameters=[{"Name": k, "Value": v} for k, v in sorted(parameters.items())],
    )
    return response["PipelineExecutionArn"]


def _steps(client, execution_arn: str) -> list[dict]:
    steps, token = [], None
    while True:
        kwargs = {"PipelineExecutionArn": execution_arn, "SortOrder": "Ascending"}
        if token:
            kwargs["NextToken"] = token
        page = client.list_pipeline_execution_steps(**kwargs)
        steps += page["PipelineExecutionSteps"]
        token = page.get("NextToken")
        if not token:
            return steps


def watch(client, execution_arn: str, poll_s: float = 15.0, sleep=time.sleep) -> Iterator[str]:
    """Yield a line for each step status change until the execution ends; then its final status.

    Raises PublishError with the failing step's reason when the execution fails or stops.
    """
    seen: dict[str, str] = {}
    while True:
        execution = client.describe_pipeline_execution(PipelineExecutionArn=execution_arn)
        steps = _steps(client, execution_arn)
        for step in steps:
            name, status = step["StepName"], step["StepStatus"]
            if seen.get(name) != status:
                seen[name] = status
                reason = f" - {step['FailureReason']}" if step.get("FailureReason") else ""
                yield f"{name}: {status}{reason}"
        status = execution["PipelineExecutionStatus"]
        if status in TERMINAL:
            if status != "Succeeded":
                failed = [s for s in steps if s["StepStatus"] == "Failed"]
                reason = (
                    f"step {failed[0]['StepName']} failed: {failed[0].get('FailureReason', 'no reason given')}"
                    if failed
                    else execution.get("FailureReason", "no reason given")
                )
                raise PublishError(f"execution {status.lower()}: {reason}")
            yield f"execution {status}"
            return
        sleep(poll_s)


@_aws_errors
def status(config: Config, limit: int = 5, client=None) -> list[str]:
    """The latest executions, and the steps of the newest one."""
    client = client or boto_session(config).client("sagemaker")
    executions = client.list_pipeline_executions(
        PipelineName=config.project.name, SortBy="CreationTime", SortOrder="Descending", MaxResults=limit
    )["PipelineExecutionSummaries"]
    if not executions:
        return [f"{config.project.name}: no executions yet"]
    lines = [f"{e['PipelineExecutionArn']}  {e['PipelineExecutionStatus']}  {e['StartTime']}" for e in executions]
    newest = executions[0]["PipelineExecutionArn"]
    for step in _steps(client, newest):
        reason = f" - {step['FailureReason']}" if step.get("FailureReason") else ""
        lines.append(f"  {step['StepName']}: {step['StepStatus']}{reason}")
    return lines


def schedule_name(config: Config) -> str:
    return f"{config.project.name}-schedule"


@_aws_errors
def schedule(config: Config, action: str = "upsert", client=None, sagemaker_client=None) -> str:
    """Create or update (action 'upsert'), disable or delete the EventBridge Scheduler schedule."""
    session = boto_session(config)
    client = client or session.client("scheduler")
    name = schedule_name(config)
    if action == "delete":
        client.delete_schedule(Name=name)
        return f"deleted schedule {name}"
    role = config.schedule.role_arn or config.aws.role_arn
    if not role:
        raise PublishError("no role for the scheduler: set SCHEDULER_ROLE_ARN or SAGEMAKER_ROLE_ARN")
    sagemaker_client = sagemaker_client or session.client("sagemaker")
    pipeline_arn = sagemaker_client.describe_pipeline(PipelineName=config.project.name)["PipelineArn"]
    enabled = config.schedule.enabled and action != "disable"
    request = {
        "Name": name,
        "ScheduleExpression": config.schedule.expression,
        "ScheduleExpressionTimezone": config.schedule.timezone,
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "State": "ENABLED" if enabled else "DISABLED",
        "Description": f"Starts the {config.project.name} pipeline",
        "Target": {
            "Arn": pipeline_arn,
            "RoleArn": role,
            "SageMakerPipelineParameters": {
                "PipelineParameterList": [
                    {"Name": k, "Value": str(v)} for k, v in sorted(config.schedule.parameters.items())
                ]
            },
        },
    }
    try:
        client.get_schedule(Name=name)
        client.update_schedule(**request)
        verb = "updated"
    except client.exceptions.ResourceNotFoundException:
        client.create_schedule(**request)
        verb = "created"
    return f"{verb} schedule {name} ({request['State']}): {config.schedule.expression} {config.schedule.timezone}"
