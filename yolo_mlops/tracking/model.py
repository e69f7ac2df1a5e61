"""The trained detector logged as an MLflow model: the pyfunc model from code, its signature and
its pinned requirements."""

import warnings
from importlib.metadata import version
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, Run

from yolo_mlops.core.vocabulary import MODEL_NAME
from yolo_mlops.tracking.pyfunc_model import SIGNATURE

MODEL_PACKAGES = ("mlflow", "ultralytics", "torch", "torchvision", "pandas", "pillow", "numpy")
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")  # stored with the model, run when it is loaded


def model_requirements() -> list[str]:
    """Exact versions of what loading the model needs (public releases, without +cuXXX)."""
    return [f"{package}=={version(package).split('+')[0]}" for package in MODEL_PACKAGES]


def model_id(run: Run) -> str | None:
    """The id of the run's model (linked once completely logged, see `log_model`); None when it has none."""
    ids = [output.model_id for output in (run.outputs.model_outputs if run.outputs else []) if output.model_id]
    return ids[-1] if ids else None


def has_model(run: Run) -> bool:
    """Whether the run holds its model."""
    return model_id(run) is not None


def log_model(client: MlflowClient, run: Run, weights: Path, imgsz: int) -> str:
    """Log `weights` as the run's pyfunc model (images in, boxes with class names out); returns its model id.

    The model is created with the run as its source, filled, and linked to the run last, so a linked
    model is complete: a logging cut short leaves an unlinked model, and the next stage logs it again.
    The run itself is not touched (no active run is started, so none is ended)."""
    model = client.create_logged_model(run.info.experiment_id, name=MODEL_NAME, source_run_id=run.info.run_id,
                                       params=run.data.params)
    with warnings.catch_warnings():
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
            model_id=model.model_id,
        )
    client.log_outputs(run.info.run_id, models=[LoggedModelOutput(model.model_id, step=0)])
    return model.model_id
