"""Serve the fraud model over HTTP with SageMaker's inference contract: GET /ping, POST /invocations.

In the container SageMaker extracts model.tar.gz to /opt/ml/model and starts the image with `serve`,
which runs this file from /opt/ml/model/code/ (next to the features.py the model was trained with):

    python serve.py [--model-dir /opt/ml/model] [--host 127.0.0.1] [--port 8080] [--threshold T] [--workers N]

The model directory holds train.py's xgboost-model.json and features.json (the ordered feature names).
POST /invocations takes
    text/csv           rows of feature values in features.json's order (no header, no label);
    application/json   raw claim + customer records of the data contract: one object, a list of objects or
                       {"instances": [...]}, validated and encoded by features.py, as in training;
and answers, per the Accept header, application/json (default) {"predictions": [{"fraud_probability": p,
"fraud": 0|1, "threshold": t, "policy_id": id (JSON input)}]} or text/csv lines "probability,flag".
`fraud` is 1 when the probability is >= the threshold (evaluation/evaluate.py's rule). Asked with `explain=K`
(CustomAttributes, or ?explain=K), each JSON prediction also carries its top K reasons (explain.py).

Settings (flags win over the environment): --threshold / FRAUD_THRESHOLD (else 0.5, with a warning),
--port / SAGEMAKER_BIND_TO_PORT (8080), --workers / SAGEMAKER_MODEL_SERVER_WORKERS (the CPU count),
--timeout / SAGEMAKER_MODEL_SERVER_TIMEOUT (60 s), --max-payload-mb / SAGEMAKER_MAX_PAYLOAD_IN_MB (6 MiB,
SageMaker's real-time payload limit: a larger body, chunked or not, is refused whole with 413).
The server is gunicorn with gevent workers (the model loaded once per worker; a worker reads many connections at
once, so slow or idle clients hold no worker), else, when either is not installed, werkzeug's threaded server,
with a warning (for development only). Errors quote request values escaped and cut short.
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib.util
import io
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import xgboost as xgb
from flask import Flask, Response, request
from werkzeug.datastructures import MIMEAccept
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

import explain
from features import (
    FEATURES,
    KEY,
    RAW_SCHEMA,
    ContractError,
    clip,
    decode,
    encode_records,
    extra_columns,
    parse_number,
    shown,
    validate_records,
)

log = logging.getLogger("serve")

MODEL_FILE = "xgboost-model.json"
FEATURES_FILE = "features.json"
JSON_SOURCE = "JSON records (line N is record N)"
DEFAULT_THRESHOLD = 0.5
DEFAULT_MAX_PAYLOAD_MB = 6
"""SageMaker's real-time payload limit; batch transform sets SAGEMAKER_MAX_PAYLOAD_IN_MB."""
CSV, JSON = "text/csv", "application/json"
ACCEPTED = {"*/*": JSON, "application/*": JSON, JSON: JSON, "text/*": CSV, CSV: CSV}
"""Accept media ranges -> the response type they select."""
MESSAGE_CHARS = 2000
"""Characters of an error message (sent and logged) before it is cut."""
SERVER_PACKAGES = ("gunicorn", "gevent")
"""What the production server needs: gunicorn and its gevent workers."""


