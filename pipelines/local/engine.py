"""The local pipeline engine: SageMaker local mode's executor, extended with the step types it lacks and caching.

SageMaker Python SDK v2's local mode (sagemaker/local/pipeline.py, entities.py) runs Training, Processing,
Transform, Condition, Fail and CreateModel steps. Its extension points, subclassed here (v2 is in maintenance,
so they hold still; tests/test_local_engine.py pins them):
- _LocalPipelineExecution._initialize_step_execution refuses other step types: LocalExecution accepts the
  types this package runs;
- _LocalPipelineExecutionStep._construct_metadata knows only its types: ExecutionStep adds the others, and
  the CacheHitResult of a cached step;
- LocalPipelineExecutor._step_executor_factory (_StepExecutorFactory.get) picks an executor by step type:
  ExecutorFactory adds Tuning (tuning.py), ClarifyCheck (clarify.py) and RegisterModel (register.py);
- LocalPipelineExecutor._execute_step runs one step: Engine looks the step up in the step cache first
  (cache.py) and records each successful cacheable step.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from botocore.exceptions import ClientError
from sagemaker.local.entities import _LocalPipelineExecution, _LocalPipelineExecutionStep
from sagemaker.local.exceptions import StepExecutionException
from sagemaker.local.pipeline import LocalPipelineExecutor, _StepExecutorFactory
from sagemaker.s3 import parse_s3_url
from sagemaker.workflow.steps import Step, StepTypeEnum

from pipelines.local.cache import KEY_ATTRIBUTES, StepCache, cache_key
from pipelines.local.clarify import ClarifyCheckStepExecutor
from pipelines.local.logs import ContainerOutput, say, script_error
from pipelines.local.register import RegisterModelStepExecutor
from pipelines.local.registry import Registry
from pipelines.local.tuning import TuningStepExecutor

OWN_EXECUTORS = {
    StepTypeEnum.TUNING: TuningStepExecutor,
    StepTypeEnum.CLARIFY_CHECK: ClarifyCheckStepExecutor,
    StepTypeEnum.REGISTER_MODEL: RegisterModelStepExecutor,
}
SDK_STEP_TYPES = (
    StepTypeEnum.TRAINING,
    StepTypeEnum.PROCESSING,
    StepTypeEnum.TRANSFORM,
    StepTypeEnum.CONDITION,
    StepTypeEnum.FAIL,
    StepTypeEnum.CREATE_MODEL,
)
RUNNABLE = (*SDK_STEP_TYPES, *OWN_EXECUTORS)


@dataclass
class RunContext:
    """What the project's executors use besides the SDK's session: the local registry and step cache, the
    container output, the project image, the staged step code, and the local S3."""

    registry: Registry
    cache: StepCache
    output: ContainerOutput
    image: str
    code_dir: Path
    s3_client: object
    job_environment: dict[str, str] = field(default_factory=dict)
    """added to every processing job's environment at run time (not to the definition, nor the cache key)"""
    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)

    def code_uri(self, folder: str) -> str:
        """A staged step folder (build/code/<folder>) as a file:// URI a local job mounts."""
        return f"file://{(self.code_dir / folder).resolve()}"

    def s3_exists(self, uri: str) -> bool:
        bucket, key = parse_s3_url(uri)
        try:
            self.s3_client.head_object(Bucket=bucket, Key=key)
        except ClientError:
            return False
        return True


