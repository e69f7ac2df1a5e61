"""The grid's steps, each returning what it did: plan and queue the grid points, run DVC's queue,
link the experiments to their MLflow runs, compare them, promote the best and write the report.
`python -m yolo_mlops.grid` (grid/__main__.py) runs and prints them."""

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from yolo_mlops.core import vocabulary
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.git import head_rev
from yolo_mlops.core.params import Params, load_params
from yolo_mlops.core.paths import (
    CONFIG_CHART,
    CURVES_CHART,
    DECISION_FILE,
    DECISION_TEMPLATE,
    DVC_PLOTS_DIR,
    GRID_FILE,
    GRID_PER_IMAGE_CACHE,
    PARAMS_FILE,
    RUNS_CSV,
)
from yolo_mlops.data.source import resolve_source
from yolo_mlops.grid import charts, experiments, points, workers
from yolo_mlops.grid.experiments import DvcExperiment
from yolo_mlops.grid.insights import Insights, insights
from yolo_mlops.grid.ranking import Comparison, RunSummary, compare, export_csv, grid_runs, select_best
from yolo_mlops.grid.registry import Promotion, promote, report_uri
from yolo_mlops.grid.report import ReportData, render
from yolo_mlops.grid.resampling import run_replicates
from yolo_mlops.grid.sync import SyncResult, deleted_runs, sync
from yolo_mlops.tracking.store import experiment_id, experiment_page, public_uri
from yolo_mlops.yolo.model import resolve_device, resolve_model

HISTORIES = 8  # runs whose metric history is read at once


@dataclass(frozen=True)
class Plan:
    """The grid of this commit: every point, and those no experiment has run yet."""

    baseline: str
    overrides: dict[str, Any]  # -S values for every point
    points: list[dict[str, Any]]
    missing: list[dict[str, Any]]
    experiments: list[DvcExperiment]  # those of this commit when planned, queued ones included

    @property
    def settled(self) -> bool:
        """Nothing to queue, and nothing waiting in DVC's queue."""
        return not self.missing and not any(experiment.queued for experiment in self.experiments)

    def states(self) -> dict[str, list[str]]:
        """The names of this commit's experiments at a point of the grid, by state: done (finished with
        results), failed, running (started by a queue worker), queued (waiting)."""
        found: dict[str, list[str]] = {"done": [], "failed": [], "running": [], "queued": []}
        for experiment in self.experiments:
            if any(points.matches(experiment, point | self.overrides) for point in self.points):
                state = ("running" if experiment.running else "queued" if experiment.queued
                         else "failed" if experiment.failed else "done")
                found[state].append(experiment.name)
        return found


@dataclass(frozen=True)
class Stopped:
    """What an interrupt left of the grid's experiments, by name."""

    finished: list[str]  # done, in DVC and in their FINISHED MLflow runs
    stopped: list[str]  # interrupted: removed from DVC (the next run runs them again), their MLflow runs KILLED
    queued: list[str]  # not started: still in DVC's queue, for the next run
    killed: bool  # they did not stop in time, or a second interrupt came: killed, the next run repairs


@dataclass(frozen=True)
class Compared:
    comparison: Comparison
    insights: Insights
    curves: dict[str, list[tuple[int, float]]]  # run name → (epoch, value) of `curve_metric`
    curve_metric: str | None  # the per-epoch metric charted (val), None when training records none
    plots_error: str | None  # why `dvc plots diff` did not update reports/dvc_plots/, if it did not
    page: str  # the experiment's runs in the MLflow UI
    deleted: dict[str, str]  # experiments whose MLflow run is deleted in MLflow: name → run id


@dataclass(frozen=True)
class Promoted:
    best: RunSummary
    promotion: Promotion


def plan_grid(root: Path, params: Params, overrides: list[str]) -> Plan:
    """The grid points this commit has no experiment for (queued ones count as there)."""
    grid = points.load_grid(GRID_FILE, params)  # relative, as the user names it: the CLI runs at the root
    extra = points.parse_overrides(overrides, grid, params.flat())
    experiments.refuse_uncommitted(root)
    every = points.combinations(grid)
    known = experiments.list_experiments(root)
    return Plan(head_rev(root), extra, every, points.missing_combinations(every, extra, known), known)


def queue_plan(root: Path, plan: Plan) -> Iterator[tuple[list[str], str]]:
    """Queue the missing points (checked before: `check_before_queueing`), as `dvc exp run --queue` each, in
    one process (`experiments.queue_all`), named after its values (`points.experiment_name`; DVC's own
    `key=a,b` expansion would number one name instead). Yields (the command, DVC's output) as each is queued."""
    return experiments.queue_all(root, [(points.experiment_name(plan.baseline, values, plan.overrides),
                                         points.set_args(values | plan.overrides)) for values in plan.missing])


