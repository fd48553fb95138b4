"""Pre-training data bias with smclarify (the library behind SageMaker Clarify): Clarify's metrics and analysis.json.

Runs in a SageMaker processing container (defaults under /opt/ml/processing) or bare:

    python processing/bias.py --dataset out/headered/train.csv --output-dir out/bias \
        --thresholds DPL=0.1,KL=0.1,JS=0.05,TVD=0.1,KS=0.1

Writes, under the output directory, before judging the thresholds:
    analysis.json     Clarify's shape: {"version": "1.0", "pre_training_bias_metrics": {"label",
                      "label_value_or_threshold", "facets": {<facet>: [{"value_or_threshold",
                      "metrics": [{"name", "description", "value"}, ...]}]}}}
    violations.json   {"version": "1.0", "violations": [...]}: metrics whose |value| exceeds their threshold,
                      and metrics that could not be computed
    report.md         the metrics as a table

A violation fails the step like a ClarifyCheckStep: exit code 1, with a message naming each metric, its
value and its threshold on stderr and in /opt/ml/output/message (the processing job's ExitMessage).
Bad input (no dataset, a missing label or facet column, a facet value absent from the data) exits with code 2.

The facet and the label are treated as categorical. (smclarify would call any integer column with more
than 5% distinct values continuous, so a 0/1 column of fewer than 40 rows would become a threshold.)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pandas as pd
import smclarify.bias.metrics
from smclarify.bias.report import FacetColumn, LabelColumn, StageType, bias_report, label_value_or_threshold

log = logging.getLogger("bias")
PROCESSING = Path("/opt/ml/processing")
MESSAGE_FILE = Path("/opt/ml/output/message")
METRICS = ("CI", "DPL", "KL", "JS", "LP", "TVD", "KS")
KNOWN_METRICS = sorted(f.__name__ for f in smclarify.bias.metrics.PRETRAINING_METRICS)


class InputError(ValueError):
    """Input the step cannot use (exit code 2)."""


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


def metric_names(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in KNOWN_METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown metric(s) {unknown}; pre-training metrics: {', '.join(KNOWN_METRICS)}"
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


def resolve_dataset(path: Path) -> Path:
    """A CSV file, or a directory holding train.csv or exactly one CSV (as a processing input is)."""
    if path.is_file():
        return path
    if path.is_dir():
        candidates = [path / "train.csv"] if (path / "train.csv").is_file() else sorted(path.glob("*.csv"))
        if len(candidates) == 1:
            return candidates[0]
        raise InputError(f"{path}: expected train.csv or exactly one CSV file, found {len(candidates)}")
    raise InputError(f"{path}: file not found")


def categorical(column: pd.Series) -> pd.Series:
    """A column smclarify reads as categorical; pandas string dtypes become object first (smclarify rejects them)."""
    if not pd.api.types.is_numeric_dtype(column):
        column = column.astype(object)
    return column.astype("category")


def read_dataset(args: argparse.Namespace) -> pd.DataFrame:
    """The label and facet columns of the dataset, checked and made categorical."""
    path = resolve_dataset(args.dataset)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a readable CSV file ({error})") from None
    missing = [c for c in (args.label, args.facet) if c not in frame]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}; columns: {', '.join(frame.columns)}")
    frame = frame[[args.facet, args.label]]
    if frame.empty:
        raise InputError(f"{path}: no data rows")
    for column in frame:
        if frame[column].isna().any():
            raise InputError(f"{path}: column '{column}' has {int(frame[column].isna().sum())} empty value(s)")
    if not frame[args.facet].isin(args.facet_values).any():
        present = sorted(frame[args.facet].astype(str).unique())
        raise InputError(
            f"{path}: column '{args.facet}': no row has facet value(s) {args.facet_values}; values: {present}"
        )
    return frame.apply(categorical)


def analysis(frame: pd.DataFrame, args: argparse.Namespace) -> dict:
    """Clarify's analysis.json document for the pre-training bias metrics."""
    label = LabelColumn(args.label, frame[args.label], list(args.positive_label))
    facets = bias_report(
        frame, FacetColumn(args.facet, list(args.facet_values)), label, StageType.PRE_TRAINING, metrics=args.metrics
    )
    return {
        "version": "1.0",
        "pre_training_bias_metrics": {
            "label": args.label,
            "label_value_or_threshold": label_value_or_threshold(frame[args.label], list(args.positive_label)),
            "facets": {args.facet: facets},
        },
    }


