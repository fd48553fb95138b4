"""Deploy approved model packages to the real-time endpoint: an EventBridge-triggered Lambda function.

An Approved "SageMaker Model Package State Change" of the configured group becomes model `<endpoint>-v<version>`,
endpoint config `<endpoint>-v<version>` (data capture on) and then the endpoint: created when it does not exist,
otherwise updated blue/green with auto-rollback on the configured alarms, so the fleet serving today keeps serving
until the new one is InService. Names derive from the package version, so a replayed event finds its work done.

Only a version newer than the one the endpoint serves or is moving to is deployed: SageMaker may send an event more
than once, and a late copy of an older approval must not roll the endpoint back. A direct invocation with
{"rollback_to": "<model package ARN>"} deploys an older Approved version on purpose.

While another deployment holds the endpoint, the request goes to the retry queue (RETRY_QUEUE_URL) with a 15-minute
delay; the queue invokes this function again (an SQS event), up to MAX_ATTEMPTS times, then the message is
dead-lettered.

Superseded configs and models of this endpoint (named `<endpoint>-v<N>`) are deleted only once the endpoint is
InService on the new config. The function waits for that while its remaining time allows; a blue/green update that
outlasts it is left running, and the next invocation (the next approval, or a replay of this one) cleans up.

Only boto3 and the standard library: this file is the whole Lambda package.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, WaiterError

EVENT_KIND = ("aws.sagemaker", "SageMaker Model Package State Change")  # source, detail-type
REQUIRED = (
    "MODEL_PACKAGE_GROUP",
    "ENDPOINT_NAME",
    "EXECUTION_ROLE_ARN",
    "INSTANCE_TYPE",
    "INSTANCE_COUNT",
    "DATA_CAPTURE_S3_URI",
    "RETRY_QUEUE_URL",
)
TRAFFIC_ROUTINGS = ("ALL_AT_ONCE", "CANARY")
VARIANT = "AllTraffic"
MAX_NAME_LENGTH = 63

TERMINATION_WAIT_SECONDS = 300  # baking period: the old fleet stays up and the alarms are watched
CANARY_WAIT_SECONDS = 300  # how long the canary serves alone before the rest of the traffic moves
MAX_EXECUTION_SECONDS = 3600  # SageMaker gives up (and rolls back) a blue/green update after this
POLL_SECONDS = 30
SAFETY_MARGIN_SECONDS = 60  # stop waiting this long before the Lambda timeout
WAIT_WITHOUT_CONTEXT_SECONDS = 840  # local runs: what a 15-minute Lambda would allow
RETRY_DELAY_SECONDS = 900  # the longest delay SQS allows
MAX_ATTEMPTS = 24  # retries 15 minutes apart: 6 hours for the other deployment (1 h at most, plus baking) to end
# What UpdateEndpoint and CreateEndpoint say (ValidationException) when another deployment got there first.
BUSY_MESSAGES = ("Cannot update in-progress endpoint", "Cannot create already existing endpoint")

LOG_FIELD_CHARS = 1000  # a longer logged value (an event, a name or status from one) is cut to this

# Throttling and transient errors: botocore retries each call 5 times more, with exponential backoff and jitter.
RETRY_CONFIG = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=10, read_timeout=60)


class ConfigurationError(RuntimeError):
    """An environment variable of the function is missing or invalid."""


class DeploymentError(RuntimeError):
    """The deployment failed or was rolled back; a fleet that served before keeps serving."""


class EndpointBusy(DeploymentError):
    """Another create/update of the endpoint is under way; the request is retried later from the retry queue."""


def bounded(value: Any) -> Any:
    """A log field as it is when short; else its text (JSON for a structure) cut to LOG_FIELD_CHARS characters."""
    try:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
    except (ValueError, RecursionError):
        return f"<a {type(value).__name__} nested too deeply to show>"
    if len(text) <= LOG_FIELD_CHARS:
        return value
    return f"{text[:LOG_FIELD_CHARS]}... ({len(text) - LOG_FIELD_CHARS} more characters)"


def log(level: str, message: str, **fields: Any) -> None:
    """One JSON object per line (CloudWatch Logs Insights parses the fields), every value bounded: events and the
    names in them come from outside, so a 5 MB event makes a short line, its control characters escaped."""
    entry = {"level": level, "message": message, **fields}
    print(json.dumps({key: bounded(value) for key, value in entry.items()}, default=str), flush=True)


@dataclass(frozen=True)
class Settings:
    """The function's configuration, from its environment variables."""

    model_package_group: str
    endpoint_name: str
    execution_role_arn: str
    instance_type: str
    instance_count: int
    data_capture_s3_uri: str
    retry_queue_url: str
    data_capture_percent: int = 100
    kms_key_id: str = ""
    rollback_alarms: tuple[str, ...] = ()
    traffic_routing: str = "ALL_AT_ONCE"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        missing = [name for name in REQUIRED if not environ.get(name, "").strip()]
        if missing:
            raise ConfigurationError(f"missing required environment variable(s): {', '.join(missing)}")
        settings = cls(
            model_package_group=environ["MODEL_PACKAGE_GROUP"].strip(),
            endpoint_name=environ["ENDPOINT_NAME"].strip(),
            execution_role_arn=environ["EXECUTION_ROLE_ARN"].strip(),
            instance_type=environ["INSTANCE_TYPE"].strip(),
            instance_count=_integer(environ, "INSTANCE_COUNT", 1, 100),
            data_capture_s3_uri=environ["DATA_CAPTURE_S3_URI"].strip(),
            retry_queue_url=environ["RETRY_QUEUE_URL"].strip(),
            data_capture_percent=_integer(environ, "DATA_CAPTURE_PERCENT", 0, 100, default=100),
            kms_key_id=environ.get("KMS_KEY_ID", "").strip(),
            rollback_alarms=tuple(a.strip() for a in environ.get("ROLLBACK_ALARMS", "").split(",") if a.strip()),
            traffic_routing=environ.get("TRAFFIC_ROUTING", "").strip() or "ALL_AT_ONCE",
        )
        settings._validate()
        return settings

    def _validate(self) -> None:
        if not self.data_capture_s3_uri.startswith("s3://"):
            raise ConfigurationError(f"DATA_CAPTURE_S3_URI: {self.data_capture_s3_uri!r} is not an s3:// URI")
        if len(self.rollback_alarms) > 10:
            raise ConfigurationError(f"ROLLBACK_ALARMS: {len(self.rollback_alarms)} alarms, SageMaker takes 10 at most")
        if self.traffic_routing not in TRAFFIC_ROUTINGS:
            raise ConfigurationError(f"TRAFFIC_ROUTING: {self.traffic_routing!r} is not one of {TRAFFIC_ROUTINGS}")
        if self.traffic_routing == "CANARY" and self.instance_count < 2:
            raise ConfigurationError("TRAFFIC_ROUTING=CANARY needs INSTANCE_COUNT of 2 or more (a 1-instance canary)")


