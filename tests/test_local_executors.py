"""The local executors' rules, with small fake jobs and no containers: tuning (tuning.py), the ClarifyCheckStep
baseline rules (clarify.py), the model registry (registry.py) and step caching (cache.py)."""

from __future__ import annotations

import datetime
import math
import statistics

import pytest
from sagemaker.workflow.steps import StepTypeEnum

from pipelines.local import cache, clarify, registry, tuning

NOW = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC)
METRICS = [
    {"Name": "validation:auc", "Regex": r"validation:auc=([0-9\.]+)"},
    {"Name": "train:auc", "Regex": r"train:auc=([0-9\.]+)"},
]


def tuning_request(max_jobs=4, parallel=2, strategy="Random", **ranges) -> dict:
    return {
        "HyperParameterTuningJobConfig": {
            "Strategy": strategy,
            "HyperParameterTuningJobObjective": {"Type": "Maximize", "MetricName": "validation:auc"},
            "ResourceLimits": {"MaxNumberOfTrainingJobs": max_jobs, "MaxParallelTrainingJobs": parallel},
            "ParameterRanges": ranges
            or {
                "ContinuousParameterRanges": [
                    {"Name": "eta", "MinValue": "0.01", "MaxValue": "0.3", "ScalingType": "Logarithmic"}
                ],
                "IntegerParameterRanges": [
                    {"Name": "max_depth", "MinValue": "2", "MaxValue": "6", "ScalingType": "Auto"}
                ],
            },
            "RandomSeed": 7,
            "TrainingJobEarlyStoppingType": "Off",
        },
        "TrainingJobDefinition": {
            "StaticHyperParameters": {"num_round": "500", "eta": "0.1", "_tuning_objective_metric": "validation:auc"},
            "AlgorithmSpecification": {"TrainingImage": "image", "MetricDefinitions": METRICS},
        },
    }


class FakeJobs:
    """Training jobs that print an AUC made from their hyperparameters (or fail, or print none)."""

    def __init__(self, failing=(), silent=()):
        self.failing, self.silent = set(failing), set(silent)
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, name: str, hyperparameters: dict[str, str]) -> tuning.Outcome:
        self.calls.append((name, hyperparameters))
        index = int(name.rsplit("-", 1)[1])
        if index in self.failing:
            return tuning.Outcome(["train: error: the data broke"], "train: error: the data broke")
        if index in self.silent:
            return tuning.Outcome(["done"])
        auc = 0.7 + float(hyperparameters["eta"])  # the larger eta, the better, in this fake
        lines = [
            "round=0 train:auc=0.5 validation:auc=0.6",
            f"validation:auc={auc:.6f}",
            f"train:auc={auc + 0.01:.6f}",
        ]
        return tuning.Outcome(lines)


