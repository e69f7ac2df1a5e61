"""End to end on data that is not the course's: the tests' own 3-class dataset in each layout (first a zip
holding a data.yaml) through real `dvc repro` runs at the tiny settings, and COCO128 with classes [person, car,
dog] through a 2-point grid: per-class results in DVC and MLflow, class names from the pyfunc model, the
per-class table of the comparison and of the report."""

import json
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import (
    FRUIT,
    TINY_PARAMS,
    copy_project,
    make_dataset,
    needs_coco128,
    run,
    tracking_uri,
    write_params,
)
from yolo_mlops.core import vocabulary

pytestmark = pytest.mark.e2e
EXPERIMENT, MODEL = "cv_yolo_tiny", "yolo_tiny_person"
COCO_CLASSES = ["person", "car", "dog"]
LAYOUTS = ("zip", "images_split", "split_images", "data_yaml")  # tests/conftest.py: make_dataset


def only_run(project: Path) -> Any:
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    [logged] = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    return logged


@pytest.fixture(scope="module")
def fruit_repros(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[str, str]]]:
    """The 3-class dataset through a real `dvc repro` as a zip, then as each of the other layouts in the same
    project: (project, layout → (DVC's md5 of data/tiny_coco, the repro's output))."""
    root = tmp_path_factory.mktemp("own-data")
    sources = {}
    for layout in LAYOUTS:
        (root / layout).mkdir()
        sources[layout] = str(make_dataset(root / layout, layout))
    project = copy_project(root / "project", TINY_PARAMS | {
        "prepare.source": sources["zip"], "prepare.classes": list(FRUIT), "prepare.split": "keep"})
    repros = {}
    for layout in LAYOUTS:
        write_params(project, {"prepare.source": sources[layout]})
        output = run(["dvc", "repro"], project).stdout
        lock = yaml.safe_load((project / "dvc.lock").read_text())
        repros[layout] = lock["stages"]["prepare"]["outs"][0]["md5"], output
    return project, repros


@pytest.fixture(scope="module")
def fruit_project(fruit_repros: tuple[Path, dict[str, tuple[str, str]]]) -> Path:
    return fruit_repros[0]


def test_every_layout_through_dvc_repro_is_the_same_dataset_and_the_same_run(
        fruit_repros: tuple[Path, dict[str, tuple[str, str]]]) -> None:
    """After the zip, the other layouts prepare the same data/tiny_coco (DVC's md5): DVC trains and evaluates
    nothing again, and the log stage finds the experiment's one run complete."""
    project, repros = fruit_repros
    assert len({md5 for md5, _ in repros.values()}) == 1, repros
    for layout in LAYOUTS[1:]:
        output = repros[layout][1]
        assert "Running stage 'prepare'" in output, output[-2000:]
        for stage in ("train", "evaluate"):
            assert f"Stage '{stage}' didn't change, skipping" in output, output[-2000:]
    assert only_run(project).info.status == "FINISHED"


def test_per_class_results_in_eval_json_and_in_dvc(fruit_project: Path) -> None:
    evaluation = json.loads((fruit_project / "metrics" / "eval.json").read_text())
    for split in ("val", "test"):
        assert list(evaluation[split]["classes"]) == list(FRUIT)
        for values in evaluation[split]["classes"].values():  # several classes: each with its 95 % intervals
            assert set(values) == {*vocabulary.CLASS_METRICS, *(
                vocabulary.interval_key(metric, bound)
                for bound in vocabulary.INTERVAL_BOUNDS for metric in vocabulary.CLASS_METRICS)}
            assert all(values[vocabulary.interval_key(metric, "low")] <= values[vocabulary.interval_key(metric, "high")]
                       for metric in vocabulary.CLASS_METRICS)
    shown = json.loads(run(["dvc", "exp", "show", "--json"], fruit_project).stdout)
    workspace = shown[0]["data"]["metrics"]["metrics/eval.json"]["data"]
    assert workspace["test"]["classes"]["cherry"] == evaluation["test"]["classes"]["cherry"]
    diff = json.loads(run(["dvc", "metrics", "diff", "--json", "--all"], fruit_project).stdout)["metrics/eval.json"]
    assert {vocabulary.class_metric(split, fruit, metric) for split in ("val", "test") for fruit in FRUIT
            for metric in vocabulary.CLASS_METRICS} <= set(diff)
    data = json.loads((fruit_project / "metrics" / "data.json").read_text())
    assert [data[split]["images"] for split in ("train", "val", "test")] == [9, 6, 6]  # the source's own splits
    assert data["val"]["classes"]["banana"]["boxes"] == 4


