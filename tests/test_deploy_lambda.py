"""deploy_lambda/handler.py: moto for the create path and the retry queue (SQS), botocore's Stubber where moto
stops (moto has no UpdateEndpoint, so the update path and busy endpoints are stubbed)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

import handler

REGION = "us-east-1"
ACCOUNT = "123456789012"
GROUP = "fraud-detection-models"
ENDPOINT = "fraud-detection"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/sagemaker-execution"
CAPTURE = "s3://fraud-bucket/fraud-detection/data-capture"
ALARMS = ("fraud-detection-5xx", "fraud-detection-latency")
NOW = datetime(2026, 1, 1, tzinfo=UTC)
ENV = {
    "MODEL_PACKAGE_GROUP": GROUP,
    "ENDPOINT_NAME": ENDPOINT,
    "EXECUTION_ROLE_ARN": ROLE,
    "INSTANCE_TYPE": "ml.m5.large",
    "INSTANCE_COUNT": "1",
    "DATA_CAPTURE_S3_URI": CAPTURE,
    "ROLLBACK_ALARMS": ",".join(ALARMS),
    "RETRY_QUEUE_URL": f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/fraud-detection-deploy-RetryQueue",
}
WRITES = {"CreateModel", "CreateEndpointConfig", "CreateEndpoint", "UpdateEndpoint", "DeleteModel"}


def package_arn(version: int, group: str = GROUP) -> str:
    return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:model-package/{group}/{version}"


def state_change(version: int = 1, status: str = "Approved", group: str = GROUP) -> dict[str, Any]:
    """An EventBridge "SageMaker Model Package State Change" event, as SageMaker sends it."""
    return {
        "version": "0",
        "id": "844e2571-85d4-695f-b930-0153b71dcb42",
        "detail-type": "SageMaker Model Package State Change",
        "source": "aws.sagemaker",
        "account": ACCOUNT,
        "time": "2026-01-01T12:00:00Z",
        "region": REGION,
        "resources": [package_arn(version, group)],
        "detail": {
            "ModelPackageGroupName": group,
            "ModelPackageVersion": version,
            "ModelPackageArn": package_arn(version, group),
            "CreationTime": 1767268800000,
            "ModelApprovalStatus": status,
            "ModelPackageStatus": "Completed",
        },
    }


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The function's environment, and fake credentials so nothing can reach AWS."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


# ---- moto: the retry queue, the create path and replays -------------------------------------------------------------


@dataclass
class RetryQueue:
    """moto's SQS queue behind RETRY_QUEUE_URL, and the SendMessage requests the handler made to it."""

    url: str
    sent: list[dict[str, Any]] = field(default_factory=list)

    def delayed(self) -> int:
        """Messages SQS holds back for their delay (moto honours DelaySeconds)."""
        attributes = boto3.client("sqs", region_name=REGION).get_queue_attributes(
            QueueUrl=self.url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessagesDelayed"])


def sqs_event(body: Any) -> dict[str, Any]:
    """What the event source mapping passes to the function for one message of the retry queue."""
    return {
        "Records": [
            {
                "messageId": "059f36b4-87a3-44ab-83d2-661975830a7d",
                "receiptHandle": "AQEBwJnKyrHigUMZj6rYigCgxlaS3SLy0a",
                "body": body if isinstance(body, str) else json.dumps(body),
                "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": "1767268800000"},
                "messageAttributes": {},
                "md5OfBody": "e4e68fb7bd0e697a0ae8f1bb342846b3",
                "eventSource": "aws:sqs",
                "eventSourceARN": f"arn:aws:sqs:{REGION}:{ACCOUNT}:fraud-detection-deploy-RetryQueue",
                "awsRegion": REGION,
            }
        ]
    }


