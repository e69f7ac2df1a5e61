"""The one way the project asks git something."""

import subprocess
from pathlib import Path

from yolo_mlops.core.errors import PipelineError


def git(root: Path, *args: str) -> str:
    """`git <args>` in `root`: its standard output, or a PipelineError with git's message."""
    try:
        result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    except OSError as error:
        raise PipelineError(f"git is not available: {error}") from None
    if result.returncode != 0:
        raise PipelineError(f"git {' '.join(args)} failed in {root}: {result.stderr.strip()}")
    return result.stdout


def head_rev(root: Path) -> str:
    """The commit checked out in `root` (DVC's baseline for the experiments queued from it)."""
    return git(root, "rev-parse", "HEAD").strip()


def show(root: Path, rev: str, path: Path) -> str | None:
    """The text of `path` at `rev`, or None when that commit has no such file."""
    try:
        return git(root, "show", f"{rev}:{path.as_posix()}")
    except PipelineError:
        return None
