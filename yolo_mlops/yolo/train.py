"""Training with Ultralytics, and the train stage's output folder."""

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from yolo_mlops.core.atomic import atomic_dir
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.params import TrainParams
from yolo_mlops.core.paths import BEST_WEIGHTS, LAST_WEIGHTS, MODELS_DIR, RESULTS_CSV, RESULTS_PLOT, TRAIN_ARGS
from yolo_mlops.yolo.model import ultralytics

RUN_RESULTS = "results.csv"  # the per-epoch history in Ultralytics' run folder
# Ultralytics' run folder → the train stage's output (models/).
RUN_FILES = {"weights/best.pt": BEST_WEIGHTS, "weights/last.pt": LAST_WEIGHTS, RUN_RESULTS: RESULTS_CSV,
             "results.png": RESULTS_PLOT, "args.yaml": TRAIN_ARGS}


def train(data_yaml: Path, params: TrainParams, model: str, device: str, run_dir: Path,
          callbacks: dict[str, Callable[[Any], None]]) -> Path:
    """Train with Ultralytics into `run_dir`, `callbacks` added to its events (`on_fit_epoch_end`: ...);
    return the folder holding weights/, results.csv and results.png.

    Ultralytics' own training plots are off: the label statistics and batch mosaics would be drawn
    into a temporary folder and thrown away, and its final validation of best.pt is skipped
    (`skip_final_validation`): the evaluate stage validates best.pt and draws its curves per
    split. Only the training curves, results.png, are kept, drawn from results.csv as
    Ultralytics draws them."""
    package = ultralytics()
    trainer_model = package.YOLO(model)
    for event, callback in {"on_train_start": skip_final_validation, **callbacks}.items():
        trainer_model.add_callback(event, callback)
    trainer_model.train(
        data=str(data_yaml), epochs=params.epochs, imgsz=params.imgsz, lr0=params.lr0, seed=params.seed,
        batch=params.batch, optimizer=params.optimizer, device=device, workers=params.workers,
        deterministic=True, project=str(run_dir.parent), name=run_dir.name, exist_ok=True, plots=False,
    )
    save_dir = Path(trainer_model.trainer.save_dir)
    from ultralytics.utils.plotting import plot_results

    plot_results(file=save_dir / RUN_RESULTS)
    return save_dir


def skip_final_validation(trainer: Any) -> None:
    """Ultralytics' `on_train_start`: at the end of training, do to the checkpoints what Ultralytics' final
    step does (the optimizer stripped from last.pt and best.pt, best.pt given last.pt's training results),
    without its validation of best.pt on val: the evaluate stage validates best.pt on every split, val
    included, with the evaluate params. Spares about 0.6 s a training (benchmarks/grid_cost.py)."""
    from ultralytics.utils.torch_utils import strip_optimizer

    def strip_checkpoints() -> None:
        last = strip_optimizer(trainer.last) if trainer.last.exists() else {}
        if trainer.best.exists():
            strip_optimizer(trainer.best, updates={"train_results": last.get("train_results")})

    trainer.final_eval = strip_checkpoints


def export_run(run_dir: Path, models_dir: Path) -> None:
    """Keep the run's weights, history and its plot as the train stage's output (atomically)."""
    with atomic_dir(models_dir) as staging:
        for name, target in RUN_FILES.items():
            source = run_dir / name
            if not source.is_file():
                raise PipelineError(f"train: Ultralytics did not write {source}")
            shutil.copy2(source, staging / target.relative_to(MODELS_DIR))
