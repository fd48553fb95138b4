"""processing/features.py's contract: what it accepts and refuses, value by value.

The contract has two execution paths: validate() column by column (files) and validate_records() record by
record (requests). Every case here runs through both, and they must agree: the same typed values and
features, or the same message."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import features
from features import (
    CLAIMS_SCHEMA,
    CUSTOMERS_SCHEMA,
    EVENT_TIME,
    ContractError,
    encode,
    encode_records,
    validate,
    validate_records,
)

CLAIM = {
    "policy_id": "1",
    "driver_relationship": "Self",
    "incident_type": "Collision",
    "collision_type": "Front",
    "incident_severity": "Minor",
    "authorities_contacted": "Police",
    "num_vehicles_involved": "1",
    "num_injuries": "0",
    "num_witnesses": "0",
    "police_report_available": "No",
    "injury_claim": "100",
    "vehicle_claim": "1000.5",
    "total_claim_amount": "1100.5",
    "incident_month": "1",
    "incident_day": "1",
    "incident_dow": "0",
    "incident_hour": "0",
    "fraud": "0",
    EVENT_TIME: "0",
}
SOURCE = "claims.csv"


def claims(**values: str) -> pd.DataFrame:
    """One valid raw claim (strings, as read from CSV) with some values replaced."""
    return pd.DataFrame([{**CLAIM, **values}])


def both(frame: pd.DataFrame, schema: dict = CLAIMS_SCHEMA, label: bool = True) -> pd.DataFrame:
    """validate() on the table; validate_records() on its rows must give the same typed values and features."""
    typed = validate(frame, schema, SOURCE, label)
    by_record = validate_records(frame.to_dict("records"), schema, SOURCE, label)
    pd.testing.assert_frame_equal(pd.DataFrame(by_record, index=typed.index), typed)
    pd.testing.assert_frame_equal(
        pd.DataFrame(encode_records(by_record, schema), index=typed.index), encode(typed, schema)
    )
    return typed


def error_of(frame: pd.DataFrame, schema: dict = CLAIMS_SCHEMA, label: bool = True) -> str:
    """The message of validate(); validate_records() on the table's rows must give the same one."""
    messages = []
    for check in (validate, validate_records):
        with pytest.raises(ContractError) as caught:
            check(frame if check is validate else frame.to_dict("records"), schema, SOURCE, label)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    return messages[0]


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("injury_claim", "1e30"),  # was cast to int64 as a negative number
        ("injury_claim", "9223372036854775808"),  # 2**63: outside int64
        ("policy_id", "1e20"),  # 1e20 and 2e20 both became the same int64, joining another customer
        ("policy_id", "9007199254740992"),  # 2**53: above the ids float64 holds exactly
        ("vehicle_claim", "1e39"),  # finite in float64, infinite in the model's float32
        ("total_claim_amount", "3.5e38"),
        ("vehicle_claim", "1e400"),
        ("vehicle_claim", "Infinity"),
        ("vehicle_claim", "nan"),
        ("vehicle_claim", "1_000"),  # Python's float() reads underscores
        ("num_witnesses", "１２"),  # and fullwidth digits
        ("incident_hour", "0x10"),
        ("injury_claim", "1,000"),
    ],
)
def test_numbers_outside_the_contract_are_refused(column: str, value: str) -> None:
    error = error_of(claims(**{column: value}))
    assert error.startswith(f"{SOURCE}: column '{column}': expected ")
    assert f"line 2: {value!r}" in error


@pytest.mark.parametrize("value", ["inf", "Infinity", "-1", "1e20", "253402300800", "1969-12-31T23:59:59Z", "1_000"])
def test_event_times_outside_the_contract_are_refused(value: str) -> None:
    error = error_of(claims(event_time=value))
    assert f"column '{EVENT_TIME}': expected epoch seconds" in error
    assert f"line 2: {value!r}" in error


@pytest.mark.parametrize(
    ("value", "seconds"), [("0", 0.0), ("253402300799", 253402300799.0), ("9999-12-31T23:59:59Z", 253402300799.0)]
)
def test_event_times_at_the_ends_of_the_range_are_accepted(value: str, seconds: float) -> None:
    assert both(claims(event_time=value))[EVENT_TIME].tolist() == [seconds]


def test_numbers_at_the_ends_of_the_ranges_keep_their_exact_values() -> None:
    frame = pd.concat(
        [
            claims(policy_id="9007199254740991", injury_claim="1e15", vehicle_claim="3.4e38"),
            claims(policy_id="1E+3", injury_claim="+7", vehicle_claim=".5"),
        ],
        ignore_index=True,
    )
    typed = both(frame)
    assert typed["policy_id"].dtype == np.int64
    assert typed["policy_id"].tolist() == [2**53 - 1, 1000]
    assert typed["injury_claim"].tolist() == [10**15, 7]
    assert typed["vehicle_claim"].tolist() == [3.4e38, 0.5]
    assert np.isfinite(typed["vehicle_claim"].to_numpy(dtype=np.float32)).all()


def test_a_column_given_twice_is_refused() -> None:
    frame = claims()
    frame.insert(0, "fraud", "1", allow_duplicates=True)
    with pytest.raises(ContractError) as caught:  # a table only: a record cannot hold a key twice
        validate(frame, CLAIMS_SCHEMA, SOURCE)
    assert str(caught.value) == f"{SOURCE}: column 'fraud' appears 2 times in the header; expected each column once"


