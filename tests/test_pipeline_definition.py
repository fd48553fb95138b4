"""The cloud graph, held to its JSON definition (built offline: no credentials, no network)."""

import hashlib
import inspect
import json

import pytest

import bias
from pipelines import config as cfg
from pipelines.pipeline import get_pipeline, project_root
from pipelines.publish import PLACEHOLDER_BUCKET, canonical_json, definition, offline_session

ROLE = "arn:aws:iam::000000000000:role/test"
ENV = {"SAGEMAKER_ROLE_ARN": ROLE, "SAGEMAKER_BUCKET": "test-bucket"}
SECURE_ENV = {
    **ENV,
    "FRAUD_KMS_KEY_ID": "alias/fraud-test",
    "FRAUD_SUBNETS": "subnet-a,subnet-b",
    "FRAUD_SECURITY_GROUPS": "sg-1",
}


def build(environ):
    return definition(cfg.load(environ=environ))


@pytest.fixture(scope="module")
def text():
    return build(ENV)


@pytest.fixture(scope="module")
def doc(text):
    return json.loads(text)


@pytest.fixture(scope="module")
def secure():
    config = cfg.load(environ=SECURE_ENV)
    security = config.security.model_copy(update={"enable_network_isolation": True})
    return json.loads(definition(config.model_copy(update={"security": security})))


def all_steps(document):
    """Every step, the condition's branches included, by name."""
    steps = {}
    pending = list(document["Steps"])
    while pending:
        step = pending.pop()
        steps[step["Name"]] = step
        if step["Type"] == "Condition":
            pending += step["Arguments"]["IfSteps"] + step["Arguments"]["ElseSteps"]
    return steps


def references(value) -> set[str]:
    """Names of the steps a JSON value reads properties from."""
    found = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Get" and isinstance(inner, str) and inner.startswith("Steps."):
                found.add(inner.split(".")[1])
            found |= references(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= references(inner)
    return found


def test_every_step_and_its_type(doc):
    types = {name: step["Type"] for name, step in all_steps(doc).items()}
    assert types == {
        "DataVersion": "Processing",
        "Preprocess": "Processing",
        "FeatureStoreIngest": "Processing",
        "DataBiasCheck": "ClarifyCheck",
        "Tune": "Tuning",
        "Evaluate": "Processing",
        "ScoringModel-CreateModel": "Model",
        "ModelBiasCheck": "ClarifyCheck",
        "CheckAuc": "Condition",
        "CheckNewModel": "Condition",
        "Register-RegisterModel": "RegisterModel",
        "AucBelowThreshold": "Fail",
    }


def test_dependencies_follow_the_data(doc):
    steps = all_steps(doc)
    assert references(steps["DataVersion"]["Arguments"]) == set()
    assert references(steps["Preprocess"]["Arguments"]) == {"DataVersion"}
    assert references(steps["FeatureStoreIngest"]["Arguments"]) == {"Preprocess"}
    assert references(steps["Tune"]["Arguments"]) == {"Preprocess"}
    assert steps["Tune"]["DependsOn"] == ["DataBiasCheck"]
    assert references(steps["Evaluate"]["Arguments"]) == {"Preprocess", "Tune"}
    assert references(steps["ScoringModel-CreateModel"]["Arguments"]) == {"Evaluate", "Tune"}
    assert references(steps["ModelBiasCheck"]) == {"Preprocess", "ScoringModel-CreateModel"}
    assert references(steps["Register-RegisterModel"]["Arguments"]) == {
        "DataVersion",
        "Evaluate",
        "Tune",
        "DataBiasCheck",
        "ModelBiasCheck",
    }


def test_parameters_are_typed_with_config_defaults(doc):
    params = {p["Name"]: (p["Type"], p.get("DefaultValue")) for p in doc["Parameters"]}
    assert params["MinAuc"] == ("Float", 0.75)
    assert params["MaxTuningJobs"] == ("Integer", 12)
    assert params["MaxParallelTuningJobs"] == ("Integer", 3)
    assert params["ModelApprovalStatus"] == ("String", "PendingManualApproval")
    assert params["SkipBiasCheck"] == ("Boolean", False)
    assert params["RegisterNewBiasBaseline"] == ("Boolean", False)
    assert params["SkipModelBiasCheck"] == ("Boolean", False)
    assert params["RegisterNewModelBiasBaseline"] == ("Boolean", False)
    assert params["ClaimsUri"][0] == params["CustomersUri"][0] == "String"
    assert params["ProcessingInstanceType"] == ("String", "ml.m5.xlarge")
    assert params["TrainingInstanceType"] == ("String", "ml.m5.xlarge")


def test_preprocess_reads_the_parameters_and_writes_every_split(doc):
    args = all_steps(doc)["Preprocess"]["Arguments"]
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in args["ProcessingInputs"]}
    assert inputs["claims"] == {"Get": "Parameters.ClaimsUri"}
    assert inputs["customers"] == {"Get": "Parameters.CustomersUri"}
    outputs = {o["OutputName"] for o in args["ProcessingOutputConfig"]["Outputs"]}
    assert outputs == {"train", "validation", "test", "headered", "features", "manifest"}
    assert args["AppSpecification"]["ImageUri"] == "fraud-detection:latest"
    assert args["ProcessingResources"]["ClusterConfig"]["InstanceType"] == {"Get": "Parameters.ProcessingInstanceType"}


