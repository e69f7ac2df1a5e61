"""The tracking store: where runs go (MLFLOW_TRACKING_URI or the embedded SQLite store), a client on
it that fails within seconds when a server does not answer, and the experiment lookup."""

import os
import sqlite3
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from filelock import FileLock, Timeout
from mlflow import MlflowClient

from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.paths import EMBEDDED_ARTIFACTS, EMBEDDED_DB, project_root, shared
from yolo_mlops.core.vocabulary import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, MEMBER

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
# MLflow creates (or upgrades) a SQLite store's schema when a client first opens it; two processes doing
# so at once leave it half-migrated. One process at a time, under a lock file beside the database.
STORE_LOCK_SUFFIX = ".lock"
STORE_LOCK_TIMEOUT_S = 300
LOCAL_UI = "http://127.0.0.1:5000"  # `make ui` on the embedded store
UI_WORKFLOW = "machine_learning"  # the UI's "Model training" view (`?workflowType=`)
LEFTOVER_TABLE_PREFIX = "_alembic_tmp_"  # what an interrupted SQLite schema migration leaves behind
# A tracking server with sign-in (`mlflow server --app-name basic-auth`): MLflow's client sends these
# variables' account, and the server answers 401 (not signed in) or 403 (signed in, not permitted).
USERNAME_VARIABLE, PASSWORD_VARIABLE = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
UNAUTHENTICATED, PERMISSION_DENIED = "UNAUTHENTICATED", "PERMISSION_DENIED"  # MLflow's error codes of 401, 403


class SignInError(PipelineError):
    """A tracking server refused the account (401) or the permission (403); `retry` says when to run again."""

    def __init__(self, message: str, retry: str) -> None:
        super().__init__(message)
        self.retry = retry


def pipeline_permission(experiment_name: str) -> str:
    """What the stages need on a tracking server with sign-in: to log runs in the experiment."""
    return f"EDIT on experiment {experiment_name!r}"


def sign_in_error(error: Exception, needed: str, role: str = MEMBER, uri: str | None = None
                  ) -> SignInError | None:
    """One line for a 401 or a 403 of a tracking server, naming the credential variables, or the permission
    that is missing (`needed`, e.g. "EDIT on experiment 'x'") and the `role` the stack's admin grants it
    with; None for any other error. No credential is ever part of the line."""
    if isinstance(error, SignInError):
        return error
    code = getattr(error, "error_code", None)
    if code not in (UNAUTHENTICATED, PERMISSION_DENIED):
        return None
    server = public_uri(uri or os.environ.get("MLFLOW_TRACKING_URI", ""))
    user = os.environ.get(USERNAME_VARIABLE, "")
    if code == UNAUTHENTICATED:
        who = (f"user {user!r} with the password in {PASSWORD_VARIABLE}" if user
               else f"no account ({USERNAME_VARIABLE} is not set)")
        return SignInError(
            f"MLflow server {server} refused the sign-in of {who} (401): set {USERNAME_VARIABLE} and "
            f"{PASSWORD_VARIABLE} to your account on it (the stack's admin creates it with `make user`)",
            f"{USERNAME_VARIABLE} and {PASSWORD_VARIABLE} are set right")
    return SignInError(
        f"MLflow server {server}: user {user!r} lacks {needed} (403); the stack's admin grants it with "
        f"`make user NAME={user} ROLE={role}`", "the stack's admin has granted it")


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else the embedded SQLite store at the project root.

    A relative SQLite path is taken from the project root (DVC_ROOT inside DVC's temporary
    experiment copies), never from the current folder, which DVC's queue deletes."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        return f"sqlite:///{shared(EMBEDDED_DB)}"
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
            f"({getattr(error, 'reason', error)}); start it, or check the address"
        ) from None


def _half_migrated(uri: str, database: Path) -> str | None:
    """What to do with a SQLite store an interrupted schema upgrade left behind; None if it is not one."""
    try:
        with closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as connection:
            tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            runs = connection.execute("SELECT COUNT(*) FROM runs").fetchone()[0] if "runs" in tables else 0
    except sqlite3.Error:
        return None
    leftovers = sorted(name for name in tables if name.startswith(LEFTOVER_TABLE_PREFIX))
    if not leftovers:
        return None
    state = f"its schema is half-migrated (table {leftovers[0]} is left from an interrupted upgrade)"
    if not runs:
        return f"{state}, and it holds no runs: delete it (rm {database}) and run again"
    originals = [name.removeprefix(LEFTOVER_TABLE_PREFIX) for name in leftovers]
    if all(name in tables for name in originals):
        drops = "; ".join(f"DROP TABLE {name}" for name in leftovers)
        return (f"{state}; its {runs} run(s) are intact. Keep a copy (cp {database} {database}.bak), "
                f"then `sqlite3 {database} '{drops}'` and `mlflow db upgrade {public_uri(uri)}`")
    return (f"{state}, in the middle of moving table(s) {', '.join(originals)}. Keep a copy "
            f"(cp {database} {database}.bak) and restore the store from a backup")


