"""Everything one experiment sends to MLflow, collected from the DVC outputs it produced."""

import hashlib
import json
import os
import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from yolo_mlops.core import vocabulary
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.git import head_rev
from yolo_mlops.core.params import Params, read_yaml
from yolo_mlops.core.paths import (
    BEST_WEIGHTS,
    DATA_METRICS_FILE,
    DATA_YAML,
    DATASET_DIR,
    DVC_LOCK_FILE,
    DVC_YAML,
    EVAL_METRICS_FILE,
    LAST_WEIGHTS,
    PARAMS_FILE,
    PER_IMAGE_DIR,
    PLOTS_DIR,
    RESULTS_CSV,
    RESULTS_PLOT,
    STAGE_OUTPUTS,
    TRAIN_ARGS,
    TRAIN_LIVE_METRICS,
    project_root,
)
from yolo_mlops.yolo.history import read_history

# What the evaluate stage sends when it finishes, and the log stage again if it could not.
EVALUATE_ARTIFACTS = ((EVAL_METRICS_FILE, vocabulary.EVALUATE_ARTIFACTS), (PLOTS_DIR, vocabulary.PLOTS_ARTIFACTS),
                      (PER_IMAGE_DIR, vocabulary.PER_IMAGE_ARTIFACTS))

RESULT_STAGES = ("train", "evaluate")  # the stages that make the results, after prepare
RESULT_SECTIONS = ("train", "evaluate", "mlflow")  # the params they run with (prepare's: see the dataset)
SKIPPED_PARTS = ("__pycache__", ".pyc")
TRACKED_PACKAGES = ("ultralytics", "torch", "torchvision", "mlflow", "dvc", "dvclive")


@dataclass(frozen=True)
class RunHeader:
    """What the experiment's run is opened with, all known before training starts."""

    run_name: str
    fingerprint: str
    params: dict[str, str]
    tags: dict[str, str]
    dataset_md5: str  # the digest of the run's dataset input
    dataset_profile: dict[str, Any]  # the dataset input's profile: class names, counts per split and class
    dataset_table: dict[str, list[Any]]  # metrics/data.json per split and class: the run's table artifact


@dataclass(frozen=True)
class ExperimentRecord:
    """What the log stage sends: names follow MLflow's params / metrics / artifacts."""

    header: RunHeader
    metrics: dict[str, float]
    history: list[dict[str, float]]  # index 0 = epoch 1 (MLflow step 1)
    artifacts: list[tuple[Path, str]]  # (local file or folder, artifact folder)
    weights: Path
    imgsz: int


def dataset_md5(path: Path = DVC_LOCK_FILE) -> str:
    """DVC's hash of data/tiny_coco, from the prepare stage's entry in dvc.lock (DVC writes it after each
    stage, so every stage after prepare finds it)."""
    if not path.is_file():
        raise PipelineError(f"{path}: missing; run the pipeline with `dvc repro` (not the stage by hand)")
    prepare = ((read_yaml(path) or {}).get("stages") or {}).get("prepare") or {}
    for out in prepare.get("outs", []):
        if Path(out["path"]) == DATASET_DIR:
            return str(out["md5"])
    raise PipelineError(f"{path}: no entry for the prepare stage's output {DATASET_DIR}; run `dvc repro` first")


def _files(path: Path) -> list[Path]:
    """The files of one dependency in dvc.yaml, in a stable order, without Python's caches."""
    if not path.exists():
        raise PipelineError(f"{DVC_YAML}: dependency {path} does not exist")
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    return [file for file in files if file.is_file() and not any(part.endswith(SKIPPED_PARTS) for part in file.parts)]


def code_digest() -> str:
    """Hash of what the train and evaluate stages run: their commands and the code dvc.yaml says they
    depend on (other stages' outputs, the data and the weights, are left out)."""
    stages = (read_yaml(DVC_YAML) or {}).get("stages") or {}
    produced = {str(path) for outputs in STAGE_OUTPUTS.values() for path in outputs["outs"]}
    digest = hashlib.sha256()
    for stage in RESULT_STAGES:
        if stage not in stages:
            raise PipelineError(f"{DVC_YAML}: no stage {stage!r}")
        digest.update(str(stages[stage].get("cmd")).encode())
        for dep in sorted(stages[stage].get("deps", [])):
            for file in [] if dep in produced else _files(Path(dep)):
                digest.update(f"\0{file.as_posix()}\0".encode() + file.read_bytes())
    return digest.hexdigest()


