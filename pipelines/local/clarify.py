"""ClarifyCheckStep in local runs: the data bias check, with the step's documented baseline rules.

https://docs.aws.amazon.com/sagemaker/latest/dg/pipelines-quality-clarify-baseline-lifecycle.html and
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_ClarifyCheckStepMetadata.html:
- the step always calculates a new baseline (property CalculatedBaselineConstraints: its analysis.json);
- the previous baseline is SuppliedBaselineConstraints when given ("always prioritized"), else the drift-check
  bias constraints of the latest Approved model package of ModelPackageGroupName;
- SkipCheck false: the calculated metrics are checked against the previous baseline; SkipCheck true: no check;
- RegisterNewBaseline true: BaselineUsedForDriftCheckConstraints is the calculated baseline; false: the previous;
- with SkipCheck or RegisterNewBaseline false, a previous baseline must exist, else the step fails;
- a violation (Clarify's bias drift rule: a metric farther from 0 than the baseline's) writes
  constraint_violations.json (property ViolationReport) and, with FailOnViolation, fails the step.

The metrics are computed by processing/bias.py with smclarify (the open-source library behind Clarify) in the
project image, reading the analysis_config.json the SDK generated; the step log says so. DATA_BIAS and
MODEL_BIAS checks: for a model bias check, the predictions come from the shadow endpoint Clarify would create
from ModelName (shadow_endpoint.py: the model's own container, serving); its previous baseline is a package's
post-training constraints. Explainability checks are refused (the Evaluate step writes explainability).
"""

from __future__ import annotations

from dataclasses import dataclass

from sagemaker.local.pipeline import _StepExecutor

from pipelines.local.logs import say, script_error
from pipelines.local.shadow_endpoint import EndpointError, shadow_endpoint

CONTAINER = "/opt/ml/processing"
VIOLATIONS_FILE = "constraint_violations.json"
CONSTRAINTS = {"DATA_BIAS": "PreTrainingConstraints", "MODEL_BIAS": "PostTrainingConstraints"}
"""Where a model package keeps each check type's drift-check baseline (DriftCheckBaselines.Bias)."""


class CheckRuleError(RuntimeError):
    """The step cannot run as configured (no previous baseline where one is needed)."""


@dataclass(frozen=True)
class Baselines:
    """What a check runs against, and which baseline drift checks use afterwards."""

    check_against: str | None
    """the previous baseline's URI when the check runs, else None"""
    previous: str | None
    drift_uses_calculated: bool


def baselines(skip_check: bool, register_new: bool, supplied: str | None, approved: str | None) -> Baselines:
    """The ClarifyCheckStep rules for a check's baselines (see the module's documentation)."""
    previous = supplied or approved
    if previous is None and not (skip_check and register_new):
        needs = "SkipCheck" if not skip_check else "RegisterNewBaseline"
        raise CheckRuleError(
            f"no previous baseline: none is supplied (SuppliedBaselineConstraints) and the model package group has "
            f"no Approved package with one, which {needs}=false needs"
        )
    return Baselines(None if skip_check else previous, previous, register_new)


def processing_input(name: str, uri: str, path: str) -> dict:
    return {
        "InputName": name,
        "AppManaged": False,
        "S3Input": {
            "S3Uri": uri,
            "LocalPath": path,
            "S3DataType": "S3Prefix",
            "S3InputMode": "File",
            "S3DataDistributionType": "FullyReplicated",
            "S3CompressionType": "None",
        },
    }


