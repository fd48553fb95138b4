"""upsert / start / schedule / status against moto; where moto stops, botocore's Stubber.

moto 5.2 has no list_pipeline_execution_steps: watch() and status() run on a stubbed client.
"""

import datetime
import json

import boto3
import pytest
import yaml
from botocore.stub import Stubber
from moto import mock_aws

from pipelines import cli, publish
from pipelines import config as cfg

ROLE = "arn:aws:iam::123456789012:role/pipeline"
SCHEDULER_ROLE = "arn:aws:iam::123456789012:role/scheduler"
DLQ = "arn:aws:sqs:us-east-1:123456789012:schedule-dead-letters"
REPOSITORY = "123456789012.dkr.ecr.us-east-1.amazonaws.com/fraud-detection"
ENV = {
    "SAGEMAKER_ROLE_ARN": ROLE,
    "SAGEMAKER_BUCKET": "test-bucket",
    "FRAUD_IMAGE_URI": f"{REPOSITORY}:latest",
    "SCHEDULER_ROLE_ARN": SCHEDULER_ROLE,
    "SCHEDULE_DLQ_ARN": DLQ,
}
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json"})
EXECUTION = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/fraud-detection/execution/abc123"


@pytest.fixture
def config():
    return cfg.load(environ=ENV)


@pytest.fixture
def aws(monkeypatch):
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="test-bucket")
        ecr = boto3.client("ecr", region_name="us-east-1")
        ecr.create_repository(repositoryName="fraud-detection")
        ecr.put_image(repositoryName="fraud-detection", imageManifest=MANIFEST, imageTag="latest")
        yield boto3.client("sagemaker", region_name="us-east-1")


def pushed_digest() -> str:
    ecr = boto3.client("ecr", region_name="us-east-1")
    return ecr.describe_images(repositoryName="fraud-detection")["imageDetails"][0]["imageDigest"]


def images(document) -> set[str]:
    """Every image URI a definition names (processing, training, model package)."""
    found = set()
    if isinstance(document, dict):
        for key, value in document.items():
            if key in ("ImageUri", "TrainingImage", "Image") and isinstance(value, str):
                found.add(value)
            found |= images(value)
    elif isinstance(document, list):
        for value in document:
            found |= images(value)
    return found


@pytest.fixture
def published(aws, config):
    publish.upsert(config)
    return aws


def test_upsert_creates_then_updates_with_description_and_tags(aws, config):
    arn = publish.upsert(config)
    described = aws.describe_pipeline(PipelineName="fraud-detection")
    assert described["PipelineArn"] == arn
    assert described["PipelineDescription"] == config.project.description
    assert described["RoleArn"] == ROLE
    assert {"Key": "project", "Value": "fraud-detection"} in aws.list_tags(ResourceArn=arn)["Tags"]
    steps = {s["Name"] for s in json.loads(described["PipelineDefinition"])["Steps"]}
    assert {"Preprocess", "Tune", "Evaluate", "CheckAuc"} <= steps

    changed = config.model_copy(
        update={
            "project": config.project.model_copy(update={"description": "new text", "tags": {"team": "fraud"}}),
        }
    )
    assert publish.upsert(changed) == arn
    described = aws.describe_pipeline(PipelineName="fraud-detection")
    assert described["PipelineDescription"] == "new text"
    tags = {t["Key"]: t["Value"] for t in aws.list_tags(ResourceArn=arn)["Tags"]}
    assert tags == {"team": "fraud", "project": "fraud-detection"}


def test_upsert_pins_the_image_to_its_digest(aws, config):
    """A package approved months later must deploy the image it was built with, not what :latest names then."""
    publish.upsert(config)
    document = json.loads(aws.describe_pipeline(PipelineName="fraud-detection")["PipelineDefinition"])
    ours = {image for image in images(document) if "fraud-detection" in image}
    assert ours == {f"{REPOSITORY}@{pushed_digest()}"}


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("fraud-detection:latest", "is not an ECR image"),
        (f"{REPOSITORY}:v9", "push the image first"),
        ("123456789012.dkr.ecr.us-east-1.amazonaws.com/elsewhere:latest", "push the image first"),
    ],
)
def test_upsert_needs_a_pushed_ecr_image(aws, config, image, message):
    changed = config.model_copy(update={"aws": config.aws.model_copy(update={"image_uri": image})})
    with pytest.raises(publish.PublishError, match=message):
        publish.upsert(changed)