def test_the_mlflow_run_holds_per_class_metrics_and_the_dataset_as_profile_and_table(fruit_project: Path) -> None:
    logged = only_run(fruit_project)
    eval_json = json.loads((fruit_project / "metrics" / "eval.json").read_text())
    evaluation = vocabulary.numbers(vocabulary.flatten(eval_json))
    for fruit in FRUIT:
        dvc_name = vocabulary.class_metric("test", fruit, "mAP50-95")
        assert logged.data.metrics[vocabulary.eval_metric(dvc_name)] == pytest.approx(evaluation[dvc_name])
    assert not [name for name in logged.data.metrics if name.startswith(f"{vocabulary.PREPARE}/")]
    [data_input] = logged.inputs.dataset_inputs
    profile = json.loads(data_input.dataset.profile)
    assert profile["classes"] == list(FRUIT) and profile["val"]["classes"]["banana"]["boxes"] == 4
    uri = f"sqlite:///{fruit_project / 'mlflow.db'}"
    with tracking_uri(uri):  # load_table searches the runs through MLflow's global tracking URI
        table = MlflowClient(uri).load_table(logged.info.experiment_id, vocabulary.DATASET_TABLE, [logged.info.run_id])
    assert set(table["class"]) == {"all", *FRUIT} and len(table) == 3 * 4
    row = table[(table["split"] == "val") & (table["class"] == "banana")].iloc[0]
    assert row["images"] == 4 and row["boxes"] == 4 and row["small_boxes"] == 4


def test_the_pyfunc_model_returns_the_class_names_of_the_trained_model(fruit_project: Path) -> None:
    logged = only_run(fruit_project)
    with tracking_uri(f"sqlite:///{fruit_project / 'mlflow.db'}"):
        model = mlflow.pyfunc.load_model(f"runs:/{logged.info.run_id}/{vocabulary.MODEL_NAME}")
    images = sorted(str(path) for path in (fruit_project / "data" / "tiny_coco" / "images" / "test").iterdir())[:2]
    boxes = model.predict(pd.DataFrame({"image": images}), params={"conf": 0.0})
    assert len(boxes) > 0 and set(boxes["class_name"]) <= set(FRUIT)
    assert all(FRUIT[class_id] == name for class_id, name in zip(boxes["class_id"], boxes["class_name"], strict=True))


@needs_coco128
def test_coco128_with_three_classes_through_the_grid_compare_promote_and_report(tmp_path: Path) -> None:
    gates = {"promote.min_test_map50_95": 0.0, "promote.min_test_recall": 0.0, "promote.min_margin": 0.0}
    project = copy_project(tmp_path / "project", TINY_PARAMS | gates | {"prepare.classes": COCO_CLASSES})
    (project / "grid.yaml").write_text("train.imgsz: [64]\ntrain.lr0: [0.005, 0.01]\ntrain.seed: [1]\n"
                                       "train.epochs: [1]\n")
    out = run(["python", "-m", "yolo_mlops.grid", "run"], project, timeout=1500).stdout
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    assert len(runs) == 2 and all(found.info.status == "FINISHED" for found in runs)
    for found in runs:
        assert {vocabulary.comparison_metric(name) for name in found.data.metrics} >= {
            vocabulary.class_metric("test", label, metric)
            for label in COCO_CLASSES for metric in vocabulary.CLASS_METRICS}
        assert json.loads(found.inputs.dataset_inputs[0].dataset.profile)["classes"] == COCO_CLASSES
    ranked = [line.split("|")[2].strip() for line in out.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    header = (f"| class | {ranked[0]} mAP50-95 | {ranked[0]} mAP50 | {ranked[0]} precision | {ranked[0]} recall | "
              f"{ranked[1]} mAP50-95 |")
    assert header in out  # the comparison: per class, the best run and the runner-up
    report = (project / "reports" / "decision.md").read_text()
    assert header in report and "**Weakest class**: `" in report
    rows = [line.split("|")[1].strip() for line in report.splitlines() if line.startswith("| ")
            and line.split("|")[1].strip() in COCO_CLASSES]
    assert rows == COCO_CLASSES
    assert "- Dataset: 3 class(es), person, car, dog (train 40 images, val 10 images, test 10 images;" in report
    assert client.get_registered_model(MODEL).aliases  # promoted on the all-class gates
