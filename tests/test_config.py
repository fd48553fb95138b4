"""pipeline.yaml loading: interpolation, validation, errors that name the key path."""

import copy

import pytest
import yaml

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
