"""The trained detector as an MLflow pyfunc model: images in, boxes out, each with its class name from the model.

Logged as MLflow "model from code": this file is stored with the model and run when the
model is loaded, so it imports nothing from the project."""

import base64
import io
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image

DEFAULT_PARAMS = {"conf": 0.25, "iou": 0.7}  # Ultralytics' predict defaults, overridable per call
BOX_COLUMNS = ["image", "x1", "y1", "x2", "y2", "confidence", "class_id", "class_name"]
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "image")]),
    outputs=Schema([
        ColSpec("long", "image"), ColSpec("double", "x1"), ColSpec("double", "y1"), ColSpec("double", "x2"),
        ColSpec("double", "y2"), ColSpec("double", "confidence"), ColSpec("long", "class_id"),
        ColSpec("string", "class_name"),
    ]),
    params=ParamSchema([ParamSpec(name, "double", value) for name, value in DEFAULT_PARAMS.items()]),
)
# The output's column types, as the signature declares them (an image without a box gives an empty frame of them).
BOX_DTYPES = {spec.name: spec.type.to_pandas() for spec in SIGNATURE.outputs.inputs}


def _is_file(value: str) -> bool:
    try:
        return Path(value).is_file()
    except OSError:  # e.g. base64 text longer than a file name may be
        return False


def read_image(value: Any) -> np.ndarray:
    """An RGB array from a file path, raw bytes or base64-encoded bytes."""
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
    elif isinstance(value, str) and _is_file(value):
        data = Path(value).read_bytes()
    elif isinstance(value, str):
        try:
            data = base64.b64decode(value, validate=True)
        except ValueError:
            raise ValueError(f"image {value[:60]!r} is neither an existing file nor base64 data") from None
    else:
        raise ValueError(f"image must be a path, bytes or base64 text, got {type(value).__name__}")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class YoloDetector(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: `predict(DataFrame({'image': [...]}))` → one row per detected box."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from ultralytics import YOLO

        self.model = YOLO(context.artifacts["weights"])
        self.imgsz = int(context.model_config["imgsz"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        params = DEFAULT_PARAMS | (params or {})
        rows = []
        for index, value in enumerate(model_input["image"]):
            result = self.model.predict(
                read_image(value), imgsz=self.imgsz, conf=float(params["conf"]),
                iou=float(params["iou"]), verbose=False,
            )[0]
            for (x1, y1, x2, y2), confidence, class_id in zip(
                result.boxes.xyxy.tolist(), result.boxes.conf.tolist(), result.boxes.cls.tolist(), strict=True
            ):
                rows.append([index, x1, y1, x2, y2, confidence, int(class_id), result.names[int(class_id)]])
        return pd.DataFrame(rows, columns=BOX_COLUMNS).astype(BOX_DTYPES)


# MLflow runs this file under a module name of its own when it logs or loads the model; imported as
# part of the project (for SIGNATURE, BOX_COLUMNS), it registers nothing.
if __name__ != "yolo_mlops.tracking.pyfunc_model":
    mlflow.models.set_model(YoloDetector())
