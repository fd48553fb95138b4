"""TuningStep in local runs: a hyperparameter tuning job as CreateHyperParameterTuningJob runs one.

Follows https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_CreateHyperParameterTuningJob.html,
https://docs.aws.amazon.com/sagemaker/latest/dg/automatic-model-tuning-how-it-works.html and
https://docs.aws.amazon.com/sagemaker/latest/dg/automatic-model-tuning-define-metrics.html:
- up to MaxNumberOfTrainingJobs training jobs, at most MaxParallelTrainingJobs at a time (and no more at a
  time than this machine has cores);
- each job gets the definition's StaticHyperParameters, then its own values drawn from ParameterRanges
  (continuous, integer, categorical) with their ScalingType (Linear, Logarithmic, ReverseLogarithmic),
  all as strings; the draws come from RandomSeed, so a search repeats;
- each job's objective is the *last* value its log shows for the objective metric's MetricDefinitions regex
  (FinalHyperParameterTuningJobObjectiveMetric "shows the latest objective metric emitted"); a job that
  fails, or never emits the objective, counts as failed (ObjectiveStatus Failed);
- the step's properties are DescribeHyperParameterTuningJob's (BestTrainingJob, the status counters) and
  ListTrainingJobsForHyperParameterTuningJob's TrainingJobSummaries sorted by the final objective, best
  first, jobs without an objective left out (as that sort does), so TrainingJobSummaries[0] is the best job;
- when every job failed, the step fails with each job's reason.

Where local runs differ, the step log says so: the strategy is always Random (Bayesian, Hyperband and Grid
fall back to it), the Auto scaling type searches linearly, early stopping of training jobs is not applied,
and the training code is fetched from S3 by this executor and mounted into the container (in the service
the container downloads it).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import random
import re
import tarfile
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sagemaker.local.pipeline import _StepExecutor
from sagemaker.s3 import parse_s3_url

from pipelines.local.logs import say, script_error

SUBMIT_DIRECTORY = "sagemaker_submit_directory"
RANGE_KINDS = {"ContinuousParameterRanges": "Continuous", "IntegerParameterRanges": "Integer"}


class TuningFailed(RuntimeError):
    """No training job of the tuning job produced its objective metric."""


@dataclass
class Outcome:
    """What running one training job gave: its log lines, and its failure reason ('' when it completed)."""

    lines: list[str]
    failure: str = ""


@dataclass
class Job:
    """One training job of the tuning job."""

    name: str
    tuned: dict[str, str]
    created: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))
    ended: datetime.datetime | None = None
    failure: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    objective: float | None = None


def draw(rng: random.Random, kind: str, spec: dict) -> str:
    """One value of a parameter range, as the string a training job receives."""
    if kind == "Categorical":
        return rng.choice(spec["Values"])
    low, high = float(spec["MinValue"]), float(spec["MaxValue"])
    scaling = spec.get("ScalingType", "Auto")
    if kind == "Integer":
        low, high = low, high + 1  # every integer of [min, max] equally wide
    if scaling == "Logarithmic":
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    elif scaling == "ReverseLogarithmic":
        value = 1 - math.exp(rng.uniform(math.log(1 - high), math.log(1 - low)))
    else:
        value = rng.uniform(low, high)
    if kind == "Integer":
        return str(min(int(spec["MaxValue"]), max(int(spec["MinValue"]), math.floor(value))))
    return repr(value)


def sample(config: dict, count: int) -> list[dict[str, str]]:
    """`count` sets of tuned hyperparameters from the config's ranges, drawn with its RandomSeed."""
    ranges = config.get("ParameterRanges", {})
    specs = [(kind, spec) for key, kind in RANGE_KINDS.items() for spec in ranges.get(key, [])]
    specs += [("Categorical", spec) for spec in ranges.get("CategoricalParameterRanges", [])]
    specs.sort(key=lambda item: item[1]["Name"])
    rng = random.Random(config.get("RandomSeed", 0))
    return [{spec["Name"]: draw(rng, kind, spec) for kind, spec in specs} for _ in range(count)]


def final_metrics(lines: list[str], definitions: list[dict]) -> dict[str, float]:
    """The last value each metric definition's regex finds in a job's log."""
    found = {}
    for definition in definitions:
        pattern = re.compile(definition["Regex"])
        for line in lines:
            for match in pattern.finditer(line):
                try:
                    found[definition["Name"]] = float(match.group(1))
                except (IndexError, TypeError, ValueError):
                    continue
    return found