def _integer(environ: Mapping[str, str], name: str, low: int, high: int, default: int | None = None) -> int:
    raw = environ.get(name, "").strip()
    if not raw and default is not None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}: {raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigurationError(f"{name}: {value} is outside {low}..{high}")
    return value


@dataclass(frozen=True)
class Request:
    """What to deploy: an approved package, or (rollback) an older one named by an operator."""

    package_arn: str
    rollback: bool = False


def unwrap(event: Any) -> tuple[Any, int]:
    """The event to act on and how many times it was retried: a retry-queue record carries both, in its body."""
    records = event.get("Records") if isinstance(event, dict) else None
    first = records[0] if isinstance(records, list) and records else None
    if not isinstance(first, dict) or first.get("eventSource") != "aws:sqs":
        return event, 0
    if len(records) > 1:
        raise ConfigurationError(f"{len(records)} SQS records in one event: the event source needs BatchSize 1")
    try:
        body = json.loads(first.get("body"))
    except (TypeError, ValueError, RecursionError):
        body = first.get("body")
    if isinstance(body, dict) and isinstance(body.get("attempt"), int):
        return body.get("event"), body["attempt"]
    return body, 0  # not a retry of ours: rejected below like any malformed event


def requested(event: Any, settings: Settings) -> Request | None:
    """The deployment an event asks for, or None (logged) when there is nothing to deploy."""
    if isinstance(event, dict) and "rollback_to" in event:
        arn = event["rollback_to"]
        if not isinstance(arn, str) or not arn.startswith("arn:"):
            log("WARNING", "rejected: rollback_to must be a model package ARN", event=event)
            return None
        return Request(arn, rollback=True)
    arn = approved_package(event, settings)
    return Request(arn) if arn else None


def approved_package(event: Any, settings: Settings) -> str | None:
    """The ARN of the package this event approves in our group, or None (logged) when there is nothing to deploy."""
    detail = event.get("detail") if isinstance(event, dict) else None
    if not isinstance(detail, dict) or (event.get("source"), event.get("detail-type")) != EVENT_KIND:
        log("WARNING", "rejected: not a SageMaker model package state change", event=event)
        return None
    group, arn, status = (detail.get(k) for k in ("ModelPackageGroupName", "ModelPackageArn", "ModelApprovalStatus"))
    if not all(isinstance(value, str) and value for value in (group, arn, status)):
        log("WARNING", "rejected: the detail lacks the package group, ARN or approval status", event=event)
        return None
    if group != settings.model_package_group:
        log("INFO", "ignored: another model package group", model_package=arn, group=group)
        return None
    if status != "Approved":
        log("INFO", f"ignored: the package is {status}, nothing changes", model_package=arn, status=status)
        return None
    return arn


def resource_name(endpoint_name: str, version: int) -> str:
    """The model and endpoint config name of a package version: <endpoint>-v<version>."""
    name = f"{endpoint_name}-v{version}"
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigurationError(f"{name!r} is longer than {MAX_NAME_LENGTH} characters: shorten ENDPOINT_NAME")
    return name


def versioned_name(endpoint_name: str) -> re.Pattern[str]:
    """Matches the names resource_name gives, capturing the version."""
    return re.compile(rf"{re.escape(endpoint_name)}-v(\d+)")


def newer_on_endpoint(endpoint: Mapping[str, Any] | None, endpoint_name: str, version: int) -> int | None:
    """The version the endpoint serves or is moving to (config <endpoint>-v<N>) when it is newer than `version`."""
    if endpoint is None:
        return None
    names = (endpoint["EndpointConfigName"], endpoint.get("PendingDeploymentSummary", {}).get("EndpointConfigName"))
    pattern = versioned_name(endpoint_name)
    versions = [int(match[1]) for name in names if name and (match := pattern.fullmatch(name))]
    return max(versions) if versions and max(versions) > version else None


def container_environment(package: Mapping[str, Any]) -> dict[str, str]:
    """FRAUD_THRESHOLD from the package's customer metadata `threshold`, when present."""
    threshold = package.get("CustomerMetadataProperties", {}).get("threshold")
    if threshold is None:
        return {}
    try:
        value = float(threshold)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise DeploymentError(f"{package['ModelPackageArn']}: threshold {threshold!r} is not a number in [0, 1]")
    return {"FRAUD_THRESHOLD": threshold}


def model_request(settings: Settings, name: str, package: Mapping[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = {"ModelPackageName": package["ModelPackageArn"]}
    environment = container_environment(package)
    if environment:
        container["Environment"] = environment
    return {
        "ModelName": name,
        "ExecutionRoleArn": settings.execution_role_arn,
        "PrimaryContainer": container,
        "Tags": [{"Key": "ModelPackageArn", "Value": package["ModelPackageArn"]}],
    }


def endpoint_config_request(settings: Settings, name: str, package_arn: str) -> dict[str, Any]:
    request: dict[str, Any] = {
        "EndpointConfigName": name,
        "ProductionVariants": [
            {
                "VariantName": VARIANT,
                "ModelName": name,
                "InstanceType": settings.instance_type,
                "InitialInstanceCount": settings.instance_count,
                "InitialVariantWeight": 1.0,
            }
        ],
        "Tags": [{"Key": "ModelPackageArn", "Value": package_arn}],
    }
    if settings.data_capture_percent:
        capture: dict[str, Any] = {
            "EnableCapture": True,
            "InitialSamplingPercentage": settings.data_capture_percent,
            "DestinationS3Uri": settings.data_capture_s3_uri,
            "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
            "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"], "JsonContentTypes": ["application/json"]},
        }
        if settings.kms_key_id:
            capture["KmsKeyId"] = settings.kms_key_id
        request["DataCaptureConfig"] = capture
    if settings.kms_key_id:
        request["KmsKeyId"] = settings.kms_key_id
    return request


def deployment_config(settings: Settings) -> dict[str, Any]:
    """Blue/green: the new fleet comes up beside the old one, which serves until the shift and the baking are over."""
    routing: dict[str, Any] = {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}
    if settings.traffic_routing == "CANARY":
        routing = {
            "Type": "CANARY",
            "CanarySize": {"Type": "INSTANCE_COUNT", "Value": 1},
            "WaitIntervalInSeconds": CANARY_WAIT_SECONDS,
        }
    config: dict[str, Any] = {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": routing,
            "TerminationWaitInSeconds": TERMINATION_WAIT_SECONDS,
            "MaximumExecutionTimeoutInSeconds": MAX_EXECUTION_SECONDS,
        }
    }
    if settings.rollback_alarms:
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": a} for a in settings.rollback_alarms]}
    return config


