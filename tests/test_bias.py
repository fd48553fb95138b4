"""processing/bias.py: Clarify-shaped pre- and post-training bias metrics with smclarify, and the ClarifyCheckStep's
check against a baseline (Clarify's bias drift rule: farther from 0 than the baseline is a violation)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from conftest import assert_outputs_survive_faults, make_read_only, run_script
from smclarify.bias.report import FacetColumn, LabelColumn, StageType, bias_report

import bias

METRICS = ["CI", "DPL", "JS", "KL", "KS", "LP", "TVD"]  # smclarify (and Clarify) order them by name
THRESHOLDS = "DPL=0.1,KL=0.1,JS=0.05,TVD=0.1,KS=0.1"


def run(dataset: Path, output: Path, *extra: str) -> int:
    """bias.main, its failure message going to `message` beside the output directory."""
    argv = ["--dataset", str(dataset), "--output-dir", str(output), "--message-file", str(output.parent / "message")]
    return bias.main([*argv, *extra])


def metrics(output: Path) -> dict[str, float]:
    analysis = json.loads((output / "analysis.json").read_text())
    [facet] = analysis["pre_training_bias_metrics"]["facets"]["customer_gender_female"]
    return {m["name"]: m["value"] for m in facet["metrics"]}


def write_dataset(path: Path, facet: list, label: list) -> Path:
    pd.DataFrame({"policy_id": range(len(facet)), "fraud": label, "customer_gender_female": facet}).to_csv(
        path, index=False
    )
    return path


def test_generated_data_gets_every_metric_in_clarify_shape(splits, tmp_path):
    output = tmp_path / "out"
    assert run(splits / "headered", output, "--thresholds", "CI=1,DPL=1") == 0

    analysis = json.loads((output / "analysis.json").read_text())
    assert analysis["version"] == "1.0"
    section = analysis["pre_training_bias_metrics"]
    assert section["label"] == "fraud"
    assert section["label_value_or_threshold"] == "1"
    [facet] = section["facets"]["customer_gender_female"]
    assert facet["value_or_threshold"] == "1"
    assert [m["name"] for m in facet["metrics"]] == METRICS
    assert all(set(m) == {"name", "description", "value"} and math.isfinite(m["value"]) for m in facet["metrics"])
    assert facet["metrics"][0]["description"] == "Class Imbalance (CI)"
    assert not (output / "constraint_violations.json").exists()
    assert "| DPL | Difference in Positive Proportions in Labels (DPL) |" in (output / "report.md").read_text()
    assert not (tmp_path / "message").exists()


def test_output_is_deterministic(splits, tmp_path):
    for name in ("a", "b"):
        assert run(splits / "headered" / "train.csv", tmp_path / name, "--thresholds", THRESHOLDS) in (0, 1)
    for file in ("analysis.json", "report.md"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_metric_values_follow_the_clarify_definitions(tmp_path):
    # 30 rows: facet 1 has 10 rows, 5 of them fraud; facet 0 has 20 rows, 2 of them fraud
    dataset = write_dataset(tmp_path / "d.csv", [1] * 10 + [0] * 20, [1] * 5 + [0] * 5 + [1] * 2 + [0] * 18)
    assert run(dataset, tmp_path / "out") == 0
    values = metrics(tmp_path / "out")
    assert values["CI"] == pytest.approx((20 - 10) / 30)  # (n_a - n_d) / n
    assert values["DPL"] == pytest.approx(2 / 20 - 5 / 10)  # q_a - q_d


def test_strong_imbalance_fails_like_a_clarify_check(tmp_path):
    dataset = write_dataset(tmp_path / "d.csv", [1] * 10 + [0] * 20, [1] * 5 + [0] * 5 + [1] * 2 + [0] * 18)
    result = run_script(
        "processing/bias.py",
        "--dataset", str(dataset), "--output-dir", str(tmp_path / "out"), "--thresholds", THRESHOLDS,
        "--message-file", str(tmp_path / "message"),
    )  # fmt: skip
    assert result.returncode == 1
    assert "bias check failed: DPL (customer_gender_female=1) = -0.4, baseline 0.1" in result.stderr
    assert (tmp_path / "message").read_text().startswith("bias check failed: DPL")
    violations = json.loads((tmp_path / "out" / "constraint_violations.json").read_text())["violations"]
    assert {v["metric_name"] for v in violations} == {"DPL", "KL", "JS", "TVD", "KS"}
    dpl = next(v for v in violations if v["metric_name"] == "DPL")
    assert dpl["value"] == pytest.approx(-0.4) and dpl["baseline"] == 0.1 and dpl["facet_value"] == "1"
    assert dpl["constraint_check_type"] == "bias_drift_check"
    assert dpl["description"] == "Value -0.4 is farther from 0 than the baseline 0.1"
    assert metrics(tmp_path / "out")["DPL"] == pytest.approx(-0.4)
    assert (
        "| DPL | Difference in Positive Proportions in Labels (DPL) | -0.4 | 0.1 | VIOLATION |"
        in (tmp_path / "out" / "report.md").read_text()
    )


def test_string_facet_column_is_supported(tmp_path):
    # pandas 3 reads text as its string dtype, which smclarify cannot handle on its own
    frame = pd.DataFrame({"fraud": [1, 0, 0, 0] * 10, "gender": ["female", "male"] * 20})
    frame.to_csv(tmp_path / "d.csv", index=False)
    assert run(tmp_path / "d.csv", tmp_path / "out", "--facet", "gender", "--facet-values", "female") == 0
    analysis = json.loads((tmp_path / "out" / "analysis.json").read_text())
    [facet] = analysis["pre_training_bias_metrics"]["facets"]["gender"]
    assert facet["value_or_threshold"] == "female"
    assert {m["name"]: m["value"] for m in facet["metrics"]}["CI"] == 0


FRAUD = {"fraud": [0, 1]}


@pytest.mark.parametrize(
    ("frame", "extra", "message"),
    [
        (pd.DataFrame(FRAUD), [], "missing column(s) customer_gender_female"),
        (pd.DataFrame({**FRAUD, "customer_gender_female": [0, 0]}), [], "no row has facet value(s) [1]; values: ['0']"),
        (pd.DataFrame({"fraud": [0, None], "customer_gender_female": [0, 1]}), [], "'fraud' has 1 empty value(s)"),
        (
            pd.DataFrame({**FRAUD, "customer_gender_female": [0, 1]}),
            ["--metrics", "CI", "--thresholds", "DPL=0.1"],
            "--thresholds names metric(s) not in --metrics: DPL",
        ),
    ],
)
def test_bad_input_exits_2_with_a_clear_error(tmp_path, capsys, frame, extra, message):
    frame.to_csv(tmp_path / "d.csv", index=False)
    assert run(tmp_path / "d.csv", tmp_path / "out", *extra) == 2
    assert message in capsys.readouterr().err
    assert message in (tmp_path / "message").read_text()
    assert not (tmp_path / "out").exists()


# 30 rows: DPL -0.4, CI 1/3
SKEWED = ([1] * 10 + [0] * 20, [1] * 5 + [0] * 5 + [1] * 2 + [0] * 18)


def baseline_file(path: Path, **limits: float) -> Path:
    settings = bias.Settings("fraud", [1], "customer_gender_female", [1], list(bias.METRICS))
    path.write_text(json.dumps(bias.baseline_from_thresholds(limits, settings)))
    return path


@pytest.mark.parametrize(
    ("limits", "violated"),
    [
        ({"DPL": 0.5}, set()),  # |-0.4| <= 0.5
        ({"DPL": -0.5}, set()),  # the sign of the baseline does not matter: farther from 0 is worse
        ({"DPL": 0.39}, {"DPL"}),
        ({"CI": 0.3, "DPL": 0.41}, {"CI"}),  # CI 1/3
        ({"TVD": 100.0}, set()),  # only the metrics of the baseline are judged
    ],
)
def test_a_metric_farther_from_zero_than_its_baseline_is_a_violation(tmp_path, limits, violated):
    dataset = write_dataset(tmp_path / "d.csv", *SKEWED)
    code = run(dataset, tmp_path / "out", "--baseline", str(baseline_file(tmp_path / "b.json", **limits)))
    assert code == (1 if violated else 0)
    violations = tmp_path / "out" / "constraint_violations.json"
    found = {v["metric_name"] for v in json.loads(violations.read_text())["violations"]} if violated else set()
    assert found == violated
    assert violations.exists() == bool(violated)


def test_a_rerun_without_violations_leaves_no_earlier_violations_file(tmp_path):
    """The output folder holds one run's outputs: a passing rerun removes the violations a failing run wrote."""
    dataset = write_dataset(tmp_path / "d.csv", *SKEWED)
    assert run(dataset, tmp_path / "out", "--baseline", str(baseline_file(tmp_path / "b.json", DPL=0.39))) == 1
    assert (tmp_path / "out" / "constraint_violations.json").exists()
    assert run(dataset, tmp_path / "out", "--baseline", str(baseline_file(tmp_path / "b.json", DPL=0.5))) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["analysis.json", "report.md"]


