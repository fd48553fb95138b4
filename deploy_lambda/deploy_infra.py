"""Deploy the project's stack (template.yaml) with boto3 alone: `make deploy-infra`.

The stack holds the pipeline's execution role, the scheduler's role and dead-letter queue, and the approved-model →
endpoint function. Zips handler.py (byte-stable), uploads it to aws.bucket under a content-hash key, then creates or
updates the CloudFormation stack with parameters from pipeline.yaml (aws.*, project.name, data.claims_uri,
feature_store.*, registry.model_package_group, deploy.*, security.*) and waits for it. A changed handler gets a new
key, so the function is updated; an unchanged one leaves the stack as it is. Prints the roles and the queue as
`export` lines for the shell. Errors are one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shlex
import sys
import zipfile
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, WaiterError

from pipelines.config import ECR_IMAGE, Config, ConfigError, load, s3_key, s3_uri

HERE = Path(__file__).resolve().parent
HANDLER = HERE / "handler.py"
TEMPLATE = HERE / "template.yaml"
NO_UPDATES = "No updates are to be performed"
EXPORTS = {  # shell variable: stack output (pipeline.yaml reads SAGEMAKER_ROLE_ARN and SCHEDULER_ROLE_ARN)
    "SAGEMAKER_ROLE_ARN": "PipelineExecutionRoleArn",
    "SCHEDULER_ROLE_ARN": "SchedulerRoleArn",
    "SCHEDULE_DLQ_ARN": "ScheduleDeadLetterQueueArn",
}


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


def image_repository(config: Config) -> str:
    """The ECR repository of aws.image_uri, which must be in aws.region (SageMaker pulls from its own region)."""
    image = config.aws.image_uri
    match = ECR_IMAGE.match(image)
    if not match:
        raise DeployError(
            f"aws.image_uri: {image!r} is not an ECR image (<account>.dkr.ecr.<region>.amazonaws.com/<repository>"
            "[:tag]): set FRAUD_IMAGE_URI to the pushed project image"
        )
    if match["region"] != config.aws.region:
        raise DeployError(f"aws.image_uri: {image!r} is in {match['region']}, not in aws.region {config.aws.region}")
    return match["repository"]


def _bucket(uri: str) -> str:
    return uri.removeprefix("s3://").split("/", 1)[0] if uri.startswith("s3://") else ""


def data_bucket(config: Config) -> str:
    """The bucket of the raw data when it is not the artifacts bucket ('' when it is, or the data is not on S3)."""
    claims, customers = _bucket(config.data.claims_uri), _bucket(config.data.customers_uri)
    if claims and customers and claims != customers:
        raise DeployError(
            f"data.claims_uri and data.customers_uri are in different buckets ({claims}, {customers}): "
            "the pipeline's role reads one data bucket, put both tables in it"
        )
    bucket = claims or customers
    return "" if bucket == config.aws.bucket else bucket


def stack_parameters(config: Config, key: str, reserved_concurrency: int = 0) -> dict[str, str]:
    """The template's parameters from pipeline.yaml; DeployError names the missing setting."""
    if not config.aws.bucket:
        raise DeployError("aws.bucket is empty: set SAGEMAKER_BUCKET (the artifacts bucket, where the code goes)")
    if reserved_concurrency < 0:
        raise DeployError(f"--reserved-concurrency: {reserved_concurrency} is negative (0 reserves none)")
    kms = config.security.kms_key_id
    if kms and not kms.startswith("arn:"):
        raise DeployError(f"security.kms_key_id: {kms!r} must be a key ARN for deploy-infra (IAM grants need it)")
    capture = config.deploy.data_capture_uri or s3_uri(config.aws.bucket, config.aws.prefix, "data-capture")
    return {
        "ArtifactsBucket": config.aws.bucket,
        "CodeKey": key,
        "DataBucket": data_bucket(config),
        "PipelineName": config.project.name,
        "ImageRepository": image_repository(config),
        "ClaimsGroup": config.feature_store.claims_group,
        "CustomersGroup": config.feature_store.customers_group,
        "JobsInVpc": "true" if config.security.subnets else "false",
        "ModelPackageGroup": config.registry.model_package_group,
        "EndpointName": config.deploy.endpoint_name,
        "InstanceType": config.deploy.instance_type,
        "InstanceCount": str(config.deploy.instance_count),
        "DataCaptureS3Uri": capture.rstrip("/"),
        "KmsKeyArn": kms,
        "RollbackAlarms": ",".join(config.deploy.rollback_alarms),
        "DataCapturePercent": str(config.deploy.data_capture_percent),
        "TrafficRouting": config.deploy.traffic_routing,
        "ReservedConcurrency": str(reserved_concurrency),
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


def stack_outputs(cloudformation: Any, name: str) -> dict[str, str]:
    (stack,) = cloudformation.describe_stacks(StackName=name)["Stacks"]
    return {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}


def exports(outputs: dict[str, str]) -> list[str]:
    """`export NAME=value` lines for the roles and the queue a newcomer sets next (pipeline.yaml reads them)."""
    return [f"export {variable}={shlex.quote(outputs[output])}" for variable, output in EXPORTS.items()]


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


def deploy(config: Config, session: boto3.Session, reserved_concurrency: int = 0) -> list[str]:
    """Upload the code, deploy the stack; the lines to print."""
    archive = package()
    key = code_key(config, archive)
    parameters = stack_parameters(config, key, reserved_concurrency)
    session.client("s3").put_object(Bucket=config.aws.bucket, Key=key, Body=archive)
    name = stack_name(config)
    cloudformation = session.client("cloudformation")
    action = deploy_stack(cloudformation, name, parameters, config.project.tags)
    summary = (
        f"stack {name} {action}: approvals in {parameters['ModelPackageGroup']} deploy to endpoint "
        f"{parameters['EndpointName']} (code s3://{config.aws.bucket}/{key})"
    )
    return [summary, *exports(stack_outputs(cloudformation, name))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy-infra", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=None, help="pipeline.yaml to use (default: the project's)")
    parser.add_argument(
        "--reserved-concurrency",
        type=int,
        default=0,
        metavar="N",
        help="reserve N concurrent executions for the deploy function (default 0: none; every run sets it)",
    )
    args = parser.parse_args(argv)
    try:
        config = load(args.config)
        session = boto3.Session(region_name=config.aws.region)
        print("\n".join(deploy(config, session, args.reserved_concurrency)))
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
