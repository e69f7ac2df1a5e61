"""Shared test helpers: synthetic COCO128-like sources and throw-away copies of the project."""

import io
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import alembic.command
import pytest
import sqlalchemy
import yaml
from PIL import Image

from yolo_mlops.core import vocabulary

if TYPE_CHECKING:
    from tests.stack import Offline

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The real COCO128 lies in ../shared/data/ on the development and CI machines.
COCO128_ZIP = Path(os.environ.get("COCO128_ZIP", PROJECT_ROOT.parent / "shared" / "data" / "coco128.zip"))
needs_coco128 = pytest.mark.skipif(
    not COCO128_ZIP.is_file(), reason=f"needs the real COCO128 at {COCO128_ZIP} (or set COCO128_ZIP)"
)
# Tiny settings for every test that trains: random init, 64 px, one epoch.
TINY_PARAMS = {
    "prepare.source": str(COCO128_ZIP),
    "train.model": "yolov8n.yaml",
    "train.imgsz": 64,
    "train.epochs": 1,
    "train.workers": 0,
}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on right now (the OS picks it, then the probe closes it):
    a closed port stands for an unreachable server, or a test server binds it next."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def jpeg_bytes(width: int = 32, height: int = 24, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="JPEG")
    return buffer.getvalue()


def make_source(root: Path, labels: dict[str, str], as_zip: bool = True,
                images: dict[str, bytes] | None = None) -> Path:
    """A COCO128-shaped source: coco128/images/train2017/<name>.jpg and labels/train2017/<name>.txt.

    `labels` maps image name → label file text ('' = an image with no label file)."""
    images = images or {}
    files: dict[str, bytes] = {"coco128/README.txt": b"synthetic test source\n"}
    for index, (name, text) in enumerate(sorted(labels.items())):
        files[f"coco128/images/train2017/{name}.jpg"] = images.get(name, jpeg_bytes(color=(index * 7 % 256, 80, 120)))
        if text:
            files[f"coco128/labels/train2017/{name}.txt"] = text.encode()
    if as_zip:
        target = root / "coco128.zip"
        with zipfile.ZipFile(target, "w") as archive:
            for member, data in files.items():
                archive.writestr(member, data)
        return target
    for member, data in files.items():
        (root / member).parent.mkdir(parents=True, exist_ok=True)
        (root / member).write_bytes(data)
    return root / "coco128"


def person_labels(count: int, others: int = 2) -> dict[str, str]:
    """`count` images with a person and a car, plus `others` images with only a car."""
    labels = {f"{index:012d}": "0 0.5 0.5 0.2 0.4\n2 0.3 0.3 0.1 0.1\n" for index in range(count)}
    labels |= {f"{count + index:012d}": "2 0.5 0.5 0.2 0.2\n" for index in range(others)}
    return labels


