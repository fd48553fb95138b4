"""The input data contract (../shared/DATA_CONTRACT.md) and the feature transforms.

One module, used by preprocessing and by serving, so training and inference build features
with the same code. It depends on pandas, numpy and pyarrow only.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

KEY = "policy_id"
LABEL = "fraud"
PREDICTED_LABEL = f"{LABEL}_predicted"
"""The column of evaluate's predictions.csv holding the model's predicted label at the operating threshold."""
EVENT_TIME = "event_time"

INT_MAX = 2**53 - 1
"""The largest value of an int column, policy_id's included: the largest integer float64 holds exactly, well within
int64. Integers pass through float64 (pandas reads a column with one value written 1e3 or 1.0 as float64; JSON
numbers are doubles), where larger ids can become the same number (as 1e20 and 2e20 became one int64)."""
FLOAT_MAX = float(np.finfo(np.float32).max)
"""The largest magnitude of a float column: the model's matrix is float32, where anything larger is infinite."""
EVENT_TIMES = (0.0, 253_402_300_799.0)
"""event_time's range in epoch seconds: 1970-01-01T00:00:00Z to 9999-12-31T23:59:59Z (four-digit years, as
Feature Store's ISO-8601 event times and Python's datetime have)."""
EVENT_TIMES_TEXT = f"epoch seconds in [{EVENT_TIMES[0]:.0f}, {EVENT_TIMES[1]:.0f}]"
NUMBER = r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"
"""The numbers the contract reads: plain decimal or scientific notation (not 1_000, 0x10, inf, nan, fullwidth
digits, which Python's float() may take)."""

# column -> (kind, allowed values or (min, max)); kinds: int, float, category. A max of None is the kind's
# largest value: INT_MAX for int, FLOAT_MAX for float.
CLAIMS_SCHEMA: dict[str, tuple[str, object]] = {
    "policy_id": ("int", (0, INT_MAX)),
    "driver_relationship": ("category", ["Self", "Spouse", "Child", "Other", "N/A"]),
    "incident_type": ("category", ["Collision", "Break-in", "Theft"]),
    "collision_type": ("category", ["Front", "Rear", "Side", "N/A"]),
    "incident_severity": ("category", ["Minor", "Major", "Totaled"]),
    "authorities_contacted": ("category", ["Police", "None", "Ambulance", "Fire"]),
    "num_vehicles_involved": ("int", (0, None)),
    "num_injuries": ("int", (0, None)),
    "num_witnesses": ("int", (0, None)),
    "police_report_available": ("category", ["Yes", "No"]),
    "injury_claim": ("int", (0, None)),
    "vehicle_claim": ("float", (0, None)),
    "total_claim_amount": ("float", (0, None)),
    "incident_month": ("int", (1, 12)),
    "incident_day": ("int", (1, 31)),
    "incident_dow": ("int", (0, 6)),
    "incident_hour": ("int", (0, 23)),
    "fraud": ("int", (0, 1)),
}

CUSTOMERS_SCHEMA: dict[str, tuple[str, object]] = {
    "policy_id": ("int", (0, INT_MAX)),
    "customer_age": ("int", (18, 100)),
    "months_as_customer": ("int", (0, None)),
    "num_claims_past_year": ("int", (0, None)),
    "num_insurers_past_5_years": ("int", (0, None)),
    "policy_state": ("category", ["CA", "WA", "AZ", "OR", "NV", "ID"]),
    "policy_deductable": ("int", (0, None)),
    "policy_annual_premium": ("int", (0, None)),
    "policy_liability": ("category", ["15/30", "25/50", "30/60", "100/200"]),
    "customer_zip": ("int", (0, None)),
    "customer_gender": ("category", ["Male", "Female", "Other", "Unkown"]),
    "customer_education": (
        "category",
        ["Below High School", "High School", "Associate", "Bachelor", "Advanced Degree"],
    ),
    "auto_year": ("int", (1900, 2100)),
}

RAW_SCHEMA = {**CLAIMS_SCHEMA, **CUSTOMERS_SCHEMA}
"""A scored record: one claim and its customer, both tables' columns (policy_id is in both)."""

