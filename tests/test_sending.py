"""What the evaluate stage's forwarder and the log stage send, on a real embedded store: the evaluation's
metrics linked to the logged model (MLflow 3's model_id), its files uploaded once, and the metric histories
read only where a metric has more than one step."""

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from yolo_mlops.core import vocabulary
from yolo_mlops.tracking.forwarder import send_evaluation
from yolo_mlops.tracking.model import log_model, model_id
from yolo_mlops.tracking.run import missing_metrics, upload_evaluation
from yolo_mlops.tracking.store import experiment_id

EVALUATION = {"val": {"mAP50": 0.5, "recall": 0.25}, "test": {"mAP50": 0.4, "recall": 0.2}}


@pytest.fixture
def evaluated(tmp_path: Path) -> Any:
    """A folder with the evaluate stage's outputs (metrics/eval.json, plots/, metrics/per_image/), as the working
    directory."""
    (tmp_path / "metrics" / "per_image").mkdir(parents=True)
    (tmp_path / "metrics" / "eval.json").write_text(json.dumps(EVALUATION))
    (tmp_path / "metrics" / "per_image" / "val.npz").write_bytes(b"statistics of the first evaluation")
    (tmp_path / "plots" / "val").mkdir(parents=True)
    (tmp_path / "plots" / "val" / "precision_recall.csv").write_text("recall,precision\n0,1\n")
    with contextlib.chdir(tmp_path):
        yield tmp_path


def test_the_evaluation_metrics_are_the_logged_models_metrics(mlflow_store: MlflowClient, evaluated: Path) -> None:
    client = mlflow_store
    run_id = client.create_run(experiment_id(client, "sending-model")).info.run_id
    (evaluated / "best.pt").write_bytes(b"weights")  # logged, never loaded here
    model = log_model(client, client.get_run(run_id), evaluated / "best.pt", 64)
    send_evaluation(client, run_id, None)  # type: ignore[arg-type]  # the evaluate stage's forwarder's job
    linked = {metric.key: metric.value for metric in client.get_logged_model(model).metrics}
    assert linked == {vocabulary.eval_metric(f"{split}.{name}"): value for split, values in EVALUATION.items()
                      for name, value in values.items()}
    assert model_id(client.get_run(run_id)) == model


def test_the_evaluation_files_are_uploaded_once_per_evaluation(mlflow_store: MlflowClient, evaluated: Path) -> None:
    client = mlflow_store
    run_id = client.create_run(experiment_id(client, "sending-files")).info.run_id
    plot = evaluated / "plots" / "val" / "precision_recall.csv"

    def uploaded() -> str:
        path = client.download_artifacts(run_id, f"{vocabulary.PLOTS_ARTIFACTS}/val/precision_recall.csv",
                                         str(evaluated / f"download-{len(list(evaluated.glob('download-*')))}"))
        return Path(path).read_text()

    upload_evaluation(client, client.get_run(run_id))  # the evaluate stage's forwarder
    first = uploaded()
    plot.write_text("changed, but of the same evaluation\n")
    upload_evaluation(client, client.get_run(run_id))  # the log stage: the run holds them already
    assert uploaded() == first
    (evaluated / "metrics" / "eval.json").write_text(json.dumps({"val": {"mAP50": 0.9}}))  # another evaluation
    upload_evaluation(client, client.get_run(run_id))
    assert uploaded() == "changed, but of the same evaluation\n"


def test_the_per_image_statistics_are_part_of_the_evaluation_uploaded_once(mlflow_store: MlflowClient,
                                                                            evaluated: Path) -> None:
    client = mlflow_store
    run_id = client.create_run(experiment_id(client, "sending-per-image")).info.run_id
    statistics = evaluated / "metrics" / "per_image" / "val.npz"

    def uploaded() -> bytes:
        folder = evaluated / f"download-{len(list(evaluated.glob('download-*')))}"
        path = client.download_artifacts(run_id, f"{vocabulary.PER_IMAGE_ARTIFACTS}/val.npz", str(folder))
        return Path(path).read_bytes()

    upload_evaluation(client, client.get_run(run_id))
    assert uploaded() == b"statistics of the first evaluation"
    tag = client.get_run(run_id).data.tags[vocabulary.EVALUATION_UPLOADED_TAG]
    upload_evaluation(client, client.get_run(run_id))  # the log stage: nothing new
    assert client.get_run(run_id).data.tags[vocabulary.EVALUATION_UPLOADED_TAG] == tag
    # The same metrics/eval.json, other per-image statistics (the figures rounded alike): another evaluation.
    statistics.write_bytes(b"statistics of a second evaluation")
    upload_evaluation(client, client.get_run(run_id))
    assert uploaded() == b"statistics of a second evaluation"
    assert client.get_run(run_id).data.tags[vocabulary.EVALUATION_UPLOADED_TAG] != tag


class CountingClient:
    """A real client that counts the metric histories read through it."""

    def __init__(self, client: MlflowClient) -> None:
        self.client, self.histories = client, 0

    def get_metric_history(self, run_id: str, key: str) -> Any:
        self.histories += 1
        return self.client.get_metric_history(run_id, key)


def test_only_the_histories_of_per_epoch_metrics_are_read(mlflow_store: MlflowClient) -> None:
    client = mlflow_store
    run_id = client.create_run(experiment_id(client, "sending-histories")).info.run_id
    single = [(f"evaluate/metric_{index}", 0.5, 0) for index in range(20)]
    epochs = [(f"train/metric_{index}", 0.1 * step, step) for index in range(3) for step in (1, 2, 3)]
    sent = [(name, value, step) for name, value, step in single[:15] + epochs if step != 3]
    client.log_batch(run_id, metrics=missing_metrics(client, client.get_run(run_id), sent))
    counting = CountingClient(client)
    missing = missing_metrics(counting, client.get_run(run_id), single + epochs)  # type: ignore[arg-type]
    assert sorted((metric.key, metric.step) for metric in missing) == sorted(
        [(name, 0) for name, _, _ in single[15:]] + [(f"train/metric_{index}", 3) for index in range(3)])
    assert counting.histories == 3  # the three per-epoch metrics; the twenty evaluation metrics cost none