def write_params(project: Path, overrides: dict[str, object]) -> None:
    """Set `section.key` values in the project's params.yaml."""
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def project_env(**extra: str) -> dict[str, str]:
    """The environment of a user in the project's virtualenv, with no tracking server and no Ray cluster set."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_", "DVC_", "YOLO_")) and key != "RAY_ADDRESS"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env | extra


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True,
        timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command like a user would; on an unexpected exit, fail with its output."""
    result = subprocess.run(command, cwd=cwd, env=env or project_env(), capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def copy_project(destination: Path, overrides: dict[str, object] | None = None) -> Path:
    """A fresh git repository holding the project's files (tracked and new, not ignored),
    with `overrides` applied to params.yaml and committed, as DVC's queue requires."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    for name in filter(None, listed):
        source = PROJECT_ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    if overrides:
        write_params(destination, overrides)
    for command in (["git", "init", "-q", "-b", "main"], ["git", "config", "user.name", "test"],
                    ["git", "config", "user.email", "test@example.invalid"], ["git", "add", "-A"],
                    ["git", "commit", "-qm", "project under test"]):
        run(command, destination)
    return destination


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    """A committed copy of the project set to the tiny training settings and the real COCO128."""
    if not COCO128_ZIP.is_file():
        pytest.skip(f"needs the real COCO128 at {COCO128_ZIP} (or set COCO128_ZIP)")
    return copy_project(tmp_path / "project", TINY_PARAMS)


@pytest.fixture(scope="session")
def offline_results(tmp_path_factory: pytest.TempPathFactory) -> "Offline":
    """The tiny pipeline run once while its tracking server is down, shared by the team-stack
    tests (tests/stack.py), which work on copies of it."""
    from tests.stack import run_without_server

    if not COCO128_ZIP.is_file():
        pytest.skip(f"needs the real COCO128 at {COCO128_ZIP} (or set COCO128_ZIP)")
    return run_without_server(tmp_path_factory.mktemp("offline") / "project")


@pytest.fixture(scope="session")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real `dvc repro` at the tiny settings on the embedded store (mlflow.db), its model logged: shared,
    read-only, by the pipeline tests and the model's behaviour tests."""
    if not COCO128_ZIP.is_file():
        pytest.skip(f"needs the real COCO128 at {COCO128_ZIP} (or set COCO128_ZIP)")
    project = copy_project(tmp_path_factory.mktemp("pipeline") / "project", TINY_PARAMS)
    run(["dvc", "repro"], project)
    return project


@contextmanager
def tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI (and MLFLOW_TRACKING_URI, which MLflow sets with it) set to `uri`,
    then put back as they were, so that no test leaves MLflow pointing at its store."""
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None unsets both


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """An MlflowClient on a fresh embedded SQLite tracking store and model registry, set as the
    user's MLFLOW_TRACKING_URI; one per test module (tests use their own experiment or model name)."""
    from yolo_mlops.tracking.store import connect

    with tracking_uri(f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"):
        client, _ = connect()
        yield client


def echo_model() -> Any:
    """The smallest pyfunc model (returns its input): registry tests need a logged model, not YOLO."""
    import mlflow.pyfunc

    class EchoModel(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):  # untyped: MLflow infers no schema from it
            return model_input

    return EchoModel()


def log_synthetic_run(client: Any, experiment_id: str, name: str, metrics: dict[str, float],
                      params: dict[str, object] | None = None, baseline: str = "base", status: str = "FINISHED",
                      model: bool = False) -> str:
    """An MLflow run shaped like the log stage's: `val.mAP50` → metric `evaluate/val_mAP50`, tags
    naming the DVC experiment (core/vocabulary.py); `model=True` logs `echo_model()` as the run's model."""
    import mlflow
    from mlflow.entities import Metric, Param

    tags = {vocabulary.EXP_NAME_TAG: name, vocabulary.BASELINE_TAG: baseline,
            vocabulary.LOG_STATUS_TAG: vocabulary.COMPLETE}
    run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
    client.log_batch(
        run_id,
        metrics=[Metric(vocabulary.eval_metric(key), value, 0, 0) for key, value in metrics.items()],
        params=[Param(key, str(value)) for key, value in (params or {}).items()],
    )
    if model:
        with mlflow.start_run(run_id=run_id):
            mlflow.pyfunc.log_model(name=vocabulary.MODEL_NAME, python_model=echo_model(), pip_requirements=["mlflow"])
    client.set_terminated(run_id, status)
    return run_id


# An MLflow schema revision after which the next migration rebuilds latest_metrics (SQLite batch mode: a
# copy named _alembic_tmp_latest_metrics, filled, then renamed): where two processes creating a new
# store at once left it, before store opening was serialised.
REVISION_BEFORE_REBUILD = "a8c4a736bde6"


def half_migrated_store(database: Path, runs: int) -> str:
    """A SQLite store as an interrupted schema upgrade leaves it: at an older revision, with the
    table copy the next migration had begun (alembic, MLflow's own migrations)."""
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    uri = f"sqlite:///{database}"
    engine = sqlalchemy.create_engine(uri)
    InitialBase.metadata.create_all(engine)
    config = _get_alembic_config(uri)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        alembic.command.upgrade(config, REVISION_BEFORE_REBUILD)
    engine.dispose()
    with sqlite3.connect(database) as connection:
        connection.execute("INSERT INTO experiments (experiment_id, name, lifecycle_stage) VALUES (0, 'Default', "
                           "'active')")
        for index in range(runs):
            connection.execute("INSERT INTO runs (run_uuid, name, experiment_id, user_id, status, lifecycle_stage, "
                               "start_time, source_type, source_name, artifact_uri) VALUES (?, 'run', 0, 'user', "
                               "'FINISHED', 'active', 0, 'LOCAL', '', '')", (f"{index:032d}",))
        connection.execute("CREATE TABLE _alembic_tmp_latest_metrics AS SELECT * FROM latest_metrics WHERE 0")
    return uri


# A 3-class dataset of the user's own, made by the tests, in each layout Ultralytics reads (tests/test_layouts.py).
FRUIT = ("apple", "banana", "cherry")
FRUIT_SPLITS = {"train": 9, "val": 6, "test": 6}
FRUIT_LAYOUTS = ("images_split", "split_images", "data_yaml", "zip")


def fruit_files(extra_train_class: bool = False) -> dict[tuple[str, str], tuple[bytes, str]]:
    """(split, image name) → (JPEG bytes, label text): every image has boxes of two of the three classes, so each
    split holds all three; `extra_train_class` adds boxes of a fourth class, `durian`, in train only."""
    files = {}
    for split, count in FRUIT_SPLITS.items():
        for index in range(count):
            first, second = index % 3, (index + 1) % 3
            text = f"{first} 0.3 0.3 0.2 0.3\n{second} 0.7 0.6 0.25 0.2\n"
            if extra_train_class and split == "train":
                text += "3 0.5 0.5 0.1 0.1\n"
            image = jpeg_bytes(64, 48, ((index * 40) % 256, 90 + first * 50, 60 + second * 40))
            files[(split, f"{split}_{index:03d}")] = (image, text)
    return files


def make_dataset(root: Path, layout: str, extra_train_class: bool = False) -> Path:
    """The 3-class dataset in one layout under `root`; returns what `prepare.source` names:
    - images_split: images/<split>/ + labels/<split>/, names in classes.txt;
    - split_images: <split>/images/ + <split>/labels/, val as `valid` (as labelling tools export it), classes.txt;
    - data_yaml: the data.yaml itself, with paths relative to it (`../train/images`, read as Ultralytics does);
    - zip: a zip holding fruit/data.yaml (names as a mapping) beside images/<split>/ + labels/<split>/."""
    names = [*FRUIT, "durian"] if extra_train_class else list(FRUIT)
    folder = root / "fruit"
    members: dict[str, bytes] = {}
    for (split, name), (image, text) in fruit_files(extra_train_class).items():
        if layout in ("images_split", "zip"):
            image_dir, label_dir = f"images/{split}", f"labels/{split}"
        else:
            exported = "valid" if split == "val" else split
            image_dir, label_dir = f"{exported}/images", f"{exported}/labels"
        members[f"{image_dir}/{name}.jpg"] = image
        members[f"{label_dir}/{name}.txt"] = text.encode()
    if layout in ("images_split", "split_images"):
        members["classes.txt"] = "".join(f"{name}\n" for name in names).encode()
    elif layout == "data_yaml":
        members["data.yaml"] = yaml.safe_dump({"train": "../train/images", "val": "../valid/images",
                                               "test": "../test/images", "nc": len(names), "names": names}).encode()
    else:
        members["data.yaml"] = yaml.safe_dump({"path": "/content/datasets/fruit", "train": "images/train",
                                               "val": "images/val", "test": "images/test",
                                               "names": dict(enumerate(names))}).encode()
    if layout == "zip":
        target = root / "fruit.zip"
        with zipfile.ZipFile(target, "w") as archive:
            for member, data in members.items():
                archive.writestr(f"fruit/{member}", data)
        return target
    for member, data in members.items():
        (folder / member).parent.mkdir(parents=True, exist_ok=True)
        (folder / member).write_bytes(data)
    return folder / "data.yaml" if layout == "data_yaml" else folder