class ModelError(Exception):
    """The model directory cannot be loaded; the message names the file."""


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Model:
    """The booster and its ordered feature names, from train.py's model directory."""

    def __init__(self, model_dir: Path, threads: int = 0) -> None:
        self.features = read_features(model_dir)
        try:
            self.booster = xgb.Booster(model_file=model_dir / MODEL_FILE)
        except xgb.core.XGBoostError as error:
            raise ModelError(f"{model_dir / MODEL_FILE}: not a loadable XGBoost model ({error})") from None
        saved = self.booster.feature_names
        if len(self.features) != self.booster.num_features() or saved not in (None, self.features):
            raise ModelError(f"{model_dir}: {MODEL_FILE} and {FEATURES_FILE} do not name the same features")
        self.threads = threads
        if threads:
            self.booster.set_param({"nthread": threads})
        unknown = [name for name in self.features if name not in FEATURES]
        names = ", ".join(unknown[:5])
        self.raw_input_error = (
            f"this model's features ({names}, ...) are not the contract's: send {CSV}" if unknown else None
        )

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        """Fraud probabilities (float32) of a matrix in features.json's column order."""
        return self.booster.inplace_predict(matrix)

    def contributions(self, matrix: np.ndarray) -> np.ndarray:
        """Exact TreeSHAP contributions in log-odds, one column per feature and the base value last."""
        names = self.features if self.booster.feature_names else None
        matrix = xgb.DMatrix(matrix, feature_names=names, nthread=self.threads or None)  # the worker's share of CPUs
        return self.booster.predict(matrix, pred_contribs=True)

    def values(self, matrix: np.ndarray) -> list[dict[str, object]]:
        """Each CSV row's values per contract column (features.decode), or per feature for a model whose features
        are not the contract's: what an explanation's reasons show, in float32's shortest form (4193.26, as sent)."""
        rows = [dict(zip(self.features, map(float, row.astype(str)), strict=True)) for row in matrix]
        return rows if self.raw_input_error else [decode(row) for row in rows]


def read_features(model_dir: Path) -> list[str]:
    """features.json's ordered names, once both model files are found (XGBoost is not touched)."""
    for path in (model_dir / MODEL_FILE, model_dir / FEATURES_FILE):
        if not path.is_file():
            raise ModelError(f"{path}: not found (is {model_dir} a model directory written by train.py?)")
    path = model_dir / FEATURES_FILE
    try:
        names = json.loads(path.read_text())["features"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelError(f"{path}: expected a JSON object with a 'features' list ({error})") from None
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise ModelError(f"{path}: 'features' must be a non-empty list of names")
    return names


# ---------------------------------------------------------------------------------------- request bodies


def read_body(max_bytes: int) -> bytes:
    """The whole request body: 413 when it is over `max_bytes` (chunked or not), 400 when it ends before its
    Content-Length (a client that stopped sending: gunicorn hands over what came)."""
    body = request.get_data(cache=False)
    if len(body) > max_bytes:
        raise RequestEntityTooLarge()
    expected = request.content_length
    if expected is not None and len(body) < expected:
        raise RequestError(400, f"the body ended after {len(body)} of the {expected} bytes of its Content-Length")
    return body


def _text(body: bytes) -> str:
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise RequestError(400, f"the body is not UTF-8 text ({error})") from None


def csv_numbers(text: str, rows: list[list[str]]) -> np.ndarray:
    """The rows' values as float64 (rows of equal length), NaN where a value is not in the contract's number
    grammar (features.parse_number). numpy converts the whole body at once as float() reads each value: on ASCII
    text without underscores, a body that converts to finite numbers is all in the grammar; any other body is
    read value by value."""
    if "_" not in text and text.isascii():
        try:
            matrix = np.array(rows, dtype=np.float64)
        except ValueError:
            pass
        else:
            if np.isfinite(matrix).all():
                return matrix
    return np.array([[parse_number(value) for value in row] for row in rows], dtype=np.float64)


def csv_matrix(body: bytes, names: list[str]) -> np.ndarray:
    """Rows of feature values (no header), checked against the model's features, as float32."""
    text = _text(body)
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if row]
    except csv.Error as error:
        raise RequestError(400, f"{CSV}: not readable CSV ({error})") from None
    for i, row in enumerate(rows):
        if len(row) != len(names):
            raise RequestError(
                400,
                f"{CSV} row {i + 1}: {len(row)} values, expected {len(names)} "
                f"(the model's features in features.json's order: {names[0]}, ..., {names[-1]})",
            )
    with np.errstate(over="ignore"):
        matrix = csv_numbers(text, rows).astype(np.float32)  # beyond float32's range: inf
    bad = np.argwhere(~np.isfinite(matrix))
    if len(bad):
        i, j = bad[0]
        raise RequestError(
            400,
            f"{CSV} row {i + 1}, column {j + 1} ({names[j]}): expected a finite number in decimal or scientific "
            f"notation, within float32's range, got {shown(rows[i][j])}",
        )
    return matrix


