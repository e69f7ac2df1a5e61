"""The one error type the entry points turn into a clear message and a non-zero exit."""

import logging
import sys
from collections.abc import Callable

# A failed stage's message starts with this on stderr; the grid reads it back from DVC's queue logs
# (grid/experiments.py, `failure_reason`) to record the stage's own error in the FAILED MLflow run.
ERROR_PREFIX = "error: "


class PipelineError(Exception):
    """A problem the user can fix: bad params, bad data, unreachable service."""


def show_progress() -> None:
    """Print the library's progress and warnings (the `yolo_mlops` loggers) on stderr, as plain lines."""
    logger = logging.getLogger("yolo_mlops")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False


def run_stage(main: Callable[[], None]) -> None:
    """Run an entry point: library progress (logging) on stderr, a PipelineError as one
    `error: ...` line on stderr and exit status 1."""
    show_progress()
    try:
        main()
    except PipelineError as error:
        print(f"{ERROR_PREFIX}{error}", file=sys.stderr)
        sys.exit(1)
