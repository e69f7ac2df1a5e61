"""Everything one experiment sends to MLflow, collected from the DVC outputs it produced."""

import hashlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml

from yolo_mlops.errors import PipelineError
from yolo_mlops.history import read_history
from yolo_mlops.params import Params
from yolo_mlops.paths import (
    DATA_METRICS_FILE,
    DATASET_DIR,
    DVC_LOCK_FILE,
    EVAL_METRICS_FILE,
    MODELS_DIR,
    PARAMS_FILE,
    PLOTS_DIR,
    TRAIN_LIVE_DIR,
)

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
    try:
        stages = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages", {})
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; run the pipeline with `dvc repro` (not the stage by hand)") from None
    missing = [stage for stage in UPSTREAM_STAGES if stage not in stages]
    if missing:
        raise PipelineError(f"{path}: no entry for stage(s) {', '.join(missing)}; run `dvc repro` first")
    return {stage: stages[stage] for stage in UPSTREAM_STAGES}


def fingerprint(lock: dict[str, Any], experiment_name: str) -> str:
    """Identity of an experiment: command, code, data and params of every upstream stage, as
    hashed by DVC in dvc.lock. Results are left out (the weights' bytes differ from one
    training to the next even when every metric is the same), so logging the same experiment
    again, even after retraining it, finds its MLflow run instead of adding one."""
    results = {out["path"] for stage in RESULT_STAGES for out in lock[stage].get("outs", [])}
    inputs = {
        stage: {
            "cmd": entry.get("cmd"),
            "params": entry.get("params"),
            "deps": [dep for dep in entry.get("deps", []) if dep["path"] not in results],
        }
        for stage, entry in lock.items()
    }
    payload = json.dumps({"inputs": inputs, "experiment": experiment_name}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def dataset_md5(lock: dict[str, Any]) -> str:
    """DVC's hash of data/tiny_coco, from the prepare stage's outputs in dvc.lock."""
    for out in lock["prepare"].get("outs", []):
        if Path(out["path"]) == DATASET_DIR:
            return str(out["md5"])
    raise PipelineError(f"{DVC_LOCK_FILE}: prepare stage has no output {DATASET_DIR}")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in TRACKED_PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "absent"
    return versions


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested JSON numbers → {'a_b_c': value} (booleans and text are skipped)."""
    flat: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}_{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat |= flatten(value, name)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def history_metric_name(name: str) -> str:
    """dvclive / results.csv name → MLflow name under the train stage: val/mAP50 → train/val_mAP50."""
    return "train/" + name.removeprefix("train/").replace("/", "_")


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
        "dvc.dataset_md5": dataset_md5(lock),
        "git.commit": commit,
        "dvc.exp_name": exp_name or "workspace",
        "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", commit),
    }
    run_params = {name: str(value) for name, value in params.flat().items()} | provenance | {
        f"version.{package}": value for package, value in library_versions().items()
    }
    tags = provenance | {"dvc.fingerprint": key, "mlflow.source.git.commit": commit}
    metrics = {f"prepare/{name}": value for name, value in flatten(_read_json(DATA_METRICS_FILE)).items()}
    metrics |= {f"evaluate/{name}": value for name, value in flatten(_read_json(EVAL_METRICS_FILE)).items()}
    history = [
        {history_metric_name(name): value for name, value in epoch.items()}
        for epoch in read_history(MODELS_DIR / "results.csv")
    ]
    artifacts = [
        (DATASET_DIR / "data.yaml", "prepare"), (DATA_METRICS_FILE, "prepare"),
        (MODELS_DIR / "results.csv", "train"), (MODELS_DIR / "results.png", "train"),
        (MODELS_DIR / "args.yaml", "train"), (TRAIN_LIVE_DIR / "metrics.json", "train/dvclive"),
        (MODELS_DIR / "best.pt", "weights"), (MODELS_DIR / "last.pt", "weights"),
        (EVAL_METRICS_FILE, "evaluate"), (PLOTS_DIR, "evaluate/plots"),
        (PARAMS_FILE, "dvc"), (DVC_LOCK_FILE, "dvc"),
    ]
    absent = [str(path) for path, _ in artifacts if not path.exists()]
    if absent:
        raise PipelineError(f"log: missing output(s) {', '.join(absent)}; run the upstream stages with `dvc repro`")
    return ExperimentRecord(
        run_name=exp_name or f"workspace-{key[:8]}",
        fingerprint=key,
        params=run_params,
        tags=tags,
        metrics=metrics,
        history=history,
        artifacts=artifacts,
        weights=MODELS_DIR / "best.pt",
        imgsz=params.train.imgsz,
    )
