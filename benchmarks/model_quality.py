"""Cross-validated AUC of this project's recipe next to the public AWS fraud demo's, on the same data.

    python benchmarks/model_quality.py --claims data/claims.csv --customers data/customers.csv [--repeats 3 --folds 5]
    python benchmarks/model_quality.py --rows 5000 [--seed 42]     # generated data (pipelines/synthetic_data.py)
    python benchmarks/model_quality.py --rows 5000 --mitigation    # the project recipe under each training.mitigation

Both recipes see the same features (preprocess.py's transforms, one row per policy) and, in each
repeat, the same stratified folds:
    project   train.py's fit with its defaults on each training fold, split into train and validation as
              preprocess splits the data: rounds chosen by cross-validation of the train part, refit on
              train + validation; AUC on the held-out fold, which no choice saw
    AWS demo  max_depth 3, eta 0.2, binary:logistic, xgboost.cv over the folds, 100 rounds at most, early
              stopping after 10 rounds without a better mean test AUC; AUC at the chosen round
The demo picks its round on the test folds themselves, so its estimate leans optimistic; a third row
trains the demo's parameters the project's way, to tell the two effects apart.
`AUC std` is over all folds of all repeats, `repeat std` over the repeats' mean AUCs, and `vs demo` the
mean and standard deviation over repeats of a recipe's mean AUC minus the demo's on the same folds.
With --mitigation it compares instead the project recipe under each `mitigation` setting (none, reweigh,
resample; the facet is train.py's default, bias.facet's) on the same folds: mean AUC and its std over all folds,
and the post-training bias metrics of the held-out predictions (at the max-F1 threshold chosen on each fold's
inner validation part, as evaluate.py chooses it), pooled over the folds.
Prints a table; asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import xgboost as xgb
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "processing"), str(ROOT / "training"), str(ROOT / "evaluation")]

import bias  # noqa: E402
import evaluate  # noqa: E402
import preprocess  # noqa: E402
import train  # noqa: E402
from features import FEATURES, KEY, LABEL  # noqa: E402
from pipelines.synthetic_data import generate  # noqa: E402

INNER_VALIDATION = 0.15 / 0.85
"""preprocess.py's validation share of the rows left after the test split."""
DEMO_PARAMS = {"max_depth": 3, "eta": 0.2, "objective": "binary:logistic", "eval_metric": "auc"}
DEMO_ROUNDS = 100
DEMO_EARLY_STOPPING = 10
BIAS_SHOWN = ("AD", "DAR", "DCA", "DI", "DPPL", "RD", "SD", "TE")
"""The post-training bias metrics the --mitigation table shows (smclarify orders them by name)."""


