"""Load and validate pipeline.yaml into a typed, immutable configuration.

String values may name environment variables: `${NAME}` (required) or `${NAME:-default}`. So the
account-specific values (role, bucket, image, KMS key, subnets) stay out of the repository. Every
error names the key path, the value and what was expected, e.g.
`training.hyperparameters.eta: 1.7 is above the maximum 1.0`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError, model_validator

ROOT = Path(__file__).resolve().parent.parent
"""The project root (this checkout)."""
DEFAULT_PATH = ROOT / "pipeline.yaml"
ENV_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")


def s3_key(*parts: str) -> str:
    """An S3 key from path parts, without empty segments: s3_key("", "models") == "models"."""
    return "/".join(segment for part in parts for segment in str(part).split("/") if segment)


def s3_uri(bucket: str, *parts: str) -> str:
    """s3://bucket/<parts...>, without empty segments (so an empty aws.prefix adds no '//')."""
    key = s3_key(*parts)
    return f"s3://{bucket}/{key}" if key else f"s3://{bucket}"


ECR_IMAGE = re.compile(
    r"^(?P<host>(?P<registry>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?)"
    r"/(?P<repository>[a-z0-9]+(?:[._/-][a-z0-9]+)*)(?::(?P<tag>\w[\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
"""An ECR image URI, <account>.dkr.ecr.<region>.amazonaws.com[.cn]/<repository>[:tag][@sha256:digest]: its parts
by name (host, registry, region, repository, tag, digest)."""


class ConfigError(ValueError):
    """pipeline.yaml is missing, unreadable or invalid; the message names the key path."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Name = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")]
InstanceType = Annotated[str, StringConstraints(pattern=r"^(ml\.[a-z0-9]+\.[a-z0-9]+|local)$")]
Fraction = Annotated[float, Field(gt=0, lt=0.5)]
RoleArn = Annotated[str, StringConstraints(pattern=r"^(|arn:aws[a-z-]*:iam::\d{12}:role/.+)$")]
QueueArn = Annotated[str, StringConstraints(pattern=r"^(|arn:aws[a-z-]*:sqs:[a-z0-9-]+:\d{12}:.+)$")]


class Project(Section):
    name: Name
    description: str = ""
    tags: dict[str, str] = {}


class Aws(Section):
    region: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-\d$")]
    role_arn: RoleArn = ""
    bucket: str = ""
    prefix: Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9!_.*'()/-]*$")]
    image_uri: str = ""


class Data(Section):
    claims_uri: str
    customers_uri: str
    validation_fraction: Fraction = 0.15
    test_fraction: Fraction = 0.15
    seed: int = 42


class Compute(Section):
    instance_type: InstanceType = "ml.m5.xlarge"
    instance_count: Annotated[int, Field(ge=1, le=100)] = 1
    volume_size_gb: Annotated[int, Field(ge=1, le=16384)] = 30
    max_runtime_s: Annotated[int, Field(ge=60, le=432000)] = 3600


class FeatureStore(Section):
    claims_group: Name
    customers_group: Name
    online_store: bool = True
    offline_store: bool = True
    ingest_workers: Annotated[int, Field(ge=1, le=64)] = 4
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 5
    compute: Compute = Compute()

    @model_validator(mode="after")
    def _a_store(self) -> FeatureStore:
        if not (self.online_store or self.offline_store):
            raise ValueError("a feature group needs a store: set online_store or offline_store (or both) to true")
        return self


class Hyperparameters(Section):
    objective: Literal["binary:logistic"] = "binary:logistic"
    num_round: Annotated[int, Field(ge=1, le=10000)] = 500
    early_stopping_rounds: Annotated[int, Field(ge=1, le=1000)] = 20
    max_depth: Annotated[int, Field(ge=1, le=20)] = 3
    eta: Annotated[float, Field(gt=0, le=1.0)] = 0.1
    subsample: Annotated[float, Field(gt=0, le=1.0)] = 0.8
    colsample_bytree: Annotated[float, Field(gt=0, le=1.0)] = 0.8
    min_child_weight: Annotated[float, Field(ge=0, le=1000)] = 1.0
    gamma: Annotated[float, Field(ge=0, le=100)] = 0.0
    scale_pos_weight: Annotated[float, Field(gt=0, le=1000)] = 1.0
    seed: int = 42


class Training(Section):
    compute: Compute = Compute()
    hyperparameters: Hyperparameters = Hyperparameters()


class _Range(Section):
    scaling: Literal["Auto", "Linear", "Logarithmic", "ReverseLogarithmic"] = "Auto"

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if self.min >= self.max:
            raise ValueError(f"min {self.min} must be below max {self.max}")
        return self


class ContinuousRange(_Range):
    type: Literal["continuous"]
    min: float
    max: float


class IntegerRange(_Range):
    type: Literal["integer"]
    min: int
    max: int


Range = Annotated[ContinuousRange | IntegerRange, Field(discriminator="type")]
TUNABLE = {
    "num_round",
    "max_depth",
    "eta",
    "subsample",
    "colsample_bytree",
    "min_child_weight",
    "gamma",
    "scale_pos_weight",
}


class Tuning(Section):
    max_jobs: Annotated[int, Field(ge=1, le=500)] = 12
    max_parallel_jobs: Annotated[int, Field(ge=1, le=100)] = 3
    strategy: Literal["Bayesian", "Random", "Hyperband", "Grid"] = "Bayesian"
    random_seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 42
    ranges: dict[str, Range]

    @model_validator(mode="after")
    def _known(self) -> Tuning:
        unknown = sorted(set(self.ranges) - TUNABLE)
        if unknown:
            raise ValueError(f"cannot tune {', '.join(unknown)}; tunable: {', '.join(sorted(TUNABLE))}")
        if self.max_parallel_jobs > self.max_jobs:
            raise ValueError(f"max_parallel_jobs {self.max_parallel_jobs} exceeds max_jobs {self.max_jobs}")
        return self


class Threshold(Section):
    method: Literal["max_f1", "alert_rate"] = "max_f1"
    alert_rate: Annotated[float, Field(gt=0, lt=1)] = 0.05


class Evaluation(Section):
    min_auc: Annotated[float, Field(ge=0.5, le=1.0)] = 0.75
    threshold: Threshold = Threshold()
    compute: Compute = Compute()


BIAS_METRICS = {"CI", "DPL", "KL", "JS", "LP", "TVD", "KS", "CDDL"}


class Bias(Section):
    engine: Literal["clarify", "smclarify"] = "clarify"
    facet: str = "customer_gender_female"
    facet_values: list[int | float | str] = [1]
    label: str = "fraud"
    positive_label: int | float | str = 1
    metrics: list[str] = ["CI", "DPL", "KL", "JS", "LP", "TVD", "KS"]
    thresholds: dict[str, Annotated[float, Field(gt=0)]] = {}
    compute: Compute = Compute()

    @model_validator(mode="after")
    def _known(self) -> Bias:
        unknown = sorted((set(self.metrics) | set(self.thresholds)) - BIAS_METRICS)
        if unknown:
            raise ValueError(f"unknown bias metric(s) {', '.join(unknown)}; known: {', '.join(sorted(BIAS_METRICS))}")
        unmeasured = sorted(set(self.thresholds) - set(self.metrics))
        if unmeasured:
            raise ValueError(f"thresholds for metric(s) not in metrics: {', '.join(unmeasured)}")
        return self


class Registry(Section):
    model_package_group: Name
    approval_status: Literal["PendingManualApproval", "Approved", "Rejected"] = "PendingManualApproval"
    content_types: list[str] = ["text/csv", "application/json"]
    response_types: list[str] = ["application/json", "text/csv"]
    inference_instances: list[InstanceType] = ["ml.m5.large"]
    transform_instances: list[InstanceType] = ["ml.m5.large"]


class Schedule(Section):
    role_arn: RoleArn = ""
    dead_letter_arn: QueueArn = ""
    expression: str = "cron(0 3 ? * MON *)"
    timezone: str = "UTC"
    max_retry_attempts: Annotated[int, Field(ge=0, le=185)] = 3
    max_event_age_s: Annotated[int, Field(ge=60, le=86400)] = 3600
    parameters: dict[str, bool | int | float | str] = {}


class Cache(Section):
    enabled: bool = True
    expire_after: Annotated[
        str, StringConstraints(pattern=r"^P(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(\d+H)?(\d+M)?(\d+S)?)?$")
    ] = "P30D"


def _comma_separated(value: Any) -> Any:
    """Lists may come from one environment variable: 'subnet-a,subnet-b' (empty: none)."""
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


IdList = Annotated[list[str], BeforeValidator(_comma_separated)]


class Security(Section):
    kms_key_id: str = ""
    subnets: IdList = []
    security_groups: IdList = []
    enable_network_isolation: bool = False
    encrypt_inter_container_traffic: bool = True

    @model_validator(mode="after")
    def _vpc_pairs(self) -> Security:
        if bool(self.subnets) != bool(self.security_groups):
            raise ValueError("subnets and security_groups must be given together (a VPC needs both)")
        return self


class Deploy(Section):
    # lower case, and room for the "-v<version>" of the models and endpoint configs the deploy function names
    endpoint_name: Annotated[str, StringConstraints(pattern=r"^[a-z0-9](-*[a-z0-9]){0,55}$")]
    instance_type: InstanceType = "ml.m5.large"
    instance_count: Annotated[int, Field(ge=1, le=100)] = 1
    data_capture_uri: str = ""
    data_capture_percent: Annotated[int, Field(ge=0, le=100)] = 100
    traffic_routing: Literal["ALL_AT_ONCE", "CANARY"] = "ALL_AT_ONCE"
    rollback_alarms: IdList = []

    @model_validator(mode="after")
    def _canary_needs_two(self) -> Deploy:
        if self.traffic_routing == "CANARY" and self.instance_count < 2:
            raise ValueError("traffic_routing CANARY needs instance_count >= 2")
        return self


class Config(Section):
    project: Project
    aws: Aws
    data: Data
    processing: Compute = Compute()
    feature_store: FeatureStore
    training: Training = Training()
    tuning: Tuning
    evaluation: Evaluation = Evaluation()
    bias: Bias = Bias()
    registry: Registry
    schedule: Schedule = Schedule()
    cache: Cache = Cache()
    security: Security = Security()
    deploy: Deploy


def _interpolate(value: Any, path: str, environ: dict[str, str]) -> Any:
    """Replace ${NAME} and ${NAME:-default} in every string of the document."""
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", environ) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, default = match.group("name"), match.group("default")
        if name in environ:
            return environ[name]
        if default is None:
            raise ConfigError(
                f"{path}: environment variable {name} is not set (and the value '{value}' has no default)"
            )
        return default

    return ENV_REFERENCE.sub(substitute, value)


def _describe(error: dict) -> str:
    path = ".".join(str(p) for p in error["loc"] if not (isinstance(p, str) and p in ("continuous", "integer")))
    kind, ctx, value = error["type"], error.get("ctx", {}), error.get("input")
    if kind == "extra_forbidden":
        return f"{path}: unknown key"
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind in ("less_than_equal", "less_than"):
        return f"{path}: {value!r} is above the maximum {ctx.get('le', ctx.get('lt'))}"
    if kind in ("greater_than_equal", "greater_than"):
        return f"{path}: {value!r} is below the minimum {ctx.get('ge', ctx.get('gt'))}"
    if kind == "string_pattern_mismatch":
        return f"{path}: {value!r} does not match the expected form {ctx.get('pattern')}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{path}: {value!r}: {message}" if not isinstance(value, dict) else f"{path}: {message}"


def parse(document: Any, environ: dict[str, str] | None = None) -> Config:
    """Validate a parsed YAML document (a dict) into a Config."""
    if not isinstance(document, dict):
        raise ConfigError(f"the configuration must be a mapping of sections, got {type(document).__name__}")
    document = _interpolate(document, "", dict(os.environ if environ is None else environ))
    try:
        return Config.model_validate(document)
    except ValidationError as error:
        raise ConfigError("; ".join(_describe(e) for e in error.errors())) from None


def load(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read, interpolate and validate pipeline.yaml (or the file given)."""
    path = Path(path) if path else DEFAULT_PATH
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the configuration ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    try:
        return parse(document, environ)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
