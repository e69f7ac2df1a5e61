"""The course in commands: queue the grid, run it with DVC's queue, compare, promote, report.

    python -m yolo_mlops.course run [-S key=value ...]   # all of it (what `make run` does)
    python -m yolo_mlops.course queue [-S key=value ...] # queue the grid points not run yet
    python -m yolo_mlops.course start                    # run DVC's queue, then tag the MLflow runs
    python -m yolo_mlops.course compare                  # table, reports/runs.csv, insights, charts
    python -m yolo_mlops.course promote                  # compare, register, gates, reports/decision.md
    python -m yolo_mlops.course rollback [--to VERSION]  # move `champion` back
"""

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from yolo_mlops import charts, experiments
from yolo_mlops.compare import Comparison, Insights, compare, experiment_id, export_csv, insights, select_best, table
from yolo_mlops.errors import PipelineError, run_stage
from yolo_mlops.params import Params, load_grid, load_params
from yolo_mlops.paths import DECISION_TEMPLATE, GRID_FILE, REPORTS_DIR
from yolo_mlops.registry import CHAMPION, promote, rollback
from yolo_mlops.report import ReportData, render
from yolo_mlops.source import resolve_source
from yolo_mlops.sync import SyncResult, sync
from yolo_mlops.tracking import connect, ensure_experiment, public_uri
from yolo_mlops.yolo import resolve_device, resolve_model

RUNS_CSV = REPORTS_DIR / "runs.csv"
DECISION_FILE = REPORTS_DIR / "decision.md"
DVC_PLOTS_DIR = REPORTS_DIR / "dvc_plots"
DECISION_TAG, REPORT_TAG = "decision", "decision_report"


@dataclass(frozen=True)
class Compared:
    comparison: Comparison
    insights: Insights
    curves: dict[str, list[tuple[int, float]]]


def queue_grid(root: Path, params: Params, overrides: list[str]) -> None:
    """Queue the grid points this commit has no experiment for."""
    grid = load_grid(params=params)
    extra = experiments.parse_overrides(overrides, grid, params.flat())
    experiments.refuse_uncommitted(root)
    points = experiments.combinations(grid)
    missing = experiments.missing_combinations(points, extra, experiments.list_experiments(root))
    print(f"grid: {len(points)} experiment(s), {len(points) - len(missing)} already run from commit "
          f"{experiments.head_rev(root)[:7]}, {len(missing)} to queue")
    if missing:
        check_before_queueing(missing, extra)
        experiments.queue(root, grid, missing, extra)


def check_before_queueing(points: list[dict[str, Any]], overrides: dict[str, Any]) -> None:
    """Refuse, before anything is queued, what every experiment would fail on: a bad value in a
    grid point or an -S override, a COCO128 source or a model this machine cannot get (downloads
    happen here, once, into the caches the stages share), a device it does not have."""
    checked = []
    for point in points:
        try:
            checked.append(load_params(overrides=point | overrides))
        except PipelineError as error:
            values = ", ".join(f"{key}={value}" for key, value in (point | overrides).items())
            raise PipelineError(f"experiment {values} ({GRID_FILE} and -S): {error}. Nothing was queued.") from None
    try:
        for source in dict.fromkeys(params.prepare.source for params in checked):
            resolve_source(source)
        for model in dict.fromkeys(params.train.model for params in checked):
            resolve_model(model)
        for device in dict.fromkeys(params.train.device for params in checked):
            resolve_device(device)
    except PipelineError as error:
        raise PipelineError(f"{error} Nothing was queued.") from None


def sync_grid(client: MlflowClient, root: Path, params: Params) -> SyncResult:
    """Link every experiment of this commit to its MLflow run; record the failed ones as FAILED runs."""
    exp_id = ensure_experiment(client, params.mlflow.experiment_name)
    result = sync(client, exp_id, root, experiments.list_experiments(root))
    print(f"sync: {len(result.linked)} experiment(s) linked to their MLflow run"
          + (f"; FAILED: {', '.join(result.failed)} (to retry: `dvc exp remove {' '.join(result.failed)}`, "
             "then run again)" if result.failed else "")
          + (f"; without MLflow run: {', '.join(result.unlogged)}" if result.unlogged else ""))
    return result


