"""pipeline.yaml loading: interpolation, validation, errors that name the key path."""

import copy
import re

import pytest
import yaml

import bias
from pipelines import config as cfg

ENV = {"SAGEMAKER_ROLE_ARN": "arn:aws:iam::000000000000:role/test", "SAGEMAKER_BUCKET": "test-bucket"}


@pytest.fixture(scope="module")
def document():
    return yaml.safe_load(cfg.DEFAULT_PATH.read_text())


def parse_with(document, path, value, environ=ENV):
    changed = copy.deepcopy(document)
    *parents, last = path.split(".")
    node = changed
    for key in parents:
        node = node[key]
    node[last] = value
    return cfg.parse(changed, environ)


def test_project_config_loads_with_environment_values():
    config = cfg.load(environ=ENV)
    assert config.aws.role_arn == ENV["SAGEMAKER_ROLE_ARN"]
    assert config.aws.bucket == "test-bucket"
    assert config.aws.region == "us-east-1"
    assert config.bias.facet == "customer_gender_female"
    assert config.tuning.ranges["eta"].scaling == "Logarithmic"
    assert config.security.subnets == []


def test_defaults_apply_when_environment_is_empty():
    config = cfg.load(environ={})
    assert config.aws.role_arn == ""
    assert config.aws.image_uri == "fraud-detection:latest"


def test_comma_separated_lists_come_from_the_environment():
    config = cfg.load(environ={**ENV, "FRAUD_SUBNETS": "subnet-a, subnet-b", "FRAUD_SECURITY_GROUPS": "sg-1"})
    assert config.security.subnets == ["subnet-a", "subnet-b"]
    assert config.security.security_groups == ["sg-1"]


def test_value_above_maximum_names_key_value_and_bound(document):
    with pytest.raises(cfg.ConfigError, match=r"training\.hyperparameters\.eta: 1\.7 is above the maximum 1\.0"):
        parse_with(document, "training.hyperparameters.eta", 1.7)


def test_unknown_key_is_named(document):
    with pytest.raises(cfg.ConfigError, match=r"training\.hyperparameters\.learning_rate: unknown key"):
        parse_with(document, "training.hyperparameters.learning_rate", 0.1)


def test_wrong_type_is_named(document):
    with pytest.raises(cfg.ConfigError, match=r"tuning\.max_jobs: 'many'"):
        parse_with(document, "tuning.max_jobs", "many")


def test_missing_section_is_named(document):
    broken = copy.deepcopy(document)
    del broken["registry"]
    with pytest.raises(cfg.ConfigError, match=r"registry: required key is missing"):
        cfg.parse(broken, ENV)


def test_range_bounds_must_be_ordered(document):
    with pytest.raises(cfg.ConfigError, match=r"tuning\.ranges\.eta.*min 0\.5 must be below max 0\.3"):
        parse_with(document, "tuning.ranges.eta", {"type": "continuous", "min": 0.5, "max": 0.3})


def test_untunable_hyperparameter_is_rejected(document):
    with pytest.raises(cfg.ConfigError, match=r"cannot tune objective"):
        parse_with(document, "tuning.ranges.objective", {"type": "integer", "min": 1, "max": 2})


def test_subnets_without_security_groups_is_rejected(document):
    with pytest.raises(cfg.ConfigError, match=r"security: subnets and security_groups must be given together"):
        parse_with(document, "security.subnets", ["subnet-a"])


def test_bad_role_arn_is_rejected():
    with pytest.raises(cfg.ConfigError, match=r"aws\.role_arn: 'not-an-arn' does not match"):
        cfg.load(environ={**ENV, "SAGEMAKER_ROLE_ARN": "not-an-arn"})


def test_unknown_bias_metric_is_rejected(document):
    with pytest.raises(cfg.ConfigError, match=r"unknown bias metric\(s\) XYZ"):
        parse_with(document, "bias.metrics", ["CI", "XYZ"])


