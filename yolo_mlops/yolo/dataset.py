"""The dataset as Ultralytics reads it: a private copy, so its label caches never touch DVC's output."""

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from yolo_mlops.core.paths import DATA_YAML


@contextmanager
def staged_dataset(dataset_dir: Path) -> Iterator[Path]:
    """Yield data.yaml of a private copy of the dataset.

    Ultralytics writes `labels/*.cache` next to the labels; on the DVC output itself that
    would change the prepare stage's hash, so training and validation read a copy."""
    with tempfile.TemporaryDirectory(prefix="yolo-data-") as scratch:
        copy = Path(scratch) / dataset_dir.name
        shutil.copytree(dataset_dir, copy)
        yield copy / DATA_YAML.name
