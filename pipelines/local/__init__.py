"""Local runs of the cloud graph: `fraud-pipeline local` (runner.py) and the executors it adds to SageMaker
local mode (engine.py: tuning.py, clarify.py, register.py with registry.py, and cache.py)."""

from pipelines.local.containers import LocalRunError, _docker_answers, ensure_docker, ensure_image
from pipelines.local.runner import RunResult, run, summary

__all__ = ["LocalRunError", "RunResult", "_docker_answers", "ensure_docker", "ensure_image", "run", "summary"]