def test_a_baseline_metric_that_was_not_computed_is_a_violation(tmp_path, capsys):
    dataset = write_dataset(tmp_path / "d.csv", *SKEWED)
    baseline = baseline_file(tmp_path / "b.json", DPL=1.0)
    assert run(dataset, tmp_path / "out", "--metrics", "CI", "--baseline", str(baseline)) == 1
    assert "DPL (customer_gender_female=1) could not be computed: not in the analysis" in capsys.readouterr().err


def test_analysis_config_of_a_clarify_check_sets_what_is_computed(tmp_path):
    frame = pd.DataFrame({"policy_id": range(40), "label": ["yes", "no"] * 20, "gender": ["f", "m", "m", "m"] * 10})
    frame.to_csv(tmp_path / "d.csv", index=False)
    config = {  # as the SageMaker SDK writes it for a DataBiasCheckConfig
        "dataset_type": "text/csv",
        "label": "label",
        "label_values_or_threshold": ["yes"],
        "facet": [{"name_or_index": "gender", "value_or_threshold": ["f"]}],
        "excluded_columns": ["policy_id"],
        "methods": {"pre_training_bias": {"methods": ["CI", "DPL"]}, "report": {"name": "report", "title": "Report"}},
    }
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "analysis_config.json").write_text(json.dumps(config))
    assert (
        run(
            tmp_path / "d.csv", tmp_path / "out", "--analysis-config", str(tmp_path / "config" / "analysis_config.json")
        )
        == 0
    )
    analysis = json.loads((tmp_path / "out" / "analysis.json").read_text())["pre_training_bias_metrics"]
    assert analysis["label"] == "label"
    [facet] = analysis["facets"]["gender"]
    assert facet["value_or_threshold"] == "f"
    assert [m["name"] for m in facet["metrics"]] == ["CI", "DPL"]
    assert facet["metrics"][0]["value"] == pytest.approx(0.5)  # 30 m, 10 f


