"""The cloud graph end to end on this machine: real containers through LocalPipelineSession, with the project's
executors for Tuning, ClarifyCheck and RegisterModel, the local Feature Store, the step cache and the registry.

Skipped, with the reason, only when no Docker engine is reachable; .ci/run starts one and builds the image,
so in CI these run for real. The runs share one runs/ folder (module scope), as a user's runs do: the first
meets an empty registry and cache, later ones find what earlier ones left.
"""

import json
import re
import subprocess
import sys
import time

import pytest

import bias
from harness import HOST, _ready, call, free_port
from pipelines import cli, local
from pipelines import config as cfg
from pipelines.local import containers
from pipelines.publish import PLACEHOLDER_BUCKET, PLACEHOLDER_ROLE, definition
from pipelines.synthetic_data import generate

pytestmark = pytest.mark.docker
ROWS = 3000


@pytest.fixture(scope="module")
def engine():
    if not local._docker_answers():
        pytest.skip("no Docker engine is reachable (`docker info` failed); .ci/run starts one")
    config = cfg.load(environ={})
    local.ensure_image(config.aws.image_uri)
    return config


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return generate(ROWS, 11, tmp_path_factory.mktemp("raw"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


def run(config, raw, runs, **overrides):
    claims, customers = raw
    return local.run(config, claims, customers, overrides, runs, say=lambda line: None)


def statuses(result) -> dict[str, str]:
    return {s["StepName"]: s["StepStatus"] for s in result.steps}


def cached(result) -> set[str]:
    return {s["StepName"] for s in result.steps if "CacheHitResult" in s}


def registry_lines(runs, *command) -> list[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "registry", "--runs-dir", str(runs), *command],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()


@pytest.fixture(scope="module")
def first(engine, raw, runs):
    """The first execution: an empty registry, an empty cache, three tuning jobs."""
    return run(engine, raw, runs, MinAuc="0.5", MaxTuningJobs="3")


def test_first_execution_runs_every_step_type_and_registers_the_best_job(first, runs):
    assert first.status == "Succeeded", first.failure
    assert statuses(first) == {
        name: "Succeeded"
        for name in (
            "DataVersion", "Preprocess", "FeatureStoreIngest", "DataBiasCheck", "Tune", "Evaluate",
            "ScoringModel-CreateModel", "ModelBiasCheck", "CheckAuc", "CheckNewModel", "Register-RegisterModel",
        )
    }  # fmt: skip
    assert not cached(first)

    tuning = json.loads((first.run_dir / "tuning.json").read_text())
    summaries = tuning["TrainingJobSummaries"]
    assert tuning["ObjectiveStatusCounters"] == {"Succeeded": 3, "Pending": 0, "Failed": 0}
    objectives = [s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for s in summaries]
    assert objectives == sorted(objectives, reverse=True)
    assert len({json.dumps(s["TunedHyperParameters"], sort_keys=True) for s in summaries}) == 3
    best = summaries[0]["TrainingJobName"]
    assert tuning["BestTrainingJob"]["TrainingJobName"] == best

    package = json.loads((first.run_dir / "model-package.json").read_text())
    assert package["ModelPackageVersion"] == 1
    assert package["ModelApprovalStatus"] == "PendingManualApproval"
    [container] = package["InferenceSpecification"]["Containers"]
    assert container["ModelDataUrl"].endswith(f"/models/{best}/output/model.tar.gz")
    assert package["CustomerMetadataProperties"]["training_job"] == best
    version = json.loads((first.run_dir / "data-version" / "version.json").read_text())["version"]
    assert package["CustomerMetadataProperties"]["data_version"] == version
    evaluation = json.loads((first.run_dir / "evaluation" / "evaluation.json").read_text())
    assert float(package["CustomerMetadataProperties"]["threshold"]) == evaluation["threshold"]["value"]
    metrics = package["ModelMetrics"]
    assert metrics["ModelQuality"]["Statistics"]["S3Uri"].endswith("/evaluate/evaluation/evaluation.json")
    assert metrics["Bias"]["PreTrainingReport"]["S3Uri"].endswith("/bias-check/report/analysis.json")
    assert metrics["Explainability"]["Report"]["S3Uri"].endswith("/evaluate/evaluation/explainability.json")
    assert metrics["Bias"]["PostTrainingReport"]["S3Uri"].endswith("/model-bias-check/report/analysis.json")
    drift = package["DriftCheckBaselines"]["Bias"]
    assert "/bias-check/baseline/" in drift["PreTrainingConstraints"]["S3Uri"]  # the supplied thresholds
    assert "/model-bias-check/baseline/" in drift["PostTrainingConstraints"]["S3Uri"]
    assert "/bias-check/monitoring/" in drift["ConfigFile"]["S3Uri"]

    analysis = json.loads((first.run_dir / "bias" / "analysis.json").read_text())
    assert "customer_gender_female" in analysis["pre_training_bias_metrics"]["facets"]
    assert (first.run_dir / "model" / "xgboost-model.json").is_file()
    test_rows = json.loads((first.run_dir / "manifest.json").read_text())["splits"]["test"]["rows"]
    assert abs(test_rows - ROWS * 0.15) < 4 * (ROWS * 0.15 * 0.85) ** 0.5  # the hash split's 0.15, within 4 sigma

    [header, row] = registry_lines(runs, "list")
    assert header.split()[:2] == ["version", "status"]
    assert row.split()[:2] == ["1", "PendingManualApproval"]
    assert f"{evaluation['binary_classification_metrics']['auc']['value']:.4f}" in row

    lines = local.summary(first)
    assert lines[0] == f"execution {first.execution_id}: Succeeded"
    explainability = json.loads((first.run_dir / "evaluation" / "explainability.json").read_text())
    top = list(explainability["explanations"]["kernel_shap"]["fraud"]["global_shap_values"])[:5]
    assert any(line.startswith("top reasons (mean |SHAP| on test): " + top[0]) for line in lines)
    assert f"registered {package['ModelPackageArn']} (PendingManualApproval)" in lines
    table = lines[lines.index("model bias (predicted labels on the test split, at the threshold):") + 1 :]
    assert table[0].split("|")[1:6] == [" metric ", " description ", " value ", " baseline ", " status "]
    assert any(re.match(r"  \| DPPL \| .* \| -?[0-9.e-]+ \| 0\.1 \| ok \|", row) for row in table)


def test_the_shadow_endpoint_flags_the_claims_evaluate_flagged(engine, first, tmp_path):
    """The model bias check asks the model's own container, created with Evaluate's threshold (Clarify's shadow
    endpoint); its predicted labels are evaluate's: the same metrics as bias.py on evaluate's predictions.csv."""
    served = json.loads((first.run_dir / "model-bias" / "analysis.json").read_text())
    metrics = ",".join(engine.bias.post_training.metrics)
    argv = ["--stage", "post_training", "--predicted-label", "fraud_predicted", "--metrics", metrics]
    argv += ["--dataset", str(first.run_dir / "evaluation" / "predictions.csv"), "--output-dir", str(tmp_path)]
    assert bias.main(argv) == 0
    assert json.loads((tmp_path / "analysis.json").read_text()) == served


def test_the_definition_that_ran_is_the_published_one_but_for_bucket_and_role(engine, first):
    """One graph: runs/<id>/definition.json against `fraud-pipeline definition`, differing only in the named list."""
    published = definition(engine)
    ran = (first.run_dir / "definition.json").read_text()
    differences = {  # what local runs may differ in
        local.runner.LOCAL_BUCKET: PLACEHOLDER_BUCKET,  # the bucket
        local.runner.LOCAL_ROLE: PLACEHOLDER_ROLE,  # the role
    }
    for local_value, published_value in differences.items():
        ran = ran.replace(local_value, published_value)
    assert ran == published
    types = {s["Name"]: s["Type"] for s in json.loads(ran)["Steps"]}
    assert types["Tune"] == "Tuning" and types["DataBiasCheck"] == "ClarifyCheck"


def test_a_rerun_on_the_same_data_is_cached_and_registers_nothing_new(engine, raw, runs, first):
    versions = len(registry_lines(runs, "list"))
    again = run(engine, raw, runs, MinAuc="0.5", MaxTuningJobs="3")
    assert again.status == "Succeeded", again.failure
    assert cached(again) == {"Preprocess", "FeatureStoreIngest", "DataBiasCheck", "Tune", "Evaluate"}
    sources = {s["CacheHitResult"]["SourcePipelineExecutionArn"] for s in again.steps if "CacheHitResult" in s}
    assert sources == {first.execution_id}
    assert "Register-RegisterModel" not in statuses(again)
    assert len(registry_lines(runs, "list")) == versions
    assert any(line.startswith("not registered: the model is an earlier execution's") for line in local.summary(again))
    assert json.loads((again.run_dir / "tuning.json").read_text()) == json.loads(
        (first.run_dir / "tuning.json").read_text()
    )


def test_a_changed_parameter_reruns_what_it_affects(engine, raw, runs, first):
    changed = run(engine, raw, runs, MinAuc="0.5", MaxTuningJobs="2")
    assert changed.status == "Succeeded", changed.failure
    assert cached(changed) == {"Preprocess", "FeatureStoreIngest", "DataBiasCheck"}
    assert statuses(changed)["Register-RegisterModel"] == "Succeeded"


def test_new_data_at_the_same_uri_retrains(engine, runs, first, tmp_path):
    claims, customers = generate(ROWS, 12, tmp_path)
    # one tuning job on these 3,000 policies flags no test claim, whose model bias cannot be computed: not judged
    fresh = run(engine, (claims, customers), runs, MinAuc="0.5", MaxTuningJobs="1", SkipModelBiasCheck="true")
    assert fresh.status == "Succeeded", fresh.failure
    assert not cached(fresh)


def test_min_auc_above_reach_ends_in_the_fail_branch(engine, raw, runs, first):
    result = run(engine, raw, runs, MinAuc="0.99", MaxTuningJobs="3")
    assert result.status == "Failed"
    assert result.fail_branch
    assert "is below the threshold MinAuc 0.99" in result.failure
    assert "Register-RegisterModel" not in statuses(result)
    assert any(line.startswith("fail branch: Evaluation AUC") for line in local.summary(result))


def test_a_metric_beyond_its_limit_fails_the_bias_check_naming_it(engine, raw, tmp_path):
    bias = engine.bias.model_copy(update={"thresholds": {**engine.bias.thresholds, "TVD": 0.0001}})
    result = run(engine.model_copy(update={"bias": bias}), raw, tmp_path / "runs")
    assert result.status == "Failed"
    assert result.failed_step == "DataBiasCheck"
    assert re.search(
        r"bias check failed: TVD \(customer_gender_female=1\) = [0-9.e-]+, baseline 0\.0001", result.failure
    )
    assert "Tune" not in statuses(result)


def test_a_model_bias_metric_beyond_its_limit_fails_the_run_before_registering(engine, raw, tmp_path):
    limits = {**engine.bias.post_training.thresholds, "DPPL": 1e-9}
    post_training = engine.bias.post_training.model_copy(update={"thresholds": limits})
    config = engine.model_copy(update={"bias": engine.bias.model_copy(update={"post_training": post_training})})
    result = run(config, raw, tmp_path / "runs", MinAuc="0.5", MaxTuningJobs="1")
    assert result.status == "Failed"
    assert result.failed_step == "ModelBiasCheck"
    assert re.search(
        r"bias check failed: DPPL \(customer_gender_female=1\) = [0-9.e-]+, baseline 1e-09", result.failure
    )
    assert "Register-RegisterModel" not in statuses(result)


def test_the_smclarify_engine_runs_the_same_gate_and_registers_the_same_way(engine, raw, tmp_path):
    config = engine.model_copy(update={"bias": engine.bias.model_copy(update={"engine": "smclarify"})})
    result = run(config, raw, tmp_path / "runs", MinAuc="0.5", MaxTuningJobs="1")
    assert result.status == "Succeeded", result.failure
    package = json.loads((result.run_dir / "model-package.json").read_text())
    assert package["ModelMetrics"]["Bias"]["PreTrainingReport"]["S3Uri"].endswith("/bias-check/report/analysis.json")
    drift = package["DriftCheckBaselines"]["Bias"]["PreTrainingConstraints"]["S3Uri"]
    assert drift.endswith("/bias-check/baseline/constraints.json")
    assert (result.run_dir / "bias" / "analysis.json").is_file()
    assert "ScoringModel-CreateModel" not in statuses(result)
    post = package["ModelMetrics"]["Bias"]["PostTrainingReport"]["S3Uri"]
    assert post.endswith("/model-bias-check/report/analysis.json")
    assert (result.run_dir / "model-bias" / "analysis.json").is_file()


def test_registry_commands_approve_and_reject(runs, first):
    assert registry_lines(runs, "approve", "1", "--description", "reviewed")[0].endswith("/1: Approved")
    shown = json.loads("\n".join(registry_lines(runs, "show", "1")))
    assert shown["ModelApprovalStatus"] == "Approved" and shown["ApprovalDescription"] == "reviewed"
    assert registry_lines(runs, "reject", "1")[0].endswith("/1: Rejected")
    missing = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "registry", "--runs-dir", str(runs), "show", "99"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1
    assert "has no version 99" in missing.stderr


def test_serve_a_registered_version(runs, first):
    """fraud-pipeline serve --model-package N: the registered model, with the threshold its package records."""
    package = json.loads((first.run_dir / "model-package.json").read_text())
    features = json.loads((first.run_dir / "model" / "features.json").read_text())["features"]
    address = (HOST, free_port())
    command = [sys.executable, "-m", "pipelines.cli", "serve", "--model-package", "1", "--runs-dir", str(runs)]
    child = subprocess.Popen([*command, "--port", str(address[1])])
    try:
        deadline = time.monotonic() + 60
        while not _ready(address):
            assert child.poll() is None and time.monotonic() < deadline, "the server did not answer /ping"
            time.sleep(0.2)
        reply = call(address, ",".join("0" for _ in features), content_type="text/csv")
    finally:
        child.terminate()
        child.wait(timeout=30)
    assert reply.status == 200, reply.text
    [prediction] = reply.json()["predictions"]
    assert prediction["threshold"] == float(package["CustomerMetadataProperties"]["threshold"])


def test_files_that_break_the_contract_fail_in_preprocess(engine, raw, tmp_path):
    claims, customers = raw
    broken = tmp_path / "claims.csv"
    broken.write_text(claims.read_text().replace(",Collision,", ",Hovercraft,", 1))
    result = local.run(engine, broken, customers, {}, tmp_path / "runs", say=lambda line: None)
    assert result.status == "Failed"
    assert result.failed_step == "Preprocess"
    assert result.failure.startswith("preprocess: error: ")
    assert "column 'incident_type'" in result.failure and "Hovercraft" in result.failure


def test_cli_reports_a_missing_docker_engine(monkeypatch, capsys):
    """Without an engine and without permission to install one: a one-line message, non-zero exit."""
    monkeypatch.setattr(containers, "_docker_answers", lambda: False)
    code = cli.main(["local", "--no-install", "--rows", "10"])
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("fraud-pipeline local: error: no Docker engine is reachable")


def test_unknown_parameter_is_refused_before_any_container_runs(engine, raw, tmp_path):
    with pytest.raises(local.LocalRunError, match="unknown pipeline parameter.*MinAUC"):
        run(engine, raw, tmp_path / "runs", MinAUC="0.5")
    assert subprocess.run(["docker", "ps", "-q"], capture_output=True, text=True).stdout.strip() == ""
