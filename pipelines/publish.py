"""Publish and operate the pipeline in an AWS account: definition, upsert, start, schedule, status."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from pipelines.config import ECR_IMAGE, Config

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

    The SDK uploads step code while it builds, and the builder the bias baseline and configs; here those
    uploads go to an in-memory S3 (moto), so the S3 objects the JSON names exist only once `upsert` or
    `definition_uploaded` has put them in the bucket. Their keys are content hashes, so the JSON equals
    what `upsert` publishes for the same bucket, role and image. Without a bucket or role configured,
    placeholders stand in.
    """
    from pipelines.pipeline import get_pipeline, project_root

    with offline_session(config) as (config, session), project_root():
        return canonical_json(get_pipeline(config, session).definition())


@_aws_errors
def definition_uploaded(config: Config) -> str:
    """The pipeline definition JSON built with the real session: the objects it names are uploaded to
    aws.bucket, and the image is pinned to its digest, as `upsert` does (for deploying the JSON yourself,
    e.g. with CloudFormation's AWS::SageMaker::Pipeline)."""
    from pipelines.pipeline import get_pipeline, project_root

    config, session = _publishing(config)
    with project_root():
        return canonical_json(get_pipeline(config, session).definition())


def pinned_image(config: Config, ecr) -> str:
    """aws.image_uri as <repository>@sha256:<digest>, so a model package keeps the image it was built with
    (a tag such as :latest moves). The digest comes from ECR's DescribeImages for the tag (default latest)."""
    found = ECR_IMAGE.match(config.aws.image_uri)
    if not found:
        raise PublishError(
            f"aws.image_uri {config.aws.image_uri!r} is not an ECR image (<account>.dkr.ecr.<region>.amazonaws.com/"
            "<repository>[:tag]): SageMaker jobs pull their image from ECR; push it there and set FRAUD_IMAGE_URI"
        )
    repository = f"{found['host']}/{found['repository']}"
    if found["digest"]:
        return f"{repository}@{found['digest']}"
    tag = found["tag"] or "latest"
    try:
        images = ecr.describe_images(
            registryId=found["registry"], repositoryName=found["repository"], imageIds=[{"imageTag": tag}]
        )["imageDetails"]
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code in ("ImageNotFoundException", "RepositoryNotFoundException"):
            raise PublishError(
                f"{config.aws.image_uri}: {error.response['Error'].get('Message', code)} (push the image first)"
            ) from None
        raise
    return f"{repository}@{images[0]['imageDigest']}"


def _publishing(config: Config):
    """The configuration with its image pinned to a digest, and the session that builds and uploads."""
    from sagemaker.workflow.pipeline_context import PipelineSession

    if not config.aws.role_arn:
        raise PublishError("aws.role_arn is empty: set SAGEMAKER_ROLE_ARN to the pipeline's execution role")
    session = boto_session(config)
    image = pinned_image(config, session.client("ecr"))
    config = config.model_copy(update={"aws": config.aws.model_copy(update={"image_uri": image})})
    return config, PipelineSession(boto_session=session, default_bucket=config.aws.bucket or None)


def canonical_json(document: str) -> str:
    """A JSON document with sorted keys and indentation, as the project writes definitions."""
    return json.dumps(json.loads(document), indent=2, sort_keys=True) + "\n"


def _tags(config: Config) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in sorted(config.project.tags.items())]


@_aws_errors
def upsert(config: Config) -> str:
    """Create or update the pipeline (description and tags from the config), its image pinned to the digest
    the tag names now; returns its ARN."""
    from pipelines.pipeline import get_pipeline, project_root

    config, session = _publishing(config)
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


def parameter_value(value: bool | int | float | str) -> str:
    """A pipeline parameter's value as the service takes it: booleans as true/false (str() would say True, and
    a YAML true loaded as a number would say 1)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


@_aws_errors
def schedule(config: Config, action: str = "upsert", client=None, sagemaker_client=None) -> str:
    """Create or update (action 'upsert': enabled), disable or delete the EventBridge Scheduler schedule that
    starts the pipeline, with a retry policy and a dead-letter queue for starts that still fail."""
    session = boto_session(config)
    client = client or session.client("scheduler")
    name = schedule_name(config)
    if action == "delete":
        client.delete_schedule(Name=name)
        return f"deleted schedule {name}"
    settings = config.schedule
    if not settings.role_arn:
        raise PublishError(
            "schedule.role_arn is empty: set SCHEDULER_ROLE_ARN to a role EventBridge Scheduler may assume "
            "(make deploy-infra creates one and prints it)"
        )
    if not settings.dead_letter_arn:
        raise PublishError(
            "schedule.dead_letter_arn is empty: set SCHEDULE_DLQ_ARN to the SQS queue for starts that fail "
            "(make deploy-infra creates one and prints it)"
        )
    sagemaker_client = sagemaker_client or session.client("sagemaker")
    _check_parameters(sagemaker_client, config.project.name, dict(settings.parameters))
    pipeline_arn = sagemaker_client.describe_pipeline(PipelineName=config.project.name)["PipelineArn"]
    request = {
        "Name": name,
        "ScheduleExpression": settings.expression,
        "ScheduleExpressionTimezone": settings.timezone,
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "State": "DISABLED" if action == "disable" else "ENABLED",
        "Description": f"Starts the {config.project.name} pipeline",
        "Target": {
            "Arn": pipeline_arn,
            "RoleArn": settings.role_arn,
            "RetryPolicy": {
                "MaximumRetryAttempts": settings.max_retry_attempts,
                "MaximumEventAgeInSeconds": settings.max_event_age_s,
            },
            "DeadLetterConfig": {"Arn": settings.dead_letter_arn},
            "SageMakerPipelineParameters": {
                "PipelineParameterList": [
                    {"Name": k, "Value": parameter_value(v)} for k, v in sorted(settings.parameters.items())
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
    return f"{verb} schedule {name} ({request['State']}): {settings.expression} {settings.timezone}"
