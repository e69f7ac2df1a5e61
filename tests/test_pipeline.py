"""End to end: the real `dvc repro` of prepare → train → evaluate → log at tiny settings,
checked on the DVC side (dvc.lock, metrics, plots) and the MLflow side (MlflowClient).

One real pipeline run (`finished`, tests/conftest.py) is shared, read-only; every test that changes a
project works on its own copy of it (`project`), so the tests pass alone and in any order."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import mlflow
import pandas as pd
import psutil
import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import (
    COCO128_ZIP,
    PROJECT_ROOT,
    TINY_PARAMS,
    copy_project,
    half_migrated_store,
    needs_coco128,
    project_env,
    run,
    tracking_uri,
    write_params,
)
from yolo_mlops.core import vocabulary
from yolo_mlops.core.paths import PER_IMAGE_DIR, per_image_stats
from yolo_mlops.tracking.pyfunc_model import BOX_COLUMNS
from yolo_mlops.yolo.model import _online
from yolo_mlops.yolo.uncertainty import load_image_stats, point_estimates

pytestmark = [pytest.mark.e2e, needs_coco128]
EXPERIMENT = "cv_yolo_tiny"


@pytest.fixture
def project(finished: Path, tmp_path: Path) -> Path:
    """A test's own copy of the finished project: git history (.git), DVC cache and outputs, the
    embedded MLflow store (mlflow.db) and its mlartifacts/.

    One link to the original remains: mlflow.db records the experiment's artifact location as an
    absolute path, the original's mlartifacts/ (tracking/store.py sets it when the experiment is
    created). So runs a copy adds store their artifacts there, each under its own run id; the
    original's runs and files are left as they are, and the tests that read it see no change."""
    return Path(shutil.copytree(finished, tmp_path / "project", symlinks=True))


