"""serving/serve.py over real HTTP: SageMaker's /ping and /invocations, on a model trained on generated data."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import numpy as np
import psutil
import pytest
import xgboost as xgb
from flask import Flask
from test_contract import CANDIDATES
from werkzeug.serving import make_server

import explain
import features
import serve
from features import FEATURES, FLOAT_MAX, KEY, LABEL, parse_number
from harness import ROOT, Reply, call, free_port, running, stalled_connections, wait_until_ready

CASES = 6
"""Test-split policies scored in these tests."""


@contextmanager
def serving(app: Flask) -> Iterator[tuple[str, int]]:
    """The app on 127.0.0.1 and a free port, in a background thread; yields (host, port)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "127.0.0.1", server.port
    finally:
        server.shutdown()
        thread.join(timeout=10)


class Case(NamedTuple):
    policy_id: int
    csv_row: str
    record: dict


def typed(raw: dict[str, str]) -> dict:
    """A raw CSV record as a user would send it in JSON: numbers as numbers, categories as strings."""
    kinds = {column: kind for column, (kind, _) in serve.RAW_SCHEMA.items()}
    convert = {"int": int, "float": float, "category": str}
    return {column: convert[kinds[column]](value) for column, value in raw.items() if column != LABEL}


@pytest.fixture(scope="module")
def cases(raw_data: dict[str, Path], splits: Path) -> list[Case]:
    """Test-split policies: preprocess's feature row (CSV text) and the raw claim + customer record (JSON)."""
    with open(splits / "headered/test.csv", newline="") as file:
        rows = list(csv.reader(file))
    header, rows = rows[0], rows[1 : CASES + 1]
    assert header[:2] == [KEY, LABEL]
    wanted = {row[0]: ",".join(row[2:]) for row in rows}
    raw: dict[str, dict] = {policy: {} for policy in wanted}
    for table in ("claims", "customers"):
        with open(raw_data[table], newline="") as file:
            for record in csv.DictReader(file):
                if record[KEY] in raw:
                    raw[record[KEY]].update(record)
    return [Case(int(policy), wanted[policy], typed(raw[policy])) for policy in wanted]


@pytest.fixture(scope="module")
def model_dir(trained: tuple[Path, str]) -> Path:
    return trained[0]


@pytest.fixture(scope="module")
def expected(model_dir: Path, cases: list[Case]) -> np.ndarray:
    """The cases' probabilities from the saved booster, scored apart from the server."""
    booster = xgb.Booster(model_file=model_dir / "xgboost-model.json")
    matrix = np.array([[float(v) for v in case.csv_row.split(",")] for case in cases], dtype=np.float32)
    return booster.predict(xgb.DMatrix(matrix, feature_names=booster.feature_names))


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator[tuple[str, int]]:
    with serving(serve.create_app(model_dir, threshold=0.5)) as address:
        yield address


def csv_body(cases: list[Case]) -> str:
    return "".join(f"{case.csv_row}\n" for case in cases)


def probabilities(reply: Reply) -> np.ndarray:
    assert reply.status == 200, reply.text
    return np.array([p["fraud_probability"] for p in reply.json()["predictions"]], dtype=np.float32)


def assert_refused(reply: Reply, status: int, *phrases: str) -> None:
    """A JSON {"error": ...} with the status, naming the problem, with no traceback."""
    assert reply.status == status, reply.text
    assert reply.content_type == "application/json"
    error = reply.json()["error"]
    for phrase in phrases:
        assert phrase in error
    assert "Traceback" not in reply.text


# ---------------------------------------------------------------------------------------- the contract


def test_ping(server: tuple[str, int]) -> None:
    reply = call(server, method="GET", path="/ping")
    assert reply.status == 200
    assert reply.json() == {"status": "ok"}


def test_csv_single_row(server: tuple[str, int], cases: list[Case], expected: np.ndarray) -> None:
    reply = call(server, cases[0].csv_row, "text/csv")
    assert reply.content_type == "application/json"
    [prediction] = reply.json()["predictions"]
    assert np.float32(prediction["fraud_probability"]) == expected[0]
    assert prediction["fraud"] == int(expected[0] >= 0.5)
    assert prediction["threshold"] == 0.5
    assert KEY not in prediction


