"""Ultralytics with this project's settings, and what `train.model` and `train.device` resolve to."""

import os
import socket
from pathlib import Path
from typing import Any

from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.paths import ULTRALYTICS_CONFIG_DIR, WEIGHTS_DIR, project_root, shared

# Ultralytics' integrations switch themselves on when their package is installed. This
# project logs to MLflow and DVC itself (the log stage, dvclive in the train stage), so all
# of them, and the usage telemetry (`sync`), are switched off here, in code.
ULTRALYTICS_SETTINGS = {
    "sync": False, "mlflow": False, "dvc": False, "clearml": False, "comet": False,
    "raytune": False, "tensorboard": False, "wandb": False,
}
DOWNLOAD_HOST = ("github.com", 443)
NETWORK_PROBE_TIMEOUT_S = 3


def ultralytics() -> Any:
    """Import Ultralytics with this project's settings (keeps the import out of start-up).

    Its settings file lives in the project (`.ultralytics/`, git-ignored) unless the user
    set YOLO_CONFIG_DIR, so the user's own Ultralytics settings are left alone."""
    os.environ.setdefault("YOLO_CONFIG_DIR", str(shared(ULTRALYTICS_CONFIG_DIR)))
    import ultralytics as package
    from ultralytics import settings

    if any(settings.get(key) != value for key, value in ULTRALYTICS_SETTINGS.items()):
        settings.update(ULTRALYTICS_SETTINGS)
    return package


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
    for candidate in (local, project_root() / local, shared(WEIGHTS_DIR) / local.name):
        if candidate.is_file():
            return str(candidate)
    if local.name not in GITHUB_ASSETS_NAMES:
        raise PipelineError(
            f"train.model: unknown model {model!r}: no such file, and not an Ultralytics release asset "
            "(e.g. yolov8n.pt, yolo11n.pt)"
        )
    target = shared(WEIGHTS_DIR) / local.name
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
