"""deploy_lambda/template.yaml (least privilege, the rule's pattern, cfn-lint) and deploy_infra.py (against moto)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.stub import Stubber
from moto import mock_aws

import deploy_infra
import handler
from pipelines.config import load

TEMPLATE = Path(deploy_infra.TEMPLATE)
REGION = "us-east-1"
GROUP = "fraud-detection-models"
ROLE = "arn:aws:iam::123456789012:role/sagemaker-execution"
BUCKET = "fraud-artifacts"


class CloudFormationLoader(yaml.SafeLoader):
    """YAML with the short forms of intrinsic functions: !Ref x → {'Ref': x}, !Sub s → {'Fn::Sub': s}, ..."""


def _intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    if suffix == "Ref":
        return {"Ref": value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CloudFormationLoader.add_multi_constructor("!", _intrinsic)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text(), Loader=CloudFormationLoader)


def resources_of(template: dict[str, Any], kind: str) -> dict[str, Any]:
    return {name: r for name, r in template["Resources"].items() if r["Type"] == kind}


def statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    """Every statement of the function's role, both branches of conditional ones included."""
    (role,) = resources_of(template, "AWS::IAM::Role").values()
    found = []
    for policy in role["Properties"]["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            branches = statement["Fn::If"][1:] if "Fn::If" in statement else [statement]
            found += [b for b in branches if b != {"Ref": "AWS::NoValue"}]
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_template_has_the_function_its_role_the_rule_and_the_permission(template: dict[str, Any]) -> None:
    kinds = {r["Type"] for r in template["Resources"].values()}

    assert {"AWS::Lambda::Function", "AWS::IAM::Role", "AWS::Events::Rule", "AWS::Lambda::Permission"} <= kinds
    (function,) = resources_of(template, "AWS::Lambda::Function").values()
    assert function["Properties"]["Handler"] == "handler.handler"
    assert function["Properties"]["Runtime"] in ("python3.11", "python3.12")
    (permission,) = resources_of(template, "AWS::Lambda::Permission").values()
    assert permission["Properties"]["Principal"] == "events.amazonaws.com"
    assert permission["Properties"]["SourceArn"] == {"Fn::GetAtt": ["ApprovalRule", "Arn"]}


def test_function_gets_every_variable_the_handler_reads(template: dict[str, Any]) -> None:
    (function,) = resources_of(template, "AWS::Lambda::Function").values()
    variables = function["Properties"]["Environment"]["Variables"]

    assert set(handler.REQUIRED) <= set(variables)
    assert {"KMS_KEY_ID", "ROLLBACK_ALARMS", "DATA_CAPTURE_PERCENT", "TRAFFIC_ROUTING"} <= set(variables)
    assert all(set(value) == {"Ref"} and value["Ref"] in template["Parameters"] for value in variables.values())


def test_no_wildcard_actions_and_wildcard_resources_only_for_list_calls(template: dict[str, Any]) -> None:
    found = statements(template)

    actions = [action for s in found for action in as_list(s["Action"])]
    assert actions and not [a for a in actions if "*" in a]
    assert all(s["Effect"] == "Allow" for s in found)
    unscoped = {action for s in found if "*" in as_list(s["Resource"]) for action in as_list(s["Action"])}
    assert unscoped == {"sagemaker:ListModels", "sagemaker:ListEndpointConfigs"}


def test_role_is_scoped_to_the_endpoint_the_group_and_the_execution_role(template: dict[str, Any]) -> None:
    by_action = {action: s for s in statements(template) for action in as_list(s["Action"])}

    assert by_action["sagemaker:DescribeModelPackage"]["Resource"]["Fn::Sub"].endswith(
        ":model-package/${ModelPackageGroup}/*"
    )
    assert by_action["sagemaker:CreateModel"]["Resource"]["Fn::Sub"].endswith(":model/${EndpointName}-v*")
    update_resources = [r["Fn::Sub"] for r in by_action["sagemaker:UpdateEndpoint"]["Resource"]]
    assert [r.rsplit(":", 1)[1] for r in update_resources] == [
        "endpoint/${EndpointName}",
        "endpoint-config/${EndpointName}-v*",
    ]
    pass_role = by_action["iam:PassRole"]
    assert pass_role["Resource"] == {"Ref": "ExecutionRoleArn"}
    assert pass_role["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    assert by_action["logs:PutLogEvents"]["Resource"] == {"Fn::GetAtt": ["LogGroup", "Arn"]}


def resolve(node: Any, parameters: dict[str, str]) -> Any:
    """The node with each {'Ref': parameter} replaced by the parameter's value."""
    if isinstance(node, dict):
        return parameters[node["Ref"]] if set(node) == {"Ref"} else {k: resolve(v, parameters) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(item, parameters) for item in node]
    return node


def put_entry(
    version: int, status: str, group: str = GROUP, detail_type: str = "SageMaker Model Package State Change"
) -> dict[str, str]:
    """A PutEvents entry shaped like SageMaker's event; the version tells the entries apart."""
    detail = {
        "ModelPackageGroupName": group,
        "ModelPackageVersion": version,
        "ModelPackageArn": f"arn:aws:sagemaker:{REGION}:123456789012:model-package/{group}/{version}",
        "ModelApprovalStatus": status,
    }
    return {"Source": "aws.sagemaker", "DetailType": detail_type, "Detail": json.dumps(detail)}


def test_rule_matches_only_approved_packages_of_the_group(template: dict[str, Any]) -> None:
    (rule,) = resources_of(template, "AWS::Events::Rule").values()
    pattern = resolve(rule["Properties"]["EventPattern"], {"ModelPackageGroup": GROUP})
    entries = [
        put_entry(1, "Approved"),
        put_entry(2, "Rejected"),
        put_entry(3, "PendingManualApproval"),
        put_entry(4, "Approved", group="another-team-models"),
        put_entry(5, "Approved", detail_type="SageMaker Model State Change"),
    ]

    with mock_aws():
        events, sqs = boto3.client("events", region_name=REGION), boto3.client("sqs", region_name=REGION)
        queue = sqs.create_queue(QueueName="matched")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(Name="approvals", EventPattern=json.dumps(pattern))
        events.put_targets(Rule="approvals", Targets=[{"Id": "queue", "Arn": queue_arn}])
        assert events.put_events(Entries=entries)["FailedEntryCount"] == 0
        messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]

    assert [json.loads(m["Body"])["detail"]["ModelPackageVersion"] for m in messages] == [1]


def test_cfn_lint_passes() -> None:
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    result = subprocess.run([str(cfn_lint), str(TEMPLATE)], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stdout + result.stderr


# ---- deploy_infra.py -------------------------------------------------------------------------------------------------


def environ(**extra: str) -> dict[str, str]:
    return {"SAGEMAKER_ROLE_ARN": ROLE, "SAGEMAKER_BUCKET": BUCKET, "AWS_REGION": REGION, **extra}


def test_parameters_come_from_pipeline_yaml() -> None:
    config = load(environ=environ(FRAUD_ROLLBACK_ALARMS="errors, latency"))

    parameters = deploy_infra.stack_parameters(config, "fraud-detection/deploy-lambda/abc.zip")

    assert parameters == {
        "CodeBucket": BUCKET,
        "CodeKey": "fraud-detection/deploy-lambda/abc.zip",
        "ModelPackageGroup": GROUP,
        "EndpointName": "fraud-detection",
        "ExecutionRoleArn": ROLE,
        "InstanceType": "ml.m5.large",
        "InstanceCount": "1",
        "DataCaptureS3Uri": f"s3://{BUCKET}/fraud-detection/data-capture",
        "KmsKeyArn": "",
        "RollbackAlarms": "errors,latency",
        "DataCapturePercent": "100",
        "TrafficRouting": "ALL_AT_ONCE",
    }
    assert set(parameters) <= set(yaml.load(TEMPLATE.read_text(), Loader=CloudFormationLoader)["Parameters"])


def test_package_is_byte_stable_and_content_addressed() -> None:
    config = load(environ=environ())

    assert deploy_infra.package() == deploy_infra.package()
    assert deploy_infra.code_key(config, b"one") != deploy_infra.code_key(config, b"two")
    assert deploy_infra.code_key(config, b"one").startswith("fraud-detection/deploy-lambda/")


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"SAGEMAKER_ROLE_ARN": ""}, "aws.role_arn is empty: set SAGEMAKER_ROLE_ARN"),
        ({"SAGEMAKER_BUCKET": ""}, "aws.bucket is empty: set SAGEMAKER_BUCKET"),
        ({"FRAUD_KMS_KEY_ID": "1234abcd"}, "security.kms_key_id: '1234abcd' must be a key ARN"),
        ({"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, "no AWS credentials"),
    ],
)
def test_deploy_infra_errors_are_one_line(
    variables: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    isolate_from_real_aws(monkeypatch)
    for name, value in {**environ(), **variables}.items():
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)

    assert deploy_infra.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("deploy-infra: error: ") and message in err


