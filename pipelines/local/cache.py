"""Step caching across local runs, as SageMaker Pipelines documents it.

https://docs.aws.amazon.com/sagemaker/latest/dg/pipelines-caching.html and
https://docs.aws.amazon.com/sagemaker/latest/dg/pipelines-default-keys.html:
- a step with CacheConfig Enabled reuses the most recent *successful* run of the same step of the same
  pipeline whose cache-key attributes (below, per step type, with their values as evaluated for this
  execution) are equal, if it finished within ExpireAfter (an ISO 8601 duration);
- failed runs are never reused; a step without caching always runs (and RegisterModel has none);
- a cache hit's properties are the earlier run's, so the steps after it read the earlier run's outputs.

A model check's key holds its model (ModelName, part of its ClarifyCheckConfig): a CreateModel step names a new
model in every execution, so such a check runs every time, in the service too.

Differences from the service, said in the step log where they matter: the ClarifyCheck key leaves out the
check job's output location (its "ClarifyCheckConfig" and "CheckJobConfig" name it; an execution-specific
output path would make the step never hit); years and months in ExpireAfter count as 365 and 30 days.

The entries are a JSON file (runs/local-aws/cache.json); each keeps the step's properties.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from sagemaker.workflow.steps import StepTypeEnum

from pipelines.local.state import save_json

KEY_ATTRIBUTES = {
    StepTypeEnum.PROCESSING: ("AppSpecification", "Environment", "ProcessingInputs"),
    StepTypeEnum.TRAINING: (
        "AlgorithmSpecification",
        "CheckpointConfig",
        "DebugHookConfig",
        "DebugRuleConfigurations",
        "Environment",
        "HyperParameters",
        "InputDataConfig",
    ),
    StepTypeEnum.TUNING: ("HyperParameterTuningJobConfig", "TrainingJobDefinition", "TrainingJobDefinitions"),
    StepTypeEnum.TRANSFORM: ("DataProcessing", "Environment", "ModelName", "TransformInput"),
    StepTypeEnum.CLARIFY_CHECK: (
        "AppSpecification",
        "Environment",
        "ProcessingInputs",
        "ProcessingResources",
        "CheckType",
        "SkipCheck",
        "RegisterNewBaseline",
        "ModelPackageGroupName",
        "SuppliedBaselineConstraints",
        "ModelName",
    ),
}
"""The documented default cache key attributes of each cacheable step type (ClarifyCheck: see above)."""

DURATION = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


def duration(text: str) -> datetime.timedelta:
    """An ISO 8601 duration such as P30D or PT1H (years and months as 365 and 30 days)."""
    found = DURATION.match(text)
    if not found or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"ExpireAfter {text!r} is not an ISO 8601 duration such as P30D or PT1H")
    years, months, weeks, days, hours, minutes, seconds = (int(g or 0) for g in found.groups())
    return datetime.timedelta(
        days=365 * years + 30 * months + 7 * weeks + days, hours=hours, minutes=minutes, seconds=seconds
    )


def cache_key(step_type: StepTypeEnum, request: dict) -> str:
    """SHA-256 of the step's key attributes, taken from its evaluated request."""
    attributes = {name: request[name] for name in KEY_ATTRIBUTES[step_type] if name in request}
    text = json.dumps([step_type.value, attributes], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def to_json(value):
    """Step properties as JSON: datetimes become ISO 8601 text."""
    return json.loads(json.dumps(value, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v)))


@dataclass(frozen=True)
class Hit:
    execution_id: str
    finished: datetime.datetime
    properties: dict


class StepCache:
    """Successful step runs by pipeline, step name and cache key, kept in a JSON file."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict = json.loads(path.read_text()) if path.is_file() else {}

    def lookup(self, pipeline: str, step: str, key: str, expire_after: str, now: datetime.datetime) -> Hit | None:
        """The most recent successful run with this key that finished within expire_after, or None."""
        limit = duration(expire_after)
        runs = [r for r in self.entries.get(pipeline, {}).get(step, []) if r["key"] == key]
        fresh = [r for r in runs if now - datetime.datetime.fromisoformat(r["finished"]) <= limit]
        if not fresh:
            return None
        latest = max(fresh, key=lambda r: r["finished"])
        return Hit(latest["execution"], datetime.datetime.fromisoformat(latest["finished"]), latest["properties"])

    def store(
        self, pipeline: str, step: str, key: str, execution_id: str, finished: datetime.datetime, properties: dict
    ) -> None:
        """Record a successful run (saved at once, so a later failed step does not lose it)."""
        runs = self.entries.setdefault(pipeline, {}).setdefault(step, [])
        runs.append(
            {"key": key, "execution": execution_id, "finished": finished.isoformat(), "properties": to_json(properties)}
        )
        save_json(self.path, self.entries)