def test_tuning_objective_ranges_and_budget(doc):
    job = all_steps(doc)["Tune"]["Arguments"]["HyperParameterTuningJobConfig"]
    assert job["HyperParameterTuningJobObjective"] == {"Type": "Maximize", "MetricName": "validation:auc"}
    assert job["ResourceLimits"] == {
        "MaxNumberOfTrainingJobs": {"Get": "Parameters.MaxTuningJobs"},
        "MaxParallelTrainingJobs": {"Get": "Parameters.MaxParallelTuningJobs"},
    }
    assert job["TrainingJobEarlyStoppingType"] == "Auto"
    assert job["RandomSeed"] == 42
    ranges = job["ParameterRanges"]
    continuous = {r["Name"]: r for r in ranges["ContinuousParameterRanges"]}
    assert continuous["eta"] == {"Name": "eta", "MinValue": "0.01", "MaxValue": "0.3", "ScalingType": "Logarithmic"}
    assert [r["Name"] for r in ranges["IntegerParameterRanges"]] == ["max_depth"]
    definition_ = all_steps(doc)["Tune"]["Arguments"]["TrainingJobDefinition"]
    metrics = {m["Name"]: m["Regex"] for m in definition_["AlgorithmSpecification"]["MetricDefinitions"]}
    assert metrics["validation:auc"] == r"validation:auc=([0-9\.]+)"
    assert set(definition_["StaticHyperParameters"]) >= {"objective", "num_round", "sagemaker_program"}


def test_training_gets_the_mitigation_and_the_bias_facet_as_static_hyperparameters():
    """training.mitigation, bias.facet and bias.facet_values (comma-joined) reach train.py, never as ranges."""
    config = cfg.load(environ=ENV)
    config = config.model_copy(
        update={
            "training": config.training.model_copy(update={"mitigation": "resample"}),
            "bias": config.bias.model_copy(update={"facet": "customer_gender_male", "facet_values": [1, 2.5]}),
        }
    )
    document, _ = built(config)
    job = all_steps(document)["Tune"]["Arguments"]
    static = job["TrainingJobDefinition"]["StaticHyperParameters"]
    expected = {"mitigation": '"resample"', "facet": '"customer_gender_male"', "facet_values": '"1,2.5"'}
    assert {name: static[name] for name in expected} == expected
    ranges = job["HyperParameterTuningJobConfig"]["ParameterRanges"]
    tuned = {r["Name"] for kind in ranges.values() for r in kind}
    assert tuned and not tuned & set(expected)