def test_csv_rows_score_as_the_saved_model_does(
    server: tuple[str, int], cases: list[Case], expected: np.ndarray
) -> None:
    reply = call(server, csv_body(cases), "text/csv; charset=utf-8")
    np.testing.assert_array_equal(probabilities(reply), expected)
    assert [p["fraud"] for p in reply.json()["predictions"]] == (expected >= 0.5).astype(int).tolist()


@pytest.mark.parametrize("shape", ["object", "list", "instances"])
def test_json_records_score_as_their_csv_rows(
    server: tuple[str, int], cases: list[Case], expected: np.ndarray, shape: str
) -> None:
    records = [case.record for case in cases]
    body = {"object": records[0], "list": records, "instances": {"instances": records}}[shape]
    reply = call(server, json.dumps(body), "application/json")
    count = 1 if shape == "object" else len(cases)
    np.testing.assert_array_equal(probabilities(reply), expected[:count])
    assert [p[KEY] for p in reply.json()["predictions"]] == [case.policy_id for case in cases[:count]]


def test_json_features_equal_preprocessed_rows(model_dir: Path, cases: list[Case]) -> None:
    """The JSON path builds, with features.py, exactly the feature rows preprocessing wrote."""
    names = serve.read_features(model_dir)
    matrix, typed_records = serve.json_features([case.record for case in cases], names)
    np.testing.assert_array_equal(matrix, serve.csv_matrix(csv_body(cases).encode(), names))
    assert [record[KEY] for record in typed_records] == [case.policy_id for case in cases]


def test_json_values_as_raw_csv_strings(server: tuple[str, int], cases: list[Case], expected: np.ndarray) -> None:
    record = {column: str(value) for column, value in cases[0].record.items()}
    np.testing.assert_array_equal(probabilities(call(server, json.dumps(record), "application/json")), expected[:1])


def test_accept_csv(server: tuple[str, int], cases: list[Case], expected: np.ndarray) -> None:
    reply = call(server, csv_body(cases), "text/csv", accept="text/csv")
    assert reply.status == 200
    assert reply.content_type.startswith("text/csv")
    lines = [line.split(",") for line in reply.text.splitlines()]
    np.testing.assert_array_equal(np.array([p for p, _ in lines], dtype=np.float32), expected)
    assert [int(flag) for _, flag in lines] == (expected >= 0.5).astype(int).tolist()


@pytest.mark.parametrize("accept", ["*/*", "application/json; charset=utf-8", "text/html, application/*;q=0.5"])
def test_accept_json(server: tuple[str, int], cases: list[Case], accept: str) -> None:
    reply = call(server, cases[0].csv_row, "text/csv", accept=accept)
    assert reply.status == 200
    assert reply.content_type == "application/json"


def test_deterministic(server: tuple[str, int], cases: list[Case]) -> None:
    replies = {call(server, csv_body(cases), "text/csv").text for _ in range(3)}
    singles = [call(server, case.csv_row, "text/csv").json()["predictions"][0] for case in cases]
    assert len(replies) == 1
    assert json.loads(replies.pop())["predictions"] == singles


# ---------------------------------------------------------------------------------------- the threshold


def threshold_between(expected: np.ndarray) -> float:
    """A threshold that flags some cases and not others."""
    low, high = np.sort(expected)[len(expected) // 2 - 1 : len(expected) // 2 + 1]
    assert low < high
    return float((low + high) / 2)


def test_threshold_from_environment(model_dir: Path, cases: list[Case], expected: np.ndarray) -> None:
    threshold = threshold_between(expected)
    with running(model_dir, "--workers", "1", env={"FRAUD_THRESHOLD": str(threshold)}) as address:
        predictions = call(address, csv_body(cases), "text/csv").json()["predictions"]
    assert {p["threshold"] for p in predictions} == {threshold}
    assert [p["fraud"] for p in predictions] == (expected >= threshold).astype(int).tolist()
    assert 0 < sum(p["fraud"] for p in predictions) < len(cases)


def test_threshold_flag_wins_over_environment(model_dir: Path, cases: list[Case], expected: np.ndarray) -> None:
    threshold = threshold_between(expected)
    with running(model_dir, "--workers", "1", "--threshold", str(threshold), env={"FRAUD_THRESHOLD": "1"}) as address:
        predictions = call(address, json.dumps([c.record for c in cases]), "application/json").json()["predictions"]
    assert [p["fraud"] for p in predictions] == (expected >= threshold).astype(int).tolist()


def test_threshold_defaults_to_half_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("FRAUD_THRESHOLD", raising=False)
    assert serve.resolve_threshold(serve.parse_args([])) == 0.5
    assert "no threshold given" in caplog.text
    monkeypatch.setenv("FRAUD_THRESHOLD", "0.25")
    assert serve.resolve_threshold(serve.parse_args([])) == 0.25
    assert serve.resolve_threshold(serve.parse_args(["--threshold", "0.75"])) == 0.75


@pytest.mark.parametrize("value", ["1.5", "-0.1", "high"])
def test_bad_threshold_stops_the_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, value: str
) -> None:
    monkeypatch.setenv("FRAUD_THRESHOLD", value)
    with pytest.raises(SystemExit) as stopped:
        serve.parse_args([])
    assert stopped.value.code == 2
    assert "FRAUD_THRESHOLD" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- refusals


