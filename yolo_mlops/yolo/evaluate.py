"""Evaluate the trained model on the requested splits and lay out its plots for DVC and users."""

import csv
import math
import os
import shutil
from pathlib import Path
from typing import Any

from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.params import EvaluateParams, Params
from yolo_mlops.core.paths import PER_IMAGE_DIR, PLOTS_DIR, PLOTS_RESULTS, PR_CURVE_CSV, per_image_stats, split_plots
from yolo_mlops.core.vocabulary import CLASS_METRICS, CLASSES_KEY, INTERVAL_BOUNDS, interval_key
from yolo_mlops.yolo.model import resolve_device, ultralytics
from yolo_mlops.yolo.uncertainty import BOOTSTRAP_SEED, ImageStats, collect, interval, replicates, save_image_stats

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


def recording_validator() -> type:
    """Ultralytics' detection validator, also keeping each image's matching statistics (the true-positive flags,
    confidences and classes it gives ap_per_class, image by image) as `image_stats` on the metrics it returns."""
    ultralytics()
    from ultralytics.models.yolo.detect import DetectionValidator

    class RecordingValidator(DetectionValidator):
        def init_metrics(self, model: Any) -> None:
            super().init_metrics(model)
            self.image_files: list[str] = []

        def update_metrics(self, preds: list[dict[str, Any]], batch: dict[str, Any]) -> None:
            super().update_metrics(preds, batch)  # one entry per image in self.metrics.stats
            self.image_files.extend(batch["im_file"][:len(preds)])

        def get_stats(self) -> dict[str, Any]:
            stats, root = self.metrics.stats, os.path.commonpath([os.path.dirname(f) for f in self.image_files])
            self.metrics.image_stats = collect(
                [Path(os.path.relpath(f, root)).as_posix() for f in self.image_files],
                [str(self.names[i]) for i in range(len(self.names))],
                stats["tp"], stats["conf"], stats["pred_cls"], stats["target_cls"])
            return super().get_stats()

    return RecordingValidator


def with_intervals(metrics: dict[str, Any], stats: ImageStats, resamples: int) -> dict[str, Any]:
    """`metrics` with the 95 % bootstrap interval of each of CLASS_METRICS beside it (`mAP50-95_low`, ...,
    per class too when there are several); bounds that no resample gives (a class never drawn) are left out."""
    if not resamples:
        return metrics
    result = {**metrics, CLASSES_KEY: {name: dict(values) for name, values in metrics[CLASSES_KEY].items()}}
    for name, values in replicates(stats, resamples, BOOTSTRAP_SEED).items():
        class_name, _, metric = name.removeprefix(f"{CLASSES_KEY}.").rpartition(".")  # class names may hold dots
        target = result[CLASSES_KEY][class_name] if class_name else result
        for bound, value in zip(INTERVAL_BOUNDS, interval(values), strict=True):
            if math.isfinite(value):
                target[interval_key(metric, bound)] = value
    return result


def evaluate(model: Any, data_yaml: Path, split: str, params: EvaluateParams, imgsz: int, batch: int,
             device: str, run_dir: Path) -> tuple[dict[str, Any], dict[str, list[float]], Path, ImageStats]:
    """Validate Ultralytics' `model` on one split: (metrics, all classes and per class under `classes`, with
    their intervals; PR curve points, averaged over the classes as Ultralytics' "all classes" curve; folder with
    the plots; each image's matching statistics)."""
    results = model.val(
        validator=recording_validator(),
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
    stats = results.image_stats
    return with_intervals(metrics, stats, params.bootstrap), curve, Path(results.save_dir), stats


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
                    per_image_dir: Path, tempdir: Path) -> dict[str, dict[str, Any]]:
    """Metrics per split; writes `plots_dir/results.png`, `plots_dir/<split>/` images and curve, and
    `per_image_dir/<split>.npz`."""
    if not weights.is_file():
        raise PipelineError(f"{weights}: missing; run the train stage first (`dvc repro train`)")
    device = resolve_device(params.train.device)
    shutil.copy2(training_plot, plots_dir / PLOTS_RESULTS.relative_to(PLOTS_DIR))
    model, results = ultralytics().YOLO(str(weights)), {}  # loaded once, validated on each split
    for split in params.evaluate.splits:
        metrics, curve, save_dir, stats = evaluate(
            model, data_yaml, split, params.evaluate, params.train.imgsz, params.train.batch, device, tempdir / split
        )
        results[split] = _rounded(metrics)
        save_image_stats(stats, per_image_dir / per_image_stats(split).relative_to(PER_IMAGE_DIR))
        split_dir = plots_dir / split_plots(split).relative_to(PLOTS_DIR)
        split_dir.mkdir()
        for produced, usual in PLOT_NAMES.items():
            if (save_dir / produced).is_file():
                shutil.copy2(save_dir / produced, split_dir / usual)
        write_curve(curve, split_dir / PR_CURVE_CSV)
    return results
