"""Load and validate pipeline.yaml into a typed, immutable configuration.

String values may name environment variables: `${NAME}` (required) or `${NAME:-default}` (the default
when NAME is unset or empty; it may itself hold references), and `$${` is a literal `${`. So the
account-specific values (role, bucket, image, KMS key, subnets) stay out of the repository. Every
error is one line naming the file, the key path, the value and what was expected, e.g.
`training.hyperparameters.eta: 1.7 is above the maximum 1.0`. The hyperparameters and the bounds of
their tuning ranges come from training/hyperparameters.py: the configuration accepts what training does.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, NotRequired

import yaml
from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    create_model,
    model_validator,
)
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

ROOT = Path(__file__).resolve().parent.parent
"""The project root (this checkout)."""
DEFAULT_PATH = ROOT / "pipeline.yaml"
MAX_DEPTH = 32
"""The deepest nesting of the YAML document (aliases expanded) and of defaults in environment references."""
MAX_NODES = 10_000
"""The most nodes aliases may expand the document to (pipeline.yaml has a few hundred)."""


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


def _not_bool(value: Any) -> Any:
    """YAML's true and false are not numbers (pydantic would take them for 1 and 0)."""
    if isinstance(value, bool):
        raise ValueError("a boolean where a number is expected")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool), AllowInfNan(False)]
