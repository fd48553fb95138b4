"""deploy_lambda/template.yaml (least privilege, the rule's pattern, the retry queue, cfn-lint) and deploy_infra.py
(against moto's CloudFormation, which creates every resource of the template)."""

from __future__ import annotations

import fnmatch
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
ACCOUNT = "123456789012"
BUCKET = "fraud-artifacts"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/fraud-detection:1.4"
STACK = "fraud-detection-deploy"
# Actions without resource-level permissions: the only ones allowed on "*" (each with a Sid or comment saying so).
UNSCOPED = {
    "FunctionRole": {"sagemaker:ListModels", "sagemaker:ListEndpointConfigs"},
    "PipelineExecutionRole": {
        "ecr:GetAuthorizationToken",
        "cloudwatch:PutMetricData",
        "ec2:DescribeNetworkInterfaces",
        "ec2:DescribeVpcs",
        "ec2:DescribeSubnets",
        "ec2:DescribeSecurityGroups",
        "ec2:DescribeDhcpOptions",
    },
    "SchedulerRole": set(),
}


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


def statements(template: dict[str, Any], role: str = "FunctionRole") -> list[dict[str, Any]]:
    """Every statement of a role, both branches of conditional ones included."""
    found = []
    for policy in template["Resources"][role]["Properties"]["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            branches = statement["Fn::If"][1:] if "Fn::If" in statement else [statement]
            found += [b for b in branches if b != {"Ref": "AWS::NoValue"}]
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def by_sid(template: dict[str, Any], role: str) -> dict[str, dict[str, Any]]:
    return {s["Sid"]: s for s in statements(template, role)}


def test_template_has_the_function_its_role_the_rule_and_the_permission(template: dict[str, Any]) -> None:
    kinds = {r["Type"] for r in template["Resources"].values()}

    assert {"AWS::Lambda::Function", "AWS::IAM::Role", "AWS::Events::Rule", "AWS::Lambda::Permission"} <= kinds
    assert set(resources_of(template, "AWS::IAM::Role")) == set(UNSCOPED)
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
    created = {
        "EXECUTION_ROLE_ARN": {"Fn::GetAtt": ["PipelineExecutionRole", "Arn"]},
        "RETRY_QUEUE_URL": {"Ref": "RetryQueue"},
    }
    assert {name: variables[name] for name in created} == created
    parameters = {name: value for name, value in variables.items() if name not in created}
    assert all(set(value) == {"Ref"} and value["Ref"] in template["Parameters"] for value in parameters.values())


@pytest.mark.parametrize("role", UNSCOPED)
def test_no_wildcard_actions_and_wildcard_resources_only_where_none_can_be_named(
    template: dict[str, Any], role: str
) -> None:
    found = statements(template, role)

    actions = [action for s in found for action in as_list(s["Action"])]
    assert actions and not [a for a in actions if "*" in a]
    assert all(s["Effect"] == "Allow" and s["Sid"] for s in found)
    unscoped = {action for s in found if "*" in as_list(s["Resource"]) for action in as_list(s["Action"])}
    assert unscoped == UNSCOPED[role]
    assert all(s["Resource"] == "*" for s in found if set(as_list(s["Action"])) & UNSCOPED[role])  # alone


def test_reserved_concurrency_is_an_optional_parameter_off_by_default(template: dict[str, Any]) -> None:
    """Lambda keeps 100 executions unreserved: a fixed reservation fails on accounts with a quota of 10."""
    parameter = template["Parameters"]["ReservedConcurrency"]
    reserved = template["Resources"]["Function"]["Properties"]["ReservedConcurrentExecutions"]

    assert (parameter["Type"], parameter["Default"], parameter["MinValue"]) == ("Number", 0, 0)
    assert reserved == {"Fn::If": ["HasReservedConcurrency", {"Ref": "ReservedConcurrency"}, {"Ref": "AWS::NoValue"}]}
    assert template["Conditions"]["HasReservedConcurrency"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ReservedConcurrency"}, 0]}]
    }


def test_retry_queue_delivers_to_the_function_one_message_at_a_time(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    queue = resources["RetryQueue"]["Properties"]
    (mapping,) = resources_of(template, "AWS::Lambda::EventSourceMapping").values()

    assert queue["VisibilityTimeout"] >= 6 * resources["Function"]["Properties"]["Timeout"]  # Lambda's advice
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]},
        "maxReceiveCount": 5,
    }
    assert queue["SqsManagedSseEnabled"] is True
    assert mapping["Properties"] == {
        "EventSourceArn": {"Fn::GetAtt": ["RetryQueue", "Arn"]},
        "FunctionName": {"Ref": "Function"},
        "BatchSize": 1,
        "Enabled": True,
    }


