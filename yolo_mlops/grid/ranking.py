"""The grid's MLflow runs ranked by the tracking server: selection, the comparison, the CSV export."""

import contextlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run

from yolo_mlops.core import vocabulary
from yolo_mlops.core.atomic import atomic_file
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.params import PIPELINE_SECTIONS

# What tells configurations apart: the hyper-parameters but the seed (what varies within one
# configuration), and the dataset by content (its DVC hash, not the text of prepare.source).
SEED = "train.seed"
CONFIG_PARAMS = (*(key for key in vocabulary.HYPERPARAMETERS if key != SEED), vocabulary.DATASET_TAG)


def profile_of(run: Run) -> dict[str, Any]:
    """The profile of the run's dataset input (tracking/run.py): class names and counts; {} without one."""
    for dataset_input in run.inputs.dataset_inputs if run.inputs else []:
        if dataset_input.dataset.source_type == vocabulary.DATASET_SOURCE_TYPE and dataset_input.dataset.profile:
            with contextlib.suppress(ValueError):
                return json.loads(dataset_input.dataset.profile)
    return {}


@dataclass(frozen=True)
class RunSummary:
    """What the comparison needs of one MLflow run."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)  # `split.metric` (evaluate), `data.<name>` (prepare)
    error: str = ""
    classes: tuple[str, ...] = ()  # the dataset's class names, in its order

    @classmethod
    def from_run(cls, run: Run) -> "RunSummary":
        metrics = {vocabulary.comparison_metric(key): value for key, value in run.data.metrics.items()}
        metrics.pop(None, None)
        profile = profile_of(run)
        return cls(run.info.run_id, run.data.tags.get(vocabulary.EXP_NAME_TAG) or run.info.run_name, run.info.status,
                   dict(run.data.params), vocabulary.profile_metrics(profile) | metrics,
                   run.data.tags.get(vocabulary.ERROR_TAG, ""),
                   tuple(profile.get(vocabulary.DATASET_PROFILE_CLASSES, ())))

    def metric(self, name: str) -> float:
        """One value of the comparison (`test.mAP50-95`, `data.test_images`); NaN when the run has none."""
        return self.metrics.get(name, math.nan)

    def interval(self, metric: str) -> tuple[float, float, float]:
        """`metric` (`test.mAP50-95`) and the bounds of its 95 % interval over the images (NaN where not recorded)."""
        low, high = (self.metric(vocabulary.interval_key(metric, bound)) for bound in vocabulary.INTERVAL_BOUNDS)
        return self.metric(metric), low, high

    def config(self) -> tuple[tuple[str, str], ...]:
        """The run's configuration: what it was trained on and with, the seed left out."""
        return tuple((key, self.params[key]) for key in CONFIG_PARAMS if key in self.params)


@dataclass(frozen=True)
class Comparison:
    rank_by: tuple[str, ...]
    ranked: list[RunSummary]  # best first
    excluded: list[tuple[RunSummary, str]]  # run, why it is not ranked

    @property
    def primary(self) -> str:
        return self.rank_by[0]

    def tied_with_winner(self) -> list[RunSummary]:
        """The runs equal to the winner on every ranking metric (the winner included)."""
        best = self.ranked[0]
        return [run for run in self.ranked if all(run.metrics[m] == best.metrics[m] for m in self.rank_by)]


def grid_filter(baseline_rev: str) -> str:
    """The experiments DVC ran from one commit (workspace runs of `dvc repro` are not experiments)."""
    return (f"tags.`{vocabulary.BASELINE_TAG}` = '{baseline_rev}' "
            f"and tags.`{vocabulary.EXP_NAME_TAG}` != '{vocabulary.WORKSPACE}'")


def order_by(rank_by: tuple[str, ...]) -> list[str]:
    """Best first: each ranking metric descending, then the run name (a stable last resort)."""
    return [f"metrics.`{vocabulary.eval_metric(name)}` DESC" for name in rank_by] + ["attributes.run_name ASC"]


def select_best(client: MlflowClient, experiment_ids: list[str], baseline_rev: str,
                rank_by: tuple[str, ...]) -> RunSummary | None:
    """The best finished run with every ranking metric, filtered and ordered by the tracking server
    (a NaN or missing metric fails the server's numeric filter)."""
    metrics = " and ".join(f"metrics.`{vocabulary.eval_metric(name)}` >= 0" for name in rank_by)
    runs = client.search_runs(
        experiment_ids, filter_string=f"{grid_filter(baseline_rev)} and attributes.status = 'FINISHED' and {metrics}",
        order_by=order_by(rank_by), max_results=1,
    )
    return RunSummary.from_run(runs[0]) if runs else None