def client(project: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def runs(project: Path) -> list:
    experiment = client(project).get_experiment_by_name(EXPERIMENT)
    return client(project).search_runs([experiment.experiment_id]) if experiment else []


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def dataset_md5(project: Path) -> str:
    """DVC's md5 of data/tiny_coco, the prepare stage's output in dvc.lock."""
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"]["prepare"]["outs"][0]["md5"]


def test_the_course_dataset_is_byte_identical_to_the_committed_dvc_lock(finished: Path) -> None:
    """The course's settings (COCO128, classes [person], 40 / 10 / 10 drawn with seed 0) give today's dataset:
    DVC's md5 of data/tiny_coco is the one the project's dvc.lock records."""
    assert dataset_md5(finished) == dataset_md5(PROJECT_ROOT) == "8157775d643ff8905893be1545635804.dir"


def test_dvc_records_every_stage_and_the_workspace_is_clean(finished: Path) -> None:
    lock = yaml.safe_load((finished / "dvc.lock").read_text())["stages"]
    assert list(lock) == ["prepare", "train", "evaluate", "log"]
    assert lock["train"]["params"]["params.yaml"]["train"]["imgsz"] == 64
    assert all(out.get("md5") for stage in lock.values() for out in stage.get("outs", []))
    status = run(["dvc", "status", "--json"], finished)
    assert json.loads(status.stdout) == {}  # Ultralytics' label caches did not touch the dataset output


def test_outputs_metrics_and_plots(finished: Path, tmp_path: Path) -> None:
    data = read_json(finished / "metrics" / "data.json")
    assert [data[split]["images"] for split in ("train", "val", "test")] == [40, 10, 10]
    assert data["source_images_with_class"] == 61
    assert all(data[split]["boxes"] >= data[split]["images"] for split in ("train", "val", "test"))
    labels = list((finished / "data" / "tiny_coco" / "labels").rglob("*.txt"))
    assert len(labels) == 60 and all(line.startswith("0 ") for f in labels for line in f.read_text().splitlines())
    evaluation = read_json(finished / "metrics" / "eval.json")
    intervals = {vocabulary.interval_key(metric, bound)
                 for metric in vocabulary.CLASS_METRICS for bound in vocabulary.INTERVAL_BOUNDS}
    for split in ("val", "test"):
        assert set(evaluation[split]) == {"mAP50", "mAP50-95", "precision", "recall", "f1", "classes"} | intervals
        for metric in vocabulary.CLASS_METRICS:
            low, high = (evaluation[split][vocabulary.interval_key(metric, bound)]
                         for bound in vocabulary.INTERVAL_BOUNDS)
            assert low <= evaluation[split][metric] <= high, (split, metric)
        assert set(evaluation[split]["classes"]) == {"person"}
        assert set(evaluation[split]["classes"]["person"]) == set(vocabulary.CLASS_METRICS)
        assert all(0.0 <= value <= 1.0 for value in vocabulary.numbers(vocabulary.flatten(evaluation[split])).values())
        for image in ("confusion_matrix.png", "PR_curve.png", "F1_curve.png", "P_curve.png", "R_curve.png"):
            assert (finished / "plots" / split / image).stat().st_size > 1000
        curve = pd.read_csv(finished / "plots" / split / "precision_recall.csv")
        assert list(curve.columns) == ["recall", "precision"] and len(curve) > 50
    assert (finished / "plots" / "results.png").is_file()
    assert {p.name for p in (finished / "models").iterdir()} >= {"best.pt", "last.pt", "results.csv"}
    assert read_json(finished / "dvclive" / "metrics.json")["step"] == 1
    shown = run(["dvc", "exp", "show", "--json"], finished)
    assert "mAP50-95" in shown.stdout and "mAP50-95_low" in shown.stdout
    run(["dvc", "plots", "show", "-o", str(tmp_path / "plots_html")], finished)
    assert (tmp_path / "plots_html" / "index.html").is_file()


def test_per_image_statistics_are_small_declared_and_give_ultralytics_figures(finished: Path) -> None:
    """metrics/per_image/<split>.npz: the evaluate stage's output (dvc.yaml, dvc.lock), a few kB for 10 images,
    from which the bootstrap recomputes exactly the figures Ultralytics reported in metrics/eval.json."""
    stages = yaml.safe_load((finished / "dvc.yaml").read_text())["stages"]
    assert str(PER_IMAGE_DIR) in stages["evaluate"]["outs"] and str(PER_IMAGE_DIR) in stages["log"]["deps"]
    lock = yaml.safe_load((finished / "dvc.lock").read_text())["stages"]["evaluate"]
    assert str(PER_IMAGE_DIR) in [out["path"] for out in lock["outs"]]
    evaluation = read_json(finished / "metrics" / "eval.json")
    assert sorted(path.name for path in (finished / PER_IMAGE_DIR).iterdir()) == ["test.npz", "val.npz"]
    for split in ("val", "test"):
        path = finished / per_image_stats(split)
        assert path.stat().st_size < 20_000
        stats = load_image_stats(path)
        assert len(stats.images) == 10 and stats.names == ("person",) and stats.labels.sum() >= 10
        assert all(name.endswith(".jpg") and "/" not in name for name in stats.images)
        assert len(stats.conf) > 0  # an untrained model still predicts (many false positives)
        point = point_estimates(stats)
        for metric in vocabulary.CLASS_METRICS:
            assert point[metric] == pytest.approx(evaluation[split][metric], abs=1e-6), (split, metric)


def test_one_mlflow_run_carries_params_metrics_history_artifacts_and_model(finished: Path) -> None:
    [logged] = runs(finished)
    assert logged.info.status == "FINISHED"
    params = logged.data.params
    assert params["train.lr0"] == "0.01" and params["train.imgsz"] == "64" and params["prepare.train"] == "40"
    assert params["train.model"] == "yolov8n.yaml" and params["mlflow.experiment_name"] == EXPERIMENT
    assert params[vocabulary.DATASET_TAG] == dataset_md5(finished)
    head = run(["git", "rev-parse", "HEAD"], finished).stdout.strip()
    assert params[vocabulary.COMMIT_TAG] == head == logged.data.tags[vocabulary.MLFLOW_COMMIT_TAG]
    assert all(params[f"{vocabulary.VERSION_PARAM_PREFIX}{package}"] for package in ("ultralytics", "mlflow"))
    evaluation = vocabulary.numbers(vocabulary.flatten(read_json(finished / "metrics" / "eval.json")))
    for name, value in evaluation.items():
        assert logged.data.metrics[vocabulary.eval_metric(name)] == pytest.approx(value)
    assert not [name for name in logged.data.metrics if name.startswith(f"{vocabulary.PREPARE}/")]  # no dataset metrics
    [data_input] = [item.dataset for item in logged.inputs.dataset_inputs]
    profile, statistics = json.loads(data_input.profile), read_json(finished / "metrics" / "data.json")
    assert profile["classes"] == ["person"] and profile["train"]["images"] == 40
    assert profile["test"]["classes"]["person"]["boxes"] == statistics["test"]["boxes"]
    history = client(finished).get_metric_history(logged.info.run_id, vocabulary.history_metric("val/mAP50-95"))
    assert [metric.step for metric in history] == [1]  # one entry per epoch
    dataset, train, weights = vocabulary.DATASET_ARTIFACTS, vocabulary.TRAIN_ARTIFACTS, vocabulary.WEIGHTS_ARTIFACTS
    evaluate, plots = vocabulary.EVALUATE_ARTIFACTS, vocabulary.PLOTS_ARTIFACTS
    per_image = vocabulary.PER_IMAGE_ARTIFACTS
    listed = {a.path for folder in (dataset, train, weights, evaluate, plots, f"{plots}/test", per_image)
              for a in client(finished).list_artifacts(logged.info.run_id, folder)}
    assert {f"{dataset}/data.yaml", f"{dataset}/data.json", vocabulary.DATASET_TABLE, f"{train}/results.csv",
            f"{weights}/last.pt", f"{evaluate}/eval.json", f"{plots}/results.png",
            f"{per_image}/val.npz", f"{per_image}/test.npz",
            f"{plots}/test/confusion_matrix.png",
            f"{plots}/test/PR_curve.png", f"{plots}/test/F1_curve.png"} <= listed
    assert f"{weights}/best.pt" not in listed  # uploaded once, inside the logged model
    run_record = read_json(finished / "metrics" / "mlflow_run.json")
    assert run_record["run_id"] == logged.info.run_id


def test_logged_model_predicts_person_boxes(finished: Path) -> None:
    [logged] = runs(finished)
    with tracking_uri(f"sqlite:///{finished / 'mlflow.db'}"):
        model = mlflow.pyfunc.load_model(f"runs:/{logged.info.run_id}/{vocabulary.MODEL_NAME}")
    images = sorted(str(p) for p in (finished / "data" / "tiny_coco" / "images" / "test").iterdir())[:2]
    boxes = model.predict(pd.DataFrame({"image": images}), params={"conf": 0.0})
    assert list(boxes.columns) == BOX_COLUMNS
    assert len(boxes) > 0 and set(boxes["class_name"]) == {"person"} and set(boxes["image"]) <= {0, 1}


@pytest.mark.parametrize("broken", ["scheme", "corrupt", "half-migrated"])
def test_a_tracking_store_error_in_the_log_stage_is_one_line_saying_nothing_is_lost(
        finished: Path, tmp_path: Path, broken: str) -> None:
    database = tmp_path / "mlflow.db"
    if broken == "corrupt":
        database.write_bytes(b"not a database " * 300)
    elif broken == "half-migrated":
        half_migrated_store(database, runs=0)
    uri = "htp://localhost:5000" if broken == "scheme" else f"sqlite:///{database}"
    result = run(["python", "-m", "stages.log"], finished, env=project_env(MLFLOW_TRACKING_URI=uri), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    named = f"MLFLOW_TRACKING_URI={uri!r}: unsupported scheme" if broken == "scheme" else f"MLflow store {uri} cannot"
    assert line.startswith(f"error: {named}")
    assert "Nothing is lost" in line and "run `dvc repro` again" in line


def test_a_killed_training_leaves_its_epochs_in_a_previous_attempt_and_its_temporary_folder_to_the_next_run(
        project: Path, tmp_path: Path) -> None:
    """kill -9 of the train stage after epoch 1: MLflow keeps the attempt with its epoch; the next `dvc repro`
    gives one FINISHED run, the attempt marked FAILED and tagged as its previous attempt. Nothing is left in
    the system's temporary folder, and the next run empties the project's .tmp/train/."""
    write_params(project, {"train.lr0": 0.02, "train.epochs": 3})
    system_tmp = tmp_path / "tmp"
    system_tmp.mkdir()
    env = project_env(TMPDIR=str(system_tmp))
    tempdir = project / ".tmp" / "train"
    store = client(project)
    before = {found.info.run_id for found in runs(project)}

    def attempt() -> str | None:
        """The new run, once it holds epoch 1."""
        new = [found for found in runs(project) if found.info.run_id not in before]
        epoch = vocabulary.history_metric("train/box_loss")
        return new[0].info.run_id if new and store.get_metric_history(new[0].info.run_id, epoch) else None

    with subprocess.Popen(["dvc", "repro"], cwd=project, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL) as pipeline:
        deadline = time.monotonic() + 300
        while (partial := attempt()) is None and time.monotonic() < deadline and pipeline.poll() is None:
            time.sleep(0.2)
        assert partial is not None, "epoch 1 did not reach MLflow while the train stage ran"
        # The Python process itself, not the shell DVC may start it from (`sh -c "python -m ..."`)
        [stage] = [child for child in psutil.Process(pipeline.pid).children(recursive=True)
                   if child.cmdline()[-2:] == ["-m", "stages.train"]]
        stage.kill()
        assert pipeline.wait(timeout=120) != 0
    assert tempdir.is_dir() and not list(system_tmp.glob("yolo-*"))
    assert store.get_run(partial).info.status == "RUNNING"  # killed: nothing could end it

    rerun = run(["dvc", "repro"], project, env=env)
    assert "Running stage 'train'" in rerun.stdout and not tempdir.exists()
    retried = store.get_run(partial)
    [current] = [found for found in runs(project) if found.info.run_id not in before | {partial}]
    assert retried.info.status == "FAILED" and retried.data.tags[vocabulary.PREVIOUS_ATTEMPT_TAG] == current.info.run_id
    assert vocabulary.FINGERPRINT_TAG not in retried.data.tags
    box_loss = store.get_metric_history(partial, vocabulary.history_metric("train/box_loss"))
    assert [point.step for point in box_loss] == [1]
    assert current.info.status == "FINISHED" and current.data.tags[vocabulary.LOG_STATUS_TAG] == vocabulary.COMPLETE
    assert read_json(project / "metrics" / "mlflow_run.json")["run_id"] == current.info.run_id


def test_same_seed_gives_identical_results(project: Path) -> None:
    evaluation, history = read_json(project / "metrics" / "eval.json"), read_json(project / "dvclive" / "metrics.json")
    dataset_hash = dataset_md5(project)
    count = len(runs(project))
    run(["dvc", "repro", "--force"], project)
    assert read_json(project / "metrics" / "eval.json") == evaluation
    assert read_json(project / "dvclive" / "metrics.json") == history
    assert dataset_md5(project) == dataset_hash
    assert len(runs(project)) == count  # the same experiment again: its run is found, not duplicated


def test_the_same_dataset_from_another_path_is_the_same_experiment(project: Path, tmp_path: Path) -> None:
    """Identity by content: the same COCO128 bytes under another path re-run prepare, which makes
    the same dataset; train and evaluate are skipped, and the log stage finds the same MLflow run."""
    [logged] = runs(project)
    record = read_json(project / "metrics" / "mlflow_run.json")
    dataset_hash = dataset_md5(project)
    moved = tmp_path / "elsewhere" / "coco128.zip"
    moved.parent.mkdir()
    shutil.copyfile(COCO128_ZIP, moved)
    write_params(project, {"prepare.source": str(moved)})
    again = run(["dvc", "repro"], project)
    assert "Running stage 'prepare'" in again.stdout and dataset_md5(project) == dataset_hash
    for stage in ("train", "evaluate"):
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout
        assert f"Running stage '{stage}'" not in again.stdout
    assert "Running stage 'log'" in again.stdout and f"unchanged MLflow run {logged.info.run_id}" in again.stdout
    [same] = runs(project)  # no new run
    assert same.info.run_id == logged.info.run_id and same.data.tags[vocabulary.DATASET_TAG] == dataset_hash
    assert read_json(project / "metrics" / "mlflow_run.json")["run_id"] == record["run_id"] == logged.info.run_id


def test_bad_param_is_refused_before_any_work(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "bad", TINY_PARAMS | {"train.lr0": -1})
    result = run(["dvc", "repro"], project, check=False)
    assert result.returncode != 0
    assert "params.yaml: train.lr0 must be > 0" in result.stderr and "Traceback" not in result.stderr
    assert not (project / "data" / "tiny_coco").exists()


def test_pretrained_weights_offline_fail_within_the_train_stage(tmp_path: Path) -> None:
    if _online():  # the same probe as the train stage's (yolo/model.py)
        pytest.skip("this machine can reach the download host; the offline path is covered by test_yolo")
    project = copy_project(tmp_path / "offline", TINY_PARAMS | {"train.model": "yolov8n.pt"})
    result = run(["dvc", "repro"], project, check=False)
    assert result.returncode != 0
    assert "cannot be downloaded" in result.stderr
    assert "train.model=yolov8n.yaml" in result.stderr and not (project / "models").exists()
    assert subprocess.run(["git", "status", "--porcelain", "params.yaml"], cwd=project,
                          capture_output=True, text=True).stdout == ""


def test_a_run_deleted_in_mlflow_stays_the_experiments_one_run(project: Path) -> None:
    """Exactly once: MLflow can restore a deleted run, so the log stage does not log a second one beside it; it
    says in one line how to restore it, or to purge it and log the experiment anew. Restored, it is complete."""
    store = client(project)
    [logged] = runs(project)
    store.delete_run(logged.info.run_id)
    refused = run(["dvc", "repro", "--force", "--single-item", "log"], project, check=False)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    [line] = [text for text in refused.stderr.splitlines() if text.startswith("error: ")]
    assert line.startswith(f"error: MLflow run {logged.info.run_id} of this experiment is deleted in MLflow")
    assert f"`mlflow runs restore --run-id {logged.info.run_id}`" in line and "--single-item log" in line
    assert runs(project) == []  # no second run
    store.restore_run(logged.info.run_id)
    restored = run(["dvc", "repro", "--force", "--single-item", "log"], project)
    assert f"unchanged MLflow run {logged.info.run_id}" in restored.stdout
    assert [found.info.run_id for found in runs(project)] == [logged.info.run_id]