def test_required_environment_variable_is_named(document):
    with pytest.raises(cfg.ConfigError, match=r"aws\.bucket: environment variable MY_BUCKET is not set"):
        parse_with(document, "aws.bucket", "${MY_BUCKET}", environ={})


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(cfg.ConfigError, match=r"missing\.yaml: cannot read"):
        cfg.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("project: [unclosed\n")
    with pytest.raises(cfg.ConfigError, match=r"bad\.yaml: not valid YAML"):
        cfg.load(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(cfg.ConfigError, match=r"scalar\.yaml: the configuration must be a mapping"):
        cfg.load(scalar)


def test_a_limit_for_a_metric_that_is_not_computed_is_rejected(document):
    with pytest.raises(cfg.ConfigError, match=r"bias: thresholds for metric\(s\) not in metrics: KS"):
        parse_with(document, "bias.metrics", ["CI", "DPL", "KL", "JS", "TVD"])


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("bias.post_training.metrics", ["DPPL", "DPL"], r"bias\.post_training: unknown bias metric\(s\) DPL"),
        ("bias.post_training.thresholds", {"RD": 0.2, "TE": 0.5, "GE": 0.1, "XYZ": 1}, r"unknown bias metric\(s\) XYZ"),
        (
            "bias.post_training.thresholds",
            {"DI": 0.8},
            r"bias\.post_training: the bias gate judges distance from 0, but DI's is 1: gate DPPL instead",
        ),
    ],
)
def test_model_bias_settings_are_checked(document, key, value, message):
    with pytest.raises(cfg.ConfigError, match=message):
        parse_with(document, key, value)


def test_the_bias_metrics_are_those_bias_py_computes():
    """The configuration accepts exactly the metric names processing/bias.py (smclarify) knows, per stage."""
    assert cfg.BIAS_METRICS == set(bias.STAGES["pre_training"].known_metrics)
    assert cfg.POST_TRAINING_METRICS == set(bias.STAGES["post_training"].known_metrics)
    assert cfg.PostTrainingBias().metrics == list(bias.STAGES["post_training"].default_metrics)


def test_bias_engine_is_clarify_or_smclarify(document):
    assert parse_with(document, "bias.engine", "smclarify").bias.engine == "smclarify"
    with pytest.raises(cfg.ConfigError, match=r"bias\.engine: 'sagemaker'"):
        parse_with(document, "bias.engine", "sagemaker")


@pytest.mark.parametrize("key", ["supplied_baseline_constraints", "supplied_baseline_statistics"])
def test_supplied_baselines_are_gone_the_thresholds_are_the_baseline(document, key):
    with pytest.raises(cfg.ConfigError, match=rf"bias\.{key}: unknown key"):
        parse_with(document, f"bias.{key}", "s3://bucket/constraints.json")


def test_schedule_enabled_is_gone_make_schedule_enables(document):
    with pytest.raises(cfg.ConfigError, match=r"schedule\.enabled: unknown key"):
        parse_with(document, "schedule.enabled", True)


def test_a_feature_group_needs_a_store(document):
    changed = copy.deepcopy(document)
    changed["feature_store"].update(online_store=False, offline_store=False)
    with pytest.raises(cfg.ConfigError, match=r"feature_store: a feature group needs a store"):
        cfg.parse(changed, ENV)


def test_dead_letter_queue_must_be_an_sqs_arn(document):
    with pytest.raises(cfg.ConfigError, match=r"schedule\.dead_letter_arn: 'my-queue' does not match"):
        parse_with(document, "schedule.dead_letter_arn", "my-queue")


# ---- the YAML file: limits, encoding, duplicate keys, one-line errors -----------------------------------------------


def write(tmp_path, name, content):
    """A file of text (str) or raw bytes."""
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def alias_bomb(levels=9, width=9):
    """The billion laughs: each level lists the previous one `width` times, width**levels strings in all."""
    lines = ['l0: &l0 "lol"']
    for level in range(1, levels + 1):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def chained_depth(links=4, levels=20):
    """Each anchor nests the previous alias `levels` lists deep: no literal nesting is deep, the expansion is."""
    lines = [f"a0: &a0 {'[' * levels}x{']' * levels}"]
    for link in range(1, links):
        lines.append(f"a{link}: &a{link} {'[' * levels}*a{link - 1}{']' * levels}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (alias_bomb(), r"alias \*l\d expands the document beyond 10000 nodes \(line \d+, column \d+\)"),
        ("project: &p {name: *p}\n", r"recursive alias \*p \(line 1"),
        ("a: &a [1, *a]\n", r"recursive alias \*a \(line 1"),
        ("project: " + "[" * 5000 + "]" * 5000 + "\n", r"nested deeper than 32 levels \(line 1"),
        ("project:\n" + "".join(f"{'  ' * i}k{i}:\n" for i in range(1, 200)), r"nested deeper than 32 levels"),
        (chained_depth(), r"alias \*a\d nests the document deeper than 32 levels \(line \d+"),
    ],
    ids=[
        "alias bomb",
        "recursive mapping",
        "recursive list",
        "deep flow nesting",
        "deep block nesting",
        "deep aliases",
    ],
)
def test_documents_that_would_hang_or_crash_the_loader_are_refused(tmp_path, text, message):
    path = write(tmp_path, "hostile.yaml", text)

    with pytest.raises(cfg.ConfigError, match=r"^\S*hostile\.yaml: " + message) as raised:
        cfg.load(path, ENV)
    assert "\n" not in str(raised.value)