def retried(failed: RunSummary, runs: list[RunSummary]) -> bool:
    """True when a finished run has every pipeline param of this failed one: the point was run again and
    passed (under another DVC experiment name, possibly from another commit's code)."""
    settings = {key: value for key, value in failed.params.items() if key.split(".")[0] in PIPELINE_SECTIONS}
    return bool(settings) and any(
        run.status == "FINISHED" and all(run.params.get(key) == value for key, value in settings.items())
        for run in runs
    )


def partition(runs: list[RunSummary], rank_by: tuple[str, ...]) -> Comparison:
    """Keep the server's order; set aside the runs that cannot be ranked, with the reason (a failed
    run whose point was retried successfully is left out: it is history, kept in MLflow)."""
    ranked, excluded = [], []
    for run in runs:
        if run.status == "FAILED" and retried(run, runs):
            continue
        missing = [name for name in rank_by if name not in run.metrics]
        nan = [name for name in rank_by if name in run.metrics and math.isnan(run.metrics[name])]
        if run.status == "FAILED":
            excluded.append((run, f"FAILED: {run.error or 'see the run in MLflow'}"))
        elif run.status != "FINISHED":
            excluded.append((run, f"{run.status}: its log stage did not finish"))
        elif missing:
            excluded.append((run, f"no metric {', '.join(missing)}"))
        elif nan:
            excluded.append((run, f"NaN {', '.join(nan)}"))
        else:
            ranked.append(run)
    return Comparison(rank_by, ranked, excluded)


def grid_runs(client: MlflowClient, experiment_ids: list[str], baseline_rev: str,
              rank_by: tuple[str, ...]) -> list[Run]:
    """The grid's runs, best first, without the previous attempts of a retried experiment (history, kept in
    MLflow: a training that failed or was killed, then run again)."""
    runs = client.search_runs(experiment_ids, filter_string=grid_filter(baseline_rev), order_by=order_by(rank_by),
                              max_results=10_000)
    return [run for run in runs if vocabulary.PREVIOUS_ATTEMPT_TAG not in run.data.tags]


def compare(client: MlflowClient, experiment_ids: list[str], baseline_rev: str, rank_by: tuple[str, ...],
            found: list[Run] | None = None) -> Comparison:
    """Every run of the grid, best first; fails when there is nothing to rank. `found`: the grid's runs
    (`grid_runs`), when searched already."""
    found = grid_runs(client, experiment_ids, baseline_rev, rank_by) if found is None else found
    runs = [RunSummary.from_run(run) for run in found]
    if not runs:
        raise PipelineError(
            f"no MLflow run of a DVC experiment from commit {baseline_rev[:7]} in the experiment; run the grid "
            "first (make run), or check MLFLOW_TRACKING_URI and mlflow.experiment_name"
        )
    comparison = partition(runs, rank_by)
    if not comparison.ranked:
        reasons = "; ".join(f"{run.name}: {why}" for run, why in comparison.excluded)
        raise PipelineError(f"none of the {len(runs)} run(s) can be ranked by {', '.join(rank_by)} ({reasons})")
    return comparison


def runs_frame(runs: list[Run]) -> pd.DataFrame:
    """Runs as MLflow's `search_runs` frames them: run_id, experiment_id, status, artifact_uri, start and
    end time, then `metrics.*`, `params.*` and `tags.*` columns."""
    rows = [{
        "run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "status": run.info.status,
        "artifact_uri": run.info.artifact_uri,
        "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
        "end_time": pd.to_datetime(run.info.end_time, unit="ms", utc=True) if run.info.end_time else None,
        **{f"metrics.{key}": value for key, value in sorted(run.data.metrics.items())},
        **{f"params.{key}": value for key, value in sorted(run.data.params.items())},
        **{f"tags.{key}": value for key, value in sorted(run.data.tags.items())},
    } for run in runs]
    return pd.DataFrame(rows)


def export_csv(client: MlflowClient, experiment_ids: list[str], baseline_rev: str, rank_by: tuple[str, ...],
               target: Path, found: list[Run] | None = None) -> None:
    """The grid's runs in the columns of MLflow's own CSV export (`mlflow experiments csv`), best first.
    `found`: the grid's runs (`grid_runs`), when searched already."""
    frame = runs_frame(grid_runs(client, experiment_ids, baseline_rev, rank_by) if found is None else found)
    with atomic_file(target) as staging:
        frame.to_csv(staging, index=False)
