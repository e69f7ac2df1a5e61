"""DVC stage `evaluate`: models/best.pt on each split → metrics/eval.json and plots/."""

import tempfile
from pathlib import Path

from yolo_mlops.atomic import atomic_dir, write_json
from yolo_mlops.errors import run_stage
from yolo_mlops.evaluation import evaluate_splits
from yolo_mlops.params import load_params
from yolo_mlops.paths import DATASET_DIR, EVAL_METRICS_FILE, MODELS_DIR, PLOTS_DIR
from yolo_mlops.yolo import staged_dataset


def main() -> None:
    params = load_params()
    with staged_dataset(DATASET_DIR) as data_yaml, atomic_dir(PLOTS_DIR) as plots, \
            tempfile.TemporaryDirectory(prefix="yolo-val-") as scratch:
        results = evaluate_splits(
            params, MODELS_DIR / "best.pt", data_yaml, MODELS_DIR / "results.png", plots, Path(scratch)
        )
    write_json(EVAL_METRICS_FILE, results)
    for split, metrics in results.items():
        print(f"evaluate: {split}: " + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))


if __name__ == "__main__":
    run_stage(main)