@pytest.fixture
def retry_queue(env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[RetryQueue]:
    """moto (every AWS call of the test) with the retry queue; the handler's SendMessage requests are recorded."""
    with mock_aws():
        queue = RetryQueue(boto3.client("sqs", region_name=REGION).create_queue(QueueName="retry")["QueueUrl"])
        monkeypatch.setenv("RETRY_QUEUE_URL", queue.url)

        def recording_client() -> Any:
            client = boto3.client("sqs", config=handler.RETRY_CONFIG)
            client.meta.events.register(
                "provide-client-params.sqs.SendMessage", lambda params, **_: queue.sent.append(params)
            )
            return client

        monkeypatch.setattr(handler, "sqs_client", recording_client)
        yield queue


@dataclass
class Registry:
    """moto's SageMaker, and the operations the handler called on it."""

    client: Any
    calls: list[str] = field(default_factory=list)


@pytest.fixture
def registry(retry_queue: RetryQueue, monkeypatch: pytest.MonkeyPatch) -> Registry:
    """moto with the group and its approved version 1 (threshold 0.37); the handler's calls are recorded."""
    moto = Registry(boto3.client("sagemaker", region_name=REGION))
    moto.client.create_model_package_group(ModelPackageGroupName=GROUP)
    register(moto.client, "Approved", {"threshold": "0.37"})

    def recording_client() -> Any:
        client = boto3.client("sagemaker", config=handler.RETRY_CONFIG)
        client.meta.events.register("before-call.sagemaker.*", lambda model, **_: moto.calls.append(model.name))
        return client

    monkeypatch.setattr(handler, "sagemaker_client", recording_client)
    return moto


def register(client: Any, status: str, metadata: dict[str, str] | None = None) -> str:
    response = client.create_model_package(
        ModelPackageGroupName=GROUP,
        ModelApprovalStatus=status,
        CustomerMetadataProperties=metadata or {},
        InferenceSpecification={
            "Containers": [{"Image": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/fraud:1", "ModelDataUrl": "s3://b/m"}],
            "SupportedContentTypes": ["text/csv"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
    )
    return response["ModelPackageArn"]


def test_approval_creates_model_config_with_capture_and_endpoint(registry: Registry) -> None:
    result = handler.handler(state_change(1), None)

    assert result == {"status": "created", "endpoint": ENDPOINT, "endpoint_config": f"{ENDPOINT}-v1", "deleted": []}
    model = registry.client.describe_model(ModelName=f"{ENDPOINT}-v1")
    assert model["PrimaryContainer"] == {"ModelPackageName": package_arn(1), "Environment": {"FRAUD_THRESHOLD": "0.37"}}
    assert model["ExecutionRoleArn"] == ROLE
    config = registry.client.describe_endpoint_config(EndpointConfigName=f"{ENDPOINT}-v1")
    assert config["ProductionVariants"][0]["ModelName"] == f"{ENDPOINT}-v1"
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.m5.large"
    capture = config["DataCaptureConfig"]
    assert capture["EnableCapture"] is True and capture["InitialSamplingPercentage"] == 100
    assert capture["DestinationS3Uri"] == CAPTURE
    assert capture["CaptureOptions"] == [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]
    endpoint = registry.client.describe_endpoint(EndpointName=ENDPOINT)
    assert (endpoint["EndpointConfigName"], endpoint["EndpointStatus"]) == (f"{ENDPOINT}-v1", "InService")


def test_replayed_event_deploys_once(registry: Registry) -> None:
    handler.handler(state_change(1), None)
    registry.calls.clear()

    result = handler.handler(state_change(1), None)

    assert result["status"] == "unchanged"
    assert not WRITES & set(registry.calls), registry.calls
    assert [m["ModelName"] for m in registry.client.list_models()["Models"]] == [f"{ENDPOINT}-v1"]
    configs = registry.client.list_endpoint_configs()["EndpointConfigs"]
    assert [c["EndpointConfigName"] for c in configs] == [f"{ENDPOINT}-v1"]


def test_package_without_threshold_gets_no_environment(registry: Registry) -> None:
    register(registry.client, "Approved")

    handler.handler(state_change(2), None)

    assert registry.client.describe_model(ModelName=f"{ENDPOINT}-v2")["PrimaryContainer"] == {
        "ModelPackageName": package_arn(2)
    }


def test_package_rejected_since_the_event_is_not_deployed(registry: Registry) -> None:
    register(registry.client, "Rejected")

    assert handler.handler(state_change(2), None)["status"] == "ignored"
    assert registry.calls == ["DescribeModelPackage"]


def test_invalid_threshold_fails_before_anything_is_created(registry: Registry) -> None:
    register(registry.client, "Approved", {"threshold": "high"})

    with pytest.raises(handler.DeploymentError, match="threshold 'high'"):
        handler.handler(state_change(2), None)
    assert not WRITES & set(registry.calls)


# ---- events that change nothing --------------------------------------------------------------------------------------


def _without(key: str) -> dict[str, Any]:
    event = state_change()
    del event["detail"][key]
    return event


IGNORED = {
    "rejected": state_change(status="Rejected"),
    "pending": state_change(status="PendingManualApproval"),
    "other group": state_change(group="another-team-models"),
    "other source": {**state_change(), "source": "my.app"},
    "other detail-type": {**state_change(), "detail-type": "SageMaker Endpoint State Change"},
    "no detail": {k: v for k, v in state_change().items() if k != "detail"},
    "no arn": _without("ModelPackageArn"),
    "no group": _without("ModelPackageGroupName"),
    "no status": _without("ModelApprovalStatus"),
    "empty": {},
    "not a mapping": ["aws.sagemaker"],
    "none": None,
    "rollback_to not an ARN": {"rollback_to": "fraud-detection-models/2"},
    "rollback_to not a string": {"rollback_to": 2},
    "queued rejection": sqs_event({"event": state_change(status="Rejected"), "attempt": 3}),
    "queued body not JSON": sqs_event("deploy version 2 please"),
    "queued body not a retry": sqs_event({"version": 2}),
}


@pytest.mark.parametrize("event", IGNORED.values(), ids=IGNORED.keys())
def test_ignored_events_make_no_aws_call(
    event: Any, env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    def no_client(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("an AWS client was created for an event that changes nothing")

    monkeypatch.setattr(handler.boto3, "client", no_client)
    monkeypatch.setattr(handler.boto3, "Session", no_client)

    assert handler.handler(event, None) == {"status": "ignored"}

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 1 and lines[0]["level"] in ("INFO", "WARNING")
    assert lines[0]["message"].startswith(("ignored", "rejected"))


def nested(depth: int) -> list[Any]:
    """A list inside a list ... `depth` levels deep."""
    event: list[Any] = []
    for _ in range(depth):
        event = [event]
    return event


UNBOUNDED = {
    "5 MB event": {"source": "my.app", "detail": {"payload": "A" * 5_000_000}},
    "5 MB group name": state_change(group="g" * 5_000_000),
    "5 MB status": state_change(status="S" * 5_000_000),
    "5 MB rollback_to": {"rollback_to": "r" * 5_000_000},
    "control characters": {"source": 'x"\n{"level": "ERROR"}\r\u2028\x1b[31m' * 200_000},
    "deeply nested event": nested(5_000),
    "deeply nested queued body": sqs_event("[" * 100_000 + "]" * 100_000),
}


@pytest.mark.parametrize("event", UNBOUNDED.values(), ids=UNBOUNDED.keys())
def test_rejected_events_are_logged_as_one_bounded_line(event: Any, env: None, capsys: pytest.CaptureFixture) -> None:
    assert handler.handler(event, None) == {"status": "ignored"}

    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.isascii()
    assert len(out) < 20 * handler.LOG_FIELD_CHARS
    line = json.loads(out)
    assert line["message"].startswith(("ignored", "rejected"))
    assert any(re.search(r"\.\.\. \(\d+ more characters\)$|nested too deeply", str(value)) for value in line.values())


# ---- configuration ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ENDPOINT_NAME": ""}, "missing required environment variable\\(s\\): ENDPOINT_NAME"),
        ({"EXECUTION_ROLE_ARN": None, "DATA_CAPTURE_S3_URI": None}, "EXECUTION_ROLE_ARN, DATA_CAPTURE_S3_URI"),
        ({"INSTANCE_COUNT": "two"}, "INSTANCE_COUNT: 'two' is not an integer"),
        ({"DATA_CAPTURE_PERCENT": "101"}, "DATA_CAPTURE_PERCENT: 101 is outside 0..100"),
        ({"DATA_CAPTURE_S3_URI": "/tmp/capture"}, "not an s3:// URI"),
        ({"TRAFFIC_ROUTING": "LINEAR"}, "TRAFFIC_ROUTING: 'LINEAR'"),
        ({"TRAFFIC_ROUTING": "CANARY"}, "CANARY needs INSTANCE_COUNT of 2"),
        ({"ROLLBACK_ALARMS": ",".join(f"a{i}" for i in range(11))}, "11 alarms"),
    ],
)
def test_bad_configuration_is_a_clear_error(changes: dict[str, str | None], message: str) -> None:
    environ = {k: v for k, v in {**ENV, **changes}.items() if v is not None}

    with pytest.raises(handler.ConfigurationError, match=message):
        handler.Settings.from_env(environ)


def test_settings_defaults_and_lists() -> None:
    settings = handler.Settings.from_env({**ENV, "ROLLBACK_ALARMS": " a, ,b ", "KMS_KEY_ID": ""})

    assert settings.rollback_alarms == ("a", "b")
    assert (settings.data_capture_percent, settings.kms_key_id, settings.traffic_routing) == (100, "", "ALL_AT_ONCE")


def test_canary_routing_and_no_alarms() -> None:
    settings = handler.Settings.from_env(
        {**ENV, "INSTANCE_COUNT": "3", "TRAFFIC_ROUTING": "CANARY", "ROLLBACK_ALARMS": ""}
    )

    config = handler.deployment_config(settings)

    assert config["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"] == {
        "Type": "CANARY",
        "CanarySize": {"Type": "INSTANCE_COUNT", "Value": 1},
        "WaitIntervalInSeconds": 300,
    }
    assert "AutoRollbackConfiguration" not in config


def test_kms_key_and_capture_off() -> None:
    key = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    with_key = handler.Settings.from_env({**ENV, "KMS_KEY_ID": key})
    capture_off = handler.Settings.from_env({**ENV, "DATA_CAPTURE_PERCENT": "0"})

    request = handler.endpoint_config_request(with_key, "n-v1", package_arn(1))
    assert request["KmsKeyId"] == key and request["DataCaptureConfig"]["KmsKeyId"] == key
    assert "DataCaptureConfig" not in handler.endpoint_config_request(capture_off, "n-v1", package_arn(1))


def test_more_than_one_queued_record_is_a_configuration_error(env: None) -> None:
    event = sqs_event({"event": state_change(2), "attempt": 1})
    event["Records"] *= 2

    with pytest.raises(
        handler.ConfigurationError, match="2 SQS records in one event: the event source needs BatchSize 1"
    ):
        handler.handler(event, None)


def test_long_endpoint_names_are_refused() -> None:
    with pytest.raises(handler.ConfigurationError, match="shorten ENDPOINT_NAME"):
        handler.resource_name("e" * 60, 1234)


def test_client_retries_throttling_with_backoff(env: None) -> None:
    retries = handler.sagemaker_client().meta.config.retries

    assert retries["mode"] == "standard" and retries["total_max_attempts"] == 6


def test_wait_budget_leaves_a_margin_before_the_lambda_timeout() -> None:
    class Context:
        def get_remaining_time_in_millis(self) -> int:
            return 900_000

    assert handler.wait_budget(Context()) == 840
    assert handler.wait_budget(None) == handler.WAIT_WITHOUT_CONTEXT_SECONDS


# ---- Stubber: the update path ---------------------------------------------------------------------------------------


def _arn(kind: str, name: str) -> str:
    return f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:{kind}/{name}"


def described_package(version: int, status: str = "Approved") -> dict[str, Any]:
    return {
        "ModelPackageName": GROUP,
        "ModelPackageGroupName": GROUP,
        "ModelPackageVersion": version,
        "ModelPackageArn": package_arn(version),
        "CreationTime": NOW,
        "ModelPackageStatus": "Completed",
        "ModelPackageStatusDetails": {"ValidationStatuses": []},
        "ModelApprovalStatus": status,
        "CustomerMetadataProperties": {"threshold": "0.42"},
    }


def described_endpoint(config: str, status: str = "InService", **extra: Any) -> dict[str, Any]:
    return {
        "EndpointName": ENDPOINT,
        "EndpointArn": _arn("endpoint", ENDPOINT),
        "EndpointConfigName": config,
        "EndpointStatus": status,
        "CreationTime": NOW,
        "LastModifiedTime": NOW,
        **extra,
    }


class Sage:
    """A stubbed SageMaker client with helpers for the expected calls, in order."""

    def __init__(self) -> None:
        self.client = boto3.client("sagemaker", region_name=REGION, config=handler.RETRY_CONFIG)
        self.stub = Stubber(self.client)

    def __enter__(self) -> Sage:
        self.stub.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stub.deactivate()

    def expect(self, operation: str, response: dict[str, Any], **params: Any) -> None:
        self.stub.add_response(operation, response, params)

    def missing(self, operation: str, **params: Any) -> None:
        self.stub.add_client_error(operation, "ValidationException", "Could not find it", expected_params=params)

    def package(self, version: int, status: str = "Approved", **changes: Any) -> None:
        described = {**described_package(version, status), **changes}
        self.expect("describe_model_package", described, ModelPackageName=package_arn(version))

    def creates(self, version: int) -> None:
        """A model and an endpoint config that do not exist yet and get created."""
        name = f"{ENDPOINT}-v{version}"
        self.missing("describe_model", ModelName=name)
        self.expect(
            "create_model",
            {"ModelArn": _arn("model", name)},
            ModelName=name,
            ExecutionRoleArn=ROLE,
            PrimaryContainer={"ModelPackageName": package_arn(version), "Environment": {"FRAUD_THRESHOLD": "0.42"}},
            Tags=[{"Key": "ModelPackageArn", "Value": package_arn(version)}],
        )
        self.missing("describe_endpoint_config", EndpointConfigName=name)
        self.expect(
            "create_endpoint_config",
            {"EndpointConfigArn": _arn("endpoint-config", name)},
            EndpointConfigName=name,
            ProductionVariants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": name,
                    "InstanceType": "ml.m5.large",
                    "InitialInstanceCount": 1,
                    "InitialVariantWeight": 1.0,
                }
            ],
            Tags=[{"Key": "ModelPackageArn", "Value": package_arn(version)}],
            DataCaptureConfig={
                "EnableCapture": True,
                "InitialSamplingPercentage": 100,
                "DestinationS3Uri": CAPTURE,
                "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"], "JsonContentTypes": ["application/json"]},
            },
        )

    def exists(self, version: int) -> None:
        """A model and an endpoint config that exist already."""
        name = f"{ENDPOINT}-v{version}"
        model = {"ModelName": name, "ModelArn": _arn("model", name), "CreationTime": NOW}
        self.expect("describe_model", model, ModelName=name)
        config = {
            "EndpointConfigName": name,
            "EndpointConfigArn": _arn("endpoint-config", name),
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": name}],
            "CreationTime": NOW,
        }
        self.expect("describe_endpoint_config", config, EndpointConfigName=name)

    def update(self, version: int) -> None:
        self.expect("update_endpoint", {"EndpointArn": _arn("endpoint", ENDPOINT)}, **self.update_request(version))

    def update_request(self, version: int) -> dict[str, Any]:
        return {
            "EndpointName": ENDPOINT,
            "EndpointConfigName": f"{ENDPOINT}-v{version}",
            "DeploymentConfig": {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
                    "TerminationWaitInSeconds": 300,
                    "MaximumExecutionTimeoutInSeconds": 3600,
                },
                "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": a} for a in ALARMS]},
            },
        }

    def endpoint(self, config: str, status: str = "InService", **extra: Any) -> None:
        self.expect("describe_endpoint", described_endpoint(config, status, **extra), EndpointName=ENDPOINT)

    def listing(self, *names: str) -> None:
        configs = [
            {"EndpointConfigName": n, "EndpointConfigArn": _arn("endpoint-config", n), "CreationTime": NOW}
            for n in names
        ]
        models = [{"ModelName": n, "ModelArn": _arn("model", n), "CreationTime": NOW} for n in names]
        self.expect("list_endpoint_configs", {"EndpointConfigs": configs}, NameContains=f"{ENDPOINT}-v")
        self.expect("list_models", {"Models": models}, NameContains=f"{ENDPOINT}-v")

    def deleted(self, *versions: int) -> None:
        for version in versions:
            self.expect("delete_endpoint_config", {}, EndpointConfigName=f"{ENDPOINT}-v{version}")
        for version in versions:
            self.expect("delete_model", {}, ModelName=f"{ENDPOINT}-v{version}")