def test_evaluation_property_file_and_auc_condition(doc):
    steps = all_steps(doc)
    assert steps["Evaluate"]["PropertyFiles"] == [
        {"PropertyFileName": "EvaluationReport", "OutputName": "evaluation", "FilePath": "evaluation.json"}
    ]
    condition = steps["CheckAuc"]["Arguments"]["Conditions"][0]
    assert condition["Type"] == "GreaterThanOrEqualTo"
    assert condition["LeftValue"]["Std:JsonGet"]["Path"] == "binary_classification_metrics.auc.value"
    assert condition["RightValue"] == {"Get": "Parameters.MinAuc"}
    assert [s["Name"] for s in steps["CheckAuc"]["Arguments"]["IfSteps"]] == ["CheckNewModel"]
    assert [s["Name"] for s in steps["CheckAuc"]["Arguments"]["ElseSteps"]] == ["AucBelowThreshold"]
    assert [s["Name"] for s in steps["CheckNewModel"]["Arguments"]["IfSteps"]] == ["Register-RegisterModel"]
    assert steps["CheckNewModel"]["Arguments"]["ElseSteps"] == []


def test_fail_message_carries_auc_and_threshold(doc):
    message = all_steps(doc)["AucBelowThreshold"]["Arguments"]["ErrorMessage"]["Std:Join"]
    assert message["Values"][0] == "Evaluation AUC"
    assert "Std:JsonGet" in message["Values"][1]
    assert message["Values"][3] == {"Get": "Parameters.MinAuc"}


def test_register_metrics_metadata_and_approval(doc):
    args = all_steps(doc)["Register-RegisterModel"]["Arguments"]
    assert args["ModelPackageGroupName"] == "fraud-detection-models"
    assert args["ModelApprovalStatus"] == {"Get": "Parameters.ModelApprovalStatus"}
    statistics = args["ModelMetrics"]["ModelQuality"]["Statistics"]
    assert statistics["S3Uri"]["Std:Join"]["Values"][-1] == "evaluation.json"
    explainability = args["ModelMetrics"]["Explainability"]["Report"]["S3Uri"]["Std:Join"]["Values"]
    assert explainability[0] == statistics["S3Uri"]["Std:Join"]["Values"][0]  # the Evaluate step's output
    assert explainability[-1] == "explainability.json"
    assert args["ModelMetrics"]["Bias"]["PreTrainingReport"]["S3Uri"] == {
        "Get": "Steps.DataBiasCheck.CalculatedBaselineConstraints"
    }
    assert args["DriftCheckBaselines"]["Bias"]["PreTrainingConstraints"]["S3Uri"] == {
        "Get": "Steps.DataBiasCheck.BaselineUsedForDriftCheckConstraints"
    }
    assert args["ModelMetrics"]["Bias"]["PostTrainingReport"]["S3Uri"] == {
        "Get": "Steps.ModelBiasCheck.CalculatedBaselineConstraints"
    }
    assert args["DriftCheckBaselines"]["Bias"]["PostTrainingConstraints"]["S3Uri"] == {
        "Get": "Steps.ModelBiasCheck.BaselineUsedForDriftCheckConstraints"
    }
    threshold = args["CustomerMetadataProperties"]["threshold"]["Std:Join"]["Values"][0]["Std:JsonGet"]
    assert threshold["Path"] == "threshold.value"
    spec = args["InferenceSpecification"]
    assert spec["SupportedContentTypes"] == ["text/csv", "application/json"]
    assert spec["SupportedRealtimeInferenceInstanceTypes"] == ["ml.m5.large"]


def test_bias_check_facet_label_and_gates(doc):
    step = all_steps(doc)["DataBiasCheck"]
    assert step["CheckType"] == "DATA_BIAS"
    assert step["SkipCheck"] == {"Get": "Parameters.SkipBiasCheck"}
    assert step["RegisterNewBaseline"] == {"Get": "Parameters.RegisterNewBiasBaseline"}
    assert step["FailOnViolation"] is True
    assert step["ModelPackageGroupName"] == "fraud-detection-models"


