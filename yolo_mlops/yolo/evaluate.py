"""Evaluate the trained model on the requested splits and lay out its plots for DVC and users."""

import csv
import shutil
from pathlib import Path
from typing import Any

from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.params import EvaluateParams, Params
from yolo_mlops.core.paths import PLOTS_DIR, PLOTS_RESULTS, PR_CURVE_CSV, split_plots
from yolo_mlops.core.vocabulary import CLASS_METRICS, CLASSES_KEY
from yolo_mlops.yolo.model import resolve_device, ultralytics

CURVE_POINTS = 101
# Ultralytics' plot names → the names users know from the course and older releases.
PLOT_NAMES = {
    "BoxPR_curve.png": "PR_curve.png",
    "BoxF1_curve.png": "F1_curve.png",
    "BoxP_curve.png": "P_curve.png",
    "BoxR_curve.png": "R_curve.png",
    "confusion_matrix.png": "confusion_matrix.png",
    "confusion_matrix_normalized.png": "confusion_matrix_normalized.png",
}


def class_results(results: Any) -> dict[str, dict[str, float]]:
    """AP50-95, AP50, precision and recall of each class with a box in the split, by class name."""
    per_class = {}
    for index, class_id in enumerate(results.box.ap_class_index):
        precision, recall, ap50, ap = results.box.class_result(index)
        values = {"mAP50-95": ap, "mAP50": ap50, "precision": precision, "recall": recall}
        per_class[str(results.names[int(class_id)])] = {name: float(values[name]) for name in CLASS_METRICS}
    return per_class


def evaluate(model: Any, data_yaml: Path, split: str, params: EvaluateParams, imgsz: int, batch: int,
             device: str, run_dir: Path) -> tuple[dict[str, Any], dict[str, list[float]], Path]:
    """Validate Ultralytics' `model` on one split: (metrics, all classes and per class under `classes`; PR curve
    points, averaged over the classes as Ultralytics' "all classes" curve; folder with the plots)."""
    results = model.val(
        data=str(data_yaml), split=split, imgsz=imgsz, batch=batch, conf=params.conf, iou=params.iou,
        device=device, plots=True, project=str(run_dir.parent), name=run_dir.name, exist_ok=True,
    )
    precision, recall = float(results.box.mp), float(results.box.mr)
    metrics = {
        "mAP50": float(results.box.map50),
        "mAP50-95": float(results.box.map),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        CLASSES_KEY: class_results(results),
    }
    recall_grid, precision_by_class = results.box.curves_results[0][:2]
    curve = {"recall": [float(x) for x in recall_grid],
             "precision": [float(y) for y in precision_by_class.mean(axis=0)]} \
        if len(precision_by_class) else {"recall": [], "precision": []}
    return metrics, curve, Path(results.save_dir)


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {name: _rounded(value) if isinstance(value, dict) else round(value, 6) for name, value in values.items()}


def write_curve(curve: dict[str, list[float]], target: Path) -> None:
    """The PR curve as CSV for `dvc plots`, thinned to about CURVE_POINTS points."""
    count = len(curve["recall"])
    stride = max(1, count // (CURVE_POINTS - 1))
    indices = sorted(set(range(0, count, stride)) | ({count - 1} if count else set()))
    with open(target, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["recall", "precision"])
        writer.writerows([round(curve["recall"][i], 6), round(curve["precision"][i], 6)] for i in indices)


def evaluate_splits(params: Params, weights: Path, data_yaml: Path, training_plot: Path, plots_dir: Path,
                    scratch: Path) -> dict[str, dict[str, Any]]:
    """Metrics per split; writes `plots_dir/results.png` and `plots_dir/<split>/` images and curve."""
    if not weights.is_file():
        raise PipelineError(f"{weights}: missing; run the train stage first (`dvc repro train`)")
    device = resolve_device(params.train.device)
    shutil.copy2(training_plot, plots_dir / PLOTS_RESULTS.relative_to(PLOTS_DIR))
    model, results = ultralytics().YOLO(str(weights)), {}  # loaded once, validated on each split
    for split in params.evaluate.splits:
        metrics, curve, save_dir = evaluate(
            model, data_yaml, split, params.evaluate, params.train.imgsz, params.train.batch, device, scratch / split
        )
        results[split] = _rounded(metrics)
        split_dir = plots_dir / split_plots(split).relative_to(PLOTS_DIR)
        split_dir.mkdir()
        for produced, usual in PLOT_NAMES.items():
            if (save_dir / produced).is_file():
                shutil.copy2(save_dir / produced, split_dir / usual)
        write_curve(curve, split_dir / PR_CURVE_CSV)
    return results
