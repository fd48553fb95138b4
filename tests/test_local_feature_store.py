"""The local Feature Store (pipelines/local/feature_store.py): the API as boto3 sees it over HTTP, and
processing/ingest.py's feature-store mode run against it with the pipeline's own arguments."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager

import boto3
import pandas as pd
import pyarrow.parquet as pq
import pytest
from botocore.exceptions import ClientError

import ingest
from pipelines.local.feature_store import FeatureStore, serving
from pipelines.local.runner import feature_store_endpoints

REGION = "us-east-1"
ROLE = "arn:aws:iam::000000000000:role/local-pipeline"
HOUR = 1_700_000_000.0  # 2023-11-14T22:13:20Z
DEFINITIONS = [
    {"FeatureName": "policy_id", "FeatureType": "Integral"},
    {"FeatureName": "event_time", "FeatureType": "Fractional"},
    {"FeatureName": "state", "FeatureType": "String"},
]


class RecordingS3:
    """put_object calls, kept (the offline store's writes)."""

    def __init__(self):
        self.objects: dict[tuple[str, str], bytes] = {}

    def put_object(self, Bucket, Key, Body):  # noqa: N803 (boto3's names)
        self.objects[Bucket, Key] = Body


@pytest.fixture
def store(tmp_path):
    return FeatureStore(tmp_path / "feature-store.json", REGION)


@pytest.fixture
def clients(store):
    with serving(store, "127.0.0.1") as url:
        session = boto3.Session(aws_access_key_id="local", aws_secret_access_key="local", region_name=REGION)
        yield (
            session.client("sagemaker", endpoint_url=url),
            session.client("sagemaker-featurestore-runtime", endpoint_url=url),
        )


def create(sagemaker, name="claims", **changes):
    request = {
        "FeatureGroupName": name,
        "RecordIdentifierFeatureName": "policy_id",
        "EventTimeFeatureName": "event_time",
        "FeatureDefinitions": DEFINITIONS,
        "OnlineStoreConfig": {"EnableOnlineStore": True},
        "OfflineStoreConfig": {"S3StorageConfig": {"S3Uri": "s3://bucket/fs"}},
        "RoleArn": ROLE,
        **changes,
    }
    return sagemaker.create_feature_group(**{k: v for k, v in request.items() if v is not None})


def record(policy_id, event_time, state="ca"):
    values = {"policy_id": str(policy_id), "event_time": str(event_time), "state": state}
    return [{"FeatureName": k, "ValueAsString": v} for k, v in values.items()]


def test_groups_records_and_the_offline_store(clients, store):
    sagemaker, runtime = clients
    assert create(sagemaker)["FeatureGroupArn"].endswith(":feature-group/claims")
    described = sagemaker.describe_feature_group(FeatureGroupName="claims")
    assert described["FeatureGroupStatus"] == "Created"
    resolved = described["OfflineStoreConfig"]["S3StorageConfig"]["ResolvedOutputS3Uri"]
    assert resolved.startswith("s3://bucket/fs/000000000000/sagemaker/us-east-1/offline-store/claims-")
    runtime.put_record(FeatureGroupName="claims", Record=record(1, HOUR + 10, "wa"))
    runtime.put_record(FeatureGroupName="claims", Record=record(1, HOUR, "ca"))  # older: not the online record
    runtime.put_record(FeatureGroupName="claims", Record=record(2, HOUR + 7200))
    online = runtime.get_record(FeatureGroupName="claims", RecordIdentifierValueAsString="1")["Record"]
    assert {f["FeatureName"]: f["ValueAsString"] for f in online}["state"] == "wa"
    assert "Record" not in runtime.get_record(FeatureGroupName="claims", RecordIdentifierValueAsString="9")

    s3 = RecordingS3()
    assert store.write_offline(s3) == 2  # two event-time hours
    keys = sorted(key for _, key in s3.objects)
    prefix = resolved.removeprefix("s3://bucket/")
    assert keys[0].startswith(f"{prefix}/year=2023/month=11/day=14/hour=22/") and keys[0].endswith(".parquet")
    assert keys[1].startswith(f"{prefix}/year=2023/month=11/day=15/hour=00/")
    table = pq.read_table(io.BytesIO(s3.objects["bucket", keys[0]]))
    assert table.column_names == ["policy_id", "event_time", "state", "write_time", "api_invocation_time", "is_deleted"]
    assert sorted(table.column("state").to_pylist()) == ["ca", "wa"]  # every record put, not only the latest


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"FeatureGroupName": "bad name"}, "does not match"),
        ({"RecordIdentifierFeatureName": "id"}, "RecordIdentifierFeatureName 'id' is not a defined feature"),
        ({"EventTimeFeatureName": "policy_id"}, "the event time feature must be Fractional or String"),
        (
            {"OnlineStoreConfig": {"EnableOnlineStore": False}, "OfflineStoreConfig": None},
            "needs an online or an offline store",
        ),
        ({"RoleArn": None}, "RoleArn is required"),
    ],
)
def test_invalid_groups_are_refused(clients, changes, message):
    sagemaker, _ = clients
    with pytest.raises(ClientError, match=message):
        create(sagemaker, **changes)