def compare_grid(client: MlflowClient, exp_id: str, root: Path, params: Params) -> Compared:
    """Rank the grid's runs (on the tracking server), write reports/runs.csv, the charts and DVC's
    plots of every experiment, and print the table and the insights."""
    baseline = experiments.head_rev(root)
    comparison = compare(client, [exp_id], baseline, params.compare.rank_by)
    found = insights(comparison)
    export_csv([exp_id], baseline, params.compare.rank_by, root / RUNS_CSV)
    split, metric = comparison.primary.split(".", 1)
    history_key = f"train/val_{metric}"  # the per-epoch history is on the val split
    curves = {run.name: [(m.step, m.value) for m in client.get_metric_history(run.run_id, history_key)]
              for run in comparison.ranked}
    charts.config_chart(found, root / REPORTS_DIR / charts.CONFIG_CHART)
    charts.curves_chart(curves, f"val.{metric}", root / REPORTS_DIR / charts.CURVES_CHART)
    names = [run.name for run in comparison.ranked]
    plots = subprocess.run(["dvc", "plots", "diff", *names, "-o", str(DVC_PLOTS_DIR)], cwd=root,
                           capture_output=True, text=True)
    if plots.returncode != 0:
        print(f"warning: dvc plots diff failed, {DVC_PLOTS_DIR}/ not updated: {plots.stderr.strip()[-500:]}",
              file=sys.stderr)
    print(f"\nRuns ranked by {', then '.join(comparison.rank_by)} ({split} ranks, test alongside):\n")
    print(table(comparison))
    print("\n" + "\n".join(f"- {line}" for line in found.lines()))
    print(f"\nWritten: {RUNS_CSV}, {REPORTS_DIR}/{charts.CONFIG_CHART}, {REPORTS_DIR}/{charts.CURVES_CHART}, "
          f"{DVC_PLOTS_DIR}/index.html (dvc plots diff of the experiments)")
    return Compared(comparison, found, curves)


def _hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return f"CUDA GPU {torch.cuda.get_device_name(0)}"
    return f"CPU only, {os.cpu_count()} core(s)"


def promote_best(client: MlflowClient, exp_id: str, root: Path, params: Params, compared: Compared,
                 uri: str) -> None:
    """Select the best run on the server, promote it, write reports/decision.md and log it to MLflow."""
    baseline = experiments.head_rev(root)
    best = select_best(client, [exp_id], baseline, params.compare.rank_by)
    if best is None:
        raise PipelineError("no finished run with every ranking metric to promote")
    promotion = promote(client, best, params.promote)
    data = ReportData(params, baseline, public_uri(uri), _hardware(), compared.comparison,
                      compared.insights, promotion, compared.curves)
    render(data, root / DECISION_TEMPLATE, root / DECISION_FILE)
    client.log_artifact(best.run_id, str(root / DECISION_FILE), "decision")
    version = client.get_model_version(promotion.name, promotion.version)
    tags = {DECISION_TAG: "Approve" if promotion.approved else "Reject",
            REPORT_TAG: f"runs:/{best.run_id}/decision/{DECISION_FILE.name}"}
    for key, value in tags.items():
        if version.tags.get(key) != value:
            client.set_model_version_tag(promotion.name, promotion.version, key, value)
    print(f"\npromote: run {best.run_id} ({best.name}) is {promotion.name} version {promotion.version} "
          f"({'new' if promotion.created else 'registered before'}), alias challenger")
    for gate in promotion.gates:
        print(f"  gate {gate.name}: {'pass' if gate.passed else 'FAIL'} ({gate.detail})")
    print(f"decision: {tags[DECISION_TAG]}; {CHAMPION} = "
          + (f"version {promotion.champion} (models:/{promotion.name}@{CHAMPION})" if promotion.champion else "none"))
    print(f"report: {DECISION_FILE} (also logged to run {best.run_id} under decision/)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m yolo_mlops.course", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "queue"):
        sub = commands.add_parser(name)
        sub.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="a params.yaml value for every experiment of the grid (as dvc exp run -S)")
    for name in ("start", "compare", "promote"):
        commands.add_parser(name)
    back = commands.add_parser("rollback")
    back.add_argument("--to", help="the version to make champion (default: the previous champion)")
    args = parser.parse_args(argv)
    root, params = Path.cwd(), load_params()
    if args.command == "queue":
        queue_grid(root, params, args.overrides)
        print("Run them with `dvc exp run --run-all` (or `python -m yolo_mlops.course start`)")
        return
    client, uri = connect()  # before any training: fail now if the tracking server is down
    failed: list[str] = []
    try:
        if args.command == "rollback":
            rollback(client, params.promote.registered_model, args.to)
            return
        if args.command in ("run", "start"):
            if args.command == "run":
                queue_grid(root, params, args.overrides)
            queued = _queued(root)  # with any queued earlier: DVC runs them all
            if queued:
                experiments.run_queue(root, queued)
            failed = sync_grid(client, root, params).failed
        if args.command != "start":
            exp_id = experiment_id(client, params.mlflow.experiment_name)
            compared = compare_grid(client, exp_id, root, params)
            if args.command in ("run", "promote"):
                promote_best(client, exp_id, root, params, compared, uri)
    except MlflowException as error:
        raise PipelineError(f"MLflow at {public_uri(uri)}: {error.message}") from None
    if args.command in ("run", "start") and failed:
        raise PipelineError(
            f"{len(failed)} experiment(s) of this commit failed: {', '.join(failed)} (reasons above and in their "
            f"FAILED MLflow runs); the others were compared. To retry: `dvc exp remove {' '.join(failed)}`, "
            "then run again"
        )


def _queued(root: Path) -> int:
    """How many experiments wait in DVC's queue."""
    status = subprocess.run(["dvc", "queue", "status"], cwd=root, capture_output=True, text=True).stdout
    return sum(" Queued" in line for line in status.splitlines())


if __name__ == "__main__":
    run_stage(main)
