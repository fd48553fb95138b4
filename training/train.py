"""Train the fraud model: XGBoost, its number of rounds chosen by cross-validation, refit on train + validation.

The recipe (fit): the number of rounds is the one with the best mean held-out AUC in a stratified 5-fold
cross-validation of the train split (early stopping after `early_stopping_rounds` rounds without a better one;
over CV_MAX_ROWS train rows, one fold of it). A model of that many rounds trained on the train split alone
scores the validation split, which no choice has seen: its AUC is `validation:auc` (what a tuner compares
between hyperparameter settings) and its scores are saved for evaluate.py to choose the operating threshold
on. The saved model is then refit with the same hyperparameters and rounds on train + validation, so it
learns from every non-test row; its quality is measured on the test split by evaluate.py.

The `mitigation` setting (pipeline.yaml's training.mitigation) counters a bias against the facet (`facet`, a
feature column, and `facet_values`, comma-separated) in the rows being fit, never in those scored: `reweigh`
weights each row P(g) P(y) / P(g, y) (Kamiran & Calders; g: in the facet or not, y: the label), `resample`
draws rows of the smaller group (in the facet or not) with replacement, seeded by `seed`, until both groups are
as large (in cross-validation, only each fold's training part); `none` fits the rows as they are.

Runs in a SageMaker training container or bare:

    python training/train.py --train out/train --validation out/validation --manifest out/manifest \
        --model-dir model --max_depth 4

Inputs follow the SageMaker training contract, each overridable by a flag:
    hyperparameters  /opt/ml/input/config/hyperparameters.json (values are strings, as SageMaker writes them),
                     then `--name value` flags (as the SageMaker training toolkit passes them; flags win)
    channels         SM_CHANNEL_TRAIN, SM_CHANNEL_VALIDATION (default /opt/ml/input/data/<channel>; CSV, label
                     first, no header), and optionally SM_CHANNEL_MANIFEST (preprocess's manifest.json, for the
                     feature names; else manifest/manifest.json beside the train channel directory, as preprocess
                     and SageMaker lay them out; else the features are f0, f1, ...)
    model            SM_MODEL_DIR (default /opt/ml/model): xgboost-model.json (XGBoost's JSON format, the refit
                     model), features.json (features, hyperparameters, rounds, metrics), validation_scores.csv
                     (SCORES_FILE) and code/ (see SERVING_CODE)

It reads only the files preprocess writes: a channel directory is read as its `<channel>.csv`
(train/train.csv, validation/validation.csv, as preprocess writes them) and any other file in it is ignored;
a file path given explicitly is read as is. Hyperparameters are checked against training/hyperparameters.py
(the one definition of their types and ranges, shared with pipeline.yaml's validation).

Prints `train:auc=<v>` and `validation:auc=<v>` for a tuner's metric regex: every round of the model trained
on the train split, then, last, at its final round (the objective a tuner reads).

Bad input exits with code 2, and a model that cannot be written (a model directory under a file, a read-only
or full disk) with code 1, each with a one-line message (also written to /opt/ml/output/failure when that
directory exists). The inputs and the model directory are checked before training. The model's files are
written all or nothing (atomic_outputs.py): a failed or killed run leaves the previous ones whole (a killed
run may leave hidden `.partial.*` files, which the next run replaces).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.model_selection import StratifiedKFold

import atomic_outputs
from hyperparameters import ACCEPTED, DEFAULTS, SETTINGS

LABEL = "fraud"
CONFIG_FILE = Path("/opt/ml/input/config/hyperparameters.json")
FAILURE_FILE = Path("/opt/ml/output/failure")
MODEL_FILE = "xgboost-model.json"
FEATURES_FILE = "features.json"
SCORES_FILE = "validation_scores.csv"
"""The validation split's labels and scores by the model trained on the train split alone (header fraud,score):
evaluate.py chooses the operating threshold on them."""
CV_FOLDS = 5
CV_MAX_ROWS = 50_000
"""Up to this many train rows the number of rounds is chosen by CV_FOLDS-fold cross-validation; above it, on
one fold (a fifth of the rows is then enough for a steady choice, at a fifth of the cost)."""
MANIFEST_FILE = "manifest.json"
IGNORED_PREFIXES = ("sagemaker_", "_tuning_objective_metric")
SERVING_CODE = ("serve.py", "explain.py", "features.py")
"""Copied into MODEL_DIR/code when they sit beside this script (the pipeline stages them there), so the
model artifact carries the server and the feature transforms it was trained with."""
NTHREAD = os.cpu_count() or 1
"""The model does not depend on it: hist builds the same trees on 1 to 16 threads (tests/test_train.py checks)."""


class InputError(ValueError):
    """Bad input: the message names the file or hyperparameter and the problem."""


class PrintAuc(xgb.callback.TrainingCallback):
    """Prints `round=<i> train:auc=<v> validation:auc=<v>` every `period` rounds (a tuner's early stopping
    reads them; the final lines, printed last, are the last round's)."""

    def __init__(self, period: int) -> None:
        super().__init__()
        self.period = period

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        if epoch % self.period == 0:
            values = " ".join(f"{name}:auc={log['auc'][-1]:.6f}" for name, log in evals_log.items())
            print(f"round={epoch} {values}", flush=True)
        return False


class Result(NamedTuple):
    booster: xgb.Booster
    """Refit on train + validation."""
    rounds: int
    train_auc: float
    """On the train split, of the model trained on it alone, as validation_auc and validation_scores."""
    validation_auc: float
    validation_scores: np.ndarray
    mitigation: str
    """What the mitigation did to the train split, in words (Mitigation.describe)."""


def reweigh(labels: np.ndarray, in_facet: np.ndarray) -> np.ndarray:
    """Kamiran & Calders' weight of each row, P(g) P(y) / P(g, y) over these rows (g: in the facet or not, y: label):
    the weighted label rate is then the same in and out of the facet."""
    weights = np.empty(len(labels))
    for group in (~in_facet, in_facet):
        for label in (labels == 0, labels == 1):
            cell = group & label
            if cell.any():
                weights[cell] = group.sum() * label.sum() / (len(labels) * cell.sum())
    return weights


class Mitigation(NamedTuple):
    """The mitigation setting on the facet: feature `facet`, data column `column` (label first), `values`."""

    method: str
    facet: str
    column: int
    values: np.ndarray
    seed: int

    def in_facet(self, data: np.ndarray) -> np.ndarray:
        return np.isin(data[:, self.column], self.values)

    def rows(self, data: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The indices of data to fit on, of `rows`: for resample, rows of the smaller facet group drawn with
        replacement (seeded) appended until both groups are as large; else `rows`."""
        if self.method != "resample":
            return rows
        in_facet = self.in_facet(data)[rows]
        smaller, larger = sorted((rows[in_facet], rows[~in_facet]), key=len)
        if not len(smaller):
            side = "outside" if in_facet.any() else "in"
            raise InputError(
                f"mitigation resample: the {len(rows)} rows to fit hold none {side} the facet {self.facet} "
                "(a cross-validation fold of few rows?)"
            )
        drawn = np.random.default_rng(self.seed).choice(smaller, len(larger) - len(smaller))
        return np.concatenate([rows, drawn])

    def matrix(self, data: np.ndarray, names: list[str], resample: bool = True) -> xgb.DMatrix:
        """The rows of data (label first) to fit on: balanced for resample (unless resample=False: xgb.cv's folds
        are resampled instead), weighted over these rows for reweigh, as they are for none."""
        if resample and self.method == "resample":
            data = data[self.rows(data, np.arange(len(data)))]
        weight = reweigh(data[:, 0], self.in_facet(data)) if self.method == "reweigh" else None
        return xgb.DMatrix(data[:, 1:], label=data[:, 0], weight=weight, feature_names=names)

    def describe(self, data: np.ndarray) -> str:
        """One line: the mitigation and, on these rows, its weight per (facet group, label) or each group's rows."""
        if self.method == "none":
            return "mitigation none"
        in_facet, labels = self.in_facet(data), data[:, 0]
        head = f"mitigation {self.method}, facet {self.facet} in {','.join(f'{v:g}' for v in self.values)}"
        if self.method == "reweigh":
            weights = reweigh(labels, in_facet)
            cells = [(g, y, (in_facet == g) & (labels == y)) for g in (0, 1) for y in (0, 1)]
            found = " ".join(f"({g},{y})={weights[cell][0]:.4f}" for g, y, cell in cells if cell.any())
            return f"{head}: weight per (in facet, {LABEL}) {found}"
        after = in_facet[self.rows(data, np.arange(len(data)))]
        before = f"{np.sum(~in_facet)}/{np.sum(in_facet)}"
        return f"{head}: rows out/in the facet {before} -> {np.sum(~after)}/{np.sum(after)}"


def mitigation(settings: dict[str, str], names: list[str], train: np.ndarray, seed: int) -> Mitigation:
    """The mitigation settings, checked unless none: the facet is a feature, its values numbers that some but
    not all train rows hold."""
    method, facet, raw = settings["mitigation"], settings["facet"], settings["facet_values"]
    if method == "none":
        return Mitigation(method, facet, 0, np.empty(0), seed)
    if facet not in names:
        raise InputError(f"hyperparameter facet: column {facet!r} is not one of the {len(names)} feature columns")
    try:
        values = np.array([float(value) for value in raw.split(",")], np.float32)
    except ValueError:
        raise InputError(
            f"hyperparameter facet_values: {raw!r} is not comma-separated numbers (column {facet!r} is numeric)"
        ) from None
    column = names.index(facet) + 1
    held = int(np.isin(train[:, column], values).sum())
    if not 0 < held < len(train):
        raise InputError(
            f"hyperparameter facet_values: {raw!r} matches {held} of the {len(train)} train rows of column {facet!r}; "
            "mitigation needs rows in and out of the facet"
        )
    return Mitigation(method, facet, column, values, seed)


def _convert(name: str, raw: Any) -> Any:
    """One hyperparameter from its SageMaker string form ('5', '"binary:logistic"', '1e-2') to its type."""
    spec = ACCEPTED[name]
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError:
            pass
        if spec.kind is str and not isinstance(value, str):
            value = raw  # '1' and '1.0' are strings to a str hyperparameter, as written
    try:
        if isinstance(value, bool):
            raise ValueError
        if spec.kind is int:
            number = float(value)
            if not number.is_integer():
                raise ValueError
            value = int(number)
        else:
            value = spec.kind(value)
    except (TypeError, ValueError):
        raise InputError(f"hyperparameter {name}: {raw!r} is not {spec.kind.__name__}") from None
    if not spec.accepts(value):
        raise InputError(f"hyperparameter {name}: {raw!r} is not {spec.rule()}")
    return value


def resolve_hyperparameters(*sources: dict[str, Any]) -> dict[str, Any]:
    """Defaults, overridden by each source in turn; unknown names are an error (SageMaker's own keys are not)."""
    resolved = dict(DEFAULTS)
    for source in sources:
        for name, value in source.items():
            if name.startswith(IGNORED_PREFIXES):
                continue
            if name not in ACCEPTED:
                raise InputError(f"unknown hyperparameter {name!r}; known: {', '.join(ACCEPTED)}")
            resolved[name] = _convert(name, value)
    return resolved


def read_hyperparameters_file(path: Path) -> dict[str, Any]:
    """hyperparameters.json as SageMaker writes it; {} when there is none."""
    if not path.is_file():
        return {}
    try:
        content = json.loads(path.read_text())
    except ValueError as error:
        raise InputError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(content, dict):
        raise InputError(f"{path}: expected a JSON object of hyperparameters")
    return content


def parse_flag_hyperparameters(extra: list[str]) -> dict[str, str]:
    """`--name value` or `--name=value` pairs (dashes in names read as underscores)."""
    flags: dict[str, str] = {}
    items = iter(extra)
    for item in items:
        if not item.startswith("--"):
            raise InputError(f"unexpected argument {item!r}; hyperparameters are passed as --name value")
        name, has_value, value = item[2:].partition("=")
        if not has_value:
            value = next(items, None)
            if value is None:
                raise InputError(f"hyperparameter flag {item} has no value")
        flags[name.replace("-", "_")] = value
    return flags


def channel_file(path: Path, channel: str) -> Path:
    """The CSV file of a channel: a file path as is, or `<channel>.csv` in a channel directory."""
    if path.is_dir():
        if not (path / f"{channel}.csv").is_file():
            raise InputError(f"{path}: channel '{channel}' holds no {channel}.csv")
        return path / f"{channel}.csv"
    if not path.is_file():
        raise InputError(f"{path}: channel '{channel}' not found")
    return path


def _read_csv(path: Path) -> np.ndarray:
    """A headerless numeric CSV with the 0/1 label first, as float32."""
    try:
        raw = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the file is empty") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as error:
        raise InputError(f"{path}: not a readable CSV file ({str(error).strip()})") from None
    if raw.shape[1] < 2:
        raise InputError(f"{path}: expected the label and at least one feature, found {raw.shape[1]} column(s)")
    values = raw.apply(lambda column: pd.to_numeric(column.str.strip(), errors="coerce")).to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise InputError(f"{path}: line {row + 1}, column {col + 1}: not a finite number: {raw.iat[row, col]!r}")
    labels = values[:, 0]
    not_binary = (labels != 0) & (labels != 1)
    if not_binary.any():
        row = int(np.flatnonzero(not_binary)[0])
        raise InputError(f"{path}: line {row + 1}, column 1 (label {LABEL}): expected 0 or 1, got {raw.iat[row, 0]!r}")
    return values.astype(np.float32)


def read_channel(path: Path, channel: str) -> np.ndarray:
    """The rows of a channel: label in column 0, features after it."""
    data = _read_csv(channel_file(path, channel))
    if len(np.unique(data[:, 0])) < 2:
        raise InputError(f"{path}: channel '{channel}' needs both labels 0 and 1 to compute AUC")
    return data


def find_manifest(features_file: Path | None, manifest: Path | None, train: Path) -> Path | None:
    """--features-file, else the manifest channel, else manifest/manifest.json beside the train channel
    directory (preprocess's layout, and SageMaker's /opt/ml/input/data); None when there is none."""
    if features_file is not None:
        return features_file
    if manifest is not None:
        return manifest / MANIFEST_FILE if manifest.is_dir() else manifest
    channel = train if train.is_dir() else train.parent
    beside = channel.parent / "manifest" / MANIFEST_FILE
    return beside if beside.is_file() else None


def feature_names(manifest: Path | None, count: int) -> list[str]:
    """The 'features' list of a manifest (preprocess's manifest.json, or a model's features.json), else f0, f1, ...
    Names must be unique non-empty strings without [ ] < (XGBoost's rule)."""
    if manifest is None:
        return [f"f{i}" for i in range(count)]
    if not manifest.is_file():
        raise InputError(f"{manifest}: feature list not found")
    try:
        names = json.loads(manifest.read_text())["features"]
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{manifest}: expected a JSON object with a 'features' list") from None
    if not isinstance(names, list) or len(names) != count:
        raise InputError(f"{manifest}: its 'features' list does not name the data's {count} feature columns")
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name:
            raise InputError(f"{manifest}: feature name {name!r} is not a non-empty string")
        if any(symbol in name for symbol in "[]<"):
            raise InputError(f"{manifest}: feature name {name!r} contains one of [ ] <, which XGBoost does not allow")
        if name in seen:
            raise InputError(f"{manifest}: feature name {name!r} appears more than once")
        seen.add(name)
    return names


def choose_rounds(
    dtrain: xgb.DMatrix,
    params: dict[str, Any],
    num_round: int,
    early_stopping_rounds: int,
    fold_rows: Callable[[np.ndarray], np.ndarray],
) -> int:
    """The number of rounds with the best mean held-out AUC: stratified CV_FOLDS-fold cross-validation of the
    train split, or only its first fold when the split holds more than CV_MAX_ROWS rows. Each fold trains on
    `fold_rows` of its training indices (Mitigation.rows) and is scored on its held-out rows as they are."""
    labels = dtrain.get_label()
    folds = StratifiedKFold(CV_FOLDS, shuffle=True, random_state=params["seed"]).split(labels, labels)
    folds = list(folds) if len(labels) <= CV_MAX_ROWS else [next(folds)]
    folds = [(fold_rows(fitted), held_out) for fitted, held_out in folds]
    history = xgb.cv(params, dtrain, num_round, folds=folds, early_stopping_rounds=early_stopping_rounds)
    return len(history)


def fit(
    train: np.ndarray, validation: np.ndarray, names: list[str], hyperparameters: dict[str, Any], verbose: int = 0
) -> Result:
    """Choose the number of rounds on the train split (choose_rounds); train that many on the train split and
    score the validation split, unseen so far (the tuner's objective, and the scores the operating threshold
    is chosen on); then refit as many rounds on train + validation: the model returned. Each fit is mitigated
    (Mitigation.matrix; the settings default to SETTINGS'), the scored rows never. Prints AUCs every `verbose`
    rounds of the train-split model (0: never)."""
    hp = dict(hyperparameters)
    num_round, early_stopping_rounds = hp.pop("num_round"), hp.pop("early_stopping_rounds")
    settings = {name: hp.pop(name, spec.default) for name, spec in SETTINGS.items()}
    params = {**hp, "eval_metric": "auc", "tree_method": "hist", "nthread": NTHREAD}
    mitigated = mitigation(settings, names, train, params["seed"])
    dtrain = mitigated.matrix(train, names, resample=False)
    rounds = choose_rounds(dtrain, params, num_round, early_stopping_rounds, partial(mitigated.rows, train))
    if mitigated.method == "resample":
        dtrain = mitigated.matrix(train, names)
    dvalidation = xgb.DMatrix(validation[:, 1:], label=validation[:, 0], feature_names=names)
    history: dict = {}
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=rounds,
        evals=[(dtrain, "train"), (dvalidation, "validation")],
        evals_result=history,
        verbose_eval=False,
        callbacks=[PrintAuc(verbose)] if verbose else None,
    )
    final = xgb.train(params, mitigated.matrix(np.concatenate([train, validation]), names), num_boost_round=rounds)
    return Result(
        final,
        rounds,
        history["train"]["auc"][-1],
        history["validation"]["auc"][-1],
        booster.predict(dvalidation),
        mitigated.describe(train),
    )


def scores_csv(labels: np.ndarray, scores: np.ndarray) -> str:
    """SCORES_FILE's text: the labels and the float32 scores, exactly (9 significant digits)."""
    rows = "".join(f"{int(label)},{score:.9g}\n" for label, score in zip(labels, scores, strict=True))
    return f"{LABEL},score\n{rows}"


def save(
    result: Result, labels: np.ndarray, names: list[str], hyperparameters: dict[str, Any], model_dir: Path
) -> None:
    """xgboost-model.json, features.json, SCORES_FILE (for the validation `labels`) and code/ in the model
    directory, all or nothing."""
    description = {
        "features": names,
        "label": LABEL,
        "rounds": result.rounds,
        "hyperparameters": hyperparameters,
        "metrics": {"train:auc": result.train_auc, "validation:auc": result.validation_auc},
    }
    outputs = {
        model_dir / MODEL_FILE: atomic_outputs.bytes_writer(bytes(result.booster.save_raw("json"))),
        model_dir / FEATURES_FILE: atomic_outputs.text_writer(
            json.dumps(description, indent=2, allow_nan=False) + "\n"
        ),
        model_dir / SCORES_FILE: atomic_outputs.text_writer(scores_csv(labels, result.validation_scores)),
    }
    here = Path(__file__).resolve().parent
    for name in SERVING_CODE:
        if (here / name).is_file():
            outputs[model_dir / "code" / name] = atomic_outputs.bytes_writer((here / name).read_bytes())
    atomic_outputs.write_all(outputs)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """Path options, and the remaining arguments (`--name value` hyperparameter flags)."""
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--train", type=Path, default=env("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    parser.add_argument(
        "--validation", type=Path, default=env("SM_CHANNEL_VALIDATION", "/opt/ml/input/data/validation")
    )
    parser.add_argument(
        "--manifest", type=Path, default=env("SM_CHANNEL_MANIFEST"), help="directory with preprocess's manifest.json"
    )
    parser.add_argument("--features-file", type=Path, help="a JSON file with a 'features' list (the feature names)")
    parser.add_argument("--model-dir", type=Path, default=env("SM_MODEL_DIR", "/opt/ml/model"))
    parser.add_argument("--hyperparameters-file", type=Path, default=CONFIG_FILE)
    parser.add_argument("--verbose", type=int, default=1, help="print the AUCs every N rounds (0: never)")
    args, extra = parser.parse_known_args(argv)
    # `docker run IMAGE train` appends "train" when this script is the container's entry point
    return args, extra[1:] if extra[:1] == ["train"] else extra


def report_failure(message: str) -> None:
    print(f"train: error: {message}", file=sys.stderr)
    if FAILURE_FILE.parent.is_dir():
        FAILURE_FILE.write_text(message + "\n")


def run(args: argparse.Namespace, extra: list[str]) -> None:
    """Check every input and the model directory, then train and write the model."""
    hyperparameters = resolve_hyperparameters(
        read_hyperparameters_file(args.hyperparameters_file), parse_flag_hyperparameters(extra)
    )
    atomic_outputs.check_directory(args.model_dir, "model directory")
    train = read_channel(args.train, "train")
    validation = read_channel(args.validation, "validation")
    if train.shape[1] != validation.shape[1]:
        raise InputError(
            f"{args.validation}: {validation.shape[1]} columns, but the train channel {args.train} has {train.shape[1]}"
        )
    manifest = find_manifest(args.features_file, args.manifest, args.train)
    names = feature_names(manifest, train.shape[1] - 1)
    print(f"hyperparameters: {json.dumps(hyperparameters, sort_keys=True)}")
    print(f"train: {len(train)} rows, validation: {len(validation)} rows, {len(names)} features")
    result = fit(train, validation, names, hyperparameters, args.verbose)
    print(result.mitigation)
    print(f"rounds={result.rounds}")
    print(f"train:auc={result.train_auc:.6f}")
    print(f"validation:auc={result.validation_auc:.6f}", flush=True)
    save(result, validation[:, 0], names, hyperparameters, args.model_dir)
    print(f"wrote {args.model_dir / MODEL_FILE} and {args.model_dir / FEATURES_FILE}")


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    try:
        run(args, extra)
    except InputError as error:
        report_failure(str(error))
        return 2
    except atomic_outputs.OutputError as error:
        report_failure(str(error))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