def json_records(body: bytes) -> list[dict]:
    """The records of a JSON body: one object, a list of objects, or {"instances": [...]}."""
    try:
        document = json.loads(_text(body))
    except ValueError as error:
        raise RequestError(400, f"invalid JSON: {error}") from None
    except RecursionError:
        raise RequestError(400, "invalid JSON: nested too deeply") from None
    records = document["instances"] if isinstance(document, dict) and "instances" in document else document
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list) or not records:
        raise RequestError(400, 'expected a JSON object, a non-empty list of objects, or {"instances": [...]}')
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise RequestError(400, f"record {number}: expected a JSON object of columns, got {shown(record)}")
    return records


def raw_value(value: object, number: int, key: str) -> str:
    """A record's value as the contract's raw text (null: empty); arrays and objects are refused."""
    if isinstance(value, list | dict):
        kind = "an array" if isinstance(value, list) else "an object"
        raise RequestError(400, f"record {number}, key {shown(key)}: expected a string, a number or null, got {kind}")
    return "" if value is None else str(value)


def json_features(records: list[dict], names: list[str]) -> tuple[np.ndarray, list[dict[str, object]]]:
    """Validate and encode raw records with features.py's record path (the rules and messages preprocessing's
    column path applies to files); the matrix and the typed records."""
    as_text = [
        {key: value if type(value) is str else raw_value(value, n, key) for key, value in record.items()}
        for n, record in enumerate(records, 1)
    ]
    extras = extra_columns((key for record in as_text for key in record), RAW_SCHEMA)
    if extras:
        log.warning(
            "ignoring column(s) the contract does not know: %s", clip(", ".join(map(shown, extras)), MESSAGE_CHARS)
        )
    try:
        typed = validate_records(as_text, RAW_SCHEMA, JSON_SOURCE, label=False, first_line=1)
    except ContractError as error:
        raise RequestError(400, str(error)) from None
    encoded = encode_records(typed, RAW_SCHEMA)
    return np.array([[row[name] for name in names] for row in encoded], dtype=np.float32), typed


def response_type(accept: MIMEAccept) -> str:
    """The first acceptable of JSON and CSV in the client's order of preference (JSON without an Accept)."""
    if not accept:
        return JSON
    for value, quality in accept:
        media = value.split(";")[0].strip().lower()
        if quality > 0 and media in ACCEPTED:
            return ACCEPTED[media]
    raise RequestError(406, f"cannot answer Accept: {shown(str(accept))}; use {JSON} or {CSV}")


# ---------------------------------------------------------------------------------------- responses


def json_response(status: int, document: dict) -> Response:
    return Response(json.dumps(document), status=status, mimetype=JSON)


def predictions(
    probabilities: np.ndarray,
    threshold: float,
    kind: str,
    policy_ids: list[int] | None = None,
    explanations: list[dict] | None = None,
) -> Response:
    """The scores as JSON predictions (with their explanations when asked) or CSV 'probability,flag' lines;
    probabilities in float32's shortest form."""
    shown = [float(str(p)) for p in probabilities]
    flags = (probabilities >= threshold).astype(int).tolist()
    if kind == CSV:
        return Response("".join(f"{p},{f}\n" for p, f in zip(shown, flags, strict=True)), mimetype=CSV)
    rows = [{"fraud_probability": p, "fraud": f, "threshold": threshold} for p, f in zip(shown, flags, strict=True)]
    if policy_ids is not None:
        for row, policy_id in zip(rows, policy_ids, strict=True):
            row[KEY] = policy_id
    for row, explanation in zip(rows, explanations or [], strict=False):
        row["explanation"] = explanation
    return json_response(200, {"predictions": rows})