def _describe(call: Any, **kwargs: Any) -> dict[str, Any] | None:
    """A describe_* response, or None when SageMaker does not know the resource (it says ValidationException)."""
    try:
        return call(**kwargs)
    except ClientError as error:
        if error.response["Error"]["Code"] == "ValidationException":
            return None
        raise


def ensure_model(client: Any, settings: Settings, name: str, package: Mapping[str, Any]) -> None:
    if _describe(client.describe_model, ModelName=name):
        log("INFO", "model exists, reused", model=name)
        return
    client.create_model(**model_request(settings, name, package))
    log("INFO", "model created", model=name, model_package=package["ModelPackageArn"])


def ensure_endpoint_config(client: Any, settings: Settings, name: str, package_arn: str) -> None:
    if _describe(client.describe_endpoint_config, EndpointConfigName=name):
        log("INFO", "endpoint config exists, reused", endpoint_config=name)
        return
    client.create_endpoint_config(**endpoint_config_request(settings, name, package_arn))
    log("INFO", "endpoint config created", endpoint_config=name, data_capture=settings.data_capture_percent)


def _start(call: Any, **kwargs: Any) -> None:
    """CreateEndpoint or UpdateEndpoint; EndpointBusy when another deployment got to the endpoint first."""
    try:
        call(**kwargs)
    except ClientError as error:
        code, message = error.response["Error"]["Code"], error.response["Error"].get("Message", "")
        if code == "ValidationException" and any(busy in message for busy in BUSY_MESSAGES):
            raise EndpointBusy(f"endpoint {kwargs['EndpointName']}: {message}") from error
        raise


