"""get_pipeline(config, session): the fraud-detection SageMaker Pipeline, built from pipeline.yaml.

DataVersion -> Preprocess -> FeatureStoreIngest, DataBiasCheck -> Tune -> Evaluate -> [ScoringModel ->]
ModelBiasCheck, CheckAuc -> CheckNewModel -> Register | AucBelowThreshold. The same graph is published (a
PipelineSession) and run locally (a LocalPipelineSession, pipelines/local/). Every setting comes from the Config;
the step scripts live in processing/, training/ and evaluation/.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import sagemaker.utils
from sagemaker.clarify import BiasConfig, DataConfig, ModelConfig, ModelPredictedLabelConfig
from sagemaker.drift_check_baselines import DriftCheckBaselines
from sagemaker.estimator import Estimator
from sagemaker.inputs import TrainingInput
from sagemaker.model import Model
from sagemaker.model_metrics import FileSource, MetricsSource, ModelMetrics
from sagemaker.model_monitor import BiasAnalysisConfig
from sagemaker.network import NetworkConfig
from sagemaker.processing import FrameworkProcessor, ProcessingInput, ProcessingOutput
from sagemaker.sklearn.estimator import SKLearn
from sagemaker.tuner import ContinuousParameter, HyperparameterTuner, IntegerParameter
from sagemaker.workflow.check_job_config import CheckJobConfig
from sagemaker.workflow.clarify_check_step import ClarifyCheckStep, DataBiasCheckConfig, ModelBiasCheckConfig
from sagemaker.workflow.condition_step import ConditionStep
from sagemaker.workflow.conditions import ConditionEquals, ConditionGreaterThanOrEqualTo
from sagemaker.workflow.execution_variables import ExecutionVariables
from sagemaker.workflow.fail_step import FailStep
from sagemaker.workflow.functions import Join, JsonGet
from sagemaker.workflow.model_step import ModelStep
from sagemaker.workflow.parameters import ParameterBoolean, ParameterFloat, ParameterInteger, ParameterString
from sagemaker.workflow.pipeline import Pipeline
from sagemaker.workflow.properties import PropertyFile
from sagemaker.workflow.steps import CacheConfig, ProcessingStep, Step, TuningStep
from sagemaker.workflow.utilities import hash_files_or_dirs

from pipelines.config import ROOT, Config, load_step_module, s3_key, s3_uri

_FEATURES = load_step_module("features", ROOT / "processing" / "features.py")
KEY, PREDICTED_COLUMN = _FEATURES.KEY, _FEATURES.PREDICTED_LABEL

STAGING = Path("build/code")
CONTAINER = "/opt/ml/processing"
PREPROCESS_OUTPUTS = ("train", "validation", "test", "headered", "features", "manifest")
OBJECTIVE = "validation:auc"
METRIC_DEFINITIONS = [
    {"Name": "validation:auc", "Regex": r"validation:auc=([0-9\.]+)"},
    {"Name": "train:auc", "Regex": r"train:auc=([0-9\.]+)"},
]
AUC_PATH = "binary_classification_metrics.auc.value"
THRESHOLD_PATH = "threshold.value"
CLARIFY_REPORT = {"report": {"name": "report", "title": "Analysis Report"}}
"""What ClarifyCheckStep adds to an analysis config's methods (sagemaker/workflow/clarify_check_step.py)."""
PREDICTED_LABEL = ModelPredictedLabelConfig(label=1)
"""Where the predicted label is in the model's text/csv answer ("probability,flag" per record: serving/serve.py)."""


class BiasCheck(NamedTuple):
    """What sets one bias gate apart: its step, S3 folder, stage (bias.py's), metrics, limits and flags."""

    name: str
    folder: str
    stage: str
    metrics: list[str]
    thresholds: dict[str, float]
    skip: ParameterBoolean
    register_new: ParameterBoolean


class BiasGate(NamedTuple):
    """The bias check step of either engine, and the S3 URIs the registry records from it."""

    step: Step
    calculated: object
    """the calculated analysis.json (the package's bias_pre_training or bias_post_training report)"""
    drift_baseline: object
    """the constraints used for drift checks (BaselineUsedForDriftCheckConstraints)"""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@functools.cache
