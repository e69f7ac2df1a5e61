"""The Ultralytics side: the torch/torchvision pair, model and device checks, settings."""

import json
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from tests.conftest import PROJECT_ROOT, free_port, project_env, run
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.yolo import model as yolo


def test_torchvision_ops_work_with_the_installed_torch() -> None:
    """A CPU-only torch next to PyPI's CUDA torchvision breaks `nms` (and Ultralytics)."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    kept = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert kept.tolist() == [0, 2]


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.delenv("YOLO_CONFIG_DIR", raising=False)
    return tmp_path


def test_integrations_and_telemetry_are_switched_off_in_a_project_settings_file(project: Path) -> None:
    """In a fresh process (Ultralytics reads its settings once, at import)."""
    run([sys.executable, "-c", "from yolo_mlops.yolo.model import ultralytics; ultralytics()"], project,
        env=project_env(DVC_ROOT=str(project), PYTHONPATH=str(PROJECT_ROOT)))
    settings = json.loads((project / ".ultralytics" / "Ultralytics" / "settings.json").read_text())
    assert {key: settings[key] for key in yolo.ULTRALYTICS_SETTINGS} == yolo.ULTRALYTICS_SETTINGS


def test_model_configs_and_local_weights_resolve(project: Path) -> None:
    assert yolo.resolve_model("yolov8n.yaml") == "yolov8n.yaml"
    (project / "weights").mkdir()
    (project / "weights" / "yolov8n.pt").write_bytes(b"weights")
    assert yolo.resolve_model("yolov8n.pt") == str(project / "weights" / "yolov8n.pt")
    (project / "mine.pt").write_bytes(b"weights")
    assert Path(yolo.resolve_model("mine.pt")).resolve() == project / "mine.pt"


@pytest.mark.parametrize("model", ["yolov99z.yaml", "resnet50.pt"])
def test_unknown_models_are_refused(project: Path, model: str) -> None:
    with pytest.raises(PipelineError, match=f"train.model: unknown model.*{model}"):
        yolo.resolve_model(model)


def test_pretrained_weights_without_network_fail_fast_with_advice(project: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A loopback port nobody listens on stands for the download host.
    monkeypatch.setattr(yolo, "DOWNLOAD_HOST", ("127.0.0.1", free_port()))
    with pytest.raises(PipelineError) as error:
        yolo.resolve_model("yolov8n.pt")
    message = str(error.value)
    assert "cannot be downloaded" in message and "train.model=yolov8n.yaml" in message
    assert str(project / "weights" / "yolov8n.pt") in message
    assert not (project / "weights").exists()


def test_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    assert yolo.resolve_device("auto") == ("0" if torch.cuda.is_available() else "cpu")
    assert yolo.resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert yolo.resolve_device("0") == "0"
    with pytest.raises(PipelineError, match="train.device: CUDA device.*0,1 requested, but this machine has 1"):
        yolo.resolve_device("0,1")
