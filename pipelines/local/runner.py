"""fraud-pipeline local: the pipeline that get_pipeline builds for the cloud, run on this machine in containers.

The very Pipeline object `make upsert` publishes runs through SageMaker local mode (LocalPipelineSession), with
this package's executors for the step types local mode lacks (engine.py). Only the bucket and the role differ
from the cloud's definition (a local bucket in moto's S3 server, a placeholder role); runs/<id>/definition.json
holds the definition that ran.

What it starts and stops: moto's S3 server on 127.0.0.1 (local mode moves step code and data through S3).
What it needs: a Docker engine and the project image (built when missing). What it keeps between runs:
runs/local-aws/ (state.py: the local S3's objects, the model registry, the step cache). Each run's outputs
are copied to runs/<execution-id>/.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tarfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.exceptions import ClientError

from pipelines.config import ROOT, Config, s3_key
from pipelines.local.cache import StepCache, to_json
from pipelines.local.containers import LocalRunError, network_gateway
from pipelines.local.engine import Engine, LocalExecution, RunContext
from pipelines.local.feature_store import FeatureStore, serving
from pipelines.local.logs import ContainerOutput, StepProgress
from pipelines.local.registry import Registry
from pipelines.local.state import LocalState, StateBusy
from pipelines.publish import canonical_json

LOCAL_ROLE = "arn:aws:iam::000000000000:role/local-pipeline"
LOCAL_BUCKET = "fraud-detection-local"
FAIL_STEP = "AucBelowThreshold"
STATE_FOLDER = "local-aws"
REASONS_SHOWN = 5
BIAS_REPORTS = {"DataBiasCheck": "bias", "ModelBiasCheck": "model-bias"}
"""Each bias check's report folder in a run's outputs."""
"""Global reasons (columns by mean |SHAP| on the test rows) a run's summary lists."""


@dataclass
class RunResult:
    execution_id: str
    status: str
    run_dir: Path
    steps: list[dict] = field(default_factory=list)
    failure: str = ""
    failed_step: str = ""

    @property
    def fail_branch(self) -> bool:
        return self.failed_step == FAIL_STEP

    def step(self, name: str) -> dict:
        """The step's ListPipelineExecutionSteps entry ({} when it did not run)."""
        return next((s for s in self.steps if s["StepName"] == name), {})


@contextmanager
def local_s3(region: str) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 for the duration of a run; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    overrides = {
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": region,
    }
    saved = {name: os.environ.get(name) for name in overrides}
    os.environ.update(overrides)
    try:
        yield endpoint
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def feature_store_endpoints(url: str) -> dict[str, str]:
    """The environment that points a job's boto3 at the local Feature Store (control plane and runtime)."""
    return {"AWS_ENDPOINT_URL_SAGEMAKER": url, "AWS_ENDPOINT_URL_SAGEMAKER_FEATURESTORE_RUNTIME": url}


def local_config(config: Config) -> Config:
    """The configuration a local run builds the pipeline from: the local bucket, and a role when none is set."""
    aws = config.aws.model_copy(update={"bucket": LOCAL_BUCKET, "role_arn": config.aws.role_arn or LOCAL_ROLE})
    return config.model_copy(update={"aws": aws})


def _typed(pipeline, overrides: dict[str, str]) -> dict:
    """Parameter overrides in their declared types; unknown names are an error."""
    declared = {p.name: p for p in pipeline.parameters}
    unknown = sorted(set(overrides) - set(declared))
    if unknown:
        raise LocalRunError(f"unknown pipeline parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(declared))}")
    typed = {}
    for name, text in overrides.items():
        kind = declared[name].parameter_type.python_type
        if kind is bool and text.lower() not in ("true", "false"):
            raise LocalRunError(f"parameter {name}: {text!r} is not true or false")
        try:
            typed[name] = text.lower() == "true" if kind is bool else kind(text)
        except ValueError:
            raise LocalRunError(f"parameter {name}: {text!r} is not a {kind.__name__}") from None
    return typed


@contextmanager
def progress(say: Callable[[str], None]) -> Iterator[None]:
    """The SDK's step log and the executors' notes, as progress lines."""
    handler = StepProgress(say, FAIL_STEP)
    loggers = [logging.getLogger("sagemaker.local.entities"), logging.getLogger("pipelines.local.steps")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
            logger.propagate = True


def _copy_saved(state: LocalState, uri: str | None, target: Path) -> None:
    """A saved S3 object or prefix, copied into the run folder (nothing when it is not there)."""
    if not uri:
        return
    source = state.saved_object(uri)
    if source.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    elif source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)