def fingerprint(params: Params, dataset: str, code: str) -> str:
    """Identity of an experiment, by content, known before training starts, so that every stage finds
    the same run: the dataset (DVC's md5 of data/tiny_coco, not the text of `prepare.source`: COCO128
    from its URL and the same bytes from a local zip are the same experiment), the params the train and
    evaluate stages run with, their code, and the MLflow experiment. Results are left out (the weights'
    bytes differ from one training to the next), so logging the same experiment again finds its run."""
    settings = {key: value for key, value in params.flat().items() if key.split(".")[0] in RESULT_SECTIONS}
    payload = json.dumps({"dataset": dataset, "params": settings, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


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


def dataset_names() -> list[str]:
    """The prepared dataset's class names, in its order (data/tiny_coco/data.yaml)."""
    return [str(name) for _, name in sorted(((read_yaml(DATA_YAML) or {}).get("names") or {}).items())]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path}: missing; run the upstream stages with `dvc repro`") from None


def stage_metrics(stage: str, path: Path) -> dict[str, float]:
    """A stage's metrics file (metrics/data.json, metrics/eval.json) under the MLflow names of its numbers."""
    return {vocabulary.mlflow_metric(stage, name): value
            for name, value in vocabulary.numbers(vocabulary.flatten(_read_json(path))).items()}


def dataset_profile(statistics: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    """The dataset input's profile: its class names, and the counts of metrics/data.json per split and per class
    (images, boxes, COCO's small / medium / large boxes); the box size summaries stay in the table artifact."""
    counts = {split: {key: value for key, value in values.items()
                      if not isinstance(value, dict) or key == vocabulary.CLASSES_KEY}
              for split, values in statistics.items() if split in vocabulary.SPLITS}
    return {vocabulary.DATASET_PROFILE_CLASSES: class_names, **counts}


def dataset_table(statistics: dict[str, Any]) -> dict[str, list[Any]]:
    """metrics/data.json as a table, one row per split and class (`all` first): the run's table artifact."""
    rows = []
    for split in vocabulary.SPLITS:
        values = statistics.get(split, {})
        per_class = {"all": values, **values.get(vocabulary.CLASSES_KEY, {})}
        for name, counts in per_class.items():
            own = {key: value for key, value in counts.items() if key != vocabulary.CLASSES_KEY}
            rows.append({"split": split, "class": name} | vocabulary.numbers(vocabulary.flatten(own)))
    columns = list(dict.fromkeys(column for row in rows for column in row))
    return {column: [row.get(column) for row in rows] for column in columns}


def run_header(params: Params) -> RunHeader:
    """The run's name, identity, params and tags, from params.yaml, dvc.lock's dataset hash and the code (run
    from the project root, after the prepare stage)."""
    dataset, statistics = dataset_md5(), _read_json(DATA_METRICS_FILE)
    key = fingerprint(params, dataset, code_digest())
    exp_name = os.environ.get("DVC_EXP_NAME", "")
    commit = git_commit()
    provenance = {
        vocabulary.DATASET_TAG: dataset,
        vocabulary.COMMIT_TAG: commit,
        vocabulary.EXP_NAME_TAG: exp_name or vocabulary.WORKSPACE,
        vocabulary.BASELINE_TAG: os.environ.get("DVC_EXP_BASELINE_REV", commit),
    }
    run_params = {name: str(value) for name, value in params.flat().items()} | provenance | {
        f"{vocabulary.VERSION_PARAM_PREFIX}{package}": value for package, value in library_versions().items()
    }
    tags = provenance | {
        vocabulary.FINGERPRINT_TAG: key, vocabulary.MLFLOW_COMMIT_TAG: commit,
        vocabulary.SOURCE_TYPE_TAG: vocabulary.SOURCE_TYPE,
        vocabulary.SOURCE_NAME_TAG: str(project_root()), vocabulary.ENTRY_POINT_TAG: vocabulary.ENTRY_POINT,
    }
    return RunHeader(
        run_name=exp_name or f"{vocabulary.WORKSPACE}-{key[:8]}",
        fingerprint=key,
        params=run_params,
        tags=tags,
        dataset_md5=dataset,
        dataset_profile=dataset_profile(statistics, dataset_names()),
        dataset_table=dataset_table(statistics),
    )


def collect_record(params: Params) -> ExperimentRecord:
    """Gather the record from the files the upstream stages wrote (run from the project root)."""
    header = run_header(params)
    history = [
        {vocabulary.history_metric(name): value for name, value in epoch.items()}
        for epoch in read_history(RESULTS_CSV)
    ]
    artifacts = [
        (DATA_YAML, vocabulary.DATASET_ARTIFACTS), (DATA_METRICS_FILE, vocabulary.DATASET_ARTIFACTS),
        (RESULTS_CSV, vocabulary.TRAIN_ARTIFACTS), (RESULTS_PLOT, vocabulary.TRAIN_ARTIFACTS),
        (TRAIN_ARGS, vocabulary.TRAIN_ARTIFACTS), (TRAIN_LIVE_METRICS, vocabulary.DVCLIVE_ARTIFACTS),
        (LAST_WEIGHTS, vocabulary.WEIGHTS_ARTIFACTS),  # best.pt goes to MLflow once: inside the logged model
        *EVALUATE_ARTIFACTS,
        (PARAMS_FILE, vocabulary.DVC_ARTIFACTS), (DVC_LOCK_FILE, vocabulary.DVC_ARTIFACTS),
    ]
    absent = [str(path) for path in (BEST_WEIGHTS, *(path for path, _ in artifacts)) if not path.exists()]
    if absent:
        raise PipelineError(f"log: missing output(s) {', '.join(absent)}; run the upstream stages with `dvc repro`")
    return ExperimentRecord(
        header=header,
        metrics=stage_metrics(vocabulary.EVALUATE, EVAL_METRICS_FILE),
        history=history,
        artifacts=artifacts,
        weights=BEST_WEIGHTS,
        imgsz=params.train.imgsz,
    )
