"""Data bias (pre-training) and model bias (post-training) with smclarify (the library behind SageMaker Clarify),
checked against a baseline.

Runs in a SageMaker processing container (defaults under /opt/ml/processing) or bare:

    python processing/bias.py --dataset out/headered/train.csv --output-dir out/bias \
        --thresholds DPL=0.1,KL=0.1,JS=0.05,TVD=0.1,KS=0.1
    python processing/bias.py --stage post_training --predicted-label fraud_predicted \
        --dataset out/evaluation/predictions.csv --output-dir out/model-bias --thresholds DPPL=0.1,RD=0.2

What to compute: Clarify's own analysis_config.json (--analysis-config, as ClarifyCheckStep generates it: label,
label_values_or_threshold, facet, excluded_columns, methods.pre_training_bias or methods.post_training_bias, and
for post-training the predicted labels: a column of the dataset (predicted_label), or the model's endpoint
(predictor, with --endpoint URL: the rows, less the label, are sent to it as text/csv in batches, and the label
read from column predictor.label of its text/csv answer, as Clarify asks its shadow endpoint)), or the flags
--stage, --label, --positive-label, --facet, --facet-values, --metrics, --predicted-label and --excluded-columns.
Post-training metrics compare the predicted labels with the true ones across the facet (DPPL, DI, DCA, RD, ...; the flip
test reads the other columns as the features).

The check is a ClarifyCheckStep's, with Clarify's bias drift rule
(https://docs.aws.amazon.com/sagemaker/latest/dg/pipelines-quality-clarify-baseline-lifecycle.html,
https://docs.aws.amazon.com/sagemaker/latest/dg/clarify-model-monitor-bias-drift-violations.html): a metric of
the baseline is violated when its calculated value is farther from 0 (the balanced value) than the baseline's,
or could not be computed; metrics the baseline does not name are reported, not judged. The baseline is
--baseline (a Clarify analysis.json, or a folder holding one), or --thresholds METRIC=LIMIT,... (a baseline made
of those limits: the one the pipeline generates from pipeline.yaml's bias.thresholds). A folder given as
--dataset, --baseline or --analysis-config is read by the name its producer writes: train.csv (preprocess's
headered train split) pre-training, test.csv (its headered test split) or predictions.csv (evaluate's)
post-training; analysis.json or constraints.json (this step's analysis or drift baseline, the builder's
supplied baseline); analysis_config.json.
    --skip-check true            compute and write, judge nothing (skip_check)
    --fail-on-violation false    write the violations, exit 0 (fail_on_violation)
    --drift-baseline-dir DIR     write the step's BaselineUsedForDriftCheckConstraints there as constraints.json:
                                 the calculated analysis with --register-new-baseline true, else the baseline

Writes under --output-dir, as Clarify does: analysis.json (Clarify's shape: {"version": "1.0",
"pre_training_bias_metrics" or "post_training_bias_metrics": {"label", "label_value_or_threshold", "facets":
{<facet>: [{"value_or_threshold", "metrics": [{"name", "description", "value"}, ...]}]}}}), report.md, and
constraint_violations.json when there are violations ({"version": "1.0", "violations": [{"facet",
"facet_value", "metric_name", "constraint_check_type": "bias_drift_check", "description", "value",
"baseline"}]}); a run without violations removes an earlier run's constraint_violations.json, so the folder
never mixes two runs' verdicts.

Every output is written all or nothing (atomic_outputs): an output that cannot be written (read-only, disk full)
exits 1 and leaves the previous outputs whole.

A violation exits 1, with a message naming each metric, its value and the baseline's on stderr and in
/opt/ml/output/message (the processing job's ExitMessage). Bad input (no dataset, a missing label or facet
column, a facet value absent from the data, an unreadable configuration or baseline, a baseline of the other
stage, an endpoint that does not answer) exits 2, writing nothing.

The facet and the label are treated as categorical. (smclarify would call any integer column with more
than 5% distinct values continuous, so a 0/1 column of fewer than 40 rows would become a threshold.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import smclarify.bias.metrics
from smclarify.bias.metrics.common import metric_description
from smclarify.bias.report import FacetColumn, LabelColumn, StageType, bias_report, label_value_or_threshold

import atomic_outputs

log = logging.getLogger("bias")
PROCESSING = Path("/opt/ml/processing")
MESSAGE_FILE = Path("/opt/ml/output/message")
ANALYSIS_FILE = "analysis.json"
REPORT_FILE = "report.md"
VIOLATIONS_FILE = "constraint_violations.json"
DRIFT_BASELINE_FILE = "constraints.json"
CONFIG_FILE = "analysis_config.json"
PREDICTED = "predicted_label"
"""The column holding the model's predicted labels once read (from the dataset's column, or the endpoint)."""
BATCH_ROWS = 1000
"""Records per request to an endpoint."""
ENDPOINT_WAIT_S = 120
"""How long a starting endpoint is waited for (its /ping)."""


@dataclass(frozen=True)
class Stage:
    """Pre-training (the data) or post-training (the model's predictions): what is computed and where it goes."""

    section: str
    """the analysis.json section (and the analysis config's method)"""
    default_metrics: tuple[str, ...]
    known_metrics: tuple[str, ...]
    datasets: tuple[str, ...]
    """the file names a dataset folder may hold: what the producers write"""


STAGES = {
    "pre_training": Stage(
        "pre_training_bias_metrics",
        ("CI", "DPL", "KL", "JS", "LP", "TVD", "KS"),
        tuple(sorted(f.__name__ for f in smclarify.bias.metrics.PRETRAINING_METRICS)),
        ("train.csv",),  # preprocess's headered train split
    ),
    "post_training": Stage(
        "post_training_bias_metrics",
        ("AD", "DAR", "DCA", "DCR", "DI", "DPPL", "DRR", "FT", "GE", "RD", "SD", "TE"),
        tuple(sorted(f.__name__ for f in smclarify.bias.metrics.POSTTRAINING_METRICS)),
        ("test.csv", "predictions.csv"),  # preprocess's headered test split; evaluate's predictions
    ),
}
METRICS = STAGES["pre_training"].default_metrics


class InputError(ValueError):
    """Input the step cannot use (exit code 2)."""


@dataclass(frozen=True)
class Settings:
    """What to compute: the label and its positive values, the facet and its sensitive values, the metrics."""

    label: str
    positive_label: list
    facet: str
    facet_values: list
    metrics: list[str]
    stage: str = "pre_training"
    predicted_label: str | None = None
    """post-training: the dataset's column of predicted labels (Clarify's `predicted_label`)"""
    predictor: dict | None = None
    """post-training: Clarify's predictor config, when the predicted labels come from the model's endpoint"""
    excluded_columns: tuple[str, ...] = ()

    @property
    def section(self) -> str:
        return STAGES[self.stage].section


def parse_value(text: str) -> int | float | str:
    """A facet or label value as written on the command line: 1 → 1, 0.5 → 0.5, female → 'female'."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def values(text: str) -> list[int | float | str]:
    return [parse_value(v.strip()) for v in text.split(",") if v.strip()]


def metric_names(text: str | list[str], stage: str = "pre_training") -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()] if isinstance(text, str) else list(text)
    known = STAGES[stage].known_metrics
    unknown = [m for m in names if m not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown metric(s) {unknown}; {stage.replace('_', '-')} metrics: {', '.join(known)}"
        )
    return names


def thresholds(text: str) -> dict[str, float]:
    """'DPL=0.1,KL=0.1' → {'DPL': 0.1, 'KL': 0.1}."""
    result = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        name, _, value = item.partition("=")
        try:
            result[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not METRIC=NUMBER") from None
    return result


def boolean(text: str) -> bool:
    """true/false as a pipeline renders a Boolean parameter (any case; 1/0 too)."""
    lowered = text.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def facet_value_text(facet_values: list) -> str:
    """A facet's value_or_threshold as Clarify (smclarify) writes it in analysis.json."""
    return ",".join(map(str, facet_values))


def baseline_from_thresholds(limits: dict[str, float], settings: Settings) -> dict:
    """The baseline a ClarifyCheckStep checks against, in analysis.json's layout, made of configured limits:
    a metric farther from 0 than its limit is a violation; metrics without a limit are not judged."""
    metrics = [
        {"name": name, "description": "limit (bias.thresholds)", "value": limits[name]} for name in sorted(limits)
    ]
    return {
        "version": "1.0",
        settings.section: {
            "label": settings.label,
            "label_value_or_threshold": facet_value_text(settings.positive_label),
            "facets": {
                settings.facet: [{"value_or_threshold": facet_value_text(settings.facet_values), "metrics": metrics}]
            },
        },
    }


def read_json(path: Path, what: str, names: tuple[str, ...]) -> dict:
    """A JSON object from a file, or from a folder (as a processing input is) holding exactly one of `names`."""
    if path.is_dir():
        found = [path / name for name in names if (path / name).is_file()]
        if len(found) != 1:
            expected = " or ".join(names)
            raise InputError(f"{path}: expected {expected} in this folder ({what}), found {len(found)} of them")
        path = found[0]
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found ({what})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"{path}: not a readable JSON {what} ({error})") from None
    if not isinstance(document, dict):
        raise InputError(f"{path}: the {what} must be a JSON object")
    return document


