"""DVC stage `train`: data/tiny_coco → models/ (best.pt, last.pt, results.csv) and dvclive/, each epoch
sent to the experiment's MLflow run as it ends."""

from yolo_mlops.core.entry import run_main
from yolo_mlops.core.params import load_params
from yolo_mlops.core.paths import DATASET_DIR, MODELS_DIR, TRAIN_LIVE_DIR
from yolo_mlops.core.tempdir import stage_tempdir
from yolo_mlops.tracking.live import tracked_training
from yolo_mlops.yolo.dataset import stage_dataset
from yolo_mlops.yolo.history import read_history, write_dvclive
from yolo_mlops.yolo.model import resolve_device, resolve_model
from yolo_mlops.yolo.train import RUN_RESULTS, export_run, train


def main() -> None:
    params = load_params()
    model, device = resolve_model(params.train.model), resolve_device(params.train.device)
    with stage_tempdir("train") as folder, tracked_training() as callbacks:
        run_dir = train(stage_dataset(DATASET_DIR, folder), params.train, model, device, folder / "train", callbacks)
        history = read_history(run_dir / RUN_RESULTS)
        export_run(run_dir, MODELS_DIR)
    write_dvclive(history, TRAIN_LIVE_DIR)
    print(f"train: {len(history)} epoch(s); weights in {MODELS_DIR}/, history in {TRAIN_LIVE_DIR}/")


if __name__ == "__main__":
    run_main(main)
