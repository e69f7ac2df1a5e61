"""The DVC ↔ MLflow vocabulary: every name that links an experiment's DVC records (params.yaml,
metrics/*.json, `dvc exp show`) to its MLflow run, registered version and artifacts, both ways.

DVC names nested values `section.key` (`train.lr0`, `val.mAP50-95`); MLflow metric names are
`<stage>/<name>` with the dots of the DVC name turned into underscores (`evaluate/val_mAP50-95`)."""

from typing import Any

# Stages of dvc.yaml whose outputs reach MLflow, as metric prefixes and artifact folders.
PREPARE, TRAIN, EVALUATE = "prepare", "train", "evaluate"

# MLflow run tags (also version tags where noted).
EXP_NAME_TAG = "dvc.exp_name"  # the DVC experiment; `workspace` for a plain `dvc repro`
EXP_REV_TAG = "dvc.exp_rev"
BASELINE_TAG = "dvc.baseline_rev"
FINGERPRINT_TAG = "dvc.fingerprint"  # the experiment's identity (tracking/record.py)
DATASET_TAG = "dvc.dataset_md5"  # DVC's md5 of data/tiny_coco; also a run param and a version tag
COMMIT_TAG = "git.commit"  # also a run param and a version tag
MLFLOW_COMMIT_TAG = "mlflow.source.git.commit"  # MLflow's own, shown in the UI
LOG_STATUS_TAG = "yolo_mlops.log_status"  # `complete` once the log stage sent everything; `failed`
FAILURE_KEY_TAG = "yolo_mlops.failure_key"  # identity of a failed experiment's FAILED run
ERROR_TAG = "yolo_mlops.error"  # the failed experiment's error line
EVALUATION_UPLOADED_TAG = "yolo_mlops.evaluation_uploaded"  # sha256 of the metrics/eval.json whose files are uploaded
PREVIOUS_ATTEMPT_TAG = "yolo_mlops.previous_attempt_of"  # on an interrupted run: the id of the run that retried it
# MLflow's own source tags: the runs table's "Source" column shows `<project folder>:dvc.yaml`.
SOURCE_TYPE_TAG, SOURCE_TYPE = "mlflow.source.type", "PROJECT"
SOURCE_NAME_TAG = "mlflow.source.name"  # the project folder (DVC_ROOT, not the queue's temporary copy)
ENTRY_POINT_TAG, ENTRY_POINT = "mlflow.project.entryPoint", "dvc.yaml"
# The run's dataset input (the runs table's "Dataset" column): data/tiny_coco, DVC's md5 as its digest.
DATASET_SOURCE_TYPE = "dvc"
DATASET_CONTEXT_TAG, DATASET_CONTEXT = "mlflow.data.context", "training"
RAY_NODE_TAG = "ray.node_id"  # the Ray node a grid point ran on (python -m yolo_mlops.grid run --ray)
RAY_NODE_IP_TAG = "ray.node_ip"  # ... and that node's address
WORKSPACE = "workspace"
COMPLETE, FAILED = "complete", "failed"
VERSION_PARAM_PREFIX = "version."  # run params `version.<package>`

# MLflow experiment tag: the kind of experiment, in MLflow's own words (model training, not a GenAI app).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"

# Model Registry: aliases, and tags of a registered version.
CHAMPION, CHALLENGER = "champion", "challenger"
RUN_ID_TAG = "run_id"
PREVIOUS_CHAMPION_TAG = "previous_champion"
STAGE_TAG = "stage"  # Production / Staging / Archived, mirrored from the aliases
DECISION_TAG, REPORT_TAG = "decision", "decision_report"

# Artifact folders of a run, and the logged model's name.
DATASET_ARTIFACTS = PREPARE
TRAIN_ARTIFACTS = TRAIN
DVCLIVE_ARTIFACTS = f"{TRAIN}/dvclive"
WEIGHTS_ARTIFACTS = "weights"
EVALUATE_ARTIFACTS = EVALUATE
PLOTS_ARTIFACTS = f"{EVALUATE}/plots"
DVC_ARTIFACTS = "dvc"  # params.yaml and dvc.lock
DECISION_ARTIFACTS = "decision"
MODEL_NAME = "model"

# The splits of the dataset, and the metrics the evaluate stage writes for each (metrics/eval.json).
SPLITS = ("train", "val", "test")
EVAL_METRICS = ("mAP50", "mAP50-95", "precision", "recall", "f1")

# metrics/mlflow_run.json, the DVC side's link to the MLflow run: the key of the run id.
RUN_LINK_ID = "run_id"

# The hyper-parameters a run is described by (comparison, registered versions, report), and the
# metrics reported for each evaluated split.
HYPERPARAMETERS = ("train.model", "train.epochs", "train.imgsz", "train.lr0", "train.seed", "train.batch",
                   "train.optimizer")
REPORTED_METRICS = ("mAP50-95", "mAP50", "precision", "recall")  # also recorded per epoch, on val
REPORTED_SPLITS = ("val", "test")
DATA_PREFIX = "data."  # metrics/data.json values in the comparison: `data.test_images`


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings → `a.b.c` keys, as DVC names params and metrics (`dvc exp show`, `-S`)."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat |= flatten(value, name) if isinstance(value, dict) else {name: value}
    return flat


def numbers(values: dict[str, Any]) -> dict[str, float]:
    """The numeric values (booleans and text left out), as floats."""
    return {key: float(value) for key, value in values.items()
            if isinstance(value, int | float) and not isinstance(value, bool)}


def mlflow_metric(stage: str, name: str) -> str:
    """A stage's DVC metric name → its MLflow name: (evaluate, `val.mAP50-95`) → `evaluate/val_mAP50-95`."""
    return f"{stage}/{name.replace('.', '_')}"


def eval_metric(name: str) -> str:
    """`val.mAP50-95` (metrics/eval.json, `dvc exp show`, params `compare.rank_by`) → `evaluate/val_mAP50-95`."""
    return mlflow_metric(EVALUATE, name)


def data_metric(name: str) -> str:
    """`data.test_images` (the comparison's name of a metrics/data.json value) → `prepare/test_images`."""
    return f"{PREPARE}/{name.removeprefix(DATA_PREFIX)}"


def comparison_metric(mlflow_name: str) -> str | None:
    """The reverse of `eval_metric` and `data_metric`: an MLflow metric → its name in the comparison
    (`evaluate/val_mAP50` → `val.mAP50`, `prepare/test_images` → `data.test_images`); None for others."""
    stage, _, name = mlflow_name.partition("/")
    if stage == EVALUATE and "_" in name:
        split, metric = name.split("_", 1)
        return f"{split}.{metric}"
    if stage == PREPARE and name:
        return f"{DATA_PREFIX}{name}"
    return None


def history_of(name: str) -> str | None:
    """The per-epoch MLflow metric of a comparison name (`val.mAP50-95` → `train/val_mAP50-95`); None when
    training records no history of it (test metrics, f1)."""
    split, _, metric = name.partition(".")
    return history_metric(f"{split}/{metric}") if split == "val" and metric in REPORTED_METRICS else None


def history_metric(name: str) -> str:
    """A per-epoch name of dvclive (`val/mAP50`, `train/box_loss`, `lr/pg0`) → its MLflow name under the
    train stage (`train/val_mAP50`, `train/box_loss`, `train/lr_pg0`), logged with step = epoch."""
    return f"{TRAIN}/" + name.removeprefix(f"{TRAIN}/").replace("/", "_")
