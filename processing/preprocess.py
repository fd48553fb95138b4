"""Preprocess raw claims and customers: validate, transform, deduplicate, join and split by policy.

Runs in a SageMaker processing container (defaults under /opt/ml/processing) or bare:

    python processing/preprocess.py --claims data/claims.csv --customers data/customers.csv --output-dir out

Writes, under the output directory:
    train/train.csv, validation/validation.csv, test/test.csv   label first, no header (XGBoost)
    headered/{train,validation,test}.csv                        the same rows with a header (bias, evaluation)
    features/claims.csv, features/customers.csv                 Feature Store tables (policy_id, event_time, ...)
    manifest/manifest.json                                      row counts, fraud rates, the ordered features

The split: a policy's place is a hash of its policy_id keyed by --seed (SplitMix64 mixing, mapped to [0, 1));
below the test fraction it goes to test, below test + validation fraction to validation, else to train. It depends
on the id and the seed only, not on the other rows, so as data grows across retrains a policy keeps its split:
model versions are compared on the same test policies and none trains on another's test policies. The split is
not stratified; each split's fraud rate is in the manifest.

Input that breaks the contract exits with code 2 and a message naming the file, the column and the
offending rows, before anything is written. So does data whose split leaves train, validation or test without
both classes (training and evaluation need them; the message gives each split's counts). With
--data-version (the pipeline's DataVersion step), inputs whose fingerprint differs from it (the data changed
since that step read it) exit with code 2 too.

The outputs are written all or nothing (atomic_outputs): an output that cannot be written (read-only, disk
full) exits with code 1 and leaves the previous outputs whole.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv

import atomic_outputs
import data_version
from features import (
    CLAIMS_SCHEMA,
    CUSTOMERS_SCHEMA,
    EVENT_TIME,
    FEATURES,
    KEY,
    LABEL,
    ContractError,
    encode,
    extra_columns,
    validate,
)

log = logging.getLogger("preprocess")
PROCESSING = Path("/opt/ml/processing")
SPLITS = ("train", "validation", "test")
QUOTED_NEWLINES = pcsv.ParseOptions(newlines_in_values=True)


def resolve_input(path: Path, name: str) -> Path:
    """A CSV file, or a directory holding `<name>.csv` or exactly one CSV (as a processing input is)."""
    if path.is_file():
        return path
    if path.is_dir():
        if (path / f"{name}.csv").is_file():
            return path / f"{name}.csv"
        candidates = sorted(path.glob("*.csv"))
        if len(candidates) == 1:
            return candidates[0]
        raise ContractError(
            f"{path}: expected {name}.csv or exactly one CSV file in this directory, found {len(candidates)}"
        )
    raise ContractError(f"{path}: file not found")


def read_table(path: Path, name: str, schema: dict) -> pd.DataFrame:
    """Read a raw table as strings (so 'None' and 'N/A' stay categories) and validate it.

    pyarrow's reader keeps a column named twice named twice (pandas would rename the second 'fraud' to
    'fraud.1'), so the contract refuses it."""
    path = resolve_input(path, name)
    as_text = pcsv.ConvertOptions(column_types=dict.fromkeys([*schema, EVENT_TIME], pa.large_string()))
    try:
        frame = pcsv.read_csv(path, convert_options=as_text, parse_options=QUOTED_NEWLINES).to_pandas()
    except pa.ArrowInvalid as error:
        if str(error) == "Empty CSV file":
            raise ContractError(f"{path}: the file is empty; expected a header row with: {', '.join(schema)}") from None
        raise ContractError(f"{path}: not a readable CSV file ({error})") from None
    extras = extra_columns(frame.columns, schema)
    if extras:
        log.warning("%s: ignoring column(s) the contract does not know: %s", path, ", ".join(extras))
    return validate(frame, schema, str(path))


def latest_per_policy(table: pd.DataFrame, source: str) -> tuple[pd.DataFrame, int]:
    """Keep one row per policy: the one with the latest event_time. Returns the table and the rows dropped."""
    duplicated = table[KEY].duplicated(keep=False)
    if not duplicated.any():
        return table, 0
    if EVENT_TIME not in table:
        ids = table.loc[duplicated, KEY].drop_duplicates().head(5).tolist()
        raise ContractError(
            f"{source}: column '{KEY}': policies appear more than once and there is no '{EVENT_TIME}' column "
            f"to pick the latest row; duplicated policy_id(s): {ids}"
        )
    latest = table.groupby(KEY)[EVENT_TIME].transform("max")
    at_latest = table[table[EVENT_TIME] == latest]
    ties = at_latest[KEY].duplicated(keep=False)
    if ties.any():
        rows = ", ".join(f"line {i + 2}" for i in at_latest.index[ties][:5])
        raise ContractError(
            f"{source}: columns '{KEY}', '{EVENT_TIME}': a policy has several rows at its latest event_time, "
            f"so the latest row is ambiguous; {rows}"
        )
    return at_latest, len(table) - len(at_latest)


def join(claims: pd.DataFrame, customers: pd.DataFrame, claims_source: str) -> pd.DataFrame:
    """One row per claim, sorted by policy, with the claim's columns (its event_time too) and its customer's features;
    every claim must have its customer."""
    orphans = ~claims[KEY].isin(customers[KEY])
    if orphans.any():
        rows = ", ".join(f"line {i + 2}: {p}" for i, p in claims.loc[orphans, KEY].head(5).items())
        raise ContractError(f"{claims_source}: column '{KEY}': {int(orphans.sum())} claim(s) have no customer; {rows}")
    claims = claims.sort_values(KEY, kind="stable")
    return claims.merge(customers.drop(columns=EVENT_TIME), on=KEY, validate="one_to_one")  # keeps the claims' order


def split_position(policy_ids: np.ndarray, seed: int) -> np.ndarray:
    """Each policy's place in [0, 1): a hash of its id keyed by the seed, so it depends on nothing else."""
    key = _mix(np.array([seed % 2**64], dtype=np.uint64))
    hashed = _mix(_mix(policy_ids.astype(np.uint64) ^ key) + key)
    return (hashed >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 that spreads every input bit over the output (wrapping)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def split(joined: pd.DataFrame, validation_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Each split's rows of `joined` (a boolean mask): test below test_fraction, validation below test +
    validation fraction, train above (see the module docstring)."""
    position = split_position(joined[KEY].to_numpy(), seed)
    part = np.searchsorted([test_fraction, test_fraction + validation_fraction], position, side="right")
    return {name: part == i for i, name in zip((2, 1, 0), SPLITS, strict=True)}


def check_classes(labels: np.ndarray, parts: dict[str, np.ndarray], seed: int, source: str) -> None:
    """Refuse a split without both classes in train, validation and test (training and evaluation need them)."""
    counts = {name: (int(labels[rows].sum()), int((labels[rows] == 0).sum())) for name, rows in parts.items()}
    lacking = [name for name, (frauds, others) in counts.items() if not frauds or not others]
    if lacking:
        shown = ", ".join(f"{name} {frauds} fraud and {others} non-fraud" for name, (frauds, others) in counts.items())
        raise ContractError(
            f"{source}: column '{LABEL}': too few policies of a class to put both classes in train, validation "
            f"and test with seed {seed}: {shown}; {' and '.join(lacking)} need(s) both"
        )


def check_data_version(args: argparse.Namespace) -> None:
    """The inputs must be the data the DataVersion step fingerprinted (and so the data the cache key names)."""
    if args.data_version is None:
        return
    try:
        found = data_version.describe({"claims": args.claims, "customers": args.customers})["version"]
    except data_version.InputError as error:
        raise ContractError(str(error)) from None
    if found != args.data_version:
        raise ContractError(
            f"{args.claims}, {args.customers}: the data changed during the execution (data version "
            f"{args.data_version} expected, {found} found); start a new execution"
        )


def load(path: Path, name: str, schema: dict, event_time: float) -> tuple[pd.DataFrame, int]:
    """A raw table read, validated, deduplicated (latest event_time) and encoded; and the duplicate rows dropped."""
    raw, dropped = latest_per_policy(read_table(path, name, schema), str(path))
    if EVENT_TIME not in raw:
        raw[EVENT_TIME] = event_time
    return compact(encode(raw, schema)), dropped


def prepare(args: argparse.Namespace) -> tuple[dict[Path, pa.Table | dict], dict]:
    """Everything the step writes, computed in memory: {relative path: table or JSON document}."""
    check_data_version(args)
    event_time = float(args.event_time if args.event_time is not None else round(time.time()))
    claims, claims_dropped = load(args.claims, "claims", CLAIMS_SCHEMA, event_time)
    customers, customers_dropped = load(args.customers, "customers", CUSTOMERS_SCHEMA, event_time)
    claim_columns = list(claims.columns)
    joined = join(claims, customers, str(args.claims))
    del claims  # joined holds every claim, sorted; dropping it now keeps the peak memory down
    parts = split(joined, args.validation_fraction, args.test_fraction, args.seed)
    labels = joined[LABEL].to_numpy()
    check_classes(labels, parts, args.seed, str(args.claims))

    table = pa.Table.from_pandas(joined, preserve_index=False)
    outputs: dict[Path, pa.Table | dict] = {}
    for name, rows in parts.items():
        outputs[Path("headered") / f"{name}.csv"] = table.filter(rows).select([KEY, LABEL, *FEATURES])
        outputs[Path(name) / f"{name}.csv"] = outputs[Path("headered") / f"{name}.csv"].drop_columns(KEY)
    outputs[Path("features/claims.csv")] = table.select(claim_columns)
    outputs[Path("features/customers.csv")] = pa.Table.from_pandas(
        customers.sort_values(KEY, kind="stable"), preserve_index=False
    )
    manifest = {
        "features": FEATURES,
        "label": LABEL,
        "splits": {
            name: {"rows": int(rows.sum()), "fraud_rate": round(float(labels[rows].mean()), 6)}
            for name, rows in parts.items()
        },
        "inputs": {
            "claims": {"rows": len(joined) + claims_dropped, "duplicates_dropped": claims_dropped},
            "customers": {"rows": len(customers) + customers_dropped, "duplicates_dropped": customers_dropped},
        },
        "seed": args.seed,
        "validation_fraction": args.validation_fraction,
        "test_fraction": args.test_fraction,
        "default_event_time": event_time,
        "data_version": args.data_version,
    }
    outputs[Path("manifest/manifest.json")] = manifest
    return outputs, manifest


def writer(relative: Path, content: pa.Table | dict) -> atomic_outputs.Writer:
    """The writer of one output: JSON, or CSV with a header except in the bare splits XGBoost reads."""
    if isinstance(content, dict):
        return atomic_outputs.text_writer(json.dumps(content, indent=2) + "\n")
    options = pcsv.WriteOptions(
        include_header=relative.parts[0] not in SPLITS, quoting_style="none", quoting_header="none"
    )

    def write_csv(path: Path) -> None:
        with open(path, "wb") as file:
            pcsv.write_csv(content, file, options)

    return write_csv


def compact(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame in the form its CSV is written from, in less memory: each float column as the text pandas' to_csv
    writes (Python's repr: '0.0', '1e-05'), formatted once per distinct value (by its bits, so -0.0 stays); each
    integer column in the smallest integer type that holds its values (the text is the same)."""
    for name in frame.columns[frame.dtypes == np.float64]:
        codes, distinct = pd.factorize(frame[name].to_numpy().view(np.int64))
        text = pa.array([repr(value) for value in distinct.view(np.float64).tolist()]).take(codes)
        frame[name] = text.to_pandas().set_axis(frame.index)
    for name in frame.columns[frame.dtypes == np.int64]:
        values = frame[name].to_numpy()
        frame[name] = values.astype(np.result_type(np.min_scalar_type(values.min()), np.min_scalar_type(values.max())))
    return frame


def write_outputs(outputs: dict[Path, pa.Table | dict], output_dir: Path) -> None:
    """Write every output, all or nothing (atomic_outputs): a failure leaves the previous outputs whole."""
    atomic_outputs.write_all(
        {output_dir / relative: writer(relative, content) for relative, content in outputs.items()}
    )


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 0.5:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 0.5")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=Path, default=PROCESSING / "input/claims", help="claims CSV or directory")
    parser.add_argument(
        "--customers", type=Path, default=PROCESSING / "input/customers", help="customers CSV or directory"
    )
    parser.add_argument("--output-dir", type=Path, default=PROCESSING / "output")
    parser.add_argument("--validation-fraction", type=fraction, default=0.15)
    parser.add_argument("--test-fraction", type=fraction, default=0.15)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--event-time",
        type=float,
        default=None,
        help="epoch seconds for rows without an event_time column (default: now)",
    )
    parser.add_argument("--data-version", help="the inputs' fingerprint (data_version.py); a mismatch is an error")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        atomic_outputs.check_directory(args.output_dir)
        outputs, manifest = prepare(args)
        write_outputs(outputs, args.output_dir)
    except ContractError as error:
        print(f"preprocess: error: {error}", file=sys.stderr)
        return 2
    except atomic_outputs.OutputError as error:
        print(f"preprocess: error: {error}", file=sys.stderr)
        return 1
    for name, stats in manifest["splits"].items():
        log.info("%s: %d policies, fraud rate %.4f", name, stats["rows"], stats["fraud_rate"])
    log.info("wrote %d files under %s", len(outputs), args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
