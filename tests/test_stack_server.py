"""The pipeline against the team stack: a real `mlflow server` (SQLite or PostgreSQL backend,
artifacts proxied to S3) and a DVC remote on S3. moto's S3 server stands in for MinIO, which
cannot be installed on these machines (see tests/stack.py)."""

import json
import sqlite3
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, nullcontext
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from tests.conftest import TINY_PARAMS, needs_coco128, project_env, run, tracking_uri, write_params
from tests.stack import (
    S3_ENV,
    MlflowServer,
    Offline,
    S3Server,
    client_env,
    copy_results,
    mlflow_server,
    postgres_server,
    s3_server,
)
from yolo_mlops.core import vocabulary

pytestmark = [needs_coco128, pytest.mark.e2e]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("logs")) as server:
        yield server


RUN_ROW = "SELECT status, experiment_id FROM runs WHERE run_uuid = "


def sqlite_store(root: Path) -> AbstractContextManager[str]:
    return nullcontext(f"sqlite:///{root}/mlflow.db")


def sqlite_rows(backend_uri: str, run_id: str) -> list[tuple]:
    with closing(sqlite3.connect(backend_uri.removeprefix("sqlite:///"))) as connection:
        return connection.execute(RUN_ROW + "?", (run_id,)).fetchall()


def postgresql_store(root: Path) -> AbstractContextManager[str]:
    return postgres_server()


def postgresql_rows(backend_uri: str, run_id: str) -> list[tuple]:
    import psycopg2

    with closing(psycopg2.connect(backend_uri.replace("+psycopg2", ""))) as connection, connection.cursor() as cursor:
        cursor.execute(RUN_ROW + "%s", (run_id,))
        return cursor.fetchall()


@dataclass(frozen=True)
class Backend:
    """A backend store of the MLflow server: how to start one (its URI), and how to read a run's
    row from it directly (status, experiment id)."""

    name: str
    store: Callable[[Path], AbstractContextManager[str]]
    run_rows: Callable[[str, str], list[tuple]]


BACKENDS = [Backend("sqlite", sqlite_store, sqlite_rows), Backend("postgresql", postgresql_store, postgresql_rows)]


@dataclass(frozen=True)
class Logged:
    project: Path
    server: MlflowServer
    backend: Backend
    output: str
    run_id: str
    experiment_id: str


