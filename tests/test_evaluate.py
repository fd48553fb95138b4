"""evaluation/evaluate.py: evaluation.json, thresholds, model inputs, determinism and bad input."""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from conftest import ROOT, assert_outputs_survive_faults, files_under, outputs, run_script

import evaluate
import peak_memory
from features import FEATURES, KEY, LABEL, PREDICTED_LABEL, RAW_COLUMN

METRICS = ("auc", "pr_auc", "precision", "recall", "f1", "accuracy")
OUTPUTS = [
    "evaluation.json",
    "explainability.json",
    "explainability.png",
    "precision_recall_curve.png",
    "predictions.csv",
    "roc_curve.png",
]


def run(model: Path, test: Path, output: Path, *extra: str) -> int:
    return evaluate.main(["--model", str(model), "--test", str(test), "--output-dir", str(output), *extra])


def document(output: Path) -> dict:
    return json.loads((output / "evaluation.json").read_text())


def model_tar(model_dir: Path, path: Path, prefix: str = "") -> Path:
    """model.tar.gz as SageMaker writes it: the model directory's files at the top (or under `prefix`)."""
    with tarfile.open(path, "w:gz") as archive:
        for file in sorted(model_dir.iterdir()):
            archive.add(file, arcname=prefix + file.name)
    return path