def isolate_from_real_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials, and no profile, config file or instance metadata to fall back on."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)


def test_deploy_infra_creates_then_updates_the_stack(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    isolate_from_real_aws(monkeypatch)
    for name, value in environ(FRAUD_ROLLBACK_ALARMS="fraud-5xx").items():
        monkeypatch.setenv(name, value)

    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)

        assert deploy_infra.main([]) == 0, capsys.readouterr().err
        assert capsys.readouterr().out.startswith("stack fraud-detection-deploy created: ")

        cloudformation = boto3.client("cloudformation", region_name=REGION)
        (stack,) = cloudformation.describe_stacks(StackName="fraud-detection-deploy")["Stacks"]
        parameters = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
        assert parameters["ModelPackageGroup"] == GROUP and parameters["RollbackAlarms"] == "fraud-5xx"
        assert stack["Tags"] == [{"Key": "project", "Value": "fraud-detection"}]
        function = boto3.client("lambda", region_name=REGION).get_function(FunctionName="fraud-detection-deploy")
        variables = function["Configuration"]["Environment"]["Variables"]
        assert variables["ENDPOINT_NAME"] == "fraud-detection" and variables["EXECUTION_ROLE_ARN"] == ROLE
        code = boto3.client("s3", region_name=REGION).get_object(Bucket=BUCKET, Key=parameters["CodeKey"])
        assert code["Body"].read() == deploy_infra.package()

        assert deploy_infra.main([]) == 0, capsys.readouterr().err  # moto updates even when nothing changed
        assert capsys.readouterr().out.startswith("stack fraud-detection-deploy updated: ")


