"""The local engine (pipelines/local/engine.py) without containers: the SageMaker SDK internals it extends
(pinned here: v2 is in maintenance, and a change to them must show), and the project's pipeline executed with
fake jobs to show step caching and the new-model condition as the service documents them."""

from __future__ import annotations

import datetime
import io
import json

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from sagemaker.local.entities import _LocalPipelineExecution, _LocalPipelineExecutionStep
from sagemaker.local.exceptions import StepExecutionException
from sagemaker.local.pipeline import LocalPipelineExecutor, _StepExecutor, _StepExecutorFactory
from sagemaker.workflow.pipeline_context import LocalPipelineSession
from sagemaker.workflow.steps import StepTypeEnum

from pipelines import config as cfg
from pipelines.local import engine
from pipelines.local.cache import StepCache
from pipelines.local.logs import ContainerOutput
from pipelines.local.registry import Registry
from pipelines.local.runner import local_config
from pipelines.pipeline import STAGING, get_pipeline, project_root

BUCKET = "fraud-detection-local"


@pytest.fixture(scope="module")
def built():
    """The project's pipeline, built with a LocalPipelineSession on moto's S3 (kept open for the module)."""
    config = local_config(cfg.load(environ={}))
    with mock_aws(), project_root():
        boto = boto3.Session(region_name="us-east-1", aws_access_key_id="l", aws_secret_access_key="l")
        boto.client("s3").create_bucket(Bucket=BUCKET)
        session = LocalPipelineSession(boto_session=boto, default_bucket=BUCKET)
        yield config, session, get_pipeline(config, session)


def test_sdk_local_mode_refuses_the_step_types_the_project_adds(built):
    _, session, pipeline = built
    with pytest.raises(
        ClientError, match="Step type (Tuning|ClarifyCheck|RegisterModel) is not supported in local mode"
    ):
        _LocalPipelineExecution("x", pipeline, local_session=session)
    step = _LocalPipelineExecutionStep("Tune", StepTypeEnum.TUNING, None, properties={"a": 1})
    with pytest.raises(KeyError):
        step._construct_metadata()


def test_sdk_executor_hooks_the_engine_overrides_are_there(built):
    _, session, pipeline = built
    execution = engine.LocalExecution("x", pipeline, local_session=session)
    executor = LocalPipelineExecutor(execution, session)
    assert isinstance(executor._step_executor_factory, _StepExecutorFactory)
    for name in ("_execute_step", "evaluate_step_arguments", "_parse_arguments", "evaluate_pipeline_variable"):
        assert callable(getattr(executor, name)), name
    tune = executor.pipeline_dag.step_map["Tune"]
    with pytest.raises(StepExecutionException, match="Unsupported step type"):
        _StepExecutorFactory(executor).get(tune)
    assert tune.to_request()["CacheConfig"] == {"Enabled": True, "ExpireAfter": "P30D"}  # a CompiledStep
    assert issubclass(engine.ExecutorFactory, _StepExecutorFactory) and issubclass(engine.Engine, LocalPipelineExecutor)


class FakeJob(_StepExecutor):
    """A step that 'runs' at once: properties as the service's describe call gives them, outputs in S3."""

    data_version = "v1"
    ran: list[str] = []

    def execute(self) -> dict:
        runner, name = self.pipline_executor, self.step.name
        FakeJob.ran.append(name)
        request = runner.evaluate_step_arguments(self.step)
        s3 = runner.context.s3_client
        if self.step.step_type == StepTypeEnum.TUNING:
            job = f"tune-{runner.execution.pipeline_execution_name}-001"
            s3.put_object(Bucket=BUCKET, Key=f"fraud-detection/models/{job}/output/model.tar.gz", Body=b"model")
            return {"TrainingJobSummaries": [{"TrainingJobName": job}], "HyperParameterTuningJobArn": job}
        if self.step.step_type == StepTypeEnum.CLARIFY_CHECK:
            return {
                "CalculatedBaselineConstraints": "s3://b/a.json",
                "BaselineUsedForDriftCheckConstraints": "s3://b/c",
            }
        outputs = {
            o["OutputName"]: {"S3Output": o["S3Output"]}
            for o in request.get("ProcessingOutputConfig", {}).get("Outputs", [])
        }
        evaluation = {"binary_classification_metrics": {"auc": {"value": 0.9}}, "threshold": {"value": 0.3}}
        files = {
            "version": ("version.json", {"version": FakeJob.data_version}),
            "evaluation": ("evaluation.json", evaluation),
        }
        for output, (file, document) in files.items():
            if output in outputs:
                key = outputs[output]["S3Output"]["S3Uri"].removeprefix(f"s3://{BUCKET}/")
                s3.put_object(Bucket=BUCKET, Key=f"{key}/{file}", Body=json.dumps(document).encode())
        return {"ProcessingJobName": name, "ProcessingOutputConfig": {"Outputs": outputs}}


