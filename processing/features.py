"""The input data contract (../shared/DATA_CONTRACT.md) and the feature transforms.

One module, used by preprocessing and by serving, so training and inference build features
with the same code. It depends on pandas, numpy and pyarrow only.
"""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

KEY = "policy_id"
LABEL = "fraud"
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


def normalise(value: pd.Series, column: str) -> pd.Series:
    """Lower-case a category column, and strip symbols where the contract says so."""
    value = value.str.lower()
    if column in SYMBOL_STRIPPED:
        value = value.str.replace(r"[^a-z0-9 ]", "", regex=True)
    return value


def _distinct(values: pd.Series, column: str) -> tuple[np.ndarray, pd.Series]:
    """Each row's code into the column's distinct values, and those values normalised: a category column has
    a few distinct values, so the string work is done once per value, not once per row."""
    codes, distinct = pd.factorize(values, use_na_sentinel=False)
    return codes, normalise(pd.Series(distinct), column)


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


def describe_rows(frame: pd.DataFrame, mask: pd.Series, column: str) -> str:
    """'line 3: 'abc', line 7: '' ...' for the first offending rows (line numbers count the header as 1)."""
    bad = frame.loc[mask, column]
    shown_rows = ", ".join(f"line {i + 2}: {shown(v)}" for i, v in bad.head(MAX_ROWS_SHOWN).items())
    more = f" and {len(bad) - MAX_ROWS_SHOWN} more" if len(bad) > MAX_ROWS_SHOWN else ""
    return f"{shown_rows}{more}"


@functools.cache
def _canonical(column: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """Normalised category -> the contract's spelling (built once per column)."""
    return {normalise(pd.Series([v]), column).iloc[0]: v for v in allowed}


def _parse_numbers(raw: pd.Series) -> pd.Series:
    """Numbers (float64) of stripped strings; NaN where a value is not plain decimal or scientific notation."""
    matched = pa.array(raw.where(raw.str.fullmatch(NUMBER)), type=pa.string(), from_pandas=True)
    return pd.Series(pc.cast(matched, pa.float64()).to_numpy(zero_copy_only=False), index=raw.index)


def _check_column(frame: pd.DataFrame, column: str, kind: str, allowed: object) -> tuple[pd.Series, str | None]:
    """Parse one raw string column; return the typed values and an error description or None."""
    raw = frame[column].str.strip()
    if kind == "category":
        codes, normalised = _distinct(raw, column)
        spelt = normalised.map(_canonical(column, tuple(allowed)))
        values = spelt.take(codes).set_axis(frame.index)
        bad = values.isna()
        expected = f"one of {', '.join(allowed)}"
    else:
        values = _parse_numbers(raw)
        low, high = allowed
        if high is None:
            high = INT_MAX if kind == "int" else FLOAT_MAX
        bad = ~values.between(low, high)  # NaN is not between
        if kind == "int":
            bad |= values != values.round()
        expected = f"{'an integer' if kind == 'int' else 'a number'} in [{low}, {high}]"
        if kind == "int" and not bad.any():
            values = values.astype("int64")
    if bad.any():
        return values, f"column '{column}': expected {expected}; {describe_rows(frame, bad, column)}"
    return values, None


EPOCH = pd.Timestamp(0, tz="UTC").as_unit("s")


def _parse_event_time(frame: pd.DataFrame) -> tuple[pd.Series, str | None]:
    """Epoch seconds, from epoch numbers or ISO-8601 timestamps, within EVENT_TIMES."""
    raw = frame[EVENT_TIME].str.strip()
    numeric = _parse_numbers(raw)
    stamps = pd.to_datetime(raw.where(numeric.isna()), utc=True, errors="coerce", format="ISO8601")
    seconds = numeric.fillna((stamps - EPOCH) / pd.Timedelta(seconds=1))
    bad = ~seconds.between(*EVENT_TIMES)
    if bad.any():
        return seconds, (
            f"column '{EVENT_TIME}': expected {EVENT_TIMES_TEXT} or an ISO-8601 timestamp from 1970 to 9999; "
            f"{describe_rows(frame, bad, EVENT_TIME)}"
        )
    return seconds.astype("float64"), None


def validate(
    frame: pd.DataFrame, schema: dict[str, tuple[str, object]], source: str, label: bool = True
) -> pd.DataFrame:
    """Check a table of raw strings against the contract and return it typed.

    `label=False` accepts records without the label (data to be scored). An optional `event_time`
    column is parsed to epoch seconds. Raises ContractError naming the source, every failing
    column and up to five offending rows of each.
    """
    counts = frame.columns.value_counts(sort=False)
    repeated = [f"column '{column}' appears {n} times" for column, n in counts[counts > 1].items()]
    if repeated:
        raise ContractError(f"{source}: {', '.join(repeated)} in the header; expected each column once")
    required = [c for c in schema if label or c != LABEL]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ContractError(
            f"{source}: missing column(s) {', '.join(missing)}; expected columns: {', '.join(required)}"
        )
    if frame.empty:
        raise ContractError(f"{source}: no data rows (only a header)")
    typed, errors = {}, []
    for column in required:
        kind, allowed = schema[column]
        typed[column], error = _check_column(frame, column, kind, allowed)
        errors.append(error)
    if EVENT_TIME in frame.columns:
        typed[EVENT_TIME], error = _parse_event_time(frame)
        errors.append(error)
    errors = [e for e in errors if e]
    if errors:
        raise ContractError(f"{source}: " + "; ".join(errors))
    return pd.DataFrame(typed, index=frame.index, copy=False)


def extra_columns(frame: pd.DataFrame, schema: dict[str, tuple[str, object]]) -> list[str]:
    """Columns the contract does not know (ignored, with a warning)."""
    return [c for c in frame.columns if c not in schema and c != EVENT_TIME]
