"""The pyfunc model's input: image paths, raw bytes and base64 text all decode to the same pixels."""

import base64
from pathlib import Path

import pytest

from tests.conftest import jpeg_bytes
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