def roll_out(client: Any, settings: Settings, config_name: str, endpoint: Mapping[str, Any] | None) -> str:
    """Point the endpoint (DescribeEndpoint response, None: none yet) at config_name.

    'created', 'updated', or 'unchanged' when it is there or on its way.
    """
    if endpoint is None:
        _start(client.create_endpoint, EndpointName=settings.endpoint_name, EndpointConfigName=config_name)
        log("INFO", "endpoint creation started", endpoint=settings.endpoint_name, endpoint_config=config_name)
        return "created"
    status, current = endpoint["EndpointStatus"], endpoint["EndpointConfigName"]
    pending = endpoint.get("PendingDeploymentSummary", {}).get("EndpointConfigName")
    if status == "Failed":
        raise DeploymentError(
            f"endpoint {settings.endpoint_name} is Failed ({endpoint.get('FailureReason', 'no reason given')}) and "
            "serves nothing: delete it, then replay the approval"
        )
    if config_name in (current, pending):
        log("INFO", "endpoint already on this config", endpoint=settings.endpoint_name, endpoint_status=status)
        return "unchanged"
    if status != "InService":
        raise EndpointBusy(f"endpoint {settings.endpoint_name} is {status} (another deployment)")
    _start(
        client.update_endpoint,
        EndpointName=settings.endpoint_name,
        EndpointConfigName=config_name,
        DeploymentConfig=deployment_config(settings),
    )
    log("INFO", "blue/green update started", endpoint=settings.endpoint_name, old=current, new=config_name)
    return "updated"


