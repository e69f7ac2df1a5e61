"""The one error type the stages turn into a clear message and a non-zero exit."""

import sys
from collections.abc import Callable


class PipelineError(Exception):
    """A problem the user can fix: bad params, bad data, unreachable service."""


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage entry point; report a PipelineError on stderr and exit with status 1."""
    try:
        main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
