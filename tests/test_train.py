"""training/train.py: the SageMaker training contract, determinism and bad input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
import yaml
from conftest import ROOT, assert_outputs_survive_faults, files_under, outputs, run_script
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

import train
from features import FEATURES
from hyperparameters import HYPERPARAMETERS

FINAL_AUC = r"^{}:auc=([0-9\.]+)$"
TUNER_REGEX = r"{}:auc=([0-9\.]+)"  # as pipelines/pipeline.py's metric definitions read the log


def run(
    splits: Path, model_dir: Path, *extra: str, hyperparameters: dict | list | None = None, tmp: Path | None = None
) -> int:
    """train.main on the fixture's splits; hyperparameters, when given, go to a hyperparameters.json."""
    config = Path("/nonexistent/hyperparameters.json")
    if hyperparameters is not None:
        config = tmp / "hyperparameters.json"
        config.write_text(json.dumps(hyperparameters))
    argv = ["--train", str(splits / "train"), "--validation", str(splits / "validation")]
    argv += ["--model-dir", str(model_dir), "--hyperparameters-file", str(config), "--verbose", "0"]
    return train.main([*argv, *extra])


def saved(model_dir: Path) -> dict:
    return json.loads((model_dir / "features.json").read_text())


def scores(model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The validation labels and scores train.py saved beside the model."""
    table = pd.read_csv(model_dir / train.SCORES_FILE)
    assert list(table.columns) == ["fraud", "score"]
    return table["fraud"].to_numpy(), table["score"].to_numpy()


def test_writes_model_and_prints_tuner_metrics(trained: tuple[Path, str], splits: Path) -> None:
    model_dir, stdout = trained
    assert sorted(p.name for p in model_dir.iterdir()) == ["features.json", train.SCORES_FILE, "xgboost-model.json"]
    assert json.loads((model_dir / "xgboost-model.json").read_text())["learner"]["gradient_booster"]
    description = saved(model_dir)
    for name in ("train", "validation"):
        final = re.findall(FINAL_AUC.format(name), stdout, re.MULTILINE)
        seen_by_tuner = re.findall(TUNER_REGEX.format(name), stdout)
        assert len(final) == 1
        assert len(seen_by_tuner) == description["rounds"] + 1
        assert seen_by_tuner[-1] == final[0]
        assert float(final[0]) == pytest.approx(description["metrics"][f"{name}:auc"], abs=1e-6)
    assert description["metrics"]["validation:auc"] > 0.6
    assert description["metrics"]["train:auc"] >= description["metrics"]["validation:auc"]
    assert description["features"] == FEATURES
    assert description["label"] == "fraud"
    assert description["hyperparameters"] == train.DEFAULTS
    assert 0 < description["rounds"] <= train.DEFAULTS["num_round"]
    labels, validation_scores = scores(model_dir)
    assert labels.tolist() == read_split(splits, "validation")[:, 0].tolist()
    assert roc_auc_score(labels, validation_scores) == pytest.approx(description["metrics"]["validation:auc"], abs=1e-6)


def test_defaults_match_pipeline_yaml() -> None:
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "pipeline.yaml").read_text())
    assert config["training"]["hyperparameters"] == {name: spec.default for name, spec in HYPERPARAMETERS.items()}
    assert config["training"]["mitigation"] == train.DEFAULTS["mitigation"]


def read_split(splits: Path, name: str) -> np.ndarray:
    return np.loadtxt(splits / name / f"{name}.csv", delimiter=",", dtype=np.float32)


def test_saved_model_is_refit_on_train_and_validation(trained: tuple[Path, str], splits: Path) -> None:
    """The same hyperparameters and rounds, trained on train + validation, give the saved model."""
    model_dir, _ = trained
    description = saved(model_dir)
    booster = xgb.Booster(model_file=str(model_dir / "xgboost-model.json"))
    assert booster.num_boosted_rounds() == description["rounds"]
    assert booster.feature_names == FEATURES
    both = np.concatenate([read_split(splits, "train"), read_split(splits, "validation")])
    params = {name: description["hyperparameters"][name] for name in HYPERPARAMETERS}
    params.update(eval_metric="auc", tree_method="hist")
    del params["num_round"], params["early_stopping_rounds"]
    refit = xgb.train(params, xgb.DMatrix(both[:, 1:], label=both[:, 0], feature_names=FEATURES), description["rounds"])
    test = xgb.DMatrix(read_split(splits, "test")[:, 1:], feature_names=FEATURES)
    assert booster.predict(test).tolist() == refit.predict(test).tolist()


def test_rounds_are_chosen_without_the_validation_split(splits: Path, tmp_path: Path) -> None:
    """Other validation labels change the validation scores' AUC, not the number of rounds."""
    data = copy_splits(splits, tmp_path / "data")
    validation = data / "validation/validation.csv"
    rows = read_split(splits, "validation")
    rows[:, 0] = np.random.default_rng(0).permutation(rows[:, 0])
    np.savetxt(validation, rows, delimiter=",", fmt="%.9g")
    assert run(data, tmp_path / "shuffled") == 0
    assert run(splits, tmp_path / "model") == 0
    assert saved(tmp_path / "shuffled")["rounds"] == saved(tmp_path / "model")["rounds"]
    shuffled = saved(tmp_path / "shuffled")["metrics"]["validation:auc"]
    assert shuffled < saved(tmp_path / "model")["metrics"]["validation:auc"] - 0.1


@pytest.mark.parametrize(("max_rows", "folds"), [(10**9, 5), (10, 1)])
def test_rounds_are_chosen_by_cross_validation_on_small_data(
    splits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_rows: int, folds: int
) -> None:
    """CV_FOLDS folds of the train split up to CV_MAX_ROWS rows, one above it; each fold holds out a fifth."""
    seen, real_cv = [], xgb.cv

    def cv(params: dict, dtrain: xgb.DMatrix, *args: object, **kwargs: object) -> object:
        seen.append((dtrain.num_row(), [len(held_out) for _, held_out in kwargs["folds"]]))
        return real_cv(params, dtrain, *args, **kwargs)

    monkeypatch.setattr(train, "CV_MAX_ROWS", max_rows)
    monkeypatch.setattr(train.xgb, "cv", cv)
    assert run(splits, tmp_path / "model", "--num_round", "5") == 0
    [(rows, held_out)] = seen
    assert rows == len(read_split(splits, "train"))
    assert len(held_out) == folds
    assert all(abs(size - rows / train.CV_FOLDS) <= 1 for size in held_out)


def test_hyperparameters_from_file_as_sagemaker_writes_them(splits: Path, tmp_path: Path) -> None:
    hyperparameters = {
        "max_depth": "3",
        "eta": "0.3",
        "objective": '"binary:logistic"',
        "num_round": "40",
        "sagemaker_program": '"train.py"',
        "_tuning_objective_metric": "validation:auc",
    }
    assert run(splits, tmp_path / "model", hyperparameters=hyperparameters, tmp=tmp_path) == 0
    used = saved(tmp_path / "model")["hyperparameters"]
    assert (used["max_depth"], used["eta"], used["num_round"]) == (3, 0.3, 40)
    assert used["subsample"] == train.DEFAULTS["subsample"]


def test_flags_override_file(splits: Path, tmp_path: Path) -> None:
    code = run(
        splits,
        tmp_path / "model",
        "--max_depth",
        "4",
        "--eta=0.25",
        "--min-child-weight",
        "2",
        hyperparameters={"max_depth": "3", "eta": "0.3"},
        tmp=tmp_path,
    )
    assert code == 0
    used = saved(tmp_path / "model")["hyperparameters"]
    assert (used["max_depth"], used["eta"], used["min_child_weight"]) == (4, 0.25, 2.0)


@pytest.mark.parametrize(
    ("flags", "file", "message"),
    [
        ([], {"max_dept": "3"}, "unknown hyperparameter 'max_dept'"),
        (["--learning_rate", "0.1"], None, "unknown hyperparameter 'learning_rate'"),
        (["--max_depth", "deep"], None, "hyperparameter max_depth: 'deep' is not int"),
        (["--max_depth", "2.5"], None, "hyperparameter max_depth"),
        (["--max_depth", "true"], None, "hyperparameter max_depth: 'true' is not int"),
        (["--eta", "0"], None, "hyperparameter eta: '0' is not a number in (0, 1]"),
        (["--eta", "NaN"], None, "hyperparameter eta: 'NaN' is not a number in (0, 1]"),
        (["--min_child_weight", "Infinity"], None, "hyperparameter min_child_weight: 'Infinity' is not a number in"),
        (["--scale_pos_weight", "Infinity"], None, "hyperparameter scale_pos_weight: 'Infinity' is not a number in"),
        (["--seed", "1e30"], None, "hyperparameter seed: '1e30' is not an integer in [0, 2147483647]"),
        ([], {"num_round": "1e9"}, "hyperparameter num_round: '1e9' is not an integer in [1, 10000]"),
        (["--objective", "reg:squarederror"], None, "hyperparameter objective"),
        (["--eta"], None, "--eta has no value"),
        (
            ["--mitigation", "smote"],
            None,
            "hyperparameter mitigation: 'smote' is not one of 'none', 'reweigh', 'resample'",
        ),
        ([], {"facet": ""}, "hyperparameter facet: '' is not a non-empty string"),
        (
            ["--mitigation", "reweigh", "--facet", "customer_gender"],
            None,
            "hyperparameter facet: column 'customer_gender' is not one of the 45 feature columns",
        ),
        (
            ["--mitigation", "resample", "--facet_values", "7,8"],
            None,
            "hyperparameter facet_values: '7,8' matches 0 of the 3496 train rows of column 'customer_gender_female'",
        ),
        (
            ["--mitigation", "reweigh", "--facet_values", "0,1"],
            None,
            "hyperparameter facet_values: '0,1' matches 3496 of the 3496 train rows of column 'customer_gender_female'",
        ),
        (
            ["--mitigation", "reweigh", "--facet_values", "female"],
            None,
            "hyperparameter facet_values: 'female' is not comma-separated numbers (column 'customer_gender_female'",
        ),
    ],
)
def test_bad_hyperparameters(
    splits: Path, tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], file: dict | None, message: str
) -> None:
    assert run(splits, tmp_path / "model", *flags, hyperparameters=file, tmp=tmp_path) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert message in line
    assert files_under(tmp_path / "model") == []