def test_a_huge_value_is_quoted_cut_short_and_hides_no_other_error() -> None:
    message = error_of(claims(incident_type="x" * 5_000_000, incident_hour="25"))
    assert len(message) < 1_000
    assert "column 'incident_type'" in message and "more characters" in message
    assert "column 'incident_hour'" in message and "'25'" in message


CANDIDATES = [
    *["", " ", "0", "1", " 7 ", "\t12\n", "-1", "-0", "+3", "1.5", "2.0", "1.", ".5", "1e3", "1E+3", "5e-1"],
    *["12", "13", "18", "23", "24", "31", "32", "100", "101", "1900", "2100", "2101", "1e20", "3.4e38", "3.5e38"],
    *["9007199254740991", "9007199254740992", "1e400", "-1e400", "nan", "inf", "Infinity", "1_0", "0x1", "1,0"],
    *["１", "٣", "1 2", "e5", "1e", "..5", "True", "None", "null", "infinity", "-inf", "+nan", "1e-400", "1__0"],
    *["\x1c1", "\xa01\xa0", "\u20281", "\u200b1", "\x851", "\x1f Theft", "1.e5", "-.5e-3", "00", "0e0"],
    *["Self", "self", " SPOUSE ", "N/A", "n/a", "na", "N-A", "Other", "Theft", "theft!", "Break-in", "breakin"],
    *["Break in", "Collision", "Minor", "TOTALED", "Police", "None", "Yes", "no", "Male", "Female", "Unkown"],
    *["Unknown", "Below High School", "below  high school", "Advanced Degree", "CA", "ca", "id", "15/30", "1530"],
    *["100/200", "İ", "Theftİ", "ß", "x" * 200],
    *["1970-01-01T00:00:00Z", "2024-02-29T12:00:00+01:00", "2024-02-30T00:00:00Z", "9999-12-31T23:59:59Z"],
    *["10000-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "2024-01-01", "253402300799", "253402300800"],
]
"""Raw values, valid and not, for every column: numbers in and out of the grammar and the ranges, category
spellings, Unicode, and event times."""


@pytest.mark.parametrize("column", [*CLAIMS_SCHEMA, *(c for c in CUSTOMERS_SCHEMA if c != "policy_id"), EVENT_TIME])
def test_both_paths_type_every_candidate_value_alike(column: str) -> None:
    """Value by value: the column path's typed value and verdict equal the record path's."""
    schema = CLAIMS_SCHEMA if column in CLAIMS_SCHEMA or column == EVENT_TIME else CUSTOMERS_SCHEMA
    frame = pd.DataFrame({column: CANDIDATES})
    if column == EVENT_TIME:
        values, bad = features._parse_event_time(frame)
        check = features._event_time_value
    else:
        kind, allowed = schema[column]
        values, bad = features._check_column(frame, column, kind, allowed)
        check = features._value_check(column, kind, tuple(allowed))
    by_record = [check(value) for value in CANDIDATES]
    assert [value is None for value in by_record] == bad.tolist()
    accepted = [(raw, value) for raw, value, refused in zip(CANDIDATES, values, bad, strict=True) if not refused]
    assert accepted == [(raw, value) for raw, value in zip(CANDIDATES, by_record, strict=True) if value is not None]
    assert accepted, "no candidate is valid for this column"


def test_both_paths_report_many_bad_rows_and_columns_alike() -> None:
    frame = pd.concat([claims(incident_hour=str(h), incident_type=t) for h in range(20, 30) for t in ("x", "Theft")])
    frame = frame.reset_index(drop=True).assign(event_time=["-1", "0"] * 10)
    message = error_of(frame)
    assert "column 'incident_hour': expected an integer in [0, 23]; line 10: '24'" in message
    assert "and 7 more" in message and "and 5 more" in message
    assert message.index("'incident_type'") < message.index("'incident_hour'") < message.index(f"'{EVENT_TIME}'")


def test_a_record_without_a_column_is_refused_as_empty_and_a_column_in_no_record_as_missing() -> None:
    records = [{**CLAIM}, {k: v for k, v in CLAIM.items() if k != "num_witnesses"}]
    with pytest.raises(ContractError, match=r"column 'num_witnesses': expected an integer .*; line 3: ''$"):
        validate_records(records, CLAIMS_SCHEMA, SOURCE)
    without = [{k: v for k, v in CLAIM.items() if k != "num_witnesses"}]
    assert error_of(pd.DataFrame(without)).startswith(f"{SOURCE}: missing column(s) num_witnesses; expected columns: ")


def test_records_are_numbered_from_the_first_line_given() -> None:
    with pytest.raises(ContractError, match=r"line 1: 'x'"):
        validate_records([{**CLAIM, "incident_type": "x"}], CLAIMS_SCHEMA, SOURCE, first_line=1)


def test_a_missing_value_in_a_table_built_by_hand_is_refused_not_a_crash() -> None:
    """A DataFrame made in code may hold None or NaN where a file holds ''; the table path refuses it as a value."""
    frame = pd.concat([claims(), claims(incident_type=None, num_witnesses=float("nan"))], ignore_index=True)
    with pytest.raises(ContractError) as caught:
        validate(frame, CLAIMS_SCHEMA, SOURCE)
    assert "column 'incident_type': expected one of Collision, Break-in, Theft; line 3: None" in str(caught.value)
    assert "column 'num_witnesses'" in str(caught.value)


def test_scored_records_need_no_label() -> None:
    typed = both(claims().drop(columns=["fraud"]), label=False)
    assert "fraud" not in typed