ONE_HOT: dict[str, list[str]] = {
    "driver_relationship": ["self", "spouse", "child", "other", "na"],
    "incident_type": ["collision", "breakin", "theft"],
    "collision_type": ["front", "rear", "side", "na"],
    "authorities_contacted": ["police", "none", "ambulance", "fire"],
    "customer_gender": ["male", "female"],
    "policy_state": ["ca", "wa", "az", "or", "nv", "id"],
}

ORDINAL: dict[str, list[str]] = {
    "incident_severity": ["minor", "major", "totaled"],
    "police_report_available": ["no", "yes"],
    "customer_education": ["below high school", "high school", "associate", "bachelor", "advanced degree"],
    "policy_liability": ["15/30", "25/50", "30/60", "100/200"],
}

SYMBOL_STRIPPED = ("driver_relationship", "incident_type", "collision_type")
DROPPED = ("customer_zip",)


def _numeric_columns(schema: dict[str, tuple[str, object]]) -> list[str]:
    return [c for c, (kind, _) in schema.items() if kind != "category" and c not in (KEY, LABEL, *DROPPED)]


def _encoded_columns(schema: dict[str, tuple[str, object]]) -> list[str]:
    columns = []
    for column, (_kind, _) in schema.items():
        if column in ORDINAL:
            columns.append(column)
        elif column in ONE_HOT:
            columns.extend(f"{column}_{value}" for value in ONE_HOT[column])
    return columns


CLAIM_FEATURES = _numeric_columns(CLAIMS_SCHEMA) + _encoded_columns(CLAIMS_SCHEMA)
CUSTOMER_FEATURES = _numeric_columns(CUSTOMERS_SCHEMA) + _encoded_columns(CUSTOMERS_SCHEMA)
FEATURES = CLAIM_FEATURES + CUSTOMER_FEATURES
"""The model's input columns, in order."""
_ONE_HOT_COLUMN = {f"{column}_{value}": column for column, values in ONE_HOT.items() for value in values}
RAW_COLUMN = {feature: _ONE_HOT_COLUMN.get(feature, feature) for feature in FEATURES}
"""Each feature's contract column: itself, or the category column a one-hot feature encodes."""


def sum_by_column(values: np.ndarray, names: list[str]) -> tuple[list[str], np.ndarray]:
    """Per-feature values (rows x names, e.g. SHAP contributions) summed into the contract column each feature
    comes from (a feature outside the contract is its own column): the columns, first seen first, and the sums."""
    columns = list(dict.fromkeys(RAW_COLUMN.get(name, name) for name in names))
    grouping = np.zeros((len(names), len(columns)))
    for i, name in enumerate(names):
        grouping[i, columns.index(RAW_COLUMN.get(name, name))] = 1
    return columns, values.astype(np.float64) @ grouping


_SYMBOLS = re.compile(r"[^a-z0-9 ]")


def normalise(value: str, column: str) -> str:
    """A category value lower-cased, with symbols stripped where the contract says so."""
    value = value.lower()
    return _SYMBOLS.sub("", value) if column in SYMBOL_STRIPPED else value


def _distinct(values: pd.Series, column: str) -> tuple[np.ndarray, pd.Series]:
    """Each row's code into the column's distinct values, and those values normalised: a category column has
    a few distinct values, so the string work is done once per value, not once per row."""
    codes, distinct = pd.factorize(values, use_na_sentinel=False)
    normalised = [normalise(value, column) if isinstance(value, str) else value for value in distinct]  # NaN: NaN
    return codes, pd.Series(normalised, dtype=object)


def encode(table: pd.DataFrame, schema: dict[str, tuple[str, object]]) -> pd.DataFrame:
    """Turn a validated raw table into feature columns (key, event time and label kept when present)."""
    out = {}
    for column in (KEY, EVENT_TIME):
        if column in table:
            out[column] = table[column].to_numpy()
    for column in _numeric_columns(schema):
        out[column] = table[column].to_numpy()
    for column, (_kind, _) in schema.items():
        if column in ORDINAL:
            codes, normalised = _distinct(table[column], column)
            ranks = {value: i for i, value in enumerate(ORDINAL[column])}
            out[column] = normalised.map(ranks).to_numpy(dtype="int64")[codes]
        elif column in ONE_HOT:
            codes, normalised = _distinct(table[column], column)
            for value in ONE_HOT[column]:
                out[f"{column}_{value}"] = (normalised == value).to_numpy(dtype="int64")[codes]
    if LABEL in schema and LABEL in table:
        out[LABEL] = table[LABEL].to_numpy()
    return pd.DataFrame(out, index=table.index, copy=False)