Scalar = Annotated[int | float | str, BeforeValidator(_not_bool)]
Name = Annotated[str, StringConstraints(pattern=r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")]
InstanceType = Annotated[str, StringConstraints(pattern=r"^(ml\.[a-z0-9]+\.[a-z0-9]+|local)$")]
Fraction = Annotated[Float, Field(gt=0, lt=0.5)]
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
    seed: Annotated[Int, Field(ge=0, le=2**32 - 1)] = 42  # the split hash's key (preprocess.split_position)


def _one_instance(count: int) -> int:
    if count != 1:
        raise ValueError(
            "the step's script runs on one instance (more would each redo the whole job); "
            "docs/scaling.md gives the sizes one instance serves and the way past it"
        )
    return count


class Compute(Section):
    instance_type: InstanceType = "ml.m5.xlarge"
    instance_count: Annotated[Int, AfterValidator(_one_instance)] = 1
    volume_size_gb: Annotated[Int, Field(ge=1, le=16384)] = 30
    max_runtime_s: Annotated[Int, Field(ge=60, le=432000)] = 3600


class FeatureStore(Section):
    claims_group: Name
    customers_group: Name
    online_store: bool = True
    offline_store: bool = True
    ingest_workers: Annotated[Int, Field(ge=1, le=64)] = 4
    max_attempts: Annotated[Int, Field(ge=1, le=20)] = 5
    compute: Compute = Compute()

    @model_validator(mode="after")
    def _a_store(self) -> FeatureStore:
        if not (self.online_store or self.offline_store):
            raise ValueError("a feature group needs a store: set online_store or offline_store (or both) to true")
        return self


def load_step_module(name: str, path: Path) -> Any:
    """A step script of the checkout as a module (the step folders are the containers' code, not packages);
    registered under `name`, so a script that imports a sibling finds it once that is loaded the same way."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


_TRAINING = load_step_module("hyperparameters", ROOT / "training" / "hyperparameters.py")
HYPERPARAMETERS = _TRAINING.HYPERPARAMETERS
"""Every hyperparameter's Spec: kind, default, bounds, whether it is tunable."""
TUNABLE = _TRAINING.TUNABLE
MITIGATION = _TRAINING.SETTINGS["mitigation"]
"""training.mitigation: train.py's `mitigation` setting (the pipeline passes it, with bias.facet and
bias.facet_values, as static hyperparameters)."""


def _values(spec: Any) -> Any:
    """The type of a hyperparameter's values: one of its strings (any non-empty one when it lists none), or a
    number of its kind within its bounds."""
    if spec.kind is str:
        return Literal[spec.choices] if spec.choices else Annotated[str, StringConstraints(min_length=1)]
    bounds = {}
    if spec.low is not None:
        bounds["gt" if spec.low_open else "ge"] = spec.kind(spec.low)
    if spec.high is not None:
        bounds["lt" if spec.high_open else "le"] = spec.kind(spec.high)
    return Annotated[Int if spec.kind is int else Float, Field(**bounds)]


Hyperparameters = create_model(
    "Hyperparameters",
    __base__=Section,
    **{name: (_values(spec), spec.default) for name, spec in HYPERPARAMETERS.items()},
)


class Training(Section):
    compute: Compute = Compute()
    hyperparameters: Hyperparameters = Hyperparameters()
    mitigation: _values(MITIGATION) = MITIGATION.default


class _Range(Section):
    scaling: Literal["Auto", "Linear", "Logarithmic", "ReverseLogarithmic"] = "Auto"

    @model_validator(mode="after")
    def _ordered(self) -> _Range:
        if self.min >= self.max:
            raise ValueError(f"min {self.min} must be below max {self.max}")
        return self


class ContinuousRange(_Range):
    type: Literal["continuous"]
    min: Float
    max: Float


class IntegerRange(_Range):
    type: Literal["integer"]
    min: Int
    max: Int


def _range(name: str) -> type[_Range]:
    """A tunable hyperparameter's range: integer for an int one, else continuous; min and max within its bounds."""
    spec = HYPERPARAMETERS[name]
    base = IntegerRange if spec.kind is int else ContinuousRange
    return create_model(f"Range_{name}", __base__=base, min=(_values(spec), ...), max=(_values(spec), ...))


Ranges = TypedDict("Ranges", {name: NotRequired[_range(name)] for name in TUNABLE})
"""tuning.ranges: a dict of ranges, each checked against its hyperparameter (Tuning refuses other names)."""


class Tuning(Section):
    max_jobs: Annotated[Int, Field(ge=1, le=500)] = 12
    max_parallel_jobs: Annotated[Int, Field(ge=1, le=100)] = 3
    strategy: Literal["Bayesian", "Random", "Hyperband", "Grid"] = "Bayesian"
    random_seed: Annotated[Int, Field(ge=0, le=2**31 - 1)] = 42
    ranges: Ranges

    @model_validator(mode="before")
    @classmethod
    def _tunable(cls, data: Any) -> Any:
        ranges = data.get("ranges") if isinstance(data, dict) else None
        unknown = sorted(map(str, set(ranges) - set(TUNABLE))) if isinstance(ranges, dict) else []
        if unknown:
            raise ValueError(f"cannot tune {', '.join(unknown)}; tunable: {', '.join(TUNABLE)}")
        return data

    @model_validator(mode="after")
    def _parallel(self) -> Tuning:
        if self.max_parallel_jobs > self.max_jobs:
            raise ValueError(f"max_parallel_jobs {self.max_parallel_jobs} exceeds max_jobs {self.max_jobs}")
        return self


class Threshold(Section):
    method: Literal["max_f1", "alert_rate"] = "max_f1"
    alert_rate: Annotated[Float, Field(gt=0, lt=1)] = 0.05


class Evaluation(Section):
    min_auc: Annotated[Float, Field(ge=0.5, le=1.0)] = 0.75
    threshold: Threshold = Threshold()
    compute: Compute = Compute()


BIAS_METRICS = {"CI", "DPL", "KL", "JS", "LP", "TVD", "KS", "CDDL"}
POST_TRAINING_METRICS = {"AD", "CDDPL", "DAR", "DCA", "DCR", "DI", "DPPL", "DRR", "FT", "GE", "RD", "SD", "TE"}
NOT_CENTRED_ON_ZERO = {"DI": 1}
"""Metrics whose balanced value is not 0: the bias drift rule (farther from 0 than the limit) cannot gate them."""
Limits = dict[str, Annotated[Float, Field(gt=0)]]


def _check_metrics(metrics: list[str], limits: dict[str, float], known: set[str]) -> None:
    unknown = sorted((set(metrics) | set(limits)) - known)
    if unknown:
        raise ValueError(f"unknown bias metric(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    unmeasured = sorted(set(limits) - set(metrics))
    if unmeasured:
        raise ValueError(f"thresholds for metric(s) not in metrics: {', '.join(unmeasured)}")
    ungated = sorted(set(limits) & set(NOT_CENTRED_ON_ZERO))
    if ungated:
        balanced = ", ".join(f"{name}'s is {NOT_CENTRED_ON_ZERO[name]}" for name in ungated)
        raise ValueError(f"the bias gate judges distance from 0, but {balanced}: gate DPPL instead")


class PostTrainingBias(Section):
    """The model bias gate: metrics of the predicted labels on the test split, at the operating threshold."""

    metrics: list[str] = ["AD", "DAR", "DCA", "DCR", "DI", "DPPL", "DRR", "FT", "GE", "RD", "SD", "TE"]
    thresholds: Limits = {}

    @model_validator(mode="after")
    def _known(self) -> PostTrainingBias:
        _check_metrics(self.metrics, self.thresholds, POST_TRAINING_METRICS)
        return self


class Bias(Section):
    engine: Literal["clarify", "smclarify"] = "clarify"
    facet: Annotated[str, StringConstraints(min_length=1)] = "customer_gender_female"
    facet_values: Annotated[list[Scalar], Field(min_length=1)] = [1]
    label: str = "fraud"
    positive_label: Scalar = 1
    metrics: list[str] = ["CI", "DPL", "KL", "JS", "LP", "TVD", "KS"]
    thresholds: Limits = {}
    post_training: PostTrainingBias = PostTrainingBias()
    compute: Compute = Compute()

    @model_validator(mode="after")
    def _known(self) -> Bias:
        _check_metrics(self.metrics, self.thresholds, BIAS_METRICS)
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
    max_retry_attempts: Annotated[Int, Field(ge=0, le=185)] = 3
    max_event_age_s: Annotated[Int, Field(ge=60, le=86400)] = 3600
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
    instance_count: Annotated[Int, Field(ge=1, le=100)] = 1
    data_capture_uri: str = ""
    data_capture_percent: Annotated[Int, Field(ge=0, le=100)] = 100
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


class _Loader(yaml.SafeLoader):
    """A SafeLoader that refuses what a configuration has no use for and what could hang or crash loading: duplicate
    keys, recursive aliases, nesting deeper than MAX_DEPTH and aliases that expand the document beyond MAX_NODES
    nodes (the composer shares an alias's node, the walks after it would not). Refusals are one-line ConfigErrors."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._path: list[str] = []  # how the nodes being composed are reached: ".key", "[index]" or "" (root, a key)
        self._nodes = 0  # composed so far, aliases expanded
        self._deepest = 0  # the deepest level reached in the node being composed
        self._open: set[str] = set()  # anchors of the nodes being composed
        self._extent: dict[str, tuple[int, int]] = {}  # anchor: nodes and levels of its node, aliases expanded

    @staticmethod
    def _refuse(problem: str, mark: yaml.Mark, note: str = "") -> None:
        raise ConfigError(f"{problem} (line {mark.line + 1}, column {mark.column + 1}{note})")

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            return self._alias(parent, index, event)
        if len(self._path) >= MAX_DEPTH:
            self._refuse(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self._path.append(f"[{index}]" if isinstance(index, int) else f".{index.value}" if index else "")
        if event.anchor:
            self._open.add(event.anchor)
        first, outer = self._nodes, self._deepest
        self._nodes += 1
        self._deepest = len(self._path)
        node = super().compose_node(parent, index)
        if event.anchor:
            self._open.discard(event.anchor)
            self._extent[event.anchor] = (self._nodes - first, self._deepest - len(self._path) + 1)
        self._deepest = max(outer, self._deepest)
        self._path.pop()
        return node

    def _alias(self, parent: yaml.Node | None, index: Any, event: yaml.AliasEvent) -> yaml.Node:
        if event.anchor in self._open:
            self._refuse(f"recursive alias *{event.anchor}", event.start_mark)
        node = super().compose_node(parent, index)  # an undefined alias is the composer's error
        nodes, levels = self._extent[event.anchor]
        self._nodes += nodes
        self._deepest = max(self._deepest, len(self._path) + levels)
        if self._nodes > MAX_NODES:
            self._refuse(f"alias *{event.anchor} expands the document beyond {MAX_NODES} nodes", event.start_mark)
        if self._deepest > MAX_DEPTH:
            self._refuse(f"alias *{event.anchor} nests the document deeper than {MAX_DEPTH} levels", event.start_mark)
        return node

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        node = super().compose_mapping_node(anchor)
        where = "".join(self._path).lstrip(".")
        seen: dict[tuple[str, str], yaml.Node] = {}
        for key, _ in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                first = seen.setdefault((key.tag, key.value), key)
                if first is not key:
                    name = f"{where}.{key.value}" if where else key.value
                    self._refuse(
                        f"duplicate key {name}", key.start_mark, f"; first at line {first.start_mark.line + 1}"
                    )
        return node


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        problem = ", ".join(part for part in (error.context, error.problem) if part)
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem
    return " ".join(str(error).split())


def _read(path: Path) -> Any:
    """The YAML document in a file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read the configuration ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"not UTF-8 text ({error.reason} at byte {error.start})") from None
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.YAMLError as error:
        raise ConfigError(f"not valid YAML: {_yaml_problem(error)}") from None


REFERENCE_TOKEN = re.compile(r"\$\$?\{|\}")
"""What environment references are made of: ${ opens one, $${ is a literal ${, } closes a default."""
REFERENCE_NAME = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(\}|:-)")


def _expand(
    value: str, start: int, environ: dict[str, str], needed: bool = True, opened: tuple[int, ...] = ()
) -> tuple[str, int]:
    """value[start:] with its references replaced, and the index after what was read: up to the end or, in a
    default (`opened`: where its enclosing ${ are), up to the } that closes it. needed=False: an unused default,
    only checked."""
    parts, position = [], start
    while match := REFERENCE_TOKEN.search(value, position):
        parts.append(value[position : match.start()])
        position = match.end()
        if match[0] == "}" and opened:
            return "".join(parts), position
        if match[0] != "${":  # $${, or a } outside defaults: literal
            parts.append(match[0].replace("$$", "$"))
            continue
        reference = REFERENCE_NAME.match(value, position)
        if not reference:
            raise ConfigError(
                f"'{value}': the ${{ at character {match.start() + 1} starts neither ${{NAME}} nor ${{NAME:-default}} "
                "(write $${ for a literal ${)"
            )
        name, position, default = reference[1], reference.end(), None
        if reference[2] == ":-":
            if len(opened) >= MAX_DEPTH:
                raise ConfigError(f"'{value}': defaults nested deeper than {MAX_DEPTH} levels")
            used = needed and not environ.get(name)
            default, position = _expand(value, position, environ, used, (*opened, match.start()))
        parts.append(_lookup(name, default, environ, value) if needed else "")
    if opened:
        raise ConfigError(f"'{value}': the ${{ at character {opened[-1] + 1} is not closed by }}")
    parts.append(value[position:])
    return "".join(parts), len(value)


def _lookup(name: str, default: str | None, environ: dict[str, str], value: str) -> str:
    """Shell semantics: ${NAME:-default} is the default when NAME is unset or empty; ${NAME} must be set."""
    found = environ.get(name)
    if found or (found is not None and default is None):
        return found
    if default is None:
        raise ConfigError(f"environment variable {name} is not set (and the value '{value}' has no default)")
    return default


def _interpolate(value: Any, path: str, environ: dict[str, str]) -> Any:
    """Replace the environment references in every string of the document."""
    if isinstance(value, dict):
        return {k: _interpolate(v, f"{path}.{k}" if path else str(k), environ) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", environ) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    try:
        return _expand(value, 0, environ)[0]
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def _describe(error: dict) -> str:
    path = ".".join(str(p) for p in error["loc"])
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
        return parse(_read(path), environ)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
