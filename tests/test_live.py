"""Each stage forwards to the experiment's one MLflow run as it runs: live epochs while training, the
evaluation when it ends, the log stage completing the run; exactly once on every path, against the
embedded store and against a real `mlflow server` (moto's S3 server stands in for MinIO, tests/stack.py)."""

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run

from tests.conftest import TINY_PARAMS, copy_project, free_port, needs_coco128, project_env, run, write_params
from tests.stack import S3Server, client_env, mlflow_server, s3_server, wait_for
from yolo_mlops.core import vocabulary

pytestmark = [needs_coco128, pytest.mark.e2e]
EXPERIMENT = "cv_yolo_tiny"
EPOCH_METRIC = vocabulary.history_metric("train/box_loss")
EPOCHS = 3  # the live test watches epoch 1 arrive while the others train
SYSTEM_METRIC = "system/cpu_utilization_percentage"  # MLflow's system metrics (CPU, memory; GPU when present)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


def current_runs(client: MlflowClient) -> list[Run]:
    """The experiment's runs, previous attempts left out."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return [found for found in runs if vocabulary.PREVIOUS_ATTEMPT_TAG not in found.data.tags]


def steps(client: MlflowClient, run_id: str, metric: str) -> list[int]:
    return sorted(point.step for point in client.get_metric_history(run_id, metric))


def assert_exactly_once(client: MlflowClient, experiments: int, epochs: int) -> list[Run]:
    """One FINISHED, complete run per experiment, every epoch once, one value per metric and step."""
    runs = current_runs(client)
    assert len(runs) == experiments, [(found.info.run_name, found.info.status) for found in runs]
    assert len({found.data.tags[vocabulary.FINGERPRINT_TAG] for found in runs}) == experiments
    for found in runs:
        assert found.info.status == "FINISHED" and found.data.tags[vocabulary.LOG_STATUS_TAG] == vocabulary.COMPLETE
        assert steps(client, found.info.run_id, EPOCH_METRIC) == list(range(1, epochs + 1))
        for metric in found.data.metrics:
            logged = steps(client, found.info.run_id, metric)
            assert len(logged) == len(set(logged)), f"{found.info.run_name}: {metric} at steps {logged}"
        assert len(found.outputs.model_outputs) == 1
    return runs


def linked_run(project: Path) -> str:
    return json.loads((project / "metrics" / "mlflow_run.json").read_text())[vocabulary.RUN_LINK_ID]


def dataset_md5(project: Path) -> str:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"]["prepare"]["outs"][0]["md5"]


@dataclass(frozen=True)
class FirstRun:
    """The first `dvc repro` of a project, watched from MLflow while it ran; the project and its store go on
    to the exactly-once paths."""

    project: Path
    env: dict[str, str]
    client: MlflowClient
    output_at_epoch_1: str  # what the pipeline had printed when epoch 1 reached MLflow
    run: Run  # the experiment's run once the pipeline finished
    linked_run: str  # metrics/mlflow_run.json
    dataset_md5: str
    trained_s: float  # Ultralytics' time from the start of training to its last epoch


@pytest.fixture(scope="module", params=["embedded", "server"])
def first_run(request: pytest.FixtureRequest, s3: S3Server,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstRun]:
    folder = tmp_path_factory.mktemp(request.param)
    project = copy_project(folder / "project", TINY_PARAMS | {"train.epochs": EPOCHS})
    server = mlflow_server(f"sqlite:///{folder}/mlflow.db", s3.endpoint, folder) if request.param == "server" else None
    with server or contextlib.nullcontext() as started:
        env = client_env(started.uri) if started else project_env()
        client = MlflowClient(started.uri if started else f"sqlite:///{project}/mlflow.db")
        log = folder / "repro.log"
        with log.open("w") as sink:
            pipeline = subprocess.Popen(["dvc", "repro"], cwd=project, stdout=sink, stderr=subprocess.STDOUT,
                                        env=env | {"MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"})
        try:
            def first_epoch_arrived() -> bool:
                running = [found for found in current_runs(client) if found.info.status == "RUNNING"]
                return bool(running) and bool(steps(client, running[0].info.run_id, EPOCH_METRIC))

            wait_for(first_epoch_arrived, "epoch 1 in MLflow", timeout=600)
            output_at_epoch_1 = log.read_text()
            assert pipeline.wait(timeout=900) == 0, log.read_text()[-3000:]
        finally:
            if pipeline.poll() is None:
                pipeline.kill()
        [finished] = current_runs(client)
        lock = yaml.safe_load((project / "dvc.lock").read_text())
        trained_s = float((project / "models" / "results.csv").read_text().splitlines()[-1].split(",")[1])
        yield FirstRun(project, env, client, output_at_epoch_1, finished, linked_run(project),
                       lock["stages"]["prepare"]["outs"][0]["md5"], trained_s)


def test_the_train_stage_sends_each_epoch_while_it_trains(first_run: FirstRun) -> None:
    """While training: the RUNNING run with epoch 1. At the end: one FINISHED run with every epoch once, system
    metrics, the dataset input, the source, and a Duration that covers the training."""
    assert "Running stage 'train'" in first_run.output_at_epoch_1
    assert f"train: {EPOCHS} epoch(s)" not in first_run.output_at_epoch_1, "epoch 1 reached MLflow only after training"
    live = first_run.run
    assert live.info.run_id == first_run.linked_run and live.info.status == "FINISHED"
    assert steps(first_run.client, live.info.run_id, EPOCH_METRIC) == list(range(1, EPOCHS + 1))
    assert steps(first_run.client, live.info.run_id, SYSTEM_METRIC), "no system metrics"
    [dataset] = live.inputs.dataset_inputs
    assert (dataset.dataset.name, dataset.dataset.digest) == ("tiny_coco", first_run.dataset_md5)
    assert live.data.tags[vocabulary.SOURCE_NAME_TAG] == str(first_run.project)
    assert live.data.tags[vocabulary.ENTRY_POINT_TAG] == "dvc.yaml"
    assert (live.info.end_time - live.info.start_time) / 1000 > first_run.trained_s, "the Duration misses training"


def test_exactly_once_on_every_path(first_run: FirstRun) -> None:
    project, env, client = first_run.project, first_run.env, first_run.client
    [first] = assert_exactly_once(client, 1, EPOCHS)
    assert "Running stage" not in run(["dvc", "repro"], project, env=env).stdout  # no-op
    forced = run(["dvc", "repro", "--force"], project, env=env)
    assert "holds this experiment already" in forced.stderr and "unchanged MLflow run" in forced.stdout
    assert assert_exactly_once(client, 1, EPOCHS)[0].info.run_id == first.info.run_id

    # A changed param, while the tracking server is down: training and evaluation go on with a warning,
    # the log stage fails saying that nothing is lost, and the retry sends the new experiment once.
    run(["git", "commit", "-qam", "the first experiment"], project)
    link = (project / "metrics" / "mlflow_run.json").read_text()
    write_params(project, {"train.lr0": 0.005})
    down = run(["dvc", "repro"], project, env=env | {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"},
               check=False)
    assert down.returncode != 0 and "Nothing is lost" in down.stderr and "Traceback" not in down.stderr
    assert "train: MLflow: cannot be reached" in down.stderr and "evaluate: MLflow: cannot be reached" in down.stderr
    assert "(MLFLOW_TRACKING_URI) is unreachable" in down.stderr
    # The failed log stage leaves git's copy of the run link as it was: `git commit -a` deletes nothing.
    assert (project / "metrics" / "mlflow_run.json").read_text() == link
    assert run(["git", "diff", "--name-status", "--", "metrics/mlflow_run.json"], project).stdout == ""
    retry = run(["dvc", "repro"], project, env=env)
    assert "Running stage 'train'" not in retry.stdout and "created MLflow run" in retry.stdout
    assert_exactly_once(client, 2, EPOCHS)
    assert json.loads(run(["dvc", "status", "--json"], project, env=env).stdout) == {}

    write_params(project, {"train.lr0": 0.01})  # back: train and evaluate restored from DVC's run-cache
    restored = run(["dvc", "repro"], project, env=env)
    assert "Stage 'train' is cached - skipping run" in restored.stdout, restored.stdout
    assert linked_run(project) == first.info.run_id
    assert_exactly_once(client, 2, EPOCHS)

    write_params(project, {"evaluate.conf": 0.002})  # differs from the first in evaluate only
    only_evaluate = run(["dvc", "repro"], project, env=env)
    assert "Running stage 'train'" not in only_evaluate.stdout
    assert_exactly_once(client, 3, EPOCHS)

    # The queue, in DVC's temporary copy: train restored from the run-cache, evaluate and log run.
    run(["git", "commit", "-qam", "evaluate.conf 0.002"], project)
    run(["dvc", "exp", "run", "--queue", "-S", "train.lr0=0.005"], project, env=env)
    run(["dvc", "exp", "run", "--run-all"], project, env=env)
    assert_exactly_once(client, 4, EPOCHS)