@pytest.fixture
def sage(retry_queue: RetryQueue, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sage]:
    """The stubbed SageMaker client as the handler's; SQS is moto's (the retry_queue fixture)."""
    with Sage() as stubbed:
        monkeypatch.setattr(handler, "sagemaker_client", lambda: stubbed.client)
        yield stubbed
        stubbed.stub.assert_no_pending_responses()


def test_update_is_blue_green_with_rollback_alarms_then_cleans_up(sage: Sage) -> None:
    sage.package(3)
    sage.endpoint(f"{ENDPOINT}-v2")  # serving v2
    sage.creates(3)
    sage.update(3)
    sage.endpoint(f"{ENDPOINT}-v3")  # the waiter: InService on v3
    sage.endpoint(f"{ENDPOINT}-v3")
    sage.listing(*(f"{ENDPOINT}-v{v}" for v in (1, 2, 3)))
    sage.deleted(1, 2)

    result = handler.handler(state_change(3), None)

    assert result["status"] == "updated"
    assert result["deleted"] == [
        "endpoint-config/fraud-detection-v1",
        "endpoint-config/fraud-detection-v2",
        "model/fraud-detection-v1",
        "model/fraud-detection-v2",
    ]


def test_replay_cleans_up_and_spares_resources_not_named_by_this_handler(sage: Sage) -> None:
    sage.package(3)
    sage.endpoint(f"{ENDPOINT}-v3")  # already serving v3: a replay
    sage.exists(3)
    sage.listing(f"{ENDPOINT}-v3", f"{ENDPOINT}-v2-manual", f"{ENDPOINT}-vnext", f"other-{ENDPOINT}-v1")

    assert handler.handler(state_change(3), None) == {
        "status": "unchanged",
        "endpoint": ENDPOINT,
        "endpoint_config": f"{ENDPOINT}-v3",
        "deleted": [],
    }


