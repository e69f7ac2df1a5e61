"""Send an ExperimentRecord to MLflow exactly once: one run per experiment, found again by
its fingerprint, so a re-run after an outage completes the same run instead of adding one."""

import contextlib
import os
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run

from yolo_mlops import pyfunc_model
from yolo_mlops.errors import PipelineError
from yolo_mlops.paths import MODELS_DIR, PLOTS_DIR, project_root
from yolo_mlops.record import ExperimentRecord

EMBEDDED_DB = "mlflow.db"
EMBEDDED_ARTIFACTS = "mlartifacts"
COMPLETE_TAG = "yolo_mlops.log_status"
MODEL_NAME = "model"
SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql")  # no file: MLflow 3 deprecates its file store
# Bounded waiting on a tracking server: MLflow's own defaults retry for minutes.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# Bounded retries for direct S3 uploads (MLFLOW_S3_ENDPOINT_URL); boto3 reads these variables.
S3_DEFAULTS = {"AWS_MAX_ATTEMPTS": "3", "AWS_RETRY_MODE": "standard"}
HEALTH_TIMEOUT_S = 5
MODEL_PACKAGES = ("mlflow", "ultralytics", "torch", "torchvision", "pandas", "pillow", "numpy")


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    experiment_id: str
    run_name: str
    action: str  # created, completed (an earlier attempt had failed) or unchanged


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else the embedded SQLite store at the project root.

    A relative SQLite path is taken from the project root (DVC_ROOT inside DVC's temporary
    experiment copies), never from the current folder, which DVC's queue deletes."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        return f"sqlite:///{project_root() / EMBEDDED_DB}"
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        return f"sqlite:///{_sqlite_path(uri)}"
    if scheme not in SCHEMES:
        raise PipelineError(
            f"MLFLOW_TRACKING_URI={public_uri(uri)!r}: unsupported scheme {scheme!r}; use http(s)://host:port for "
            f"a tracking server, sqlite:///path/mlflow.db, or unset it for the embedded store"
        )
    if scheme in ("http", "https") and not urlparse(uri).hostname:
        raise PipelineError(f"MLFLOW_TRACKING_URI={public_uri(uri)!r}: no host name")
    return uri


def public_uri(uri: str) -> str:
    """The URI without credentials, for messages and records."""
    parts = urlparse(uri)
    if parts.password or parts.username:
        host = parts.hostname or ""
        return parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host).geturl()
    return uri


def _sqlite_path(uri: str) -> Path:
    """The database file of a `sqlite:///path` URI, absolute (relative paths from the project root)."""
    path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else ""
    if not path or path.startswith(":memory:"):
        raise PipelineError(f"MLFLOW_TRACKING_URI={uri!r}: give a database file, e.g. sqlite:///mlflow.db")
    return project_root() / path  # an absolute path stays as it is


def artifact_location(uri: str, experiment_name: str) -> str | None:
    """Where a new experiment keeps its artifacts: beside a SQLite database (`mlartifacts/<name>`,
    at the project root for the embedded store), so that no run's artifacts land in the
    current folder; None lets a tracking server (or a file store) decide."""
    if urlparse(uri).scheme != "sqlite":
        return None
    return (_sqlite_path(uri).parent / EMBEDDED_ARTIFACTS / experiment_name).as_uri()


def check_server(uri: str) -> None:
    """Fail within seconds, not minutes of retries, when a tracking server does not answer."""
    if urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S):
            return
    except (urllib.error.URLError, OSError) as error:
        raise PipelineError(
            f"MLflow tracking server {public_uri(uri)} (MLFLOW_TRACKING_URI) is unreachable "
            f"({getattr(error, 'reason', error)}). "
            f"{SAFE_RESULTS}"
        ) from None


SAFE_RESULTS = (
    f"Nothing is lost: the results stay in {MODELS_DIR}/, {PLOTS_DIR}/ and metrics/. Once the tracking "
    "server is back, run `dvc repro` again: only the log stage runs, and it completes the same MLflow run "
    "instead of adding one."
)