def _bias_script():
    """processing/bias.py as a module (with atomic_outputs, which it imports): the builder makes the supplied
    baseline with its own layout function."""
    load_step_module("atomic_outputs", ROOT / "processing" / "atomic_outputs.py")
    return load_step_module("_bias_step_script", ROOT / "processing" / "bias.py")


def _validated_once(validate):
    """The SDK validates its config file (pipelines/sagemaker_sdk_config.yaml) against its JSON schema at every
    config lookup, about 0.2 s each and 70 per build: validate each distinct config once (an invalid one still
    raises every time)."""
    valid: set[str] = set()

    @functools.wraps(validate)
    def validate_once(sagemaker_config=None):
        text = json.dumps(sagemaker_config, sort_keys=True, default=str)
        if text not in valid:
            validate(sagemaker_config)
            valid.add(text)

    return validate_once


sagemaker.utils.validate_sagemaker_config = _validated_once(sagemaker.utils.validate_sagemaker_config)


@contextmanager
def project_root() -> Iterator[None]:
    """Run inside the project root, so code paths (and so the SDK's code hashes) are relative and
    the definition does not depend on where the repository is checked out."""
    previous = os.getcwd()
    os.chdir(ROOT)
    try:
        yield
    finally:
        os.chdir(previous)


STAGED_WITH = {"training": ("serving/serve.py", "serving/explain.py", "processing/features.py")}
"""Files staged beside a step's own: train.py puts the serving code into the model artifact."""


def stage_code(folder: str) -> str:
    """Copy a step's Python files (no __pycache__) to build/code/<folder>; returns that relative path.

    The SDK keys code uploads by a hash of the directory's file names and contents, so staging only
    the sources keeps the upload path, and the definition, stable across machines and test runs.
    """
    target = ROOT / STAGING / folder
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    sources = sorted((ROOT / folder).glob("*.py")) + [ROOT / extra for extra in STAGED_WITH.get(folder, ())]
    for source in sources:
        shutil.copy2(source, target / source.name)
    return str(STAGING / folder)


class Parameters:
    """The pipeline parameters a user sees, typed, in Studio's "start execution" form."""

    def __init__(self, config: Config):
        self.claims_uri = ParameterString(name="ClaimsUri", default_value=config.data.claims_uri)
        self.customers_uri = ParameterString(name="CustomersUri", default_value=config.data.customers_uri)
        self.processing_instance_type = ParameterString(
            name="ProcessingInstanceType", default_value=config.processing.instance_type
        )
        self.training_instance_type = ParameterString(
            name="TrainingInstanceType", default_value=config.training.compute.instance_type
        )
        self.max_tuning_jobs = ParameterInteger(name="MaxTuningJobs", default_value=config.tuning.max_jobs)
        self.max_parallel_tuning_jobs = ParameterInteger(
            name="MaxParallelTuningJobs", default_value=config.tuning.max_parallel_jobs
        )
        self.min_auc = ParameterFloat(name="MinAuc", default_value=config.evaluation.min_auc)
        self.approval_status = ParameterString(
            name="ModelApprovalStatus",
            default_value=config.registry.approval_status,
            enum_values=["PendingManualApproval", "Approved", "Rejected"],
        )
        self.skip_bias_check = ParameterBoolean(name="SkipBiasCheck", default_value=False)
        self.register_new_bias_baseline = ParameterBoolean(name="RegisterNewBiasBaseline", default_value=False)
        self.skip_model_bias_check = ParameterBoolean(name="SkipModelBiasCheck", default_value=False)
        self.register_new_model_bias_baseline = ParameterBoolean(
            name="RegisterNewModelBiasBaseline", default_value=False
        )

    def all(self) -> list:
        return list(vars(self).values())


def _network(config: Config, isolate: bool) -> NetworkConfig:
    security = config.security
    return NetworkConfig(
        enable_network_isolation=isolate and security.enable_network_isolation,
        security_group_ids=security.security_groups or None,
        subnets=security.subnets or None,
        encrypt_inter_container_traffic=security.encrypt_inter_container_traffic,
    )


def _kms(config: Config) -> str | None:
    return config.security.kms_key_id or None