def test_same_seed_gives_byte_identical_model_whatever_the_thread_count(
    splits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outputs = []
    for nthread in (1, 4):
        monkeypatch.setattr(train, "NTHREAD", nthread)
        assert run(splits, tmp_path / str(nthread)) == 0
        outputs.append([p.read_bytes() for p in files_under(tmp_path / str(nthread))])
    assert outputs[0] == outputs[1]


def test_other_seed_gives_another_model(splits: Path, tmp_path: Path, trained: tuple[Path, str]) -> None:
    assert run(splits, tmp_path, "--seed", "43") == 0
    model = (tmp_path / "xgboost-model.json").read_bytes()
    assert model != (trained[0] / "xgboost-model.json").read_bytes()


def copy_splits(splits: Path, target: Path) -> Path:
    """train/ and validation/ of the splits, without the manifest."""
    for split in ("train", "validation"):
        shutil.copytree(splits / split, target / split)
    return target


def test_feature_names(splits: Path, tmp_path: Path) -> None:
    data = copy_splits(splits, tmp_path / "data")
    assert run(data, tmp_path / "unnamed") == 0
    assert saved(tmp_path / "unnamed")["features"] == [f"f{i}" for i in range(len(FEATURES))]
    assert run(data, tmp_path / "named", "--features-file", str(splits / "manifest/manifest.json")) == 0
    assert saved(tmp_path / "named")["features"] == FEATURES


@pytest.mark.parametrize(("place", "named"), [("manifest", True), ("train", False), (".", False)])
def test_manifest_read_only_where_preprocess_writes_it(splits: Path, tmp_path: Path, place: str, named: bool) -> None:
    """manifest/manifest.json beside the train channel is used; a manifest.json elsewhere is not."""
    data = copy_splits(splits, tmp_path / "data")
    (data / place).mkdir(exist_ok=True)
    shutil.copy(splits / "manifest/manifest.json", data / place)
    assert run(data, tmp_path / "model", "--num_round", "5") == 0
    unnamed = [f"f{i}" for i in range(len(FEATURES))]
    assert saved(tmp_path / "model")["features"] == (FEATURES if named else unnamed)


def test_channel_directory_is_read_as_its_own_csv_only(
    splits: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A stale file beside train/train.csv is not read; a file given explicitly is read as is."""
    rows = json.loads((splits / "manifest/manifest.json").read_text())["splits"]
    expected = f"train: {rows['train']['rows']} rows, validation: {rows['validation']['rows']} rows"
    data = copy_splits(splits, tmp_path / "data")
    for channel in ("train", "validation"):
        shutil.copy(splits / "test/test.csv", data / channel / "part-old.csv")
    assert run(data, tmp_path / "model", "--num_round", "5") == 0
    assert expected in capsys.readouterr().out
    renamed = {channel: tmp_path / f"{channel}-renamed.csv" for channel in ("train", "validation")}
    for channel, path in renamed.items():
        shutil.copy(splits / channel / f"{channel}.csv", path)
    argv = ["--train", str(renamed["train"]), "--validation", str(renamed["validation"])]
    assert train.main([*argv, "--model-dir", str(tmp_path / "model2"), "--num_round", "5", "--verbose", "0"]) == 0
    assert expected in capsys.readouterr().out


def test_container_entry_point_argument(splits: Path, tmp_path: Path) -> None:
    assert run(splits, tmp_path / "model", "train", "--max_depth", "3") == 0
    assert saved(tmp_path / "model")["hyperparameters"]["max_depth"] == 3


def test_failure_file(splits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "output").mkdir()
    monkeypatch.setattr(train, "FAILURE_FILE", tmp_path / "output/failure")
    assert run(splits, tmp_path / "model", "--colour", "red") == 2
    assert "unknown hyperparameter 'colour'" in (tmp_path / "output/failure").read_text()


def break_train(splits: Path, tmp_path: Path, case: str) -> Path:
    """A copy of the splits with one defect in train/train.csv (or validation); returns the copy."""
    copy_splits(splits, tmp_path)
    path = tmp_path / "train/train.csv"
    lines = path.read_text().splitlines()
    if case == "missing channel":
        shutil.rmtree(tmp_path / "train")
    elif case == "no csv":
        path.unlink()
    elif case == "empty file":
        path.write_bytes(b"")
    elif case == "non-numeric":
        cells = lines[2].split(",")
        cells[5] = "abc"
        path.write_text("\n".join([*lines[:2], ",".join(cells), *lines[3:]]) + "\n")
    elif case == "empty cell":
        path.write_text("\n".join([lines[0].rsplit(",", 1)[0] + ",", *lines[1:]]) + "\n")
    elif case == "label not 0/1":
        path.write_text("\n".join(["2" + lines[0][1:], *lines[1:]]) + "\n")
    elif case == "ragged rows":
        path.write_text("\n".join([*lines[:3], lines[3] + ",1", *lines[4:]]) + "\n")
    elif case == "column count differs":
        path.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    elif case == "one class in validation":
        validation = tmp_path / "validation/validation.csv"
        rows = [line for line in validation.read_text().splitlines() if line.startswith("0,")]
        validation.write_text("\n".join(rows) + "\n")
    return tmp_path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing channel", "channel 'train' not found"),
        ("no csv", "channel 'train' holds no train.csv"),
        ("empty file", "train.csv: the file is empty"),
        ("non-numeric", "train.csv: line 3, column 6: not a finite number: 'abc'"),
        ("empty cell", "train.csv: line 1, column 46: not a finite number: ''"),
        ("label not 0/1", "train.csv: line 1, column 1 (label fraud): expected 0 or 1, got '2'"),
        ("ragged rows", "train.csv: not a readable CSV file (Error tokenizing data. C error: Expected 46 fields"),
        ("column count differs", "validation: 46 columns, but the train channel"),
        ("one class in validation", "channel 'validation' needs both labels"),
    ],
)
def test_bad_input(splits: Path, tmp_path: Path, capsys: pytest.CaptureFixture, case: str, message: str) -> None:
    data = break_train(splits, tmp_path / "data", case)
    model_dir = tmp_path / "model"
    assert run(data, model_dir) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1
    assert files_under(model_dir) == []


def test_manifest_that_does_not_fit(splits: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"features": FEATURES[:-1]}))
    assert run(splits, tmp_path / "model", "--manifest", str(manifest)) == 2
    assert "does not name the data's 45 feature columns" in capsys.readouterr().err
    assert files_under(tmp_path / "model") == []


def test_bare_run_reports_bad_input_on_one_line(tmp_path: Path) -> None:
    result = run_script("training/train.py", "--train", str(tmp_path / "nowhere"), "--model-dir", str(tmp_path / "m"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"train: error: {tmp_path / 'nowhere'}: channel 'train' not found"]
    assert files_under(tmp_path / "m") == []


def test_hyperparameters_file_that_is_not_an_object(
    splits: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert run(splits, tmp_path / "model", hyperparameters=[1, 2], tmp=tmp_path) == 2
    assert "hyperparameters.json: expected a JSON object" in capsys.readouterr().err
    assert files_under(tmp_path / "model") == []


def test_serving_code_staged_beside_the_script_goes_into_the_model(splits: Path, tmp_path: Path) -> None:
    """The pipeline stages serve.py and features.py with train.py; the model artifact then carries them."""
    from pipelines.pipeline import stage_code

    staged = ROOT / stage_code("training")
    model_dir = tmp_path / "model"
    result = subprocess.run(
        [
            sys.executable,
            str(staged / "train.py"),
            "--train",
            str(splits / "train"),
            "--validation",
            str(splits / "validation"),
            "--model-dir",
            str(model_dir),
            "--num_round",
            "5",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name in ("serve.py", "explain.py", "features.py"):
        assert (model_dir / "code" / name).read_bytes() == (staged / name).read_bytes()
    assert not (model_dir / "code" / "train.py").exists()


def test_bare_run_from_the_repository_writes_no_code(trained: tuple[Path, str]) -> None:
    assert not (trained[0] / "code").exists()


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (["a[0]", *FEATURES[1:]], "feature name 'a[0]' contains one of [ ] <"),
        ([*FEATURES[:-1], "x]"], "feature name 'x]' contains one of [ ] <"),
        (["age<30", *FEATURES[1:]], "feature name 'age<30' contains one of [ ] <"),
        ([FEATURES[1], *FEATURES[1:]], f"feature name {FEATURES[1]!r} appears more than once"),
        ([1, *FEATURES[1:]], "feature name 1 is not a non-empty string"),
        (["", *FEATURES[1:]], "feature name '' is not a non-empty string"),
    ],
)
def test_illegal_feature_names(
    splits: Path, tmp_path: Path, capsys: pytest.CaptureFixture, features: list, message: str
) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"features": features}))
    assert run(splits, tmp_path / "model", "--manifest", str(manifest)) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"train: error: {manifest}: {message}")
    assert files_under(tmp_path / "model") == []


def test_model_dir_under_a_file_fails_before_training(splits: Path, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    model_dir = tmp_path / "file/model"
    channels = ["--train", str(splits / "train"), "--validation", str(splits / "validation")]
    result = run_script("training/train.py", *channels, "--model-dir", str(model_dir))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"train: error: {model_dir}: cannot create the model directory: {tmp_path / 'file'} is a file, not a directory"
    ]
    assert "auc" not in result.stdout


def test_outputs_are_all_or_nothing(splits: Path, small_disk, tmp_path: Path) -> None:
    disk = small_disk(1024)
    argv = ["--train", str(splits / "train"), "--validation", str(splits / "validation")]
    argv += ["--manifest", str(splits / "manifest"), "--model-dir", str(disk / "model"), "--num_round", "10"]
    assert_outputs_survive_faults("training/train.py", disk, argv, [*argv, "--seed", "43"], tmp_path / "marker")
    assert sorted(outputs(disk)) == ["model/features.json", f"model/{train.SCORES_FILE}", "model/xgboost-model.json"]


FACET = FEATURES.index("customer_gender_female") + 1
"""The default facet's column in the splits (label first)."""


def test_reweigh_weights_are_p_g_times_p_y_over_p_g_y() -> None:
    """4 rows in the facet (1 fraud), 6 out (3 fraud): P(g) .4/.6, P(y) .4/.6, P(g, y) .1, .3, .3, .3."""
    in_facet = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], bool)
    labels = np.array([1, 0, 0, 0, 1, 1, 1, 0, 0, 0], np.float32)
    weights = train.reweigh(labels, in_facet)
    # (in, fraud) .4*.4/.1 = 1.6; (in, not) .4*.6/.3 = .8; (out, fraud) .6*.4/.3 = .8; (out, not) .6*.6/.3 = 1.2
    assert weights.tolist() == pytest.approx([1.6, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 1.2, 1.2, 1.2])
    assert np.average(labels[in_facet], weights=weights[in_facet]) == pytest.approx(0.4)
    assert np.average(labels[~in_facet], weights=weights[~in_facet]) == pytest.approx(0.4)


