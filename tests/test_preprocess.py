"""processing/preprocess.py: generated data end to end, the splits, determinism and contract violations."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import ROWS, assert_outputs_survive_faults, files_under, outputs, run_script

import preprocess
from features import FEATURES
from pipelines.synthetic_data import generate

SPLITS = ("train", "validation", "test")
EXPECTED_FILES = [
    "features/claims.csv",
    "features/customers.csv",
    "headered/test.csv",
    "headered/train.csv",
    "headered/validation.csv",
    "manifest/manifest.json",
    "test/test.csv",
    "train/train.csv",
    "validation/validation.csv",
]


def run(claims: Path, customers: Path, out: Path, *extra: str) -> int:
    return preprocess.main(
        ["--claims", str(claims), "--customers", str(customers), "--output-dir", str(out), "--event-time", "0", *extra]
    )


def headered(splits: Path) -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(splits / f"headered/{name}.csv") for name in SPLITS}


def test_writes_every_output(splits: Path) -> None:
    assert [p.relative_to(splits).as_posix() for p in files_under(splits)] == EXPECTED_FILES
    manifest = json.loads((splits / "manifest/manifest.json").read_text())
    assert manifest["features"] == FEATURES
    assert sum(s["rows"] for s in manifest["splits"].values()) == ROWS
    for name, table in headered(splits).items():
        assert list(table.columns) == ["policy_id", "fraud", *FEATURES]
        bare = pd.read_csv(splits / f"{name}/{name}.csv", header=None)
        assert bare.to_numpy().tolist() == table.drop(columns="policy_id").to_numpy().tolist()
        assert manifest["splits"][name]["rows"] == len(table)


def test_split_sizes_and_no_policy_in_two_splits(splits: Path) -> None:
    tables = headered(splits)
    ids = [set(table["policy_id"]) for table in tables.values()]
    assert sum(len(s) for s in ids) == ROWS == len(set.union(*ids))
    for table, fraction in zip(tables.values(), (0.7, 0.15, 0.15), strict=True):
        assert len(table) == pytest.approx(ROWS * fraction, abs=4 * math.sqrt(ROWS * fraction * (1 - fraction)))


def test_every_split_keeps_about_the_fraud_rate(splits: Path, raw_data: dict[str, Path]) -> None:
    """The hash split is not stratified, but a split's fraud rate stays within four standard deviations."""
    overall = pd.read_csv(raw_data["claims"])["fraud"].mean()
    manifest = json.loads((splits / "manifest/manifest.json").read_text())
    for name, table in headered(splits).items():
        assert table["fraud"].mean() == pytest.approx(overall, abs=4 * math.sqrt(overall * (1 - overall) / len(table)))
        assert manifest["splits"][name]["fraud_rate"] == round(table["fraud"].mean(), 6)


def test_none_and_na_categories_survive(splits: Path, raw_data: dict[str, Path]) -> None:
    raw = pd.read_csv(raw_data["claims"], dtype=str, keep_default_na=False)
    claims = pd.read_csv(splits / "features/claims.csv")
    for column, value, feature in [
        ("authorities_contacted", "None", "authorities_contacted_none"),
        ("driver_relationship", "N/A", "driver_relationship_na"),
        ("collision_type", "N/A", "collision_type_na"),
    ]:
        assert (raw[column] == value).sum() > 0
        assert claims[feature].sum() == (raw[column] == value).sum()
    assert not claims.isna().any().any()


def test_same_seed_gives_byte_identical_outputs(raw_data: dict[str, Path], splits: Path, tmp_path: Path) -> None:
    assert run(raw_data["claims"], raw_data["customers"], tmp_path) == 0
    assert [p.read_bytes() for p in files_under(tmp_path)] == [p.read_bytes() for p in files_under(splits)]


def test_bare_run_from_a_shell(raw_data: dict[str, Path], splits: Path, tmp_path: Path) -> None:
    args = ["--claims", str(raw_data["claims"]), "--customers", str(raw_data["customers"])]
    result = run_script("processing/preprocess.py", *args, "--output-dir", str(tmp_path), "--event-time", "0")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "train/train.csv").read_bytes() == (splits / "train/train.csv").read_bytes()


