"""How an entry point runs (a DVC stage, the grid's CLI): the library's progress on stderr, and a
PipelineError as one `error: ...` line on stderr with exit status 1, never a traceback."""

import gc
import logging
import sys
from collections.abc import Callable

from yolo_mlops.core.errors import PipelineError

# A failed stage's message starts with this on stderr; the grid reads it back from DVC's queue logs
# (grid/experiments.py, `failure_reason`) to record the stage's own error in the FAILED MLflow run.
ERROR_PREFIX = "error: "


def show_progress() -> None:
    """Print the library's progress and warnings (the `yolo_mlops` loggers) on stderr, as plain lines."""
    logger = logging.getLogger("yolo_mlops")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def run_main(main: Callable[[], None]) -> None:
    """Run an entry point's `main`; report a PipelineError as one line and exit with status 1."""
    show_progress()
    try:
        main()
    except PipelineError as error:
        print(f"{ERROR_PREFIX}{error}", file=sys.stderr)
        sys.exit(1)
    finally:
        quick_exit()


def quick_exit() -> None:
    """Spare the interpreter's last garbage collections at exit: over the objects of torch, Ultralytics
    and MLflow they take 0.5-1.8 s per process (benchmarks/grid_cost.py). Everything is still closed and
    every exit handler runs; only garbage in reference cycles is left to the operating system."""
    gc.freeze()