class Fits:
    """What fit hands XGBoost: xgb.cv's matrix and folds, and each xgb.train's matrix and eval matrices."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.cv: list[tuple[xgb.DMatrix, list]] = []
        self.train: list[tuple[xgb.DMatrix, list]] = []
        real_cv, real_train = xgb.cv, xgb.train

        def cv(params: dict, dtrain: xgb.DMatrix, *args: object, **kwargs: object) -> object:
            self.cv.append((dtrain, kwargs["folds"]))
            return real_cv(params, dtrain, *args, **kwargs)

        def fit(params: dict, dtrain: xgb.DMatrix, *args: object, **kwargs: object) -> object:
            self.train.append((dtrain, [matrix for matrix, _ in kwargs.get("evals", [])]))
            return real_train(params, dtrain, *args, **kwargs)

        monkeypatch.setattr(train.xgb, "cv", cv)
        monkeypatch.setattr(train.xgb, "train", fit)


def facet_rows(rows: np.ndarray) -> np.ndarray:
    return rows[:, FACET] == 1


def test_reweigh_weights_the_fitted_rows_only(
    splits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Weights over the train split for xgb.cv (which slices them per fold) and the train-split model, over
    train + validation for the refit; the validation rows scored are not weighted. As SageMaker writes them."""
    fits = Fits(monkeypatch)
    hyperparameters = {"mitigation": '"reweigh"', "facet": '"customer_gender_female"', "facet_values": '"1"'}
    assert run(splits, tmp_path / "model", "--num_round", "5", hyperparameters=hyperparameters, tmp=tmp_path) == 0
    rows, validation = read_split(splits, "train"), read_split(splits, "validation")
    both = np.concatenate([rows, validation])
    expected = train.reweigh(rows[:, 0], facet_rows(rows))
    [(cv_matrix, _)] = fits.cv
    [(train_only, [_, scored]), (refit, [])] = fits.train
    assert cv_matrix.get_weight() == pytest.approx(expected)
    assert train_only.get_weight() == pytest.approx(expected)
    assert refit.get_weight() == pytest.approx(train.reweigh(both[:, 0], facet_rows(both)))
    assert scored.num_row() == len(validation) and len(scored.get_weight()) == 0
    assert len(set(np.round(expected, 6))) == 4
    out = capsys.readouterr().out
    assert "mitigation reweigh, facet customer_gender_female in 1: weight per (in facet, fraud) (0,0)=" in out


