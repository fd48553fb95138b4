"""Why a claim is flagged: each record's top K reasons, from XGBoost's exact TreeSHAP contributions.

A client asks with `explain=K` in SageMaker's CustomAttributes (the X-Amzn-SageMaker-Custom-Attributes header
that InvokeEndpoint forwards; `key=value` pairs separated by `;` or `,`) or, locally, with `?explain=K`.
Contributions (`pred_contribs`, in log-odds) are summed back to the contract column each feature comes from
(the one-hot columns of incident_type make one reason, incident_type = Theft), and the K columns of largest
magnitude are the reasons: base + the reasons' contributions + rest = the logit of fraud_probability.
"""

from __future__ import annotations

import re

import numpy as np

from features import shown, sum_by_column

CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
KEY = "explain"


def requested(custom_attributes: str | None, query: str | None) -> int | None:
    """The K a request asks for (the query's wins over CustomAttributes'), or None; ValueError if K is not a
    positive integer."""
    text = query
    if text is None and custom_attributes:
        pairs = (pair.split("=", 1) for pair in re.split(r"[;,]", custom_attributes) if "=" in pair)
        text = next((value for key, value in pairs if key.strip() == KEY), None)
    if text is None:
        return None
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValueError(f"{KEY}: expected a positive integer, the number of reasons per record, got {shown(text)}")
    return int(text)


def explanations(contributions: np.ndarray, names: list[str], values: list[dict[str, object]], k: int) -> list[dict]:
    """Each record's explanation from its (n, len(names) + 1) contributions (the last column is the base value):
    {"base": b, "reasons": [{"column": c, "value": v, "contribution": x}, ...], "rest": r}, the reasons being the
    K contract columns of largest |contribution| (features outside the contract are their own column) and
    `values` each record's value per column."""
    columns, per_column = sum_by_column(contributions[:, :-1], names)
    answers = []
    for row, base, record in zip(per_column, contributions[:, -1].tolist(), values, strict=True):
        order = np.argsort(-np.abs(row), kind="stable")
        top, others = order[:k], order[k:]
        reasons = [{"column": columns[j], "value": record.get(columns[j]), "contribution": float(row[j])} for j in top]
        answers.append({"base": base, "reasons": reasons, "rest": float(row[others].sum())})
    return answers