def wait_for_endpoint(client: Any, endpoint_name: str, seconds: float) -> dict[str, Any]:
    """Poll until the endpoint settles (InService or Failed) or `seconds` pass; the last DescribeEndpoint response."""
    attempts = max(1, int(seconds // POLL_SECONDS))
    try:
        client.get_waiter("endpoint_in_service").wait(
            EndpointName=endpoint_name, WaiterConfig={"Delay": POLL_SECONDS, "MaxAttempts": attempts}
        )
    except WaiterError as error:
        if "EndpointStatus" not in (error.last_response or {}):
            raise
        return error.last_response
    return client.describe_endpoint(EndpointName=endpoint_name)


def clean_up(client: Any, settings: Settings, keep: str) -> list[str]:
    """Delete this endpoint's earlier endpoint configs, then models (named <endpoint>-v<N>), except `keep`."""
    ours = versioned_name(settings.endpoint_name)
    prefix = f"{settings.endpoint_name}-v"
    configs = client.get_paginator("list_endpoint_configs").paginate(NameContains=prefix)
    models = client.get_paginator("list_models").paginate(NameContains=prefix)
    stale_configs = sorted({c["EndpointConfigName"] for page in configs for c in page["EndpointConfigs"]})
    stale_models = sorted({m["ModelName"] for page in models for m in page["Models"]})
    deleted = []
    for name in (n for n in stale_configs if ours.fullmatch(n) and n != keep):
        client.delete_endpoint_config(EndpointConfigName=name)
        deleted.append(f"endpoint-config/{name}")
    for name in (n for n in stale_models if ours.fullmatch(n) and n != keep):
        client.delete_model(ModelName=name)
        deleted.append(f"model/{name}")
    if deleted:
        log("INFO", "superseded resources deleted", endpoint=settings.endpoint_name, deleted=deleted)
    return deleted


def deploy(client: Any, settings: Settings, request: Request, wait_seconds: float) -> dict[str, Any]:
    """Model, endpoint config, endpoint; then clean up once the endpoint serves the new config."""
    package_arn = request.package_arn
    package = client.describe_model_package(ModelPackageName=package_arn)
    status, group = package["ModelApprovalStatus"], package.get("ModelPackageGroupName")
    if status != "Approved" or group != settings.model_package_group:
        if request.rollback:
            raise DeploymentError(
                f"rollback_to {package_arn} refused: it is {status} in group {group}, "
                f"only Approved packages of {settings.model_package_group} are deployed"
            )
        log("INFO", "ignored: the package is no longer approved", model_package=package_arn)
        return {"status": "ignored", "model_package": package_arn}
    version = package["ModelPackageVersion"]
    name = resource_name(settings.endpoint_name, version)
    endpoint = _describe(client.describe_endpoint, EndpointName=settings.endpoint_name)
    newer = newer_on_endpoint(endpoint, settings.endpoint_name, version)
    if newer is not None and not request.rollback:
        log("INFO", "ignored: older than the version on the endpoint", model_package=package_arn, newer=newer)
        return {"status": "ignored_older", "model_package": package_arn, "endpoint_version": newer}
    ensure_model(client, settings, name, package)
    ensure_endpoint_config(client, settings, name, package_arn)
    action = roll_out(client, settings, name, endpoint)
    result = {"status": action, "endpoint": settings.endpoint_name, "endpoint_config": name}
    if action != "unchanged":
        endpoint = wait_for_endpoint(client, settings.endpoint_name, wait_seconds)
    status = endpoint["EndpointStatus"]
    if status not in ("InService", "Failed"):
        log("INFO", "deployment still running; clean-up left to the next invocation", **result, endpoint_status=status)
        return {**result, "status": "in_progress"}
    if action != "unchanged" and (status == "Failed" or endpoint["EndpointConfigName"] != name):
        reason = endpoint.get("FailureReason", "no reason given")
        raise DeploymentError(f"deployment of {name} to {settings.endpoint_name} failed or rolled back: {reason}")
    if status == "InService" and endpoint["EndpointConfigName"] == name:
        result["deleted"] = clean_up(client, settings, keep=name)
    log("INFO", "deployment done", **result)
    return result


def sagemaker_client() -> Any:
    return boto3.client("sagemaker", config=RETRY_CONFIG)


def sqs_client() -> Any:
    return boto3.client("sqs", config=RETRY_CONFIG)


def retry_later(client: Any, settings: Settings, event: Any, attempt: int, busy: EndpointBusy) -> dict[str, Any]:
    """Send the event back through the retry queue, delayed; EndpointBusy once MAX_ATTEMPTS retries are spent."""
    if attempt > MAX_ATTEMPTS:
        hours = MAX_ATTEMPTS * RETRY_DELAY_SECONDS / 3600
        raise EndpointBusy(f"{busy}; still busy after {MAX_ATTEMPTS} retries over {hours:g} hours, giving up")
    client.send_message(
        QueueUrl=settings.retry_queue_url,
        MessageBody=json.dumps({"event": event, "attempt": attempt}),
        DelaySeconds=RETRY_DELAY_SECONDS,
    )
    log("INFO", "endpoint busy: retry queued", reason=str(busy), attempt=attempt, delay_seconds=RETRY_DELAY_SECONDS)
    return {"status": "queued", "endpoint": settings.endpoint_name, "attempt": attempt}


def wait_budget(context: Any) -> float:
    """Seconds this invocation may spend waiting for the endpoint."""
    if context is None:
        return WAIT_WITHOUT_CONTEXT_SECONDS
    return max(0.0, context.get_remaining_time_in_millis() / 1000 - SAFETY_MARGIN_SECONDS)


def handler(event: Any, context: Any) -> dict[str, Any]:
    """Lambda entry point: EventBridge events, direct rollback_to invocations and retry-queue (SQS) records.

    Raises on failure, so Lambda retries (or SQS redelivers) and the error shows in its metrics; a busy endpoint is
    not a failure but a retry queued for later.
    """
    settings = Settings.from_env(os.environ)
    event, attempt = unwrap(event)
    request = requested(event, settings)
    if request is None:
        return {"status": "ignored"}
    fields = {"model_package": request.package_arn, "rollback": request.rollback, "attempt": attempt}
    log("INFO", "deploying model package", endpoint=settings.endpoint_name, **fields)
    try:
        try:
            return deploy(sagemaker_client(), settings, request, wait_budget(context))
        except EndpointBusy as busy:
            return retry_later(sqs_client(), settings, event, attempt + 1, busy)
    except Exception as error:
        log("ERROR", "deployment failed", **fields, error=f"{type(error).__name__}: {error}")
        raise