def test_resample_draws_from_the_smaller_group_only_and_is_seeded() -> None:
    data = np.zeros((100, 2), np.float32)
    data[:20, 1] = 1  # 20 rows in the facet, 80 out
    rows = np.arange(100)[::-1]

    def resampled(seed: int) -> np.ndarray:
        return train.Mitigation("resample", "g", 1, np.array([1], np.float32), seed).rows(data, rows)

    balanced = resampled(42)
    assert balanced[:100].tolist() == rows.tolist()
    assert len(balanced) == 160 and set(balanced[100:]) <= set(range(20))
    assert np.sum(data[balanced, 1] == 1) == np.sum(data[balanced, 1] == 0) == 80
    assert resampled(42).tolist() == balanced.tolist()
    assert resampled(43).tolist() != balanced.tolist()


def test_resample_of_rows_without_one_group_is_a_one_line_error() -> None:
    """A cross-validation fold of a tiny facet may hold no row of it: nothing to draw from, said in one line."""
    data = np.zeros((10, 2), np.float32)
    data[:2, 1] = 1
    mitigation = train.Mitigation("resample", "g", 1, np.array([1], np.float32), 42)
    with pytest.raises(train.InputError, match=r"^mitigation resample: the 8 rows to fit hold none in the facet g "):
        mitigation.rows(data, np.arange(2, 10))


