"""Faults of the team stack: nothing is lost, nothing is sent twice, errors say what to do.

Real `mlflow server` processes (SQLite backend) and DVC; moto's S3 server stands in for MinIO,
which cannot be installed on these machines (see tests/stack.py)."""

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import TINY_PARAMS, copy_project, free_port, needs_coco128, run
from tests.stack import (
    S3_ENV,
    MlflowServer,
    Offline,
    S3Server,
    client_env,
    copy_results,
    mlflow_server,
    s3_server,
    wait_for,
)
from yolo_mlops.core import vocabulary

pytestmark = [needs_coco128, pytest.mark.e2e]
# The log stage's own bound: a refused connection fails at once, a 500 after MLflow's 2 retries.
LOG_STAGE_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("logs")) as server:
        yield server


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def runs_of(server: MlflowServer) -> list:
    """Every run in the experiment, whatever its fingerprint."""
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("cv_yolo_tiny")
    return client.search_runs([experiment.experiment_id]) if experiment else []


def assert_one_complete_run(server: MlflowServer, project: Path, epochs: int) -> str:
    runs = runs_of(server)
    assert len(runs) == 1, f"{len(runs)} runs in MLflow"
    run_info = runs[0]
    assert run_info.info.status == "FINISHED" and run_info.data.tags[vocabulary.LOG_STATUS_TAG] == vocabulary.COMPLETE
    record = json.loads((project / "metrics/mlflow_run.json").read_text())
    assert record["run_id"] == run_info.info.run_id
    client = MlflowClient(server.uri)
    steps = sorted(metric.step for metric in client.get_metric_history(run_info.info.run_id,
                                                                 vocabulary.history_metric("val/mAP50")))
    assert steps == list(range(1, epochs + 1))
    artifacts = {item.path for item in client.list_artifacts(run_info.info.run_id)}
    assert {vocabulary.DATASET_ARTIFACTS, vocabulary.TRAIN_ARTIFACTS, vocabulary.WEIGHTS_ARTIFACTS,
            vocabulary.EVALUATE_ARTIFACTS, vocabulary.DVC_ARTIFACTS} <= artifacts
    weights = {item.path for item in client.list_artifacts(run_info.info.run_id, vocabulary.WEIGHTS_ARTIFACTS)}
    assert weights == {f"{vocabulary.WEIGHTS_ARTIFACTS}/last.pt"}  # best.pt is uploaded once, inside the model
    assert len(run_info.outputs.model_outputs) == 1
    return run_info.info.run_id


def test_server_down_before_the_run_keeps_results_and_sends_them_once_later(
        offline_results: Offline, s3: S3Server, tmp_path: Path) -> None:
    text = output(offline_results.result)
    assert offline_results.result.returncode != 0
    assert "failed to reproduce 'log'" in text and "Traceback" not in text
    assert f"127.0.0.1:{offline_results.port} (MLFLOW_TRACKING_URI) is unreachable" in text
    assert "Nothing is lost" in text and "run `dvc repro` again" in text
    project = copy_results(offline_results.project, tmp_path / "project")
    for kept in ("data/tiny_coco/data.yaml", "models/best.pt", "metrics/eval.json", "plots"):
        assert (project / kept).exists(), kept
    env = client_env(f"http://127.0.0.1:{offline_results.port}")

    # Still down: only the log stage runs again, and fails again quickly (the timeout bounds it).
    again = run(["dvc", "repro"], project, env=env, check=False, timeout=LOG_STAGE_TIMEOUT_S)
    assert again.returncode != 0 and "is unreachable" in output(again)
    assert "Stage 'train' didn't change, skipping" in output(again)

    backend = f"sqlite:///{tmp_path}/mlflow.db"
    with mlflow_server(backend, s3.endpoint, tmp_path, port=offline_results.port) as server:
        sent = run(["dvc", "repro"], project, env=env, timeout=LOG_STAGE_TIMEOUT_S)
        assert "Running stage 'train'" not in output(sent) and "created MLflow run" in output(sent)
        run_id = assert_one_complete_run(server, project, TINY_PARAMS["train.epochs"])
        forced = run(["dvc", "repro", "--force", "--single-item", "log"], project, env=env,
                     timeout=LOG_STAGE_TIMEOUT_S)
        assert f"unchanged MLflow run {run_id}" in output(forced)
        assert assert_one_complete_run(server, project, TINY_PARAMS["train.epochs"]) == run_id


