"""The training hyperparameters: their types, defaults and allowed ranges, defined once.

train.py validates what it is given against these specs, and pipelines/config.py builds pipeline.yaml's
`training.hyperparameters` and `tuning.ranges` validation from HYPERPARAMETERS (the XGBoost ones) and
`training.mitigation` from SETTINGS (training settings the pipeline passes as static hyperparameters), so the
configuration accepts exactly what training accepts. It depends on the standard library only (it runs in the
training container).
"""

from __future__ import annotations

import math
from typing import NamedTuple


class Spec(NamedTuple):
    """One hyperparameter: its type, default and bounds (None: unbounded on that side; `open`: excluded); a str
    one takes one of its `choices`, or any non-empty string when it has none."""

    kind: type
    default: int | float | str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    tunable: bool = True
    choices: tuple[str, ...] = ()

    def rule(self) -> str:
        """The allowed values in words: 'a number in (0, 1]', "one of 'none', 'reweigh'", 'a non-empty string'."""
        if self.kind is str:
            return f"one of {', '.join(map(repr, self.choices))}" if self.choices else "a non-empty string"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"{'an integer' if self.kind is int else 'a number'} in {left}{self.low}, {self.high}{right}"

    def accepts(self, value: int | float | str) -> bool:
        """Whether a value of the right type is allowed (finite and within the bounds)."""
        if self.kind is str:
            return value in self.choices if self.choices else value != ""
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))


HYPERPARAMETERS: dict[str, Spec] = {
    "objective": Spec(str, "binary:logistic", tunable=False, choices=("binary:logistic",)),
    "num_round": Spec(int, 500, 1, 10_000),
    "early_stopping_rounds": Spec(int, 20, 1, 1_000, tunable=False),
    "max_depth": Spec(int, 2, 1, 20),
    "eta": Spec(float, 0.05, 0, 1, low_open=True),
    "subsample": Spec(float, 0.8, 0, 1, low_open=True),
    "colsample_bytree": Spec(float, 0.8, 0, 1, low_open=True),
    "min_child_weight": Spec(float, 5.0, 0, 1_000),
    "gamma": Spec(float, 0.0, 0, 100),
    "scale_pos_weight": Spec(float, 1.0, 0, 1_000, low_open=True),
    "seed": Spec(int, 42, 0, 2**31 - 1, tunable=False),
}
"""XGBoost's: pipeline.yaml's `training.hyperparameters` (and `tuning.ranges` of the tunable ones)."""
SETTINGS: dict[str, Spec] = {
    "mitigation": Spec(str, "none", tunable=False, choices=("none", "reweigh", "resample")),
    "facet": Spec(str, "customer_gender_female", tunable=False),
    "facet_values": Spec(str, "1", tunable=False),
}
"""Training settings, not XGBoost parameters (never tuned): the bias mitigation and the facet it balances (a feature
column's name, and its values, comma-separated). The pipeline sets them from `training.mitigation` and
`bias.facet`, `bias.facet_values`."""
ACCEPTED = {**HYPERPARAMETERS, **SETTINGS}
"""Every hyperparameter train.py takes."""
DEFAULTS = {name: spec.default for name, spec in ACCEPTED.items()}
"""What train.py uses where it is given nothing."""
TUNABLE = sorted(name for name, spec in HYPERPARAMETERS.items() if spec.tunable)