def execute(built, tmp_path, execution_id: str, **parameters) -> engine.LocalExecution:
    config, session, pipeline = built
    execution = engine.LocalExecution(execution_id, pipeline, PipelineParameters=parameters, local_session=session)
    context = engine.RunContext(
        registry=Registry(tmp_path / "registry.json", "us-east-1"),
        cache=StepCache(tmp_path / "cache.json"),
        output=ContainerOutput(io.StringIO()),
        image=config.aws.image_uri,
        code_dir=STAGING,
        s3_client=session.boto_session.client("s3"),
        now=lambda: datetime.datetime.now(datetime.UTC),
    )
    FakeJob.ran = []
    engine.Engine(execution, session, context).execute()
    return execution


@pytest.fixture
def fakes(monkeypatch):
    """Every job-running step type answered by FakeJob; Condition, Fail and RegisterModel run for real."""
    original = engine.ExecutorFactory.get

    def get(factory, step):
        if step.step_type in (StepTypeEnum.PROCESSING, StepTypeEnum.TUNING, StepTypeEnum.CLARIFY_CHECK):
            return FakeJob(factory.pipeline_executor, step)
        return original(factory, step)

    monkeypatch.setattr(engine.ExecutorFactory, "get", get)
    FakeJob.data_version = "v1"


def cache_hits(execution) -> set[str]:
    return {s["StepName"] for s in execution.list_steps()["PipelineExecutionSteps"] if "CacheHitResult" in s}


def test_caching_reuses_what_did_not_change_and_registers_only_new_models(built, tmp_path, fakes):
    first = execute(built, tmp_path, "exec1", MinAuc=0.5)
    assert first.status == "Succeeded", first.failure_reason
    assert (
        "Register-RegisterModel" in FakeJob.ran or first.step_execution["Register-RegisterModel"].status == "Succeeded"
    )
    assert not cache_hits(first)

    second = execute(built, tmp_path, "exec2", MinAuc=0.5)
    assert second.status == "Succeeded"
    assert cache_hits(second) == {"Preprocess", "FeatureStoreIngest", "DataBiasCheck", "Tune", "Evaluate"}
    assert FakeJob.ran == ["DataVersion", "ModelBiasCheck"]  # never cached: the data's fingerprint; a check of the
    # model ScoringModel created in this execution
    steps = {s["StepName"]: s for s in second.list_steps()["PipelineExecutionSteps"]}
    assert steps["Tune"]["CacheHitResult"] == {"SourcePipelineExecutionArn": "exec1"}
    assert steps["CheckNewModel"]["Metadata"] == {"Condition": {"Outcome": False}}
    assert "Register-RegisterModel" not in steps
    assert len(Registry(tmp_path / "registry.json", "us-east-1").packages("fraud-detection-models")) == 1

    changed = execute(built, tmp_path, "exec3", MinAuc=0.5, MaxTuningJobs=2)
    assert cache_hits(changed) == {"Preprocess", "FeatureStoreIngest", "DataBiasCheck"}
    assert len(Registry(tmp_path / "registry.json", "us-east-1").packages("fraud-detection-models")) == 2

    FakeJob.data_version = "v2"  # new data at the same ClaimsUri
    fresh = execute(built, tmp_path, "exec4", MinAuc=0.5)
    assert not cache_hits(fresh)
    package = Registry(tmp_path / "registry.json", "us-east-1").packages("fraud-detection-models")[-1]
    assert package["CustomerMetadataProperties"]["data_version"] == "v2"
    assert package["CustomerMetadataProperties"]["training_job"] == "tune-exec4-001"


def test_a_failed_step_is_not_cached(built, tmp_path, fakes, monkeypatch):
    def fail(self):
        if self.step.name == "Evaluate":
            self.pipline_executor.execution.update_step_failure(self.step.name, "evaluate: error: broken")
        return original(self)

    original = FakeJob.execute
    monkeypatch.setattr(FakeJob, "execute", fail)
    failed = execute(built, tmp_path, "exec1", MinAuc=0.5)
    assert failed.status == "Failed"
    assert failed.failure_reason == "Step 'Evaluate' failed with message: evaluate: error: broken"
    monkeypatch.setattr(FakeJob, "execute", original)
    again = execute(built, tmp_path, "exec2", MinAuc=0.5)
    assert "Evaluate" in FakeJob.ran and "Evaluate" not in cache_hits(again)
    assert "Tune" in cache_hits(again)


def test_the_model_data_must_exist_to_register(built, tmp_path, fakes, monkeypatch):
    monkeypatch.setattr(engine.RunContext, "s3_exists", lambda self, uri: False)
    execution = execute(built, tmp_path, "exec1", MinAuc=0.5)
    assert execution.status == "Failed"
    model = "s3://fraud-detection-local/fraud-detection/models/tune-exec1-001/output/model.tar.gz"
    assert f"ModelDataUrl {model} does not exist" in execution.failure_reason