@pytest.mark.parametrize(
    ("flags", "code", "drift_is"),
    [
        (["--skip-check", "true"], 0, "baseline"),
        (["--skip-check", "True", "--register-new-baseline", "true"], 0, "calculated"),
        (["--register-new-baseline", "true"], 1, "calculated"),
        (["--fail-on-violation", "false"], 0, "baseline"),
        ([], 1, "baseline"),
    ],
)
def test_check_flags_and_the_baseline_used_for_drift_checks(tmp_path, flags, code, drift_is):
    """As ClarifyCheckStep documents them: skip_check judges nothing, register_new_baseline makes the calculated
    analysis the drift-check baseline, fail_on_violation false reports without failing."""
    dataset = write_dataset(tmp_path / "d.csv", *SKEWED)
    baseline = baseline_file(tmp_path / "b.json", DPL=0.1)
    argv = ["--baseline", str(baseline), "--drift-baseline-dir", str(tmp_path / "drift"), *flags]
    assert run(dataset, tmp_path / "out", *argv) == code
    drift = json.loads((tmp_path / "drift" / "constraints.json").read_text())
    calculated = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert drift == (calculated if drift_is == "calculated" else json.loads(baseline.read_text()))
    skipped = "--skip-check" in flags
    assert (tmp_path / "out" / "constraint_violations.json").exists() == (not skipped)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--drift-baseline-dir", "drift"], "no baseline for the drift check"),
        (["--baseline", "missing.json"], "missing.json: file not found (baseline)"),
        (["--skip-check", "maybe"], None),
    ],
)
def test_bad_check_settings_exit_2(tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    dataset = write_dataset(tmp_path / "d.csv", *SKEWED)
    if message is None:
        with pytest.raises(SystemExit) as exit_:
            run(dataset, tmp_path / "out", *extra)
        assert exit_.value.code == 2
        assert "'maybe' is not true or false" in capsys.readouterr().err
        return
    assert run(dataset, tmp_path / "out", *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_dataset_exits_2(tmp_path, capsys):
    assert run(tmp_path / "nowhere.csv", tmp_path / "out") == 2
    assert "nowhere.csv: file not found" in capsys.readouterr().err


def test_outputs_are_all_or_nothing(small_disk, tmp_path):
    """analysis.json, report.md, constraint_violations.json and the drift baseline are written all or nothing."""
    disk = small_disk(256)
    balanced = write_dataset(tmp_path / "balanced.csv", [1, 0] * 20, [1, 1, 0, 0] * 10)
    skewed = write_dataset(tmp_path / "skewed.csv", *SKEWED)
    argv = ["--output-dir", str(disk / "report"), "--drift-baseline-dir", str(disk / "drift")]
    argv += ["--thresholds", THRESHOLDS, "--register-new-baseline", "true", "--fail-on-violation", "false"]
    argv += ["--message-file", str(tmp_path / "message")]
    first, rerun = ["--dataset", str(balanced), *argv], ["--dataset", str(skewed), *argv]
    assert_outputs_survive_faults("processing/bias.py", disk, first, rerun, tmp_path / "marker")
    assert "report/constraint_violations.json" in {p.relative_to(disk).as_posix() for p in disk.rglob("*.json")}
    assert "bias: error: " in (tmp_path / "message").read_text()


def test_folders_are_read_by_the_names_their_producers_write(tmp_path, capsys):
    """preprocess writes headered/train.csv; bias.py writes analysis.json (and the drift baseline constraints.json)
    beside other files, and a killed run leaves .partial. files: a folder is read by those names only."""
    earlier = tmp_path / "earlier"
    assert run(write_dataset(tmp_path / "d.csv", *SKEWED), earlier, "--thresholds", "DPL=0.1") == 1
    (earlier / ".partial.analysis.json").write_text("{")
    data = tmp_path / "data"
    data.mkdir()
    write_dataset(data / ".partial.train.csv", *SKEWED)
    assert run(data, tmp_path / "out", "--baseline", str(earlier)) == 2
    assert f"{data}: expected train.csv in this folder" in capsys.readouterr().err
    write_dataset(data / "train.csv", *SKEWED)
    assert run(data, tmp_path / "out", "--baseline", str(earlier)) == 0  # the same data: no drift


def test_a_message_file_that_cannot_be_written_leaves_the_error_on_stderr(small_disk, tmp_path):
    disk = small_disk(64)
    make_read_only(disk)
    result = run_script(
        "processing/bias.py", "--dataset", str(tmp_path / "none.csv"), "--message-file", str(disk / "message")
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"bias: error: {tmp_path / 'none.csv'}: file not found"


def test_the_pipeline_builder_loads_it_without_its_folder_on_the_path():
    """pipelines.pipeline._bias_script loads bias.py (and atomic_outputs, which it imports) by path, in a process
    without processing/ on sys.path, for Settings and baseline_from_thresholds."""
    load = (
        "from pipelines.pipeline import _bias_script; module = _bias_script(); "
        "print(module.baseline_from_thresholds({'DPL': 0.1}, "
        "module.Settings('fraud', [1], 'customer_gender_female', [1], ['DPL']))['version'])"
    )
    result = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, cwd="/", check=False)
    assert (result.returncode, result.stdout) == (0, "1.0\n"), result.stderr


# Post-training (model) bias: the predicted labels against the true ones across the facet.
# The hand-checked case: 10 rows outside the facet (a) and 10 in it (d), 4 frauds in each;
# a: 5 predicted (4 right, 1 false alarm); d: 2 predicted (both right, 2 frauds missed).
HAND = pd.DataFrame(
    {
        "policy_id": range(20),
        "fraud": [1, 1, 1, 1, 0, 0, 0, 0, 0, 0] * 2,
        "customer_gender_female": [0] * 10 + [1] * 10,
        "amount": [(i * 7 % 20) + 0.5 for i in range(20)],
        "fraud_predicted": [1, 1, 1, 1, 1, 0, 0, 0, 0, 0] + [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
    }
)
POST = ["--stage", "post_training", "--predicted-label", "fraud_predicted", "--excluded-columns", "policy_id"]
POST += ["--metrics", "AD,DI,DPPL,FT,RD,TE"]


def post_metrics(output: Path) -> dict[str, float]:
    analysis = json.loads((output / "analysis.json").read_text())
    [facet] = analysis["post_training_bias_metrics"]["facets"]["customer_gender_female"]
    return {m["name"]: m["value"] for m in facet["metrics"]}


def test_post_training_metrics_are_smclarifys_on_a_hand_checked_case(tmp_path):
    HAND.to_csv(tmp_path / "predictions.csv", index=False)
    assert run(tmp_path / "predictions.csv", tmp_path / "out", *POST) == 0
    found = post_metrics(tmp_path / "out")
    assert found["DPPL"] == pytest.approx(0.5 - 0.2)  # predicted-positive share, a minus d
    assert found["DI"] == pytest.approx(0.2 / 0.5)  # d over a
    assert found["AD"] == pytest.approx(0.9 - 0.8)  # accuracy, a minus d
    assert found["RD"] == pytest.approx(1.0 - 0.5)  # recall, a minus d
    frame = HAND.drop(columns="policy_id").astype(
        {"fraud": "category", "customer_gender_female": "category", "fraud_predicted": "category"}
    )
    direct = bias_report(
        frame,
        FacetColumn("customer_gender_female", [1]),
        LabelColumn("fraud", frame["fraud"], [1]),
        StageType.POST_TRAINING,
        LabelColumn("fraud_predicted", frame["fraud_predicted"], [1]),
        metrics=["AD", "DI", "DPPL", "FT", "RD", "TE"],
    )
    assert found == {m["name"]: m["value"] for m in direct[0]["metrics"]}


def test_a_post_training_metric_beyond_its_limit_fails_the_check(tmp_path, capsys):
    HAND.to_csv(tmp_path / "predictions.csv", index=False)
    assert run(tmp_path / "predictions.csv", tmp_path / "out", *POST, "--thresholds", "DPPL=0.1,AD=0.2") == 1
    assert "bias check failed: DPPL (customer_gender_female=1) = 0.3, baseline 0.1" in capsys.readouterr().err
    [violation] = json.loads((tmp_path / "out" / "constraint_violations.json").read_text())["violations"]
    assert violation["metric_name"] == "DPPL"
    assert "# Post-training bias report" in (tmp_path / "out" / "report.md").read_text()
    assert run(tmp_path / "predictions.csv", tmp_path / "ok", *POST, "--thresholds", "DPPL=0.31") == 0


def model_bias_config(path: Path, **predicted) -> Path:
    """An analysis config as ClarifyCheckStep writes it for a ModelBiasCheckConfig (methods.post_training_bias)."""
    config = {
        "dataset_type": "text/csv",
        "label": "fraud",
        "label_values_or_threshold": [1],
        "facet": [{"name_or_index": "customer_gender_female", "value_or_threshold": [1]}],
        "excluded_columns": ["policy_id"],
        "methods": {"post_training_bias": {"methods": ["DPPL", "FT"]}, "report": {"name": "report", "title": "R"}},
        **predicted,
    }
    path.write_text(json.dumps(config))
    return path


def test_analysis_config_with_predicted_labels_in_the_dataset(tmp_path):
    HAND.to_csv(tmp_path / "predictions.csv", index=False)
    config = model_bias_config(tmp_path / "analysis_config.json", predicted_label="fraud_predicted")
    assert run(tmp_path / "predictions.csv", tmp_path / "out", "--analysis-config", str(config)) == 0
    assert post_metrics(tmp_path / "out") == pytest.approx({"DPPL": 0.3, "FT": post_metrics_of_flags()["FT"]})


def post_metrics_of_flags() -> dict[str, float]:
    frame = HAND.drop(columns="policy_id").astype({c: "category" for c in ("fraud", "customer_gender_female")})
    frame["fraud_predicted"] = frame["fraud_predicted"].astype("category")
    [report] = bias_report(
        frame,
        FacetColumn("customer_gender_female", [1]),
        LabelColumn("fraud", frame["fraud"], [1]),
        StageType.POST_TRAINING,
        LabelColumn("fraud_predicted", frame["fraud_predicted"], [1]),
        metrics=["DPPL", "FT"],
    )
    return {m["name"]: m["value"] for m in report["metrics"]}


@pytest.fixture
def endpoint():
    """A model endpoint answering as the project's server does for text/csv: "probability,flag" per row; it
    flags the rows HAND predicts (recognised by their policy-free features: amount and facet) and keeps the
    request bodies."""
    bodies: list[str] = []
    flagged = {(row.customer_gender_female, row.amount) for row in HAND.itertuples() if row.fraud_predicted}
    broken: dict = {}  # a test's answer instead: status and body

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/ping" else 404)
            self.end_headers()

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            bodies.append(body)
            rows = [line.split(",") for line in body.splitlines()]
            answer = "".join(f"0.5,{int((int(r[0]), float(r[1])) in flagged)}\n" for r in rows)
            answer = broken.get("body", answer)
            self.send_response(broken.get("status", 200))
            self.send_header("Content-Type", "text/csv")
            self.end_headers()
            self.wfile.write(answer.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/invocations", bodies, broken
    server.shutdown()


def test_predicted_labels_from_the_models_endpoint_as_clarify_asks_it(tmp_path, endpoint, monkeypatch):
    """With a predictor (the model's shadow endpoint, in Clarify), the rows less the label and the excluded columns
    go to the endpoint as headerless text/csv, in batches; the label is the answer's column predictor.label."""
    url, bodies, _ = endpoint
    monkeypatch.setattr(bias, "BATCH_ROWS", 8)
    HAND.drop(columns="fraud_predicted")[["policy_id", "fraud", "customer_gender_female", "amount"]].to_csv(
        tmp_path / "test.csv", index=False
    )
    predictor = {"content_type": "text/csv", "accept_type": "text/csv", "label": 1, "probability": 0}
    config = model_bias_config(tmp_path / "analysis_config.json", predictor=predictor)
    assert run(tmp_path, tmp_path / "out", "--analysis-config", str(config), "--endpoint", url) == 0
    assert post_metrics(tmp_path / "out") == pytest.approx(post_metrics_of_flags())
    assert [len(body.splitlines()) for body in bodies] == [8, 8, 4]
    assert bodies[0].splitlines()[0] == "0,0.5"  # customer_gender_female, amount: no header, policy id or label


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--stage", "post_training"], "--stage post_training needs --predicted-label"),
        (["--stage", "post_training", "--predicted-label", "score"], "missing column(s) score"),
        ([*POST[:6], "--metrics", "DPL"], "--metrics: unknown metric(s) ['DPL']; post-training metrics: AD, CDDPL"),
    ],
)
def test_bad_post_training_settings_exit_2(tmp_path, capsys, argv, message):
    HAND.to_csv(tmp_path / "predictions.csv", index=False)
    assert run(tmp_path / "predictions.csv", tmp_path / "out", *argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_baseline_of_the_other_stage_is_refused(tmp_path, capsys):
    HAND.to_csv(tmp_path / "predictions.csv", index=False)
    baseline = baseline_file(tmp_path / "b.json", DPL=0.1)
    assert run(tmp_path / "predictions.csv", tmp_path / "out", *POST, "--baseline", str(baseline)) == 2
    assert "a baseline of pre_training_bias_metrics, not post_training_bias_metrics" in capsys.readouterr().err


def test_an_analysis_config_without_a_source_of_predictions_is_refused(tmp_path, capsys):
    HAND.to_csv(tmp_path / "predictions.csv", index=False)
    config = model_bias_config(tmp_path / "analysis_config.json")
    assert run(tmp_path / "predictions.csv", tmp_path / "out", "--analysis-config", str(config)) == 2
    assert "needs predicted_label (a column) or a predictor" in capsys.readouterr().err
    predictor = model_bias_config(tmp_path / "analysis_config.json", predictor={"label": 1})
    assert run(tmp_path / "predictions.csv", tmp_path / "out", "--analysis-config", str(predictor)) == 2
    assert "pass --endpoint, the URL of its endpoint" in capsys.readouterr().err


def test_a_model_that_flags_nothing_has_no_post_training_metrics(tmp_path, capsys):
    """smclarify refuses a report without a positive prediction: each metric is reported not computed, and a
    limited one is a violation (Clarify's rule), naming why."""
    HAND.assign(fraud_predicted=0).to_csv(tmp_path / "predictions.csv", index=False)
    assert run(tmp_path / "predictions.csv", tmp_path / "out", *POST) == 0
    analysis = json.loads((tmp_path / "out" / "analysis.json").read_text())
    [facet] = analysis["post_training_bias_metrics"]["facets"]["customer_gender_female"]
    assert [m["name"] for m in facet["metrics"]] == ["AD", "DI", "DPPL", "FT", "RD", "TE"]
    assert {m["value"] for m in facet["metrics"]} == {None}
    assert facet["metrics"][2]["description"] == "Difference in Positive Proportions in Predicted Labels (DPPL)"
    assert run(tmp_path / "predictions.csv", tmp_path / "gated", *POST, "--thresholds", "DPPL=0.1") == 1
    assert (
        "DPPL (customer_gender_female=1) could not be computed: no predicted label is positive "
        "(the model flags no row at its threshold)" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (400, '{"error": "bad"}', "rows 1-20: HTTPError: HTTP Error 400"),
        (200, "oops\n", "rows 1-20: ValueError: could not convert string"),
        (200, "0.5,1\n", "rows 1-20: 1 answer line(s) of 2 column(s), not one per row"),
        (200, "0.5\n" * 20, "rows 1-20: 20 answer line(s) of 1 column(s), not one per row"),
    ],
)
def test_an_endpoint_that_answers_wrongly_is_a_one_line_error(tmp_path, endpoint, capsys, status, body, message):
    url, _, broken = endpoint
    broken.update(status=status, body=body)
    HAND.drop(columns="fraud_predicted").to_csv(tmp_path / "test.csv", index=False)
    predictor = {"content_type": "text/csv", "accept_type": "text/csv", "label": 1}
    config = model_bias_config(tmp_path / "analysis_config.json", predictor=predictor)
    assert run(tmp_path, tmp_path / "out", "--analysis-config", str(config), "--endpoint", url) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"bias: error: {url}: ") and message in line
    assert not (tmp_path / "out").exists()