def stack_description(status: str) -> dict[str, Any]:
    return {
        "StackName": "fraud-detection-deploy",
        "CreationTime": datetime(2026, 1, 1, tzinfo=UTC),
        "StackStatus": status,
    }


def test_stack_left_by_a_failed_create_must_be_deleted_first() -> None:
    cloudformation = boto3.client("cloudformation", region_name=REGION)
    with Stubber(cloudformation) as stub:
        stub.add_response("describe_stacks", {"Stacks": [stack_description("ROLLBACK_COMPLETE")]})

        with pytest.raises(deploy_infra.DeployError, match="ROLLBACK_COMPLETE after a failed create: delete it"):
            deploy_infra.deploy_stack(cloudformation, "fraud-detection-deploy", {}, {})


def test_failed_create_names_the_resource_and_its_reason() -> None:
    cloudformation = boto3.client("cloudformation", region_name=REGION)
    failure = {
        "StackId": "id",
        "EventId": "e1",
        "StackName": "fraud-detection-deploy",
        "Timestamp": datetime(2026, 1, 1, tzinfo=UTC),
        "LogicalResourceId": "Function",
        "ResourceStatus": "CREATE_FAILED",
        "ResourceStatusReason": "ReservedConcurrentExecutions decreases unreserved concurrency below 10",
    }
    with Stubber(cloudformation) as stub:
        stub.add_client_error(
            "describe_stacks", "ValidationError", "Stack with id fraud-detection-deploy does not exist"
        )
        stub.add_response("create_stack", {"StackId": "id"})
        stub.add_response("describe_stacks", {"Stacks": [stack_description("ROLLBACK_COMPLETE")]})
        stub.add_response("describe_stack_events", {"StackEvents": [failure]})

        with pytest.raises(deploy_infra.DeployError, match="was not created: Function: ReservedConcurrentExecutions"):
            deploy_infra.deploy_stack(cloudformation, "fraud-detection-deploy", {}, {})


def test_unchanged_stack_is_not_an_error() -> None:
    cloudformation = boto3.client("cloudformation", region_name=REGION)
    with Stubber(cloudformation) as stub:
        stub.add_response("describe_stacks", {"Stacks": [stack_description("UPDATE_COMPLETE")]})
        stub.add_client_error("update_stack", "ValidationError", "No updates are to be performed.")

        assert deploy_infra.deploy_stack(cloudformation, "fraud-detection-deploy", {}, {}) == "unchanged"