def built(config: cfg.Config) -> tuple[dict, dict[str, bytes]]:
    """The definition and every object the build uploaded (the SDK's code, the builder's bias files), by URI."""
    with offline_session(config) as (config, session), project_root():
        document = json.loads(canonical_json(get_pipeline(config, session).definition()))
        s3 = session.boto_session.client("s3")
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket=config.aws.bucket).get("Contents", [])]
        objects = {
            f"s3://{config.aws.bucket}/{k}": s3.get_object(Bucket=config.aws.bucket, Key=k)["Body"].read() for k in keys
        }
    return document, objects


def with_bias(**changes) -> cfg.Config:
    config = cfg.load(environ=ENV)
    return config.model_copy(update={"bias": config.bias.model_copy(update=changes)})


def content_hashed(uri: str, objects: dict[str, bytes]) -> dict:
    """The JSON object at uri, after checking that the key's hash segment is its content's sha256."""
    body = objects[uri]
    assert uri.split("/")[-2] == hashlib.sha256(body).hexdigest()[:16], uri
    return json.loads(body)


@pytest.fixture(scope="module")
def clarify_built():
    return built(with_bias())


@pytest.fixture(scope="module")
def smclarify_built():
    return built(with_bias(engine="smclarify"))


def register_args(document) -> dict:
    return all_steps(document)["Register-RegisterModel"]["Arguments"]


def test_the_gate_checks_against_the_configured_limits_supplied_as_its_baseline(clarify_built):
    """No earlier approved package is needed: the baseline is made of bias.thresholds and supplied to the step."""
    document, objects = clarify_built
    config = cfg.load(environ=ENV)
    step = all_steps(document)["DataBiasCheck"]
    baseline = content_hashed(step["SuppliedBaselineConstraints"], objects)
    [facet] = baseline["pre_training_bias_metrics"]["facets"]["customer_gender_female"]
    assert facet["value_or_threshold"] == "1"
    assert {m["name"]: m["value"] for m in facet["metrics"]} == config.bias.thresholds
    settings = bias.Settings("fraud", [1], "customer_gender_female", [1], config.bias.metrics)
    assert baseline == bias.baseline_from_thresholds(dict(config.bias.thresholds), settings)


def test_the_clarify_analysis_config_is_content_addressed_and_bias_py_reads_it(clarify_built, tmp_path):
    document, objects = clarify_built
    inputs = {
        i["InputName"]: i["S3Input"]["S3Uri"]
        for i in all_steps(document)["DataBiasCheck"]["Arguments"]["ProcessingInputs"]
    }
    config = content_hashed(inputs["analysis_config"], objects)  # the SDK's own upload, at the builder's key
    assert config["methods"]["pre_training_bias"]["methods"] == ["CI", "DPL", "KL", "JS", "LP", "TVD", "KS"]
    (tmp_path / "analysis_config.json").write_bytes(objects[inputs["analysis_config"]])
    settings = bias.settings_from_analysis_config(tmp_path / "analysis_config.json")
    assert settings == bias.Settings(
        "fraud",
        [1],
        "customer_gender_female",
        [1],
        config["methods"]["pre_training_bias"]["methods"],
        excluded_columns=("policy_id",),
    )


def test_drift_baselines_carry_the_bias_config_file_model_monitor_needs(clarify_built):
    document, objects = clarify_built
    drift = register_args(document)["DriftCheckBaselines"]["Bias"]
    assert drift["PreTrainingConstraints"]["S3Uri"] == {
        "Get": "Steps.DataBiasCheck.BaselineUsedForDriftCheckConstraints"
    }
    monitoring = content_hashed(drift["ConfigFile"]["S3Uri"], objects)
    assert monitoring["label"] == "fraud"
    assert monitoring["facet"] == [{"name_or_index": "customer_gender_female", "value_or_threshold": [1]}]
    assert monitoring["label_values_or_threshold"] == [1]