class ClarifyCheckStepExecutor(_StepExecutor):
    """Runs a ClarifyCheckStep of type DATA_BIAS or MODEL_BIAS as processing/bias.py in a local processing job."""

    def execute(self) -> dict:
        runner, step, name = self.pipline_executor, self.step, self.step.name
        definition = runner._parse_arguments({k: v for k, v in step.to_request().items() if k != "Arguments"}, name)
        check_type = definition["CheckType"]
        if check_type not in CONSTRAINTS:
            runner.execution.update_step_failure(name, f"local runs check DATA_BIAS and MODEL_BIAS, not {check_type}")
        skip, register_new, fail_on_violation = (
            _boolean(definition.get(flag, default))
            for flag, default in (("SkipCheck", False), ("RegisterNewBaseline", False), ("FailOnViolation", True))
        )
        group = definition.get("ModelPackageGroupName")
        approved = runner.context.registry.latest_approved(group) if group else None
        approved_baseline = _drift_bias_constraints(approved, CONSTRAINTS[check_type])
        try:
            chosen = baselines(skip, register_new, definition.get("SuppliedBaselineConstraints"), approved_baseline)
        except CheckRuleError as error:
            runner.execution.update_step_failure(name, str(error))
        request = runner.evaluate_step_arguments(step)
        [output] = request["ProcessingOutputConfig"]["Outputs"]
        report_uri = output["S3Output"]["S3Uri"].rstrip("/")
        say(name, "local: Clarify's container is stood in for by processing/bias.py (smclarify) in the project image")
        job_name = f"{name.lower()}-{runner.execution.pipeline_execution_name}"
        if check_type == "MODEL_BIAS":
            model = runner.local_sagemaker_client.describe_model(definition["ModelName"])
            say(name, "local: Clarify's shadow endpoint is the model's own container (%s), serving", model["ModelName"])
            try:
                with shadow_endpoint(
                    model, f"{job_name}-shadow", runner.context.s3_client, lambda m: say(name, m)
                ) as url:
                    self._run(job_name, request, chosen, skip, fail_on_violation, ["--endpoint", url])
            except EndpointError as error:
                runner.execution.update_step_failure(name, str(error))
        else:
            self._run(job_name, request, chosen, skip, fail_on_violation)
        properties = {
            "CheckType": check_type,
            "CheckJobArn": job_name,
            "ModelPackageGroupName": group,
            "SkipCheck": skip,
            "RegisterNewBaseline": register_new,
            "CalculatedBaselineConstraints": f"{report_uri}/analysis.json",
            "BaselineUsedForDriftCheckConstraints": (
                f"{report_uri}/analysis.json" if chosen.drift_uses_calculated else chosen.previous
            ),
        }
        if runner.context.s3_exists(f"{report_uri}/{VIOLATIONS_FILE}"):
            properties["ViolationReport"] = f"{report_uri}/{VIOLATIONS_FILE}"
        return properties

    def _run(self, job_name, request, chosen: Baselines, skip, fail_on_violation, extra=()) -> None:
        runner, name = self.pipline_executor, self.step.name
        arguments = ["--analysis-config", f"{CONTAINER}/input/config/analysis_config.json", *extra]
        arguments += ["--dataset", f"{CONTAINER}/input/data", "--output-dir", f"{CONTAINER}/output"]
        arguments += ["--skip-check", str(skip).lower(), "--fail-on-violation", str(fail_on_violation).lower()]
        inputs = [
            *request["ProcessingInputs"],
            processing_input("code", runner.context.code_uri("processing"), f"{CONTAINER}/input/code"),
        ]
        if chosen.check_against:
            inputs.append(processing_input("baseline", chosen.check_against, f"{CONTAINER}/input/baseline"))
            arguments += ["--baseline", f"{CONTAINER}/input/baseline"]
        job = {
            **request,
            "AppSpecification": {
                "ImageUri": runner.context.image,
                "ContainerEntrypoint": ["python3", f"{CONTAINER}/input/code/bias.py"],
                "ContainerArguments": arguments,
            },
            "ProcessingInputs": inputs,
        }
        with runner.context.output.capture() as lines:
            try:
                runner.local_sagemaker_client.create_processing_job(job_name, **job)
            except Exception as error:  # the SDK raises RuntimeError for a failed container
                reason = script_error(lines) or f"{type(error).__name__}: {error}"
                runner.execution.update_step_failure(name, reason)


def _boolean(value) -> bool:
    return value if isinstance(value, bool) else str(value).lower() == "true"


def _drift_bias_constraints(package: dict | None, kind: str) -> str | None:
    """The bias constraints of a kind (pre- or post-training) a model package keeps for drift checks."""
    if not package:
        return None
    return package.get("DriftCheckBaselines", {}).get("Bias", {}).get(kind, {}).get("S3Uri")
