"""RegisterModel (ModelStep) in local runs: CreateModelPackage into the local model registry (registry.py).

https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_CreateModelPackage.html: the step's arguments are
the CreateModelPackage request; its properties are DescribeModelPackage's response for the new version.
As the service does, a package whose model artifact (ModelDataUrl) cannot be read is refused.
"""

from __future__ import annotations

from sagemaker.local.pipeline import _StepExecutor

from pipelines.local.logs import say
from pipelines.local.registry import RegistryError


class RegisterModelStepExecutor(_StepExecutor):
    """Registers the step's model package in the local registry."""

    def execute(self) -> dict:
        runner, name = self.pipline_executor, self.step.name
        request = runner.evaluate_step_arguments(self.step)
        context = runner.context
        for container in request.get("InferenceSpecification", {}).get("Containers", []):
            model = container.get("ModelDataUrl")
            if model and not context.s3_exists(model):
                runner.execution.update_step_failure(name, f"ModelDataUrl {model} does not exist")
        try:
            package = context.registry.create_model_package(request, context.now())
        except RegistryError as error:
            runner.execution.update_step_failure(name, str(error))
        say(name, "registered %s (%s)", package["ModelPackageArn"], package["ModelApprovalStatus"])
        return package
