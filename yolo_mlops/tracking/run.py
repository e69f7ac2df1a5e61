"""Send an ExperimentRecord to MLflow exactly once: one run per experiment, found again by
its fingerprint, so a re-run after an outage completes the same run instead of adding one."""

import contextlib
import logging
import time
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run

from yolo_mlops.core import vocabulary as names
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.tracking.hints import SAFE_RESULTS, artifact_store_hint
from yolo_mlops.tracking.model import log_model
from yolo_mlops.tracking.record import ExperimentRecord
from yolo_mlops.tracking.store import connect, experiment_id, public_uri, store_error, tracking_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    experiment_id: str
    run_name: str
    action: str  # created, completed (an earlier attempt had failed) or unchanged


def find_run(client: MlflowClient, experiment_id: str, key: str) -> Run | None:
    """The run that already holds these results, searched on the tracking server by tag."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{names.FINGERPRINT_TAG}` = '{key}'",
        order_by=["attributes.start_time ASC"], max_results=1,
    )
    return runs[0] if runs else None


def _missing_metrics(client: MlflowClient, run_id: str, record: ExperimentRecord,
                     existed: bool) -> list[Metric]:
    now = int(time.time() * 1000)
    wanted = [(name, value, 0) for name, value in record.metrics.items()]
    for step, epoch in enumerate(record.history, start=1):
        wanted += [(name, value, step) for name, value in epoch.items()]
    logged: dict[str, set[int]] = {}
    if existed:
        for name in {name for name, _, _ in wanted}:
            logged[name] = {metric.step for metric in client.get_metric_history(run_id, name)}
    return [Metric(name, value, now, step) for name, value, step in wanted if step not in logged.get(name, set())]


def _send(client: MlflowClient, run_id: str, run: Run | None, record: ExperimentRecord) -> None:
    existing_params = run.data.params if run else {}
    params = [Param(name, value) for name, value in record.params.items() if name not in existing_params]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start:start + 100])
    metrics = _missing_metrics(client, run_id, record, existed=run is not None)
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])
    for name, value in record.tags.items():
        client.set_tag(run_id, name, value)
    for path, folder in record.artifacts:
        log.info("log: uploading %s → %s/", path, folder)
        if path.is_dir():
            client.log_artifacts(run_id, str(path), folder)
        else:
            client.log_artifact(run_id, str(path), folder)
    has_model = run is not None and any(output.model_id for output in (run.outputs.model_outputs or []))
    if not has_model:
        log.info("log: logging the MLflow model")
        log_model(run_id, record.weights, record.imgsz)


def log_record(record: ExperimentRecord, experiment_name: str) -> LoggedRun:
    """Create or complete the experiment's single MLflow run."""
    try:
        client, uri = connect()
        exp_id = experiment_id(client, experiment_name)
        run = find_run(client, exp_id, record.fingerprint)
        if run is None:
            run_id = client.create_run(exp_id, run_name=record.run_name, tags=record.tags).info.run_id
        else:
            run_id = run.info.run_id
    except PipelineError as error:  # the store named, what is wrong and what to do
        raise PipelineError(f"{error}. {SAFE_RESULTS}") from None
    except Exception as error:  # the server, the database or the network: report, don't trace
        raise PipelineError(f"{store_error(tracking_uri(), error, 'failed')}. {SAFE_RESULTS}") from None
    if run is not None and run.data.tags.get(names.LOG_STATUS_TAG) == names.COMPLETE:
        return LoggedRun(run_id, exp_id, run.info.run_name, "unchanged")
    if run is not None:
        log.info("log: completing run %s left unfinished by an earlier attempt", run_id)
    try:
        _send(client, run_id, run, record)
        client.set_tag(run_id, names.LOG_STATUS_TAG, names.COMPLETE)
        client.set_terminated(run_id, "FINISHED")
    except Exception as error:
        with contextlib.suppress(Exception):  # the server may be the thing that failed
            client.set_terminated(run_id, "FAILED")
        raise PipelineError(
            f"MLflow at {public_uri(uri)}: sending run {run_id} failed ({type(error).__name__}: {error}). "
            + artifact_store_hint(error) + SAFE_RESULTS
        ) from None
    if run is None:
        return LoggedRun(run_id, exp_id, record.run_name, "created")
    return LoggedRun(run_id, exp_id, run.info.run_name, "completed")
