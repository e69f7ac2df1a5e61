"""The one error type the project raises for problems the user can fix."""


class PipelineError(Exception):
    """A problem the user can fix: bad params, bad data, unreachable service."""