def check_before_queueing(grid_points: list[dict[str, Any]], overrides: dict[str, Any],
                          here: bool = True) -> list[Params]:
    """Refuse, before anything is queued, what every experiment would fail on: a bad value in a
    grid point or an -S override, a COCO128 source or a model this machine cannot get (downloads
    happen here, once, into the caches the stages share), a device it does not have (`here`; on a
    Ray cluster the device is the cluster's). Returns each point's params."""
    checked = []
    for point in grid_points:
        try:
            checked.append(load_params(PARAMS_FILE, overrides=point | overrides))
        except PipelineError as error:
            values = ", ".join(f"{key}={value}" for key, value in (point | overrides).items())
            raise PipelineError(f"experiment {values} ({GRID_FILE} and -S): {error}. Nothing was queued.") from None
    try:
        for source in dict.fromkeys(params.prepare.source for params in checked):
            resolve_source(source)
        for model in dict.fromkeys(params.train.model for params in checked):
            resolve_model(model)
        for device in dict.fromkeys(params.train.device for params in checked) if here else ():
            resolve_device(device)
    except PipelineError as error:
        raise PipelineError(f"{error} Nothing was queued.") from None
    return checked


def run_queued(root: Path, jobs: int, listed: list[DvcExperiment] | None = None) -> Iterator[str]:
    """Run every experiment waiting in DVC's queue (those queued earlier too), `jobs` at once, yielding
    DVC's output. What several of them share is computed once first (`run_shared`). A queue worker that
    dies is replaced, and its experiment run again (`workers.WorkerWatch`). `listed`: this commit's
    experiments, when just listed (else listed now)."""
    listed = experiments.list_experiments(root) if listed is None else listed
    waiting = [experiment for experiment in listed if experiment.queued]
    if waiting:
        if jobs > 1:
            yield from run_shared(root, waiting)
        jobs = min(jobs, len(waiting))
        yield from experiments.run_queue(root, len(waiting), jobs, workers.WorkerWatch(root, jobs, time.time()))


def run_shared(root: Path, waiting: list[DvcExperiment]) -> Iterator[str]:
    """The prepare stage of the waiting experiments, once per distinct prepare section, before the queue
    starts them (see `experiments.run_stage_once`): the experiments restore it from DVC's run-cache."""
    groups: dict[str, list[DvcExperiment]] = {}
    for experiment in waiting:
        section = {key: value for key, value in experiment.params.items() if key.startswith(f"{vocabulary.PREPARE}.")}
        groups.setdefault(repr(sorted(section.items())), []).append(experiment)
    for group in groups.values():
        if len(group) > 1:
            error = experiments.run_stage_once(root, vocabulary.PREPARE, group[0])
            yield (f"grid: {vocabulary.PREPARE} of {len(group)} experiment(s) run once before the queue"
                   + (f"; it failed, and they will report why ({error.splitlines()[-1]})" if error else "") + "\n")


def stop_grid(client: MlflowClient, root: Path, params: Params, before: list[DvcExperiment]) -> Stopped:
    """After an interrupt: stop DVC's queue (`experiments.interrupt_queue`); the experiments it stopped
    are removed from DVC, so that the next run runs them again, and their MLflow runs end KILLED, kept as
    previous attempts (the retry's train stage tags them so). `before`: the experiments listed when the
    queue started."""
    experiments.record_stopping(root, [experiment.name for experiment in before if experiment.queued])
    waiting = [experiment.name for experiment in experiments.list_experiments(root) if experiment.queued]
    experiments.record_stopping(root, waiting)  # those that failed on their own before the interrupt left out
    killed = not experiments.interrupt_queue(root)
    earlier = {experiment.name for experiment in before if not experiment.queued}
    listed = [experiment for experiment in experiments.list_experiments(root) if experiment.name not in earlier]
    stopped = experiments.repair_queue(root, listed)
    exp_id = experiment_id(client, params.mlflow.experiment_name)
    for name in stopped:
        for run in client.search_runs([exp_id], filter_string=(
                f"tags.`{vocabulary.EXP_NAME_TAG}` = '{name}' and attributes.status != 'FINISHED'")):
            if run.info.status != "KILLED":
                client.set_terminated(run.info.run_id, "KILLED")
    return Stopped([experiment.name for experiment in listed if experiment.done],
                   stopped, [experiment.name for experiment in listed if experiment.queued and not experiment.running],
                   killed)


def sync_grid(client: MlflowClient, root: Path, params: Params, failed_elsewhere: list[DvcExperiment] | None = None,
              extra_tags: dict[str, dict[str, str]] | None = None,
              known: list[DvcExperiment] | None = None) -> SyncResult:
    """Link every experiment of this commit (`known`, else listed now) to its MLflow run; record the failed
    ones as FAILED runs, with `failed_elsewhere` (points that failed on a Ray worker: DVC keeps no experiment
    of them). `extra_tags`: more run tags by experiment name."""
    exp_id = experiment_id(client, params.mlflow.experiment_name)
    listed = experiments.list_experiments(root) if known is None else known
    return sync(client, exp_id, root, listed + (failed_elsewhere or []), extra_tags)


