"""The DVC ↔ MLflow names, both ways: what `dvc exp show` calls a value and what the MLflow run calls it."""

import pytest

from yolo_mlops.core import vocabulary
from yolo_mlops.core.vocabulary import EVAL_METRICS, SPLITS


@pytest.mark.parametrize("split", SPLITS[1:])
@pytest.mark.parametrize("metric", EVAL_METRICS)
def test_eval_metrics_go_to_mlflow_and_back(split: str, metric: str) -> None:
    dvc_name = f"{split}.{metric}"  # metrics/eval.json, `dvc exp show`, compare.rank_by
    mlflow_name = vocabulary.eval_metric(dvc_name)
    assert mlflow_name == f"evaluate/{split}_{metric}"
    assert vocabulary.comparison_metric(mlflow_name) == dvc_name


@pytest.mark.parametrize("class_name", ["person", "traffic light", "hot_dog", "a.b/c"])
@pytest.mark.parametrize("metric", vocabulary.CLASS_METRICS)
def test_per_class_metrics_go_to_mlflow_and_back(class_name: str, metric: str) -> None:
    dvc_name = vocabulary.class_metric("test", class_name, metric)
    assert dvc_name == f"test.classes.{class_name}.{metric}"  # as `dvc exp show` flattens metrics/eval.json
    mlflow_name = vocabulary.eval_metric(dvc_name)
    safe = class_name.replace("/", "_")  # a `/` would make a section of its own in the MLflow UI
    assert mlflow_name == f"evaluate.test.classes.{safe}.{metric}" and "/" not in mlflow_name
    assert vocabulary.comparison_metric(mlflow_name) == vocabulary.class_metric("test", safe, metric)
    assert vocabulary.class_results({vocabulary.comparison_metric(mlflow_name): 0.5, "test.mAP50": 0.1}, "test") == {
        safe: {metric: 0.5}}


@pytest.mark.parametrize("metric", vocabulary.CLASS_METRICS)
@pytest.mark.parametrize("bound", vocabulary.INTERVAL_BOUNDS)
def test_interval_bounds_go_to_mlflow_and_back(metric: str, bound: str) -> None:
    """metrics/eval.json's `test.mAP50-95_low` and `test.classes.car.mAP50_high`, as `dvc exp show` flattens them."""
    split_name = f"test.{vocabulary.interval_key(metric, bound)}"
    assert split_name == f"test.{metric}_{bound}"
    assert vocabulary.eval_metric(split_name) == f"evaluate/test_{metric}_{bound}"
    assert vocabulary.comparison_metric(vocabulary.eval_metric(split_name)) == split_name
    class_name = vocabulary.class_metric("test", "car", vocabulary.interval_key(metric, bound))
    assert vocabulary.eval_metric(class_name) == f"evaluate.test.classes.car.{metric}_{bound}"
    assert vocabulary.comparison_metric(vocabulary.eval_metric(class_name)) == class_name
    assert vocabulary.class_results({class_name: 0.25}, "test") == {"car": {f"{metric}_{bound}": 0.25}}


def test_the_dataset_profile_reads_as_data_values_in_the_comparison() -> None:
    profile = {"classes": ["person"], "test": {"images": 10, "classes": {"person": {"boxes": 61}}}}
    assert vocabulary.profile_metrics(profile) == {"data.test_images": 10.0, "data.test_classes_person_boxes": 61.0}
    assert vocabulary.comparison_metric("prepare/test_images") is None  # the dataset's counts are no run metrics


def test_history_names_and_what_the_comparison_ignores() -> None:
    assert vocabulary.history_metric("val/mAP50-95") == "train/val_mAP50-95"
    assert vocabulary.history_metric("train/box_loss") == "train/box_loss"
    assert vocabulary.history_metric("lr/pg0") == "train/lr_pg0"
    assert vocabulary.comparison_metric("train/val_mAP50-95") is None  # per-epoch history is not a final metric
    assert vocabulary.comparison_metric("system/cpu_utilization_percentage") is None
    assert vocabulary.history_of("val.mAP50-95") == "train/val_mAP50-95"
    # no per-epoch history
    assert vocabulary.history_of("val.f1") is None and vocabulary.history_of("test.mAP50") is None
