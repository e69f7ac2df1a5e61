"""The DVC ↔ MLflow names, both ways: what `dvc exp show` calls a value and what the MLflow run calls it."""

import pytest

from yolo_mlops.core import vocabulary as names
from yolo_mlops.core.vocabulary import EVAL_METRICS, SPLITS


@pytest.mark.parametrize("split", SPLITS[1:])
@pytest.mark.parametrize("metric", EVAL_METRICS)
def test_eval_metrics_go_to_mlflow_and_back(split: str, metric: str) -> None:
    dvc_name = f"{split}.{metric}"  # metrics/eval.json, `dvc exp show`, compare.rank_by
    mlflow_name = names.eval_metric(dvc_name)
    assert mlflow_name == f"evaluate/{split}_{metric}"
    assert names.comparison_metric(mlflow_name) == dvc_name


def test_data_metrics_go_to_mlflow_and_back() -> None:
    flat = names.numbers(names.flatten({"test": {"images": 10, "box_width": {"mean": 0.2}}, "note": "x"}))
    assert flat == {"test.images": 10.0, "test.box_width.mean": 0.2}
    assert [names.mlflow_metric(names.PREPARE, name) for name in flat] == [
        "prepare/test_images", "prepare/test_box_width_mean"]
    assert names.comparison_metric("prepare/test_images") == "data.test_images"
    assert names.data_metric("data.test_images") == "prepare/test_images"


def test_history_names_and_what_the_comparison_ignores() -> None:
    assert names.history_metric("val/mAP50-95") == "train/val_mAP50-95"
    assert names.history_metric("train/box_loss") == "train/box_loss"
    assert names.history_metric("lr/pg0") == "train/lr_pg0"
    assert names.comparison_metric("train/val_mAP50-95") is None  # per-epoch history is not a final metric
    assert names.comparison_metric("system/cpu_utilization_percentage") is None
    assert names.history_of("val.mAP50-95") == "train/val_mAP50-95"
    assert names.history_of("val.f1") is None and names.history_of("test.mAP50") is None  # no per-epoch history