def test_a_digest_in_the_uri_is_kept(config):
    digest = "sha256:" + "a" * 64
    pinned = config.model_copy(update={"aws": config.aws.model_copy(update={"image_uri": f"{REPOSITORY}@{digest}"})})
    assert publish.pinned_image(pinned, ecr=None) == f"{REPOSITORY}@{digest}"


def test_definition_upload_puts_what_it_names_in_the_bucket(aws, config):
    document = json.loads(publish.definition_uploaded(config))
    s3 = boto3.client("s3", region_name="us-east-1")
    static = set()

    def collect(value):
        if isinstance(value, dict):
            for inner in value.values():
                collect(inner)
        elif isinstance(value, list):
            for inner in value:
                collect(inner)
        elif (
            isinstance(value, str) and value.startswith("s3://test-bucket/") and value.endswith((".json", ".gz", ".sh"))
        ):
            static.add(value)

    collect(document)
    assert any(uri.endswith("sourcedir.tar.gz") for uri in static)
    assert any("/bias-check/baseline/" in uri for uri in static)
    for uri in static:
        s3.head_object(Bucket="test-bucket", Key=uri.removeprefix("s3://test-bucket/"))  # raises when missing
    assert f"{REPOSITORY}@{pushed_digest()}" in images(document)


def test_upsert_without_role_is_a_clear_error(aws):
    config = cfg.load(environ={"SAGEMAKER_BUCKET": "test-bucket"})
    with pytest.raises(publish.PublishError, match="aws.role_arn is empty: set SAGEMAKER_ROLE_ARN"):
        publish.upsert(config)


def test_start_passes_parameter_overrides(published, config):
    arn = publish.start(config, {"MinAuc": "0.8", "MaxTuningJobs": "4"})
    execution = published.describe_pipeline_execution(PipelineExecutionArn=arn)
    assert execution["PipelineArn"].endswith("pipeline/fraud-detection")
    summaries = published.list_pipeline_executions(PipelineName="fraud-detection")["PipelineExecutionSummaries"]
    assert [s["PipelineExecutionArn"] for s in summaries] == [arn]
    parameters = published.list_pipeline_parameters_for_execution(PipelineExecutionArn=arn)["PipelineParameters"]
    assert {p["Name"]: p["Value"] for p in parameters} == {"MaxTuningJobs": "4", "MinAuc": "0.8"}


def test_start_rejects_unknown_parameters(published, config):
    with pytest.raises(publish.PublishError, match="unknown pipeline parameter.*MinAUC.*known:.*MinAuc"):
        publish.start(config, {"MinAUC": "0.8"})


def test_start_of_a_missing_pipeline_is_a_clear_error(aws, config):
    with pytest.raises(publish.PublishError, match="ResourceNotFound|ValidationException|does not exist"):
        publish.start(config, {})


@pytest.mark.parametrize("pairs", [["MinAuc"], ["=1"]])
def test_parameter_syntax(pairs):
    with pytest.raises(publish.PublishError, match="expected Name=Value"):
        publish.parse_parameters(pairs)