def without(record: dict, column: str) -> dict:
    return {name: value for name, value in record.items() if name != column}


def test_csv_wrong_column_count(server: tuple[str, int], cases: list[Case]) -> None:
    short = cases[0].csv_row.rsplit(",", 1)[0]
    reply = call(server, f"{cases[0].csv_row}\n{short}\n", "text/csv")
    assert_refused(reply, 400, "row 2", f"{len(FEATURES) - 1} values, expected {len(FEATURES)}")


@pytest.mark.parametrize("value", ["abc", "", "nan", "inf"])
def test_csv_non_numeric_value(server: tuple[str, int], cases: list[Case], value: str) -> None:
    values = cases[0].csv_row.split(",")
    values[2] = value
    reply = call(server, ",".join(values), "text/csv")
    assert_refused(reply, 400, "row 1, column 3 (num_witnesses)", f"got {value!r}")


def with_value(case: Case, column: str, value: str) -> str:
    """The case's CSV feature row with `value` in `column`."""
    values = case.csv_row.split(",")
    values[FEATURES.index(column)] = value
    return ",".join(values)


@pytest.mark.parametrize("value", ["1_000", "１２", "0x10", "1e39", "-3.5e38"])
def test_csv_number_in_plain_notation_within_float32(server: tuple[str, int], cases: list[Case], value: str) -> None:
    """Python's float() takes 1_000 and fullwidth digits; 1e39 is finite in float64 but not in float32."""
    reply = call(server, with_value(cases[0], "vehicle_claim", value).encode(), "text/csv")
    assert_refused(reply, 400, f"row 1, column {FEATURES.index('vehicle_claim') + 1} (vehicle_claim)", f"{value!r}")


@pytest.mark.parametrize("value", [["Theft"], {"type": "Theft"}], ids=["list", "object"])
def test_json_value_that_is_a_list_or_object(server: tuple[str, int], cases: list[Case], value: object) -> None:
    records = [cases[0].record, {**cases[1].record, "incident_type": value}]
    reply = call(server, json.dumps(records), "application/json")
    assert_refused(reply, 400, "record 2", "'incident_type'", "a string, a number or null")


def test_json_nested_too_deeply(server: tuple[str, int]) -> None:
    depth = 100_000
    assert_refused(call(server, "[" * depth + "]" * depth, "application/json"), 400, "invalid JSON")


@pytest.mark.parametrize(
    "column, value",
    [("policy_id", 10**20), ("vehicle_claim", 1e39), ("injury_claim", "1_000")],
    ids=["policy-id-beyond-int64", "claim-beyond-float32", "underscored-number"],
)
def test_json_value_the_contract_refuses(
    server: tuple[str, int], cases: list[Case], column: str, value: object
) -> None:
    """Contract errors (features.py), not a wrapped policy id, an infinite feature or 1000."""
    reply = call(server, json.dumps({**cases[0].record, column: value}), "application/json")
    assert_refused(reply, 400, f"column '{column}'")


