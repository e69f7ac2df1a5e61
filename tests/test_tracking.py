"""Where runs go, how a wrong tracking location or a broken store is reported, and that many
processes may open a new embedded store at once."""

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, free_port, half_migrated_store, project_env
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.vocabulary import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from yolo_mlops.tracking import store
from yolo_mlops.tracking.model import model_requirements

# Each process imports everything, says it is ready, then opens the store when the test says go.
OPEN_STORE = """
import sys, time
from pathlib import Path
from yolo_mlops.tracking.store import connect
folder = Path(sys.argv[1])
(folder / f"ready-{sys.argv[2]}").touch()
while not (folder / "go").exists():
    time.sleep(0.005)
client, _ = connect()
print(len(client.search_experiments()))
"""
PROCESSES, ROUNDS = 4, 3


def test_embedded_store_lives_at_the_project_root_also_in_dvc_copies(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)
    assert store.tracking_uri() == f"sqlite:///{tmp_path}/mlflow.db"
    assert store.artifact_location(store.tracking_uri(), "exp") == (tmp_path / "mlartifacts" / "exp").as_uri()


def test_a_relative_sqlite_store_is_taken_from_the_project_root_with_its_artifacts_beside_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "project"))
    monkeypatch.chdir(tmp_path)  # e.g. DVC's temporary experiment copy, deleted after the run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///stores/team.db")
    uri = store.tracking_uri()
    assert uri == f"sqlite:///{tmp_path}/project/stores/team.db"
    assert store.artifact_location(uri, "exp") == (tmp_path / "project" / "stores" / "mlartifacts" / "exp").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/elsewhere/mlflow.db")
    assert store.artifact_location(store.tracking_uri(), "exp") == (tmp_path / "elsewhere" / "mlartifacts" /
                                                                          "exp").as_uri()
    assert store.artifact_location("http://mlflow.local:5000", "exp") is None  # the server decides


@pytest.mark.parametrize(("uri", "message"), [
    ("htp://localhost:5000", "unsupported scheme 'htp'"),
    ("localhost:5000", "unsupported scheme 'localhost'"),
    ("http://", "no host name"),
    ("file:///tmp/mlruns", "unsupported scheme 'file'"),
    ("sqlite://", "give a database file"),
])
def test_malformed_tracking_uris_are_refused(monkeypatch: pytest.MonkeyPatch, uri: str, message: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(PipelineError, match=f"MLFLOW_TRACKING_URI=.*{message}"):
        store.tracking_uri()


def test_credentials_never_appear_in_messages() -> None:
    assert store.public_uri("http://alice:s3cret@mlflow.local:5000/") == "http://mlflow.local:5000/"
    assert store.public_uri("sqlite:///x/mlflow.db") == "sqlite:///x/mlflow.db"


def test_unreachable_server_fails_fast_naming_it() -> None:
    port = free_port()
    with pytest.raises(PipelineError, match=rf"MLflow tracking server http://127.0.0.1:{port} \(MLFLOW_TRACKING_URI\) "
                                            r"is unreachable \(.*\); start it, or check the address"):
        store.check_server(f"http://127.0.0.1:{port}")


def test_model_requirements_are_exact_public_versions() -> None:
    requirements = model_requirements()
    assert all("==" in line and "+" not in line for line in requirements)
    assert any(line.startswith("ultralytics==") for line in requirements)


def test_processes_opening_a_new_embedded_store_at_once_all_succeed(tmp_path: Path) -> None:
    """MLflow creates a new SQLite store's schema on first use; unserialised, two processes doing it at
    once leave it half-migrated (seen in 2 or 3 processes out of 3, in every try)."""
    for attempt in range(ROUNDS):
        project = tmp_path / f"project{attempt}"
        project.mkdir()
        env = project_env(DVC_ROOT=str(project))  # the embedded store: <project>/mlflow.db
        processes = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, str(project), str(index)], cwd=PROJECT_ROOT,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for index in range(PROCESSES)]
        deadline = time.monotonic() + 120
        while len(list(project.glob("ready-*"))) < PROCESSES and time.monotonic() < deadline:
            time.sleep(0.05)
        (project / "go").touch()
        results = [(process.wait(timeout=120), *process.communicate()) for process in processes]
        failed = [f"exit {code}: {err[-2000:]}" for code, _, err in results if code != 0]
        assert not failed, f"round {attempt + 1}: " + "\n".join(failed)
        assert [out.strip() for _, out, _ in results] == ["1"] * PROCESSES  # each sees the Default experiment
        assert (project / "mlflow.db").is_file() and (project / "mlflow.db.lock").exists()


