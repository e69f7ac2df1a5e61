"""The experiment's one MLflow run: opened once (by the first stage that tracks it), found again by its
fingerprint, and completed exactly once by the log stage, which sends whatever the stages before it
could not (restored from DVC's run-cache, skipped as unchanged, a tracking store that was down)."""

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, ViewType

from yolo_mlops.core import vocabulary
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.paths import DATASET_DIR, EVAL_METRICS_FILE, PER_IMAGE_DIR
from yolo_mlops.tracking.failure_messages import SAFE_RESULTS, STORE_IS_BACK, artifact_store_hint, safe_results
from yolo_mlops.tracking.model import log_model, model_id
from yolo_mlops.tracking.record import EVALUATE_ARTIFACTS, ExperimentRecord, RunHeader
from yolo_mlops.tracking.store import (
    SignInError,
    connect,
    experiment_id,
    pipeline_permission,
    public_uri,
    sign_in_error,
    store_error,
    tracking_uri,
)

log = logging.getLogger(__name__)
PARAMS_PER_BATCH, METRICS_PER_BATCH = 100, 1000  # MLflow's log_batch limits


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    experiment_id: str
    run_name: str
    action: str  # created, completed (opened by a stage before) or unchanged (complete already)


def metric_points(values: Iterable[tuple[str, float, int]], model: str | None = None) -> list[Metric]:
    """(name, value, step) → MLflow metrics, stamped now; `model`: the id of the logged model they evaluate
    (MLflow 3 shows them on the model's page too)."""
    stamp = int(time.time() * 1000)
    return [Metric(name, value, stamp, step, model_id=model) for name, value, step in values]


