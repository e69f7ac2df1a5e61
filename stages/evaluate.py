"""DVC stage `evaluate`: models/best.pt on each split → metrics/eval.json and plots/, also sent to the
experiment's MLflow run."""

from yolo_mlops.core.atomic import atomic_dir, write_json
from yolo_mlops.core.entry import run_main
from yolo_mlops.core.params import load_params
from yolo_mlops.core.paths import BEST_WEIGHTS, DATASET_DIR, EVAL_METRICS_FILE, PLOTS_DIR, RESULTS_PLOT
from yolo_mlops.core.scratch import scratch
from yolo_mlops.core.vocabulary import CLASSES_KEY
from yolo_mlops.tracking.live import tracked_evaluation
from yolo_mlops.yolo.dataset import stage_dataset
from yolo_mlops.yolo.evaluate import evaluate_splits


def main() -> None:
    params = load_params()
    with tracked_evaluation():
        with scratch("evaluate") as folder, atomic_dir(PLOTS_DIR) as plots:
            data_yaml = stage_dataset(DATASET_DIR, folder)
            results = evaluate_splits(params, BEST_WEIGHTS, data_yaml, RESULTS_PLOT, plots, folder / "val")
        write_json(EVAL_METRICS_FILE, results)
    for split, metrics in results.items():
        print(f"evaluate: {split}: " + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()
                                                  if name != CLASSES_KEY))
        for class_name, values in metrics[CLASSES_KEY].items():
            print(f"evaluate: {split}: {class_name}: " + ", ".join(f"{name} {value:.4f}"
                                                                   for name, value in values.items()))


if __name__ == "__main__":
    run_main(main)