def test_server_killed_during_training_ends_with_the_same_run_complete(s3: S3Server, tmp_path: Path) -> None:
    """The server dies after epoch 1 reached it: training goes on (one warning), the log stage fails saying
    nothing is lost; once the server is back, `dvc repro` completes the run training opened."""
    # Epochs after the first leave the kill room to land while training runs: the stage's forwarder opens the
    # store only once MLflow is imported, and on a fast machine 3 epochs had ended by then (every epoch sent
    # at once, no warning from train).
    epochs = 10
    project = copy_project(tmp_path / "project", TINY_PARAMS | {"train.epochs": epochs})
    with mlflow_server(f"sqlite:///{tmp_path}/mlflow.db", s3.endpoint, tmp_path) as server:
        env = client_env(server.uri)
        log = tmp_path / "repro.log"
        client = MlflowClient(server.uri)
        epoch = vocabulary.history_metric("train/box_loss")
        with log.open("w") as sink:
            pipeline = subprocess.Popen(["dvc", "repro"], cwd=project, env=env, stdout=sink,
                                        stderr=subprocess.STDOUT, text=True)
        try:
            wait_for(lambda: any(client.get_metric_history(found.info.run_id, epoch) for found in runs_of(server)),
                     "epoch 1 in MLflow", timeout=600)
            [opened] = runs_of(server)
            assert server.service is not None
            server.service.kill()
            pipeline.wait(timeout=900)
        finally:
            if pipeline.poll() is None:
                pipeline.kill()
        text = log.read_text()
        assert pipeline.returncode != 0, text[-3000:]
        assert f"train: {epochs} epoch(s)" in text and "is unreachable" in text and "Nothing is lost" in text
        assert text.count("warning: train: MLflow:") == 1 and "Traceback" not in text  # one warning, training goes on

        server.start()  # same port, same database
        resent = run(["dvc", "repro"], project, env=env, timeout=LOG_STAGE_TIMEOUT_S)
        assert "Running stage 'train'" not in output(resent)
        assert f"completed MLflow run {opened.info.run_id}" in output(resent)
        assert assert_one_complete_run(server, project, epochs) == opened.info.run_id


def rerun_completes_the_same_run(project: Path, server: MlflowServer, s3_port: int, fixed_env: dict[str, str],
                                 log_dir: Path) -> None:
    """After the S3 fault, the run is left incomplete; with the S3 server up at `s3_port` and the
    client's environment `fixed_env`, `dvc repro` completes that same run."""
    [first] = runs_of(server)
    assert first.data.tags.get(vocabulary.LOG_STATUS_TAG) != vocabulary.COMPLETE
    with s3_server(log_dir, port=s3_port):
        resent = run(["dvc", "repro"], project, env=fixed_env, timeout=LOG_STAGE_TIMEOUT_S)
        assert f"completing run {first.info.run_id}" in output(resent)
        assert assert_one_complete_run(server, project, TINY_PARAMS["train.epochs"]) == first.info.run_id


def assert_reported(failed: subprocess.CompletedProcess, expected: str) -> None:
    """The log stage failed saying `expected`, that nothing is lost, and without a traceback."""
    text = output(failed)
    assert failed.returncode != 0 and expected in text, text[-3000:]
    assert "Nothing is lost" in text and "Traceback" not in text


def test_server_s3_endpoint_down_during_upload_is_reported_and_a_rerun_completes_the_same_run(
        offline_results: Offline, tmp_path: Path) -> None:
    """Artifacts proxied by the server (the stack's setting): the server's S3 endpoint is down."""
    project = copy_results(offline_results.project, tmp_path / "project")
    s3_port = free_port()
    endpoint = f"http://127.0.0.1:{s3_port}"
    with mlflow_server(f"sqlite:///{tmp_path}/mlflow.db", endpoint, tmp_path, proxy_artifacts=True) as server:
        env = client_env(server.uri)
        failed = run(["dvc", "repro"], project, env=env, check=False, timeout=LOG_STAGE_TIMEOUT_S)
        assert_reported(failed, "check the server's MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID and "
                                "AWS_SECRET_ACCESS_KEY")
        rerun_completes_the_same_run(project, server, s3_port, env, tmp_path)


def test_client_without_s3_credentials_is_reported_and_a_rerun_completes_the_same_run(
        offline_results: Offline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Artifacts uploaded by the client itself (`--no-serve-artifacts`, the documented alternative
    with MLFLOW_S3_ENDPOINT_URL + AWS_*): the client has the endpoint but no S3 credentials."""
    project = copy_results(offline_results.project, tmp_path / "project")
    s3_port = free_port()
    endpoint = f"http://127.0.0.1:{s3_port}"
    with mlflow_server(f"sqlite:///{tmp_path}/mlflow.db", endpoint, tmp_path, proxy_artifacts=False) as server:
        env = client_env(server.uri, MLFLOW_S3_ENDPOINT_URL=endpoint)
        for name, value in {"MLFLOW_S3_ENDPOINT_URL": endpoint, **S3_ENV}.items():  # this test reads S3 too
            monkeypatch.setenv(name, value)
        with s3_server(tmp_path, port=s3_port):
            failed = run(["dvc", "repro"], project, env=env, check=False, timeout=LOG_STAGE_TIMEOUT_S)
        assert_reported(failed, f"Direct upload to S3 at {endpoint} failed: check MLFLOW_S3_ENDPOINT_URL, "
                                "AWS_ACCESS_KEY_ID")
        rerun_completes_the_same_run(project, server, s3_port, env | S3_ENV, tmp_path)


@pytest.mark.parametrize(("uri", "named"), [
    ("htp://127.0.0.1:5000", "MLFLOW_TRACKING_URI='htp://127.0.0.1:5000': unsupported scheme 'htp'"),
    ("http://locahost:5000", "MLflow tracking server http://locahost:5000 (MLFLOW_TRACKING_URI) is unreachable"),
], ids=["bad scheme", "typo in host"])
def test_wrong_tracking_uri_gives_a_clear_error(uri: str, named: str, offline_results: Offline,
                                                tmp_path: Path) -> None:
    project = copy_results(offline_results.project, tmp_path / "project")
    before = (project / "models/best.pt").read_bytes()
    result = run(["dvc", "repro"], project, env=client_env(uri), check=False, timeout=LOG_STAGE_TIMEOUT_S)
    assert result.returncode != 0
    assert f"error: {named}" in output(result)
    assert "Traceback" not in output(result)
    assert (project / "models/best.pt").read_bytes() == before
