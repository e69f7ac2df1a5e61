"""Everything that talks to Ultralytics: its settings, model and device checks, train, val."""

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from yolo_mlops.atomic import atomic_dir
from yolo_mlops.errors import PipelineError
from yolo_mlops.params import EvaluateParams, TrainParams
from yolo_mlops.paths import project_root

# Ultralytics' integrations switch themselves on when their package is installed. This
# project logs to MLflow and DVC itself (stages/log.py, dvclive in stages/train.py), so all
# of them, and the usage telemetry (`sync`), are switched off here, in code.
ULTRALYTICS_SETTINGS = {
    "sync": False, "mlflow": False, "dvc": False, "clearml": False, "comet": False,
    "raytune": False, "tensorboard": False, "wandb": False,
}
DOWNLOAD_HOST = ("github.com", 443)
NETWORK_PROBE_TIMEOUT_S = 3
# Ultralytics' plot names → the names users know from the course and older releases.
PLOT_NAMES = {
    "BoxPR_curve.png": "PR_curve.png",
    "BoxF1_curve.png": "F1_curve.png",
    "BoxP_curve.png": "P_curve.png",
    "BoxR_curve.png": "R_curve.png",
    "confusion_matrix.png": "confusion_matrix.png",
    "confusion_matrix_normalized.png": "confusion_matrix_normalized.png",
}


def ultralytics() -> Any:
    """Import Ultralytics with this project's settings (keeps the import out of start-up).

    Its settings file lives in the project (`.ultralytics/`, git-ignored) unless the user
    set YOLO_CONFIG_DIR, so the user's own Ultralytics settings are left alone."""
    os.environ.setdefault("YOLO_CONFIG_DIR", str(project_root() / ".ultralytics"))
    import ultralytics as package
    from ultralytics import settings

    if any(settings.get(key) != value for key, value in ULTRALYTICS_SETTINGS.items()):
        settings.update(ULTRALYTICS_SETTINGS)
    return package


def weights_dir() -> Path:
    """Where downloaded pretrained weights are kept, shared by all experiments (git-ignored)."""
    return project_root() / "weights"


def _online() -> bool:
    try:
        with socket.create_connection(DOWNLOAD_HOST, timeout=NETWORK_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def resolve_model(model: str) -> str:
    """Turn `train.model` into something YOLO() loads, failing fast with advice when it cannot."""
    ultralytics()
    from ultralytics.nn.tasks import yaml_model_load
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES, attempt_download_asset

    if model.endswith((".yaml", ".yml")):
        try:
            yaml_model_load(model)  # finds Ultralytics' own configs (yolov8n.yaml → yolov8.yaml, scale n)
            return model
        except FileNotFoundError:
            raise PipelineError(f"train.model: unknown model config {model!r} (try yolov8n.yaml)") from None
    local = Path(model).expanduser()
    for candidate in (local, project_root() / local, weights_dir() / local.name):
        if candidate.is_file():
            return str(candidate)
    if local.name not in GITHUB_ASSETS_NAMES:
        raise PipelineError(
            f"train.model: unknown model {model!r}: no such file, and not an Ultralytics release asset "
            "(e.g. yolov8n.pt, yolo11n.pt)"
        )
    target = weights_dir() / local.name
    if not _online():
        raise PipelineError(
            f"train.model: {model} is not on this machine and cannot be downloaded "
            f"({DOWNLOAD_HOST[0]} is unreachable). Either train from scratch: "
            "`dvc exp run -S train.model=yolov8n.yaml`, or put the weights file at "
            f"{target} and run again."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    downloaded = Path(attempt_download_asset(str(target)))
    if not downloaded.is_file():
        raise PipelineError(f"train.model: download of {model} to {target} failed; see the messages above")
    return str(downloaded)


def resolve_device(device: str) -> str:
    """`auto` → the first CUDA GPU when present, else cpu; refuse a device this machine lacks."""
    import torch

    if device == "auto":
        return "0" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise PipelineError("train.device: mps requested but Apple's MPS backend is not available here")
        return device
    wanted = [int(index) for index in device.split(",")]
    available = torch.cuda.device_count()
    if max(wanted) >= available:
        raise PipelineError(f"train.device: CUDA device(s) {device} requested, but this machine has {available}")
    return device


@contextmanager
def staged_dataset(dataset_dir: Path) -> Iterator[Path]:
    """Yield data.yaml of a private copy of the dataset.

    Ultralytics writes `labels/*.cache` next to the labels; on the DVC output itself that
    would change the prepare stage's hash, so training and validation read a copy."""
    with tempfile.TemporaryDirectory(prefix="yolo-data-") as scratch:
        copy = Path(scratch) / dataset_dir.name
        shutil.copytree(dataset_dir, copy)
        yield copy / "data.yaml"


def train(data_yaml: Path, params: TrainParams, model: str, device: str, run_dir: Path) -> Path:
    """Train with Ultralytics into `run_dir`; return the folder holding weights/, results.csv and results.png.

    Ultralytics' own training plots are off: the label statistics, batch mosaics and the
    final validation's curves would be drawn into a scratch folder and thrown away (the
    evaluate stage draws the curves of `best.pt` per split). Only the training curves,
    results.png, are kept, drawn from results.csv as Ultralytics draws them."""
    package = ultralytics()
    trainer_model = package.YOLO(model)
    trainer_model.train(
        data=str(data_yaml), epochs=params.epochs, imgsz=params.imgsz, lr0=params.lr0, seed=params.seed,
        batch=params.batch, optimizer=params.optimizer, device=device, workers=params.workers,
        deterministic=True, project=str(run_dir.parent), name=run_dir.name, exist_ok=True, plots=False,
    )
    save_dir = Path(trainer_model.trainer.save_dir)
    from ultralytics.utils.plotting import plot_results

    plot_results(file=save_dir / "results.csv")
    return save_dir


def export_run(run_dir: Path, models_dir: Path) -> None:
    """Keep the run's weights, history and its plot as the train stage's output (atomically)."""
    with atomic_dir(models_dir) as staging:
        for name in ("weights/best.pt", "weights/last.pt", "results.csv", "results.png", "args.yaml"):
            source = run_dir / name
            if not source.is_file():
                raise PipelineError(f"train: Ultralytics did not write {source}")
            shutil.copy2(source, staging / Path(name).name)


def evaluate(weights: Path, data_yaml: Path, split: str, params: EvaluateParams, imgsz: int, batch: int,
             device: str, run_dir: Path) -> tuple[dict[str, float], dict[str, list[float]], Path]:
    """Validate `weights` on one split: (metrics, PR curve points, folder with the plots)."""
    results = ultralytics().YOLO(str(weights)).val(
        data=str(data_yaml), split=split, imgsz=imgsz, batch=batch, conf=params.conf, iou=params.iou,
        device=device, plots=True, project=str(run_dir.parent), name=run_dir.name, exist_ok=True,
    )
    precision, recall = float(results.box.mp), float(results.box.mr)
    metrics = {
        "mAP50": float(results.box.map50),
        "mAP50-95": float(results.box.map),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
    }
    recall_grid, precision_by_class = results.box.curves_results[0][:2]
    curve = {"recall": [float(x) for x in recall_grid], "precision": [float(y) for y in precision_by_class[0]]} \
        if len(precision_by_class) else {"recall": [], "precision": []}
    return metrics, curve, Path(results.save_dir)

