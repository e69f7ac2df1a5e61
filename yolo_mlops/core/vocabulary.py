"""The DVC ↔ MLflow vocabulary: every name that links an experiment's DVC records (params.yaml,
metrics/*.json, `dvc exp show`) to its MLflow run, registered version and artifacts, both ways.

DVC names nested values `section.key` (`train.lr0`, `val.mAP50-95`); MLflow metric names are
`<stage>/<name>` with the dots of the DVC name turned into underscores (`evaluate/val_mAP50-95`)."""

import re
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
EVALUATION_UPLOADED_TAG = "yolo_mlops.evaluation_uploaded"  # sha256 of the evaluation whose files are uploaded
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
# The team's roles on a tracking server with sign-in (tracking/team.py, `make user`).
VIEWER, MEMBER, MAINTAINER = "viewer", "member", "maintainer"
REGISTERED_MODEL_DESCRIPTION = "YOLO detector from the DVC pipeline; each version says why it was promoted"
RUN_ID_TAG = "run_id"
PREVIOUS_CHAMPION_TAG = "previous_champion"
STAGE_TAG = "stage"  # Production / Staging / Archived, mirrored from the aliases
DECISION_TAG, REPORT_TAG = "decision", "decision_report"

# Artifact folders of a run, and the logged model's name.
DATASET_ARTIFACTS = PREPARE
DATASET_TABLE = f"{DATASET_ARTIFACTS}/dataset_statistics.json"  # per split and class, an MLflow table artifact
DATASET_PROFILE_CLASSES = "classes"  # the dataset input's profile: the class names, in the dataset's order
TRAIN_ARTIFACTS = TRAIN
DVCLIVE_ARTIFACTS = f"{TRAIN}/dvclive"
WEIGHTS_ARTIFACTS = "weights"
EVALUATE_ARTIFACTS = EVALUATE
PLOTS_ARTIFACTS = f"{EVALUATE}/plots"
PER_IMAGE_ARTIFACTS = f"{EVALUATE}/per_image"  # metrics/per_image/<split>.npz
DVC_ARTIFACTS = "dvc"  # params.yaml and dvc.lock
DECISION_ARTIFACTS = "decision"
MODEL_NAME = "model"

# The splits of the dataset, and the metrics the evaluate stage writes for each (metrics/eval.json).
SPLITS = ("train", "val", "test")
EVAL_METRICS = ("mAP50", "mAP50-95", "precision", "recall", "f1")
# Per-class results beside each split's all-class figures, in metrics/data.json and metrics/eval.json:
# `val.classes.person.mAP50-95` (DVC) ↔ `evaluate.val.classes.person.mAP50-95` (MLflow, `mlflow_metric`).
CLASSES_KEY = "classes"
CLASS_METRICS = ("mAP50-95", "mAP50", "precision", "recall")
# The 95 % interval over the test images of each of CLASS_METRICS, beside it: `test.mAP50-95_low`,
# `test.classes.car.mAP50_high` (DVC) ↔ `evaluate/test_mAP50-95_low`, `evaluate.test.classes.car.mAP50_high` (MLflow).
INTERVAL_BOUNDS = ("low", "high")

# metrics/mlflow_run.json, the DVC side's link to the MLflow run: the key of the run id.
RUN_LINK_ID = "run_id"

# The hyper-parameters a run is described by (comparison, registered versions, report), and the
# metrics reported for each evaluated split.
HYPERPARAMETERS = ("train.model", "train.epochs", "train.imgsz", "train.lr0", "train.seed", "train.batch",
                   "train.optimizer")
REPORTED_METRICS = ("mAP50-95", "mAP50", "precision", "recall")  # also recorded per epoch, on val
REPORTED_SPLITS = ("val", "test")
DATA_PREFIX = "data."  # metrics/data.json counts (the dataset input's profile) in the comparison: `data.test_images`


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
    """A stage's DVC metric name → its MLflow name: (evaluate, `val.mAP50-95`) → `evaluate/val_mAP50-95`; the
    characters MLflow refuses in a name become `_` too. A per-class result keeps its DVC name after the stage,
    without a `/`: (evaluate, `val.classes.person.mAP50`) → `evaluate.val.classes.person.mAP50`, which the MLflow UI
    charts in its own section after the stages' (it groups charts by the name before the last `/`)."""
    parts = name.split(".")
    if len(parts) >= 4 and parts[1] == CLASSES_KEY:
        return f"{stage}." + re.sub(r"[^\w\- .:]", "_", name)
    return f"{stage}/" + re.sub(r"[^\w\- :]", "_", name)


def eval_metric(name: str) -> str:
    """`val.mAP50-95` (metrics/eval.json, `dvc exp show`, params `compare.rank_by`) → `evaluate/val_mAP50-95`."""
    return mlflow_metric(EVALUATE, name)


def class_metric(split: str, class_name: str, metric: str) -> str:
    """A per-class result's DVC name (metrics/eval.json, `dvc exp show`): `val.classes.person.mAP50-95`."""
    return f"{split}.{CLASSES_KEY}.{class_name}.{metric}"


def interval_key(metric: str, bound: str) -> str:
    """The name of one bound of a metric's interval, beside the metric: (`mAP50-95`, `low`) → `mAP50-95_low`."""
    return f"{metric}_{bound}"


def class_results(metrics: dict[str, float], split: str) -> dict[str, dict[str, float]]:
    """The per-class results of one split, from `split.metric` names: class → metric → value."""
    prefix, results = f"{split}.{CLASSES_KEY}.", {}
    for name, value in metrics.items():
        if name.startswith(prefix):
            class_name, _, metric = name.removeprefix(prefix).rpartition(".")
            results.setdefault(class_name, {})[metric] = value
    return results


def comparison_metric(mlflow_name: str) -> str | None:
    """The reverse of `eval_metric`: an MLflow metric → its name in the comparison (`evaluate/val_mAP50` →
    `val.mAP50`, `evaluate/val_classes_person_mAP50` → `val.classes.person.mAP50`); None for others."""
    per_class = mlflow_name.removeprefix(f"{EVALUATE}.")
    if per_class != mlflow_name and per_class.split(".")[1:2] == [CLASSES_KEY]:
        return per_class
    stage, _, name = mlflow_name.partition("/")
    if stage == EVALUATE and "_" in name:
        split, metric = name.split("_", 1)
        return f"{split}.{metric}"
    return None


def data_value(name: str) -> str:
    """A metrics/data.json count (`test.images`, `test.classes.person.boxes`) under its comparison name:
    `data.test_images`, `data.test_classes_person_boxes`."""
    return f"{DATA_PREFIX}{name.replace('.', '_')}"


def profile_metrics(profile: dict[str, Any]) -> dict[str, float]:
    """The dataset input's profile (metrics/data.json's counts) under the comparison's names (`data_value`)."""
    return {data_value(key): value for key, value in numbers(flatten(profile)).items()}


def history_of(name: str) -> str | None:
    """The per-epoch MLflow metric of a comparison name (`val.mAP50-95` → `train/val_mAP50-95`); None when
    training records no history of it (test metrics, f1)."""
    split, _, metric = name.partition(".")
    return history_metric(f"{split}/{metric}") if split == "val" and metric in REPORTED_METRICS else None


def history_metric(name: str) -> str:
    """A per-epoch name of dvclive (`val/mAP50`, `train/box_loss`, `lr/pg0`) → its MLflow name under the
    train stage (`train/val_mAP50`, `train/box_loss`, `train/lr_pg0`), logged with step = epoch."""
    return f"{TRAIN}/" + name.removeprefix(f"{TRAIN}/").replace("/", "_")