@pytest.fixture(scope="module", params=BACKENDS, ids=lambda backend: backend.name)
def logged(request: pytest.FixtureRequest, s3: S3Server, offline_results: Offline,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    """`dvc repro` with only MLFLOW_TRACKING_URI set, against a server on SQLite or PostgreSQL."""
    backend: Backend = request.param
    root = tmp_path_factory.mktemp(backend.name)
    with backend.store(root) as backend_uri, mlflow_server(backend_uri, s3.endpoint, root) as server:
        project = copy_results(offline_results.project, root / "project")
        result = run(["dvc", "repro"], project, env=client_env(server.uri))
        record = json.loads((project / "metrics/mlflow_run.json").read_text())
        yield Logged(project, server, backend, result.stdout + result.stderr, record["run_id"],
                     record["experiment_id"])


def rest(server: MlflowServer, endpoint: str, **query: str) -> dict:
    """GET one of MLflow's REST endpoints, as any HTTP client would."""
    url = f"{server.uri}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def flat_eval_metrics(project: Path) -> dict[str, float]:
    evaluation = json.loads((project / "metrics/eval.json").read_text())
    flat = vocabulary.numbers(vocabulary.flatten(evaluation))
    return {vocabulary.eval_metric(name): value for name, value in flat.items()}


def test_with_only_the_tracking_uri_set_the_log_stage_sends_the_run_to_the_server(logged: Logged) -> None:
    assert "Running stage 'log'" in logged.output
    for stage in ("prepare", "train", "evaluate"):
        assert f"Stage '{stage}' didn't change, skipping" in logged.output
    assert f"created MLflow run {logged.run_id}" in logged.output


def test_rest_api_returns_the_runs_metrics(logged: Logged) -> None:
    run_info = rest(logged.server, "runs/get", run_id=logged.run_id)["run"]
    assert run_info["info"]["status"] == "FINISHED"
    metrics = {metric["key"]: metric["value"] for metric in run_info["data"]["metrics"]}
    expected = flat_eval_metrics(logged.project)
    assert expected and {name: metrics.get(name) for name in expected} == expected
    epochs = TINY_PARAMS["train.epochs"]
    history = rest(logged.server, "metrics/get-history", run_id=logged.run_id,
                   metric_key=vocabulary.history_metric("val/mAP50"))
    assert sorted(point["step"] for point in history["metrics"]) == list(range(1, epochs + 1))


def test_artifacts_and_model_are_in_the_s3_bucket(logged: Logged, s3: S3Server) -> None:
    prefix = f"{logged.experiment_id}/{logged.run_id}/artifacts/"
    keys = s3.keys("mlflow", prefix)
    for name in (f"{vocabulary.WEIGHTS_ARTIFACTS}/last.pt", f"{vocabulary.EVALUATE_ARTIFACTS}/eval.json",
                 f"{vocabulary.TRAIN_ARTIFACTS}/results.csv", f"{vocabulary.DVC_ARTIFACTS}/dvc.lock",
                 f"{vocabulary.PLOTS_ARTIFACTS}/test/confusion_matrix.png"):
        assert prefix + name in keys, f"{name} missing from s3://mlflow/{prefix}"
    assert prefix + f"{vocabulary.WEIGHTS_ARTIFACTS}/best.pt" not in keys  # uploaded once, inside the model
    model_ids = [output["model_id"] for output in
                 rest(logged.server, "runs/get", run_id=logged.run_id)["run"]["outputs"]["model_outputs"]]
    assert len(model_ids) == 1
    model_keys = s3.keys("mlflow", f"{logged.experiment_id}/models/{model_ids[0]}/artifacts/")
    assert any(key.endswith("/MLmodel") for key in model_keys)
    [weights] = [key for key in model_keys if key.endswith("/best.pt")]
    stored = s3.client().get_object(Bucket="mlflow", Key=weights)["Body"].read()
    assert stored == (logged.project / "models/best.pt").read_bytes()


def test_model_loads_back_through_the_server(logged: Logged, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client holds no S3 endpoint or credentials: the server streams the model from S3."""
    for name in [*S3_ENV, "MLFLOW_S3_ENDPOINT_URL"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(logged.project / ".ultralytics"))
    with tracking_uri(logged.server.uri):
        model = mlflow.pyfunc.load_model(f"runs:/{logged.run_id}/{vocabulary.MODEL_NAME}")
    image = sorted((logged.project / "data/tiny_coco/images/test").iterdir())[0]
    boxes = model.predict(pd.DataFrame({"image": [str(image)]}), params={"conf": 0.0})
    assert list(boxes.columns) == ["image", "x1", "y1", "x2", "y2", "confidence", "class_id", "class_name"]
    assert len(boxes) > 0 and set(boxes["image"]) == {0}


def test_backend_store_holds_the_run(logged: Logged) -> None:
    """The run is in the server's own database (SQLite file or PostgreSQL), read directly."""
    rows = logged.backend.run_rows(logged.server.backend_uri, logged.run_id)
    assert rows == [("FINISHED", int(logged.experiment_id))]


def test_dvc_remote_on_s3_shares_data_models_run_cache_and_experiments(
        offline_results: Offline, s3: S3Server, tmp_path: Path) -> None:
    """Push to the S3 remote configured by `make remote`; a fresh clone pulls it back and
    reproduces nothing: every result is reused, through dvc.lock or the run-cache."""
    origin = tmp_path / "origin.git"
    run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], tmp_path)
    first = copy_results(offline_results.project, tmp_path / "first")
    env = project_env()
    run(["git", "remote", "add", "origin", str(origin)], first)
    configure_remote(first, s3)
    run(["dvc", "exp", "run", "-n", "shared"], first, env=env)  # only the log stage runs, embedded store
    run(["git", "add", "-A"], first)
    run(["git", "commit", "-qm", "results"], first)
    run(["git", "push", "-q", "origin", "main"], first)
    run(["dvc", "push", "--run-cache"], first, env=env)
    run(["dvc", "exp", "push", "origin", "shared"], first, env=env)
    assert s3.keys("dvc", "files/md5/") and s3.keys("dvc", "runs/")
    assert ".dvc/config.local" not in run(["git", "ls-files", ".dvc"], first).stdout

    second = tmp_path / "second"
    run(["git", "clone", "-q", str(origin), str(second)], tmp_path)
    configure_remote(second, s3)
    run(["dvc", "pull", "--run-cache"], second, env=env)
    for output in ("data/tiny_coco", "models"):
        assert tree_bytes(second / output) == tree_bytes(first / output)
    assert tree_bytes(second / ".dvc/cache/runs") == tree_bytes(first / ".dvc/cache/runs")
    reproduced = run(["dvc", "repro"], second, env=env)
    for stage in ("prepare", "train", "evaluate", "log"):
        assert f"Stage '{stage}' didn't change, skipping" in reproduced.stdout
    assert "Running stage" not in reproduced.stdout

    def experiments() -> list[str]:
        return run(["dvc", "exp", "list", "--all-commits", "--name-only"], second, env=env).stdout.split()

    assert experiments() == []
    run(["dvc", "exp", "pull", "origin", "shared"], second, env=env)
    assert experiments() == ["shared"]

    # The run-cache: an experiment the first clone ran and pushed, but never committed, is
    # restored in the second clone instead of retrained.
    write_params(first, {"train.lr0": 0.02})
    run(["dvc", "repro"], first, env=env)
    run(["dvc", "push", "--run-cache"], first, env=env)
    write_params(second, {"train.lr0": 0.02})
    restored = run(["dvc", "repro", "--pull"], second, env=env)
    for stage in ("train", "evaluate"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in restored.stdout
    assert "Running stage 'train'" not in restored.stdout
    assert tree_bytes(second / "models") == tree_bytes(first / "models")
    assert (second / "metrics" / "eval.json").read_bytes() == (first / "metrics" / "eval.json").read_bytes()


def configure_remote(project: Path, s3: S3Server) -> None:
    """`make remote` with a .env that points at the test's S3 endpoint."""
    env_file = (project / ".env.example").read_text()
    values = dict(line.split("=", 1) for line in env_file.splitlines() if line and not line.startswith("#"))
    values |= {"DVC_S3_ENDPOINT_URL": s3.endpoint, "DVC_S3_ACCESS_KEY_ID": S3_ENV["AWS_ACCESS_KEY_ID"],
               "DVC_S3_SECRET_ACCESS_KEY": S3_ENV["AWS_SECRET_ACCESS_KEY"]}
    (project / ".env").write_text("".join(f"{name}={value}\n" for name, value in values.items()))
    run(["make", "remote"], project)
    assert values["DVC_S3_SECRET_ACCESS_KEY"] in (project / ".dvc/config.local").read_text()
    assert values["DVC_S3_SECRET_ACCESS_KEY"] not in (project / ".dvc/config").read_text()


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}
