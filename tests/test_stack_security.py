"""No secret in any tracked file: the stack's credentials live in .env and .dvc/config.local only."""

import re
import subprocess

import pytest

from tests.conftest import PROJECT_ROOT
from tests.test_stack_compose import env_example

SECRET_NAMES = re.compile(r"PASSWORD|SECRET|TOKEN", re.IGNORECASE)
AWS_ACCESS_KEY = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
# A 40-character secret key assigned to a key/secret/password/token name (as in git-secrets).
ASSIGNED_SECRET = re.compile(
    r"(?i)(?:secret|key|password|token)\w*[\"']?\s*[:=]\s*[\"']?(?P<value>[A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"
)


def tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    return [name for name in listed.stdout.split("\0") if name and (PROJECT_ROOT / name).is_file()]


def findings(text: str) -> list[str]:
    return AWS_ACCESS_KEY.findall(text) + [match["value"] for match in ASSIGNED_SECRET.finditer(text)]


def test_the_scanner_finds_aws_style_keys() -> None:
    # Split literals, so that this file does not hold what it plants.
    planted = ("aws_access_key_id = " + "AKIA" + "ABCDEFGHIJKLMNOP\n"
               "aws_secret_access_key = " + "wJalrXUtnFEMI/K7MDENG+" + "bPxRfiCYz1x2y3z4W5")
    assert len(findings(planted)) == 2
    assert not findings("md5: 0123456789abcdef0123456789abcdef")


def test_env_example_holds_placeholders_only() -> None:
    secrets = {name: value for name, value in env_example().items() if SECRET_NAMES.search(name)}
    assert secrets, ".env.example names no password or secret"
    for name, value in secrets.items():
        assert value.startswith("change-me"), f".env.example: {name} must be an obvious change-me placeholder"


def test_no_tracked_file_holds_a_credential() -> None:
    files = tracked_files()
    assert ".env" not in files and ".dvc/config.local" not in files
    secrets = {value for name, value in env_example().items() if SECRET_NAMES.search(name)}
    leaks = []
    for name in files:
        try:
            text = (PROJECT_ROOT / name).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary files
        leaks += [f"{name}: AWS-style key {found[:4]}…" for found in findings(text)]
        if name != ".env.example":
            leaks += [f"{name}: the .env.example value of a secret" for secret in secrets if secret in text]
    assert not leaks, "\n".join(leaks)


@pytest.mark.parametrize("name", [".env", ".dvc/config.local"])
def test_credential_files_are_git_ignored(name: str) -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", name], cwd=PROJECT_ROOT, check=False)
    assert ignored.returncode == 0, f"{name} is not git-ignored"
