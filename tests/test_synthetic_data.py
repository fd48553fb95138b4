"""pipelines/synthetic_data.py: determinism, the contract's schema and categories, the fraud rate."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from features import CLAIMS_SCHEMA, CUSTOMERS_SCHEMA, validate
from pipelines import synthetic_data
from pipelines.synthetic_data import generate

SCHEMAS = {"claims": CLAIMS_SCHEMA, "customers": CUSTOMERS_SCHEMA}


def read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first, again, other = (generate(500, seed, tmp_path / name) for name, seed in [("a", 1), ("b", 1), ("c", 2)])
    for index in (0, 1):
        assert first[index].read_bytes() == again[index].read_bytes()
        assert first[index].read_bytes() != other[index].read_bytes()


def test_schema_and_every_category_of_the_contract(raw_data: dict[str, Path]) -> None:
    for name, schema in SCHEMAS.items():
        table = read(raw_data[name])
        assert list(table.columns) == list(schema)
        validate(table, schema, name)
        for column, (kind, allowed) in schema.items():
            if kind == "category":
                assert set(table[column]) == set(allowed), column


def test_generator_categories_are_the_contracts() -> None:
    contract = {
        column: set(allowed)
        for schema in SCHEMAS.values()
        for column, (kind, allowed) in schema.items()
        if kind == "category"
    }
    generated = {column: set(weights) for column, weights in synthetic_data.CATEGORIES.items()}
    generated["collision_type"] = {*synthetic_data.COLLISION_TYPES, "N/A"}
    assert generated == contract
    for weights in [*synthetic_data.CATEGORIES.values(), synthetic_data.COLLISION_TYPES]:
        assert sum(weights.values()) == pytest.approx(1)


def test_fraud_rate_is_about_three_percent(tmp_path: Path) -> None:
    claims, _ = generate(20_000, 42, tmp_path)
    assert 0.02 <= read(claims)["fraud"].astype(int).mean() <= 0.045


def test_chunks_join_into_one_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic_data, "CHUNK_ROWS", 300)
    claims, customers = generate(1_000, 5, tmp_path)
    for path in (claims, customers):
        table = read(path)
        assert table["policy_id"].astype(int).tolist() == list(range(1, 1_001))
        assert path.read_text().count("policy_id") == 1


def test_rejects_no_rows(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rows must be at least 1"):
        generate(0, 1, tmp_path)
