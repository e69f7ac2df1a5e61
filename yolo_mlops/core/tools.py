"""The command-line tools the project drives (git, dvc): run one, get its output or one clear error."""

import os
import subprocess
from pathlib import Path

from yolo_mlops.core.errors import PipelineError

INSTALL_HINT = "run from the project's virtualenv (make setup), with git installed"


def run_tool_bytes(root: Path, program: str, *args: str, env: dict[str, str] | None = None,
                   stdin: bytes | None = None) -> bytes:
    """`<program> <args>` in `root` (with `env` added to the environment, `stdin` as its input): its standard
    output as bytes, or a PipelineError with the tool's message."""
    try:
        result = subprocess.run([program, *args], cwd=root, capture_output=True, input=stdin,
                                env=None if env is None else os.environ | env)
    except OSError as error:
        raise PipelineError(f"{program} is not available ({error}); {INSTALL_HINT}") from None
    if result.returncode != 0:
        message = (result.stderr or result.stdout).decode(errors="replace").strip()[-2000:]
        raise PipelineError(f"{program} {' '.join(args)} failed in {root}: {message}")
    return result.stdout


def run_tool(root: Path, program: str, *args: str, env: dict[str, str] | None = None) -> str:
    """`<program> <args>` in `root` (with `env` added to the environment): its standard output, or a
    PipelineError with the tool's message."""
    return run_tool_bytes(root, program, *args, env=env).decode(errors="replace")