def settings_from_analysis_config(path: Path) -> Settings:
    """Settings from Clarify's analysis_config.json: the keys a pre-training or a post-training bias analysis uses
    (a ClarifyCheckStep's holds one of the two methods)."""
    config = read_json(path, "Clarify analysis config", (CONFIG_FILE,))
    try:
        [facet] = config["facet"]
        [stage] = [name for name in STAGES if STAGES[name].section.removesuffix("_metrics") in config["methods"]]
        methods = config["methods"][f"{stage}_bias"]["methods"]
        settings = Settings(
            label=config["label"],
            positive_label=list(config["label_values_or_threshold"]),
            facet=facet["name_or_index"],
            facet_values=list(facet["value_or_threshold"]),
            metrics=list(STAGES[stage].default_metrics) if methods == "all" else metric_names(methods, stage),
            stage=stage,
            predicted_label=config.get("predicted_label"),
            predictor=config.get("predictor"),
            excluded_columns=tuple(config.get("excluded_columns", ())),
        )
    except (KeyError, TypeError, ValueError, argparse.ArgumentTypeError) as error:
        raise InputError(f"{path}: not a bias analysis config ({type(error).__name__}: {error})") from None
    if config.get("dataset_type", "text/csv") != "text/csv":
        raise InputError(f"{path}: dataset_type {config['dataset_type']!r}; this step reads text/csv")
    if stage == "post_training" and not (settings.predicted_label or settings.predictor):
        raise InputError(f"{path}: a post-training analysis needs predicted_label (a column) or a predictor")
    return settings