@pytest.fixture(scope="module")
def evaluated(trained: tuple[Path, str], splits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """evaluate.py run bare on the fixture model's model.tar.gz, with the default threshold method."""
    work = tmp_path_factory.mktemp("evaluation")
    tar = model_tar(trained[0], work / "model.tar.gz")
    result = run_script(
        "evaluation/evaluate.py", "--model", str(tar), "--test", str(splits / "test"), "--output-dir", str(work / "out")
    )
    assert result.returncode == 0, result.stderr
    return work / "out"


def test_writes_model_quality_document_and_plots(evaluated: Path, splits: Path) -> None:
    assert [p.name for p in files_under(evaluated)] == OUTPUTS
    for png in (name for name in OUTPUTS if name.endswith(".png")):
        assert (evaluated / png).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    report = document(evaluated)
    manifest = json.loads((splits / "manifest/manifest.json").read_text())["splits"]["test"]
    metrics = report["binary_classification_metrics"]
    for name in METRICS:
        assert set(metrics[name]) == {"value", "standard_deviation"}
        assert 0 <= metrics[name]["value"] <= 1
        assert 0 < metrics[name]["standard_deviation"] < 0.5
    assert metrics["auc"]["value"] > 0.6
    matrix = metrics["confusion_matrix"]
    cells = [matrix[actual][predicted] for actual in "01" for predicted in "01"]
    assert sum(cells) == report["test_rows"] == manifest["rows"]
    assert matrix["1"]["0"] + matrix["1"]["1"] == round(report["test_fraud_rate"] * report["test_rows"])
    assert report["test_fraud_rate"] == pytest.approx(manifest["fraud_rate"], abs=1e-6)
    tp, fp = matrix["1"]["1"], matrix["0"]["1"]
    assert metrics["precision"]["value"] == pytest.approx(tp / (tp + fp), abs=1e-6)
    assert report["threshold"]["method"] == "max_f1"
    assert 0 < report["threshold"]["value"] < 1
    assert 0 <= report["recall_at_top_5_percent"]["value"] <= 1


def test_explainability_is_the_mean_absolute_shap_of_each_contract_column(
    trained: tuple[Path, str], splits: Path, evaluated: Path
) -> None:
    """Clarify's layout; each column's value is the mean over the test rows of |the sum of its features' TreeSHAP
    values| (the one-hot features of a category summed first), largest first; the base value is the mean bias."""
    report = json.loads((evaluated / "explainability.json").read_text())
    [(label, explanation)] = report["explanations"]["kernel_shap"].items()
    assert label == LABEL
    values = explanation["global_shap_values"]
    assert set(values) == {RAW_COLUMN[name] for name in FEATURES} and "incident_type_theft" not in values
    assert list(values.values()) == sorted(values.values(), reverse=True)

    booster = xgb.Booster(model_file=trained[0] / "xgboost-model.json")
    test = np.loadtxt(splits / "test" / "test.csv", delimiter=",", dtype=np.float32)
    shap = booster.predict(xgb.DMatrix(test[:, 1:], feature_names=FEATURES), pred_contribs=True).astype(np.float64)
    assert report["rows"] == len(test)
    members = [FEATURES.index(name) for name in FEATURES if name.startswith("incident_type_")]
    assert values["incident_type"] == pytest.approx(np.abs(shap[:, members].sum(axis=1)).mean(), abs=1e-6)
    age = FEATURES.index("customer_age")
    assert values["customer_age"] == pytest.approx(np.abs(shap[:, age]).mean(), abs=1e-6)
    assert explanation["expected_value"] == pytest.approx(shap[:, -1].mean(), abs=1e-6)


def test_predictions_are_the_test_rows_with_the_label_at_the_threshold(splits: Path, evaluated: Path) -> None:
    """predictions.csv (the post-training bias check's dataset): the headered test split's label and features, as
    written, and the predicted label, 1 where the score reaches the threshold, agreeing with the confusion matrix."""
    predictions = pd.read_csv(evaluated / "predictions.csv", dtype=str)
    headered = pd.read_csv(splits / "headered" / "test.csv", dtype=str)
    assert list(predictions.columns) == [LABEL, *FEATURES, PREDICTED_LABEL]
    pd.testing.assert_frame_equal(predictions[[LABEL, *FEATURES]], headered.drop(columns=KEY)[[LABEL, *FEATURES]])
    matrix = document(evaluated)["binary_classification_metrics"]["confusion_matrix"]
    pairs = predictions[[LABEL, PREDICTED_LABEL]].value_counts()
    assert {f"{a}{p}": int(pairs.get((a, p), 0)) for a in "01" for p in "01"} == {
        f"{a}{p}": matrix[a][p] for a in "01" for p in "01"
    }
    assert 0 < int(pairs.get(("1", "1"), 0)) < len(predictions)


def validation_scores(model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pd.read_csv(model_dir / evaluate.SCORES_FILE)
    return table["fraud"].to_numpy(), table["score"].to_numpy(np.float32)


def test_threshold_is_chosen_on_validation_not_on_test_rows(
    trained: tuple[Path, str], splits: Path, evaluated: Path, tmp_path: Path
) -> None:
    """The threshold is the max-F1 one of train.py's validation scores; other test labels leave it unchanged."""
    threshold = document(evaluated)["threshold"]
    labels, scores = validation_scores(trained[0])
    assert threshold["value"] == evaluate.pick_threshold(labels, scores, "max_f1", 0.05)["value"]
    assert threshold["chosen_on"] == "validation"
    assert threshold["validation_rows"] == len(labels)
    rows = np.loadtxt(splits / "test/test.csv", delimiter=",", dtype=str)
    rows[:, 0] = np.where(rows[:, 0] == "1", "0", "1")
    np.savetxt(tmp_path / "flipped.csv", rows, delimiter=",", fmt="%s")
    assert run(trained[0], tmp_path / "flipped.csv", tmp_path / "out") == 0
    assert document(tmp_path / "out")["threshold"] == {**threshold, "flagged_fraction": threshold["flagged_fraction"]}
    assert document(tmp_path / "out")["binary_classification_metrics"]["auc"]["value"] < 0.5


def test_test_metrics_are_reported_at_that_threshold(trained: tuple[Path, str], splits: Path, evaluated: Path) -> None:
    report = document(evaluated)
    rows = np.loadtxt(splits / "test/test.csv", delimiter=",", dtype=np.float32)
    booster = xgb.Booster(model_file=str(trained[0] / evaluate.MODEL_FILE))
    flagged = (
        booster.predict(xgb.DMatrix(rows[:, 1:], feature_names=booster.feature_names)) >= report["threshold"]["value"]
    )
    fraud = rows[:, 0] == 1
    matrix = report["binary_classification_metrics"]["confusion_matrix"]
    assert matrix == {
        "0": {"0": int(np.sum(~flagged & ~fraud)), "1": int(np.sum(flagged & ~fraud))},
        "1": {"0": int(np.sum(~flagged & fraud)), "1": int(np.sum(flagged & fraud))},
    }
    assert report["threshold"]["flagged_fraction"] == pytest.approx(flagged.mean(), abs=1e-6)


def test_alert_rate_flags_that_share(trained: tuple[Path, str], splits: Path, evaluated: Path, tmp_path: Path) -> None:
    """The top 10% of the validation scores (more where scores tie): about 10% of the test rows."""
    assert run(trained[0], splits / "test", tmp_path, "--threshold-method", "alert_rate", "--alert-rate", "0.1") == 0
    report = document(tmp_path)
    matrix = report["binary_classification_metrics"]["confusion_matrix"]
    flagged = (matrix["0"]["1"] + matrix["1"]["1"]) / report["test_rows"]
    labels, scores = validation_scores(trained[0])
    assert report["threshold"] == {
        "value": evaluate.pick_threshold(labels, scores, "alert_rate", 0.1)["value"],
        "method": "alert_rate",
        "alert_rate": 0.1,
        "chosen_on": "validation",
        "validation_rows": len(labels),
        "flagged_fraction": pytest.approx(flagged, abs=1e-6),
    }
    assert np.mean(scores > report["threshold"]["value"]) < 0.1 <= np.mean(scores >= report["threshold"]["value"])
    assert flagged == pytest.approx(0.1, abs=0.03)
    assert report["binary_classification_metrics"]["auc"] == document(evaluated)["binary_classification_metrics"]["auc"]


@pytest.mark.parametrize("form", ["directory", "tar.gz with ./ prefix", "directory holding model.tar.gz"])
def test_model_forms_give_the_same_result(
    form: str, trained: tuple[Path, str], splits: Path, evaluated: Path, tmp_path: Path
) -> None:
    model = trained[0]
    if form == "tar.gz with ./ prefix":
        model = model_tar(model, tmp_path / "prefixed.tar.gz", prefix="./")
    elif form == "directory holding model.tar.gz":
        (tmp_path / "model").mkdir()
        model = model_tar(model, tmp_path / "model/model.tar.gz").parent
    assert run(model, splits / "test/test.csv", tmp_path / "out") == 0
    assert [p.read_bytes() for p in files_under(tmp_path / "out")] == [p.read_bytes() for p in files_under(evaluated)]


def test_threshold_helpers() -> None:
    labels = np.array([0, 1, 0, 0, 1, 0, 0, 0, 0, 1])
    scores = np.array([0.1, 0.9, 0.8, 0.2, 0.7, 0.3, 0.1, 0.0, 0.2, 0.05])
    assert evaluate.pick_threshold(labels, scores, "max_f1", 0.05)["value"] == 0.7
    assert evaluate.pick_threshold(labels, scores, "alert_rate", 0.2)["value"] == 0.8
    assert evaluate.recall_at_top(labels, scores, 0.2) == pytest.approx(1 / 3)
    assert evaluate.counts(labels, scores >= 0.7) == (6, 1, 1, 2)


def broken(case: str, trained: tuple[Path, str], splits: Path, tmp_path: Path) -> tuple[Path, Path]:
    """(model, test) paths with one defect."""
    model, test = trained[0], splits / "test"
    lines = (test / "test.csv").read_text().splitlines()
    if case == "missing model":
        model = tmp_path / "absent"
    elif case == "corrupt tar":
        model = tmp_path / "model.tar.gz"
        model.write_bytes(model_tar(trained[0], tmp_path / "good.tar.gz").read_bytes()[:200])
    elif case == "tar without model":
        model = tmp_path / "model.tar.gz"
        with tarfile.open(model, "w:gz") as archive:
            archive.add(trained[0] / "features.json", arcname="features.json")
    elif case in ("directory without validation scores", "tar without validation scores", "bad validation scores"):
        model = tmp_path / "model"
        shutil.copytree(trained[0], model)
        if case == "bad validation scores":
            scores = (model / evaluate.SCORES_FILE).read_text().splitlines()
            (model / evaluate.SCORES_FILE).write_text("\n".join([*scores[:2], "2,0.5", *scores[3:]]) + "\n")
        else:
            (model / evaluate.SCORES_FILE).unlink()
        if case == "tar without validation scores":
            model = model_tar(model, tmp_path / "model.tar.gz")
    elif case == "not a model":
        model = tmp_path / "model"
        model.mkdir()
        (model / "xgboost-model.json").write_text('{"learner": 1}')
        shutil.copy(trained[0] / evaluate.SCORES_FILE, model)
    elif case == "empty test":
        test = tmp_path / "test.csv"
        test.write_bytes(b"")
    elif case == "missing test":
        test = tmp_path / "nowhere"
    elif case == "directory without test.csv":
        test = splits / "validation"
    elif case == "fewer columns":
        test = tmp_path / "test.csv"
        test.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    elif case == "non-numeric":
        test = tmp_path / "test.csv"
        test.write_text("\n".join([lines[0], "x" + lines[1][1:], *lines[2:]]) + "\n")
    return model, test


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing model", "absent: model not found"),
        ("corrupt tar", "model.tar.gz: not a readable model archive"),
        ("tar without model", "model.tar.gz: the archive holds no xgboost-model.json"),
        ("directory without validation scores", "model: holds no validation_scores.csv"),
        ("tar without validation scores", "model.tar.gz: the archive holds no validation_scores.csv"),
        ("bad validation scores", "validation_scores.csv: line 3: expected a label 0 or 1 and a score in [0, 1]"),
        ("not a model", "xgboost-model.json: not an XGBoost model"),
        ("empty test", "test.csv: the file is empty"),
        ("missing test", "nowhere: test data not found"),
        ("directory without test.csv", "validation: holds no test.csv"),
        ("fewer columns", "test.csv: 44 feature columns after the label, but the model expects 45"),
        ("non-numeric", "test.csv: line 2, column 1: not a finite number: 'x'"),
    ],
)
def test_bad_input(
    case: str, message: str, trained: tuple[Path, str], splits: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model, test = broken(case, trained, splits, tmp_path)
    assert run(model, test, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1
    assert files_under(tmp_path / "out") == []


def test_test_directory_is_read_as_its_test_csv_only(
    trained: tuple[Path, str], splits: Path, evaluated: Path, tmp_path: Path
) -> None:
    """A stale CSV beside test/test.csv is not read."""
    shutil.copytree(splits / "test", tmp_path / "test")
    shutil.copy(splits / "validation/validation.csv", tmp_path / "test/part-old.csv")
    assert run(trained[0], tmp_path / "test", tmp_path / "out") == 0
    assert outputs(tmp_path / "out") == outputs(evaluated)


def test_output_dir_under_a_file(trained: tuple[Path, str], splits: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    output = tmp_path / "file/out"
    result = run_script(
        "evaluation/evaluate.py",
        "--model",
        str(trained[0]),
        "--test",
        str(splits / "test"),
        "--output-dir",
        str(output),
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"evaluate: error: {output}: cannot create the output directory: {tmp_path / 'file'} is a file, not a directory"
    ]


def test_outputs_are_all_or_nothing(trained: tuple[Path, str], splits: Path, small_disk, tmp_path: Path) -> None:
    disk = small_disk(512)
    argv = ["--model", str(trained[0]), "--test", str(splits / "test"), "--output-dir", str(disk / "evaluation")]
    rerun = [*argv, "--threshold-method", "alert_rate"]
    assert_outputs_survive_faults("evaluation/evaluate.py", disk, argv, rerun, tmp_path / "marker")
    assert sorted(outputs(disk)) == [f"evaluation/{name}" for name in OUTPUTS]


GIB = 2**30
CHUNK = 2**24
PEAK_MEMORY_MIB = 768
"""evaluate.py refusing a bomb stays below this (about 220 MiB go to its imports; unbounded, 1.3 to 2.3 GiB)."""


def header(name: str, size: int, kind: bytes = tarfile.REGTYPE) -> bytes:
    """A tar header block declaring a member of `size` bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def gzip_repeated(block: bytes, size: int) -> bytes:
    """`size` bytes of `block` repeated, gzipped cheaply: one compressed 16 MiB member, concatenated."""
    return gzip.compress(block * (CHUNK // len(block)), compresslevel=9) * (size // CHUNK)


def bomb(case: str, model_dir: Path) -> bytes:
    """A small .tar.gz that unpacks to over 1 GiB."""
    end = gzip.compress(b"\0" * 1024)
    if case == "a 1 GiB model":
        return gzip.compress(header(evaluate.MODEL_FILE, GIB)) + gzip_repeated(b"\0", GIB) + end
    if case == "2 million entries":
        return gzip_repeated(header("x", 0), GIB) + end
    if case == "a 1 GiB extended header":
        return gzip.compress(header("././@PaxHeader", GIB, tarfile.XHDTYPE)) + gzip_repeated(b"\0", GIB) + end
    model = io.BytesIO()  # "1 GiB before the model"
    with tarfile.open(fileobj=model, mode="w") as archive:
        archive.add(model_dir / evaluate.MODEL_FILE, arcname=evaluate.MODEL_FILE)
    return gzip.compress(header("padding", GIB)) + gzip_repeated(b"\0", GIB) + gzip.compress(model.getvalue())


def run_measured(*args: str) -> tuple[int, str, int]:
    """evaluate.py run bare: (exit code, stderr, its own peak resident memory in MiB)."""
    command = [sys.executable, str(ROOT / "evaluation/evaluate.py"), *args]
    done, peak = peak_memory.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT.parent)
    return done.returncode, done.stderr, peak // 2**20


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("a 1 GiB model", "refused: its xgboost-model.json is 1073741824 bytes, more than"),
        ("2 million entries", "refused: the archive holds more than"),
        ("a 1 GiB extended header", "refused: the archive unpacks to more than"),
        ("1 GiB before the model", "refused: the archive unpacks to more than"),
    ],
)
def test_archive_bomb_is_refused_with_bounded_memory(
    case: str, message: str, trained: tuple[Path, str], splits: Path, tmp_path: Path
) -> None:
    tar = tmp_path / "model.tar.gz"
    tar.write_bytes(bomb(case, trained[0]))
    assert tar.stat().st_size < 5 * 2**20
    code, stderr, peak_mib = run_measured(
        "--model", str(tar), "--test", str(splits / "test"), "--output-dir", str(tmp_path / "out")
    )
    assert code == 2
    [line] = stderr.strip().splitlines()
    assert line.startswith(f"evaluate: error: {tar}: {message}")
    assert peak_mib < PEAK_MEMORY_MIB
    assert files_under(tmp_path / "out") == []
