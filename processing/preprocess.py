"""Preprocess raw claims and customers: validate, transform, deduplicate, join and split by policy.

Runs in a SageMaker processing container (defaults under /opt/ml/processing) or bare:

    python processing/preprocess.py --claims data/claims.csv --customers data/customers.csv --output-dir out

Writes, under the output directory:
    train/train.csv, validation/validation.csv, test/test.csv   label first, no header (XGBoost)
    headered/{train,validation,test}.csv                        the same rows with a header (bias, evaluation)
    features/claims.csv, features/customers.csv                 Feature Store tables (policy_id, event_time, ...)
    manifest/manifest.json                                      row counts, fraud rates, the ordered features

Input that breaks the contract exits with code 2 and a message naming the file, the column and the
offending rows, before anything is written. With --data-version (the pipeline's DataVersion step), inputs
whose fingerprint differs from it (the data changed since that step read it) exit with code 2 too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

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
    """Read a raw table as strings (so 'None' and 'N/A' stay categories) and validate it."""
    path = resolve_input(path, name)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
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


def split(joined: pd.DataFrame, validation_fraction: float, test_fraction: float, seed: int) -> dict[str, pd.DataFrame]:
    """Stratified train/validation/test split; each policy lands in exactly one split."""
    joined = joined.sort_values(KEY, kind="stable").reset_index(drop=True)
    counts = joined[LABEL].value_counts()
    stratify = joined[LABEL] if len(counts) == 2 and counts.min() >= 3 else None
    if stratify is None:
        log.warning("too few rows of one class to stratify; splitting without stratification")
    rest, test = train_test_split(joined, test_size=test_fraction, random_state=seed, stratify=stratify)
    stratify = rest[LABEL] if stratify is not None else None
    train, validation = train_test_split(
        rest, test_size=validation_fraction / (1 - test_fraction), random_state=seed, stratify=stratify
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


def write_outputs(outputs: dict[Path, pd.DataFrame | dict], output_dir: Path) -> None:
    """Write every output; if one write fails, remove the ones already written."""
    written: list[Path] = []
    try:
        for relative, content in outputs.items():
            path = output_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            written.append(path)
            if isinstance(content, dict):
                path.write_text(json.dumps(content, indent=2) + "\n")
            else:
                header = relative.parts[0] not in SPLITS
                content.to_csv(path, index=False, header=header, lineterminator="\n")
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


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
        outputs, manifest = prepare(args)
    except ContractError as error:
        print(f"preprocess: error: {error}", file=sys.stderr)
        return 2
    write_outputs(outputs, args.output_dir)
    for name, stats in manifest["splits"].items():
        log.info("%s: %d policies, fraud rate %.4f", name, stats["rows"], stats["fraud_rate"])
    log.info("wrote %d files under %s", len(outputs), args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