def test_rolled_back_update_raises_and_keeps_the_old_version(sage: Sage) -> None:
    sage.package(3)
    sage.endpoint(f"{ENDPOINT}-v2")
    sage.creates(3)
    sage.update(3)
    rolled_back = {"FailureReason": "alarm fraud-detection-5xx in ALARM"}
    sage.endpoint(f"{ENDPOINT}-v2", **rolled_back)  # the waiter: InService again, but on v2
    sage.endpoint(f"{ENDPOINT}-v2", **rolled_back)

    with pytest.raises(handler.DeploymentError, match="failed or rolled back: alarm fraud-detection-5xx"):
        handler.handler(state_change(3), None)


def test_update_outlasting_the_invocation_leaves_cleanup_for_later(sage: Sage) -> None:
    sage.package(3)
    sage.endpoint(f"{ENDPOINT}-v2")
    sage.creates(3)
    sage.update(3)
    sage.endpoint(f"{ENDPOINT}-v2", "Updating")  # the only poll the budget allows

    settings = handler.Settings.from_env(ENV)
    result = handler.deploy(sage.client, settings, handler.Request(package_arn(3)), wait_seconds=0)

    assert result["status"] == "in_progress"


def test_replay_during_its_own_update_does_not_update_again(sage: Sage) -> None:
    sage.package(3)
    sage.endpoint(
        f"{ENDPOINT}-v2",
        "Updating",
        PendingDeploymentSummary={"EndpointConfigName": f"{ENDPOINT}-v3", "StartTime": NOW},
    )
    sage.exists(3)

    assert handler.handler(state_change(3), None)["status"] == "in_progress"


