"""A local SageMaker Feature Store for local runs: the calls processing/ingest.py makes, over HTTP.

The FeatureStoreIngest step runs ingest.py with the cloud's very arguments; its container reaches this server
through AWS_ENDPOINT_URL_SAGEMAKER and AWS_ENDPOINT_URL_SAGEMAKER_FEATURESTORE_RUNTIME (the only difference
from the cloud, added to the job's environment at run time, not to the definition). It answers, as the APIs
document them (https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_CreateFeatureGroup.html,
API_DescribeFeatureGroup.html, API_feature_store_PutRecord.html, API_feature_store_GetRecord.html):
- CreateFeatureGroup: the record identifier and event time must be defined features (event time Fractional
  or String), at least one store, a role for an offline store; a name in use is ResourceInUse;
- DescribeFeatureGroup: the group as created, with its offline store's ResolvedOutputS3Uri;
- PutRecord: the record identifier and event time are required, every feature must be defined and its value
  of its type; the online store keeps each identifier's record with the latest event time;
- GetRecord: an identifier's online record.
The offline store is written when the run ends (the service writes it within minutes): Parquet files under
<S3Uri>/<account>/sagemaker/<region>/offline-store/<group>-<created>/data/year=/month=/day=/hour=/ (by event
time), with the features and write_time, api_invocation_time and is_deleted, in the local S3.

Differences from the service: a group is Created at once; the online store lasts one run; the feature groups
(not their records) are kept in runs/local-aws/feature-store.json, so a second run finds them.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.local.registry import LOCAL_ACCOUNT
from pipelines.local.state import save_json

GROUP_NAME = re.compile(r"^[a-zA-Z0-9]([_-]*[a-zA-Z0-9]){0,63}$")
FEATURE_TYPES = {"Integral": pa.int64(), "Fractional": pa.float64(), "String": pa.string()}
TIMESTAMP = pa.timestamp("ms", tz="UTC")


class ApiError(Exception):
    """An error answer: HTTP status, error code, message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def _value(kind: str, text: str):
    if kind == "Integral":
        return int(text)
    if kind == "Fractional":
        return float(text)
    return text


