"""DVC stage `evaluate`: models/best.pt on each split → metrics/eval.json (with intervals over the images),
plots/ and metrics/per_image/, also sent to the experiment's MLflow run."""

from typing import Any

from yolo_mlops.core.atomic import atomic_dir, write_json
from yolo_mlops.core.entry import run_main
from yolo_mlops.core.params import load_params
from yolo_mlops.core.paths import BEST_WEIGHTS, DATASET_DIR, EVAL_METRICS_FILE, PER_IMAGE_DIR, PLOTS_DIR, RESULTS_PLOT
from yolo_mlops.core.tempdir import stage_tempdir
from yolo_mlops.core.vocabulary import CLASSES_KEY, INTERVAL_BOUNDS, interval_key
from yolo_mlops.tracking.live import tracked_evaluation
from yolo_mlops.yolo.dataset import stage_dataset
from yolo_mlops.yolo.evaluate import evaluate_splits


def main() -> None:
    params = load_params()
    with tracked_evaluation():
        with stage_tempdir("evaluate") as folder, atomic_dir(PLOTS_DIR) as plots, \
                atomic_dir(PER_IMAGE_DIR) as per_image:
            data_yaml = stage_dataset(DATASET_DIR, folder)
            results = evaluate_splits(params, BEST_WEIGHTS, data_yaml, RESULTS_PLOT, plots, per_image, folder / "val")
        write_json(EVAL_METRICS_FILE, results)
    for split, metrics in results.items():
        print(f"evaluate: {split}: {_figures(metrics)}")
        for class_name, values in metrics[CLASSES_KEY].items():
            print(f"evaluate: {split}: {class_name}: {_figures(values)}")


def _figures(metrics: dict[str, Any]) -> str:
    """`mAP50-95 0.1234 [0.0800, 0.1700], ...`: each figure with its 95 % interval, when it has one."""
    figures = []
    for name, value in metrics.items():
        bounds = [metrics.get(interval_key(name, bound)) for bound in INTERVAL_BOUNDS]
        if name != CLASSES_KEY and name.rpartition("_")[2] not in INTERVAL_BOUNDS:
            figures.append(f"{name} {value:.4f}" + (" [{:.4f}, {:.4f}]".format(*bounds) if None not in bounds else ""))
    return ", ".join(figures)


if __name__ == "__main__":
    run_main(main)
