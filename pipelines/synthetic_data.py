"""Deterministic synthetic claims.csv and customers.csv in the input data contract's schema.

About 3% of policies are fraudulent. The label depends, through a noisy logistic model, on several
claim and customer columns, so a model can learn it but not perfectly. Rows are generated and
written in fixed-size chunks: memory stays bounded and the output depends only on the seed and
the number of rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

CHUNK_ROWS = 200_000

# category -> probability; every category of the contract appears
CATEGORIES: dict[str, dict[str, float]] = {
    "driver_relationship": {"Self": 0.55, "Spouse": 0.2, "Child": 0.1, "Other": 0.1, "N/A": 0.05},
    "incident_type": {"Collision": 0.7, "Break-in": 0.15, "Theft": 0.15},
    "incident_severity": {"Minor": 0.55, "Major": 0.33, "Totaled": 0.12},
    "authorities_contacted": {"Police": 0.6, "None": 0.15, "Ambulance": 0.15, "Fire": 0.1},
    "police_report_available": {"Yes": 0.55, "No": 0.45},
    "policy_state": {"CA": 0.45, "WA": 0.15, "AZ": 0.15, "OR": 0.1, "NV": 0.1, "ID": 0.05},
    "policy_liability": {"15/30": 0.3, "25/50": 0.35, "30/60": 0.2, "100/200": 0.15},
    "customer_gender": {"Male": 0.48, "Female": 0.47, "Other": 0.03, "Unkown": 0.02},
    "customer_education": {
        "Below High School": 0.08,
        "High School": 0.3,
        "Associate": 0.22,
        "Bachelor": 0.28,
        "Advanced Degree": 0.12,
    },
}
COLLISION_TYPES = {"Front": 0.4, "Rear": 0.35, "Side": 0.25}
INTERCEPT = -5.5  # sets the fraud rate to about 3%


def _choice(rng: np.random.Generator, weights: dict[str, float], size: int) -> np.ndarray:
    values = np.array(list(weights), dtype=object)
    return values[rng.choice(len(values), size=size, p=np.array(list(weights.values())))]


def _customers(rng: np.random.Generator, policy_id: np.ndarray) -> pd.DataFrame:
    n = len(policy_id)
    return pd.DataFrame(
        {
            "policy_id": policy_id,
            "customer_age": np.clip(rng.normal(44, 14, n), 18, 100).astype(int),
            "months_as_customer": np.minimum(rng.exponential(60, n), 480).astype(int),
            "num_claims_past_year": rng.poisson(0.35, n),
            "num_insurers_past_5_years": 1 + rng.poisson(0.6, n),
            "policy_state": _choice(rng, CATEGORIES["policy_state"], n),
            "policy_deductable": rng.choice([500, 750, 1000], n),
            "policy_annual_premium": np.clip(rng.normal(3000, 450, n), 0, None).astype(int),
            "policy_liability": _choice(rng, CATEGORIES["policy_liability"], n),
            "customer_zip": rng.integers(83000, 99500, n),
            "customer_gender": _choice(rng, CATEGORIES["customer_gender"], n),
            "customer_education": _choice(rng, CATEGORIES["customer_education"], n),
            "auto_year": rng.integers(2001, 2022, n),
        }
    )


def _claims(rng: np.random.Generator, customers: pd.DataFrame) -> pd.DataFrame:
    n = len(customers)
    incident_type = _choice(rng, CATEGORIES["incident_type"], n)
    collision = incident_type == "Collision"
    severity = _choice(rng, CATEGORIES["incident_severity"], n)
    injuries = np.where(collision, rng.poisson(0.6, n), 0)
    injury_claim = (injuries * rng.gamma(2.0, 4000, n)).round().astype(int)
    severity_scale = pd.Series(severity).map({"Minor": 4000, "Major": 12000, "Totaled": 25000}).to_numpy()
    vehicle_claim = (severity_scale * rng.lognormal(0, 0.35, n)).round(2)
    claims = pd.DataFrame(
        {
            "policy_id": customers["policy_id"].to_numpy(),
            "driver_relationship": _choice(rng, CATEGORIES["driver_relationship"], n),
            "incident_type": incident_type,
            "collision_type": np.where(collision, _choice(rng, COLLISION_TYPES, n), "N/A"),
            "incident_severity": severity,
            "authorities_contacted": _choice(rng, CATEGORIES["authorities_contacted"], n),
            "num_vehicles_involved": np.where(collision, 1 + rng.poisson(0.8, n), 1),
            "num_injuries": injuries,
            "num_witnesses": rng.poisson(1.0, n),
            "police_report_available": _choice(rng, CATEGORIES["police_report_available"], n),
            "injury_claim": injury_claim,
            "vehicle_claim": vehicle_claim,
            "total_claim_amount": (injury_claim + vehicle_claim).round(2),
            "incident_month": rng.integers(1, 13, n),
            "incident_day": rng.integers(1, 29, n),
            "incident_dow": rng.integers(0, 7, n),
            "incident_hour": rng.integers(0, 24, n),
        }
    )
    claims["fraud"] = (rng.random(n) < _fraud_probability(rng, claims, customers)).astype(int)
    return claims


def _fraud_probability(rng: np.random.Generator, claims: pd.DataFrame, customers: pd.DataFrame) -> np.ndarray:
    """A noisy logistic model over several claim and customer columns."""
    claim_z = (np.log(claims["vehicle_claim"].to_numpy()) - np.log(9000)) / 0.8
    logit = (
        INTERCEPT
        + 1.26 * np.minimum(customers["num_claims_past_year"].to_numpy(), 3)
        + 0.84 * (customers["num_insurers_past_5_years"].to_numpy() >= 3)
        + 0.7 * (customers["months_as_customer"].to_numpy() < 18)
        + 0.56 * (customers["customer_age"].to_numpy() < 25)
        + 1.12 * (claims["incident_severity"].to_numpy() == "Major")
        + 0.98 * (claims["authorities_contacted"].to_numpy() == "None")
        - 0.98 * (claims["police_report_available"].to_numpy() == "Yes")
        + 0.7 * np.isin(claims["driver_relationship"].to_numpy(), ["Other", "N/A"])
        + 0.7 * (claims["incident_hour"].to_numpy() < 5)
        + 0.56 * claim_z
        + 0.14 * (customers["customer_gender"].to_numpy() == "Female")
        + rng.normal(0, 0.7, len(claims))
    )
    return 1 / (1 + np.exp(-logit))


def generate(rows: int, seed: int, out: Path) -> tuple[Path, Path]:
    """Write `rows` policies to out/claims.csv and out/customers.csv; returns both paths."""
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    out.mkdir(parents=True, exist_ok=True)
    claims_path, customers_path = out / "claims.csv", out / "customers.csv"
    starts = range(0, rows, CHUNK_ROWS)
    seeds = np.random.SeedSequence(seed).spawn(len(starts))
    for i, (start, chunk_seed) in enumerate(zip(starts, seeds, strict=False)):
        rng = np.random.default_rng(chunk_seed)
        policy_id = np.arange(start + 1, min(start + CHUNK_ROWS, rows) + 1)
        customers = _customers(rng, policy_id)
        claims = _claims(rng, customers)
        mode = "w" if i == 0 else "a"
        claims.to_csv(claims_path, index=False, header=i == 0, mode=mode, lineterminator="\n")
        customers.to_csv(customers_path, index=False, header=i == 0, mode=mode, lineterminator="\n")
    return claims_path, customers_path