def resolve_dataset(path: Path, names: tuple[str, ...]) -> Path:
    """A CSV file, or a folder holding exactly one of `names` (what the dataset's producer writes)."""
    if path.is_file():
        return path
    if path.is_dir():
        found = [path / name for name in names if (path / name).is_file()]
        if len(found) == 1:
            return found[0]
        raise InputError(f"{path}: expected {' or '.join(names)} in this folder, found {len(found)} of them")
    raise InputError(f"{path}: file not found")


def categorical(column: pd.Series) -> pd.Series:
    """A column smclarify reads as categorical; pandas string dtypes become object first (smclarify rejects them)."""
    if not pd.api.types.is_numeric_dtype(column):
        column = column.astype(object)
    return column.astype("category")


def read_dataset(dataset: Path, settings: Settings, endpoint: str | None = None) -> pd.DataFrame:
    """The dataset, checked: the facet and label columns (and the predicted labels, post-training) categorical, and
    post-training the other columns too (the features, which the flip test reads), less the excluded ones. The
    predicted labels come from the dataset's column, or from the model's endpoint given the features."""
    path = resolve_dataset(dataset, STAGES[settings.stage].datasets)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a readable CSV file ({error})") from None
    post = settings.stage == "post_training"
    wanted = [
        settings.facet,
        settings.label,
        *([settings.predicted_label] if post and settings.predicted_label else []),
    ]
    missing = [c for c in (*wanted, *settings.excluded_columns) if c not in frame]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; columns: {', '.join(frame.columns)}")
    frame = frame.drop(columns=list(settings.excluded_columns)) if post else frame[wanted]
    if frame.empty:
        raise InputError(f"{path}: no data rows")
    for column in wanted:
        if frame[column].isna().any():
            raise InputError(f"{path}: column '{column}' has {int(frame[column].isna().sum())} empty value(s)")
    if not frame[settings.facet].isin(settings.facet_values).any():
        present = sorted(frame[settings.facet].astype(str).unique())
        raise InputError(
            f"{path}: column '{settings.facet}': no row has facet value(s) {settings.facet_values}; values: {present}"
        )
    if post:
        if settings.predicted_label:
            frame = frame.rename(columns={settings.predicted_label: PREDICTED})
        else:
            frame[PREDICTED] = endpoint_labels(frame.drop(columns=[settings.label]), settings.predictor, endpoint)
        wanted = [settings.facet, settings.label, PREDICTED]
    return frame.assign(**{column: categorical(frame[column]) for column in wanted})