def test_failed_endpoint_is_reported_not_touched(sage: Sage) -> None:
    sage.package(3)
    sage.endpoint(f"{ENDPOINT}-v2", "Failed", FailureReason="image not found")
    sage.creates(3)

    with pytest.raises(handler.DeploymentError, match="Failed \\(image not found\\)"):
        handler.handler(state_change(3), None)


def test_aws_error_propagates_and_is_logged(sage: Sage, capsys: pytest.CaptureFixture) -> None:
    sage.package(3)
    sage.endpoint(f"{ENDPOINT}-v2")
    sage.missing("describe_model", ModelName=f"{ENDPOINT}-v3")
    sage.stub.add_client_error("create_model", "AccessDeniedException", "not authorized to perform CreateModel")

    with pytest.raises(handler.ClientError, match="AccessDenied"):
        handler.handler(state_change(3), None)

    last = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last["level"] == "ERROR" and "AccessDeniedException" in last["error"]


# ---- late and repeated events: never roll back by accident; rollback_to on purpose ----------------------------------


def test_older_approval_is_ignored_while_a_newer_version_serves(sage: Sage) -> None:
    sage.package(2)
    sage.endpoint(f"{ENDPOINT}-v3")  # nothing after this: no model, no config, no update

    result = handler.handler(state_change(2), None)

    assert result == {"status": "ignored_older", "model_package": package_arn(2), "endpoint_version": 3}