class Builder:
    """Builds the steps from one Config, one session (a PipelineSession, or a LocalPipelineSession for local
    runs: the same steps either way) and one set of Parameters."""

    def __init__(self, config: Config, session):
        self.config = config
        self.session = session
        self.params = Parameters(config)
        self.staged: dict[str, str] = {}
        self.cache = CacheConfig(enable_caching=config.cache.enabled, expire_after=config.cache.expire_after)
        self.bucket = config.aws.bucket or session.default_bucket()

    def uri(self, *parts: str) -> str:
        """s3://bucket/<aws.prefix>/<parts>: every S3 location the pipeline names, from non-empty parts."""
        return s3_uri(self.bucket, self.config.aws.prefix, *parts)

    def source(self, folder: str) -> str:
        """The staged source folder of a step (staged once per build)."""
        if folder not in self.staged:
            self.staged[folder] = stage_code(folder)
        return self.staged[folder]

    def output_uri(self, step: str, name: str) -> Join:
        """s3://bucket/prefix/<execution id>/<step>/<name>: every execution keeps its own outputs."""
        return Join(on="/", values=[self.uri(), ExecutionVariables.PIPELINE_EXECUTION_ID, step, name])

    def processor(self, name: str, compute, instance_type=None, isolate: bool = True) -> FrameworkProcessor:
        """A script-mode processor on the project image: the step's folder is uploaded as its source."""
        config = self.config
        return FrameworkProcessor(
            estimator_cls=SKLearn,
            framework_version="1.2-1",
            image_uri=config.aws.image_uri,
            command=["python3"],
            role=config.aws.role_arn,
            instance_type=instance_type or compute.instance_type,
            instance_count=compute.instance_count,
            volume_size_in_gb=compute.volume_size_gb,
            max_runtime_in_seconds=compute.max_runtime_s,
            volume_kms_key=_kms(config),
            output_kms_key=_kms(config),
            network_config=_network(config, isolate),
            base_job_name=f"{config.project.name}-{name}",
            sagemaker_session=self.session,
        )

    def output(self, step: str, name: str) -> ProcessingOutput:
        """The job's /opt/ml/processing/output/<name>, uploaded to output_uri(step, name)."""
        return ProcessingOutput(
            output_name=name, source=f"{CONTAINER}/output/{name}", destination=self.output_uri(step, name)
        )

    def raw_inputs(self) -> list[ProcessingInput]:
        """The raw tables (parameters ClaimsUri, CustomersUri) as processing inputs."""
        return [
            ProcessingInput(
                source=self.params.claims_uri, destination=f"{CONTAINER}/input/claims", input_name="claims"
            ),
            ProcessingInput(
                source=self.params.customers_uri, destination=f"{CONTAINER}/input/customers", input_name="customers"
            ),
        ]

    def data_version(self) -> tuple[ProcessingStep, PropertyFile]:
        """The fingerprint of the raw inputs' contents, never cached: Preprocess takes it as an argument, so its
        cache key changes exactly when the data does (caching keys on arguments, not on what an S3 URI holds)."""
        processor = self.processor("data-version", self.config.processing, self.params.processing_instance_type)
        version = PropertyFile(name="DataVersion", output_name="version", path="version.json")
        step_args = processor.run(
            code="data_version.py",
            source_dir=self.source("processing"),
            inputs=self.raw_inputs(),
            outputs=[self.output("data-version", "version")],
            arguments=["--output-dir", f"{CONTAINER}/output/version"],
        )
        return ProcessingStep(name="DataVersion", step_args=step_args, property_files=[version]), version

    def preprocess(self, version: PropertyFile) -> ProcessingStep:
        config = self.config
        processor = self.processor("preprocess", config.processing, self.params.processing_instance_type)
        step_args = processor.run(
            code="preprocess.py",
            source_dir=self.source("processing"),
            inputs=self.raw_inputs(),
            outputs=[self.output("preprocess", name) for name in PREPROCESS_OUTPUTS],
            arguments=[
                "--validation-fraction",
                str(config.data.validation_fraction),
                "--test-fraction",
                str(config.data.test_fraction),
                "--seed",
                str(config.data.seed),
                "--data-version",
                JsonGet(step_name="DataVersion", property_file=version, json_path="version"),
            ],
        )
        return ProcessingStep(name="Preprocess", step_args=step_args, cache_config=self.cache)

    def ingest(self, preprocess: ProcessingStep) -> ProcessingStep:
        config, store = self.config, self.config.feature_store
        processor = self.processor("ingest", store.compute, isolate=False)
        arguments = [
            "--claims-group",
            store.claims_group,
            "--customers-group",
            store.customers_group,
            "--role-arn",
            config.aws.role_arn,
            "--region",
            config.aws.region,
            "--online-store" if store.online_store else "--no-online-store",
            "--workers",
            str(store.ingest_workers),
            "--max-attempts",
            str(store.max_attempts),
        ]
        if store.offline_store:
            arguments += ["--offline-store-uri", self.uri("feature-store")]
        if config.security.kms_key_id:
            arguments += ["--kms-key-id", config.security.kms_key_id]
        step_args = processor.run(
            code="ingest.py",
            source_dir=self.source("processing"),
            inputs=[ProcessingInput(source=_output(preprocess, "features"), destination=f"{CONTAINER}/input/features")],
            arguments=arguments,
        )
        return ProcessingStep(name="FeatureStoreIngest", step_args=step_args, cache_config=self.cache)

    def upload(self, document: dict, folder: str, kind: str, name: str) -> str:
        """Upload a JSON document under a key named by its content hash: <folder>/<kind>/<sha256[:16]>/<name>.

        An edit makes a new key (so the definition changes and cached steps re-run), and an upsert never
        rewrites a file that running executions read.
        """
        body = json.dumps(document)
        key = s3_key(self.config.aws.prefix, folder, kind, _digest(body), name)
        self.session.upload_string_as_file_body(body, self.bucket, key, _kms(self.config))
        return s3_uri(self.bucket, key)

    def bias_gate(self, check: BiasCheck, data_config: DataConfig, model: ModelStep | None = None) -> BiasGate:
        """A bias gate (bias.engine): Clarify's ClarifyCheckStep, or the same check as a processing step with
        smclarify. Either way it checks against a baseline made of the stage's thresholds (a metric farther from 0
        than its limit fails the run), supplied to the step, so no earlier approved model is needed and the gate
        means the same in the cloud and locally. The model's gate (post-training) asks `model`'s endpoint for
        its predictions (Clarify's shadow endpoint), or, with smclarify, reads them from data_config's
        predicted_label column."""
        bias, bias_config = self.config.bias, self.bias_config()
        model_config = self.shadow_endpoint(model) if model else None
        analysis_config = {
            **data_config.get_config(),
            **bias_config.get_config(),
            "methods": {f"{check.stage}_bias": {"methods": check.metrics}, **CLARIFY_REPORT},
            **({"predictor": _predictor(model_config)} if model_config else {}),
        }
        script = _bias_script()
        settings = script.Settings(
            bias.label, [bias.positive_label], bias.facet, list(bias.facet_values), check.metrics, check.stage
        )
        baseline = script.baseline_from_thresholds(dict(check.thresholds), settings)
        supplied = self.upload(baseline, check.folder, "baseline", "constraints.json")
        if bias.engine == "clarify":
            data_config.s3_analysis_config_output_path = self.uri(
                check.folder, "config", _digest(json.dumps(analysis_config))
            )
            options = {"data_bias_config": bias_config, "methods": check.metrics, "kms_key": _kms(self.config)}
            if model_config:
                check_config = ModelBiasCheckConfig(
                    data_config, model_config=model_config, model_predicted_label_config=PREDICTED_LABEL, **options
                )
            else:
                check_config = DataBiasCheckConfig(data_config, **options)
            step = self.clarify_check(check, check_config, supplied, model)
            calculated = step.properties.CalculatedBaselineConstraints
            drift = step.properties.BaselineUsedForDriftCheckConstraints
        else:
            config_uri = self.upload(analysis_config, check.folder, "config", "analysis_config.json")
            step = self.smclarify_check(check, data_config.s3_data_input_path, config_uri, supplied)
            calculated = Join(on="/", values=[_output(step, "report"), "analysis.json"])
            drift = Join(on="/", values=[_output(step, "baseline"), "constraints.json"])
        return BiasGate(step, calculated, drift)

    def bias_config(self) -> BiasConfig:
        """The facet and label of both bias gates (bias.*)."""
        bias = self.config.bias
        return BiasConfig(
            label_values_or_threshold=[bias.positive_label],
            facet_name=bias.facet,
            facet_values_or_threshold=bias.facet_values,
        )

    def data_bias_gate(self, preprocess: ProcessingStep) -> BiasGate:
        """The pre-training gate, before tuning: the data bias of the headered train split."""
        bias, params = self.config.bias, self.params
        check = BiasCheck(
            "DataBiasCheck",
            "bias-check",
            "pre_training",
            bias.metrics,
            bias.thresholds,
            params.skip_bias_check,
            params.register_new_bias_baseline,
        )
        data_config = DataConfig(
            s3_data_input_path=Join(on="/", values=[_output(preprocess, "headered"), "train.csv"]),
            s3_output_path=self.output_uri(check.folder, "report"),
            label=bias.label,
            dataset_type="text/csv",
            excluded_columns=[KEY],
        )
        return self.bias_gate(check, data_config)

    def model_bias_gate(
        self, preprocess: ProcessingStep, evaluate: ProcessingStep, model: ModelStep | None
    ) -> BiasGate:
        """The post-training gate, after evaluation: the model bias of its predicted labels on the test split at
        the operating threshold; from the model's endpoint (clarify, `model`), or evaluate's predictions.csv."""
        bias, params = self.config.bias, self.params
        check = BiasCheck(
            "ModelBiasCheck",
            "model-bias-check",
            "post_training",
            bias.post_training.metrics,
            bias.post_training.thresholds,
            params.skip_model_bias_check,
            params.register_new_model_bias_baseline,
        )
        where = {
            "s3_output_path": self.output_uri(check.folder, "report"),
            "label": bias.label,
            "dataset_type": "text/csv",
        }
        if model:
            data_config = DataConfig(
                s3_data_input_path=Join(on="/", values=[_output(preprocess, "headered"), "test.csv"]),
                excluded_columns=[KEY],
                **where,
            )
        else:
            data_config = DataConfig(
                s3_data_input_path=Join(on="/", values=[_output(evaluate, "evaluation"), "predictions.csv"]),
                predicted_label=PREDICTED_COLUMN,
                **where,
            )
        return self.bias_gate(check, data_config, model)

    def shadow_endpoint(self, model: ModelStep) -> ModelConfig:
        """The endpoint Clarify creates from `model` to ask for predictions: text/csv both ways."""
        return ModelConfig(
            model_name=model.properties.ModelName,
            instance_type=self.config.deploy.instance_type,
            instance_count=1,
            content_type="text/csv",
            accept_type="text/csv",
            endpoint_name_prefix=f"{self.config.project.name}-clarify",  # what the execution role may create
        )

    def scoring_model(self, model_data, evaluate: ProcessingStep, report: PropertyFile) -> ModelStep:
        """The model as its endpoint serves it (flagging at the operating threshold), for Clarify's shadow endpoint."""
        model = self.model(model_data, env={"FRAUD_THRESHOLD": _threshold(evaluate, report)})
        return ModelStep(name="ScoringModel", step_args=model.create(instance_type=self.config.deploy.instance_type))

    def model(self, model_data, env: dict | None = None) -> Model:
        """The trained model on the project image (its serve command)."""
        return Model(
            image_uri=self.config.aws.image_uri,
            model_data=model_data,
            role=self.config.aws.role_arn,
            env=env,
            sagemaker_session=self.session,
        )

    def clarify_check(self, check: BiasCheck, check_config, supplied: str, model: ModelStep | None) -> ClarifyCheckStep:
        """The ClarifyCheckStep; after `model`'s creation (its ModelName is read outside the step's arguments, where
        the SDK does not look for dependencies)."""
        config, bias = self.config, self.config.bias
        job_config = CheckJobConfig(
            role=config.aws.role_arn,
            instance_count=bias.compute.instance_count,
            instance_type=bias.compute.instance_type,
            volume_size_in_gb=bias.compute.volume_size_gb,
            max_runtime_in_seconds=bias.compute.max_runtime_s,
            volume_kms_key=_kms(config),
            output_kms_key=_kms(config),
            network_config=_network(config, False),
            base_job_name=f"{config.project.name}-{check.folder}",
            sagemaker_session=self.session,
        )
        return ClarifyCheckStep(
            name=check.name,
            clarify_check_config=check_config,
            check_job_config=job_config,
            skip_check=check.skip,
            register_new_baseline=check.register_new,
            supplied_baseline_constraints=supplied,
            model_package_group_name=config.registry.model_package_group,
            cache_config=self.cache,
            depends_on=[model] if model else None,
        )

    def smclarify_check(self, check: BiasCheck, dataset, config_uri: str, supplied: str) -> ProcessingStep:
        """ClarifyCheckStep's bias check as a processing step: processing/bias.py computes the metrics with
        smclarify from the same analysis config, checks them against the same supplied baseline with the same
        flags, and writes the calculated analysis (output report) and the drift-check baseline (output baseline)."""
        bias = self.config.bias
        inputs = {"data": dataset, "config": config_uri, "baseline": supplied}
        step_args = self.processor(check.folder, bias.compute).run(
            code="bias.py",
            source_dir=self.source("processing"),
            inputs=[
                ProcessingInput(source=source, destination=f"{CONTAINER}/input/{name}", input_name=name)
                for name, source in inputs.items()
            ],
            outputs=[self.output(check.folder, "report"), self.output(check.folder, "baseline")],
            arguments=[
                "--analysis-config",
                f"{CONTAINER}/input/config/analysis_config.json",
                "--baseline",
                f"{CONTAINER}/input/baseline",
                "--skip-check",
                Join(on="", values=[check.skip]),
                "--register-new-baseline",
                Join(on="", values=[check.register_new]),
                "--output-dir",
                f"{CONTAINER}/output/report",
                "--drift-baseline-dir",
                f"{CONTAINER}/output/baseline",
            ],
        )
        return ProcessingStep(name=check.name, step_args=step_args, cache_config=self.cache)

    def estimator(self) -> Estimator:
        config, security = self.config, self.config.security
        compute = config.training.compute
        return Estimator(
            image_uri=config.aws.image_uri,
            entry_point="train.py",
            source_dir=self.source("training"),
            role=config.aws.role_arn,
            instance_type=self.params.training_instance_type,
            instance_count=compute.instance_count,
            volume_size=compute.volume_size_gb,
            max_run=compute.max_runtime_s,
            output_path=self.uri("models"),
            code_location=self.uri("code"),
            hyperparameters={
                **config.training.hyperparameters.model_dump(),
                "mitigation": config.training.mitigation,
                "facet": config.bias.facet,
                "facet_values": ",".join(map(str, config.bias.facet_values)),
            },
            metric_definitions=METRIC_DEFINITIONS,
            volume_kms_key=_kms(config),
            output_kms_key=_kms(config),
            subnets=security.subnets or None,
            security_group_ids=security.security_groups or None,
            enable_network_isolation=security.enable_network_isolation,
            encrypt_inter_container_traffic=security.encrypt_inter_container_traffic,
            base_job_name=f"{config.project.name}-train",
            sagemaker_session=self.session,
        )

    def training_inputs(self, preprocess: ProcessingStep) -> dict[str, TrainingInput]:
        return {
            name: TrainingInput(_output(preprocess, name), content_type="text/csv" if name != "manifest" else None)
            for name in ("train", "validation", "manifest")
        }

    def tune(self, preprocess: ProcessingStep, estimator: Estimator, gate: Step) -> TuningStep:
        """Hyperparameter search; starts only once the data passed the bias gate."""
        tuning = self.config.tuning
        tuner = HyperparameterTuner(
            estimator=estimator,
            objective_metric_name=OBJECTIVE,
            objective_type="Maximize",
            metric_definitions=METRIC_DEFINITIONS,
            hyperparameter_ranges={name: _range(spec) for name, spec in sorted(tuning.ranges.items())},
            max_jobs=self.params.max_tuning_jobs,
            max_parallel_jobs=self.params.max_parallel_tuning_jobs,
            strategy=tuning.strategy,
            random_seed=tuning.random_seed,
            early_stopping_type="Off" if tuning.strategy == "Hyperband" else "Auto",
            base_tuning_job_name=f"{self.config.project.name[:20]}-tune",
        )
        return TuningStep(
            name="Tune",
            step_args=tuner.fit(inputs=self.training_inputs(preprocess), job_name=_code_job_name(estimator)),
            cache_config=self.cache,
            depends_on=[gate],
        )

    def evaluate(self, preprocess: ProcessingStep, model_data) -> tuple[ProcessingStep, PropertyFile]:
        config = self.config
        processor = self.processor("evaluate", config.evaluation.compute)
        report = PropertyFile(name="EvaluationReport", output_name="evaluation", path="evaluation.json")
        step_args = processor.run(
            code="evaluate.py",
            source_dir=self.source("evaluation"),
            inputs=[
                ProcessingInput(source=model_data, destination=f"{CONTAINER}/model", input_name="model"),
                ProcessingInput(source=_output(preprocess, "test"), destination=f"{CONTAINER}/test", input_name="test"),
            ],
            outputs=[self.output("evaluate", "evaluation")],
            arguments=[
                "--threshold-method",
                config.evaluation.threshold.method,
                "--alert-rate",
                str(config.evaluation.threshold.alert_rate),
                "--output-dir",
                f"{CONTAINER}/output/evaluation",
            ],
        )
        step = ProcessingStep(name="Evaluate", step_args=step_args, property_files=[report], cache_config=self.cache)
        return step, report

    def register(
        self,
        evaluate: ProcessingStep,
        report: PropertyFile,
        gates: tuple[BiasGate, BiasGate],
        model_data,
        lineage: dict,
    ) -> ModelStep:
        """The model package: the model and its serving image, its quality, bias (data and model) and explainability
        reports, the bias drift baselines, and as metadata the operating threshold and `lineage` (where the model
        came from)."""
        config, registry = self.config, self.config.registry
        data, model_bias = gates
        monitoring = BiasAnalysisConfig(self.bias_config(), headers=None, label=config.bias.label)._to_dict()
        config_file = self.upload(monitoring, "bias-check", "monitoring", "analysis_config.json")
        evaluation_uri, explainability_uri = (
            Join(on="/", values=[_output(evaluate, "evaluation"), name])
            for name in ("evaluation.json", "explainability.json")
        )
        metrics = ModelMetrics(
            model_statistics=MetricsSource(s3_uri=evaluation_uri, content_type="application/json"),
            bias_pre_training=MetricsSource(s3_uri=data.calculated, content_type="application/json"),
            bias_post_training=MetricsSource(s3_uri=model_bias.calculated, content_type="application/json"),
            explainability=MetricsSource(s3_uri=explainability_uri, content_type="application/json"),
        )
        step_args = self.model(model_data).register(
            content_types=registry.content_types,
            response_types=registry.response_types,
            inference_instances=registry.inference_instances,
            transform_instances=registry.transform_instances,
            model_package_group_name=registry.model_package_group,
            approval_status=self.params.approval_status,
            model_metrics=metrics,
            drift_check_baselines=DriftCheckBaselines(
                bias_pre_training_constraints=MetricsSource(
                    s3_uri=data.drift_baseline, content_type="application/json"
                ),
                bias_post_training_constraints=MetricsSource(
                    s3_uri=model_bias.drift_baseline, content_type="application/json"
                ),
                bias_config_file=FileSource(s3_uri=config_file, content_type="application/json"),
            ),
            customer_metadata_properties={
                "threshold": _threshold(evaluate, report),
                "threshold_method": config.evaluation.threshold.method,
                **lineage,
            },
            description=config.project.description,
        )
        return ModelStep(name="Register", step_args=step_args)

    def check_new_model(self, evaluate: ProcessingStep, if_steps: list) -> ConditionStep:
        """Register only a model this execution evaluated. When Evaluate is a cache hit (the same data, code and
        parameters as an earlier execution), its outputs are that execution's, and so is the model: it is in
        the registry already, and registering it again would add a duplicate version."""
        evaluated_here = ConditionEquals(
            left=_output(evaluate, "evaluation"), right=self.output_uri("evaluate", "evaluation")
        )
        return ConditionStep(name="CheckNewModel", conditions=[evaluated_here], if_steps=if_steps, else_steps=[])

    def check_auc(self, evaluate: ProcessingStep, report: PropertyFile, if_steps: list) -> ConditionStep:
        auc = JsonGet(step_name=evaluate.name, property_file=report, json_path=AUC_PATH)
        fail = FailStep(
            name="AucBelowThreshold",
            error_message=Join(
                on=" ", values=["Evaluation AUC", auc, "is below the threshold MinAuc", self.params.min_auc]
            ),
        )
        return ConditionStep(
            name="CheckAuc",
            conditions=[ConditionGreaterThanOrEqualTo(left=auc, right=self.params.min_auc)],
            if_steps=if_steps,
            else_steps=[fail],
        )