def endpoint_labels(features: pd.DataFrame, predictor: dict, endpoint: str | None) -> np.ndarray:
    """The predicted labels of the model's endpoint for each row, asked as Clarify asks its shadow endpoint: the
    rows (no header) in batches of `predictor.content_type` text/csv, the label read from column `predictor.label`
    of each line of the `predictor.accept_type` text/csv answer."""
    if endpoint is None:
        raise InputError("the analysis config names a model (predictor): pass --endpoint, the URL of its endpoint")
    label = predictor.get("label")
    types = (predictor.get("content_type", "text/csv"), predictor.get("accept_type", "text/csv"))
    if not isinstance(label, int) or isinstance(label, bool) or types != ("text/csv", "text/csv"):
        raise InputError(
            f"predictor {predictor}: this step reads text/csv answers to text/csv requests, label a column index"
        )
    wait_until_ready(endpoint)
    labels = []
    for start in range(0, len(features), BATCH_ROWS):
        batch = features.iloc[start : start + BATCH_ROWS]
        where = f"{endpoint}: rows {start + 1}-{start + len(batch)}"
        request = urllib.request.Request(
            endpoint, batch.to_csv(header=False, index=False).encode(), {"Content-Type": types[0], "Accept": types[1]}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                lines = np.loadtxt(io.StringIO(response.read().decode()), delimiter=",", ndmin=2)
        except (urllib.error.URLError, OSError, ValueError) as error:  # no answer, an error status, not numbers
            raise InputError(f"{where}: {_first_line(error)}") from None
        if lines.shape[0] != len(batch) or lines.shape[1] <= label:
            raise InputError(f"{where}: {lines.shape[0]} answer line(s) of {lines.shape[1]} column(s), not one per row")
        labels.append(lines[:, label])
    return np.concatenate(labels).astype(np.int64)


def _first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def wait_until_ready(endpoint: str) -> None:
    """Wait for a starting endpoint: its /ping answers 200 (as SageMaker waits for InService)."""
    ping = endpoint.rsplit("/", 1)[0] + "/ping"
    deadline = time.monotonic() + ENDPOINT_WAIT_S
    while True:
        try:
            with urllib.request.urlopen(ping, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as error:
            if time.monotonic() > deadline:
                raise InputError(f"{ping}: the endpoint did not answer within {ENDPOINT_WAIT_S} s ({error})") from None
        time.sleep(0.5)


def analysis(frame: pd.DataFrame, settings: Settings) -> dict:
    """Clarify's analysis.json document for the stage's bias metrics."""
    label = LabelColumn(settings.label, frame[settings.label], settings.positive_label)
    post = settings.stage == "post_training"
    if post and not frame[PREDICTED].isin(settings.positive_label).any():  # smclarify refuses the whole report
        facets = not_computed(settings, "no predicted label is positive (the model flags no row at its threshold)")
    else:
        facets = bias_report(
            frame,
            FacetColumn(settings.facet, settings.facet_values),
            label,
            StageType.POST_TRAINING if post else StageType.PRE_TRAINING,
            LabelColumn(PREDICTED, frame[PREDICTED], settings.positive_label) if post else None,
            metrics=settings.metrics,
        )
    return {
        "version": "1.0",
        settings.section: {
            "label": settings.label,
            "label_value_or_threshold": label_value_or_threshold(frame[settings.label], settings.positive_label),
            "facets": {settings.facet: facets},
        },
    }


def not_computed(settings: Settings, reason: str) -> list[dict]:
    """The facet's report with each metric of the post-training stage not computed, as smclarify reports one."""
    functions = {f.__name__: f for f in smclarify.bias.metrics.POSTTRAINING_METRICS}
    metrics = [
        {"name": name, "description": metric_description(functions[name]), "value": None, "error": reason}
        for name in sorted(settings.metrics)
    ]
    return [{"value_or_threshold": facet_value_text(settings.facet_values), "metrics": metrics}]


def section_of(document: dict, where: str) -> str:
    """The bias section an analysis.json-shaped document holds (InputError if none, or both)."""
    found = [stage.section for stage in STAGES.values() if isinstance(document, dict) and stage.section in document]
    if len(found) != 1:
        expected = " or ".join(stage.section for stage in STAGES.values())
        raise InputError(f"{where}: not a Clarify bias analysis (expected one section: {expected})")
    return found[0]


def facet_reports(document: dict) -> list[tuple[str, dict]]:
    """(facet name, {"value_or_threshold", "metrics"}) for every facet value of an analysis.json-shaped document."""
    section = document[section_of(document, "analysis")]
    return [(facet, report) for facet, reports in section["facets"].items() for report in reports]


def metric_table(document: dict, where: str) -> dict[tuple[str, str, str], dict]:
    """{(facet, facet value, metric name): metric} of an analysis.json-shaped document (InputError if not one)."""
    section_of(document, where)
    try:
        return {
            (facet, str(report["value_or_threshold"]), metric["name"]): metric
            for facet, report in facet_reports(document)
            for metric in report["metrics"]
        }
    except (KeyError, TypeError, AttributeError) as error:
        message = f"{where}: not a Clarify bias analysis ({type(error).__name__}: {error})"
        raise InputError(message) from None


def number(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def drift_violations(calculated: dict, baseline: dict) -> list[dict]:
    """Clarify's bias drift rule: each metric of the baseline whose calculated value is farther from 0 than the
    baseline's, or was not computed, is a violation (constraint_violations.json entries)."""
    ours, limits = metric_table(calculated, "analysis"), metric_table(baseline, "baseline")
    found = []
    for (facet, facet_value, name), limit in sorted(limits.items()):
        entry = {"facet": facet, "facet_value": facet_value, "metric_name": name}
        entry.update(constraint_check_type="bias_drift_check", baseline=limit["value"])
        metric = ours.get((facet, facet_value, name))
        value = None if metric is None else metric.get("value")
        if not isinstance(value, int | float) or not math.isfinite(value):
            reason = metric.get("error", "no value") if metric else "not in the analysis"
            found.append({**entry, "value": None, "description": f"could not be computed: {reason}"})
        elif abs(value) > abs(limit["value"]):
            description = f"Value {number(value)} is farther from 0 than the baseline {number(limit['value'])}"
            found.append({**entry, "value": value, "description": description})
    return found


def markdown(document: dict, baseline: dict | None, found: list[dict]) -> str:
    """A short human-readable report: each metric, its baseline and whether it passed."""
    name = section_of(document, "analysis")
    section = document[name]
    limits = metric_table(baseline, "baseline") if baseline else {}
    failing = {(v["facet"], v["facet_value"], v["metric_name"]) for v in found}
    judged = "not judged (no baseline, or the check is skipped)" if baseline is None else f"{len(found)} violation(s)"
    lines = [
        f"# {name.removesuffix('_bias_metrics').replace('_', '-').capitalize()} bias report",
        "",
        f"Label `{section['label']}`, positive value {section['label_value_or_threshold']}; {judged}.",
    ]
    for facet, report in facet_reports(document):
        facet_value = str(report["value_or_threshold"])
        lines += ["", f"## Facet `{facet}` = {facet_value}", ""]
        lines += ["| metric | description | value | baseline | status |", "|---|---|---|---|---|"]
        for metric in report["metrics"]:
            key = (facet, facet_value, metric["name"])
            value = "error" if "error" in metric else number(metric["value"])
            limit = number(limits[key]["value"]) if key in limits else ""
            status = "VIOLATION" if key in failing else "ok" if limit else ""
            lines.append(f"| {metric['name']} | {metric['description']} | {value} | {limit} | {status} |")
    return "\n".join(lines) + "\n"


def failure_message(found: list[dict]) -> str:
    """One line naming each violated metric, its value and the baseline's."""
    return "bias check failed: " + "; ".join(
        f"{v['metric_name']} ({v['facet']}={v['facet_value']}) = {number(v['value'])}, baseline {number(v['baseline'])}"
        if v["value"] is not None
        else f"{v['metric_name']} ({v['facet']}={v['facet_value']}) {v['description']}"
        for v in found
    )


def json_text(document: dict) -> str:
    return json.dumps(document, indent=2) + "\n"


def write_texts(outputs: dict[Path, str], stale: Iterable[Path] = ()) -> None:
    """Write text files all or nothing, then remove the `stale` ones; raises atomic_outputs.OutputError (an
    OSError) naming the file."""
    atomic_outputs.write_all({path: atomic_outputs.text_writer(text) for path, text in outputs.items()}, stale)


def write_message(path: Path, message: str) -> None:
    """SageMaker shows the first 1 KB of /opt/ml/output/message as the job's ExitMessage; write it where its folder
    exists. A message file that cannot be written is skipped: the message is on stderr too."""
    if path.parent.is_dir():
        with contextlib.suppress(OSError):
            write_texts({path: message[:1024] + "\n"})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=PROCESSING / "input/data", help="CSV file or directory")
    parser.add_argument("--analysis-config", type=Path, help="Clarify's analysis_config.json (replaces the next flags)")
    parser.add_argument("--label", default="fraud")
    parser.add_argument("--positive-label", type=values, default=[1], help="comma-separated positive label values")
    parser.add_argument("--facet", default="customer_gender_female")
    parser.add_argument("--facet-values", type=values, default=[1], help="comma-separated sensitive facet values")
    parser.add_argument("--metrics", help="comma-separated metric names (default: the stage's usual ones)")
    parser.add_argument("--stage", choices=sorted(STAGES), default="pre_training", help="what the flags compute")
    parser.add_argument("--predicted-label", help="post-training: the dataset's column of predicted labels")
    parser.add_argument("--endpoint", help="post-training: the URL of the model's endpoint (/invocations)")
    parser.add_argument("--excluded-columns", default="", help="post-training: comma-separated columns to drop")
    baseline = parser.add_mutually_exclusive_group()
    baseline.add_argument("--baseline", type=Path, help="constraints to check against (analysis.json, or its folder)")
    baseline.add_argument("--thresholds", type=thresholds, help="METRIC=MAX_ABS_VALUE,...: the baseline as limits")
    parser.add_argument("--skip-check", type=boolean, default=False, help="true: compute, do not judge")
    parser.add_argument("--fail-on-violation", type=boolean, default=True, help="false: report violations, exit 0")
    parser.add_argument(
        "--register-new-baseline", type=boolean, default=False, help="true: drift baseline = calculated"
    )
    parser.add_argument("--drift-baseline-dir", type=Path, help="where constraints.json (drift-check baseline) goes")
    parser.add_argument("--output-dir", type=Path, default=PROCESSING / "output")
    parser.add_argument(
        "--message-file", type=Path, default=MESSAGE_FILE, help="failure message (when its folder exists)"
    )
    return parser.parse_args(argv)


def settings_of(args: argparse.Namespace) -> Settings:
    if args.analysis_config:
        return settings_from_analysis_config(args.analysis_config)
    try:
        metrics = metric_names(args.metrics, args.stage) if args.metrics else list(STAGES[args.stage].default_metrics)
    except argparse.ArgumentTypeError as error:
        raise InputError(f"--metrics: {error}") from None
    if args.stage == "post_training" and not args.predicted_label:
        raise InputError("--stage post_training needs --predicted-label, the dataset's column of predicted labels")
    excluded = tuple(c.strip() for c in args.excluded_columns.split(",") if c.strip())
    return Settings(
        args.label,
        args.positive_label,
        args.facet,
        args.facet_values,
        metrics,
        args.stage,
        args.predicted_label,
        None,
        excluded,
    )


def baseline_of(args: argparse.Namespace, settings: Settings) -> dict | None:
    """The baseline to check against (None: nothing to check against)."""
    if args.thresholds is not None:
        unmeasured = [m for m in args.thresholds if m not in settings.metrics]
        if unmeasured:
            raise InputError(f"--thresholds names metric(s) not in --metrics: {', '.join(unmeasured)}")
        return baseline_from_thresholds(args.thresholds, settings)
    if args.baseline is not None:
        document = read_json(args.baseline, "baseline", (ANALYSIS_FILE, DRIFT_BASELINE_FILE))
        metric_table(document, str(args.baseline))
        if section_of(document, str(args.baseline)) != settings.section:
            raise InputError(f"{args.baseline}: a baseline of {section_of(document, '')}, not {settings.section}")
        return document
    if args.drift_baseline_dir and not args.register_new_baseline:
        raise InputError(
            "no baseline for the drift check: pass --baseline or --thresholds, or --register-new-baseline true"
        )
    return None


def check(args: argparse.Namespace) -> int:
    """Compute, judge and write (all or nothing); the exit code: 1 for violations that fail the step, else 0."""
    settings = settings_of(args)
    baseline = baseline_of(args, settings)
    frame = read_dataset(args.dataset, settings, args.endpoint)
    document = analysis(frame, settings)
    judged = baseline is not None and not args.skip_check
    found = drift_violations(document, baseline) if judged else []
    outputs = {
        args.output_dir / ANALYSIS_FILE: json_text(document),
        args.output_dir / REPORT_FILE: markdown(document, baseline if judged else None, found),
    }
    if found:
        outputs[args.output_dir / VIOLATIONS_FILE] = json_text({"version": "1.0", "violations": found})
    if args.drift_baseline_dir:
        drift = document if args.register_new_baseline else baseline
        outputs[args.drift_baseline_dir / DRIFT_BASELINE_FILE] = json_text(drift)
    write_texts(outputs, stale=() if found else [args.output_dir / VIOLATIONS_FILE])  # an earlier run's verdict goes
    verdict = "check skipped" if args.skip_check else f"{len(found)} violation(s)" if judged else "no baseline"
    log.info("wrote %s and %s under %s (%s)", ANALYSIS_FILE, REPORT_FILE, args.output_dir, verdict)
    if found and args.fail_on_violation:
        message = failure_message(found)
        print(message, file=sys.stderr)
        write_message(args.message_file, message)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        return check(args)
    except (InputError, OSError) as error:  # OSError: an output that cannot be written, named by write_texts
        message = f"bias: error: {error}"
        print(message, file=sys.stderr)
        write_message(args.message_file, message)
        return 2 if isinstance(error, InputError) else 1


if __name__ == "__main__":
    sys.exit(main())