def test_aliases_within_the_limits_still_work(tmp_path):
    text = cfg.DEFAULT_PATH.read_text().replace("training:\n  compute:\n", "training:\n  compute: &compute\n", 1)
    evaluation_compute = "  compute:\n    instance_type: ml.m5.xlarge\n\nbias:"
    assert evaluation_compute in text
    path = write(tmp_path, "aliases.yaml", text.replace(evaluation_compute, "  compute: *compute\n\nbias:", 1))

    config = cfg.load(path, ENV)
    assert config.evaluation.compute == config.training.compute


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = write(tmp_path, "latin1.yaml", "project:\n  name: caf\u00e9\n".encode("latin-1"))

    with pytest.raises(cfg.ConfigError, match=r"latin1\.yaml: not UTF-8 text \(invalid continuation byte at byte 20\)"):
        cfg.load(path, ENV)


@pytest.mark.parametrize(
    "text", ["project: [unclosed\n", "project: {a: 1\n", "a: b: c\n", "project: \x07\n", "- a\nb: c\n"]
)
def test_yaml_syntax_errors_are_one_line(tmp_path, text):
    path = write(tmp_path, "bad.yaml", text)

    with pytest.raises(cfg.ConfigError, match=r"bad\.yaml: not valid YAML: ") as raised:
        cfg.load(path, ENV)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "    eta: 0.05\n",
            "    eta: 0.1\n    eta: 0.9\n",
            r"duplicate key training\.hyperparameters\.eta \(line \d+, column 5; first at line \d+\)",
        ),
        ("cache:\n", "deploy: {}\ncache:\n", r"duplicate key deploy \(line \d+, column 1; first at line \d+\)"),
        ("  facet_values: [1]\n", "  facet_values: [{a: 1, 'a': 2}]\n", r"duplicate key bias\.facet_values\[0\]\.a "),
    ],
    ids=["hyperparameter", "section", "in a list"],
)
def test_duplicate_keys_are_refused(tmp_path, old, new, message):
    text = cfg.DEFAULT_PATH.read_text()
    assert old in text
    path = write(tmp_path, "duplicate.yaml", text.replace(old, new, 1))

    with pytest.raises(cfg.ConfigError, match=r"duplicate\.yaml: " + message):
        cfg.load(path, ENV)


def test_merge_keys_may_override_what_they_merge(tmp_path):
    compute = "  compute:\n    instance_type: ml.m5.xlarge\n\nbias:"
    merged = (
        "  compute:\n    <<: {instance_type: ml.m5.large, volume_size_gb: 50}\n    instance_type: ml.m5.xlarge\n\nbias:"
    )
    text = cfg.DEFAULT_PATH.read_text()
    assert compute in text
    path = write(tmp_path, "merge.yaml", text.replace(compute, merged, 1))

    compute = cfg.load(path, ENV).evaluation.compute
    assert (compute.instance_type, compute.volume_size_gb) == ("ml.m5.xlarge", 50)


# ---- environment references: ${NAME}, ${NAME:-default}, $${ -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "environ", "expected"),
    [
        ("${B:-fallback}", {"B": ""}, "fallback"),
        ("${B:-fallback}", {}, "fallback"),
        ("${B:-fallback}", {"B": "set"}, "set"),
        ("${B}", {"B": ""}, ""),
        ("${B:-}", {}, ""),
        ("${B:-${C}}", {"C": "inner"}, "inner"),
        ("${B:-${C:-${D:-deep}}}-x", {}, "deep-x"),
        ("${B:-${UNSET}}", {"B": "set"}, "set"),
        ("pre-${B:-a}-${C:-b}-post", {}, "pre-a-b-post"),
        ("$${B}", {"B": "set"}, "${B}"),
        ("$${B:-x}", {}, "${B:-x}"),
        ("${B:-$${C}}", {}, "${C}"),
        ("100% {not} a $reference}", {}, "100% {not} a $reference}"),
    ],
)
def test_environment_references(document, value, environ, expected):
    assert parse_with(document, "aws.bucket", value, environ={**ENV, **environ}).aws.bucket == expected