def test_schedule_create_disable_delete(published, config):
    """`make schedule` makes the recurring run it promises: enabled, on its own role, retried, with a DLQ."""
    scheduler = boto3.client("scheduler", region_name="us-east-1")
    assert publish.schedule(config).startswith("created schedule fraud-detection-schedule (ENABLED)")
    schedule = scheduler.get_schedule(Name="fraud-detection-schedule")
    assert schedule["ScheduleExpression"] == "cron(0 3 ? * MON *)"
    assert schedule["State"] == "ENABLED"
    target = schedule["Target"]
    assert target["Arn"].endswith(":pipeline/fraud-detection")
    assert target["RoleArn"] == SCHEDULER_ROLE  # trusted by scheduler.amazonaws.com, not SageMaker's role
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 3, "MaximumEventAgeInSeconds": 3600}
    assert target["DeadLetterConfig"] == {"Arn": DLQ}

    assert publish.schedule(config, "disable").startswith("updated schedule fraud-detection-schedule (DISABLED)")
    assert scheduler.get_schedule(Name="fraud-detection-schedule")["State"] == "DISABLED"
    assert publish.schedule(config).startswith("updated schedule fraud-detection-schedule (ENABLED)")

    publish.schedule(config, "delete")
    with pytest.raises(scheduler.exceptions.ResourceNotFoundException):
        scheduler.get_schedule(Name="fraud-detection-schedule")


def test_schedule_passes_configured_parameters_booleans_as_true_false(published, config):
    parameters = {"MaxTuningJobs": 6, "SkipBiasCheck": True, "RegisterNewBiasBaseline": False, "MinAuc": 0.8}
    with_params = config.model_copy(update={"schedule": config.schedule.model_copy(update={"parameters": parameters})})
    publish.schedule(with_params)
    target = boto3.client("scheduler", region_name="us-east-1").get_schedule(Name="fraud-detection-schedule")["Target"]
    assert target["SageMakerPipelineParameters"]["PipelineParameterList"] == [
        {"Name": "MaxTuningJobs", "Value": "6"},
        {"Name": "MinAuc", "Value": "0.8"},
        {"Name": "RegisterNewBiasBaseline", "Value": "false"},
        {"Name": "SkipBiasCheck", "Value": "true"},
    ]


def test_schedule_parameters_from_yaml_keep_their_type(config):
    document = yaml.safe_load(cfg.DEFAULT_PATH.read_text())
    document["schedule"]["parameters"] = {"SkipBiasCheck": True, "MaxTuningJobs": 6, "ClaimsUri": "s3://b/c.csv"}
    parameters = cfg.parse(document, ENV).schedule.parameters
    assert [publish.parameter_value(v) for v in parameters.values()] == ["true", "6", "s3://b/c.csv"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"role_arn": ""}, "schedule.role_arn is empty: set SCHEDULER_ROLE_ARN"),
        ({"dead_letter_arn": ""}, "schedule.dead_letter_arn is empty: set SCHEDULE_DLQ_ARN"),
        ({"parameters": {"MinAUC": 0.8}}, "unknown pipeline parameter.*MinAUC"),
    ],
)
def test_schedule_refuses_what_would_never_start(published, config, changes, message):
    changed = config.model_copy(update={"schedule": config.schedule.model_copy(update=changes)})
    with pytest.raises(publish.PublishError, match=message):
        publish.schedule(changed)


def step(name, status, reason=None):
    entry = {"StepName": name, "StepStatus": status}
    if reason:
        entry["FailureReason"] = reason
    return entry


def stubbed_watch(pages, final_status):
    """Run watch() over a stubbed client: one describe + one steps listing per poll."""
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(client)
    for i, steps in enumerate(pages):
        status = final_status if i == len(pages) - 1 else "Executing"
        stubber.add_response("describe_pipeline_execution", {"PipelineExecutionStatus": status})
        stubber.add_response(
            "list_pipeline_execution_steps",
            {"PipelineExecutionSteps": steps},
            {"PipelineExecutionArn": EXECUTION, "SortOrder": "Ascending"},
        )
    with stubber:
        lines = []
        try:
            for line in publish.watch(client, EXECUTION, poll_s=0, sleep=lambda s: None):
                lines.append(line)
        finally:
            stubber.assert_no_pending_responses()
    return lines


def test_watch_prints_each_status_change_once():
    lines = stubbed_watch(
        [
            [step("Preprocess", "Executing")],
            [step("Preprocess", "Executing")],
            [step("Preprocess", "Succeeded"), step("Tune", "Executing")],
            [step("Preprocess", "Succeeded"), step("Tune", "Succeeded")],
        ],
        "Succeeded",
    )
    assert lines == [
        "Preprocess: Executing",
        "Preprocess: Succeeded",
        "Tune: Executing",
        "Tune: Succeeded",
        "execution Succeeded",
    ]


