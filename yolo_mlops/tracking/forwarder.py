"""A stage's forwarder to MLflow: `python -m yolo_mlops.tracking.forwarder <stage> [--new-attempt]
[--system-metrics]`, started by tracking/live.py, which describes the protocol. It opens (or finds) the
experiment's run, samples MLflow's system metrics while the stage runs, and does the jobs the stage
writes to its stdin until the stage closes it, or dies."""

import json
import signal
import sys
from typing import Any, NamedTuple

from mlflow import MlflowClient

from yolo_mlops.core import vocabulary
from yolo_mlops.core.entry import quick_exit, show_progress
from yolo_mlops.core.params import Params, load_params
from yolo_mlops.core.paths import BEST_WEIGHTS, EVAL_METRICS_FILE
from yolo_mlops.tracking.live import EPOCHS, EVALUATION, MODEL, NEW_ATTEMPT, STATUS, SYSTEM_METRICS, log, warn
from yolo_mlops.tracking.model import has_model, log_model, model_id
from yolo_mlops.tracking.record import run_header, stage_metrics
from yolo_mlops.tracking.run import (
    find_run,
    is_complete,
    log_metrics,
    metric_points,
    missing_metrics,
    open_run,
    upload_evaluation,
)
from yolo_mlops.tracking.store import connect, experiment_id, pipeline_permission, public_uri, sign_in_error

SYSTEM_METRICS_INTERVAL_S = 5.0  # MLflow's default is 10 s; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides


class StageRun(NamedTuple):
    """The MLflow run a stage sends to, with the client and the store it is in."""

    client: MlflowClient
    run_id: str
    uri: str


def open_stage_run(params: Params, stage: str, new_attempt: bool) -> StageRun | None:
    """The run the stage sends to, or None when there is nothing to send
    (`dvc repro --force` of an experiment its run holds completely already)."""
    header = run_header(params)
    client, uri = connect()
    exp_id = experiment_id(client, params.mlflow.experiment_name)
    run = find_run(client, exp_id, header.fingerprint)
    if run is not None and is_complete(run):
        log.info("%s: MLflow run %s holds this experiment already; nothing to send", stage, run.info.run_id)
        return None
    run_id = open_run(client, exp_id, header) if run is None or new_attempt else run.info.run_id
    log.info("%s: tracking in MLflow run %s (%s) at %s", stage, run_id, header.run_name, public_uri(uri))
    return StageRun(client, run_id, uri)


def send_epochs(client: MlflowClient, run_id: str, params: Params, rows: list[list[Any]]) -> None:
    log_metrics(client, run_id, metric_points((name, value, step) for name, value, step in rows))


def send_model(client: MlflowClient, run_id: str, params: Params) -> None:
    run = client.get_run(run_id)
    if not has_model(run):
        log.info("evaluate: logging the MLflow model (models/best.pt) while the stage evaluates")
        log_model(client, run, BEST_WEIGHTS, params.train.imgsz)


def send_evaluation(client: MlflowClient, run_id: str, params: Params) -> None:
    """metrics/eval.json as the run's metrics, also linked to its model (logged just before), and the files."""
    metrics = stage_metrics(vocabulary.EVALUATE, EVAL_METRICS_FILE)
    wanted = [(name, value, 0) for name, value in metrics.items()]
    run = client.get_run(run_id)
    log_metrics(client, run_id, missing_metrics(client, run, wanted, model_id(run)))
    upload_evaluation(client, run)


JOBS = {EPOCHS: send_epochs, MODEL: send_model, EVALUATION: send_evaluation}


def main(argv: list[str]) -> None:
    stage, options = argv[0], set(argv[1:])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C stops the stage, which then says how the run ends
    show_progress()
    params = load_params()
    try:
        stage_run = open_stage_run(params, stage, NEW_ATTEMPT in options)
    except Exception as error:  # the store, the server or the network: the stage does not depend on them
        refused = sign_in_error(error, pipeline_permission(params.mlflow.experiment_name))
        warn(stage, str(refused) if refused is not None else f"cannot be reached ({error})")
        stage_run = None
    monitor = None
    if stage_run is not None and SYSTEM_METRICS in options:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(stage_run.run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S,
                                       tracking_uri=stage_run.uri)
        monitor.start()
    status, failed = None, stage_run is None
    for line in sys.stdin:  # until the stage closes the pipe, or dies
        try:
            job, *values = json.loads(line)
            if job == STATUS:
                status = values[0]
            elif stage_run is not None and not failed:
                JOBS[job](stage_run.client, stage_run.run_id, params, *values)
        except Exception as error:
            if not failed:
                failed = True
                warn(stage, f"{type(error).__name__}: {error}")
    if monitor is not None:
        monitor.finish()
    if stage_run is not None and status is not None:
        try:
            stage_run.client.set_terminated(stage_run.run_id, status)
        except Exception as error:
            if not failed:
                warn(stage, f"{type(error).__name__}: {error}")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    finally:
        quick_exit()