@pytest.mark.parametrize(
    ("change", "moves"),
    [
        ({"thresholds": {"DPL": 0.2}}, "SuppliedBaselineConstraints"),
        ({"metrics": ["CI", "DPL"], "thresholds": {"DPL": 0.1}}, "analysis_config"),
    ],
)
def test_an_edited_bias_setting_moves_its_file_so_the_cache_sees_it(clarify_built, change, moves):
    def location(document):
        step = all_steps(document)["DataBiasCheck"]
        if moves == "SuppliedBaselineConstraints":
            return step[moves]
        return {i["InputName"]: i["S3Input"]["S3Uri"] for i in step["Arguments"]["ProcessingInputs"]}[moves]

    edited = json.loads(definition(with_bias(**change)))
    assert location(edited) != location(clarify_built[0])


def test_the_smclarify_engine_runs_the_same_check_as_a_processing_step(clarify_built, smclarify_built):
    clarify, _ = clarify_built
    document, objects = smclarify_built
    step = all_steps(document)["DataBiasCheck"]
    assert step["Type"] == "Processing"
    args = step["Arguments"]
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in args["ProcessingInputs"]}
    clarify_step = all_steps(clarify)["DataBiasCheck"]
    clarify_inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in clarify_step["Arguments"]["ProcessingInputs"]}
    assert inputs["config"] == clarify_inputs["analysis_config"]  # the same analysis, the same limits
    assert inputs["baseline"] == clarify_step["SuppliedBaselineConstraints"]
    assert inputs["data"] == clarify_inputs["dataset"]
    assert content_hashed(inputs["config"], objects)["label"] == "fraud"
    arguments = args["AppSpecification"]["ContainerArguments"]
    flag = {arguments[i]: arguments[i + 1] for i in range(0, len(arguments) - 1) if str(arguments[i]).startswith("--")}
    assert flag["--skip-check"] == {"Std:Join": {"On": "", "Values": [{"Get": "Parameters.SkipBiasCheck"}]}}
    assert flag["--register-new-baseline"] == {
        "Std:Join": {"On": "", "Values": [{"Get": "Parameters.RegisterNewBiasBaseline"}]}
    }
    assert step["CacheConfig"] == clarify_step["CacheConfig"]

    register = register_args(document)
    report = register["ModelMetrics"]["Bias"]["PreTrainingReport"]["S3Uri"]["Std:Join"]["Values"]
    assert report == [
        {"Get": "Steps.DataBiasCheck.ProcessingOutputConfig.Outputs['report'].S3Output.S3Uri"},
        "analysis.json",
    ]
    drift = register["DriftCheckBaselines"]["Bias"]
    assert drift["PreTrainingConstraints"]["S3Uri"]["Std:Join"]["Values"][-1] == "constraints.json"
    assert drift["ConfigFile"] == register_args(clarify)["DriftCheckBaselines"]["Bias"]["ConfigFile"]


