"""The one way the project asks git something."""

from pathlib import Path

from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.tools import run_tool


def git(root: Path, *args: str) -> str:
    """`git <args>` in `root`: its standard output, or a PipelineError with git's message."""
    return run_tool(root, "git", *args)


def head_rev(root: Path) -> str:
    """The commit checked out in `root` (DVC's baseline for the experiments queued from it)."""
    return git(root, "rev-parse", "HEAD").strip()


def show(root: Path, rev: str, path: Path) -> str | None:
    """The text of `path` at `rev`, or None when that commit has no such file."""
    try:
        return git(root, "show", f"{rev}:{path.as_posix()}")
    except PipelineError:
        return None