def _predictor(model_config: ModelConfig) -> dict:
    """The analysis config's predictor section, as ClarifyCheckStep writes it for a model bias check
    (sagemaker/workflow/clarify_check_step.py, _generate_processing_job_analysis_config)."""
    _, predictor = PREDICTED_LABEL.get_predictor_config()
    predictor.update(model_config.get_predictor_config())
    predictor.pop("model_name")
    return predictor


def _threshold(evaluate: ProcessingStep, report: PropertyFile) -> Join:
    """The operating threshold Evaluate chose, as text."""
    return Join(on="", values=[JsonGet(step_name=evaluate.name, property_file=report, json_path=THRESHOLD_PATH)])


def _output(step: ProcessingStep, name: str):
    return step.properties.ProcessingOutputConfig.Outputs[name].S3Output.S3Uri


def _code_job_name(estimator: Estimator) -> str:
    """A tuning job name keyed by the training code's hash: the SDK uploads the code under it, so
    the definition is stable while the code is, and changes (missing the cache) when it changes."""
    return f"tune-{hash_files_or_dirs([estimator.source_dir])[:16]}"


def _range(spec):
    kind = ContinuousParameter if spec.type == "continuous" else IntegerParameter
    return kind(spec.min, spec.max, scaling_type=spec.scaling)