def test_the_model_gate_asks_the_model_as_its_endpoint_serves_it(clarify_built, tmp_path):
    """Clarify's ModelBias check: a shadow endpoint of the model created with the operating threshold (its serve
    flags at FRAUD_THRESHOLD), the headered test split less policy_id sent as text/csv, the flag (column 1 of the
    "probability,flag" answer) read as the predicted label; checked against bias.post_training's limits."""
    document, objects = clarify_built
    config = cfg.load(environ=ENV)
    steps = all_steps(document)
    model = steps["ScoringModel-CreateModel"]["Arguments"]["PrimaryContainer"]
    threshold = model["Environment"]["FRAUD_THRESHOLD"]["Std:Join"]["Values"][0]["Std:JsonGet"]
    assert threshold == {
        "Path": "threshold.value",
        "PropertyFile": {"Get": "Steps.Evaluate.PropertyFiles.EvaluationReport"},
    }
    assert model["ModelDataUrl"] == register_args(document)["InferenceSpecification"]["Containers"][0]["ModelDataUrl"]
    step = steps["ModelBiasCheck"]
    assert step["CheckType"] == "MODEL_BIAS"
    assert step["ModelName"] == {"Get": "Steps.ScoringModel-CreateModel.ModelName"}
    assert step["SkipCheck"] == {"Get": "Parameters.SkipModelBiasCheck"}
    assert step["RegisterNewBaseline"] == {"Get": "Parameters.RegisterNewModelBiasBaseline"}
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in step["Arguments"]["ProcessingInputs"]}
    assert inputs["dataset"]["Std:Join"]["Values"] == [
        {"Get": "Steps.Preprocess.ProcessingOutputConfig.Outputs['headered'].S3Output.S3Uri"},
        "test.csv",
    ]
    analysis = content_hashed(inputs["analysis_config"], objects)
    assert analysis["methods"]["post_training_bias"]["methods"] == config.bias.post_training.metrics
    assert analysis["excluded_columns"] == ["policy_id"]
    predictor = analysis["predictor"]
    assert (predictor["content_type"], predictor["accept_type"], predictor["label"]) == ("text/csv", "text/csv", 1)
    assert predictor["endpoint_name_prefix"] == "fraud-detection-clarify"  # deploy_lambda/template.yaml lets it
    baseline = content_hashed(step["SuppliedBaselineConstraints"], objects)
    [facet] = baseline["post_training_bias_metrics"]["facets"]["customer_gender_female"]
    assert {m["name"]: m["value"] for m in facet["metrics"]} == config.bias.post_training.thresholds
    (tmp_path / "analysis_config.json").write_bytes(objects[inputs["analysis_config"]])
    settings = bias.settings_from_analysis_config(tmp_path / "analysis_config.json")
    assert (settings.stage, settings.predictor["label"], settings.excluded_columns) == (
        "post_training",
        1,
        ("policy_id",),
    )


def test_with_smclarify_the_model_gate_reads_evaluates_predictions(smclarify_built, tmp_path):
    document, objects = smclarify_built
    steps = all_steps(document)
    assert "ScoringModel-CreateModel" not in steps
    step = steps["ModelBiasCheck"]
    assert step["Type"] == "Processing"
    inputs = {i["InputName"]: i["S3Input"]["S3Uri"] for i in step["Arguments"]["ProcessingInputs"]}
    assert inputs["data"]["Std:Join"]["Values"] == [
        {"Get": "Steps.Evaluate.ProcessingOutputConfig.Outputs['evaluation'].S3Output.S3Uri"},
        "predictions.csv",
    ]
    (tmp_path / "analysis_config.json").write_bytes(objects[inputs["config"]])
    settings = bias.settings_from_analysis_config(tmp_path / "analysis_config.json")
    assert (settings.stage, settings.predicted_label, settings.predictor) == ("post_training", "fraud_predicted", None)
    arguments = step["Arguments"]["AppSpecification"]["ContainerArguments"]
    assert arguments[arguments.index("--skip-check") + 1]["Std:Join"]["Values"] == [
        {"Get": "Parameters.SkipModelBiasCheck"}
    ]
    report = register_args(document)["ModelMetrics"]["Bias"]["PostTrainingReport"]["S3Uri"]["Std:Join"]["Values"]
    assert report == [
        {"Get": "Steps.ModelBiasCheck.ProcessingOutputConfig.Outputs['report'].S3Output.S3Uri"},
        "analysis.json",
    ]


def test_no_security_settings_when_none_are_configured(doc):
    for name, step in all_steps(doc).items():
        text = json.dumps(step["Arguments"])
        assert "VpcConfig" not in text, name
        assert "KmsKeyId" not in text and "VolumeKmsKeyId" not in text, name
        assert '"EnableNetworkIsolation": true' not in text, name


