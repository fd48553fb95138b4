"""Evaluate the fraud model on the test split: evaluation.json (ModelQuality format), curve plots, explainability.

Runs in a SageMaker processing container (defaults under /opt/ml/processing) or bare:

    python evaluation/evaluate.py --model model.tar.gz --test out/test --output-dir evaluation

Writes, under the output directory:
    evaluation.json               SageMaker Model Monitor's ModelQuality shape: binary_classification_metrics with
                                  auc, pr_auc (average precision), precision, recall, f1, accuracy (each a value and
                                  a bootstrap standard deviation) and the confusion matrix (actual -> predicted);
                                  plus the decision threshold, recall at the top 5% of scores, test rows and fraud rate
    roc_curve.png, precision_recall_curve.png
    explainability.json           each contract column's mean |SHAP| on the test rows (exact TreeSHAP of the log-odds,
                                  one-hot features summed into their column), in SageMaker Clarify's explainability
                                  layout (explanations.kernel_shap.<label>.global_shap_values, expected_value)
    explainability.png            those values as a bar chart, largest first
    predictions.csv               the test rows with a header (the label, the features) and fraud_predicted, the
                                  model's label at the threshold: the dataset of the post-training bias check

The threshold is chosen on the validation split, never on the test rows: on the validation labels and scores
train.py saves beside the model (validation_scores.csv, scored by the model trained on the train split alone,
before its refit on train + validation): max_f1 (the F1-maximising score) or alert_rate (flag the
highest-scoring `--alert-rate` of claims). The test metrics are reported at it; evaluation.json's `threshold`
says how and where it was chosen and the share of test rows it flags. Standard deviations come from 200
bootstrap resamples of the test rows (seed 0) at that fixed threshold. The output depends only on the inputs.

Inputs: the model is a model directory (xgboost-model.json and validation_scores.csv, else model.tar.gz in it) or
a model.tar.gz (gzip or plain tar) as SageMaker writes it; an archive is streamed, and refused once it unpacks to
more than MAX_ARCHIVE_MIB MiB or holds more than MAX_ARCHIVE_ENTRIES entries (a real one holds a few small files).
The test data is the CSV file given, or a directory's test.csv (what preprocess writes); other files in the
directory are ignored.

Bad input exits with code 2, and outputs that cannot be written (an output directory under a file, a read-only
or full disk) with code 1, each with a one-line message. The inputs and the output directory are checked before
any work. The outputs are written all or nothing (atomic_outputs.py): a failed or killed run leaves the
previous ones whole (a killed run may leave hidden `.partial.*` files, which the next run replaces).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import xgboost as xgb
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

import atomic_outputs
from features import LABEL, PREDICTED_LABEL, sum_by_column

PROCESSING = Path("/opt/ml/processing")
MODEL_FILE = "xgboost-model.json"
SCORES_FILE = "validation_scores.csv"
PREDICTIONS_FILE = "predictions.csv"
"""Beside the model (train.py writes it): the validation split's labels and scores, which the threshold is chosen on."""
TEST_FILE = "test.csv"
MAX_ARCHIVE_MIB = 128
"""The most a model archive may unpack to; a real model.tar.gz holds well under 1 MiB (34 KB for the default model)."""
MAX_ARCHIVE_ENTRIES = 1_000
TOP_FRACTION = 0.05
BOOTSTRAP_RESAMPLES = 200
BOOTSTRAP_SEED = 0


class InputError(ValueError):
    """Bad input: the message names the file and the problem."""


class _Bounded:
    """A stream that refuses to read past `limit` bytes (a decompression bomb's)."""

    def __init__(self, stream: BinaryIO, limit: int, path: Path) -> None:
        self.stream, self.left, self.path = stream, limit, path

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(self.left + 1 if size < 0 else min(size, self.left + 1))
        self.left -= len(data)
        if self.left < 0:
            raise InputError(f"{self.path}: refused: the archive unpacks to more than {MAX_ARCHIVE_MIB} MiB")
        return data


