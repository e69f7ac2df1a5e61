"""The dataset as Ultralytics reads it: a private copy, so its label caches never touch DVC's output."""

import shutil
from pathlib import Path

from yolo_mlops.core.paths import DATA_YAML


def stage_dataset(dataset_dir: Path, folder: Path) -> Path:
    """Copy the dataset into `folder` (a stage's temporary folder); return the copy's data.yaml.

    Ultralytics writes `labels/*.cache` next to the labels; on the DVC output itself that
    would change the prepare stage's hash, so training and validation read a copy."""
    copy = folder / dataset_dir.name
    shutil.copytree(dataset_dir, copy)
    return copy / DATA_YAML.name