def test_summaries_are_ranked_best_first_and_the_best_job_is_index_0():
    jobs = FakeJobs()
    properties = tuning.TuningJob("tune-x", tuning_request(), jobs, cores=2).run()
    summaries = properties["TrainingJobSummaries"]
    values = [s["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] for s in summaries]
    assert values == sorted(values, reverse=True) and len(values) == 4
    etas = {name: float(h["eta"]) for name, h in jobs.calls}
    assert summaries[0]["TrainingJobName"] == max(etas, key=etas.get)
    assert properties["BestTrainingJob"] == summaries[0]
    assert summaries[0]["FinalHyperParameterTuningJobObjectiveMetric"]["Value"] == pytest.approx(
        0.7 + max(etas.values()), abs=1e-6
    )
    assert properties["HyperParameterTuningJobStatus"] == "Completed"
    assert properties["TrainingJobStatusCounters"]["Completed"] == 4
    assert summaries[0]["TunedHyperParameters"] == {
        k: v for k, v in dict(jobs.calls)[summaries[0]["TrainingJobName"]].items() if k in ("eta", "max_depth")
    }


def test_the_objective_is_the_last_value_the_log_shows():
    assert tuning.final_metrics(["validation:auc=0.9", "x validation:auc=0.7 y"], METRICS) == {"validation:auc": 0.7}


def test_static_hyperparameters_are_merged_and_tuned_ones_win():
    jobs = FakeJobs()
    tuning.TuningJob("tune-x", tuning_request(max_jobs=2), jobs, cores=2).run()
    for _, hyperparameters in jobs.calls:
        assert hyperparameters["num_round"] == "500"
        assert hyperparameters["_tuning_objective_metric"] == "validation:auc"
        assert hyperparameters["eta"] != "0.1"
        assert all(isinstance(v, str) for v in hyperparameters.values())


def test_failed_jobs_and_jobs_without_the_objective_count_as_failed():
    properties = tuning.TuningJob(
        "tune-x", tuning_request(max_jobs=4), FakeJobs(failing={1}, silent={2}), cores=2
    ).run()
    assert [s["TrainingJobName"] for s in properties["TrainingJobSummaries"]] in (
        ["tune-x-003", "tune-x-004"],
        ["tune-x-004", "tune-x-003"],
    )
    assert properties["ObjectiveStatusCounters"] == {"Succeeded": 2, "Pending": 0, "Failed": 2}
    assert properties["TrainingJobStatusCounters"]["NonRetryableError"] == 2


def test_all_jobs_failed_fails_the_step_with_their_reasons():
    with pytest.raises(tuning.TuningFailed) as failed:
        tuning.TuningJob("tune-x", tuning_request(max_jobs=2), FakeJobs(failing={1}, silent={2}), cores=2).run()
    message = str(failed.value)
    assert message.startswith("all 2 training job(s) failed")
    assert "tune-x-001: train: error: the data broke" in message
    assert "tune-x-002: the objective metric validation:auc never appeared in the job's log" in message


def test_the_search_is_seeded_and_within_the_ranges():
    first = tuning.sample(tuning_request()["HyperParameterTuningJobConfig"], 200)
    assert first == tuning.sample(tuning_request()["HyperParameterTuningJobConfig"], 200)
    etas = [float(h["eta"]) for h in first]
    depths = {int(h["max_depth"]) for h in first}
    assert all(0.01 <= e <= 0.3 for e in etas)
    assert depths == {2, 3, 4, 5, 6}
    # logarithmic scaling: the logs are uniform, so their median is the middle of the log range
    assert statistics.median(math.log(e) for e in etas) == pytest.approx((math.log(0.01) + math.log(0.3)) / 2, abs=0.35)


@pytest.mark.parametrize(
    ("spec", "kind", "check"),
    [
        (
            {"MinValue": "0.9", "MaxValue": "0.999", "ScalingType": "ReverseLogarithmic"},
            "Continuous",
            lambda v: 0.9 <= float(v) <= 0.999,
        ),
        ({"MinValue": "1", "MaxValue": "1000", "ScalingType": "Logarithmic"}, "Integer", lambda v: 1 <= int(v) <= 1000),
        ({"Values": ["gbtree", "dart"]}, "Categorical", lambda v: v in ("gbtree", "dart")),
    ],
)
def test_every_range_kind_and_scaling(spec, kind, check):
    import random

    rng = random.Random(1)
    assert all(check(tuning.draw(rng, kind, {"Name": "p", **spec})) for _ in range(200))


def test_parallelism_is_bounded_by_the_limit_the_jobs_and_the_cores():
    assert tuning.TuningJob("t", tuning_request(max_jobs=4, parallel=3), FakeJobs(), cores=2).parallel == 2
    assert tuning.TuningJob("t", tuning_request(max_jobs=1, parallel=3), FakeJobs(), cores=8).parallel == 1
    assert tuning.TuningJob("t", tuning_request(max_jobs=4, parallel=3), FakeJobs(), cores=8).parallel == 3


def test_local_differences_are_said():
    notes = tuning.local_differences(tuning_request(strategy="Bayesian")["HyperParameterTuningJobConfig"])
    assert "strategy Bayesian runs as Random locally (seeded)" in notes
    assert "scaling Auto searches linearly locally: max_depth" in notes
    assert not tuning.local_differences({**tuning_request()["HyperParameterTuningJobConfig"], "ParameterRanges": {}})


SUPPLIED, APPROVED = "s3://b/supplied.json", "s3://b/approved.json"


@pytest.mark.parametrize(
    ("skip", "register", "supplied", "approved", "expected"),
    [
        # SkipCheck false: checked against the previous baseline; the supplied one wins over the registry's
        (False, False, SUPPLIED, APPROVED, clarify.Baselines(SUPPLIED, SUPPLIED, False)),
        (False, False, None, APPROVED, clarify.Baselines(APPROVED, APPROVED, False)),
        # RegisterNewBaseline true: drift checks use the calculated baseline
        (False, True, SUPPLIED, None, clarify.Baselines(SUPPLIED, SUPPLIED, True)),
        # SkipCheck true: nothing is checked
        (True, False, None, APPROVED, clarify.Baselines(None, APPROVED, False)),
        (True, True, None, None, clarify.Baselines(None, None, True)),
    ],
)
def test_clarify_check_baseline_rules(skip, register, supplied, approved, expected):
    assert clarify.baselines(skip, register, supplied, approved) == expected


@pytest.mark.parametrize(
    ("skip", "register", "flag"),
    [(False, False, "SkipCheck"), (False, True, "SkipCheck"), (True, False, "RegisterNewBaseline")],
)
def test_no_previous_baseline_fails_unless_both_flags_are_true(skip, register, flag):
    with pytest.raises(clarify.CheckRuleError, match=f"no previous baseline: .* which {flag}=false needs"):
        clarify.baselines(skip, register, None, None)


def package_request(status="PendingManualApproval", group="models", baseline="s3://b/base.json") -> dict:
    return {
        "ModelPackageGroupName": group,
        "ModelApprovalStatus": status,
        "InferenceSpecification": {"Containers": [{"Image": "image", "ModelDataUrl": "s3://b/model.tar.gz"}]},
        "DriftCheckBaselines": {"Bias": {"PreTrainingConstraints": {"S3Uri": baseline}}},
        "CustomerMetadataProperties": {"threshold": "0.2"},
        "Unknown": "dropped",
    }


def test_registry_versions_arns_approval_and_persistence(tmp_path):
    store = registry.Registry(tmp_path / "registry.json", "eu-west-1")
    first = store.create_model_package(package_request(), NOW)
    second = store.create_model_package(package_request(status="Approved", baseline="s3://b/2.json"), NOW)
    assert (first["ModelPackageVersion"], second["ModelPackageVersion"]) == (1, 2)
    assert first["ModelPackageArn"] == "arn:aws:sagemaker:eu-west-1:000000000000:model-package/models/1"
    assert first["ModelApprovalStatus"] == "PendingManualApproval" and "Unknown" not in first
    assert first["CustomerMetadataProperties"] == {"threshold": "0.2"}

    reopened = registry.Registry(tmp_path / "registry.json", "eu-west-1")
    assert reopened.latest_approved("models")["ModelPackageVersion"] == 2
    reopened.update_approval("models", 1, "Approved", NOW, "looked fine")
    reopened.update_approval("models", 2, "Rejected", NOW)
    latest = registry.Registry(tmp_path / "registry.json", "eu-west-1").latest_approved("models")
    assert latest["ModelPackageVersion"] == 1 and latest["ApprovalDescription"] == "looked fine"
    assert latest["DriftCheckBaselines"]["Bias"]["PreTrainingConstraints"]["S3Uri"] == "s3://b/base.json"
    assert registry.Registry(tmp_path / "r2.json", "eu-west-1").latest_approved("models") is None


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({**package_request(), "ModelApprovalStatus": "Maybe"}, "ModelApprovalStatus 'Maybe' is not one of"),
        ({**package_request(), "ModelPackageGroupName": ""}, "ModelPackageGroupName is required"),
        ({**package_request(), "InferenceSpecification": {"Containers": []}}, "each container needs an Image"),
    ],
)
def test_registry_refuses_bad_requests(tmp_path, request_, message):
    with pytest.raises(registry.RegistryError, match=message):
        registry.Registry(tmp_path / "r.json", "us-east-1").create_model_package(request_, NOW)


