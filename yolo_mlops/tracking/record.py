"""Everything one experiment sends to MLflow, collected from the DVC outputs it produced."""

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from yolo_mlops.core import vocabulary as names
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.git import head_rev
from yolo_mlops.core.params import Params, read_yaml
from yolo_mlops.core.paths import (
    BEST_WEIGHTS,
    DATA_METRICS_FILE,
    DATA_YAML,
    DATASET_DIR,
    DVC_LOCK_FILE,
    EVAL_METRICS_FILE,
    LAST_WEIGHTS,
    PARAMS_FILE,
    PLOTS_DIR,
    RESULTS_CSV,
    RESULTS_PLOT,
    TRAIN_ARGS,
    TRAIN_LIVE_METRICS,
)
from yolo_mlops.yolo.history import read_history

UPSTREAM_STAGES = ("prepare", "train", "evaluate")
RESULT_STAGES = ("train", "evaluate")  # stages whose outputs are results, not inputs
TRACKED_PACKAGES = ("ultralytics", "torch", "torchvision", "mlflow", "dvc", "dvclive")


@dataclass(frozen=True)
class ExperimentRecord:
    """What the log stage sends: names follow MLflow's params / metrics / artifacts."""

    run_name: str
    fingerprint: str
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]
    history: list[dict[str, float]]  # index 0 = epoch 1 (MLflow step 1)
    artifacts: list[tuple[Path, str]]  # (local file or folder, artifact folder)
    weights: Path
    imgsz: int


def read_lock(path: Path = DVC_LOCK_FILE) -> dict[str, Any]:
    """The upstream stages' entries of dvc.lock, as DVC wrote them after running them."""
    if not path.is_file():
        raise PipelineError(f"{path}: missing; run the pipeline with `dvc repro` (not the stage by hand)")
    stages = (read_yaml(path) or {}).get("stages", {})
    missing = [stage for stage in UPSTREAM_STAGES if stage not in stages]
    if missing:
        raise PipelineError(f"{path}: no entry for stage(s) {', '.join(missing)}; run `dvc repro` first")
    return {stage: stages[stage] for stage in UPSTREAM_STAGES}


def fingerprint(lock: dict[str, Any], experiment_name: str) -> str:
    """Identity of an experiment, by content: the dataset (DVC's md5 of data/tiny_coco, not the
    text of `prepare.source`: COCO128 from its URL and the same bytes from a local zip are the same
    experiment) and the command, code and params of the stages that consume it, as hashed by DVC in
    dvc.lock. Results are left out (the weights' bytes differ from one training to the next even
    when every metric is the same), so logging the same experiment again, even after retraining
    it, finds its MLflow run instead of adding one."""
    results = {out["path"] for stage in RESULT_STAGES for out in lock[stage].get("outs", [])}
    inputs = {
        stage: {
            "cmd": lock[stage].get("cmd"),
            "params": lock[stage].get("params"),
            "deps": [dep for dep in lock[stage].get("deps", []) if dep["path"] not in results],
        }
        for stage in RESULT_STAGES
    }
    payload = json.dumps({"dataset": dataset_md5(lock), "inputs": inputs, "experiment": experiment_name},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def dataset_md5(lock: dict[str, Any]) -> str:
    """DVC's hash of data/tiny_coco, from the prepare stage's outputs in dvc.lock."""
    for out in lock["prepare"].get("outs", []):
        if Path(out["path"]) == DATASET_DIR:
            return str(out["md5"])
    raise PipelineError(f"{DVC_LOCK_FILE}: prepare stage has no output {DATASET_DIR}")


def git_commit() -> str:
    """The commit the stages run from, or `unknown` outside a git repository."""
    try:
        return head_rev(Path.cwd())
    except PipelineError:
        return "unknown"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in TRACKED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "absent"
    return versions


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; run the upstream stages with `dvc repro`") from None


def collect_record(params: Params) -> ExperimentRecord:
    """Gather the record from the files the upstream stages wrote (run from the project root)."""
    lock = read_lock()
    key = fingerprint(lock, params.mlflow.experiment_name)
    exp_name = os.environ.get("DVC_EXP_NAME", "")
    commit = git_commit()
    provenance = {
        names.DATASET_TAG: dataset_md5(lock),
        names.COMMIT_TAG: commit,
        names.EXP_NAME_TAG: exp_name or names.WORKSPACE,
        names.BASELINE_TAG: os.environ.get("DVC_EXP_BASELINE_REV", commit),
    }
    run_params = {name: str(value) for name, value in params.flat().items()} | provenance | {
        f"{names.VERSION_PARAM_PREFIX}{package}": value for package, value in library_versions().items()
    }
    tags = provenance | {names.FINGERPRINT_TAG: key, names.MLFLOW_COMMIT_TAG: commit}
    metrics = {}
    for stage, path in ((names.PREPARE, DATA_METRICS_FILE), (names.EVALUATE, EVAL_METRICS_FILE)):
        metrics |= {names.mlflow_metric(stage, name): value
                    for name, value in names.numbers(names.flatten(_read_json(path))).items()}
    history = [
        {names.history_metric(name): value for name, value in epoch.items()}
        for epoch in read_history(RESULTS_CSV)
    ]
    artifacts = [
        (DATA_YAML, names.DATASET_ARTIFACTS), (DATA_METRICS_FILE, names.DATASET_ARTIFACTS),
        (RESULTS_CSV, names.TRAIN_ARTIFACTS), (RESULTS_PLOT, names.TRAIN_ARTIFACTS),
        (TRAIN_ARGS, names.TRAIN_ARTIFACTS), (TRAIN_LIVE_METRICS, names.DVCLIVE_ARTIFACTS),
        (BEST_WEIGHTS, names.WEIGHTS_ARTIFACTS), (LAST_WEIGHTS, names.WEIGHTS_ARTIFACTS),
        (EVAL_METRICS_FILE, names.EVALUATE_ARTIFACTS), (PLOTS_DIR, names.PLOTS_ARTIFACTS),
        (PARAMS_FILE, names.DVC_ARTIFACTS), (DVC_LOCK_FILE, names.DVC_ARTIFACTS),
    ]
    absent = [str(path) for path, _ in artifacts if not path.exists()]
    if absent:
        raise PipelineError(f"log: missing output(s) {', '.join(absent)}; run the upstream stages with `dvc repro`")
    return ExperimentRecord(
        run_name=exp_name or f"{names.WORKSPACE}-{key[:8]}",
        fingerprint=key,
        params=run_params,
        tags=tags,
        metrics=metrics,
        history=history,
        artifacts=artifacts,
        weights=BEST_WEIGHTS,
        imgsz=params.train.imgsz,
    )