def find_run(client: MlflowClient, experiment_id: str, key: str) -> Run | None:
    """The experiment's current run, searched on the tracking server by its fingerprint (the latest
    attempt: an interrupted attempt loses the tag when it is retried)."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{vocabulary.FINGERPRINT_TAG}` = '{key}'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0] if runs else None


def deleted_run(client: MlflowClient, experiment_id: str, key: str) -> str | None:
    """The id of the experiment's run if someone deleted it in MLflow (in MLflow's trash, not purged)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{vocabulary.FINGERPRINT_TAG}` = '{key}'",
                              run_view_type=ViewType.DELETED_ONLY, max_results=1)
    return runs[0].info.run_id if runs else None


def refuse_deleted(run_id: str) -> PipelineError:
    """Exactly once: a deleted run, which MLflow can restore, stays the experiment's one run; no second one."""
    return PipelineError(
        f"MLflow run {run_id} of this experiment is deleted in MLflow (in its trash, not purged), and stays its one "
        f"run: restore it (`mlflow runs restore --run-id {run_id}`), or purge it (`mlflow gc --run-ids {run_id}` on "
        "the tracking store) and run `dvc repro --force --single-item log`, which logs it anew from DVC's outputs"
    )


def is_complete(run: Run) -> bool:
    return run.data.tags.get(vocabulary.LOG_STATUS_TAG) == vocabulary.COMPLETE


def dataset_input(header: RunHeader) -> DatasetInput:
    """data/tiny_coco as the run's dataset input, DVC's md5 as its digest (the runs table's Dataset column), its
    class names and counts per split and class as its profile."""
    dataset = Dataset(
        name=DATASET_DIR.name, digest=header.dataset_md5, source_type=vocabulary.DATASET_SOURCE_TYPE,
        source=json.dumps({"path": DATASET_DIR.as_posix(), "md5": header.dataset_md5}),
        profile=json.dumps(header.dataset_profile, sort_keys=True),
    )
    return DatasetInput(dataset, tags=[InputTag(vocabulary.DATASET_CONTEXT_TAG, vocabulary.DATASET_CONTEXT)])


def log_params(client: MlflowClient, run_id: str, params: dict[str, str], logged: dict[str, str]) -> None:
    """The params the run does not hold yet (MLflow refuses to change a logged param)."""
    missing = [Param(name, value) for name, value in params.items() if name not in logged]
    for start in range(0, len(missing), PARAMS_PER_BATCH):
        client.log_batch(run_id, params=missing[start:start + PARAMS_PER_BATCH])


def log_metrics(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    for start in range(0, len(metrics), METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + METRICS_PER_BATCH])


def open_run(client: MlflowClient, experiment_id: str, header: RunHeader) -> str:
    """Create the experiment's run, RUNNING from now on, with its params and its dataset input (the dataset's
    statistics are no run metrics: the same for every run of the dataset, they would crowd the run's charts and the
    comparison's); earlier attempts of the experiment are marked as such (see `retire_attempts`)."""
    run_id = client.create_run(experiment_id, run_name=header.run_name, tags=header.tags).info.run_id
    log_params(client, run_id, header.params, {})
    client.log_inputs(run_id, datasets=[dataset_input(header)])
    retire_attempts(client, experiment_id, header.fingerprint, run_id)
    return run_id


def retire_attempts(client: MlflowClient, experiment_id: str, key: str, current: str) -> list[str]:
    """Earlier, unfinished runs of the experiment (a training that failed or was killed) become its previous
    attempts: FAILED if still RUNNING, tagged with the run that retried them, and no longer found by the
    fingerprint, so that they leave the comparison. Their epochs stay in MLflow."""
    retired = []
    for run in client.search_runs([experiment_id], filter_string=f"tags.`{vocabulary.FINGERPRINT_TAG}` = '{key}'"):
        if run.info.run_id == current or is_complete(run):
            continue
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "FAILED")
        client.set_tag(run.info.run_id, vocabulary.PREVIOUS_ATTEMPT_TAG, current)
        client.delete_tag(run.info.run_id, vocabulary.FINGERPRINT_TAG)
        retired.append(run.info.run_id)
    return retired


def evaluation_digest() -> str:
    """sha256 of metrics/eval.json and the per-image statistics (metrics/per_image/): which evaluation the run's
    uploaded evaluate files are of."""
    digest = hashlib.sha256(EVAL_METRICS_FILE.read_bytes())
    for path in sorted(PER_IMAGE_DIR.glob("*.npz")):
        digest.update(f"\0{path.name}\0".encode() + path.read_bytes())
    return digest.hexdigest()


def upload_evaluation(client: MlflowClient, run: Run) -> None:
    """The evaluate stage's files (metrics/eval.json, plots/, metrics/per_image/), unless the run holds them already,
    from the same evaluation: the evaluate stage uploads them, the log stage only if that did not happen."""
    digest = evaluation_digest()
    if run.data.tags.get(vocabulary.EVALUATION_UPLOADED_TAG) != digest:
        upload(client, run.info.run_id, EVALUATE_ARTIFACTS)
        client.set_tag(run.info.run_id, vocabulary.EVALUATION_UPLOADED_TAG, digest)


def upload(client: MlflowClient, run_id: str, artifacts: Iterable[tuple[Path, str]]) -> None:
    """Files and folders into the run's artifact folders (a second upload replaces the same files)."""
    for path, folder in artifacts:
        log.info("uploading %s → %s/", path, folder)
        if path.is_dir():
            client.log_artifacts(run_id, str(path), folder)
        else:
            client.log_artifact(run_id, str(path), folder)


def missing_metrics(client: MlflowClient, run: Run, wanted: list[tuple[str, float, int]],
                    model: str | None = None) -> list[Metric]:
    """The (name, value, step) the run does not hold yet: one value per metric and step, whoever sent it.
    A metric the project logs at step 0 only (the evaluation's) is there once the run holds
    it; only the per-epoch histories are read, one request per metric (MLflow reads one metric's history at a
    time: its bulk reads are of one metric across runs)."""
    steps: dict[str, set[int]] = {}
    for name, _, step in wanted:
        steps.setdefault(name, set()).add(step)
    logged = {name: {metric.step for metric in client.get_metric_history(run.info.run_id, name)}
              if steps[name] != {0} else {0} for name in set(steps) & set(run.data.metrics)}
    return metric_points(((name, value, step) for name, value, step in wanted if step not in logged.get(name, set())),
                         model)


def _send(client: MlflowClient, run: Run, record: ExperimentRecord) -> None:
    """Whatever the run lacks of the record; what it holds is not sent again."""
    run_id = run.info.run_id
    log_params(client, run_id, record.header.params, run.data.params)
    client.log_inputs(run_id, datasets=[dataset_input(record.header)])  # MLflow keeps one input per dataset
    model = model_id(run)
    if model is None:
        log.info("log: logging the MLflow model")
        model = log_model(client, run, record.weights, record.imgsz)
    wanted = [(name, value, step) for step, epoch in enumerate(record.history, start=1)
              for name, value in epoch.items()]
    evaluation = [(name, value, 0) for name, value in record.metrics.items()]
    log_metrics(client, run_id, missing_metrics(client, run, wanted) + missing_metrics(client, run, evaluation, model))
    for name, value in record.header.tags.items():
        client.set_tag(run_id, name, value)
    upload(client, run_id, [artifact for artifact in record.artifacts if artifact not in EVALUATE_ARTIFACTS])
    upload_evaluation(client, run)
    logged = {item.path for item in client.list_artifacts(run_id, vocabulary.DATASET_ARTIFACTS)}
    if vocabulary.DATASET_TABLE not in logged:
        # once: MLflow appends the rows to a table the run holds already
        client.log_table(run_id, data=record.header.dataset_table, artifact_file=vocabulary.DATASET_TABLE)


def _retry(error: PipelineError) -> str:
    """When to run again: once the sign-in or permission is fixed, else once the store is back."""
    return error.retry if isinstance(error, SignInError) else STORE_IS_BACK


def log_record(record: ExperimentRecord, experiment_name: str) -> LoggedRun:
    """Complete the experiment's single MLflow run (opened by the train stage, or created here)."""
    header = record.header
    try:
        client, uri = connect()
        exp_id = experiment_id(client, experiment_name)
        found = find_run(client, exp_id, header.fingerprint)
        deleted = None if found else deleted_run(client, exp_id, header.fingerprint)
        run = None if deleted else found or client.get_run(open_run(client, exp_id, header))
    except PipelineError as error:  # the store named, what is wrong and what to do
        raise PipelineError(f"{error}. {safe_results(_retry(error))}") from None
    except Exception as error:  # the server, the database or the network: report, don't trace
        failed = store_error(tracking_uri(), error, "failed", pipeline_permission(experiment_name))
        raise PipelineError(f"{failed}. {safe_results(_retry(failed))}") from None
    if run is None:
        raise refuse_deleted(str(deleted))
    run_id = run.info.run_id
    if is_complete(run):
        return LoggedRun(run_id, exp_id, run.info.run_name, "unchanged")
    if found:
        log.info("log: completing run %s, opened by an earlier stage or attempt", run_id)
    try:
        _send(client, run, record)
        client.set_tag(run_id, vocabulary.LOG_STATUS_TAG, vocabulary.COMPLETE)
        client.set_terminated(run_id, "FINISHED")
    except Exception as error:
        with contextlib.suppress(Exception):  # the server may be the thing that failed
            client.set_terminated(run_id, "FAILED")
        refused = sign_in_error(error, pipeline_permission(experiment_name), uri=uri)
        if refused is not None:
            raise PipelineError(f"{refused}. {safe_results(refused.retry)}") from None
        raise PipelineError(
            f"MLflow at {public_uri(uri)}: sending run {run_id} failed ({type(error).__name__}: {error}). "
            + artifact_store_hint(error) + SAFE_RESULTS
        ) from None
    return LoggedRun(run_id, exp_id, run.info.run_name, "completed" if found else "created")