@pytest.mark.parametrize("kind, length", [("csv", 100_000), ("json", 5_000_000)])
def test_huge_invalid_value_is_cut_short_in_the_error_and_the_log(
    server: tuple[str, int], cases: list[Case], kind: str, length: int, caplog: pytest.LogCaptureFixture
) -> None:
    """(Python's csv module refuses fields over 128 KiB by itself.)"""
    if kind == "csv":
        reply = call(server, with_value(cases[0], "vehicle_claim", "x" * length), "text/csv")
    else:
        reply = call(server, json.dumps({**cases[0].record, "policy_state": "x" * length}), "application/json")
    assert_refused(reply, 400, "xxxxxxxxxx")
    assert len(reply.text) < 5_000
    logged = [r.getMessage() for r in caplog.records if r.name == "serve"]
    assert logged and all(len(message) < 5_000 for message in logged)


def test_json_key_with_a_newline_forges_no_log_line(
    server: tuple[str, int], cases: list[Case], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="serve")
    forged = "note\n2026-01-01 00:00:00,000 serve ERROR forged"
    reply = call(server, json.dumps({**cases[0].record, forged: 1}), "application/json")
    assert reply.status == 200, reply.text
    [warning] = [r.getMessage() for r in caplog.records if r.name == "serve"]
    assert "ignoring column(s)" in warning and "note\\n2026" in warning
    assert "\n" not in warning


def test_json_unknown_category(server: tuple[str, int], cases: list[Case]) -> None:
    records = [case.record for case in cases[:2]]
    records[1] = {**records[1], "policy_state": "TX"}
    reply = call(server, json.dumps(records), "application/json")
    assert_refused(reply, 400, "column 'policy_state'", "one of CA, WA, AZ, OR, NV, ID", "line 2: 'TX'")


def test_json_missing_column(server: tuple[str, int], cases: list[Case]) -> None:
    reply = call(server, json.dumps(without(cases[0].record, "customer_age")), "application/json")
    assert_refused(reply, 400, "missing column(s) customer_age", "expected columns:")


def test_json_column_missing_from_one_record(server: tuple[str, int], cases: list[Case]) -> None:
    records = [cases[0].record, without(cases[1].record, "num_witnesses")]
    reply = call(server, json.dumps(records), "application/json")
    assert_refused(reply, 400, "column 'num_witnesses'", "line 2: ''")