@pytest.fixture
def small(tmp_path: Path) -> dict[str, pd.DataFrame]:
    """A small raw data set as string tables, for tests to break and write with `write`."""
    claims, customers = generate(300, 11, tmp_path / "raw")
    read = {"dtype": str, "keep_default_na": False}
    return {"claims": pd.read_csv(claims, **read), "customers": pd.read_csv(customers, **read)}


def write(tables: dict[str, pd.DataFrame], directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    for name, table in tables.items():
        table.to_csv(directory / f"{name}.csv", index=False)
    return directory / "claims.csv", directory / "customers.csv"


def duplicate_first_policy(claims: pd.DataFrame, times: tuple[str, str] | None) -> pd.DataFrame:
    """Claims with policy 1 twice (the copy with another incident_hour), with event times when given."""
    copy = claims.iloc[[0]].assign(incident_hour=str((int(claims.at[0, "incident_hour"]) + 1) % 24))
    claims = pd.concat([claims, copy], ignore_index=True)
    if times is not None:
        claims["event_time"] = "100"
        claims.loc[[0, len(claims) - 1], "event_time"] = list(times)
    return claims


BREAKS = {
    "missing column": ("claims", lambda t: t.drop(columns="num_witnesses"), ["missing column(s) num_witnesses"]),
    "unknown category": ("claims", lambda t: t.assign(incident_type="Flood"), ["'incident_type'", "'Flood'"]),
    "non-numeric value": (
        "customers",
        lambda t: t.assign(customer_age=["abc", *t["customer_age"][1:]]),
        ["'customer_age'", "line 2: 'abc'"],
    ),
    "value out of range": ("claims", lambda t: t.assign(incident_hour="24"), ["'incident_hour'", "in [0, 23]"]),
    "label not 0/1": ("claims", lambda t: t.assign(fraud="2"), ["'fraud'"]),
    "header-only file": ("customers", lambda t: t.iloc[:0], ["no data rows"]),
    "duplicates at the same event time": (
        "claims",
        lambda t: duplicate_first_policy(t, ("200", "200")),
        ["'policy_id'", "latest row is ambiguous"],
    ),
    "duplicates without event time": (
        "claims",
        lambda t: duplicate_first_policy(t, None),
        ["'policy_id'", "there is no 'event_time' column"],
    ),
    "claim without customer": (
        "claims",
        lambda t: pd.concat([t, t.iloc[[0]].assign(policy_id="99999")], ignore_index=True),
        ["'policy_id'", "no customer", "99999"],
    ),
    "integer beyond int64": (
        "claims",
        lambda t: replace_first(t, "injury_claim", "1e30"),
        ["'injury_claim'", "'1e30'"],
    ),
    "id beyond the exact integers of float64": (
        "claims",
        lambda t: replace_first(t, "policy_id", "1e20"),
        ["'policy_id'", "in [0, 9007199254740991]", "line 2: '1e20'"],
    ),
    "number beyond float32": ("claims", lambda t: replace_first(t, "vehicle_claim", "1e39"), ["'vehicle_claim'"]),
    "infinite event time": (
        "customers",
        lambda t: replace_first(t.assign(event_time="100"), "event_time", "inf"),
        ["'event_time'", "line 2: 'inf'"],
    ),
    "column given twice": (
        "claims",
        lambda t: pd.concat([t, 1 - t["fraud"].astype(int)], axis=1),
        ["column 'fraud' appears 2 times in the header"],
    ),
}


def replace_first(table: pd.DataFrame, column: str, value: str) -> pd.DataFrame:
    """The table with the first row's `column` set to `value`."""
    table = table.copy()
    table.loc[0, column] = value
    return table


@pytest.mark.parametrize("case", list(BREAKS))
def test_contract_violation(
    case: str, small: dict[str, pd.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    table, damage, expected = BREAKS[case]
    claims, customers = write({**small, table: damage(small[table])}, tmp_path / "in")
    out = tmp_path / "out"
    assert run(claims, customers, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(tmp_path / "in" / f"{table}.csv") in err
    for text in expected:
        assert text in err
    assert files_under(out) == []


@pytest.mark.parametrize("case", ["empty file", "missing file"])
def test_unreadable_file(
    case: str, small: dict[str, pd.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    claims, customers = write(small, tmp_path / "in")
    if case == "empty file":
        customers.write_bytes(b"")
    else:
        customers.unlink()
    assert run(claims, customers, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"preprocess: error: {customers}: ")
    assert len(err.splitlines()) == 1
    assert files_under(tmp_path / "out") == []


def test_duplicates_keep_the_latest_event_time(small: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    claims = duplicate_first_policy(small["claims"], ("300", "200"))
    claims_path, customers_path = write({**small, "claims": claims}, tmp_path / "in")
    assert run(claims_path, customers_path, tmp_path / "out") == 0
    features = pd.read_csv(tmp_path / "out/features/claims.csv")
    kept = features[features["policy_id"] == 1]
    assert len(kept) == 1
    assert (kept["event_time"].item(), kept["incident_hour"].item()) == (300.0, int(claims.at[0, "incident_hour"]))
    manifest = json.loads((tmp_path / "out/manifest/manifest.json").read_text())
    assert manifest["inputs"]["claims"] == {"rows": 301, "duplicates_dropped": 1}
    assert sum(split["rows"] for split in manifest["splits"].values()) == 300


def test_iso_event_times_become_epoch_seconds(small: dict[str, pd.DataFrame], tmp_path: Path) -> None:
    customers = small["customers"].assign(event_time="2024-01-01T00:00:00Z")
    claims_path, customers_path = write({**small, "customers": customers}, tmp_path / "in")
    assert run(claims_path, customers_path, tmp_path / "out") == 0
    event_times = pd.read_csv(tmp_path / "out/features/customers.csv")["event_time"]
    assert (event_times == 1_704_067_200.0).all()


def with_frauds(claims: pd.DataFrame, frauds: int) -> pd.DataFrame:
    """The claims with the first `frauds` rows labelled fraud and the rest not."""
    return claims.assign(fraud=["1"] * frauds + ["0"] * (len(claims) - frauds))


TOO_FEW = {
    "one row": lambda t: t.iloc[:1],
    "two rows": lambda t: t.iloc[:2],
    "no fraud": lambda t: with_frauds(t, 0),
    "all fraud": lambda t: with_frauds(t, len(t)),
    "two frauds": lambda t: with_frauds(t, 2),
}
COUNTS = re.compile(r"(train|validation|test) (\d+) fraud and (\d+) non-fraud")


@pytest.mark.parametrize("case", list(TOO_FEW))
def test_a_split_without_both_classes_is_refused(
    case: str, small: dict[str, pd.DataFrame], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Train, validation and test each need both classes (train and evaluate refuse a split without them)."""
    claims = TOO_FEW[case](small["claims"])
    claims_path, customers_path = write({**small, "claims": claims}, tmp_path / "in")
    assert run(claims_path, customers_path, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(
        f"preprocess: error: {claims_path}: column 'fraud': too few policies of a class to put both classes in "
        "train, validation and test with seed 42: "
    )
    assert len(err.splitlines()) == 1
    counts = [(name, int(frauds), int(others)) for name, frauds, others in COUNTS.findall(err)]
    assert [name for name, _, _ in counts] == list(SPLITS)
    assert sum(frauds for _, frauds, _ in counts) == (claims["fraud"] == "1").sum()
    assert sum(others for _, _, others in counts) == (claims["fraud"] == "0").sum()
    lacking = [name for name, frauds, others in counts if not frauds or not others]
    assert lacking and err.endswith(f"; {' and '.join(lacking)} need(s) both")
    assert files_under(tmp_path / "out") == []


def parts_of(ids: np.ndarray, seed: int = 42, validation: float = 0.15, test: float = 0.15) -> pd.Series:
    """policy_id -> the name of its split, from preprocess.split."""
    parts = preprocess.split(pd.DataFrame({"policy_id": ids}), validation, test, seed)
    return pd.concat([pd.Series(name, index=ids[rows]) for name, rows in parts.items()]).sort_index()


def test_a_policy_keeps_its_split_when_rows_are_added_or_removed() -> None:
    rng = np.random.default_rng(0)
    before = rng.choice(10**12, 20_000, replace=False)
    after = np.concatenate([rng.permutation(before)[:15_000], rng.choice(10**12, 10_000, replace=False)])
    kept = parts_of(before).index.intersection(parts_of(after).index)
    assert len(kept) >= 15_000
    assert parts_of(before)[kept].equals(parts_of(after)[kept])


def test_the_split_depends_on_the_seed() -> None:
    ids = np.arange(10_000)
    assert parts_of(ids, seed=42).equals(parts_of(ids, seed=42))
    assert (parts_of(ids, seed=42) != parts_of(ids, seed=43)).mean() > 0.3


@pytest.mark.parametrize(("validation", "test"), [(0.15, 0.15), (0.1, 0.3), (0.45, 0.05)])
@pytest.mark.parametrize("ids", ["consecutive", "sparse"])
def test_fractions_are_honoured_on_many_policies(ids: str, validation: float, test: float) -> None:
    n = 1_000_000
    policy_ids = np.arange(n) if ids == "consecutive" else np.random.default_rng(1).choice(2**53, n, replace=False)
    shares = parts_of(policy_ids, 7, validation, test).value_counts(normalize=True)
    assert shares.to_dict() == pytest.approx(
        {"train": 1 - validation - test, "validation": validation, "test": test}, abs=0.002
    )


def test_outputs_are_all_or_nothing(small: dict[str, pd.DataFrame], small_disk, tmp_path: Path) -> None:
    disk = small_disk(2048)
    claims, customers = write(small, tmp_path / "in")
    argv = ["--claims", str(claims), "--customers", str(customers), "--output-dir", str(disk / "out")]
    first, rerun = [*argv, "--event-time", "0"], [*argv, "--event-time", "0", "--seed", "43"]
    assert_outputs_survive_faults("processing/preprocess.py", disk, first, rerun, tmp_path / "marker")
    assert sorted(outputs(disk)) == [f"out/{name}" for name in EXPECTED_FILES]


def digests(directory: Path) -> dict[str, str]:
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
        for p in files_under(directory)
    }


PINNED = {
    "features/claims.csv": "f37e24c339cafac1",
    "features/customers.csv": "372ab29981f01db6",
    "headered/test.csv": "87a70020f3b8c09e",
    "headered/train.csv": "b2495bf72e35a41e",
    "headered/validation.csv": "abf3915ddd64bcf0",
    "manifest/manifest.json": "84a8936b37eaa5ef",
    "test/test.csv": "22d03c4ac6027f4f",
    "train/train.csv": "b700c80a50963296",
    "validation/validation.csv": "b0d7480240aa44e3",
}


def test_outputs_are_pinned_for_a_seed(splits: Path) -> None:
    """The exact bytes for the shared 5,000-policy data set and seed 42. The pyarrow reader and writer kept every
    byte of the stratified split's outputs; the hash split by policy_id then re-pinned the split files and the
    manifest (other policies land in each split), the feature tables kept theirs."""
    assert digests(splits) == PINNED


def test_csv_text_is_what_pandas_to_csv_wrote(tmp_path: Path) -> None:
    """The pyarrow writer, fed by compact(), writes floats and integers exactly as pandas' to_csv did."""
    floats = [0.0, -0.0, 1e-05, 0.0001, 0.1, 14783.48, 123456789012.0, 9999999999999998.0, 1e16, 3.4e38, 1704067200.0]
    frame = pd.DataFrame({"policy_id": range(len(floats)), "amount": floats, "big": 2**53 - 1, "flag": 1})
    preprocess.writer(Path("features/x.csv"), pa.Table.from_pandas(preprocess.compact(frame.copy())))(tmp_path / "x")
    assert (tmp_path / "x").read_text() == frame.to_csv(index=False, lineterminator="\n")