def reasons_asked(kind: str) -> int | None:
    """The number of reasons per record the request asks for (explain.requested), or None; 400 for a bad number,
    406 when the answer would be CSV."""
    try:
        count = explain.requested(request.headers.get(explain.CUSTOM_ATTRIBUTES), request.args.get(explain.KEY))
    except ValueError as error:
        raise RequestError(400, str(error)) from None
    if count and kind == CSV:
        raise RequestError(406, f"explanations are answered in {JSON}: ask with Accept: {JSON}")
    return count


# ---------------------------------------------------------------------------------------- the app


def create_app(
    model_dir: Path, threshold: float, max_bytes: int = DEFAULT_MAX_PAYLOAD_MB * 2**20, threads: int = 0
) -> Flask:
    """The WSGI app. A model that fails to load is logged and answers 503 on /ping and /invocations."""
    app = Flask(__name__)
    # one byte over the limit: werkzeug stops reading a chunked body (no Content-Length) there without a word,
    # so a body that reaches it is over the limit, not cut at it
    app.config["MAX_CONTENT_LENGTH"] = max_bytes + 1
    try:
        model, load_error = Model(model_dir, threads), None
    except ModelError as error:
        model, load_error = None, f"the model is not loaded: {error}"
        log.error("%s", load_error)

    @app.get("/ping")
    def ping() -> Response:
        if model is None:
            return json_response(503, {"error": load_error})
        return json_response(200, {"status": "ok"})

    @app.post("/invocations")
    def invocations() -> Response:
        if model is None:
            raise RequestError(503, load_error)
        kind = response_type(request.accept_mimetypes)
        reasons = reasons_asked(kind)
        body = read_body(max_bytes)
        if not body.strip():
            raise RequestError(400, f"empty body: send {CSV} feature rows or {JSON} records")
        if request.mimetype == CSV:
            matrix, typed = csv_matrix(body, model.features), None
        elif request.mimetype == JSON:
            if model.raw_input_error:
                raise RequestError(415, model.raw_input_error)
            matrix, typed = json_features(json_records(body), model.features)
        else:
            given = shown(request.content_type) if request.content_type else "none"
            raise RequestError(415, f"unsupported Content-Type: {given}; use {CSV} or {JSON}")
        explained = None
        if reasons:
            values = typed if typed is not None else model.values(matrix)
            explained = explain.explanations(model.contributions(matrix), model.features, values, reasons)
        policy_ids = None if typed is None else [record[KEY] for record in typed]
        return predictions(model.predict(matrix), threshold, kind, policy_ids, explained)

    @app.errorhandler(RequestError)
    def refused(error: RequestError) -> Response:
        message = clip(str(error), MESSAGE_CHARS)
        log.warning("%d: %s", error.status, message)
        return json_response(error.status, {"error": message})

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_error: RequestEntityTooLarge) -> Response:
        return refused(RequestError(413, f"the body is larger than the limit of {max_bytes} bytes"))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        return json_response(error.code or 500, {"error": f"{error.name}: {error.description}"})

    @app.errorhandler(Exception)
    def internal_error(_error: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.path)
        return json_response(500, {"error": "internal server error (the server log has the details)"})

    return app


# ---------------------------------------------------------------------------------------- servers


def missing_server_packages() -> list[str]:
    """Those of SERVER_PACKAGES that are not installed (werkzeug's development server serves then)."""
    return [name for name in SERVER_PACKAGES if importlib.util.find_spec(name) is None]


def run_gunicorn(app_factory: Callable[[], Flask], options: dict) -> None:
    """gunicorn in this process; each worker calls `app_factory` once, after the fork."""
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            return app_factory()

    Server().run()


def stop_while_booting(arbiter: object, worker: object) -> None:
    """gunicorn's post_fork hook: SIGTERM, SIGINT and SIGQUIT end a worker until it installs its own handlers.

    A forked worker inherits the master's handlers, which only queue a signal for the master's loop: a stop
    sent while a worker was still booting was lost, and the master waited out graceful_timeout (30 s)."""
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(number, signal.SIG_DFL)


def run_werkzeug(app: Flask, host: str, port: int) -> None:
    """werkzeug's threaded server: for development, where gunicorn or gevent is not installed."""
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log line per request
    server = make_server(host, port, app, threaded=True)
    log.info("listening on http://%s:%d", host, server.port)
    server.serve_forever()