def feature_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The model's input matrix, columns in FEATURES order, as float32."""
    return frame[FEATURES].to_numpy(dtype=np.float32)


class ContractError(ValueError):
    """Input that breaks the data contract; the message names the file, the column and the rows."""


MAX_ROWS_SHOWN = 5
SHOWN_CHARS = 80
"""Characters of an input value that a message quotes."""


def clip(text: str, limit: int) -> str:
    """`text` on one line (control characters escaped, as repr does) and cut after `limit` characters."""
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    more = len(text) - limit
    return f"{escaped}... ({more} more characters)" if more > 0 else escaped


def shown(value: object) -> str:
    """An input value as a message quotes it: its repr, cut short."""
    return clip(repr(value), SHOWN_CHARS)


def _describe(bad: list[tuple[int, object]], count: int) -> str:
    """'line 3: 'abc', line 7: '' and 4 more' from the first offending (line, value) pairs and their count."""
    more = f" and {count - MAX_ROWS_SHOWN} more" if count > MAX_ROWS_SHOWN else ""
    return ", ".join(f"line {line}: {shown(value)}" for line, value in bad[:MAX_ROWS_SHOWN]) + more


def describe_rows(frame: pd.DataFrame, mask: pd.Series, column: str) -> str:
    """'line 3: 'abc', line 7: '' ...' for the first offending rows (line numbers count the header as 1)."""
    bad = frame.loc[mask, column]
    return _describe([(i + 2, value) for i, value in bad.head(MAX_ROWS_SHOWN).items()], len(bad))


