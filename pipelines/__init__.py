"""The fraud-detection pipeline as code: configuration, graph builder and command line.

The only package that imports the SageMaker SDK. Importing it silences the SDK's v2 deprecation
banner and its "Fetched defaults config" lines on stdout (its config logger keeps a level set before
its import), and opts out of the SDK's telemetry (which calls AWS and fails loudly offline).
"""

import logging
import os
from pathlib import Path

logging.getLogger("sagemaker.config").setLevel(logging.WARNING)
os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
os.environ.setdefault(
    "SAGEMAKER_USER_CONFIG_OVERRIDE", str(Path(__file__).resolve().parent / "sagemaker_sdk_config.yaml")
)