def test_older_approval_is_ignored_while_a_newer_version_is_being_deployed(sage: Sage, retry_queue: RetryQueue) -> None:
    sage.package(2)
    sage.endpoint(
        f"{ENDPOINT}-v1",
        "Updating",
        PendingDeploymentSummary={"EndpointConfigName": f"{ENDPOINT}-v3", "StartTime": NOW},
    )

    assert handler.handler(state_change(2), None)["status"] == "ignored_older"
    assert retry_queue.sent == []  # not queued either: it would only be ignored later


def test_queued_older_approval_is_ignored_once_a_newer_version_serves(sage: Sage) -> None:
    sage.package(2)
    sage.endpoint(f"{ENDPOINT}-v3")

    result = handler.handler(sqs_event({"event": state_change(2), "attempt": 4}), None)

    assert result["status"] == "ignored_older"


def test_rollback_to_deploys_an_older_approved_version(sage: Sage) -> None:
    sage.package(2)
    sage.endpoint(f"{ENDPOINT}-v3")  # serving v3
    sage.creates(2)  # cleaned up when v3 went live
    sage.update(2)
    sage.endpoint(f"{ENDPOINT}-v2")
    sage.endpoint(f"{ENDPOINT}-v2")
    sage.listing(f"{ENDPOINT}-v2", f"{ENDPOINT}-v3")
    sage.deleted(3)

    result = handler.handler({"rollback_to": package_arn(2)}, None)

    assert result["status"] == "updated" and result["endpoint_config"] == f"{ENDPOINT}-v2"
    assert result["deleted"] == ["endpoint-config/fraud-detection-v3", "model/fraud-detection-v3"]


