"""The documentation holds together: every relative link in README.md and docs/*.md resolves (the file, and
for `#anchor` a heading of it, by GitHub's anchor rules), and every target `make help` lists is documented."""

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

FENCE = re.compile(r"^ {0,3}(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target), the target up to a space (a title may follow) or the closing parenthesis.
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+).+?\1")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """The lines outside fenced code blocks, numbered from 1, with inline code spans blanked out."""
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, CODE_SPAN.sub("", line)))
    return lines


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a heading: its text without markup, lower case, punctuation dropped (letters,
    digits, spaces, '-' and '_' kept), each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub gives the headings of a markdown file (a repeated one gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        anchor = github_anchor(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


def broken_links(path: Path) -> list[str]:
    """`file:line: target (why)` for each relative link of a markdown file that does not resolve."""
    broken = []
    text = path.read_text(encoding="utf-8")
    for number, line in prose_lines(text):
        # Code spans are blanked before matching, so the line number is all a report needs.
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                continue  # http:, https:, mailto: ... are not this repository's
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path}:{number}"
            if not linked.exists():
                broken.append(f"{where}: {target} (no such file)")
            elif anchor and (linked.suffix != ".md" or anchor.lower() not in anchors(linked)):
                broken.append(f"{where}: {target} (no heading #{anchor} in {linked.name})")
    return broken


def documentation() -> list[Path]:
    return [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]


def test_github_anchor_follows_githubs_rules() -> None:
    assert github_anchor("Everyday commands (inside `source .venv/bin/activate`)") == \
        "everyday-commands-inside-source-venvbinactivate"
    assert github_anchor("params.yaml") == "paramsyaml"
    assert github_anchor("Team stack: MLflow server, PostgreSQL and MinIO") == \
        "team-stack-mlflow-server-postgresql-and-minio"
    assert github_anchor("The team's users (sign-in)") == "the-teams-users-sign-in"
    assert github_anchor("What `prepare.source` may be") == "what-preparesource-may-be"


def test_a_broken_link_or_anchor_is_found(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## Its part\n\n## Its part\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md) [fine](other.md#its-part) [fine](other.md#its-part-1) [fine](#page) [web](https://x.y/z)\n"
        "`[in a code span](missing.md)`\n"
        "```\n[in a code block](missing.md)\n```\n"
        "[no file](missing.md)\n"
        "[no heading](other.md#no-such-part) ![no image](img/none.png) [no heading here](#nowhere)\n"
    )
    assert broken_links(page) == [
        f"{page}:8: missing.md (no such file)",
        f"{page}:9: other.md#no-such-part (no heading #no-such-part in other.md)",
        f"{page}:9: img/none.png (no such file)",
        f"{page}:9: #nowhere (no heading #nowhere in page.md)",
    ]


@pytest.mark.parametrize("page", documentation(), ids=lambda path: path.name)
def test_every_relative_link_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_every_make_target_is_documented() -> None:
    listing = subprocess.run(["make", "--no-print-directory", "help"], cwd=PROJECT_ROOT, check=True,
                             capture_output=True, text=True).stdout
    targets = re.findall(r"^make ([a-z][\w-]*)", listing, re.MULTILINE)
    assert len(targets) >= 10, listing  # the listing was read, not an empty match
    text = "\n".join(path.read_text(encoding="utf-8") for path in documentation())
    undocumented = [target for target in targets if not re.search(rf"\bmake {re.escape(target)}\b(?![\w-])", text)]
    assert undocumented == []
