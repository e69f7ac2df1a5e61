"""One grid driver per project at a time: a lock file holding the driver's process id, locked with the
operating system's advisory lock (`flock`), which dies with its process. A driver killed with `kill -9`
leaves the file, not the lock: the next driver sees that nothing holds it and takes it over."""

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.paths import GRID_LOCK


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "unknown"


@contextmanager
def driver_lock(root: Path) -> Iterator[str | None]:
    """Hold the project's grid lock while the block runs; yields the pid of a driver whose lock was left
    behind (killed), None when there was none. Refuses at once when another driver holds it."""
    path = root / GRID_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PipelineError(
                f"a grid is already running in {root} (pid {_holder(path)}, lock {GRID_LOCK}); wait for it to "
                "end, or stop it with Ctrl-C. Nothing was queued or started."
            ) from None
        left = _holder(path) if os.fstat(descriptor).st_size else None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        try:
            yield left
        finally:
            os.ftruncate(descriptor, 0)  # an empty file: nobody's; the lock goes with the descriptor
    finally:
        os.close(descriptor)