def local_differences(config: dict) -> list[str]:
    """What this run of the tuning config does differently from the service."""
    notes = []
    if config.get("Strategy", "Bayesian") != "Random":
        notes.append(f"strategy {config.get('Strategy', 'Bayesian')} runs as Random locally (seeded)")
    ranges = config.get("ParameterRanges", {})
    auto = sorted(
        s["Name"] for key in RANGE_KINDS for s in ranges.get(key, []) if s.get("ScalingType", "Auto") == "Auto"
    )
    if auto:
        notes.append(f"scaling Auto searches linearly locally: {', '.join(auto)}")
    if config.get("TrainingJobEarlyStoppingType", "Off") != "Off":
        notes.append("training job early stopping is not applied locally")
    return notes


class TuningJob:
    """Runs a tuning job's training jobs with `run_training(name, hyperparameters) -> Outcome` and ranks them."""

    def __init__(
        self,
        name: str,
        request: dict,
        run_training: Callable[[str, dict[str, str]], Outcome],
        cores: int,
        report: Callable[[str], None] = lambda line: None,
    ):
        self.name = name
        self.config = request["HyperParameterTuningJobConfig"]
        self.definition = request["TrainingJobDefinition"]
        self.run_training = run_training
        limits = self.config["ResourceLimits"]
        self.max_jobs = int(limits["MaxNumberOfTrainingJobs"])
        self.parallel = max(1, min(int(limits.get("MaxParallelTrainingJobs", 1)), cores, self.max_jobs))
        self.report = report
        objective = self.config["HyperParameterTuningJobObjective"]
        self.metric, self.maximize = objective["MetricName"], objective["Type"] == "Maximize"

    def job_name(self, index: int) -> str:
        return f"{self.name}-{index:03d}"

    def run_one(self, job: Job) -> Job:
        static = self.definition.get("StaticHyperParameters", {})
        outcome = self.run_training(job.name, {**static, **job.tuned})
        job.ended = datetime.datetime.now(datetime.UTC)
        job.metrics = final_metrics(
            outcome.lines, self.definition["AlgorithmSpecification"].get("MetricDefinitions", [])
        )
        job.objective = job.metrics.get(self.metric)
        job.failure = outcome.failure
        if not job.failure and job.objective is None:
            job.failure = f"the objective metric {self.metric} never appeared in the job's log"
        tuned = ", ".join(f"{k}={v}" for k, v in sorted(job.tuned.items()))
        verdict = f"FAILED: {job.failure}" if job.failure else f"{self.metric} {job.objective:.6g}"
        self.report(f"{job.name} ({tuned}): {verdict}")
        return job

    def run(self) -> dict:
        """Run every job; the TuningStep's properties. Raises TuningFailed when no job has an objective."""
        created = datetime.datetime.now(datetime.UTC)
        for note in local_differences(self.config):
            self.report(f"local: {note}")
        self.report(f"{self.max_jobs} training job(s), {self.parallel} at a time")
        jobs = [Job(self.job_name(i + 1), tuned) for i, tuned in enumerate(sample(self.config, self.max_jobs))]
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            jobs = list(pool.map(self.run_one, jobs))
        ranked = sorted((j for j in jobs if j.objective is not None and not j.failure), key=self._rank)
        if not ranked:
            reasons = "; ".join(f"{j.name}: {j.failure}" for j in jobs)
            raise TuningFailed(f"all {len(jobs)} training job(s) failed: {reasons}")
        summaries = [self.summary(j) for j in ranked]
        failed = sum(1 for j in jobs if j.failure)
        return {
            "HyperParameterTuningJobName": self.name,
            "HyperParameterTuningJobArn": self.name,
            "HyperParameterTuningJobConfig": self.config,
            "TrainingJobDefinition": self.definition,
            "HyperParameterTuningJobStatus": "Completed",
            "CreationTime": created,
            "HyperParameterTuningEndTime": datetime.datetime.now(datetime.UTC),
            "TrainingJobStatusCounters": {
                "Completed": len(jobs) - failed,
                "InProgress": 0,
                "RetryableError": 0,
                "NonRetryableError": failed,
                "Stopped": 0,
            },
            "ObjectiveStatusCounters": {"Succeeded": len(ranked), "Pending": 0, "Failed": len(jobs) - len(ranked)},
            "BestTrainingJob": summaries[0],
            "TrainingJobSummaries": summaries,
        }

    def _rank(self, job: Job) -> tuple[float, str]:
        """Best objective first; ties go to the earlier job."""
        return (-job.objective if self.maximize else job.objective, job.name)

    def summary(self, job: Job) -> dict:
        """ListTrainingJobsForHyperParameterTuningJob's TrainingJobSummary of a job."""
        return {
            "TrainingJobName": job.name,
            "TrainingJobArn": job.name,
            "TuningJobName": self.name,
            "CreationTime": job.created,
            "TrainingStartTime": job.created,
            "TrainingEndTime": job.ended,
            "TrainingJobStatus": "Completed",
            "TunedHyperParameters": job.tuned,
            "FinalHyperParameterTuningJobObjectiveMetric": {
                "Type": "Maximize" if self.maximize else "Minimize",
                "MetricName": self.metric,
                "Value": job.objective,
            },
            "ObjectiveStatus": "Succeeded",
        }