def compare_grid(client: MlflowClient, root: Path, params: Params) -> Compared:
    """Rank the grid's runs (on the tracking server); write reports/runs.csv, the charts and DVC's
    plots of every experiment. One search of the grid's runs serves the ranking and the CSV."""
    exp_id = experiment_id(client, params.mlflow.experiment_name, create=False)
    baseline = head_rev(root)
    found = grid_runs(client, [exp_id], baseline, params.compare.rank_by)
    comparison = compare(client, [exp_id], baseline, params.compare.rank_by, found)
    revs = {run.info.run_id: run.data.tags.get(vocabulary.EXP_REV_TAG, "") for run in found}
    # DVC draws its plots in a process of its own, beside the charts drawn here.
    with ThreadPoolExecutor(max_workers=1) as pool:
        plots = pool.submit(experiments.plots_diff, root, {run.name: revs[run.run_id] for run in comparison.ranked},
                            DVC_PLOTS_DIR)
        export_csv(client, [exp_id], baseline, comparison.rank_by, root / RUNS_CSV, found)
        found_insights, curves, curve_metric = _charts(client, root, comparison)
    return Compared(comparison, found_insights, curves, curve_metric, plots.result(),
                    experiment_page(client.tracking_uri, exp_id),
                    deleted_runs(client, exp_id, root))


def _charts(client: MlflowClient, root: Path, comparison: Comparison
            ) -> tuple[Insights, dict[str, list[tuple[int, float]]], str | None]:
    """The charts of the comparison: (insights, per-epoch curves, their metric). The factor effects' intervals
    come from each run's per-image statistics of the primary metric's split, resampled (finished runs' kept in
    GRID_PER_IMAGE_CACHE); metric histories are read HISTORIES at a time."""
    found = insights(comparison, run_replicates(client, comparison.ranked, comparison.primary.split(".")[0],
                                                root / GRID_PER_IMAGE_CACHE))
    charts.config_chart(found, root / CONFIG_CHART)
    # Training records a per-epoch history on val only: the primary metric's, or its val counterpart's.
    val_counterpart = "val." + comparison.primary.split(".", 1)[1]
    curve_metric = next((name for name in (comparison.primary, val_counterpart) if vocabulary.history_of(name)), None)
    curves: dict[str, list[tuple[int, float]]] = {}
    if curve_metric is None:
        (root / CURVES_CHART).unlink(missing_ok=True)  # an older chart would belong to another comparison
    else:
        history = vocabulary.history_of(curve_metric)
        with ThreadPoolExecutor(max_workers=HISTORIES) as pool:
            read = pool.map(lambda run: [(m.step, m.value) for m in client.get_metric_history(run.run_id, history)],
                            comparison.ranked)
            curves = dict(zip((run.name for run in comparison.ranked), read, strict=True))
        charts.curves_chart(curves, curve_metric, root / CURVES_CHART)
    return found, curves, curve_metric


def hardware() -> str:
    """This machine's first NVIDIA GPU, from NVIDIA's management library (what MLflow's GPU metrics read;
    importing torch to ask would take seconds), else its CPU cores."""
    import pynvml

    try:
        pynvml.nvmlInit()
        try:
            if pynvml.nvmlDeviceGetCount():
                return f"CUDA GPU {pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))}"
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:  # no NVIDIA driver on this machine
        pass
    return f"CPU only, {os.cpu_count()} core(s)"


def promote_best(client: MlflowClient, root: Path, params: Params, compared: Compared,
                 hardware_line: str | None = None) -> Promoted:
    """Select the best run on the server, promote it, write reports/decision.md and log it to MLflow.
    `hardware_line`: where the runs trained, when not on this machine (a Ray cluster)."""
    exp_id = experiment_id(client, params.mlflow.experiment_name, create=False)
    baseline = head_rev(root)
    best = select_best(client, [exp_id], baseline, params.compare.rank_by)
    if best is None:
        raise PipelineError("no finished run with every ranking metric to promote")
    promotion = promote(client, best, params.promote)
    data = ReportData(params, baseline, public_uri(client.tracking_uri), hardware_line or hardware(),
                      compared.comparison, compared.insights, promotion, compared.curves, compared.curve_metric)
    render(data, root / DECISION_TEMPLATE, root / DECISION_FILE)
    client.log_artifact(best.run_id, str(root / DECISION_FILE), vocabulary.DECISION_ARTIFACTS)
    version = client.get_model_version(promotion.name, promotion.version)
    tags = {vocabulary.DECISION_TAG: promotion.decision,
            vocabulary.REPORT_TAG: report_uri(best.run_id)}
    for key, value in tags.items():
        if version.tags.get(key) != value:
            client.set_model_version_tag(promotion.name, promotion.version, key, value)
    return Promoted(best, promotion)
