"""Where the project's files live, also inside DVC's temporary experiment copies."""

import os
from pathlib import Path

PARAMS_FILE = Path("params.yaml")
DVC_LOCK_FILE = Path("dvc.lock")
DATASET_DIR = Path("data/tiny_coco")
DATA_METRICS_FILE = Path("metrics/data.json")
MODELS_DIR = Path("models")
TRAIN_LIVE_DIR = Path("dvclive")
EVAL_METRICS_FILE = Path("metrics/eval.json")
PLOTS_DIR = Path("plots")
MLFLOW_RUN_FILE = Path("metrics/mlflow_run.json")
GRID_FILE = Path("grid.yaml")
REPORTS_DIR = Path("reports")
DECISION_TEMPLATE = REPORTS_DIR / "templates" / "decision_template.md"


def project_root() -> Path:
    """The user's project folder: `DVC_ROOT` inside a DVC stage (queued experiments run
    in a temporary copy, whose files are deleted afterwards), else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def cache_dir() -> Path:
    """Downloads shared by every experiment of the project (git-ignored)."""
    return project_root() / "data" / "cache"
