"""The trained detector logged as an MLflow model: the pyfunc model from code, its signature and
its pinned requirements."""

import warnings
from importlib.metadata import version
from pathlib import Path

import mlflow

from yolo_mlops.core.vocabulary import MODEL_NAME
from yolo_mlops.tracking.pyfunc_model import SIGNATURE

MODEL_PACKAGES = ("mlflow", "ultralytics", "torch", "torchvision", "pandas", "pillow", "numpy")
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")  # stored with the model, run when it is loaded


def model_requirements() -> list[str]:
    """Exact versions of what loading the model needs (public releases, without +cuXXX)."""
    return [f"{package}=={version(package).split('+')[0]}" for package in MODEL_PACKAGES]


def log_model(run_id: str, weights: Path, imgsz: int) -> None:
    """Log `weights` as the run's pyfunc model (images in, person boxes out)."""
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings():
        # Deliberate (see the README, "model"): the signature describes the input, and no example
        # is replayed through the model at every log.
        warnings.filterwarnings("ignore", message=".*input example was not provided", category=UserWarning)
        mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(MODEL_CODE),
            model_config={"imgsz": imgsz},
            artifacts={"weights": str(weights)},
            signature=SIGNATURE,
            pip_requirements=model_requirements(),
        )
