"""The local graph end to end, in real containers through LocalPipelineSession.

Skipped, with the reason, only when no Docker engine is reachable; .ci/run starts one and builds
the images, so in CI these run for real.
"""

import json
import subprocess

import pytest

from pipelines import config as cfg
from pipelines import local
from pipelines.synthetic_data import generate

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def engine():
    if not local._docker_answers():
        pytest.skip("no Docker engine is reachable (`docker info` failed); .ci/run starts one")
    config = cfg.load(environ={})
    local.ensure_image(config.aws.image_uri)
    return config


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return generate(4000, 11, tmp_path_factory.mktemp("raw"))


def run(config, raw, tmp_path, **overrides):
    claims, customers = raw
    return local.run(config, claims, customers, overrides, tmp_path / "runs", say=lambda line: None)


def test_success_writes_model_evaluation_bias_and_registry_record(engine, raw, tmp_path):
    result = run(engine, raw, tmp_path, MinAuc="0.5")
    assert result.status == "Succeeded", result.failure
    statuses = {s["StepName"]: s["StepStatus"] for s in result.steps}
    for step in ("Preprocess", "FeatureStoreIngest", "DataBiasCheck", "Train", "Evaluate", "CheckAuc"):
        assert statuses[step] == "Succeeded", step
    assert "AucBelowThreshold" not in statuses

    run_dir = result.run_dir
    evaluation = json.loads((run_dir / "evaluation" / "evaluation.json").read_text())
    auc = evaluation["binary_classification_metrics"]["auc"]["value"]
    assert 0.5 <= auc <= 1.0
    assert (run_dir / "evaluation" / "roc_curve.png").stat().st_size > 0
    assert (run_dir / "model" / "xgboost-model.json").is_file()
    assert (run_dir / "model.tar.gz").is_file()
    analysis = json.loads((run_dir / "bias" / "analysis.json").read_text())
    assert "customer_gender_female" in analysis["pre_training_bias_metrics"]["facets"]
    assert json.loads((run_dir / "manifest.json").read_text())["splits"]["test"]["rows"] == 600
    definition = json.loads((run_dir / "definition.json").read_text())
    assert {s["Name"] for s in definition["Steps"]} >= {"Preprocess", "Train", "Evaluate", "CheckAuc"}

    record = json.loads((run_dir / "registry.json").read_text())
    assert record["model_package_group"] == "fraud-detection-models"
    assert record["approval_status"] == "PendingManualApproval"
    assert record["model_quality"]["auc"]["value"] == auc
    assert float(record["customer_metadata"]["threshold"]) == evaluation["threshold"]["value"]

    lines = local.summary(result)
    assert lines[0] == f"execution {result.execution_id}: Succeeded"
    assert any(line.startswith(f"AUC {auc:.4f}") for line in lines)


def test_min_auc_above_reach_ends_in_the_fail_branch(engine, raw, tmp_path):
    result = run(engine, raw, tmp_path, MinAuc="0.99")
    assert result.status == "Failed"
    assert result.fail_branch
    assert "is below the threshold MinAuc 0.99" in result.failure
    assert not (result.run_dir / "registry.json").exists()
    assert any(line.startswith("fail branch: Evaluation AUC") for line in local.summary(result))


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
    from pipelines import cli

    monkeypatch.setattr(local, "_docker_answers", lambda: False)
    code = cli.main(["local", "--no-install", "--rows", "10"])
    err = capsys.readouterr().err
    assert code != 0
    assert err.startswith("fraud-pipeline local: error: no Docker engine is reachable")


def test_unknown_parameter_is_refused_before_any_container_runs(engine, raw, tmp_path):
    with pytest.raises(local.LocalRunError, match="unknown pipeline parameter.*MinAUC"):
        run(engine, raw, tmp_path, MinAUC="0.5")
    assert subprocess.run(["docker", "ps", "-q"], capture_output=True, text=True).stdout.strip() == ""