def training_request(definition: dict, hyperparameters: dict[str, str]) -> dict:
    """CreateTrainingJob's arguments for one job of a TrainingJobDefinition."""
    resources = definition.get("ResourceConfig") or definition["HyperParameterTuningResourceConfig"]
    return {
        "AlgorithmSpecification": definition["AlgorithmSpecification"],
        "OutputDataConfig": definition["OutputDataConfig"],
        "ResourceConfig": {"InstanceType": resources["InstanceType"], "InstanceCount": resources["InstanceCount"]},
        "InputDataConfig": definition.get("InputDataConfig", []),
        "HyperParameters": hyperparameters,
        "Environment": definition.get("Environment", {}),
    }


def fetch_code(s3_client, uri: str, scratch: Path) -> Path:
    """The training code (an S3 sourcedir.tar.gz) extracted under scratch/code; returns that folder."""
    bucket, key = parse_s3_url(uri)
    archive = scratch / "sourcedir.tar.gz"
    s3_client.download_file(bucket, key, str(archive))
    code = scratch / "code"
    code.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(code, filter="data")
    return code


class TuningStepExecutor(_StepExecutor):
    """Runs a TuningStep's training jobs in containers (SageMaker local mode's training job), as TuningJob says."""

    def execute(self) -> dict:
        runner, name = self.pipline_executor, self.step.name
        request = runner.evaluate_step_arguments(self.step)
        tuning_name = f"{name.lower()}-{runner.execution.pipeline_execution_name}"[:32]
        definition = request["TrainingJobDefinition"]
        with tempfile.TemporaryDirectory(prefix="tuning-code-") as scratch:
            static = dict(definition.get("StaticHyperParameters", {}))
            if SUBMIT_DIRECTORY in static:
                uri = json.loads(static[SUBMIT_DIRECTORY])
                code = fetch_code(runner.sagemaker_session.s3_client, uri, Path(scratch))
                static[SUBMIT_DIRECTORY] = json.dumps(f"file://{code}")
                say(
                    name,
                    "local: the training code is fetched from S3 here and mounted (in the service the job fetches it)",
                )
            running = {**definition, "StaticHyperParameters": static}
            job = TuningJob(
                tuning_name,
                {**request, "TrainingJobDefinition": running},
                self._run_training(running),
                cores=os.cpu_count() or 1,
                report=lambda line: say(name, line),
            )
            try:
                properties = job.run()
            except TuningFailed as error:
                runner.execution.update_step_failure(name, str(error))
        properties["TrainingJobDefinition"] = definition  # as evaluated, not as it ran with the fetched code
        return properties

    def _run_training(self, definition: dict) -> Callable[[str, dict[str, str]], Outcome]:
        runner = self.pipline_executor

        def run_training(job_name: str, hyperparameters: dict[str, str]) -> Outcome:
            with runner.context.output.capture(prefix=f"[{job_name}] ") as lines:
                try:
                    runner.local_sagemaker_client.create_training_job(
                        job_name, **training_request(definition, hyperparameters)
                    )
                except Exception as error:  # the SDK raises RuntimeError for a failed container
                    return Outcome(list(lines), script_error(lines) or f"{type(error).__name__}: {error}")
            return Outcome(list(lines))

        return run_training