@pytest.mark.parametrize(
    "body, phrase",
    [
        ('{"policy_id": 1,', "invalid JSON"),
        ("[1, 2]", "record 1: expected a JSON object"),
        ("[]", "non-empty list"),
        ('"text"', "expected a JSON object"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_json_malformed(server: tuple[str, int], body: str | bytes, phrase: str) -> None:
    assert_refused(call(server, body, "application/json"), 400, phrase)


@pytest.mark.parametrize("content_type", ["text/csv", "application/json"])
@pytest.mark.parametrize("body", ["", " \n"])
def test_empty_body(server: tuple[str, int], content_type: str, body: str) -> None:
    assert_refused(call(server, body, content_type), 400, "empty body")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_unsupported_content_type(server: tuple[str, int], cases: list[Case], content_type: str | None) -> None:
    reply = call(server, cases[0].csv_row, content_type)
    assert_refused(reply, 415, "unsupported Content-Type", "text/csv or application/json")


def test_unsupported_accept(server: tuple[str, int], cases: list[Case]) -> None:
    reply = call(server, cases[0].csv_row, "text/csv", accept="text/html")
    assert_refused(reply, 406, "text/html", "application/json or text/csv")


def test_body_too_large(model_dir: Path, cases: list[Case]) -> None:
    with serving(serve.create_app(model_dir, 0.5, max_bytes=4096)) as address:
        assert call(address, csv_body(cases), "text/csv").status == 200
        assert_refused(call(address, csv_body(cases * 20), "text/csv"), 413, "limit of 4096 bytes")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_over_the_limit_is_413_whether_or_not_its_length_is_sent(
    model_dir: Path, cases: list[Case], expected: np.ndarray, chunked: bool, capfd: pytest.CaptureFixture
) -> None:
    """A body of exactly --max-payload-mb is scored whole; one byte more, or twice as much, is refused, never
    scored in part (a chunked body has no Content-Length to check up front)."""
    limit = 2**20
    rows = csv_body(cases)
    full = rows + "\n" * (limit - len(rows))  # blank lines are no rows
    with running(model_dir, "--workers", "1", "--max-payload-mb", "1") as address:
        np.testing.assert_array_equal(probabilities(call(address, full, "text/csv", chunked=chunked)), expected)
        for body in (full + "\n", csv_body(cases * (2 * limit // len(rows)))):
            assert_refused(call(address, body, "text/csv", chunked=chunked), 413, f"the limit of {limit} bytes")
    assert f"413: the body is larger than the limit of {limit} bytes" in capfd.readouterr().err


def test_body_shorter_than_its_content_length_is_refused(model_dir: Path, cases: list[Case]) -> None:
    """A client that stops sending before its Content-Length (and half-closes) gets 400, not its rows scored."""
    body = csv_body(cases).encode()
    head = f"POST /invocations HTTP/1.1\r\nContent-Type: text/csv\r\nContent-Length: {len(body) + 100}\r\n\r\n"
    with running(model_dir, "--workers", "1") as address, socket.create_connection(address, timeout=30) as client:
        client.sendall(head.encode() + body)
        client.shutdown(socket.SHUT_WR)
        status = client.makefile("rb").readline()
    assert status.startswith(b"HTTP/1.1 400 "), status


def test_slow_clients_do_not_stall_the_server(model_dir: Path, cases: list[Case], expected: np.ndarray) -> None:
    """Two idle and two half-sent connections to one worker, held longer than the client waits (30 s)."""
    with running(model_dir, "--workers", "1", "--timeout", "600") as address, stalled_connections(address, 2):
        assert call(address, method="GET", path="/ping").status == 200
        np.testing.assert_array_equal(probabilities(call(address, csv_body(cases), "text/csv")), expected)


@pytest.mark.parametrize("method, path, status", [("GET", "/invocations", 405), ("POST", "/predict", 404)])
def test_other_routes(server: tuple[str, int], method: str, path: str, status: int) -> None:
    assert_refused(call(server, method=method, path=path), status)


def test_internal_error_is_a_generic_500(
    server: tuple[str, int], cases: list[Case], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self, matrix):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(serve.Model, "predict", broken)
    reply = call(server, cases[0].csv_row, "text/csv")
    assert_refused(reply, 500, "internal server error")
    assert "secret detail" not in reply.text
    assert "Traceback" in caplog.text and "secret detail" in caplog.text


# ---------------------------------------------------------------------------------------- the model directory


def test_unloadable_model_answers_503(model_dir: Path, cases: list[Case], tmp_path: Path) -> None:
    shutil.copy(model_dir / "features.json", tmp_path)
    (tmp_path / "xgboost-model.json").write_text("{not a model")
    with serving(serve.create_app(tmp_path, 0.5)) as address:
        assert_refused(call(address, method="GET", path="/ping"), 503, "xgboost-model.json")
        assert_refused(call(address, cases[0].csv_row, "text/csv"), 503, "the model is not loaded")


def test_model_and_features_file_must_agree(model_dir: Path, tmp_path: Path) -> None:
    shutil.copy(model_dir / "xgboost-model.json", tmp_path)
    names = serve.read_features(model_dir)
    (tmp_path / "features.json").write_text(json.dumps({"features": names[::-1]}))
    with pytest.raises(serve.ModelError, match="do not name the same features"):
        serve.Model(tmp_path)


def test_missing_model_stops_the_server(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert serve.main(["--model-dir", str(tmp_path), "--threshold", "0.5"]) == 2
    assert f"{tmp_path / 'xgboost-model.json'}: not found" in capsys.readouterr().err


def test_model_without_contract_features_scores_csv_only(
    model_dir: Path, cases: list[Case], tmp_path: Path, expected: np.ndarray
) -> None:
    """A model trained without preprocess's manifest (features f0, f1, ...) cannot take raw records."""
    booster = xgb.Booster(model_file=model_dir / "xgboost-model.json")
    booster.feature_names = [f"f{i}" for i in range(booster.num_features())]
    booster.save_model(tmp_path / "xgboost-model.json")
    (tmp_path / "features.json").write_text(json.dumps({"features": booster.feature_names}))
    with serving(serve.create_app(tmp_path, 0.5)) as address:
        np.testing.assert_array_equal(probabilities(call(address, csv_body(cases), "text/csv")), expected)
        reply = call(address, json.dumps(cases[0].record), "application/json")
        assert_refused(reply, 415, "not the contract's", "f0")


def test_model_artifact_serves_with_its_own_code(
    splits: Path, cases: list[Case], expected: np.ndarray, tmp_path: Path
) -> None:
    """train.py run from a source directory staged as the pipeline stages it (training/*.py, serve.py, features.py)
    writes a model whose code/ serves it alone, as the container's `serve` runs it."""
    from pipelines.pipeline import STAGED_WITH

    source, model = tmp_path / "source", tmp_path / "model"
    source.mkdir()
    for script in [*(ROOT / "training").glob("*.py"), *(ROOT / extra for extra in STAGED_WITH["training"])]:
        shutil.copy(script, source)
    channels = ["--train", str(splits / "train"), "--validation", str(splits / "validation")]
    argv = [*channels, "--manifest", str(splits / "manifest"), "--model-dir", str(model), "--verbose", "0"]
    done = subprocess.run([sys.executable, str(source / "train.py"), *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (model / "code").iterdir()) == ["explain.py", "features.py", "serve.py"]
    with running(model, "--workers", "1", script=model / "code/serve.py", env={"PYTHONPATH": ""}) as address:
        from_csv = probabilities(call(address, csv_body(cases), "text/csv"))
        from_json = probabilities(call(address, json.dumps([c.record for c in cases]), "application/json"))
    np.testing.assert_array_equal(from_csv, expected)
    np.testing.assert_array_equal(from_json, expected)


def run_folder(model_dir: Path, tmp_path: Path, evaluation: str) -> Path:
    """A run folder as `fraud-pipeline local` leaves it: model/ and evaluation/evaluation.json."""
    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "model")
    (run / "evaluation").mkdir()
    (run / "evaluation" / "evaluation.json").write_text(evaluation)
    return run


def cli_serve(*args: str, **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "serve", *args], **options)


def test_cli_serve_a_run_folder_with_its_threshold(model_dir: Path, cases: list[Case], tmp_path: Path) -> None:
    """`fraud-pipeline serve --model runs/<id>`: the run's model, with the threshold of its evaluation.json; it
    answers ?explain=3 with additive reasons."""
    run = run_folder(model_dir, tmp_path, json.dumps({"threshold": {"value": 0.0, "method": "max_f1"}}))
    address = ("127.0.0.1", free_port())
    child = cli_serve("--model", str(run), "--port", str(address[1]), "--workers", "1")
    try:
        wait_until_ready(child, address)
        reply = call(address, csv_body(cases[:1]), "text/csv")
        assert reply.status == 200, reply.text
        assert reply.json()["predictions"][0]["threshold"] == 0.0
        assert reply.json()["predictions"][0]["fraud"] == 1
        records = json.dumps([case.record for case in cases])
        assert_additive(explained(call(address, records, "application/json", path="/invocations?explain=3")), 3)
    finally:
        child.terminate()
        child.wait(timeout=60)


def test_cli_serve_stops_with_sigterm(model_dir: Path, tmp_path: Path) -> None:
    """SIGTERM to `fraud-pipeline serve` stops the server and its workers: nothing is left serving."""
    run = run_folder(model_dir, tmp_path, json.dumps({"threshold": {"value": 0.5}}))
    address = ("127.0.0.1", free_port())
    child = cli_serve("--model", str(run), "--port", str(address[1]), "--workers", "1")
    processes = [psutil.Process(child.pid)]
    try:
        wait_until_ready(child, address)
        processes += processes[0].children(recursive=True)
        assert len(processes) >= 2
        child.send_signal(signal.SIGTERM)
        child.wait(timeout=60)
        _, alive = psutil.wait_procs(processes, timeout=60)
        assert not alive, f"still running after SIGTERM: {[p.cmdline() for p in alive]}"
    finally:
        for process in processes:
            if process.is_running():
                process.kill()


def test_sigterm_while_workers_boot_stops_the_server_at_once(model_dir: Path, tmp_path: Path) -> None:
    """SIGTERM as soon as the first of four workers answers, while the others still boot (CI lost it: 30 s).

    Before the post_fork hook, a booting worker ran the master's inherited handler, the signal was lost, and the
    master waited gunicorn's graceful_timeout (30 s) before killing it; now the server is gone in about 2 s."""
    run = run_folder(model_dir, tmp_path, json.dumps({"threshold": {"value": 0.5}}))
    address = ("127.0.0.1", free_port())
    child = cli_serve("--model", str(run), "--port", str(address[1]), "--workers", "4")
    try:
        wait_until_ready(child, address)
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=20) == 0
    finally:
        child.kill()


@pytest.mark.parametrize(
    "evaluation",
    ["{}", '{"threshold": 0.5}', '{"threshold": {"value": "high"}}', '{"threshold": {"value": 2}}', "{not json"],
    ids=["no-threshold", "not-an-object", "not-a-number", "out-of-range", "invalid-json"],
)
def test_cli_serve_with_a_bad_evaluation_threshold(model_dir: Path, tmp_path: Path, evaluation: str) -> None:
    run = run_folder(model_dir, tmp_path, evaluation)
    done = cli_serve("--model", str(run), "--port", str(free_port()), stderr=subprocess.PIPE, text=True)
    _, err = done.communicate(timeout=60)
    assert done.returncode == 1
    assert len(err.strip().splitlines()) == 1, err
    assert str(run / "evaluation" / "evaluation.json") in err and "threshold.value" in err


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_cli_serve_refuses_fewer_than_one_worker(model_dir: Path, tmp_path: Path, workers: str) -> None:
    run = run_folder(model_dir, tmp_path, json.dumps({"threshold": {"value": 0.5}}))
    child = cli_serve("--model", str(run), "--port", str(free_port()), "--workers", workers, stderr=subprocess.PIPE)
    try:
        _, err = child.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        server = psutil.Process(child.pid)
        for process in [*server.children(recursive=True), server]:
            process.kill()
        pytest.fail(f"--workers {workers}: the server started")
    assert child.returncode == 1
    assert f"--workers {workers}" in err.decode() and "at least 1" in err.decode()


def test_cli_serve_without_a_model(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pipelines import cli

    assert cli.main(["serve", "--model", str(tmp_path)]) != 0
    assert "no xgboost-model.json there" in capsys.readouterr().err


@pytest.mark.parametrize("value", CANDIDATES)
def test_csv_values_read_as_the_contract_reads_numbers(value: str) -> None:
    """Each candidate value, alone in a body and among valid ones: the bulk conversion (an all-valid body) and the
    value-by-value reading (any other body) accept exactly features.parse_number's finite float32 values."""
    names = ["a", "b"]
    lines = io.StringIO()
    csv.writer(lines).writerows([[value, "1"], ["2", value]])
    number = np.float32(parse_number(value)) if abs(parse_number(value)) <= FLOAT_MAX else np.float32("nan")
    if np.isfinite(number):
        expected = np.array([[number, 1], [2, number]], dtype=np.float32)
        np.testing.assert_array_equal(serve.csv_matrix(lines.getvalue().encode(), names), expected)
    else:
        with pytest.raises(serve.RequestError, match=r"row 1, column 1 \(a\): expected a finite number"):
            serve.csv_matrix(lines.getvalue().encode(), names)


# ---------------------------------------------------------------------------------------- explanations


def logit(probability: float) -> float:
    return math.log(probability / (1 - probability))


def explained(reply: Reply) -> list[dict]:
    assert reply.status == 200, reply.text
    return reply.json()["predictions"]


def assert_additive(predictions: list[dict], reasons: int) -> None:
    """base + the reasons' contributions + rest is the logit of fraud_probability; the reasons are the largest."""
    for prediction in predictions:
        explanation = prediction["explanation"]
        contributions = [reason["contribution"] for reason in explanation["reasons"]]
        assert len(contributions) == reasons
        total = explanation["base"] + sum(contributions) + explanation["rest"]
        assert total == pytest.approx(logit(prediction["fraud_probability"]), abs=1e-4)
        assert [abs(c) for c in contributions] == sorted((abs(c) for c in contributions), reverse=True)


def test_json_explanations_are_additive_and_name_raw_columns(server: tuple[str, int], cases: list[Case]) -> None:
    body = json.dumps([case.record for case in cases])
    predictions = explained(call(server, body, "application/json", path="/invocations?explain=3"))
    assert_additive(predictions, 3)
    for case, prediction in zip(cases, predictions, strict=True):
        for reason in prediction["explanation"]["reasons"]:
            assert reason["column"] in serve.RAW_SCHEMA
            assert (
                reason["value"]
                == features.validate_records(
                    [{k: str(v) for k, v in case.record.items()}], serve.RAW_SCHEMA, "x", label=False
                )[0][reason["column"]]
            )


def test_csv_explanations_match_the_same_claims_json_explanations(server: tuple[str, int], cases: list[Case]) -> None:
    """The preprocessed feature row and the raw record of a claim: the same reasons, values decoded from the row."""
    asked = {"X-Amzn-SageMaker-Custom-Attributes": "trace=abc; explain=5"}
    from_csv = explained(call(server, csv_body(cases), "text/csv", headers=asked))
    from_json = explained(call(server, json.dumps([c.record for c in cases]), "application/json", headers=asked))
    assert_additive(from_csv, 5)
    for by_row, by_record in zip(from_csv, from_json, strict=True):
        rows, records = by_row["explanation"]["reasons"], by_record["explanation"]["reasons"]
        assert [r["column"] for r in rows] == [r["column"] for r in records]
        assert [r["contribution"] for r in rows] == pytest.approx([r["contribution"] for r in records], abs=1e-6)
        for row, record in zip(rows, records, strict=True):
            assert row["value"] == record["value"] or (row["column"] == "customer_gender" and row["value"] is None)


def test_one_hot_contributions_are_summed_into_their_column(model_dir: Path, cases: list[Case]) -> None:
    """Every column asked: the reasons are all contract columns once each, their contributions the sums of their
    features' TreeSHAP values, and nothing is left in rest."""
    model = serve.Model(model_dir)
    matrix, typed_records = serve.json_features([case.record for case in cases], model.features)
    contributions = model.contributions(matrix)
    columns = list(dict.fromkeys(features.RAW_COLUMN[name] for name in model.features))
    answers = explain.explanations(contributions, model.features, typed_records, 100)
    for row, answer in zip(contributions, answers, strict=True):
        assert sorted(r["column"] for r in answer["reasons"]) == sorted(columns)
        assert answer["rest"] == 0
        by_column = {r["column"]: r["contribution"] for r in answer["reasons"]}
        members = [i for i, name in enumerate(model.features) if name.startswith("incident_type_")]
        assert len(members) == 3
        assert by_column["incident_type"] == pytest.approx(float(row[members].astype(np.float64).sum()), abs=1e-9)
        assert answer["base"] == pytest.approx(float(row[-1]))


def test_no_explanation_unless_asked(server: tuple[str, int], cases: list[Case]) -> None:
    assert "explanation" not in explained(call(server, csv_body(cases[:1]), "text/csv"))[0]


@pytest.mark.parametrize("value", ["0", "-1", "three", "1.5", "", "٣"])
def test_a_bad_number_of_reasons_is_refused(server: tuple[str, int], cases: list[Case], value: str) -> None:
    reply = call(server, csv_body(cases[:1]), "text/csv", path=f"/invocations?explain={urllib.parse.quote(value)}")
    assert_refused(reply, 400, "explain: expected a positive integer")
    if value.isascii():
        asked = {"X-Amzn-SageMaker-Custom-Attributes": f"explain={value}"}
        assert_refused(
            call(server, csv_body(cases[:1]), "text/csv", headers=asked), 400, "explain: expected a positive"
        )


def test_explanations_are_not_given_as_csv(server: tuple[str, int], cases: list[Case]) -> None:
    reply = call(server, csv_body(cases[:1]), "text/csv", accept="text/csv", path="/invocations?explain=2")
    assert_refused(reply, 406, "explanations are answered in application/json")


@pytest.mark.parametrize(
    ("attributes", "query", "expected"),
    [
        (None, None, None),
        ("explain=3", None, 3),
        ("a=b;explain= 4 ,c=d", None, 4),
        ("explainer=2", None, None),
        ("explain=3", "2", 2),
        ("no pairs here", None, None),
    ],
)
def test_the_number_of_reasons_asked(attributes: str | None, query: str | None, expected: int | None) -> None:
    assert explain.requested(attributes, query) == expected
