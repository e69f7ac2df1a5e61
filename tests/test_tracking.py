"""Where runs go, and how a wrong tracking location is reported."""

from pathlib import Path

import pytest

from tests.conftest import free_port
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.tracking import store
from yolo_mlops.tracking.model import model_requirements


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


def test_unreachable_server_fails_fast_saying_results_are_safe() -> None:
    with pytest.raises(PipelineError) as error:
        store.check_server(f"http://127.0.0.1:{free_port()}")
    assert "unreachable" in str(error.value) and "Nothing is lost" in str(error.value)
    assert "run `dvc repro` again" in str(error.value)


def test_model_requirements_are_exact_public_versions() -> None:
    requirements = model_requirements()
    assert all("==" in line and "+" not in line for line in requirements)
    assert any(line.startswith("ultralytics==") for line in requirements)