def _members_from_tar(path: Path) -> dict[str, bytes]:
    """MODEL_FILE and SCORES_FILE from a model.tar.gz as SageMaker writes it (the model directory's contents),
    streamed within MAX_ARCHIVE_MIB and MAX_ARCHIVE_ENTRIES."""
    found: dict[str, bytes] = {}
    try:
        with path.open("rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = _Bounded(gzip.GzipFile(fileobj=raw) if gzipped else raw, MAX_ARCHIVE_MIB * 2**20, path)
            with tarfile.open(fileobj=stream, mode="r|") as archive:
                for count, member in enumerate(archive, 1):
                    if count > MAX_ARCHIVE_ENTRIES:
                        raise InputError(f"{path}: refused: the archive holds more than {MAX_ARCHIVE_ENTRIES} entries")
                    name = member.name.removeprefix("./")
                    if member.isfile() and name in (MODEL_FILE, SCORES_FILE):
                        if member.size > stream.left:
                            raise InputError(
                                f"{path}: refused: its {name} is {member.size} bytes, more than the archive "
                                f"may unpack to ({MAX_ARCHIVE_MIB} MiB)"
                            )
                        found[name] = archive.extractfile(member).read()
                        if len(found) == 2:
                            return found
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise InputError(f"{path}: not a readable model archive ({error})") from None
    missing = MODEL_FILE if MODEL_FILE not in found else SCORES_FILE
    raise InputError(f"{path}: the archive holds no {missing}")


def _read_scores(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """SCORES_FILE's labels and scores: header fraud,score, then a 0/1 label and a score in [0, 1] a line, both
    labels present."""
    lines = raw.decode("utf-8", errors="replace").splitlines()
    if not lines or lines[0] != "fraud,score":
        raise InputError(f"{where}: expected the header 'fraud,score'")
    labels, scores = [], []
    for number, line in enumerate(lines[1:], 2):
        label, _, score = line.partition(",")
        try:
            value = float(score)
        except ValueError:
            value = -1.0
        if label not in ("0", "1") or not 0 <= value <= 1:
            raise InputError(f"{where}: line {number}: expected a label 0 or 1 and a score in [0, 1], got {line!r}")
        labels.append(int(label))
        scores.append(value)
    if len(set(labels)) < 2:
        raise InputError(f"{where}: needs both labels 0 and 1 to choose a threshold on")
    return np.array(labels), np.array(scores, dtype=np.float32)


def load_model(path: Path) -> tuple[xgb.Booster, np.ndarray, np.ndarray]:
    """The booster and the validation labels and scores (SCORES_FILE) of a model directory (xgboost-model.json
    beside SCORES_FILE, or a model.tar.gz in it) or a model.tar.gz file."""
    if path.is_dir():
        if (path / MODEL_FILE).is_file():
            if not (path / SCORES_FILE).is_file():
                raise InputError(f"{path}: holds no {SCORES_FILE} (train.py's validation scores) beside {MODEL_FILE}")
            path = path / MODEL_FILE
        elif (path / "model.tar.gz").is_file():
            path = path / "model.tar.gz"
        else:
            raise InputError(f"{path}: holds neither {MODEL_FILE} nor model.tar.gz")
    if not path.is_file():
        raise InputError(f"{path}: model not found")
    if path.name == MODEL_FILE:
        files = {MODEL_FILE: path.read_bytes(), SCORES_FILE: (path.parent / SCORES_FILE).read_bytes()}
        where = str(path.parent / SCORES_FILE)
    else:
        files = _members_from_tar(path)
        where = f"{path}: {SCORES_FILE}"
    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(files[MODEL_FILE]))
    except xgb.core.XGBoostError as error:
        raise InputError(f"{path}: not an XGBoost model ({str(error).splitlines()[0]})") from None
    return booster, *_read_scores(files[SCORES_FILE], where)


def read_test(path: Path) -> tuple[np.ndarray, np.ndarray, Path, pd.DataFrame]:
    """Labels and features of the headerless test CSV (a file, or a directory's test.csv), and the features as
    written (stripped text)."""
    if path.is_dir():
        if not (path / TEST_FILE).is_file():
            raise InputError(f"{path}: holds no {TEST_FILE}")
        path = path / TEST_FILE
    if not path.is_file():
        raise InputError(f"{path}: test data not found")
    try:
        raw = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: the file is empty") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as error:
        raise InputError(f"{path}: not a readable CSV file ({str(error).strip()})") from None
    raw = raw.apply(lambda column: column.str.strip())
    values = raw.apply(lambda column: pd.to_numeric(column, errors="coerce")).to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise InputError(f"{path}: line {row + 1}, column {col + 1}: not a finite number: {raw.iat[row, col]!r}")
    labels = values[:, 0]
    if not np.isin(labels, (0, 1)).all() or len(np.unique(labels)) < 2:
        raise InputError(f"{path}: column 1 (the label) must be 0 or 1, with both classes present")
    return labels.astype(int), values[:, 1:].astype(np.float32), path, raw.iloc[:, 1:]


def top_count(fraction: float, rows: int) -> int:
    """How many rows the top `fraction` holds (at least one)."""
    return max(1, round(fraction * rows))


def pick_threshold(labels: np.ndarray, scores: np.ndarray, method: str, alert_rate: float) -> dict:
    """The decision threshold (predict fraud when score >= value) and how it was chosen."""
    if method == "alert_rate":
        value = float(np.sort(scores)[::-1][top_count(alert_rate, len(scores)) - 1])
        return {"value": value, "method": method, "alert_rate": alert_rate}
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return {"value": float(thresholds[np.argmax(f1[:-1])]), "method": method}


def counts(labels: np.ndarray, predicted: np.ndarray) -> tuple[int, int, int, int]:
    """tn, fp, fn, tp."""
    tp = int(np.sum(predicted & (labels == 1)))
    fp = int(np.sum(predicted & (labels == 0)))
    fn = int(np.sum(~predicted & (labels == 1)))
    return len(labels) - tp - fp - fn, fp, fn, tp


def recall_at_top(labels: np.ndarray, scores: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Share of the fraud found among the highest-scoring `fraction` of claims (ties broken by row order)."""
    top = np.argsort(-scores, kind="stable")[: top_count(fraction, len(scores))]
    return float(labels[top].sum() / labels.sum())


def metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """The threshold-free and the thresholded metrics of one sample."""
    tn, fp, fn, tp = counts(labels, scores >= threshold)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "auc": float(roc_auc_score(labels, scores)),
        "pr_auc": float(average_precision_score(labels, scores)),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "accuracy": (tp + tn) / len(labels),
        "recall_at_top_5_percent": recall_at_top(labels, scores),
    }


def bootstrap_std(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Standard deviation of each metric over seeded bootstrap resamples (those with both classes)."""
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    samples = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        rows = rng.integers(0, len(labels), len(labels))
        if 0 < labels[rows].sum() < len(rows):
            samples.append(metrics(labels[rows], scores[rows], threshold))
    return {name: float(np.std([s[name] for s in samples], ddof=1)) for name in samples[0]}


def evaluate(labels: np.ndarray, scores: np.ndarray, threshold: dict) -> dict:
    """The evaluation.json document of the test labels and scores at `threshold` (pick_threshold's)."""
    threshold = dict(threshold)
    values = metrics(labels, scores, threshold["value"])
    std = bootstrap_std(labels, scores, threshold["value"])
    tn, fp, fn, tp = counts(labels, scores >= threshold["value"])
    report = {name: {"value": round(values[name], 6), "standard_deviation": round(std[name], 6)} for name in values}
    top = report.pop("recall_at_top_5_percent")
    threshold["flagged_fraction"] = round((fp + tp) / len(labels), 6)
    return {
        "binary_classification_metrics": {
            **report,
            "confusion_matrix": {"0": {"0": tn, "1": fp}, "1": {"0": fn, "1": tp}},
        },
        "threshold": threshold,
        "recall_at_top_5_percent": top,
        "test_rows": len(labels),
        "test_fraud_rate": round(float(labels.mean()), 6),
        "standard_deviation_method": {"bootstrap_resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED},
    }


def global_explanation(booster: xgb.Booster, matrix: xgb.DMatrix) -> dict:
    """explainability.json: mean |SHAP| per contract column over the rows (largest first), and the mean base value."""
    contributions = booster.predict(matrix, pred_contribs=True)
    names = booster.feature_names or [f"f{i}" for i in range(matrix.num_col())]
    columns, per_column = sum_by_column(contributions[:, :-1], names)
    importance = np.abs(per_column).mean(axis=0)
    order = np.argsort(-importance, kind="stable")
    return {
        "version": "1.0",
        "explanations": {
            "kernel_shap": {
                LABEL: {
                    "global_shap_values": {columns[j]: round(float(importance[j]), 6) for j in order},
                    "expected_value": round(float(contributions[:, -1].astype(np.float64).mean()), 6),
                }
            }
        },
        "method": "exact TreeSHAP (XGBoost pred_contribs) of the log-odds, one-hot features summed into their "
        "contract column, mean absolute value over the test rows",
        "rows": matrix.num_row(),
    }


def explanation_plot(document: dict) -> bytes:
    """The global SHAP values as horizontal bars, the largest on top."""
    values = document["explanations"]["kernel_shap"][LABEL]["global_shap_values"]
    fig = Figure(figsize=(6, 0.3 * len(values) + 1))
    ax = fig.subplots()
    ax.barh(list(values)[::-1], list(values.values())[::-1])
    ax.set(xlabel="mean |SHAP value| (log-odds)", title=f"What drives the fraud score ({document['rows']} test rows)")
    fig.tight_layout()
    return _png(fig)


def _png(fig: Figure) -> bytes:
    """The figure as PNG bytes (matplotlib's Agg renderer; no pyplot state, no timestamp)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def plots(labels: np.ndarray, scores: np.ndarray, document: dict) -> dict[str, bytes]:
    """ROC and precision-recall curves as PNG bytes, the operating point marked."""
    summary = document["binary_classification_metrics"]
    tn, fp = summary["confusion_matrix"]["0"].values()
    fn, tp = summary["confusion_matrix"]["1"].values()
    label = f"threshold {document['threshold']['value']:.3f}"

    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    fpr, tpr, _ = roc_curve(labels, scores)
    ax.plot(fpr, tpr, label=f"AUC {summary['auc']['value']:.3f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey")
    ax.scatter([fp / (fp + tn)], [tp / (tp + fn)], color="red", zorder=3, label=label)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
    ax.legend(loc="lower right")
    roc = _png(fig)

    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    precision, recall, _ = precision_recall_curve(labels, scores)
    ax.plot(recall, precision, label=f"average precision {summary['pr_auc']['value']:.3f}")
    ax.axhline(labels.mean(), linestyle="--", color="grey", label="fraud rate")
    ax.scatter([summary["recall"]["value"]], [summary["precision"]["value"]], color="red", zorder=3, label=label)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve")
    ax.legend(loc="upper right")
    return {"roc_curve.png": roc, "precision_recall_curve.png": _png(fig)}


def predictions_csv(labels: np.ndarray, features: pd.DataFrame, names: list[str], predicted: np.ndarray) -> str:
    """The test rows with a header: the label, the features as the test split writes them, the predicted label."""
    frame = features.set_axis(names, axis=1)
    frame.insert(0, LABEL, labels)
    frame[PREDICTED_LABEL] = predicted.astype(int)
    return frame.to_csv(index=False, lineterminator="\n")


def rate(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=PROCESSING / "model", help="model.tar.gz or model directory")
    parser.add_argument("--test", type=Path, default=PROCESSING / "test", help="test CSV, or a directory's test.csv")
    parser.add_argument("--output-dir", type=Path, default=PROCESSING / "evaluation")
    parser.add_argument("--threshold-method", choices=("max_f1", "alert_rate"), default="max_f1")
    parser.add_argument("--alert-rate", type=rate, default=0.05, help="share of claims flagged (alert_rate)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    """Check the inputs and the output directory, then evaluate and write the outputs."""
    atomic_outputs.check_directory(args.output_dir)
    booster, validation_labels, validation_scores = load_model(args.model)
    labels, features, test_file, written = read_test(args.test)
    if features.shape[1] != booster.num_features():
        raise InputError(
            f"{test_file}: {features.shape[1]} feature columns after the label, "
            f"but the model expects {booster.num_features()}"
        )
    matrix = xgb.DMatrix(features, feature_names=booster.feature_names)
    scores = booster.predict(matrix)
    threshold = pick_threshold(validation_labels, validation_scores, args.threshold_method, args.alert_rate)
    threshold.update(chosen_on="validation", validation_rows=len(validation_labels))
    document = evaluate(labels, scores, threshold)
    explanation = global_explanation(booster, matrix)
    images = {**plots(labels, scores, document), "explainability.png": explanation_plot(explanation)}
    outputs = {
        args.output_dir / name: atomic_outputs.text_writer(json.dumps(content, indent=2, allow_nan=False) + "\n")
        for name, content in (("evaluation.json", document), ("explainability.json", explanation))
    }
    outputs.update({args.output_dir / name: atomic_outputs.bytes_writer(png) for name, png in images.items()})
    outputs[args.output_dir / PREDICTIONS_FILE] = atomic_outputs.text_writer(
        predictions_csv(labels, written, booster.feature_names, scores >= threshold["value"])
    )
    atomic_outputs.write_all(outputs)
    summary = document["binary_classification_metrics"]
    print(f"test:auc={summary['auc']['value']:.6f} (+/- {summary['auc']['standard_deviation']:.6f})")
    print(f"threshold={document['threshold']['value']:.6f} ({args.threshold_method}), f1={summary['f1']['value']:.6f}")
    top = list(explanation["explanations"]["kernel_shap"][LABEL]["global_shap_values"].items())[:3]
    print("top reasons (mean |SHAP|): " + ", ".join(f"{column} {value:.4f}" for column, value in top))
    print(
        f"wrote evaluation.json, explainability.json, {', '.join(images)}, {PREDICTIONS_FILE} under {args.output_dir}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except InputError as error:
        print(f"evaluate: error: {error}", file=sys.stderr)
        return 2
    except atomic_outputs.OutputError as error:
        print(f"evaluate: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