@pytest.mark.parametrize(
    ("status", "changes", "message"),
    [
        ("Rejected", {}, "it is Rejected in group fraud-detection-models"),
        ("PendingManualApproval", {}, "it is PendingManualApproval"),
        ("Approved", {"ModelPackageGroupName": "another-team-models"}, "it is Approved in group another-team-models"),
    ],
)
def test_rollback_to_a_package_that_is_not_approved_in_the_group_is_refused(
    sage: Sage, status: str, changes: dict[str, str], message: str
) -> None:
    sage.package(2, status, **changes)  # nothing after this

    with pytest.raises(handler.DeploymentError, match=f"rollback_to {package_arn(2)} refused: {message}"):
        handler.handler({"rollback_to": package_arn(2)}, None)


# ---- a busy endpoint: the approval waits in the retry queue (moto's SQS) --------------------------------------------


def being_updated_to(version: int) -> dict[str, Any]:
    return {"PendingDeploymentSummary": {"EndpointConfigName": f"{ENDPOINT}-v{version}", "StartTime": NOW}}


def test_busy_endpoint_queues_the_approval_with_a_delay(sage: Sage, retry_queue: RetryQueue) -> None:
    sage.package(3)
    sage.endpoint(f"{ENDPOINT}-v1", "Updating", **being_updated_to(2))  # another approval's deployment
    sage.creates(3)

    result = handler.handler(state_change(3), None)

    assert result == {"status": "queued", "endpoint": ENDPOINT, "attempt": 1}
    (sent,) = retry_queue.sent
    assert sent["QueueUrl"] == retry_queue.url and sent["DelaySeconds"] == 900
    assert json.loads(sent["MessageBody"]) == {"event": state_change(3), "attempt": 1}
    assert retry_queue.delayed() == 1