class ExecutionStep(_LocalPipelineExecutionStep):
    """A step of a local execution: ListPipelineExecutionSteps' metadata for every type, and CacheHitResult."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cache_hit: str | None = None

    def _construct_metadata(self):
        if not self.properties or self.type not in OWN_EXECUTORS:
            return super()._construct_metadata()
        if self.type == StepTypeEnum.TUNING:
            return {"TuningJob": {"Arn": self.properties["HyperParameterTuningJobArn"]}}
        if self.type == StepTypeEnum.REGISTER_MODEL:
            return {"RegisterModel": {"Arn": self.properties["ModelPackageArn"]}}
        return {"ClarifyCheck": dict(self.properties)}

    def to_list_steps_response(self):
        response = super().to_list_steps_response()
        if self.cache_hit:
            response["CacheHitResult"] = {"SourcePipelineExecutionArn": self.cache_hit}
        return response


class LocalExecution(_LocalPipelineExecution):
    """A local pipeline execution whose steps may be of every type this package runs."""

    def _initialize_step_execution(self, steps):
        for step in steps:
            if not isinstance(step, Step):
                continue
            if step.step_type not in RUNNABLE:
                message = f"Step type {step.step_type.value} is not supported in local runs."
                raise ClientError(self._construct_validation_exception_message(message), "start_pipeline_execution")
            self.step_execution[step.name] = ExecutionStep(
                step.name, step.step_type, step.description, step.display_name
            )
            if step.step_type == StepTypeEnum.CONDITION:
                self._initialize_step_execution(step.if_steps + step.else_steps)


class ExecutorFactory(_StepExecutorFactory):
    """The SDK's executors, and the project's for the step types local mode lacks."""

    def get(self, step):
        executor = OWN_EXECUTORS.get(step.step_type)
        return executor(self.pipeline_executor, step) if executor else super().get(step)


class Engine(LocalPipelineExecutor):
    """Executes a local pipeline execution: every step through its executor, cacheable steps through the cache."""

    def __init__(self, execution: LocalExecution, session, context: RunContext):
        super().__init__(execution, session)
        self.context = context
        self._step_executor_factory = ExecutorFactory(self)

    def _execute_step(self, step):
        self.execution.mark_step_executing(step.name)
        caching = step.to_request().get("CacheConfig", {})
        key = None
        if caching.get("Enabled") and step.step_type in KEY_ATTRIBUTES:
            key = cache_key(step.step_type, self._cache_request(step))
            hit = self.context.cache.lookup(
                self.execution.pipeline.name, step.name, key, caching.get("ExpireAfter", "P30D"), self.context.now()
            )
            if hit:
                self.execution.step_execution[step.name].cache_hit = hit.execution_id
                say(step.name, "cached: reusing execution %s (finished %s)", hit.execution_id, hit.finished)
                self.execution.update_step_properties(step.name, hit.properties)
                return
        with self.context.output.capture() as lines:
            try:
                properties = self._step_executor_factory.get(step).execute()
            except StepExecutionException as error:
                reason = script_error(lines)
                if reason and reason not in error.message and step.step_type != StepTypeEnum.FAIL:
                    self.execution.update_step_failure(step.name, reason)  # the script's own words
                raise
        self.execution.update_step_properties(step.name, properties)
        if key:
            self.context.cache.store(
                self.execution.pipeline.name,
                step.name,
                key,
                self.execution.pipeline_execution_name,
                self.context.now(),
                properties,
            )

    def evaluate_step_arguments(self, step):
        """The step's arguments as evaluated in this execution; a processing job's environment also gets the
        run's job_environment (the local Feature Store's endpoints)."""
        arguments = super().evaluate_step_arguments(step)
        if step.step_type == StepTypeEnum.PROCESSING and self.context.job_environment:
            arguments["Environment"] = {**arguments.get("Environment", {}), **self.context.job_environment}
        return arguments

    def _cache_request(self, step) -> dict:
        """The step's request with its values as evaluated in this execution (what the cache key reads)."""
        request = self._parse_arguments(step.arguments, step.name)
        if step.step_type == StepTypeEnum.CLARIFY_CHECK:
            request.pop("ProcessingOutputConfig", None)
            flags = {k: v for k, v in step.to_request().items() if k in KEY_ATTRIBUTES[step.step_type]}
            request.update(self._parse_arguments(flags, step.name))
        return request