class FeatureStore:
    """Feature groups, their online records and the offline records waiting to be written."""

    def __init__(self, path: Path, region: str):
        self.path = path
        self.region = region
        self.groups: dict[str, dict] = json.loads(path.read_text())["groups"] if path.is_file() else {}
        self.online: dict[str, dict[str, dict[str, str]]] = {}
        self.offline: dict[str, list[dict[str, str]]] = {}
        self.lock = threading.Lock()

    def _save(self) -> None:
        save_json(self.path, {"groups": self.groups})

    def create_feature_group(self, request: dict) -> dict:
        name = request.get("FeatureGroupName", "")
        if not GROUP_NAME.match(name):
            raise ApiError(400, "ValidationException", f"FeatureGroupName {name!r} does not match {GROUP_NAME.pattern}")
        definitions = {d["FeatureName"]: d["FeatureType"] for d in request.get("FeatureDefinitions", [])}
        for field in ("RecordIdentifierFeatureName", "EventTimeFeatureName"):
            if request.get(field) not in definitions:
                raise ApiError(400, "ValidationException", f"{field} {request.get(field)!r} is not a defined feature")
        if definitions[request["EventTimeFeatureName"]] not in ("Fractional", "String"):
            raise ApiError(400, "ValidationException", "the event time feature must be Fractional or String")
        if unknown := sorted(n for n, t in definitions.items() if t not in FEATURE_TYPES):
            raise ApiError(400, "ValidationException", f"features with an unknown FeatureType: {', '.join(unknown)}")
        online = request.get("OnlineStoreConfig", {}).get("EnableOnlineStore", False)
        offline = request.get("OfflineStoreConfig")
        if not online and not offline:
            raise ApiError(400, "ValidationException", "a feature group needs an online or an offline store")
        if offline and not request.get("RoleArn"):
            raise ApiError(400, "ValidationException", "RoleArn is required with an OfflineStoreConfig")
        with self.lock:
            if name in self.groups:
                raise ApiError(400, "ResourceInUse", f"feature group {name} already exists")
            created = datetime.datetime.now(datetime.UTC)
            group = {
                **request,
                "FeatureGroupArn": f"arn:aws:sagemaker:{self.region}:{LOCAL_ACCOUNT}:feature-group/{name.lower()}",
                "CreationTime": created.timestamp(),
                "FeatureGroupStatus": "Created",
            }
            if offline:
                base = offline["S3StorageConfig"]["S3Uri"].rstrip("/")
                store = f"{name}-{int(created.timestamp())}"
                resolved = f"{base}/{LOCAL_ACCOUNT}/sagemaker/{self.region}/offline-store/{store}/data"
                group["OfflineStoreConfig"] = {
                    **offline,
                    "S3StorageConfig": {**offline["S3StorageConfig"], "ResolvedOutputS3Uri": resolved},
                }
                group["OfflineStoreStatus"] = {"Status": "Active"}
            self.groups[name] = group
            self._save()
        return {"FeatureGroupArn": group["FeatureGroupArn"]}

    def describe_feature_group(self, request: dict) -> dict:
        return dict(self._group(request.get("FeatureGroupName", "")))

    def _group(self, name: str) -> dict:
        if name not in self.groups:
            raise ApiError(404, "ResourceNotFound", f"feature group {name} does not exist")
        return self.groups[name]

    def put_record(self, name: str, request: dict) -> dict:
        group = self._group(name)
        definitions = {d["FeatureName"]: d["FeatureType"] for d in group["FeatureDefinitions"]}
        record = {}
        for feature in request.get("Record", []):
            feature_name, text = feature.get("FeatureName"), feature.get("ValueAsString", "")
            if feature_name not in definitions:
                raise ApiError(400, "ValidationError", f"feature {feature_name!r} is not defined in {name}")
            try:
                _value(definitions[feature_name], text)
            except ValueError:
                kind = definitions[feature_name]
                raise ApiError(400, "ValidationError", f"feature {feature_name}: {text!r} is not {kind}") from None
            record[feature_name] = text
        key, event = group["RecordIdentifierFeatureName"], group["EventTimeFeatureName"]
        missing = [f for f in (key, event) if f not in record]
        if missing:
            raise ApiError(400, "ValidationError", f"the record lacks {', '.join(missing)}")
        with self.lock:
            current = self.online.setdefault(name, {}).get(record[key])
            if current is None or float(current[event]) <= float(record[event]):
                self.online[name][record[key]] = record
            if "OfflineStoreConfig" in group:
                self.offline.setdefault(name, []).append(record)
        return {}

    def get_record(self, name: str, identifier: str) -> dict:
        self._group(name)
        record = self.online.get(name, {}).get(identifier)
        if record is None:
            return {}
        return {"Record": [{"FeatureName": k, "ValueAsString": v} for k, v in record.items()]}

    def write_offline(self, s3) -> int:
        """Write the records put in this run to each group's offline store; returns the files written."""
        written = 0
        for name, records in self.offline.items():
            group = self.groups[name]
            definitions = group["FeatureDefinitions"]
            event = group["EventTimeFeatureName"]
            bucket, _, prefix = group["OfflineStoreConfig"]["S3StorageConfig"]["ResolvedOutputS3Uri"][5:].partition("/")
            now = datetime.datetime.now(datetime.UTC)
            by_hour: dict[datetime.datetime, list[dict]] = {}
            for record in records:
                stamp = datetime.datetime.fromtimestamp(float(record[event]), datetime.UTC)
                by_hour.setdefault(stamp.replace(minute=0, second=0, microsecond=0), []).append(record)
            for hour, rows in sorted(by_hour.items()):
                columns = {
                    d["FeatureName"]: pa.array(
                        [
                            _value(d["FeatureType"], r[d["FeatureName"]]) if d["FeatureName"] in r else None
                            for r in rows
                        ],
                        FEATURE_TYPES[d["FeatureType"]],
                    )
                    for d in definitions
                }
                stamp = pa.array([now] * len(rows), TIMESTAMP)
                columns.update(write_time=stamp, api_invocation_time=stamp, is_deleted=pa.array([False] * len(rows)))
                sink = pa.BufferOutputStream()
                pq.write_table(pa.table(columns), sink)
                digest = hashlib.sha256(f"{name}/{hour.isoformat()}/{now.isoformat()}".encode()).hexdigest()[:16]
                partition = f"year={hour:%Y}/month={hour:%m}/day={hour:%d}/hour={hour:%H}"
                key = f"{prefix}/{partition}/{now:%Y%m%dT%H%M%SZ}_{digest}.parquet"
                s3.put_object(Bucket=bucket, Key=key, Body=sink.getvalue().to_pybytes())
                written += 1
        self.offline.clear()
        return written


class Handler(BaseHTTPRequestHandler):
    """SageMaker's JSON API (X-Amz-Target: SageMaker.<Action>) and the runtime's REST API (/FeatureGroup/<name>)."""

    store: FeatureStore
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no waiting for delayed ACKs

    def log_message(self, *args) -> None:  # quiet: a run puts tens of thousands of records
        pass

    def _answer(self, status: int, body: dict, code: str = "") -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        if code:
            self.send_header("x-amzn-ErrorType", code)
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, action) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            request = json.loads(self.rfile.read(length) or b"{}")
            self._answer(200, action(request))
        except ApiError as error:
            self._answer(error.status, {"__type": error.code, "message": str(error), "Message": str(error)}, error.code)
        except (ValueError, KeyError, TypeError) as error:
            self._answer(400, {"__type": "ValidationException", "message": str(error)}, "ValidationException")

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        target = self.headers.get("X-Amz-Target", "")
        actions = {
            "SageMaker.CreateFeatureGroup": self.store.create_feature_group,
            "SageMaker.DescribeFeatureGroup": self.store.describe_feature_group,
        }

        def unknown(_request: dict) -> dict:
            raise ApiError(400, "UnknownOperationException", f"{target!r} is not served by the local Feature Store")

        self._handle(actions.get(target, unknown))

    def do_PUT(self) -> None:  # noqa: N802
        name = self._group_name()
        self._handle(lambda request: self.store.put_record(name, request))

    def do_GET(self) -> None:  # noqa: N802
        name = self._group_name()
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
        identifier = query.get("RecordIdentifierValueAsString", [""])[0]
        self._handle(lambda _: self.store.get_record(name, identifier))

    def _group_name(self) -> str:
        path = urllib.parse.urlsplit(self.path).path
        return urllib.parse.unquote(path.removeprefix("/FeatureGroup/"))


@contextmanager
def serving(store: FeatureStore, host: str) -> Iterator[str]:
    """The store over HTTP on host (a free port) while the block runs; yields its URL."""
    handler = type("BoundHandler", (Handler,), {"store": store})
    server = ThreadingHTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