def store_error(uri: str, error: Exception, what: str = "cannot be opened", needed: str = "READ on the store"
                ) -> PipelineError:
    """One line naming the store, what went wrong (`what`, then the error's first line) and what to do; a
    refused sign-in or permission (`needed`) as `sign_in_error` says it."""
    refused = sign_in_error(error, needed, uri=uri)
    if refused is not None:
        return refused
    first_line = (str(error).strip().splitlines() or [""])[0].removeprefix("(sqlite3.OperationalError) ")
    message = f"MLflow store {public_uri(uri)} {what} ({type(error).__name__}: {first_line})"
    if urlparse(uri).scheme != "sqlite":
        return PipelineError(message)
    database = _sqlite_path(uri)
    advice = _half_migrated(uri, database)
    if advice is None and "locked" in first_line:
        advice = "another process holds the database; run again when it is done"
    if advice is None and ("not a database" in first_line or "malformed" in first_line):
        advice = f"{database} is corrupt; keep a copy, and restore it from a backup"
    return PipelineError(f"{message}: {advice}" if advice else message)


def _open(uri: str) -> MlflowClient:
    """A client whose tracking and registry stores are open (a new database gets its schema here)."""
    client = MlflowClient(uri)  # opens the tracking store
    client.search_registered_models(max_results=1)  # opens the registry store
    return client


def open_client(uri: str) -> MlflowClient:
    """A client on `uri`, its stores opened now, so that a broken store fails here, in one line. A SQLite
    store is opened by one process at a time: creating or upgrading its schema is not safe concurrently."""
    try:
        if urlparse(uri).scheme != "sqlite":
            return _open(uri)
        lock = Path(f"{_sqlite_path(uri)}{STORE_LOCK_SUFFIX}")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(lock, timeout=STORE_LOCK_TIMEOUT_S):
            return _open(uri)
    except Timeout:
        raise PipelineError(
            f"MLflow store {public_uri(uri)}: another process has held {lock} for over {STORE_LOCK_TIMEOUT_S} s; "
            "if no other run is going on, delete that lock file and run again"
        ) from None
    except Exception as error:  # the database, the server or the network: one line, no traceback
        raise store_error(uri, error) from None


def connect(create: bool = True) -> tuple[MlflowClient, str]:
    """A client on the tracking store (and its model registry), failing within seconds when a
    tracking server does not answer. `create=False` refuses a SQLite store that does not exist yet,
    rather than create it (reading runs needs runs)."""
    for name, value in (HTTP_DEFAULTS | S3_DEFAULTS).items():
        os.environ.setdefault(name, value)
    uri = tracking_uri()
    check_server(uri)
    if not create and urlparse(uri).scheme == "sqlite" and not _sqlite_path(uri).exists():
        raise PipelineError(f"MLflow store {public_uri(uri)} does not exist yet: run the grid first (make run)")
    user_setting = os.environ.get("MLFLOW_TRACKING_URI")
    client = open_client(uri)
    mlflow.set_tracking_uri(uri)
    if user_setting is None:
        # set_tracking_uri also exports MLFLOW_TRACKING_URI. Keep the user's environment as it was: the
        # embedded store is recognised by its absence, and the DVC stages started from here (queued
        # experiments) must put their artifacts at DVC_ROOT, not in their temporary copy.
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    return client, uri


def experiment_page(uri: str, experiment_id: str) -> str:
    """The experiment's runs table in the MLflow UI: on the tracking server, or `make ui` for a SQLite store.
    MLflow 3.17's UI opens an experiment on its GenAI overview unless the address asks for model training."""
    base = public_uri(uri).rstrip("/") if urlparse(uri).scheme in ("http", "https") else LOCAL_UI
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType={UI_WORKFLOW}"


def experiment_id(client: MlflowClient, name: str, create: bool = True) -> str:
    """The id of experiment `name` on the client's store; a missing one is created (artifacts beside a
    SQLite store), or refused when `create` is False (comparing needs runs that already exist). The
    experiment carries MLflow's kind tag (model training); one that lacks it gets it, one that has it keeps it."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None and not create:
        raise PipelineError(
            f"mlflow.experiment_name: no MLflow experiment {name!r} at {public_uri(client.tracking_uri)}; "
            "run the grid first (make run)"
        )
    if experiment is None:
        return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri, name),
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if experiment.lifecycle_stage == "deleted":
        raise PipelineError(
            f"mlflow.experiment_name: experiment {name!r} is deleted; restore it "
            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`) or choose another name"
        )
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id