@pytest.mark.parametrize(
    ("value", "environ", "message"),
    [
        ("${B:-${UNSET}}", {}, r"aws\.bucket: environment variable UNSET is not set"),
        ("${B:-abc", {}, r"aws\.bucket: '\$\{B:-abc': the \$\{ at character 1 is not closed by \}"),
        (
            "${1B}",
            {},
            r"aws\.bucket: '\$\{1B\}': the \$\{ at character 1 starts neither \$\{NAME\} nor \$\{NAME:-default\}",
        ),
        (
            "x${B-default}",
            {},
            r"aws\.bucket: .*the \$\{ at character 2 starts neither .*write \$\$\{ for a literal \$\{",
        ),
        ("${" * 50 + "}" * 50, {}, r"aws\.bucket: .*starts neither"),
        ("${A:-" * 50 + "}" * 50, {}, r"aws\.bucket: .*defaults nested deeper than 32 levels"),
    ],
)
def test_bad_environment_references_are_refused(document, value, environ, message):
    with pytest.raises(cfg.ConfigError, match=message):
        parse_with(document, "aws.bucket", value, environ=environ)


# ---- types and ranges: what training accepts -----------------------------------------------------------------------


def number_fields(model, prefix=""):
    """The key paths of every int and float setting of a configuration model, sections included."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        if isinstance(field.annotation, type) and issubclass(field.annotation, cfg.BaseModel):
            yield from number_fields(field.annotation, f"{path}.")
        elif field.annotation in (int, float):
            yield path


def set_path(document, path, value):
    changed = copy.deepcopy(document)
    *parents, last = path.split(".")
    node = changed
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return changed


NUMBER_FIELDS = sorted(number_fields(cfg.Config))


def test_every_number_setting_is_checked():
    assert {"deploy.instance_count", "training.hyperparameters.seed", "data.seed", "evaluation.min_auc"} <= set(
        NUMBER_FIELDS
    )


@pytest.mark.parametrize("path", NUMBER_FIELDS)
def test_a_boolean_is_not_a_number(document, path):
    with pytest.raises(cfg.ConfigError, match=rf"{re.escape(path)}: True: a boolean where a number is expected"):
        cfg.parse(set_path(document, path, True), ENV)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("bias.positive_label", True),
        ("bias.facet_values", [False]),
        ("bias.thresholds.DPL", True),
        ("tuning.ranges.max_depth", {"type": "integer", "min": True, "max": 4}),
        ("tuning.ranges.eta", {"type": "continuous", "min": 0.1, "max": True}),
    ],
)
def test_a_boolean_is_not_a_number_in_lists_and_ranges_either(document, path, value):
    with pytest.raises(cfg.ConfigError, match=rf"{re.escape(path)}\S*: (True|False): a boolean where a number is"):
        cfg.parse(set_path(document, path, value), ENV)


def test_numbers_from_the_environment_are_still_numbers(document):
    changed = set_path(document, "deploy.instance_count", "${COUNT}")
    changed = set_path(changed, "training.hyperparameters.eta", "${ETA:-0.2}")
    changed = set_path(changed, "tuning.ranges.max_depth", {"type": "integer", "min": "${LOW}", "max": 8})

    config = cfg.parse(changed, {**ENV, "COUNT": "3", "LOW": "2"})
    assert config.deploy.instance_count == 3
    assert config.training.hyperparameters.eta == 0.2
    assert config.tuning.ranges["max_depth"].min == 2


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "training.hyperparameters.seed",
            10**30,
            r"training\.hyperparameters\.seed: 10{30} is above the maximum 2147483647",
        ),
        ("training.hyperparameters.seed", -1, r"training\.hyperparameters\.seed: -1 is below the minimum 0"),
        ("training.hyperparameters.eta", 0, r"training\.hyperparameters\.eta: 0 is below the minimum 0\.0"),
        ("training.hyperparameters.gamma", float("nan"), r"training\.hyperparameters\.gamma: nan"),
        ("training.hyperparameters.max_depth", 2.5, r"training\.hyperparameters\.max_depth: 2\.5"),
        ("training.hyperparameters.objective", "reg:squarederror", r"training\.hyperparameters\.objective: 'reg:"),
        ("training.mitigation", "foo", r"training\.mitigation: 'foo': Input should be 'none', 'reweigh' or 'resample'"),
        ("bias.facet", "", r"bias\.facet: '': String should have at least 1 character"),
        ("bias.facet_values", [], r"bias\.facet_values: \[\]: List should have at least 1 item"),
        ("data.seed", 2**32, r"data\.seed: 4294967296 is above the maximum 4294967295"),
        ("data.seed", -1, r"data\.seed: -1 is below the minimum 0"),
    ],
)
def test_values_training_would_reject_are_refused(document, path, value, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.parse(set_path(document, path, value), ENV)


@pytest.mark.parametrize(
    "path",
    ["processing", "feature_store.compute", "training.compute", "evaluation.compute", "bias.compute"],
)
def test_a_step_runs_on_one_instance(document, path):
    """A second instance of these steps would redo the whole job (inputs are fully replicated, nothing shards)."""
    with pytest.raises(cfg.ConfigError, match=rf"^{re.escape(path)}\.instance_count: 2: the step's script runs on one"):
        cfg.parse(set_path(document, f"{path}.instance_count", 2), ENV)
    assert cfg.parse(set_path(document, "deploy.instance_count", 2), ENV).deploy.instance_count == 2


@pytest.mark.parametrize(
    ("name", "spec", "message"),
    [
        (
            "eta",
            {"type": "continuous", "min": 0.01, "max": 5},
            r"tuning\.ranges\.eta\.max: 5 is above the maximum 1\.0",
        ),
        (
            "gamma",
            {"type": "continuous", "min": -5, "max": 5},
            r"tuning\.ranges\.gamma\.min: -5 is below the minimum 0\.0",
        ),
        ("eta", {"type": "continuous", "min": 0, "max": 0.3}, r"tuning\.ranges\.eta\.min: 0 is below the minimum 0\.0"),
        (
            "num_round",
            {"type": "integer", "min": 10, "max": 10**6},
            r"tuning\.ranges\.num_round\.max: 1000000 is above",
        ),
        ("max_depth", {"type": "continuous", "min": 2, "max": 6}, r"tuning\.ranges\.max_depth\.type: 'continuous'"),
        ("eta", {"type": "integer", "min": 1, "max": 2}, r"tuning\.ranges\.eta\.type: 'integer'"),
    ],
)
def test_tuning_ranges_lie_inside_what_training_accepts(document, name, spec, message):
    with pytest.raises(cfg.ConfigError, match=message):
        parse_with(document, f"tuning.ranges.{name}", spec)


def test_hyperparameters_are_those_training_defines():
    config = cfg.load(environ=ENV)
    assert list(config.training.hyperparameters.model_dump()) == list(cfg.HYPERPARAMETERS)
    assert cfg.Training().hyperparameters.model_dump() == {name: s.default for name, s in cfg.HYPERPARAMETERS.items()}


@pytest.mark.parametrize("name", [name for name, spec in cfg.HYPERPARAMETERS.items() if not spec.tunable])
def test_only_tunable_hyperparameters_take_ranges(document, name):
    with pytest.raises(cfg.ConfigError, match=rf"tuning: cannot tune {name}; tunable: colsample_bytree, eta, gamma"):
        parse_with(document, f"tuning.ranges.{name}", {"type": "integer", "min": 1, "max": 2})


def test_mitigation_is_set_once_in_training_not_among_the_hyperparameters(document):
    """training.mitigation is train.py's `mitigation` setting; the facet comes from bias.*, so neither is a
    training.hyperparameters key nor tunable."""
    assert cfg.load(environ=ENV).training.mitigation == "none"
    assert cfg.parse(set_path(document, "training.mitigation", "reweigh"), ENV).training.mitigation == "reweigh"
    assert cfg.MITIGATION.choices == ("none", "reweigh", "resample")
    for name in ("mitigation", "facet", "facet_values"):
        with pytest.raises(cfg.ConfigError, match=rf"training\.hyperparameters\.{name}: unknown key"):
            parse_with(document, f"training.hyperparameters.{name}", "1")
        with pytest.raises(cfg.ConfigError, match=rf"tuning: cannot tune {name}"):
            parse_with(document, f"tuning.ranges.{name}", {"type": "integer", "min": 1, "max": 2})
