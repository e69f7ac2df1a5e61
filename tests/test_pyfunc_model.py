"""The pyfunc model's input: image paths, raw bytes and base64 text all decode to the same pixels."""

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, jpeg_bytes
from yolo_mlops.tracking.pyfunc_model import read_image


def test_paths_bytes_and_base64_give_the_same_image(tmp_path: Path) -> None:
    data = jpeg_bytes(640, 480)
    (tmp_path / "image.jpg").write_bytes(data)
    from_path = read_image(str(tmp_path / "image.jpg"))
    assert from_path.shape == (480, 640, 3)
    assert (read_image(data) == from_path).all()
    assert (read_image(base64.b64encode(data).decode()) == from_path).all()  # longer than a file name may be


def test_unusable_input_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="neither an existing file nor base64"):
        read_image("no/such/file.jpg")
    with pytest.raises(ValueError, match="must be a path, bytes or base64"):
        read_image(3.14)


def test_importing_the_project_registers_no_model() -> None:
    """The pyfunc file is MLflow model code: MLflow runs it (and it calls set_model) when it logs or loads
    the model; the project imports it for its signature and must not register a model as a side effect."""
    registered = subprocess.run(
        [sys.executable, "-c", "import mlflow.models.model as m, yolo_mlops.tracking.run, yolo_mlops.tracking.model; "
                               "print(m.__mlflow_model__)"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert registered == "None"
