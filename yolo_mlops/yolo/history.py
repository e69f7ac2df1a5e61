"""The per-epoch training history, read from Ultralytics' results.csv under stable names."""

import csv
from pathlib import Path

from yolo_mlops.core.errors import PipelineError

# Ultralytics column → the name used in DVC (dvclive) and MLflow.
_RENAMES = {
    "metrics/precision(B)": "val/precision",
    "metrics/recall(B)": "val/recall",
    "metrics/mAP50(B)": "val/mAP50",
    "metrics/mAP50-95(B)": "val/mAP50-95",
}
_DROPPED = {"epoch", "time"}  # the step itself, and wall-clock time (not reproducible)


def read_history(results_csv: Path) -> list[dict[str, float]]:
    """One dict per epoch, in order: losses, validation metrics and learning rates."""
    try:
        with open(results_csv, newline="", encoding="utf-8") as stream:
            rows = list(csv.DictReader(stream))
    except FileNotFoundError:
        raise PipelineError(f"{results_csv}: missing; run the train stage first (`dvc repro train`)") from None
    history = []
    for number, row in enumerate(rows, start=2):
        try:
            history.append({
                _RENAMES.get(column.strip(), column.strip()): float(value)
                for column, value in row.items() if column.strip() not in _DROPPED
            })
        except (TypeError, ValueError):
            raise PipelineError(f"{results_csv}:{number}: not a row of numbers") from None
    if not history:
        raise PipelineError(f"{results_csv}: no epoch recorded")
    return history


def write_dvclive(history: list[dict[str, float]], live_dir: Path) -> None:
    """Record the history with DVCLive (metrics.json + plots/metrics/*.tsv, step = epoch)."""
    from dvclive import Live

    from yolo_mlops.core.atomic import atomic_dir

    with atomic_dir(live_dir) as staging, Live(dir=str(staging), save_dvc_exp=False, dvcyaml=None) as live:
        for epoch, values in enumerate(history, start=1):
            live.step = epoch
            for name, value in values.items():
                live.log_metric(name, value)