# ---------------------------------------------------------------------------------------- command line


def _bounded(kind: type, low: float, high: float | None, what: str) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--model-dir", type=Path, default=Path("/opt/ml/model"))
    parser.add_argument("--host", default="127.0.0.1", help="the address to bind (the image's `serve` gives 0.0.0.0)")
    parser.add_argument(
        "--port", type=_bounded(int, 0, 65535, "a port number"), default=env("SAGEMAKER_BIND_TO_PORT", "8080")
    )
    parser.add_argument(
        "--threshold",
        type=_bounded(float, 0, 1, "a number in [0, 1] (from --threshold or FRAUD_THRESHOLD)"),
        default=env("FRAUD_THRESHOLD"),
        help="fraud when the probability is >= this (default: env FRAUD_THRESHOLD, else 0.5)",
    )
    parser.add_argument(
        "--workers",
        type=_bounded(int, 1, None, "a positive integer (from --workers or SAGEMAKER_MODEL_SERVER_WORKERS)"),
        default=env("SAGEMAKER_MODEL_SERVER_WORKERS", str(os.cpu_count() or 1)),
        help="gunicorn worker processes (default: env SAGEMAKER_MODEL_SERVER_WORKERS, else the CPU count)",
    )
    parser.add_argument(
        "--timeout",
        type=_bounded(int, 1, None, "a positive number of seconds (from --timeout or SAGEMAKER_MODEL_SERVER_TIMEOUT)"),
        default=env("SAGEMAKER_MODEL_SERVER_TIMEOUT", "60"),
        help="seconds a gunicorn worker may stay busy (on one request) before it is restarted",
    )
    parser.add_argument(
        "--max-payload-mb",
        type=_bounded(int, 1, None, "a positive integer (from --max-payload-mb or SAGEMAKER_MAX_PAYLOAD_IN_MB)"),
        default=env("SAGEMAKER_MAX_PAYLOAD_IN_MB", str(DEFAULT_MAX_PAYLOAD_MB)),
        help="the largest request body, in MiB (413 above it)",
    )
    return parser.parse_args(argv)


def resolve_threshold(args: argparse.Namespace) -> float:
    """--threshold, else FRAUD_THRESHOLD (both in `args`), else 0.5 with a warning."""
    if args.threshold is None:
        log.warning("no threshold given (--threshold or FRAUD_THRESHOLD): flagging fraud at %s", DEFAULT_THRESHOLD)
        return DEFAULT_THRESHOLD
    return args.threshold


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        # fail fast on a wrong directory; the booster itself loads in each worker: XGBoost's OpenMP threads,
        # once started, do not survive gunicorn's fork (a worker that loads a model after it hangs)
        read_features(args.model_dir)
    except ModelError as error:
        print(f"serve: error: {error}", file=sys.stderr)
        return 2
    threshold = resolve_threshold(args)
    cpus = os.cpu_count() or 1
    max_bytes = args.max_payload_mb * 2**20
    log.info("serving %s on %s:%d, threshold %s", args.model_dir, args.host, args.port, threshold)
    missing = missing_server_packages()
    if missing:
        log.warning("%s not installed: serving with werkzeug's development server (one process)", ", ".join(missing))
        run_werkzeug(create_app(args.model_dir, threshold, max_bytes, cpus), args.host, args.port)
        return 0
    options = {
        "bind": f"{args.host}:{args.port}",
        "workers": args.workers,
        # a slow or idle client holds a greenlet, not the worker (SageMaker's own containers put nginx in front)
        "worker_class": "gevent",
        "post_fork": stop_while_booting,
        "timeout": args.timeout,
        "control_socket_disable": True,  # gunicorn >= 25.1 opens one under $HOME by default
        "worker_tmp_dir": "/dev/shm" if os.path.isdir("/dev/shm") else None,  # heartbeats off the disk
    }
    threads = max(1, cpus // args.workers)
    run_gunicorn(functools.partial(create_app, args.model_dir, threshold, max_bytes, threads), options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
