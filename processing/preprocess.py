"""Preprocess raw claims and customers: validate, transform, deduplicate, join and split by policy.

Runs in a SageMaker processing container (defaults under /opt/ml/processing) or bare:

    python processing/preprocess.py --claims data/claims.csv --customers data/customers.csv --output-dir out

Writes, under the output directory:
    train/train.csv, validation/validation.csv, test/test.csv   label first, no header (XGBoost)
    headered/{train,validation,test}.csv                        the same rows with a header (bias, evaluation)
    features/claims.csv, features/customers.csv                 Feature Store tables (policy_id, event_time, ...)
    manifest/manifest.json                                      row counts, fraud rates, the ordered features

Input that breaks the contract exits with code 2 and a message naming the file, the column and the
offending rows, before anything is written. So does data with too few policies of a class to put both classes
in train, validation and test (training and evaluation need them; rows_needed_per_class says how many). With
--data-version (the pipeline's DataVersion step), inputs whose fingerprint differs from it (the data changed
since that step read it) exit with code 2 too.

The outputs are written all or nothing (atomic_outputs): an output that cannot be written (read-only, disk
full) exits with code 1 and leaves the previous outputs whole.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

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

    The header is read as a row, so a column named twice stays named twice (pandas would rename the second
    'fraud' to 'fraud.1') and the contract refuses it."""
    path = resolve_input(path, name)
    try:
        frame = pd.read_csv(path, header=None, dtype=str, keep_default_na=False, na_filter=False)
        frame = frame.iloc[1:].set_axis(frame.iloc[0], axis="columns").set_axis(range(len(frame) - 1))
    except pd.errors.EmptyDataError:
        raise ContractError(f"{path}: the file is empty; expected a header row with: {', '.join(schema)}") from None
    except (UnicodeDecodeError, pd.errors.ParserError) as error:
        raise ContractError(f"{path}: not a readable CSV file ({error})") from None
    extras = extra_columns(frame, schema)
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
    """One row per policy with claim and customer features; every claim must have its customer."""
    orphans = ~claims[KEY].isin(customers[KEY])
    if orphans.any():
        rows = ", ".join(f"line {i + 2}: {p}" for i, p in claims.loc[orphans, KEY].head(5).items())
        raise ContractError(f"{claims_source}: column '{KEY}': {int(orphans.sum())} claim(s) have no customer; {rows}")
    return claims.drop(columns=EVENT_TIME).merge(customers.drop(columns=EVENT_TIME), on=KEY, validate="one_to_one")


def rows_needed_per_class(validation_fraction: float, test_fraction: float) -> int:
    """Rows of each class that put both classes in train, validation and test, however many the other class has.

    A stratified train_test_split gives each of two classes its share of a part rounded to the nearest integer,
    and rounds the part's size up. So a class of n rows has one in test when n * test > 1/2; the rest keeps
    over n * (1 - test) - 3/2 of them, of which validation needs over 1/2 / v and train over 3/2 / (1 - v)
    (v: validation's share of the rest). tests/test_preprocess.py checks the bound against the split itself.
    """
    share = validation_fraction / (1 - test_fraction)
    rest = max(0.5 / share, 1.5 / (1 - share)) + 1.5
    return max(math.floor(0.5 / test_fraction) + 1, math.ceil(rest / (1 - test_fraction)))


def check_classes(joined: pd.DataFrame, validation_fraction: float, test_fraction: float, source: str) -> None:
    """Refuse data that cannot give train, validation and test both classes (training and evaluation need them)."""
    needed = rows_needed_per_class(validation_fraction, test_fraction)
    frauds = int((joined[LABEL] == 1).sum())
    others = len(joined) - frauds
    if min(frauds, others) < needed:
        raise ContractError(
            f"{source}: column '{LABEL}': {frauds} fraud and {others} non-fraud policies; each class needs at least "
            f"{needed} to be in train, validation and test (validation fraction {validation_fraction}, "
            f"test fraction {test_fraction})"
        )


def split(joined: pd.DataFrame, validation_fraction: float, test_fraction: float, seed: int) -> dict[str, pd.DataFrame]:
    """Stratified train/validation/test split; each policy lands in exactly one split."""
    joined = joined.sort_values(KEY, kind="stable").reset_index(drop=True)
    rest, test = train_test_split(joined, test_size=test_fraction, random_state=seed, stratify=joined[LABEL])
    train, validation = train_test_split(
        rest, test_size=validation_fraction / (1 - test_fraction), random_state=seed, stratify=rest[LABEL]
    )
    return {
        name: part.sort_values(KEY, kind="stable")
        for name, part in zip(SPLITS, (train, validation, test), strict=False)
    }


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


def prepare(args: argparse.Namespace) -> tuple[dict[Path, pd.DataFrame | dict], dict]:
    """Everything the step writes, computed in memory: {relative path: table or JSON document}."""
    check_data_version(args)
    claims_raw = read_table(args.claims, "claims", CLAIMS_SCHEMA)
    customers_raw = read_table(args.customers, "customers", CUSTOMERS_SCHEMA)
    claims_raw, claims_dropped = latest_per_policy(claims_raw, str(args.claims))
    customers_raw, customers_dropped = latest_per_policy(customers_raw, str(args.customers))
    event_time = float(args.event_time if args.event_time is not None else round(time.time()))
    for table in (claims_raw, customers_raw):
        if EVENT_TIME not in table:
            table[EVENT_TIME] = event_time
    claims = encode(claims_raw, CLAIMS_SCHEMA)
    customers = encode(customers_raw, CUSTOMERS_SCHEMA)
    joined = join(claims, customers, str(args.claims))
    check_classes(joined, args.validation_fraction, args.test_fraction, str(args.claims))
    parts = split(joined, args.validation_fraction, args.test_fraction, args.seed)

    outputs: dict[Path, pd.DataFrame | dict] = {}
    for name, part in parts.items():
        outputs[Path(name) / f"{name}.csv"] = part[[LABEL, *FEATURES]]
        outputs[Path("headered") / f"{name}.csv"] = part[[KEY, LABEL, *FEATURES]]
    outputs[Path("features/claims.csv")] = claims.sort_values(KEY, kind="stable")
    outputs[Path("features/customers.csv")] = customers.sort_values(KEY, kind="stable")
    manifest = {
        "features": FEATURES,
        "label": LABEL,
        "splits": {
            name: {"rows": len(part), "fraud_rate": round(float(part[LABEL].mean()), 6)} for name, part in parts.items()
        },
        "inputs": {
            "claims": {"rows": len(claims) + claims_dropped, "duplicates_dropped": claims_dropped},
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


def writer(relative: Path, content: pd.DataFrame | dict) -> atomic_outputs.Writer:
    """The writer of one output: JSON, or CSV with a header except in the bare splits XGBoost reads."""
    if isinstance(content, dict):
        return atomic_outputs.text_writer(json.dumps(content, indent=2) + "\n")
    header = relative.parts[0] not in SPLITS
    return lambda path: content.to_csv(path, index=False, header=header, lineterminator="\n")


def write_outputs(outputs: dict[Path, pd.DataFrame | dict], output_dir: Path) -> None:
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