def artifact_store_hint(error: Exception) -> str:
    """What to check when artifacts could not be stored, named by the variables that configure it."""
    text = str(error)
    if "mlflow-artifacts" in text and "500" in text:  # the server proxies artifacts and could not store them
        return ("The tracking server could not write to its artifact store: check the server's "
                "MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, and that its bucket exists "
                "(team stack: `docker compose logs mlflow`). ")
    if type(error).__module__.split(".")[0] in ("botocore", "boto3"):  # this client uploads to S3 itself
        endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or "AWS S3"
        return (f"Direct upload to S3 at {endpoint} failed: check MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY. ")
    return ""


def connect() -> tuple[MlflowClient, str]:
    """A client on the tracking store (and its model registry), failing within seconds when a
    tracking server does not answer."""
    for name, value in (HTTP_DEFAULTS | S3_DEFAULTS).items():
        os.environ.setdefault(name, value)
    uri = tracking_uri()
    check_server(uri)
    user_setting = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if user_setting is None:
        # set_tracking_uri also exports MLFLOW_TRACKING_URI. Keep the user's environment as it was: the
        # embedded store is recognised by its absence, and the DVC stages started from here (queued
        # experiments) must put their artifacts at DVC_ROOT, not in their temporary copy.
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    return MlflowClient(uri), uri


def model_requirements() -> list[str]:
    """Exact versions of what loading the model needs (public releases, without +cuXXX)."""
    return [f"{package}=={version(package).split('+')[0]}" for package in MODEL_PACKAGES]


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """The id of experiment `name`, created (artifacts beside a SQLite store) if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri, name))
    if experiment.lifecycle_stage == "deleted":
        raise PipelineError(
            f"mlflow.experiment_name: experiment {name!r} is deleted; restore it "
            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) or choose another name"
        )
    return experiment.experiment_id


def find_run(client: MlflowClient, experiment_id: str, key: str) -> Run | None:
    """The run that already holds these results, searched on the tracking server by tag."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`dvc.fingerprint` = '{key}'", order_by=["attributes.start_time ASC"],
        max_results=1,
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
        print(f"log: uploading {path} → {folder}/", file=sys.stderr)
        if path.is_dir():
            client.log_artifacts(run_id, str(path), folder)
        else:
            client.log_artifact(run_id, str(path), folder)
    has_model = run is not None and any(output.model_id for output in (run.outputs.model_outputs or []))
    if not has_model:
        print("log: logging the MLflow model", file=sys.stderr)
        with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
            # Deliberate (see the README, "model"): the signature describes the input, and no example
            # is replayed through the model at every log.
            warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
            mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=pyfunc_model.__file__,
                model_config={"imgsz": record.imgsz},
                artifacts={"weights": str(record.weights)},
                signature=pyfunc_model.SIGNATURE,
                pip_requirements=model_requirements(),
            )


def log_record(record: ExperimentRecord, experiment_name: str) -> LoggedRun:
    """Create or complete the experiment's single MLflow run."""
    client, uri = connect()
    try:
        experiment_id = ensure_experiment(client, experiment_name)
        run = find_run(client, experiment_id, record.fingerprint)
        if run is None:
            run_id = client.create_run(experiment_id, run_name=record.run_name, tags=record.tags).info.run_id
        else:
            run_id = run.info.run_id
    except PipelineError:
        raise
    except Exception as error:  # the server, the database or the network: report, don't trace
        raise PipelineError(f"MLflow at {public_uri(uri)}: {type(error).__name__}: {error}. {SAFE_RESULTS}") from None
    if run is not None and run.data.tags.get(COMPLETE_TAG) == "complete":
        return LoggedRun(run_id, experiment_id, run.info.run_name, "unchanged")
    if run is not None:
        print(f"log: completing run {run_id} left unfinished by an earlier attempt", file=sys.stderr)
    try:
        _send(client, run_id, run, record)
        client.set_tag(run_id, COMPLETE_TAG, "complete")
        client.set_terminated(run_id, "FINISHED")
    except Exception as error:
        with contextlib.suppress(Exception):  # the server may be the thing that failed
            client.set_terminated(run_id, "FAILED")
        raise PipelineError(
            f"MLflow at {public_uri(uri)}: sending run {run_id} failed ({type(error).__name__}: {error}). "
            + artifact_store_hint(error) + SAFE_RESULTS
        ) from None
    if run is None:
        return LoggedRun(run_id, experiment_id, record.run_name, "created")
    return LoggedRun(run_id, experiment_id, run.info.run_name, "completed")