def get_pipeline(config: Config, session) -> Pipeline:
    """The graph: DataVersion, Preprocess, FeatureStoreIngest, DataBiasCheck, Tune, Evaluate, [ScoringModel
    (bias.engine clarify),] ModelBiasCheck, CheckAuc -> CheckNewModel -> Register, or AucBelowThreshold (Fail).

    Call it, and the pipeline's definition()/upsert(), inside project_root().
    """
    build = Builder(config, session)
    version_step, version = build.data_version()
    preprocess = build.preprocess(version)
    ingest = build.ingest(preprocess)
    data_gate = build.data_bias_gate(preprocess)
    estimator = build.estimator()
    tune = build.tune(preprocess, estimator, data_gate.step)
    model_data = tune.get_top_model_s3_uri(top_k=0, s3_bucket=build.bucket, prefix=s3_key(config.aws.prefix, "models"))
    evaluate, report = build.evaluate(preprocess, model_data)
    scoring = build.scoring_model(model_data, evaluate, report) if config.bias.engine == "clarify" else None
    model_gate = build.model_bias_gate(preprocess, evaluate, scoring)
    lineage = {
        "data_version": Join(
            on="", values=[JsonGet(step_name=version_step.name, property_file=version, json_path="version")]
        ),
        "training_job": tune.properties.TrainingJobSummaries[0].TrainingJobName,
    }
    register = build.register(evaluate, report, (data_gate, model_gate), model_data, lineage)
    check = build.check_auc(evaluate, report, [build.check_new_model(evaluate, [register])])
    return Pipeline(
        name=config.project.name,
        parameters=build.params.all(),
        steps=[
            version_step,
            preprocess,
            ingest,
            data_gate.step,
            tune,
            evaluate,
            *([scoring] if scoring else []),
            model_gate.step,
            check,
        ],
        sagemaker_session=session,
    )