def test_a_half_migrated_new_store_is_named_with_what_to_do(tmp_path: Path) -> None:
    uri = half_migrated_store(tmp_path / "mlflow.db", runs=0)
    with pytest.raises(PipelineError) as error:
        store.open_client(uri)
    message = str(error.value)
    assert message.startswith(f"MLflow store {uri} cannot be opened (OperationalError: table "
                              "_alembic_tmp_latest_metrics already exists)")
    assert "half-migrated (table _alembic_tmp_latest_metrics is left" in message
    assert f"it holds no runs: delete it (rm {tmp_path / 'mlflow.db'})" in message and "\n" not in message
    (tmp_path / "mlflow.db").unlink()  # as advised; the next run is a new process
    reopened = subprocess.run([sys.executable, "-c", f"from mlflow import MlflowClient; MlflowClient({uri!r})"],
                              capture_output=True, text=True)
    assert reopened.returncode == 0, reopened.stderr[-2000:]


def test_a_half_migrated_store_with_runs_is_repaired_as_the_message_says(tmp_path: Path) -> None:
    database = tmp_path / "mlflow.db"
    uri = half_migrated_store(database, runs=2)
    with pytest.raises(PipelineError) as error:
        store.open_client(uri)
    message = str(error.value)
    assert "its 2 run(s) are intact" in message and f"cp {database} {database}.bak" in message
    drop = f"sqlite3 {database} 'DROP TABLE _alembic_tmp_latest_metrics'"
    assert f"`{drop}` and `mlflow db upgrade {uri}`" in message
    with sqlite3.connect(database) as connection:  # what the message says, step by step
        connection.execute("DROP TABLE _alembic_tmp_latest_metrics")
    subprocess.run([str(Path(sys.executable).parent / "mlflow"), "db", "upgrade", uri], check=True,
                   capture_output=True)
    reopened = subprocess.run([sys.executable, "-c", "from mlflow import MlflowClient; "
                               f"print(MlflowClient({uri!r}).get_run('{1:032d}').info.status)"],
                              capture_output=True, text=True)
    assert reopened.stdout.strip() == "FINISHED", reopened.stderr[-2000:]


def test_a_corrupt_store_is_named_with_what_to_do(tmp_path: Path) -> None:
    database = tmp_path / "mlflow.db"
    database.write_bytes(b"this is not a SQLite database, but 4 KiB of text. " * 100)
    with pytest.raises(PipelineError, match=rf"MLflow store sqlite:///{database} cannot be opened \(.*not a "
                                            rf"database\): {database} is corrupt; keep a copy"):
        store.open_client(f"sqlite:///{database}")


def test_the_experiment_is_created_as_model_training(mlflow_store) -> None:
    """MLflow's name for a model-training experiment (its UI's ExperimentKind), as the tag's value."""
    exp_id = store.experiment_id(mlflow_store, "kind-new")
    tags = mlflow_store.get_experiment(exp_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert store.experiment_id(mlflow_store, "kind-new", create=False) == exp_id


@pytest.mark.parametrize("create", [True, False])
def test_an_existing_experiment_gets_the_kind_tag_once_and_keeps_a_kind_of_its_own(mlflow_store, create: bool) -> None:
    untagged = mlflow_store.create_experiment(f"kind-untagged-{create}")  # made before the tag, or by hand
    assert store.experiment_id(mlflow_store, f"kind-untagged-{create}", create=create) == untagged
    assert mlflow_store.get_experiment(untagged).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    own = mlflow_store.create_experiment(f"kind-own-{create}", tags={EXPERIMENT_KIND_TAG: "finetuning"})
    store.experiment_id(mlflow_store, f"kind-own-{create}", create=create)
    assert mlflow_store.get_experiment(own).tags[EXPERIMENT_KIND_TAG] == "finetuning"
