"""Ingest the feature tables (claims, customers) into SageMaker Feature Store.

Runs in a SageMaker processing container (defaults under /opt/ml/processing) or bare:

    python processing/ingest.py --features out/features --claims-group fraud-claims \
        --customers-group fraud-customers --role-arn arn:aws:iam::123456789012:role/r \
        --offline-store-uri s3://bucket/fraud/feature-store --online-store

Reads claims.csv and customers.csv (policy_id, event_time, features) from --features.

Creates each feature group when missing (record identifier policy_id, event time event_time, definitions
from the CSV dtypes), waits until it is Created, checks that an existing group's definitions match the
table, then puts every row with PutRecord from --workers threads. Throttling and 5xx errors are retried by
botocore's adaptive retry mode (--max-attempts per record). Any record that still fails makes the step fail
(exit 1), naming a few policy ids and the error. Local runs point it at a local Feature Store
(pipelines/local/feature_store.py) through AWS_ENDPOINT_URL_SAGEMAKER(_FEATURESTORE_RUNTIME).

Bad input (a missing file, a missing policy_id/event_time column, an event time outside the data contract's
range) exits with code 2 before any write.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pandas as pd
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from features import EVENT_TIMES, EVENT_TIMES_TEXT, describe_rows

log = logging.getLogger("ingest")

RECORD_ID = "policy_id"
EVENT_TIME = "event_time"
TABLES = ("claims", "customers")
CHUNK_ROWS = 500
FAILURES_SHOWN = 5
RESERVED_COLUMNS = ("write_time", "api_invocation_time", "is_deleted")  # added by the offline store


class InputError(ValueError):
    """Input the step cannot use (exit code 2)."""


class FeatureStoreError(RuntimeError):
    """A feature group that cannot be used, or records that could not be ingested (exit code 1)."""


@dataclass
class Table:
    """One feature table and the feature group it goes to."""

    name: str
    group: str
    frame: pd.DataFrame
    definitions: list[dict[str, str]] = field(init=False)

    def __post_init__(self) -> None:
        self.definitions = [{"FeatureName": c, "FeatureType": feature_type(c, self.frame[c])} for c in self.frame]


def feature_type(column: str, values: pd.Series) -> str:
    """Feature Store type of a column: Integral, Fractional or String (event_time is always Fractional)."""
    if column == EVENT_TIME or pd.api.types.is_float_dtype(values):
        return "Fractional"
    if pd.api.types.is_integer_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "Integral"
    return "String"


def read_table(path: Path, name: str, group: str) -> Table:
    """Read and check one feature table."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: not a readable CSV file ({error})") from None
    missing = [c for c in (RECORD_ID, EVENT_TIME) if c not in frame]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
    reserved = [c for c in RESERVED_COLUMNS if c in frame]
    if reserved:
        raise InputError(f"{path}: column(s) {', '.join(reserved)}: names Feature Store reserves")
    if frame.empty:
        raise InputError(f"{path}: no data rows")
    for column in (RECORD_ID, EVENT_TIME):
        if not pd.api.types.is_numeric_dtype(frame[column]) or frame[column].isna().any():
            raise InputError(f"{path}: column '{column}' must be numeric with no empty values")
    frame[EVENT_TIME] = frame[EVENT_TIME].astype("float64")
    outside = ~frame[EVENT_TIME].between(*EVENT_TIMES)
    if outside.any():
        message = f"column '{EVENT_TIME}': expected {EVENT_TIMES_TEXT}; {describe_rows(frame, outside, EVENT_TIME)}"
        raise InputError(f"{path}: {message}")
    return Table(name, group, frame)


def read_tables(args: argparse.Namespace) -> list[Table]:
    groups = {"claims": args.claims_group, "customers": args.customers_group}
    return [read_table(args.features / f"{name}.csv", name, groups[name]) for name in TABLES]


# --- feature groups ---------------------------------------------------------


