"""Deploy the approved-model → endpoint stack (template.yaml) with boto3 alone: `make deploy-infra`.

Zips handler.py (byte-stable), uploads it to aws.bucket under a content-hash key, then creates or updates the
CloudFormation stack with parameters from pipeline.yaml (registry.model_package_group, deploy.*, aws.role_arn,
aws.region, security.kms_key_id) and waits for it. A changed handler gets a new key, so the function is updated;
an unchanged one leaves the stack as it is. Errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, WaiterError

from pipelines.config import Config, ConfigError, load, s3_key, s3_uri

HERE = Path(__file__).resolve().parent
HANDLER = HERE / "handler.py"
TEMPLATE = HERE / "template.yaml"
NO_UPDATES = "No updates are to be performed"


class DeployError(Exception):
    """The configuration or the stack is not in a state to deploy; the message says what to do."""


def package(source: Path = HANDLER) -> bytes:
    """The function's zip: the handler alone, with fixed timestamps so equal code gives equal bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        entry = zipfile.ZipInfo(source.name, date_time=(1980, 1, 1, 0, 0, 0))
        entry.external_attr = 0o644 << 16
        archive.writestr(entry, source.read_bytes(), compress_type=zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def code_key(config: Config, archive: bytes) -> str:
    return s3_key(config.aws.prefix, "deploy-lambda", f"{hashlib.sha256(archive).hexdigest()[:16]}.zip")


def stack_name(config: Config) -> str:
    return f"{config.deploy.endpoint_name}-deploy"


def stack_parameters(config: Config, key: str) -> dict[str, str]:
    """The template's parameters from pipeline.yaml; DeployError names the missing setting."""
    if not config.aws.role_arn:
        raise DeployError("aws.role_arn is empty: set SAGEMAKER_ROLE_ARN to the SageMaker execution role of the model")
    if not config.aws.bucket:
        raise DeployError("aws.bucket is empty: set SAGEMAKER_BUCKET (the function's code is uploaded there)")
    kms = config.security.kms_key_id
    if kms and not kms.startswith("arn:"):
        raise DeployError(f"security.kms_key_id: {kms!r} must be a key ARN for deploy-infra (IAM grants need it)")
    capture = config.deploy.data_capture_uri or s3_uri(config.aws.bucket, config.aws.prefix, "data-capture")
    return {
        "CodeBucket": config.aws.bucket,
        "CodeKey": key,
        "ModelPackageGroup": config.registry.model_package_group,
        "EndpointName": config.deploy.endpoint_name,
        "ExecutionRoleArn": config.aws.role_arn,
        "InstanceType": config.deploy.instance_type,
        "InstanceCount": str(config.deploy.instance_count),
        "DataCaptureS3Uri": capture.rstrip("/"),
        "KmsKeyArn": kms,
        "RollbackAlarms": ",".join(config.deploy.rollback_alarms),
        "DataCapturePercent": str(config.deploy.data_capture_percent),
        "TrafficRouting": config.deploy.traffic_routing,
    }


def _stack_status(cloudformation: Any, name: str) -> str | None:
    try:
        return cloudformation.describe_stacks(StackName=name)["Stacks"][0]["StackStatus"]
    except ClientError as error:
        if "does not exist" in error.response["Error"]["Message"]:
            return None
        raise


def _failure_reason(cloudformation: Any, name: str) -> str:
    events = cloudformation.describe_stack_events(StackName=name)["StackEvents"]
    failed = [e for e in events if e["ResourceStatus"].endswith("_FAILED") and e.get("ResourceStatusReason")]
    if not failed:
        return "see the stack's events"
    first = failed[-1]  # events come newest first
    return f"{first['LogicalResourceId']}: {first['ResourceStatusReason']}"


def deploy_stack(cloudformation: Any, name: str, parameters: dict[str, str], tags: dict[str, str]) -> str:
    """Create or update the stack and wait: 'created', 'updated' or 'unchanged'."""
    request = {
        "StackName": name,
        "TemplateBody": TEMPLATE.read_text(),
        "Parameters": [{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        "Capabilities": ["CAPABILITY_IAM"],
        "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
    }
    status = _stack_status(cloudformation, name)
    if status == "ROLLBACK_COMPLETE":
        raise DeployError(f"stack {name} is ROLLBACK_COMPLETE after a failed create: delete it, then run again")
    if status is None:
        cloudformation.create_stack(**request)
        action, waiter = "created", "stack_create_complete"
    else:
        try:
            cloudformation.update_stack(**request)
        except ClientError as error:
            if NO_UPDATES in error.response["Error"]["Message"]:
                return "unchanged"
            raise
        action, waiter = "updated", "stack_update_complete"
    try:
        cloudformation.get_waiter(waiter).wait(StackName=name, WaiterConfig={"Delay": 10, "MaxAttempts": 180})
    except WaiterError:
        raise DeployError(f"stack {name} was not {action}: {_failure_reason(cloudformation, name)}") from None
    return action


def deploy(config: Config, session: boto3.Session) -> str:
    """Upload the code, deploy the stack; the line to print."""
    archive = package()
    key = code_key(config, archive)
    parameters = stack_parameters(config, key)
    session.client("s3").put_object(Bucket=config.aws.bucket, Key=key, Body=archive)
    name = stack_name(config)
    action = deploy_stack(session.client("cloudformation"), name, parameters, config.project.tags)
    return (
        f"stack {name} {action}: approvals in {parameters['ModelPackageGroup']} deploy to endpoint "
        f"{parameters['EndpointName']} (code s3://{config.aws.bucket}/{key})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy-infra", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="pipeline.yaml to use (default: the project's)")
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
        print(deploy(config, boto3.Session(region_name=config.aws.region)))
    except NoCredentialsError:
        print("deploy-infra: error: no AWS credentials (set AWS_PROFILE or AWS_ACCESS_KEY_ID)", file=sys.stderr)
        return 1
    except ClientError as error:
        detail = error.response["Error"]
        print(f"deploy-infra: error: {error.operation_name}: {detail['Code']}: {detail['Message']}", file=sys.stderr)
        return 1
    except (ConfigError, DeployError, BotoCoreError, OSError) as error:
        print(f"deploy-infra: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