def test_watch_raises_with_the_failing_steps_reason():
    with pytest.raises(publish.PublishError, match="execution failed: step Evaluate failed: AlgorithmError: boom"):
        stubbed_watch(
            [[step("Preprocess", "Succeeded"), step("Evaluate", "Failed", "AlgorithmError: boom")]],
            "Failed",
        )


def test_status_lists_executions_and_steps(config):
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    stubber = Stubber(client)
    started = datetime.datetime(2026, 1, 2, 3, 4, 5)
    stubber.add_response(
        "list_pipeline_executions",
        {
            "PipelineExecutionSummaries": [
                {"PipelineExecutionArn": EXECUTION, "PipelineExecutionStatus": "Failed", "StartTime": started}
            ]
        },
    )
    stubber.add_response(
        "list_pipeline_execution_steps",
        {"PipelineExecutionSteps": [step("Preprocess", "Succeeded"), step("AucBelowThreshold", "Failed", "low")]},
    )
    with stubber:
        lines = publish.status(config, client=client)
    assert lines[0].startswith(f"{EXECUTION}  Failed")
    assert lines[1:] == ["  Preprocess: Succeeded", "  AucBelowThreshold: Failed - low"]


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_upsert_without_role_is_one_line_and_non_zero(capsys, monkeypatch):
    monkeypatch.delenv("SAGEMAKER_ROLE_ARN", raising=False)
    code, _, err = run_cli(capsys, "upsert")
    assert code != 0
    assert err.strip() == (
        "fraud-pipeline upsert: error: aws.role_arn is empty: set SAGEMAKER_ROLE_ARN to the pipeline's execution role"
    )


def test_cli_invalid_config_names_the_key(capsys, tmp_path):
    broken = tmp_path / "pipeline.yaml"
    broken.write_text(cfg.DEFAULT_PATH.read_text().replace("eta: 0.05", "eta: 1.7"))
    code, _, err = run_cli(capsys, "--config", str(broken), "definition")
    assert code != 0
    assert "training.hyperparameters.eta: 1.7 is above the maximum 1.0" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_upsert_without_credentials(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.setenv("SAGEMAKER_BUCKET", "test-bucket")
    monkeypatch.setenv("FRAUD_IMAGE_URI", f"{REPOSITORY}:latest")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, _, err = run_cli(capsys, "upsert")
    assert code != 0
    assert (
        err.strip() == "fraud-pipeline upsert: error: no AWS credentials found (set AWS_PROFILE or AWS_ACCESS_KEY_ID)"
    )


def test_cli_upsert_without_network(capsys, monkeypatch):
    """Credentials but no reachable endpoint: the connection error, in one line."""
    monkeypatch.setenv("SAGEMAKER_ROLE_ARN", ROLE)
    monkeypatch.setenv("SAGEMAKER_BUCKET", "test-bucket")
    monkeypatch.setenv("FRAUD_IMAGE_URI", f"{REPOSITORY}:latest")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    code, _, err = run_cli(capsys, "upsert")
    assert code != 0
    assert err.startswith("fraud-pipeline upsert: error: Could not connect to the endpoint URL")
    assert len(err.strip().splitlines()) == 1


def test_cli_definition_writes_the_file_and_says_it_was_built_offline(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SAGEMAKER_BUCKET", "test-bucket")
    out = tmp_path / "definition.json"
    code, printed, err = run_cli(capsys, "definition", "--output", str(out))
    assert code == 0 and printed.strip() == f"wrote {out}"
    assert err.startswith("note: built offline: the S3 objects this definition names")
    assert "--upload" in err
    types = {s["Type"] for s in json.loads(out.read_text())["Steps"]}
    assert types == {"Processing", "ClarifyCheck", "Tuning", "Model", "Condition"}