def test_queued_approval_deploys_once_the_endpoint_is_free(sage: Sage, retry_queue: RetryQueue) -> None:
    sage.package(3)
    sage.endpoint(f"{ENDPOINT}-v2")  # the other deployment is done: InService on v2
    sage.exists(3)  # created by the first attempt
    sage.update(3)
    sage.endpoint(f"{ENDPOINT}-v3")
    sage.endpoint(f"{ENDPOINT}-v3")
    sage.listing(f"{ENDPOINT}-v2", f"{ENDPOINT}-v3")
    sage.deleted(2)

    result = handler.handler(sqs_event({"event": state_change(3), "attempt": 1}), None)

    assert result["status"] == "updated"
    assert retry_queue.sent == []


def test_queued_approval_still_busy_is_queued_again_with_the_next_attempt(sage: Sage, retry_queue: RetryQueue) -> None:
    sage.package(3)
    sage.endpoint(f"{ENDPOINT}-v1", "Updating", **being_updated_to(2))
    sage.exists(3)

    assert handler.handler(sqs_event({"event": state_change(3), "attempt": 5}), None)["attempt"] == 6
    (sent,) = retry_queue.sent
    assert json.loads(sent["MessageBody"]) == {"event": state_change(3), "attempt": 6}


def test_queued_rollback_stays_a_rollback(sage: Sage, retry_queue: RetryQueue) -> None:
    sage.package(2)
    sage.endpoint(f"{ENDPOINT}-v3", "Updating", **being_updated_to(4))
    sage.exists(2)

    assert handler.handler(sqs_event({"event": {"rollback_to": package_arn(2)}, "attempt": 1}), None)["attempt"] == 2
    assert json.loads(retry_queue.sent[0]["MessageBody"])["event"] == {"rollback_to": package_arn(2)}


def test_retries_exhausted_raise_so_the_message_is_dead_lettered(sage: Sage, retry_queue: RetryQueue) -> None:
    sage.package(3)
    sage.endpoint(f"{ENDPOINT}-v1", "Updating", **being_updated_to(2))
    sage.exists(3)
    last = sqs_event({"event": state_change(3), "attempt": handler.MAX_ATTEMPTS})

    with pytest.raises(handler.EndpointBusy, match="still busy after 24 retries over 6 hours, giving up"):
        handler.handler(last, None)
    assert retry_queue.sent == []


@pytest.mark.parametrize(
    ("operation", "message"),
    [
        ("update_endpoint", f'Cannot update in-progress endpoint "{_arn("endpoint", ENDPOINT)}".'),
        ("create_endpoint", f'Cannot create already existing endpoint "{_arn("endpoint", ENDPOINT)}".'),
    ],
)
def test_losing_a_race_to_another_deployment_is_busy(
    sage: Sage, retry_queue: RetryQueue, operation: str, message: str
) -> None:
    """Without reserved concurrency two approvals may both see the endpoint free; SageMaker refuses the second."""
    sage.package(3)
    if operation == "update_endpoint":
        sage.endpoint(f"{ENDPOINT}-v2")
        sage.creates(3)
        sage.stub.add_client_error(operation, "ValidationException", message, 400, sage.update_request(3))
    else:
        sage.missing("describe_endpoint", EndpointName=ENDPOINT)
        sage.creates(3)
        sage.stub.add_client_error(operation, "ValidationException", message)

    assert handler.handler(state_change(3), None)["status"] == "queued"
    assert json.loads(retry_queue.sent[0]["MessageBody"])["attempt"] == 1


def test_other_validation_errors_are_not_mistaken_for_busy(sage: Sage, retry_queue: RetryQueue) -> None:
    sage.package(3)
    sage.endpoint(f"{ENDPOINT}-v2")
    sage.creates(3)
    sage.stub.add_client_error("update_endpoint", "ValidationException", "Could not find model package.")

    with pytest.raises(handler.ClientError, match="Could not find model package"):
        handler.handler(state_change(3), None)
    assert retry_queue.sent == []