def test_function_role_may_send_to_and_consume_only_the_retry_queue(template: dict[str, Any]) -> None:
    sqs = [s for s in statements(template) if any(a.startswith("sqs:") for a in as_list(s["Action"]))]
    retry = {a for s in sqs if s["Resource"] == {"Fn::GetAtt": ["RetryQueue", "Arn"]} for a in as_list(s["Action"])}

    assert retry == {"sqs:SendMessage", "sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
    others = [(s["Action"], s["Resource"]) for s in sqs if s["Resource"] != {"Fn::GetAtt": ["RetryQueue", "Arn"]}]
    assert others == [("sqs:SendMessage", {"Fn::GetAtt": ["DeadLetterQueue", "Arn"]})]  # the function's DLQ


def trusted(template: dict[str, Any], role: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    (statement,) = template["Resources"][role]["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow" and statement["Action"] == "sts:AssumeRole"
    return statement["Principal"], statement.get("Condition")


def test_each_role_is_trusted_by_its_service_alone(template: dict[str, Any]) -> None:
    assert trusted(template, "FunctionRole") == ({"Service": "lambda.amazonaws.com"}, None)
    assert trusted(template, "PipelineExecutionRole") == ({"Service": "sagemaker.amazonaws.com"}, None)
    assert trusted(template, "SchedulerRole") == (
        {"Service": "scheduler.amazonaws.com"},
        {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}},
    )


def test_roles_pass_only_the_pipeline_role_and_only_to_sagemaker(template: dict[str, Any]) -> None:
    to_sagemaker = {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}
    passes = {
        role: [s for s in statements(template, role) if "iam:PassRole" in as_list(s["Action"])] for role in UNSCOPED
    }

    (function,) = passes["FunctionRole"]
    assert function["Resource"] == {"Fn::GetAtt": ["PipelineExecutionRole", "Arn"]}
    (itself,) = passes["PipelineExecutionRole"]  # its own path: its own ARN would be a circular reference
    assert itself["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/${AWS::StackName}/*"}
    assert template["Resources"]["PipelineExecutionRole"]["Properties"]["Path"] == {"Fn::Sub": "/${AWS::StackName}/"}
    assert function["Condition"] == itself["Condition"] == to_sagemaker
    assert passes["SchedulerRole"] == []


def sagemaker_arn(resource: str) -> dict[str, str]:
    return {"Fn::Sub": f"arn:${{AWS::Partition}}:sagemaker:${{AWS::Region}}:${{AWS::AccountId}}:{resource}"}


def test_scheduler_role_starts_only_the_pipeline_and_dead_letters_to_its_queue(template: dict[str, Any]) -> None:
    found = {(s["Action"], json.dumps(s["Resource"])) for s in statements(template, "SchedulerRole")}

    assert found == {
        ("sagemaker:StartPipelineExecution", json.dumps(sagemaker_arn("pipeline/${PipelineName}"))),
        ("sqs:SendMessage", json.dumps({"Fn::GetAtt": ["ScheduleDeadLetterQueue", "Arn"]})),
    }
    assert template["Resources"]["ScheduleDeadLetterQueue"]["Properties"]["SqsManagedSseEnabled"] is True


def test_pipeline_role_is_scoped_to_the_project(template: dict[str, Any]) -> None:
    sid = by_sid(template, "PipelineExecutionRole")

    assert sid["ReadWriteArtifacts"]["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::${ArtifactsBucket}/*"}
    assert "s3:PutObject" not in sid["ReadRawData"]["Action"]
    assert sid["PullProjectImage"]["Resource"]["Fn::Sub"].endswith(":repository/${ImageRepository}")
    assert sid["WriteSageMakerLogs"]["Resource"]["Fn::Sub"].endswith(":log-group:/aws/sagemaker/*")
    assert sid["SageMakerMetricsOnly"]["Condition"] == {"StringLike": {"cloudwatch:namespace": "/aws/sagemaker/*"}}
    assert sid["RegisterModels"]["Resource"] == [
        sagemaker_arn("model-package-group/${ModelPackageGroup}"),
        sagemaker_arn("model-package/${ModelPackageGroup}/*"),
    ]
    assert sid["FeatureStore"]["Resource"] == [
        sagemaker_arn("feature-group/${ClaimsGroup}"),
        sagemaker_arn("feature-group/${CustomersGroup}"),
    ]
    assert {r["Fn::Sub"].rsplit(":", 1)[1] for r in sid["OfflineStoreTables"]["Resource"]} == {
        "catalog",
        "database/sagemaker_featurestore",
        "table/sagemaker_featurestore/*",
    }
    assert {r["Fn::Sub"].rsplit(":", 1)[1] for r in sid["RunPipelineJobs"]["Resource"]} == {
        "processing-job/*",
        "training-job/*",
        "hyper-parameter-tuning-job/*",
    }
    assert sid["ScoringModel"]["Resource"] == sagemaker_arn("model/*")  # the Pipelines service names it
    assert sid["ClarifyShadowEndpoint"]["Resource"] == [  # the prefix the pipeline gives Clarify (ModelConfig)
        sagemaker_arn("endpoint/${PipelineName}-clarify*"),
        sagemaker_arn("endpoint-config/${PipelineName}-clarify*"),
    ]


def test_pipeline_role_gets_kms_and_network_interfaces_only_when_configured(template: dict[str, Any]) -> None:
    conditional = {
        s["Fn::If"][1]["Sid"]: s["Fn::If"][0]
        for policy in template["Resources"]["PipelineExecutionRole"]["Properties"]["Policies"]
        for s in policy["PolicyDocument"]["Statement"]
        if "Fn::If" in s
    }

    assert conditional == {
        "ReadRawData": "HasDataBucket",
        "EncryptWithTheProjectKey": "HasKmsKey",
        "JobNetworkInterfaces": "HasVpc",
        "DescribeNetworkHasNoResource": "HasVpc",
    }
    assert by_sid(template, "PipelineExecutionRole")["EncryptWithTheProjectKey"]["Resource"] == {"Ref": "KmsKeyArn"}


def test_function_role_is_scoped_to_the_endpoint_and_the_group(template: dict[str, Any]) -> None:
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
    """What a newcomer sets before the first deploy-infra (no SAGEMAKER_ROLE_ARN: the stack creates the role)."""
    return {"SAGEMAKER_BUCKET": BUCKET, "FRAUD_IMAGE_URI": IMAGE, "AWS_REGION": REGION, **extra}


def test_parameters_come_from_pipeline_yaml(template: dict[str, Any]) -> None:
    config = load(environ=environ(FRAUD_ROLLBACK_ALARMS="errors, latency"))

    parameters = deploy_infra.stack_parameters(config, "fraud-detection/deploy-lambda/abc.zip")

    assert parameters == {
        "ArtifactsBucket": BUCKET,
        "CodeKey": "fraud-detection/deploy-lambda/abc.zip",
        "DataBucket": "sagemaker-example-bucket",  # data.claims_uri's default
        "PipelineName": "fraud-detection",
        "ImageRepository": "fraud-detection",
        "ClaimsGroup": "fraud-detection-claims",
        "CustomersGroup": "fraud-detection-customers",
        "JobsInVpc": "false",
        "ModelPackageGroup": GROUP,
        "EndpointName": "fraud-detection",
        "InstanceType": "ml.m5.large",
        "InstanceCount": "1",
        "DataCaptureS3Uri": f"s3://{BUCKET}/fraud-detection/data-capture",
        "KmsKeyArn": "",
        "RollbackAlarms": "errors,latency",
        "DataCapturePercent": "100",
        "TrafficRouting": "ALL_AT_ONCE",
        "ReservedConcurrency": "0",
    }
    assert set(parameters) == set(template["Parameters"])


@pytest.mark.parametrize(
    ("claims", "customers", "bucket"),
    [
        (f"s3://{BUCKET}/raw/claims.csv", f"s3://{BUCKET}/raw/customers.csv", ""),  # the artifacts bucket: covered
        ("s3://fraud-raw/2026/claims.csv", "s3://fraud-raw/2026/customers.csv", "fraud-raw"),
        ("data/claims.csv", "data/customers.csv", ""),  # local files: no S3 to read
    ],
)
def test_data_bucket_comes_from_the_data_uris(claims: str, customers: str, bucket: str) -> None:
    config = load(environ=environ(CLAIMS_URI=claims, CUSTOMERS_URI=customers))

    assert deploy_infra.data_bucket(config) == bucket


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        (f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/fraud-detection", "fraud-detection"),
        (f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/ml/fraud-detection:2026.01-a", "ml/fraud-detection"),
        (f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/fraud_detection@sha256:{'ab' * 32}", "fraud_detection"),
    ],
)
def test_image_repository_is_parsed_from_the_ecr_uri(image: str, repository: str) -> None:
    assert deploy_infra.image_repository(load(environ=environ(FRAUD_IMAGE_URI=image))) == repository


def test_jobs_in_a_vpc_get_network_interfaces() -> None:
    config = load(environ=environ(FRAUD_SUBNETS="subnet-0a1b", FRAUD_SECURITY_GROUPS="sg-0c2d"))

    assert deploy_infra.stack_parameters(config, "k.zip")["JobsInVpc"] == "true"


def test_package_is_byte_stable_and_content_addressed() -> None:
    config = load(environ=environ())

    assert deploy_infra.package() == deploy_infra.package()
    assert deploy_infra.code_key(config, b"one") != deploy_infra.code_key(config, b"two")
    assert deploy_infra.code_key(config, b"one").startswith("fraud-detection/deploy-lambda/")


@pytest.mark.parametrize(
    ("variables", "argv", "message"),
    [
        ({"SAGEMAKER_BUCKET": ""}, [], "aws.bucket is empty: set SAGEMAKER_BUCKET"),
        ({"FRAUD_KMS_KEY_ID": "1234abcd"}, [], "security.kms_key_id: '1234abcd' must be a key ARN"),
        ({"FRAUD_IMAGE_URI": ""}, [], "aws.image_uri: 'fraud-detection:latest' is not an ECR image"),
        ({"FRAUD_IMAGE_URI": "python:3.11"}, [], "set FRAUD_IMAGE_URI to the pushed project image"),
        (
            {"FRAUD_IMAGE_URI": IMAGE.replace(REGION, "eu-west-1")},
            [],
            "is in eu-west-1, not in aws.region us-east-1",
        ),
        (
            {"CUSTOMERS_URI": "s3://other/customers.csv"},
            [],
            "are in different buckets (sagemaker-example-bucket, other)",
        ),
        ({}, ["--reserved-concurrency", "-1"], "--reserved-concurrency: -1 is negative"),
        ({"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, [], "no AWS credentials"),
    ],
)
def test_deploy_infra_errors_are_one_line(
    variables: dict[str, str],
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    isolate_from_real_aws(monkeypatch)
    for name, value in {**environ(), **variables}.items():
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)

    assert deploy_infra.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("deploy-infra: error: ") and message in err


def isolate_from_real_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials, no profile, config file or instance metadata to fall back on, and none of the project's
    variables from the developer's shell."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    for name in ("SAGEMAKER_ROLE_ARN", "SCHEDULER_ROLE_ARN", "CLAIMS_URI", "CUSTOMERS_URI", "FRAUD_KMS_KEY_ID"):
        monkeypatch.delenv(name, raising=False)
    for name in ("FRAUD_SUBNETS", "FRAUD_SECURITY_GROUPS", "FRAUD_DATA_CAPTURE_URI", "FRAUD_ROLLBACK_ALARMS"):
        monkeypatch.delenv(name, raising=False)


def exported(lines: list[str]) -> dict[str, str]:
    """What bash makes of the export lines deploy-infra prints."""
    names = ("SAGEMAKER_ROLE_ARN", "SCHEDULER_ROLE_ARN", "SCHEDULE_DLQ_ARN")
    script = "\n".join([*lines, "printf '%s\\n' " + " ".join(f'"${name}"' for name in names)])
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, env={})
    return dict(zip(names, result.stdout.splitlines(), strict=True))


def test_deploy_infra_creates_the_roles_then_updates_the_stack(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    isolate_from_real_aws(monkeypatch)
    for name, value in environ(FRAUD_ROLLBACK_ALARMS="fraud-5xx").items():
        monkeypatch.setenv(name, value)

    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)

        assert deploy_infra.main([]) == 0, capsys.readouterr().err
        summary, *exports = capsys.readouterr().out.splitlines()
        assert summary.startswith(f"stack {STACK} created: ")

        cloudformation = boto3.client("cloudformation", region_name=REGION)
        (stack,) = cloudformation.describe_stacks(StackName=STACK)["Stacks"]
        parameters = {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
        assert parameters["ModelPackageGroup"] == GROUP and parameters["RollbackAlarms"] == "fraud-5xx"
        assert stack["Tags"] == [{"Key": "project", "Value": "fraud-detection"}]
        assert [line.split("=")[0] for line in exports] == [
            "export SAGEMAKER_ROLE_ARN",
            "export SCHEDULER_ROLE_ARN",
            "export SCHEDULE_DLQ_ARN",
        ]
        assert exported(exports) == {
            "SAGEMAKER_ROLE_ARN": outputs["PipelineExecutionRoleArn"],
            "SCHEDULER_ROLE_ARN": outputs["SchedulerRoleArn"],
            "SCHEDULE_DLQ_ARN": outputs["ScheduleDeadLetterQueueArn"],
        }
        role = outputs["PipelineExecutionRoleArn"]
        assert role.startswith(f"arn:aws:iam::{ACCOUNT}:role/{STACK}/")
        # the role's PassRole on itself, resolved as CloudFormation would, names the role it is attached to
        itself = "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/${AWS::StackName}/*"
        resolved = itself.replace("${AWS::Partition}", "aws").replace("${AWS::AccountId}", ACCOUNT)
        assert fnmatch.fnmatchcase(role, resolved.replace("${AWS::StackName}", STACK))
        assert outputs["ScheduleDeadLetterQueueArn"].startswith(f"arn:aws:sqs:{REGION}:{ACCOUNT}:")

        lambda_ = boto3.client("lambda", region_name=REGION)
        function = lambda_.get_function(FunctionName=STACK)
        variables = function["Configuration"]["Environment"]["Variables"]
        assert variables["ENDPOINT_NAME"] == "fraud-detection" and variables["EXECUTION_ROLE_ARN"] == role
        assert variables["RETRY_QUEUE_URL"] == outputs["RetryQueueUrl"]
        assert "ReservedConcurrentExecutions" not in lambda_.get_function_concurrency(FunctionName=STACK)
        (mapping,) = lambda_.list_event_source_mappings(FunctionName=STACK)["EventSourceMappings"]
        assert mapping["BatchSize"] == 1 and mapping["EventSourceArn"].startswith(f"arn:aws:sqs:{REGION}:{ACCOUNT}:")
        code = boto3.client("s3", region_name=REGION).get_object(Bucket=BUCKET, Key=parameters["CodeKey"])
        assert code["Body"].read() == deploy_infra.package()

        assert deploy_infra.main([]) == 0, capsys.readouterr().err  # moto updates even when nothing changed
        assert capsys.readouterr().out.startswith(f"stack {STACK} updated: ")


def test_reserved_concurrency_is_reserved_when_asked_for(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    isolate_from_real_aws(monkeypatch)
    for name, value in environ().items():
        monkeypatch.setenv(name, value)

    with mock_aws():  # moto applies ReservedConcurrentExecutions when it creates a function, not on updates
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)

        assert deploy_infra.main(["--reserved-concurrency", "2"]) == 0, capsys.readouterr().err

        concurrency = boto3.client("lambda", region_name=REGION).get_function_concurrency(FunctionName=STACK)
        assert concurrency["ReservedConcurrentExecutions"] == 2


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
        "ResourceStatusReason": "ReservedConcurrentExecutions decreases unreserved concurrency below 100",
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