def facet_reports(document: dict) -> list[tuple[str, dict]]:
    """(facet name, {"value_or_threshold", "metrics"}) for every facet value in the document."""
    facets = document["pre_training_bias_metrics"]["facets"]
    return [(facet, facet_report) for facet, reports in facets.items() for facet_report in reports]


def number(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def violations(document: dict, limits: dict[str, float]) -> list[dict]:
    """Metrics whose |value| exceeds their threshold (or is not a number), and metrics that could not be computed."""
    found = []
    for facet, facet_report in facet_reports(document):
        for metric in facet_report["metrics"]:
            name = metric["name"]
            entry = {"facet": facet, "facet_value": facet_report["value_or_threshold"], "metric_name": name}
            if "error" in metric:
                found.append({**entry, "description": f"could not be computed: {metric['error']}"})
            elif name in limits and not abs(float(metric["value"])) <= limits[name]:
                description = f"|{number(metric['value'])}| exceeds the threshold {limits[name]}"
                found.append({**entry, "value": metric["value"], "threshold": limits[name], "description": description})
    return found


def markdown(document: dict, limits: dict[str, float], found: list[dict]) -> str:
    """A short human-readable report."""
    section = document["pre_training_bias_metrics"]
    failing = {(v["facet"], v["facet_value"], v["metric_name"]) for v in found}
    lines = [
        "# Pre-training bias report",
        "",
        f"Label `{section['label']}`, positive value {section['label_value_or_threshold']}; {len(found)} violation(s).",
    ]
    for facet, facet_report in facet_reports(document):
        facet_value = facet_report["value_or_threshold"]
        lines += ["", f"## Facet `{facet}` = {facet_value}", ""]
        lines += ["| metric | description | value | threshold | status |", "|---|---|---|---|---|"]
        for metric in facet_report["metrics"]:
            value = "error" if "error" in metric else number(metric["value"])
            status = "VIOLATION" if (facet, facet_value, metric["name"]) in failing else "ok"
            threshold = limits.get(metric["name"], "")
            lines.append(f"| {metric['name']} | {metric['description']} | {value} | {threshold} | {status} |")
    return "\n".join(lines) + "\n"


def failure_message(found: list[dict]) -> str:
    """One line naming each violated metric, its value and its threshold."""
    return "bias check failed: " + "; ".join(
        f"{v['metric_name']} ({v['facet']}={v['facet_value']}) = {number(v['value'])}, threshold {v['threshold']}"
        if "threshold" in v
        else f"{v['metric_name']} ({v['facet']}={v['facet_value']}) {v['description']}"
        for v in found
    )


def write_json(path: Path, document: dict) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n")


def write_message(path: Path, message: str) -> None:
    """SageMaker shows the first 1 KB of /opt/ml/output/message as the job's ExitMessage; write it where it exists."""
    if path.parent.is_dir():
        path.write_text(message[:1024] + "\n", encoding="utf-8")


def check_thresholds(args: argparse.Namespace) -> None:
    unmeasured = [m for m in args.thresholds if m not in args.metrics]
    if unmeasured:
        raise InputError(f"--thresholds names metric(s) not in --metrics: {', '.join(unmeasured)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=PROCESSING / "input/data", help="CSV file or directory")
    parser.add_argument("--label", default="fraud")
    parser.add_argument("--positive-label", type=values, default=[1], help="comma-separated positive label values")
    parser.add_argument("--facet", default="customer_gender_female")
    parser.add_argument("--facet-values", type=values, default=[1], help="comma-separated sensitive facet values")
    parser.add_argument("--metrics", type=metric_names, default=list(METRICS), help="comma-separated metric names")
    parser.add_argument(
        "--thresholds", type=thresholds, default={}, help="METRIC=MAX_ABS_VALUE,... (none: report only)"
    )
    parser.add_argument("--output-dir", type=Path, default=PROCESSING / "output")
    parser.add_argument(
        "--message-file", type=Path, default=MESSAGE_FILE, help="failure message (when its folder exists)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        check_thresholds(args)
        frame = read_dataset(args)
    except InputError as error:
        print(f"bias: error: {error}", file=sys.stderr)
        write_message(args.message_file, f"bias: error: {error}")
        return 2
    document = analysis(frame, args)
    found = violations(document, args.thresholds)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    write_json(args.output_dir / "analysis.json", document)
    write_json(args.output_dir / "violations.json", {"version": "1.0", "violations": found})
    (args.output_dir / "report.md").write_text(markdown(document, args.thresholds, found))
    log.info("wrote analysis.json, violations.json and report.md under %s", args.output_dir)
    if found:
        message = failure_message(found)
        print(message, file=sys.stderr)
        write_message(args.message_file, message)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