def _output(properties: dict, name: str) -> str | None:
    return (
        properties.get("ProcessingOutputConfig", {}).get("Outputs", {}).get(name, {}).get("S3Output", {}).get("S3Uri")
    )


def collect(properties: dict[str, dict], state: LocalState, run_dir: Path) -> None:
    """The run's model, evaluation, bias reports, manifest, tuning summary and model package, into run_dir,
    from wherever the steps' properties say they are (an earlier execution's outputs, for a cached step)."""
    _copy_saved(state, _output(properties.get("Evaluate", {}), "evaluation"), run_dir / "evaluation")
    for step, folder in BIAS_REPORTS.items():
        bias = properties.get(step, {})
        report = bias.get("CalculatedBaselineConstraints", "").removesuffix("/analysis.json") or _output(bias, "report")
        _copy_saved(state, report, run_dir / folder)
    _copy_saved(state, _output(properties.get("Preprocess", {}), "manifest"), run_dir)
    _copy_saved(state, _output(properties.get("DataVersion", {}), "version"), run_dir / "data-version")
    if "Tune" in properties:
        (run_dir / "tuning.json").write_text(canonical_json_of(properties["Tune"]))
    model = properties.get("Evaluate", {}).get("ProcessingInputs", {}).get("model", {}).get("S3Input", {})
    _copy_saved(state, model.get("S3Uri"), run_dir / "model.tar.gz")  # the model Evaluate evaluated
    if (run_dir / "model.tar.gz").is_file():
        with tarfile.open(run_dir / "model.tar.gz") as tar:
            tar.extractall(run_dir / "model", filter="data")
    package = properties.get("Register-RegisterModel")
    if package:
        (run_dir / "model-package.json").write_text(canonical_json_of(package))


def canonical_json_of(value) -> str:
    return canonical_json(json.dumps(to_json(value)))


def run(
    config: Config,
    claims: Path,
    customers: Path,
    overrides: dict[str, str],
    runs_dir: Path,
    say: Callable[[str], None] = print,
) -> RunResult:
    """Run the cloud graph on these raw files; copy the outputs to runs_dir/<execution-id>/."""
    from sagemaker.workflow.pipeline_context import LocalPipelineSession

    from pipelines.pipeline import STAGING, get_pipeline, project_root

    config = local_config(config)
    for path in (claims, customers):
        if not path.is_file():
            raise LocalRunError(f"{path}: file not found")
    state = LocalState(runs_dir / STATE_FOLDER)
    execution_id = uuid.uuid4().hex[:12]
    run_dir = runs_dir / execution_id
    try:
        with state.locked(), local_s3(config.aws.region) as endpoint, project_root():
            s3 = boto3.client("s3", region_name=config.aws.region, endpoint_url=endpoint)
            s3.create_bucket(Bucket=LOCAL_BUCKET)
            state.restore(s3, LOCAL_BUCKET)
            inputs = {}
            for name, table, path in (("ClaimsUri", "claims", claims), ("CustomersUri", "customers", customers)):
                key = s3_key(config.aws.prefix, "raw", table, path.name)
                s3.upload_file(str(path), LOCAL_BUCKET, key)
                inputs[name] = f"s3://{LOCAL_BUCKET}/{key}"
            session = LocalPipelineSession(
                boto_session=boto3.Session(region_name=config.aws.region),
                default_bucket=LOCAL_BUCKET,
                s3_endpoint_url=endpoint,
            )
            session.config = {"local": {"local_code": False}}
            pipeline = get_pipeline(config, session)
            parameters = {**inputs, **_typed(pipeline, overrides)}
            try:
                execution = LocalExecution(execution_id, pipeline, PipelineParameters=parameters, local_session=session)
            except ClientError as error:
                raise LocalRunError(error.response["Error"]["Message"]) from None
            run_dir.mkdir(parents=True)
            (run_dir / "definition.json").write_text(canonical_json(pipeline.definition()))
            output = ContainerOutput(sys.stdout)
            feature_store = FeatureStore(state.feature_store_path, config.aws.region)
            with serving(feature_store, network_gateway()) as url:
                context = RunContext(
                    registry=Registry(state.registry_path, config.aws.region),
                    cache=StepCache(state.cache_path),
                    output=output,
                    image=config.aws.image_uri,
                    code_dir=ROOT / STAGING,
                    s3_client=s3,
                    job_environment=feature_store_endpoints(url),
                )
                with progress(say), redirect_stdout(output):
                    Engine(execution, session, context).execute()
            feature_store.write_offline(s3)
            state.save(s3, LOCAL_BUCKET)
    except StateBusy as error:
        raise LocalRunError(str(error)) from None
    properties = {name: step.properties for name, step in execution.step_execution.items() if step.properties}
    collect(properties, state, run_dir)
    steps = execution.list_steps()["PipelineExecutionSteps"]
    failed = [s for s in steps if s.get("StepStatus") == "Failed"]
    return RunResult(
        execution_id=execution_id,
        status=execution.status,
        run_dir=run_dir,
        steps=steps,
        failure=failed[0].get("FailureReason", "") if failed else (execution.failure_reason or ""),
        failed_step=failed[0]["StepName"] if failed else "",
    )


