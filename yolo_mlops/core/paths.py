"""Every path of the project, relative to its root, and where shared state lives inside DVC's
temporary experiment copies. dvc.yaml declares the stages' outputs; `STAGE_OUTPUTS` names the same
paths for the code, and tests/test_dvc_yaml.py checks that the two agree."""

import os
from pathlib import Path

# Configuration
PARAMS_FILE = Path("params.yaml")
DVC_YAML = Path("dvc.yaml")
DVC_LOCK_FILE = Path("dvc.lock")
DVC_CONFIG = Path(".dvc/config")
DVC_LOCAL_CONFIG = Path(".dvc/config.local")  # this clone's DVC remote credentials (make remote), git-ignored
GRID_FILE = Path("grid.yaml")

# Stage outputs (dvc.yaml)
DATASET_DIR = Path("data/tiny_coco")
DATA_YAML = DATASET_DIR / "data.yaml"
DATA_METRICS_FILE = Path("metrics/data.json")
MODELS_DIR = Path("models")
BEST_WEIGHTS = MODELS_DIR / "best.pt"
LAST_WEIGHTS = MODELS_DIR / "last.pt"
RESULTS_CSV = MODELS_DIR / "results.csv"  # Ultralytics' per-epoch history
RESULTS_PLOT = MODELS_DIR / "results.png"
TRAIN_ARGS = MODELS_DIR / "args.yaml"
TRAIN_LIVE_DIR = Path("dvclive")
TRAIN_LIVE_METRICS = TRAIN_LIVE_DIR / "metrics.json"
TRAIN_LIVE_PLOTS = TRAIN_LIVE_DIR / "plots" / "metrics"
EVAL_METRICS_FILE = Path("metrics/eval.json")
PLOTS_DIR = Path("plots")
PLOTS_RESULTS = PLOTS_DIR / "results.png"  # the training curves, beside each split's plots
PR_CURVE_CSV = "precision_recall.csv"  # in each split's folder, for `dvc plots`
PER_IMAGE_DIR = Path("metrics/per_image")  # each split's per-image matching statistics, <split>.npz
MLFLOW_RUN_FILE = Path("metrics/mlflow_run.json")

STAGE_OUTPUTS: dict[str, dict[str, tuple[Path, ...]]] = {
    "prepare": {"outs": (DATASET_DIR,), "metrics": (DATA_METRICS_FILE,)},
    "train": {"outs": (MODELS_DIR,), "metrics": (TRAIN_LIVE_METRICS,), "plots": (TRAIN_LIVE_PLOTS,)},
    "evaluate": {"outs": (PLOTS_DIR, PER_IMAGE_DIR), "metrics": (EVAL_METRICS_FILE,)},
    "log": {"outs": (MLFLOW_RUN_FILE,)},
}

# The grid's reports
REPORTS_DIR = Path("reports")
DECISION_TEMPLATE = REPORTS_DIR / "templates" / "decision_template.md"
DECISION_FILE = REPORTS_DIR / "decision.md"
RUNS_CSV = REPORTS_DIR / "runs.csv"
CONFIG_CHART = REPORTS_DIR / "metric_by_config.png"
CURVES_CHART = REPORTS_DIR / "epoch_curves.png"
DVC_PLOTS_DIR = REPORTS_DIR / "dvc_plots"

# Shared state at the project root (git-ignored)
EMBEDDED_DB = Path("mlflow.db")  # the embedded MLflow tracking store
EMBEDDED_ARTIFACTS = Path("mlartifacts")  # artifacts beside a SQLite store: mlartifacts/<experiment>/
ULTRALYTICS_CONFIG_DIR = Path(".ultralytics")
WEIGHTS_DIR = Path("weights")  # pretrained weights, downloaded once
DOWNLOAD_CACHE_DIR = Path("data/cache")  # COCO128 downloaded once
TEMP_DIR = Path(".tmp")  # each stage's temporary folder, .tmp/<stage>/ (core/tempdir.py)
WARM_DIR = TEMP_DIR / "warm"  # the warm process's socket, its log and forks.log (core/warm.py)
DVC_TMP_DIR = Path(".dvc/tmp")  # DVC's own temporary state (git-ignored by DVC)
GRID_LOCK = DVC_TMP_DIR / "grid.lock"  # the running grid driver's pid (grid/lock.py)
GRID_PER_IMAGE_CACHE = TEMP_DIR / "grid-per-image"  # finished runs' per-image statistics and replicates, <run id>/
DVC_PLOTS_STAMP = TEMP_DIR / "grid-dvc-plots.json"  # what made reports/dvc_plots/ (grid/experiments.py plots_diff)
GRID_STOPPING = DVC_TMP_DIR / "grid-stopping.json"  # the experiments an interrupted grid stops (grid/experiments.py)
DVC_QUEUE_DIR = DVC_TMP_DIR / "exps" / "celery"  # DVC queue workers' logs, dvc-exp-worker-<k>.out (grid/workers.py)


def project_root() -> Path:
    """The user's project folder: `DVC_ROOT` inside a DVC stage (queued experiments run
    in a temporary copy, whose files are deleted afterwards), else the working directory."""
    return Path(os.environ.get("DVC_ROOT") or Path.cwd()).resolve()


def split_plots(split: str) -> Path:
    """The evaluate stage's plots of one split: plots/<split>/."""
    return PLOTS_DIR / split


def per_image_stats(split: str) -> Path:
    """The evaluate stage's per-image statistics of one split (yolo/uncertainty.py): metrics/per_image/<split>.npz."""
    return PER_IMAGE_DIR / f"{split}.npz"


def shared(path: Path) -> Path:
    """`path` at the project root, shared by every experiment (never inside DVC's temporary copy)."""
    return project_root() / path
