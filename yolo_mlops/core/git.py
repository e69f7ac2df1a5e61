"""The one way the project asks git something."""

from pathlib import Path

from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.tools import run_tool, run_tool_bytes


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


def show_many(root: Path, wanted: list[tuple[str, Path]]) -> list[str | None]:
    """The text of each (rev, path) of `wanted`, in order (None where that commit has no such file): one
    `git cat-file --batch` for all of them, instead of one `git show` each."""
    if not wanted:
        return []
    request = "".join(f"{rev}:{path.as_posix()}\n" for rev, path in wanted).encode()
    output = run_tool_bytes(root, "git", "cat-file", "--batch", stdin=request)
    found: list[str | None] = []
    position = 0
    for _ in wanted:
        end = output.index(b"\n", position)
        header = output[position:end].split()
        position = end + 1
        if len(header) != 3 or not header[2].isdigit():  # `<name> missing`, `<name> ambiguous`
            found.append(None)
            continue
        size = int(header[2])
        found.append(output[position:position + size].decode(errors="replace") if header[1] == b"blob" else None)
        position += size + 1  # the contents, then a newline
    return found