def summary(result: RunResult) -> list[str]:
    """What a person wants to read after a run: the outcome, what was cached, the tuning, AUC, threshold, the top
    global reasons, bias metrics, the registered package, where the files are."""
    lines = [f"execution {result.execution_id}: {result.status}"]
    cached = [s["StepName"] for s in result.steps if "CacheHitResult" in s]
    if cached:
        lines.append(f"cached (earlier executions' outputs): {', '.join(cached)}")
    tuning = result.run_dir / "tuning.json"
    if tuning.exists():
        tune = json.loads(tuning.read_text())
        best = tune["BestTrainingJob"]
        metric = best["FinalHyperParameterTuningJobObjectiveMetric"]
        counters = tune["ObjectiveStatusCounters"]
        lines.append(
            f"tuning: best of {counters['Succeeded'] + counters['Failed']} job(s) {best['TrainingJobName']}, "
            f"{metric['MetricName']} {metric['Value']:.4f}"
        )
    evaluation = result.run_dir / "evaluation" / "evaluation.json"
    if evaluation.exists():
        report = json.loads(evaluation.read_text())
        auc = report["binary_classification_metrics"]["auc"]["value"]
        threshold = report["threshold"]
        lines.append(f"AUC {auc:.4f}; threshold {threshold['value']:.4f} ({threshold['method']})")
    explainability = result.run_dir / "evaluation" / "explainability.json"
    if explainability.exists():
        [label] = json.loads(explainability.read_text())["explanations"]["kernel_shap"].values()
        top = list(label["global_shap_values"].items())[:REASONS_SHOWN]
        lines.append("top reasons (mean |SHAP| on test): " + ", ".join(f"{c} {v:.4f}" for c, v in top))
    analysis = result.run_dir / BIAS_REPORTS["DataBiasCheck"] / "analysis.json"
    if analysis.exists():
        facets = json.loads(analysis.read_text())["pre_training_bias_metrics"]["facets"]
        for facet, groups in facets.items():
            for group in groups:
                values = ", ".join(
                    f"{m['name']} {m['value']:.4f}" for m in group["metrics"] if m.get("value") is not None
                )
                lines.append(f"data bias ({facet}={group['value_or_threshold']}): {values}")
    model_bias = result.run_dir / BIAS_REPORTS["ModelBiasCheck"] / "report.md"
    if model_bias.exists():
        lines.append("model bias (predicted labels on the test split, at the threshold):")
        lines += [f"  {row}" for row in model_bias.read_text().splitlines() if row.startswith("| ")]
    package = result.run_dir / "model-package.json"
    if package.exists():
        registered = json.loads(package.read_text())
        lines.append(f"registered {registered['ModelPackageArn']} ({registered['ModelApprovalStatus']})")
    elif result.step("CheckNewModel").get("Metadata", {}).get("Condition", {}).get("Outcome") is False:
        lines.append("not registered: the model is an earlier execution's (Evaluate was cached), registered then")
    if result.fail_branch:
        lines.append(f"fail branch: {result.failure}")
    elif result.failed_step:
        lines.append(f"step {result.failed_step} failed: {result.failure}")
    lines.append(f"outputs: {result.run_dir}")
    return lines