def test_security_settings_reach_every_job(secure):
    steps = all_steps(secure)
    for name in ("Preprocess", "FeatureStoreIngest", "DataBiasCheck", "Evaluate"):
        args = steps[name]["Arguments"]
        network = args["NetworkConfig"]
        assert network["VpcConfig"] == {"Subnets": ["subnet-a", "subnet-b"], "SecurityGroupIds": ["sg-1"]}, name
        assert network["EnableInterContainerTrafficEncryption"] is True, name
        assert args["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] == "alias/fraud-test", name
        if name != "FeatureStoreIngest":  # the only job without outputs
            assert args["ProcessingOutputConfig"]["KmsKeyId"] == "alias/fraud-test", name
    assert steps["Preprocess"]["Arguments"]["NetworkConfig"]["EnableNetworkIsolation"] is True
    assert steps["FeatureStoreIngest"]["Arguments"]["NetworkConfig"]["EnableNetworkIsolation"] is False
    training = steps["Tune"]["Arguments"]["TrainingJobDefinition"]
    assert training["VpcConfig"] == {"Subnets": ["subnet-a", "subnet-b"], "SecurityGroupIds": ["sg-1"]}
    assert training["HyperParameterTuningResourceConfig"]["VolumeKmsKeyId"] == "alias/fraud-test"
    assert training["OutputDataConfig"]["KmsKeyId"] == "alias/fraud-test"
    assert training["EnableNetworkIsolation"] is True
    assert training["EnableInterContainerTrafficEncryption"] is True
    assert "--kms-key-id" in steps["FeatureStoreIngest"]["Arguments"]["AppSpecification"]["ContainerArguments"]


def test_cache_config_on_every_cacheable_step(doc):
    for name in ("Preprocess", "FeatureStoreIngest", "DataBiasCheck", "Tune", "Evaluate"):
        assert all_steps(doc)[name]["CacheConfig"] == {"Enabled": True, "ExpireAfter": "P30D"}, name
    assert "CacheConfig" not in all_steps(doc)["DataVersion"]


def test_the_data_version_is_in_preprocess_cache_key_so_new_data_retrains(doc):
    """Caching keys on a step's arguments (AppSpecification, Environment, ProcessingInputs), not on what an S3 URI
    holds: the uncached DataVersion step fingerprints the inputs and Preprocess takes the fingerprint as an
    argument, so new data at the same ClaimsUri misses the cache and the same data may hit it."""
    steps = all_steps(doc)
    version, preprocess = steps["DataVersion"]["Arguments"], steps["Preprocess"]["Arguments"]
    assert version["ProcessingInputs"][:2] == preprocess["ProcessingInputs"][:2]
    assert steps["DataVersion"]["PropertyFiles"] == [
        {"PropertyFileName": "DataVersion", "OutputName": "version", "FilePath": "version.json"}
    ]
    arguments = preprocess["AppSpecification"]["ContainerArguments"]
    data_version = arguments[arguments.index("--data-version") + 1]["Std:JsonGet"]
    assert data_version == {"Path": "version", "PropertyFile": {"Get": "Steps.DataVersion.PropertyFiles.DataVersion"}}
    metadata = steps["Register-RegisterModel"]["Arguments"]["CustomerMetadataProperties"]
    assert metadata["data_version"]["Std:Join"]["Values"][0]["Std:JsonGet"] == data_version
    assert metadata["training_job"] == {"Get": "Steps.Tune.TrainingJobSummaries[0].TrainingJobName"}


def test_only_a_model_evaluated_in_this_execution_is_registered(doc):
    """On a cache hit Evaluate's outputs are an earlier execution's: its model is registered already."""
    [condition] = all_steps(doc)["CheckNewModel"]["Arguments"]["Conditions"]
    assert condition["Type"] == "Equals"
    assert condition["LeftValue"] == {
        "Get": "Steps.Evaluate.ProcessingOutputConfig.Outputs['evaluation'].S3Output.S3Uri"
    }
    outputs = all_steps(doc)["Evaluate"]["Arguments"]["ProcessingOutputConfig"]["Outputs"]
    assert condition["RightValue"] == next(o["S3Output"]["S3Uri"] for o in outputs if o["OutputName"] == "evaluation")


def test_definition_is_deterministic(text):
    assert build(ENV) == text


def test_no_bucket_or_role_configured_uses_placeholders():
    document = build({})
    assert PLACEHOLDER_BUCKET in document
    assert "000000000000" in document


def render(value, gets: dict[str, str]) -> str:
    """A definition value as the service would evaluate it, with `gets` for its {"Get": ...} references."""
    if isinstance(value, str):
        return value
    if "Get" in value:
        return gets.get(value["Get"], "<" + value["Get"] + ">")
    if "Std:JsonGet" in value:
        return "<JsonGet>"
    join = value["Std:Join"]
    return join["On"].join(render(v, gets) for v in join["Values"])


def s3_strings(value) -> list[str]:
    """Every S3 URI written in a JSON value, rendered, Joins included."""
    if isinstance(value, dict):
        if "Std:Join" in value:
            rendered = render(value, {})
            return [rendered] if rendered.startswith("s3://") else []
        return [uri for inner in value.values() for uri in s3_strings(inner)]
    if isinstance(value, list):
        return [uri for inner in value for uri in s3_strings(inner)]
    return [value] if isinstance(value, str) and value.startswith("s3://") else []


@pytest.mark.parametrize("prefix", ["", "fraud-detection", "team/fraud/"])
def test_every_s3_path_is_built_from_non_empty_parts(prefix):
    config = cfg.load(environ=ENV)
    config = config.model_copy(update={"aws": config.aws.model_copy(update={"prefix": prefix})})
    document = json.loads(definition(config))
    uris = s3_strings(document)
    assert uris
    for uri in uris:
        assert "//" not in uri.removeprefix("s3://"), uri
        assert not uri.endswith("/"), uri

    steps = all_steps(document)
    job = "tune-abc-001-12345678"
    written = steps["Tune"]["Arguments"]["TrainingJobDefinition"]["OutputDataConfig"]["S3OutputPath"]
    model_input = {i["InputName"]: i["S3Input"]["S3Uri"] for i in steps["Evaluate"]["Arguments"]["ProcessingInputs"]}
    read = render(model_input["model"], {"Steps.Tune.TrainingJobSummaries[0].TrainingJobName": job})
    assert read == f"{written}/{job}/output/model.tar.gz"
    assert written == "s3://test-bucket/" + "/".join(p for p in [prefix.strip("/"), "models"] if p)


def test_the_sdk_config_is_validated_once_and_an_invalid_one_still_raises():
    """The builder memoises the SDK's config validation (it ran at every config lookup); the SDK looks it up
    through sagemaker.utils, which is what the builder replaces."""
    import jsonschema
    import sagemaker.utils

    import pipelines.pipeline  # noqa: F401  (replaces the function on import)

    validate = sagemaker.utils.validate_sagemaker_config
    assert validate.__code__.co_name == "validate_once"
    assert "validate_sagemaker_config(config_to_check)" in inspect.getsource(sagemaker.utils.get_sagemaker_config_value)
    validate({"SchemaVersion": "1.0"})
    for _ in range(2):
        with pytest.raises(jsonschema.ValidationError):
            validate({"SchemaVersion": "1.0", "Unknown": 1})


@pytest.mark.parametrize(("online", "offline"), [(True, False), (False, True)])
def test_ingest_gets_the_stores_the_configuration_asks_for(online, offline):
    config = cfg.load(environ=ENV)
    store = config.feature_store.model_copy(update={"online_store": online, "offline_store": offline})
    steps = all_steps(json.loads(definition(config.model_copy(update={"feature_store": store}))))
    arguments = steps["FeatureStoreIngest"]["Arguments"]["AppSpecification"]["ContainerArguments"]
    assert ("--offline-store-uri" in arguments) == offline
    assert ("--online-store" if online else "--no-online-store") in arguments
