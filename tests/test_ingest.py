"""processing/ingest.py: feature groups against moto, PutRecord against a fake at botocore's HTTP layer,
and the script run bare against the local Feature Store of local runs.

moto has no Feature Store runtime (PutRecord), and botocore's Stubber answers before the retry handler
and in a fixed order, so it can neither show throttling being retried nor serve concurrent threads.
FakeRuntime instead answers botocore's `before-send` event with HTTP responses: the real client
serialises each record, and its adaptive retry mode retries throttling as it would against AWS.
moto's create_feature_group crashes without an OfflineStoreConfig, so the moto tests always pass
--offline-store-uri; the online-only request is checked on its own.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import boto3
import pandas as pd
import pytest
from botocore.awsrequest import AWSResponse
from conftest import run_script
from moto import mock_aws

import ingest
from pipelines.local.feature_store import FeatureStore, serving
from pipelines.local.runner import feature_store_endpoints

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/feature-store"
KMS = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
HOUR = 1_700_000_000.0  # 2023-11-14T22:13:20Z

CLAIMS = pd.DataFrame(
    {
        "policy_id": [1, 2, 3],
        "event_time": [HOUR, HOUR + 7200, HOUR + 10],
        "num_injuries": [0, 2, 1],
        "vehicle_claim": [1200.5, 8000.0, 15.25],
        "fraud": [0, 1, 0],
    }
)
CUSTOMERS = pd.DataFrame(
    {
        "policy_id": [1, 2, 3],
        "event_time": [HOUR, HOUR, HOUR],
        "customer_age": [30, 41, 57],
        "policy_state": ["ca", "wa", "az"],
    }
)


@pytest.fixture
def features(tmp_path: Path) -> Path:
    folder = tmp_path / "features"
    folder.mkdir()
    CLAIMS.to_csv(folder / "claims.csv", index=False)
    CUSTOMERS.to_csv(folder / "customers.csv", index=False)
    return folder


def store_args(features: Path, *extra: str) -> list[str]:
    return [
        "--features", str(features), "--claims-group", "claims-fg", "--customers-group", "customers-fg",
        "--role-arn", ROLE, "--offline-store-uri", "s3://bucket/feature-store", "--poll-interval", "0",
        *extra,
    ]  # fmt: skip


class _Body:
    def __init__(self, body: bytes):
        self._body = body

    def stream(self, **_kwargs):
        yield self._body


class FakeRuntime:
    """PutRecord answered at the HTTP layer: throttles the first `throttled` attempts, rejects `rejected` ids."""

    def __init__(self, throttled: int = 0, rejected: frozenset[int] = frozenset()):
        self.throttled = throttled
        self.rejected = rejected
        self.attempts = 0
        self.stored: dict[tuple[str, int], dict[str, str]] = {}
        self._lock = threading.Lock()

    def __call__(self, request, **_kwargs) -> AWSResponse:
        body = json.loads(request.body)
        group = request.url.rstrip("/").split("/")[-1]
        record = {f["FeatureName"]: f["ValueAsString"] for f in body["Record"]}
        policy_id = int(record["policy_id"])
        with self._lock:
            self.attempts += 1
            if self.attempts <= self.throttled:
                return self._error(400, "ThrottlingException", "Rate exceeded")
            if policy_id in self.rejected:
                return self._error(400, "ValidationException", f"bad record {policy_id}")
            self.stored[group, policy_id] = record
        return AWSResponse(request.url, 200, {}, _Body(b"{}"))

    @staticmethod
    def _error(status: int, code: str, message: str) -> AWSResponse:
        body = json.dumps({"__type": code, "message": message}).encode()
        return AWSResponse("", status, {"x-amzn-ErrorType": code}, _Body(body))


@pytest.fixture
def aws(monkeypatch):
    """moto for the control plane; a session whose clients PutRecord to a FakeRuntime and log CreateFeatureGroup."""
    monkeypatch.setattr("time.sleep", lambda _seconds: None)  # botocore's retry backoff
    with mock_aws():
        session = boto3.session.Session(region_name=REGION)
        session.runtime = FakeRuntime()
        session.create_requests = []
        session.events.register(
            "before-send.sagemaker-featurestore-runtime.PutRecord", lambda **kw: session.runtime(**kw)
        )
        session.events.register(
            "provide-client-params.sagemaker.CreateFeatureGroup",
            lambda params, **_kw: session.create_requests.append(params),
        )
        yield session


def test_creates_groups_with_definitions_stores_and_kms(features, aws):
    assert ingest.main(store_args(features, "--kms-key-id", KMS), session=aws) == 0

    sagemaker = aws.client("sagemaker")
    claims = sagemaker.describe_feature_group(FeatureGroupName="claims-fg")
    assert claims["RecordIdentifierFeatureName"] == "policy_id"
    assert claims["EventTimeFeatureName"] == "event_time"
    assert claims["FeatureDefinitions"] == [
        {"FeatureName": "policy_id", "FeatureType": "Integral"},
        {"FeatureName": "event_time", "FeatureType": "Fractional"},
        {"FeatureName": "num_injuries", "FeatureType": "Integral"},
        {"FeatureName": "vehicle_claim", "FeatureType": "Fractional"},
        {"FeatureName": "fraud", "FeatureType": "Integral"},
    ]
    assert claims["RoleArn"] == ROLE
    assert claims["OfflineStoreConfig"]["S3StorageConfig"]["S3Uri"] == "s3://bucket/feature-store"
    assert claims["OfflineStoreConfig"]["S3StorageConfig"]["KmsKeyId"] == KMS
    assert claims["OfflineStoreConfig"]["DisableGlueTableCreation"] is False
    customers = sagemaker.describe_feature_group(FeatureGroupName="customers-fg")
    assert {"FeatureName": "policy_state", "FeatureType": "String"} in customers["FeatureDefinitions"]
    # moto does not keep OnlineStoreConfig: check the requests the script sent
    assert [r["OnlineStoreConfig"] for r in aws.create_requests] == [
        {"EnableOnlineStore": True, "SecurityConfig": {"KmsKeyId": KMS}}
    ] * 2


def test_online_only_group_has_no_offline_store(features):
    args = ingest.parse_args(["--features", str(features), "--claims-group", "c", "--customers-group", "u"])
    request = ingest.create_request(ingest.read_table(features / "claims.csv", "claims", "c"), args)
    assert "OfflineStoreConfig" not in request and "RoleArn" not in request
    assert request["OnlineStoreConfig"] == {"EnableOnlineStore": True}


def test_a_group_needs_a_store(features, capsys):
    argv = ["--features", str(features), "--claims-group", "c", "--customers-group", "u", "--no-online-store"]
    assert ingest.main(argv) == 2
    assert "a feature group needs a store" in capsys.readouterr().err


def test_puts_every_record_with_typed_values(features, aws):
    assert ingest.main(store_args(features, "--workers", "3"), session=aws) == 0

    stored = aws.runtime.stored
    assert sorted(stored) == [(g, p) for g in ("claims-fg", "customers-fg") for p in (1, 2, 3)]
    assert stored["claims-fg", 2] == {
        "policy_id": "2",
        "event_time": "1700007200.0",
        "num_injuries": "2",
        "vehicle_claim": "8000.0",
        "fraud": "1",
    }
    assert stored["customers-fg", 3]["policy_state"] == "az"


def test_existing_matching_group_is_reused(features, aws):
    assert ingest.main(store_args(features), session=aws) == 0
    assert ingest.main(store_args(features), session=aws) == 0
    assert len(aws.runtime.stored) == 6


def test_existing_group_with_other_columns_is_an_error(features, aws, capsys):
    assert ingest.main(store_args(features), session=aws) == 0
    changed = CLAIMS.drop(columns="fraud").assign(num_injuries=CLAIMS["num_injuries"] * 1.5, extra=1)
    changed.to_csv(features / "claims.csv", index=False)

    assert ingest.main(store_args(features), session=aws) == 1
    error = capsys.readouterr().err
    assert "feature group claims-fg does not match claims.csv" in error
    assert "not in the group: extra" in error
    assert "not in the table: fraud" in error
    assert "num_injuries (group Integral, table Fractional)" in error


def test_throttled_puts_are_retried(features, aws, monkeypatch):
    # after a throttle the adaptive mode's client-side rate limiter waits seconds per request: not here
    monkeypatch.setattr("botocore.retries.bucket.TokenBucket.acquire", lambda *_args, **_kwargs: True)
    aws.runtime.throttled = 4
    assert ingest.main(store_args(features, "--max-attempts", "5"), session=aws) == 0
    assert len(aws.runtime.stored) == 6
    assert aws.runtime.attempts == 10


def test_throttling_beyond_max_attempts_fails_the_record(features, aws, monkeypatch, capsys):
    monkeypatch.setattr("botocore.retries.bucket.TokenBucket.acquire", lambda *_args, **_kwargs: True)
    aws.runtime.throttled = 2
    assert ingest.main(store_args(features, "--max-attempts", "2", "--workers", "1"), session=aws) == 1
    assert "claims-fg: 1 record(s) failed (policy_id 1: " in capsys.readouterr().err
    assert aws.runtime.attempts == 7


def test_failed_records_fail_the_step_naming_policy_ids(features, aws, capsys):
    aws.runtime.rejected = frozenset({2})
    assert ingest.main(store_args(features), session=aws) == 1
    error = capsys.readouterr().err
    assert "claims-fg: 1 record(s) failed (policy_id 2: " in error
    assert "ValidationException" in error and "bad record 2" in error
    assert len(aws.runtime.stored) == 4


def answer_describe(session, *statuses: dict) -> list[dict]:
    """Make DescribeFeatureGroup answer these descriptions in turn (moto's groups are Created at once)."""
    answers = list(statuses)
    session.events.register(
        "before-call.sagemaker.DescribeFeatureGroup",
        lambda **_kw: (AWSResponse(None, 200, {}, None), answers.pop(0)),
    )
    return answers


def test_waits_while_the_group_is_creating(features, aws):
    created = {
        "FeatureGroupStatus": "Created",
        "RecordIdentifierFeatureName": "policy_id",
        "EventTimeFeatureName": "event_time",
    }
    claims = [{"FeatureName": n, "FeatureType": ingest.feature_type(n, CLAIMS[n])} for n in CLAIMS]
    customers = [{"FeatureName": n, "FeatureType": ingest.feature_type(n, CUSTOMERS[n])} for n in CUSTOMERS]
    answers = answer_describe(
        aws,
        {"FeatureGroupStatus": "Creating"},
        {"FeatureGroupStatus": "Creating"},
        {**created, "FeatureDefinitions": claims},
        {**created, "FeatureDefinitions": customers},
    )
    assert ingest.main(store_args(features), session=aws) == 0
    assert answers == []


def test_failed_group_creation_is_reported(features, aws, capsys):
    answer_describe(aws, {"FeatureGroupStatus": "CreateFailed", "FailureReason": "role cannot write to the bucket"})
    assert ingest.main(store_args(features), session=aws) == 1
    assert "feature group claims-fg: status CreateFailed: role cannot write to the bucket" in capsys.readouterr().err


def test_group_that_stays_creating_times_out(features, aws, capsys):
    answer_describe(aws, *[{"FeatureGroupStatus": "Creating"}] * 3)
    assert ingest.main(store_args(features, "--create-timeout", "0"), session=aws) == 1
    assert "feature group claims-fg: still Creating after 0 s" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("table", "frame", "message"),
    [
        ("customers", None, "customers.csv: file not found"),
        ("claims", CLAIMS.drop(columns="event_time"), "claims.csv: missing column(s) event_time"),
        ("customers", CUSTOMERS.drop(columns="policy_id"), "customers.csv: missing column(s) policy_id"),
        ("claims", CLAIMS.assign(event_time="soon"), "claims.csv: column 'event_time' must be numeric"),
        ("claims", CLAIMS.assign(is_deleted=0), "claims.csv: column(s) is_deleted: names Feature Store reserves"),
        (
            "claims",
            CLAIMS.assign(event_time=[HOUR, float("inf"), -1.0]),
            "claims.csv: column 'event_time': expected epoch seconds in [0, 253402300799]; line 3: inf, line 4: -1.0",
        ),
    ],
)
def test_bad_input_exits_2_before_any_aws_call(features, capsys, table, frame, message):
    path = features / f"{table}.csv"
    path.unlink()
    if frame is not None:
        frame.to_csv(path, index=False)
    assert ingest.main(store_args(features), session="no session: the tables are read first") == 2
    assert message in capsys.readouterr().err


def test_runs_bare_on_preprocess_output_without_the_sdk(splits, tmp_path):
    """As in the step image: `python processing/ingest.py`, with no SageMaker SDK importable."""
    blocker = tmp_path / "no-sdk" / "sagemaker"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('the step image has no SageMaker SDK')\n")
    store = FeatureStore(tmp_path / "feature-store.json", REGION)
    with serving(store, "127.0.0.1") as url:
        env = {**feature_store_endpoints(url), "PYTHONPATH": str(blocker.parent), "AWS_ACCESS_KEY_ID": "l"}
        env.update(AWS_SECRET_ACCESS_KEY="l", AWS_DEFAULT_REGION=REGION)
        result = run_script("processing/ingest.py", *store_args(splits / "features"), env=env)
    assert result.returncode == 0, result.stderr
    expected = pd.read_csv(splits / "features" / "claims.csv")
    assert sorted(store.online["claims-fg"], key=int) == [str(p) for p in sorted(expected["policy_id"])]
    assert len(store.offline["customers-fg"]) == len(pd.read_csv(splits / "features" / "customers.csv"))