def create_request(table: Table, args: argparse.Namespace) -> dict:
    """CreateFeatureGroup arguments for a table."""
    request = {
        "FeatureGroupName": table.group,
        "RecordIdentifierFeatureName": RECORD_ID,
        "EventTimeFeatureName": EVENT_TIME,
        "FeatureDefinitions": table.definitions,
        "OnlineStoreConfig": {"EnableOnlineStore": args.online_store},
        "Description": f"Fraud detection {table.name} features, keyed by {RECORD_ID}",
    }
    if args.online_store and args.kms_key_id:
        request["OnlineStoreConfig"]["SecurityConfig"] = {"KmsKeyId": args.kms_key_id}
    if args.offline_store_uri:
        storage = {"S3Uri": args.offline_store_uri}
        if args.kms_key_id:
            storage["KmsKeyId"] = args.kms_key_id
        request["OfflineStoreConfig"] = {"S3StorageConfig": storage, "DisableGlueTableCreation": False}
    if args.role_arn:
        request["RoleArn"] = args.role_arn
    return request


def create_group(sagemaker, table: Table, args: argparse.Namespace) -> None:
    """Create the feature group; one that exists already is kept (and checked after it is Created)."""
    try:
        sagemaker.create_feature_group(**create_request(table, args))
        log.info("creating feature group %s", table.group)
    except ClientError as error:
        if error.response["Error"]["Code"] != "ResourceInUse":
            raise FeatureStoreError(f"feature group {table.group}: cannot create it: {error}") from None
        log.info("feature group %s exists", table.group)


def wait_until_created(sagemaker, group: str, timeout_s: float, poll_s: float) -> dict:
    """Poll DescribeFeatureGroup until the group is Created; returns the description."""
    deadline = time.monotonic() + timeout_s
    while True:
        description = sagemaker.describe_feature_group(FeatureGroupName=group)
        status = description.get("FeatureGroupStatus")
        if status == "Created":
            return description
        if status != "Creating":
            reason = description.get("FailureReason", "no failure reason given")
            raise FeatureStoreError(f"feature group {group}: status {status}: {reason}")
        if time.monotonic() >= deadline:
            raise FeatureStoreError(f"feature group {group}: still Creating after {timeout_s:.0f} s")
        time.sleep(poll_s)


def check_definitions(table: Table, description: dict) -> None:
    """The group's key, event time and feature definitions must match the table's columns."""
    ours = {d["FeatureName"]: d["FeatureType"] for d in table.definitions}
    theirs = {d["FeatureName"]: d["FeatureType"] for d in description["FeatureDefinitions"]}
    problems = []
    for key, expected in (("RecordIdentifierFeatureName", RECORD_ID), ("EventTimeFeatureName", EVENT_TIME)):
        if description.get(key) != expected:
            problems.append(f"{key} is {description.get(key)!r}, the table needs {expected!r}")
    if only_table := [c for c in ours if c not in theirs]:
        problems.append(f"not in the group: {', '.join(only_table)}")
    if only_group := [c for c in theirs if c not in ours]:
        problems.append(f"not in the table: {', '.join(only_group)}")
    if retyped := [f"{c} (group {theirs[c]}, table {t})" for c, t in ours.items() if theirs.get(c, t) != t]:
        problems.append(f"different types: {', '.join(retyped)}")
    if problems:
        raise FeatureStoreError(
            f"feature group {table.group} does not match {table.name}.csv: {'; '.join(problems)}. "
            "Use a new group name, or delete the group, to ingest this table."
        )


def prepare_groups(sagemaker, tables: list[Table], args: argparse.Namespace) -> None:
    """Create both groups first (so they are created concurrently), then wait for and check each."""
    for table in tables:
        create_group(sagemaker, table, args)
    for table in tables:
        check_definitions(table, wait_until_created(sagemaker, table.group, args.create_timeout, args.poll_interval))


# --- records ----------------------------------------------------------------


@dataclass
class Outcome:
    """Records put and records failed (policy id, error) for one chunk or one group."""

    ingested: int = 0
    failures: list[tuple[object, str]] = field(default_factory=list)

    def add(self, other: Outcome) -> None:
        self.ingested += other.ingested
        self.failures.extend(other.failures)


def value_formatter(kind: str) -> Callable[[object], str]:
    """PutRecord's ValueAsString for a value of a feature type."""
    if kind == "Integral":
        return lambda v: str(int(v))
    if kind == "Fractional":
        return lambda v: repr(float(v))
    return str


