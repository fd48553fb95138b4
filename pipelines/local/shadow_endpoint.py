"""The shadow endpoint of a local model bias check: the model served as SageMaker would serve it.

Clarify's ModelBias check creates a temporary endpoint of the check's model (ModelName: a CreateModel step's), sends
it the dataset and reads the predicted labels from its answers
(https://docs.aws.amazon.com/sagemaker/latest/dg/clarify-processing-job-run.html). Locally the model's container
(its Image, its Environment, its ModelDataUrl unpacked at /opt/ml/model) runs `serve` on the jobs' network, where
the check's job reaches it by name, and is removed afterwards.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sagemaker.s3 import parse_s3_url

from pipelines.local.containers import NETWORK, ensure_network

PORT = 8080
LOG_LINES = 5


class EndpointError(RuntimeError):
    """The model's container could not be started."""


@contextmanager
def shadow_endpoint(model: dict, name: str, s3_client, say: Callable[[str], None]) -> Iterator[str]:
    """Serve `model` (DescribeModel's answer) in a container named `name`; yields its /invocations URL. When the
    check fails, the container's last log lines are said before it is removed."""
    container = model["PrimaryContainer"]
    with tempfile.TemporaryDirectory(prefix="shadow-model-") as model_dir:
        bucket, key = parse_s3_url(container["ModelDataUrl"])
        archive = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(model_dir, filter="data")
        Path(model_dir).chmod(0o755)
        ensure_network()
        environment = [f"--env={k}={v}" for k, v in sorted(container.get("Environment", {}).items())]
        started = subprocess.run(
            ["docker", "run", "--detach", "--name", name, "--network", NETWORK, *environment]
            + ["--volume", f"{model_dir}:/opt/ml/model:ro", container["Image"], "serve"],
            capture_output=True,
            text=True,
        )
        if started.returncode != 0:
            raise EndpointError(f"the model's container did not start: {started.stderr.strip()}")
        try:
            yield f"http://{name}:{PORT}/invocations"
        except BaseException:
            logs = subprocess.run(["docker", "logs", "--tail", str(LOG_LINES), name], capture_output=True, text=True)
            say(f"the model's container's last lines: {' | '.join((logs.stdout + logs.stderr).splitlines())}")
            raise
        finally:
            subprocess.run(["docker", "rm", "--force", name], capture_output=True)
