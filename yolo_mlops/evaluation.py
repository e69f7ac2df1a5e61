"""Evaluate the trained model on the requested splits and lay out its plots for DVC and users."""

import csv
import shutil
from pathlib import Path

from yolo_mlops.errors import PipelineError
from yolo_mlops.params import Params
from yolo_mlops.yolo import PLOT_NAMES, evaluate, resolve_device

CURVE_POINTS = 101


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
                    scratch: Path) -> dict[str, dict[str, float]]:
    """Metrics per split; writes `plots_dir/results.png` and `plots_dir/<split>/` images and curve."""
    if not weights.is_file():
        raise PipelineError(f"{weights}: missing; run the train stage first (`dvc repro train`)")
    device = resolve_device(params.train.device)
    shutil.copy2(training_plot, plots_dir / "results.png")
    results = {}
    for split in params.evaluate.splits:
        metrics, curve, save_dir = evaluate(
            weights, data_yaml, split, params.evaluate, params.train.imgsz, params.train.batch, device, scratch / split
        )
        results[split] = {name: round(value, 6) for name, value in metrics.items()}
        split_dir = plots_dir / split
        split_dir.mkdir()
        for produced, usual in PLOT_NAMES.items():
            if (save_dir / produced).is_file():
                shutil.copy2(save_dir / produced, split_dir / usual)
        write_curve(curve, split_dir / "precision_recall.csv")
    return results