@functools.cache
def _canonical(column: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """Normalised category -> the contract's spelling (built once per column)."""
    return {normalise(value, column): value for value in allowed}


def _bounds(kind: str, allowed: tuple[float, float | None]) -> tuple[float, float]:
    low, high = allowed
    return low, (INT_MAX if kind == "int" else FLOAT_MAX) if high is None else high


def _expected(column: str, schema: dict[str, tuple[str, object]]) -> str:
    """What a column's values must be, as its error message says."""
    if column == EVENT_TIME:
        return f"{EVENT_TIMES_TEXT} or an ISO-8601 timestamp from 1970 to 9999"
    kind, allowed = schema[column]
    if kind == "category":
        return f"one of {', '.join(allowed)}"
    low, high = _bounds(kind, allowed)
    return f"{'an integer' if kind == 'int' else 'a number'} in [{low}, {high}]"


def _contract_error(source: str, errors: dict[str, str], schema: dict[str, tuple[str, object]]) -> ContractError:
    """One message for every failing column: {column: its offending rows described}."""
    return ContractError(
        f"{source}: "
        + "; ".join(f"column '{c}': expected {_expected(c, schema)}; {rows}" for c, rows in errors.items())
    )


# ---------------------------------------------------------------------------------------- columns (files)


def _parse_numbers(raw: pd.Series) -> pd.Series:
    """Numbers (float64) of stripped strings; NaN where a value is not plain decimal or scientific notation."""
    matched = pa.array(raw.where(raw.str.fullmatch(NUMBER)), type=pa.string(), from_pandas=True)
    return pd.Series(pc.cast(matched, pa.float64()).to_numpy(zero_copy_only=False), index=raw.index)


def _check_column(frame: pd.DataFrame, column: str, kind: str, allowed: object) -> tuple[pd.Series, pd.Series]:
    """Parse one raw string column: its typed values and the mask of the rows that break the contract."""
    raw = frame[column].str.strip()
    if kind == "category":
        codes, normalised = _distinct(raw, column)
        spelt = normalised.map(_canonical(column, tuple(allowed)))
        values = spelt.take(codes).set_axis(frame.index)
        return values, values.isna()
    values = _parse_numbers(raw)
    bad = ~values.between(*_bounds(kind, allowed))  # NaN is not between
    if kind == "int":
        bad |= values != values.round()
        if not bad.any():
            values = values.astype("int64")
    return values, bad


EPOCH = pd.Timestamp(0, tz="UTC").as_unit("s")


def _parse_event_time(frame: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Epoch seconds, from epoch numbers or ISO-8601 timestamps, and the mask of those outside EVENT_TIMES."""
    raw = frame[EVENT_TIME].str.strip()
    numeric = _parse_numbers(raw)
    stamps = pd.to_datetime(raw.where(numeric.isna()), utc=True, errors="coerce", format="ISO8601")
    seconds = numeric.fillna((stamps - EPOCH) / pd.Timedelta(seconds=1))
    bad = ~seconds.between(*EVENT_TIMES)
    return (seconds if bad.any() else seconds.astype("float64")), bad


def _required(schema: dict[str, tuple[str, object]], label: bool) -> list[str]:
    return [c for c in schema if label or c != LABEL]


def _missing(columns: object, schema: dict[str, tuple[str, object]], label: bool, source: str) -> None:
    missing = [c for c in _required(schema, label) if c not in columns]
    if missing:
        raise ContractError(
            f"{source}: missing column(s) {', '.join(missing)}; expected columns: {', '.join(_required(schema, label))}"
        )


def validate(
    frame: pd.DataFrame, schema: dict[str, tuple[str, object]], source: str, label: bool = True
) -> pd.DataFrame:
    """Check a table of raw strings against the contract and return it typed.

    `label=False` accepts records without the label (data to be scored). An optional `event_time`
    column is parsed to epoch seconds. Raises ContractError naming the source, every failing
    column and up to five offending rows of each. Column-wise, for files; validate_records() applies the
    same rules record by record, for requests of a few records.
    """
    counts = frame.columns.value_counts(sort=False)
    repeated = [f"column '{column}' appears {n} times" for column, n in counts[counts > 1].items()]
    if repeated:
        raise ContractError(f"{source}: {', '.join(repeated)} in the header; expected each column once")
    _missing(frame.columns, schema, label, source)
    if frame.empty:
        raise ContractError(f"{source}: no data rows (only a header)")
    typed, errors = {}, {}
    for column in _required(schema, label):
        typed[column], bad = _check_column(frame, column, *schema[column])
        if bad.any():
            errors[column] = describe_rows(frame, bad, column)
    if EVENT_TIME in frame.columns:
        typed[EVENT_TIME], bad = _parse_event_time(frame)
        if bad.any():
            errors[EVENT_TIME] = describe_rows(frame, bad, EVENT_TIME)
    if errors:
        raise _contract_error(source, errors, schema)
    return pd.DataFrame(typed, index=frame.index, copy=False)


# ---------------------------------------------------------------------------------------- records (requests)

_NUMBER = re.compile(NUMBER)


def parse_number(text: str) -> float:
    """A value in the contract's number grammar (NUMBER, surrounding whitespace ignored) as float64, else NaN.

    float() is the fast path: on ASCII text without underscores it reads exactly NUMBER's finite values, plus
    inf, infinity and nan, which only the grammar check of a non-finite result tells apart from 1e400."""
    text = text.strip()  # str.strip's whitespace, as pandas' (float() itself strips fewer characters)
    if "_" in text or not text.isascii():
        return math.nan
    try:
        value = float(text)
    except ValueError:
        return math.nan
    return value if math.isfinite(value) or _NUMBER.fullmatch(text) else math.nan


@functools.cache
def _value_check(column: str, kind: str, allowed: tuple) -> Callable[[str], object]:
    """The function that types one raw value of a column as _check_column does: its typed value, or None."""
    if kind == "category":
        canonical = _canonical(column, allowed)
        return lambda raw: canonical.get(normalise(raw.strip(), column))
    low, high = _bounds(kind, allowed)

    def check(raw: str) -> float | int | None:
        value = parse_number(raw)
        if not low <= value <= high:  # NaN is not between
            return None
        if kind == "int":
            return int(value) if value.is_integer() else None
        return value

    return check


def _event_time_value(raw: str) -> float | None:
    """One raw event_time as _parse_event_time reads it: epoch seconds, or None."""
    seconds = parse_number(raw)
    if math.isnan(seconds):
        stamp = pd.to_datetime(raw.strip(), utc=True, errors="coerce", format="ISO8601")
        seconds = math.nan if stamp is pd.NaT else (stamp - EPOCH) / pd.Timedelta(seconds=1)
    return seconds if EVENT_TIMES[0] <= seconds <= EVENT_TIMES[1] else None


def validate_records(
    records: list[dict[str, str]],
    schema: dict[str, tuple[str, object]],
    source: str,
    label: bool = True,
    first_line: int = 2,
) -> list[dict[str, object]]:
    """validate() record by record: the same rules and messages, without pandas' per-column cost (about a
    millisecond a column), for requests of a few records. Records map columns to raw strings (a column missing
    from a record reads as empty); record i is line `first_line + i` in messages. Returns typed records."""
    present = dict.fromkeys(key for record in records for key in record)
    _missing(present, schema, label, source)
    if not records:
        raise ContractError(f"{source}: no data rows (only a header)")
    checks = [(c, _value_check(c, schema[c][0], tuple(schema[c][1]))) for c in _required(schema, label)]
    if EVENT_TIME in present:
        checks.append((EVENT_TIME, _event_time_value))
    typed, bad = [], {column: [] for column, _ in checks}
    for line, record in enumerate(records, first_line):
        values = {}
        for column, check in checks:
            raw = record.get(column, "")
            values[column] = value = check(raw)
            if value is None:
                bad[column].append((line, raw))
        typed.append(values)
    errors = {column: _describe(rows, len(rows)) for column, rows in bad.items() if rows}
    if errors:
        raise _contract_error(source, errors, schema)
    return typed


@functools.cache
def _category_features(column: str, allowed: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Each allowed value of an encoded category column -> its feature values, as encode() makes them."""
    features = {}
    for value in allowed:
        normalised = normalise(value, column)
        if column in ORDINAL:
            features[value] = {column: ORDINAL[column].index(normalised)}
        else:
            features[value] = {f"{column}_{v}": int(normalised == v) for v in ONE_HOT[column]}
    return features


def encode_records(records: list[dict[str, object]], schema: dict[str, tuple[str, object]]) -> list[dict[str, object]]:
    """encode() for validate_records()' typed records: each one's feature values (key, event time, label kept)."""
    kept = [c for c in (KEY, EVENT_TIME) if c in records[0]] + _numeric_columns(schema)
    categories = [
        (column, _category_features(column, tuple(allowed)))
        for column, (_kind, allowed) in schema.items()
        if column in ORDINAL or column in ONE_HOT
    ]
    label = [LABEL] if LABEL in schema and LABEL in records[0] else []
    encoded = []
    for record in records:
        out = {column: record[column] for column in kept}
        for column, features in categories:
            out.update(features[record[column]])
        encoded.append(out | {column: record[column] for column in label})
    return encoded


def extra_columns(columns: Iterable[str], schema: dict[str, tuple[str, object]]) -> list[str]:
    """Columns (a table's, or records' keys) the contract does not know: ignored, with a warning."""
    return [c for c in dict.fromkeys(columns) if c not in schema and c != EVENT_TIME]


def decode(values: dict[str, float]) -> dict[str, object]:
    """Feature values back to their contract columns' values (typed as validate() types them): a number, or a
    category in the contract's spelling; None where the features cannot tell (a one-hot group of zeros stands for
    every value it has no column for, as customer_gender's Other and Unkown)."""
    raw: dict[str, object] = {}
    for feature, value in values.items():
        column = RAW_COLUMN.get(feature)
        if column is None:
            continue
        kind, allowed = RAW_SCHEMA[column]
        canonical = _canonical(column, tuple(allowed)) if kind == "category" else {}
        if column in ONE_HOT:
            if value == 1:
                raw[column] = canonical.get(feature.removeprefix(f"{column}_"))
            else:
                raw.setdefault(column, None)
        elif column in ORDINAL:
            ranks = ORDINAL[column]
            raw[column] = (
                canonical.get(ranks[int(value)]) if float(value).is_integer() and 0 <= value < len(ranks) else None
            )
        else:
            raw[column] = int(value) if kind == "int" and float(value).is_integer() else float(value)
    return raw