def test_registry_names_unknown_versions(tmp_path):
    store = registry.Registry(tmp_path / "r.json", "us-east-1")
    store.create_model_package(package_request(), NOW)
    with pytest.raises(registry.RegistryError, match="has no version 2 \\(versions 1 to 1\\)"):
        store.describe("models", 2)
    with pytest.raises(registry.RegistryError, match="is not one of"):
        store.update_approval("models", 1, "approved", NOW)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("P30D", datetime.timedelta(days=30)),
        ("PT1H", datetime.timedelta(hours=1)),
        ("P1W", datetime.timedelta(days=7)),
        ("P1DT2H3M4S", datetime.timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("P1Y", datetime.timedelta(days=365)),
    ],
)
def test_expire_after_is_an_iso_8601_duration(text, expected):
    assert cache.duration(text) == expected


@pytest.mark.parametrize("text", ["30d", "P", "PT", "P1DT"])
def test_bad_durations_are_refused(text):
    with pytest.raises(ValueError, match="is not an ISO 8601 duration"):
        cache.duration(text)


PROCESSING = {
    "AppSpecification": {"ImageUri": "image", "ContainerArguments": ["--seed", "42"]},
    "ProcessingInputs": [{"InputName": "claims", "S3Input": {"S3Uri": "s3://b/raw/claims.csv"}}],
    "ProcessingOutputConfig": {"Outputs": [{"OutputName": "train", "S3Output": {"S3Uri": "s3://b/exec-1/train"}}]},
    "ProcessingResources": {"ClusterConfig": {"InstanceType": "ml.m5.xlarge"}},
}