def records(table: Table, rows: pd.DataFrame) -> Iterator[tuple[object, list[dict[str, str]]]]:
    """(policy id, PutRecord Record) per row; empty values are left out of the record."""
    names = [d["FeatureName"] for d in table.definitions]
    formats = [value_formatter(d["FeatureType"]) for d in table.definitions]
    key = names.index(RECORD_ID)
    for row in rows.itertuples(index=False, name=None):
        record = [
            {"FeatureName": n, "ValueAsString": f(v)}
            for n, f, v in zip(names, formats, row, strict=True)
            if not pd.isna(v)
        ]
        yield row[key], record


def put_rows(runtime, table: Table, rows: pd.DataFrame) -> Outcome:
    """Put one chunk of rows; botocore retries throttling and 5xx, what still fails is recorded."""
    outcome = Outcome()
    for policy_id, record in records(table, rows):
        try:
            runtime.put_record(FeatureGroupName=table.group, Record=record)
            outcome.ingested += 1
        except (ClientError, BotoCoreError) as error:
            outcome.failures.append((policy_id, str(error)))
    return outcome


def ingest_records(runtime, tables: list[Table], workers: int) -> dict[str, Outcome]:
    """Put every row of every table, in chunks, from one pool of threads; returns the outcome per group."""
    outcomes = {table.group: Outcome() for table in tables}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            (table.group, pool.submit(put_rows, runtime, table, table.frame.iloc[start : start + CHUNK_ROWS]))
            for table in tables
            for start in range(0, len(table.frame), CHUNK_ROWS)
        ]
        for group, future in futures:
            outcomes[group].add(future.result())
    return outcomes


def report(outcomes: dict[str, Outcome]) -> None:
    """Log the counts; raise naming a few failed policy ids when any record failed."""
    failed = []
    for group, outcome in outcomes.items():
        log.info("%s: %d records ingested, %d failed", group, outcome.ingested, len(outcome.failures))
        if outcome.failures:
            shown = "; ".join(f"policy_id {p}: {e}" for p, e in outcome.failures[:FAILURES_SHOWN])
            failed.append(f"{group}: {len(outcome.failures)} record(s) failed ({shown})")
    if failed:
        raise FeatureStoreError(" | ".join(failed))


def run_feature_store(tables: list[Table], args: argparse.Namespace, session: boto3.session.Session) -> None:
    if not (args.online_store or args.offline_store_uri):
        raise InputError("a feature group needs a store: pass --online-store or --offline-store-uri")
    retries = Config(
        retries={"mode": "adaptive", "total_max_attempts": args.max_attempts},
        max_pool_connections=max(10, args.workers),
    )
    prepare_groups(session.client("sagemaker", config=retries), tables, args)
    report(ingest_records(session.client("sagemaker-featurestore-runtime", config=retries), tables, args.workers))


# --- command line -------------------------------------------------------------------------------


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--features",
        type=Path,
        default=Path("/opt/ml/processing/input/features"),
        help="directory holding claims.csv and customers.csv",
    )
    parser.add_argument("--claims-group", required=True)
    parser.add_argument("--customers-group", required=True)
    parser.add_argument("--role-arn", help="role Feature Store uses for the offline store (new groups)")
    parser.add_argument("--offline-store-uri", help="s3://bucket/prefix of the offline store (new groups)")
    parser.add_argument("--online-store", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--kms-key-id", help="KMS key for the online and offline stores (new groups)")
    parser.add_argument("--workers", type=positive, default=4, help="PutRecord threads")
    parser.add_argument("--max-attempts", type=positive, default=5, help="attempts per request (adaptive retry)")
    parser.add_argument("--region", help="AWS region (default: the environment's)")
    parser.add_argument("--create-timeout", type=float, default=900, help="seconds to wait for a new group")
    parser.add_argument("--poll-interval", type=float, default=5, help="seconds between status checks")
    args = parser.parse_args(argv)
    if args.claims_group == args.customers_group:
        parser.error("--claims-group and --customers-group must differ")
    return args


def main(argv: list[str] | None = None, session: boto3.session.Session | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        tables = read_tables(args)
        run_feature_store(tables, args, session or boto3.session.Session(region_name=args.region))
    except InputError as error:
        print(f"ingest: error: {error}", file=sys.stderr)
        return 2
    except (FeatureStoreError, ClientError, BotoCoreError) as error:
        print(f"ingest: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