def test_a_name_in_use_and_unknown_groups(clients):
    sagemaker, runtime = clients
    create(sagemaker)
    with pytest.raises(ClientError) as in_use:
        create(sagemaker)
    assert in_use.value.response["Error"]["Code"] == "ResourceInUse"
    with pytest.raises(ClientError) as missing:
        sagemaker.describe_feature_group(FeatureGroupName="nothing")
    assert missing.value.response["Error"]["Code"] == "ResourceNotFound"
    with pytest.raises(ClientError, match="feature group nothing does not exist"):
        runtime.put_record(FeatureGroupName="nothing", Record=record(1, HOUR))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (record(1, HOUR)[:2] + [{"FeatureName": "color", "ValueAsString": "red"}], "feature 'color' is not defined"),
        ([{"FeatureName": "policy_id", "ValueAsString": "one"}, *record(1, HOUR)[1:]], "'one' is not Integral"),
        (record(1, HOUR)[1:], "the record lacks policy_id"),
    ],
)
def test_invalid_records_are_refused(clients, fields, message):
    sagemaker, runtime = clients
    create(sagemaker)
    with pytest.raises(ClientError, match=message):
        runtime.put_record(FeatureGroupName="claims", Record=fields)


def test_groups_outlive_the_server_records_do_not(clients, store, tmp_path):
    sagemaker, runtime = clients
    create(sagemaker)
    runtime.put_record(FeatureGroupName="claims", Record=record(1, HOUR))
    again = FeatureStore(tmp_path / "feature-store.json", REGION)
    assert set(again.groups) == {"claims"}
    assert again.get_record("claims", "1") == {}


@pytest.fixture
def features(tmp_path):
    folder = tmp_path / "features"
    folder.mkdir()
    pd.DataFrame({"policy_id": [1, 2, 3], "event_time": [HOUR, HOUR, HOUR + 3600], "num_injuries": [0, 2, 1]}).to_csv(
        folder / "claims.csv", index=False
    )
    pd.DataFrame({"policy_id": [1, 2, 3], "event_time": [HOUR] * 3, "state": ["ca", "wa", "az"]}).to_csv(
        folder / "customers.csv", index=False
    )
    return folder


@contextmanager
def pointed_at(store: FeatureStore, monkeypatch) -> Iterator[None]:
    """The store served, and this process's boto3 pointed at it (as a local run points the ingest job's)."""
    with serving(store, "127.0.0.1") as url:
        environment = {**feature_store_endpoints(url), "AWS_ACCESS_KEY_ID": "l", "AWS_SECRET_ACCESS_KEY": "l"}
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        yield


def test_ingest_puts_every_record_with_the_pipelines_arguments(store, features, monkeypatch):
    """ingest.py's feature-store mode, unchanged, with the arguments the FeatureStoreIngest step passes."""
    with pointed_at(store, monkeypatch):
        argv = [
            "--features", str(features), "--claims-group", "claims",
            "--customers-group", "customers", "--role-arn", ROLE, "--region", REGION,
            "--offline-store-uri", "s3://bucket/fs", "--online-store", "--workers", "2", "--poll-interval", "0",
        ]  # fmt: skip
        assert ingest.main(argv) == 0
        assert ingest.main(argv) == 0  # the groups exist and match: reused
    assert set(store.groups) == {"claims", "customers"}
    assert {d["FeatureName"]: d["FeatureType"] for d in store.groups["claims"]["FeatureDefinitions"]} == {
        "policy_id": "Integral",
        "event_time": "Fractional",
        "num_injuries": "Integral",
    }
    assert sorted(store.online["customers"]) == ["1", "2", "3"]
    assert len(store.offline["claims"]) == 6  # two ingests of three records
    assert json.loads((store.path).read_text())["groups"]["customers"]["RoleArn"] == ROLE


def test_ingest_refuses_an_existing_group_of_other_columns(store, features, monkeypatch, capsys):
    store.create_feature_group(
        {
            "FeatureGroupName": "claims",
            "RecordIdentifierFeatureName": "policy_id",
            "EventTimeFeatureName": "event_time",
            "FeatureDefinitions": DEFINITIONS,
            "OnlineStoreConfig": {"EnableOnlineStore": True},
        }
    )
    with pointed_at(store, monkeypatch):
        argv = ["--features", str(features), "--claims-group", "claims", "--customers-group", "customers",
                "--region", REGION, "--online-store", "--poll-interval", "0"]  # fmt: skip
        assert ingest.main(argv) == 1
    assert "feature group claims does not match claims.csv" in capsys.readouterr().err