def test_the_cache_key_reads_only_the_documented_attributes():
    key = cache.cache_key(StepTypeEnum.PROCESSING, PROCESSING)
    elsewhere = {**PROCESSING, "ProcessingOutputConfig": {"Outputs": []}, "ProcessingResources": {}}
    assert cache.cache_key(StepTypeEnum.PROCESSING, elsewhere) == key  # outputs and instances are not in the key
    argued = {**PROCESSING, "AppSpecification": {"ImageUri": "image", "ContainerArguments": ["--seed", "7"]}}
    assert cache.cache_key(StepTypeEnum.PROCESSING, argued) != key
    fed = {**PROCESSING, "ProcessingInputs": [{"InputName": "claims", "S3Input": {"S3Uri": "s3://b/raw/new.csv"}}]}
    assert cache.cache_key(StepTypeEnum.PROCESSING, fed) != key


def test_a_model_checks_key_holds_its_model():
    """A ModelBias check asks the model a CreateModel step named in this execution: another model, another key."""
    check = {**PROCESSING, "CheckType": "MODEL_BIAS", "ModelName": "ScoringModel-CreateModel-1"}
    key = cache.cache_key(StepTypeEnum.CLARIFY_CHECK, check)
    assert cache.cache_key(StepTypeEnum.CLARIFY_CHECK, {**check, "ModelName": "ScoringModel-CreateModel-2"}) != key


def test_the_cache_reuses_the_latest_success_within_expire_after(tmp_path):
    store = cache.StepCache(tmp_path / "cache.json")
    store.store("pipe", "Preprocess", "k", "old", NOW - datetime.timedelta(days=40), {"v": 1})
    assert store.lookup("pipe", "Preprocess", "k", "P30D", NOW) is None  # expired
    store.store("pipe", "Preprocess", "k", "a", NOW - datetime.timedelta(days=2), {"v": 2})
    store.store("pipe", "Preprocess", "k", "b", NOW - datetime.timedelta(days=1), {"when": NOW})
    reopened = cache.StepCache(tmp_path / "cache.json")
    hit = reopened.lookup("pipe", "Preprocess", "k", "P30D", NOW)
    assert hit.execution_id == "b" and hit.properties == {"when": NOW.isoformat()}
    assert reopened.lookup("pipe", "Preprocess", "other", "P30D", NOW) is None
    assert reopened.lookup("other-pipeline", "Preprocess", "k", "P30D", NOW) is None  # scoped to the pipeline
    assert reopened.lookup("pipe", "Evaluate", "k", "P30D", NOW) is None
