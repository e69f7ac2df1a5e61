"""DVC stage `prepare`: a detection source → data/tiny_coco/ (YOLO layout) and metrics/data.json."""

from yolo_mlops.core.atomic import write_json
from yolo_mlops.core.entry import run_main
from yolo_mlops.core.params import load_params
from yolo_mlops.core.paths import DATA_METRICS_FILE, DATASET_DIR
from yolo_mlops.core.vocabulary import SPLITS
from yolo_mlops.data.dataset import prepare_dataset
from yolo_mlops.data.source import resolve_source


def main() -> None:
    params = load_params().prepare
    statistics = prepare_dataset(resolve_source(params.source), params, DATASET_DIR)
    write_json(DATA_METRICS_FILE, statistics)
    counts = ", ".join(f"{split}: {statistics[split]['images']}" for split in SPLITS)
    print(f"prepare: wrote {DATASET_DIR}/ ({counts} images) and {DATA_METRICS_FILE}")


if __name__ == "__main__":
    run_main(main)
