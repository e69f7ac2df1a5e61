"""A stage's temporary folder, .tmp/<stage>/ under the project: its next run empties it first, so that
a killed run (kill -9) leaves nothing for long. Inside DVC's queue, the folder is in the experiment's
temporary copy, which DVC deletes. Never the system's /tmp, which nothing cleans."""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from yolo_mlops.core.paths import TEMP_DIR


@contextmanager
def stage_tempdir(name: str, root: Path = Path()) -> Iterator[Path]:
    """Yield the empty folder <root>/.tmp/<name>/ (absolute; root: the project, the current folder by
    default); removed on exit, and emptied first of what an interrupted earlier run left there."""
    folder = (root / TEMP_DIR / name).resolve()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        with suppress(OSError):  # .tmp/ itself, once empty
            folder.parent.rmdir()