def load(claims: Path, customers: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features and labels of every policy, through preprocess.py's validation and transforms."""
    args = preprocess.parse_args(["--claims", str(claims), "--customers", str(customers), "--event-time", "0"])
    outputs, _ = preprocess.prepare(args)
    joined = pa.concat_tables([outputs[Path("headered") / f"{name}.csv"] for name in preprocess.SPLITS]).to_pandas()
    joined = joined.sort_values(KEY, kind="stable")
    return joined[FEATURES].to_numpy(np.float32), joined[LABEL].to_numpy(np.int64)


class HeldOut(NamedTuple):
    """A held-out fold's labels, facet column and predicted labels (at the max-F1 threshold chosen on the inner
    validation part, as evaluate.py chooses it): what post-training bias metrics are computed from."""

    labels: np.ndarray
    facet: np.ndarray
    predicted: np.ndarray


def project_fold(
    features: np.ndarray, labels: np.ndarray, rows: tuple[np.ndarray, np.ndarray], hyperparameters: dict, seed: int
) -> tuple[float, int, HeldOut]:
    """AUC on the test rows of train.py's model, early-stopped on an inner validation split; its rounds; and
    the test rows' predictions."""
    fit_rows, test_rows = rows
    inner, validation = train_test_split(
        fit_rows, test_size=INNER_VALIDATION, stratify=labels[fit_rows], random_state=seed
    )

    def labelled(rows: np.ndarray) -> np.ndarray:
        return np.column_stack([labels[rows], features[rows]]).astype(np.float32)

    result = train.fit(labelled(inner), labelled(validation), FEATURES, hyperparameters)
    threshold = evaluate.pick_threshold(labels[validation], result.validation_scores, "max_f1", 0.0)["value"]
    scores = result.booster.predict(xgb.DMatrix(features[test_rows], feature_names=FEATURES))
    facet = features[test_rows, FEATURES.index(hyperparameters["facet"])]
    held_out = HeldOut(labels[test_rows], facet, scores >= threshold)
    return roc_auc_score(labels[test_rows], scores), result.rounds, held_out


def project_recipe(features: np.ndarray, labels: np.ndarray, folds: list[list[tuple]], hyperparameters: dict) -> dict:
    """train.py's fit with these hyperparameters on every fold."""
    aucs, rounds, held_out = [], [], []
    for seed, repeat in enumerate(folds):
        for rows in repeat:
            auc, n, predictions = project_fold(features, labels, rows, hyperparameters, seed)
            aucs.append(auc)
            rounds.append(n)
            held_out.append(predictions)
    per_repeat = np.reshape(aucs, (len(folds), -1)).mean(axis=1)
    summary = {"mean": np.mean(aucs), "std": np.std(aucs), "repeats": per_repeat, "rounds": np.mean(rounds)}
    return {**summary, "held_out": held_out}


def post_training_bias_columns(held_out: list[HeldOut]) -> dict[str, str]:
    """The post-training bias metrics (processing/bias.py, smclarify) of the held-out folds' predictions, pooled
    (every policy once per repeat), as table columns."""
    facet, values = train.DEFAULTS["facet"], [float(v) for v in train.DEFAULTS["facet_values"].split(",")]
    frame = pd.DataFrame(
        {
            facet: np.concatenate([h.facet for h in held_out]),
            LABEL: np.concatenate([h.labels for h in held_out]),
            bias.PREDICTED: np.concatenate([h.predicted for h in held_out]).astype(int),
        }
    ).apply(bias.categorical)
    settings = bias.Settings(LABEL, [1], facet, values, list(BIAS_SHOWN), stage="post_training")
    [report] = bias.analysis(frame, settings)[bias.STAGES["post_training"].section]["facets"][facet]
    return {metric["name"]: f"{metric['value']:+.4f}" for metric in report["metrics"]}


def mitigation_table(features: np.ndarray, labels: np.ndarray, folds: list[list[tuple]]) -> None:
    """The project recipe under each mitigation option on the same folds: mean AUC and std over all folds."""
    rows = {}
    for option in train.SETTINGS["mitigation"].choices:
        result = timed(project_recipe, features, labels, folds, {**train.DEFAULTS, "mitigation": option})
        rows[option] = {
            "AUC mean": f"{result['mean']:.4f}",
            "AUC std": f"{result['std']:.4f}",
            "rounds": f"{result['rounds']:.1f}",
            "seconds": f"{result['seconds']:.1f}",
            **post_training_bias_columns(result["held_out"]),
        }
    columns = list(next(iter(rows.values())))
    facet = f"{train.DEFAULTS['facet']} in {train.DEFAULTS['facet_values']}"
    print(f"{'mitigation (facet ' + facet + ')':<48}" + "".join(f"{c:>{max(9, len(c) + 1)}}" for c in columns))
    for option, cells in rows.items():
        print(f"{option:<48}" + "".join(f"{cells[c]:>{max(9, len(c) + 1)}}" for c in columns))


def demo_recipe(features: np.ndarray, labels: np.ndarray, folds: list[list[tuple]]) -> dict:
    """xgboost.cv per repeat; fold-level spread pooled from each repeat's mean and standard deviation."""
    data = xgb.DMatrix(features, label=labels)
    means, stds, rounds = [], [], []
    for seed, repeat in enumerate(folds):
        history = xgb.cv(
            {**DEMO_PARAMS, "seed": seed},
            data,
            num_boost_round=DEMO_ROUNDS,
            folds=repeat,
            early_stopping_rounds=DEMO_EARLY_STOPPING,
        )
        means.append(history["test-auc-mean"].iloc[-1])
        stds.append(history["test-auc-std"].iloc[-1])
        rounds.append(len(history))
    means, stds = np.array(means), np.array(stds)
    mean = means.mean()
    pooled = np.sqrt(np.mean(stds**2 + means**2) - mean**2)
    return {"mean": mean, "std": pooled, "repeats": means, "rounds": np.mean(rounds)}


def timed(function: Callable[..., dict], *args: object) -> dict:
    start = time.perf_counter()
    result = function(*args)
    return {**result, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--claims", type=Path, help="with --customers: the data set")
    data.add_argument("--rows", type=int, help="generate this many policies instead (pipelines/synthetic_data.py)")
    parser.add_argument("--customers", type=Path)
    parser.add_argument("--seed", type=int, default=42, help="the generated data's seed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--mitigation", action="store_true", help="compare the recipe under each training.mitigation option instead"
    )
    args = parser.parse_args(argv)
    if (args.claims is None) != (args.customers is None):
        parser.error("--claims and --customers go together")

    with tempfile.TemporaryDirectory() as scratch:
        if args.rows is not None:
            args.claims, args.customers = generate(args.rows, args.seed, Path(scratch))
        features, labels = load(args.claims, args.customers)
    folds = [
        list(StratifiedKFold(args.folds, shuffle=True, random_state=seed).split(features, labels))
        for seed in range(args.repeats)
    ]
    print(f"{len(labels)} policies, fraud rate {labels.mean():.4f}, {features.shape[1]} features")
    print(f"{args.repeats} x stratified {args.folds}-fold CV, the same folds for every recipe\n")
    if args.mitigation:
        mitigation_table(features, labels, folds)
        return 0
    demo_in_project = {**train.DEFAULTS, "max_depth": 3, "eta": 0.2, "min_child_weight": 1.0}
    demo_in_project.update(subsample=1.0, colsample_bytree=1.0)
    demo_in_project["early_stopping_rounds"] = DEMO_EARLY_STOPPING
    rows = {
        "project (train.py's defaults and fit)": timed(project_recipe, features, labels, folds, train.DEFAULTS),
        "AWS demo (depth 3, eta 0.2, xgboost.cv)": timed(demo_recipe, features, labels, folds),
        "demo's parameters, the project's evaluation": timed(project_recipe, features, labels, folds, demo_in_project),
    }
    demo = rows["AWS demo (depth 3, eta 0.2, xgboost.cv)"]["repeats"]
    print(f"{'recipe':<48}{'AUC mean':>9}{'AUC std':>9}{'repeat std':>11}{'vs demo':>17}{'rounds':>8}{'seconds':>9}")
    for name, r in rows.items():
        gain = r["repeats"] - demo
        print(
            f"{name:<48}{r['mean']:>9.4f}{r['std']:>9.4f}{np.std(r['repeats']):>11.4f}"
            f"{gain.mean():>+10.4f} ± {gain.std():.4f}{r['rounds']:>8.1f}{r['seconds']:>9.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