def test_resample_fits_balanced_rows_and_scores_held_out_rows_as_they_are(
    splits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Each CV fold trains on its training indices plus draws of the smaller group, and is scored on the
    stratified held-out indices untouched; the validation split is scored as it is; the refit is balanced."""
    fits = Fits(monkeypatch)
    assert run(splits, tmp_path / "model", "--num_round", "5", "--mitigation", "resample") == 0
    rows, validation = read_split(splits, "train"), read_split(splits, "validation")
    in_facet = facet_rows(rows)
    smaller = min(in_facet.sum(), (~in_facet).sum())
    [(cv_matrix, folds)] = fits.cv
    assert cv_matrix.num_row() == len(rows)
    labels = rows[:, 0]
    stratified = StratifiedKFold(train.CV_FOLDS, shuffle=True, random_state=42).split(labels, labels)
    for (fitted, held_out), (original, expected_held_out) in zip(folds, stratified, strict=True):
        assert held_out.tolist() == expected_held_out.tolist()
        assert fitted[: len(original)].tolist() == original.tolist()
        drawn = fitted[len(original) :]
        assert set(drawn) <= set(original) and len(set(in_facet[drawn])) == 1
        assert in_facet[fitted].sum() == (~in_facet[fitted]).sum()
    [(train_only, [_, scored]), (refit, [])] = fits.train
    assert train_only.num_row() == 2 * (len(rows) - smaller)
    assert scored.get_label().tolist() == validation[:, 0].tolist()
    both = facet_rows(np.concatenate([rows, validation]))
    assert refit.num_row() == 2 * max(both.sum(), (~both).sum())
    out = capsys.readouterr().out
    kept = f"{(~in_facet).sum()}/{in_facet.sum()}"
    assert f"mitigation resample, facet customer_gender_female in 1: rows out/in the facet {kept} -> " in out


def test_no_mitigation_leaves_the_model_as_without_the_settings(
    splits: Path, tmp_path: Path, trained: tuple[Path, str]
) -> None:
    """none fits the rows as they are, whatever the facet (it is not even looked at): the same bytes as a run
    given no settings."""
    assert run(splits, tmp_path, "--mitigation", "none", "--facet", "no_such_column", "--facet_values", "7") == 0
    for name in ("xgboost-model.json", train.SCORES_FILE):
        assert (tmp_path / name).read_bytes() == (trained[0] / name).read_bytes()
