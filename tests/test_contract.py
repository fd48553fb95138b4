"""processing/features.py's contract: what validate() accepts and refuses, value by value."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features import CLAIMS_SCHEMA, EVENT_TIME, ContractError, validate

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


def error_of(frame: pd.DataFrame) -> str:
    with pytest.raises(ContractError) as caught:
        validate(frame, CLAIMS_SCHEMA, SOURCE)
    return str(caught.value)


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
    assert validate(claims(event_time=value), CLAIMS_SCHEMA, SOURCE)[EVENT_TIME].tolist() == [seconds]


def test_numbers_at_the_ends_of_the_ranges_keep_their_exact_values() -> None:
    frame = pd.concat(
        [
            claims(policy_id="9007199254740991", injury_claim="1e15", vehicle_claim="3.4e38"),
            claims(policy_id="1E+3", injury_claim="+7", vehicle_claim=".5"),
        ],
        ignore_index=True,
    )
    typed = validate(frame, CLAIMS_SCHEMA, SOURCE)
    assert typed["policy_id"].dtype == np.int64
    assert typed["policy_id"].tolist() == [2**53 - 1, 1000]
    assert typed["injury_claim"].tolist() == [10**15, 7]
    assert typed["vehicle_claim"].tolist() == [3.4e38, 0.5]
    assert np.isfinite(typed["vehicle_claim"].to_numpy(dtype=np.float32)).all()


def test_a_column_given_twice_is_refused() -> None:
    frame = claims()
    frame.insert(0, "fraud", "1", allow_duplicates=True)
    assert error_of(frame) == f"{SOURCE}: column 'fraud' appears 2 times in the header; expected each column once"


def test_a_huge_value_is_quoted_cut_short_and_hides_no_other_error() -> None:
    message = error_of(claims(incident_type="x" * 5_000_000, incident_hour="25"))
    assert len(message) < 1_000
    assert "column 'incident_type'" in message and "more characters" in message
    assert "column 'incident_hour'" in message and "'25'" in message
