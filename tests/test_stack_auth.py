"""The team stack with sign-in, as docker-compose.yml runs it: a real `mlflow server --app-name basic-auth`
(started through the image's entry point, docker/mlflow/auth-config.sh) whose user store and runs are in a
PostgreSQL cluster the test starts, artifacts proxied to S3 (moto stands in for MinIO, tests/stack.py).
The team's accounts are made by `make user`; a member runs the tiny pipeline with `dvc exp run`, a viewer
reads, a maintainer promotes and rolls back, and nothing any of them ran holds a password."""

import base64
import json
import os
import re
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tests.browser import CHROMIUM, visit
from tests.conftest import TINY_PARAMS, copy_project, log_synthetic_run, needs_coco128, run, tracking_uri
from tests.stack import MlflowServer, client_env, mlflow_server, postgres_server, s3_server
from yolo_mlops.core import vocabulary
from yolo_mlops.core.params import PromoteParams
from yolo_mlops.grid.ranking import RunSummary
from yolo_mlops.grid.registry import aliases, promote

pytestmark = [needs_coco128, pytest.mark.e2e]

EXPERIMENT, MODEL = "cv_yolo_tiny", "yolo_tiny_person"  # params.yaml's
USERS = {vocabulary.VIEWER: "viewer1", vocabulary.MEMBER: "member1", vocabulary.MAINTAINER: "maintainer1"}
# Promotion gates at 0, so that a tiny training's run (metrics about 0) becomes champion.
GATES = {"promote.min_test_map50_95": 0.0, "promote.min_test_recall": 0.0, "promote.min_margin": 0.01}


@dataclass
class Stack:
    server: MlflowServer
    project: Path
    admin_password: str
    passwords: dict[str, str]  # role → the password `make user` printed
    outputs: list[str] = field(default_factory=list)  # everything the commands printed, for the scan

    def env(self, role: str | None, password: str | None = None) -> dict[str, str]:
        """A team member's shell: the server's address and, for `role`, their account (or `password`)."""
        if role is None:
            return client_env(self.server.uri)
        return client_env(self.server.uri, MLFLOW_TRACKING_USERNAME=USERS[role],
                          MLFLOW_TRACKING_PASSWORD=password or self.passwords[role])

    def run(self, command: list[str], role: str | None, check: bool = False,
            password: str | None = None) -> subprocess.CompletedProcess:
        result = run(command, self.project, env=self.env(role, password), check=check)
        self.outputs.append(result.stdout + result.stderr)
        return result

    @contextmanager
    def signed_in(self, role: str) -> Iterator[MlflowClient]:
        """A client in this process signed in as `role`'s user (MLflow reads the variables at each request)."""
        saved = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
        username, password = ("admin", self.admin_password) if role == "admin" else (USERS[role], self.passwords[role])
        os.environ.update(MLFLOW_TRACKING_USERNAME=username, MLFLOW_TRACKING_PASSWORD=password)
        try:
            with tracking_uri(self.server.uri):
                yield MlflowClient(self.server.uri)
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def make_user(project: Path, server: MlflowServer, name: str, role: str, *extra: str) -> subprocess.CompletedProcess:
    """`make user` as the stack's admin runs it (the admin's password from .env); the venv is the test's."""
    return run(["make", "-o", ".venv/.installed", "user", f"NAME={name}", f"ROLE={role}", *extra], project,
               env=client_env(server.uri), check=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """PostgreSQL, S3 and the MLflow server with sign-in; a tiny project whose .env holds the admin's password;
    the three users made by `make user`."""
    root = tmp_path_factory.mktemp("auth")
    admin_password = secrets.token_urlsafe(18)
    auth = {"MLFLOW_AUTH_ADMIN_PASSWORD": admin_password, "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_urlsafe(32)}
    with postgres_server() as database, s3_server(root) as s3, \
            mlflow_server(database, s3.endpoint, root, auth=auth) as server:
        project = copy_project(root / "project", TINY_PARAMS | GATES)
        (project / ".env").write_text(f"MLFLOW_AUTH_ADMIN_PASSWORD={admin_password}\nSTACK_HOST_IP=127.0.0.1\n")
        passwords = {}
        for role, name in USERS.items():  # what make user prints holds the password: it is not scanned
            made = make_user(project, server, name, role)
            assert made.returncode == 0, made.stdout + made.stderr
            [password] = re.findall(r"^password \(shown once, hand it over privately\): (\S+)$", made.stdout, re.M)
            passwords[role] = password
        yield Stack(server, project, admin_password, passwords)


def signed_request(url: str, user: str | None, password: str | None) -> urllib.request.Request:
    """A request with HTTP basic authentication's header, as MLflow's client sends it (none without `user`)."""
    request = urllib.request.Request(url)
    if user is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    return request


def status_of(url: str, user: str | None = None, password: str | None = None) -> int:
    try:
        with urllib.request.urlopen(signed_request(url, user, password), timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_rest_calls_without_an_account_or_with_mlflows_old_default_password_get_401(stack: Stack) -> None:
    for endpoint in ("api/2.0/mlflow/experiments/search?max_results=10", "ajax-api/2.0/mlflow/runs/search",
                     "api/2.0/mlflow/registered-models/search", "api/2.0/mlflow/users/list"):
        assert status_of(f"{stack.server.uri}/{endpoint}") == 401, endpoint
    search = f"{stack.server.uri}/api/2.0/mlflow/experiments/search?max_results=10"
    assert status_of(search, "admin", "password1234") == 401
    assert status_of(search, USERS[vocabulary.MEMBER], "not-the-password") == 401
    assert status_of(search, "admin", stack.admin_password) == 200


def test_make_user_updates_a_role_keeps_the_password_and_refuses_bad_input(stack: Stack) -> None:
    again = make_user(stack.project, stack.server, USERS[vocabulary.VIEWER], vocabulary.VIEWER)
    assert again.returncode == 0 and "updated, role viewer" in again.stdout and "password unchanged" in again.stdout
    assert stack.passwords[vocabulary.VIEWER] not in again.stdout
    with stack.signed_in(vocabulary.VIEWER) as client:  # the old password still works
        assert client.get_experiment_by_name(EXPERIMENT) is not None
    missing = run(["make", "-o", ".venv/.installed", "user", "NAME=someone"], stack.project, check=False)
    assert missing.returncode != 0 and "make user NAME=<name> ROLE=viewer|member|maintainer" in missing.stderr
    wrong = make_user(stack.project, stack.server, "someone", "owner")
    assert wrong.returncode != 0 and "invalid choice: 'owner'" in wrong.stderr
    team = ["python", "-m", "yolo_mlops.tracking.team", "someone", vocabulary.VIEWER]
    not_admin = stack.run(team, vocabulary.MEMBER)
    assert not_admin.returncode == 1 and f"user '{USERS[vocabulary.MEMBER]}' is not its admin (403)" in not_admin.stderr
    bad_admin = run(team, stack.project, env=client_env(stack.server.uri, MLFLOW_TRACKING_USERNAME="admin",
                                                        MLFLOW_TRACKING_PASSWORD=WRONG_PASSWORD), check=False)
    assert bad_admin.returncode == 1 and "refused the sign-in of user 'admin'" in bad_admin.stderr
    assert "someone" not in [user["username"] for user in client_users(stack)]


def client_users(stack: Stack) -> list[dict]:
    """The server's users, as its admin lists them (REST)."""
    request = signed_request(f"{stack.server.uri}/api/2.0/mlflow/users/list", "admin", stack.admin_password)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)["users"]


def test_a_viewer_reads_the_experiment_and_the_model_but_cannot_log(stack: Stack) -> None:
    with stack.signed_in(vocabulary.VIEWER) as client:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        client.search_runs([experiment.experiment_id])
        assert client.get_registered_model(MODEL).name == MODEL
        with pytest.raises(MlflowException) as refused:
            client.create_run(experiment.experiment_id)
        assert refused.value.error_code == "PERMISSION_DENIED"


@dataclass(frozen=True)
class MemberRun:
    without_account: subprocess.CompletedProcess  # `dvc exp run` with only the server's address
    as_viewer: subprocess.CompletedProcess  # `dvc repro` as the viewer
    as_viewer_s: float
    wrong_password: subprocess.CompletedProcess  # `dvc repro` with the member's name and a wrong password
    wrong_password_s: float
    fixed: subprocess.CompletedProcess  # `dvc exp run` as the member


WRONG_PASSWORD = "wrong-" + secrets.token_urlsafe(12)


@pytest.fixture(scope="module")
def member_run(stack: Stack) -> MemberRun:
    """The tiny pipeline refused three ways (the results kept), then completed by the member."""
    without_account = stack.run(["dvc", "exp", "run"], None)
    start = time.monotonic()
    as_viewer = stack.run(["dvc", "repro"], vocabulary.VIEWER)
    as_viewer_s, start = time.monotonic() - start, time.monotonic()
    wrong = stack.run(["dvc", "repro"], vocabulary.MEMBER, password=WRONG_PASSWORD)
    wrong_s = time.monotonic() - start
    fixed = stack.run(["dvc", "exp", "run"], vocabulary.MEMBER)
    return MemberRun(without_account, as_viewer, as_viewer_s, wrong, wrong_s, fixed)


def pipeline_runs(client: MlflowClient, exp_id: str) -> list:
    """The runs the pipeline's stages opened (found by their fingerprint), not the synthetic one of a test."""
    return [run for run in client.search_runs([exp_id]) if vocabulary.FINGERPRINT_TAG in run.data.tags]


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error: ")]


def test_without_an_account_train_and_evaluate_warn_and_go_on_and_the_log_stage_names_the_variables(
        member_run: MemberRun) -> None:
    result = member_run.without_account
    assert result.returncode != 0
    for stage in ("train", "evaluate"):
        [warning] = [line for line in result.stderr.splitlines() if line.startswith(f"warning: {stage}: MLflow:")]
        assert "refused the sign-in of no account (MLFLOW_TRACKING_USERNAME is not set) (401)" in warning
        assert "the stage goes on" in warning
    [line] = error_lines(result)
    assert "(401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to your account on it" in line
    assert "Nothing is lost" in line and "Once MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD are set" in line
    assert "failed to reproduce 'log'" in result.stderr and "Running stage 'evaluate'" in result.stdout


def test_a_viewer_running_the_pipeline_is_told_the_missing_permission_within_seconds(member_run: MemberRun) -> None:
    result = member_run.as_viewer
    assert result.returncode != 0 and "Running stage 'train'" not in result.stdout
    [line] = error_lines(result)
    assert (f"user '{USERS[vocabulary.VIEWER]}' lacks EDIT on experiment '{EXPERIMENT}' (403); "
            "the stack's admin grants "
            f"it with `make user NAME={USERS[vocabulary.VIEWER]} ROLE=member`") in line
    assert "Nothing is lost" in line and "Once the stack's admin has granted it" in line
    assert member_run.as_viewer_s < 60


def test_a_wrong_password_is_one_line_within_seconds(member_run: MemberRun) -> None:
    result = member_run.wrong_password
    assert result.returncode != 0 and "Running stage 'train'" not in result.stdout
    [line] = error_lines(result)
    assert (f"refused the sign-in of user '{USERS[vocabulary.MEMBER]}' "
            "with the password in MLFLOW_TRACKING_PASSWORD") in line
    assert "Nothing is lost" in line
    assert member_run.wrong_password_s < 60


def test_once_signed_in_the_members_dvc_exp_run_completes_one_finished_run(stack: Stack, member_run: MemberRun) -> None:
    result = member_run.fixed
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Running stage 'log'" in result.stdout and "Running stage 'train'" not in result.stdout
    with stack.signed_in("admin") as client:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        runs = pipeline_runs(client, experiment.experiment_id)
        assert [run.info.status for run in runs] == ["FINISHED"]
        assert runs[0].data.metrics


@dataclass(frozen=True)
class RegistrySteps:
    member_promote: subprocess.CompletedProcess
    after_member: tuple[dict[str, str], int]  # aliases, number of versions
    maintainer_promote: subprocess.CompletedProcess
    second_champion: str  # the version a maintainer's second promotion made champion
    member_rollback: subprocess.CompletedProcess
    after_member_rollback: dict[str, str]
    maintainer_rollback: subprocess.CompletedProcess
    after_rollback: dict[str, str]


def registry_state(client: MlflowClient) -> tuple[dict[str, str], int]:
    return aliases(client, MODEL), len(client.search_model_versions(f"name = '{MODEL}'"))


@pytest.fixture(scope="module")
def registry_steps(stack: Stack, member_run: MemberRun) -> RegistrySteps:
    """The member's promotion refused; the maintainer's, and a second champion; the member's rollback
    refused; the maintainer's."""
    assert member_run.fixed.returncode == 0
    member_promote = stack.run(["python", "-m", "yolo_mlops.grid", "promote"], vocabulary.MEMBER)
    with stack.signed_in("admin") as client:
        after_member = registry_state(client)
    maintainer_promote = stack.run(["python", "-m", "yolo_mlops.grid", "promote"], vocabulary.MAINTAINER)
    with stack.signed_in(vocabulary.MAINTAINER) as client:  # a better run, promoted by the project's code
        first = client.get_model_version(MODEL, aliases(client, MODEL)[vocabulary.CHAMPION])
        exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
        better = log_synthetic_run(client, exp_id, "better-run", {"test.mAP50-95": 0.5, "test.recall": 0.5},
                                   params={vocabulary.DATASET_TAG: first.tags[vocabulary.DATASET_TAG]}, model=True)
        second = promote(client, RunSummary.from_run(client.get_run(better)),
                         PromoteParams(registered_model=MODEL, min_test_map50_95=0.0, min_test_recall=0.0,
                                       min_margin=0.01))
    member_rollback = stack.run(["python", "-m", "yolo_mlops.grid", "rollback"], vocabulary.MEMBER)
    with stack.signed_in("admin") as client:
        after_member_rollback = aliases(client, MODEL)
    maintainer_rollback = stack.run(["python", "-m", "yolo_mlops.grid", "rollback"], vocabulary.MAINTAINER)
    with stack.signed_in("admin") as client:
        after_rollback = aliases(client, MODEL)
    return RegistrySteps(member_promote, after_member, maintainer_promote, str(second.champion), member_rollback,
                         after_member_rollback, maintainer_rollback, after_rollback)


def test_a_members_promotion_is_refused_in_one_line_and_leaves_the_registry_and_the_comparison(
        stack: Stack, registry_steps: RegistrySteps) -> None:
    result = registry_steps.member_promote
    assert result.returncode == 1
    [line] = error_lines(result)
    assert (f"user '{USERS[vocabulary.MEMBER]}' lacks EDIT on registered model '{MODEL}' (403); "
            "the stack's admin grants "
            f"it with `make user NAME={USERS[vocabulary.MEMBER]} ROLE=maintainer`") in line
    assert "The registry is as it was" in line and "Traceback" not in result.stderr
    assert registry_steps.after_member == ({}, 0)
    assert "Runs ranked by" in result.stdout  # the comparison ran, and its files stay
    assert (stack.project / "reports/runs.csv").is_file()


def test_a_maintainer_promotes_and_rolls_back_and_a_member_cannot_roll_back(registry_steps: RegistrySteps) -> None:
    assert registry_steps.maintainer_promote.returncode == 0, registry_steps.maintainer_promote.stderr
    assert "decision: Approve; champion = version 1" in registry_steps.maintainer_promote.stdout
    assert registry_steps.second_champion == "2"
    refused = registry_steps.member_rollback
    assert refused.returncode == 1
    [line] = error_lines(refused)
    assert f"lacks EDIT on registered model '{MODEL}' (403)" in line and "ROLE=maintainer" in line
    assert registry_steps.after_member_rollback == {vocabulary.CHAMPION: "2", vocabulary.CHALLENGER: "2"}
    assert registry_steps.maintainer_rollback.returncode == 0, registry_steps.maintainer_rollback.stderr
    assert "moved from version 2 to version 1" in registry_steps.maintainer_rollback.stdout
    assert registry_steps.after_rollback[vocabulary.CHAMPION] == "1"


def test_nothing_the_pipeline_wrote_holds_a_password(stack: Stack, member_run: MemberRun,
                                                      registry_steps: RegistrySteps, tmp_path: Path) -> None:
    """Files of the project (params.yaml, dvc.lock, outputs, reports, DVC's and git's folders), the runs' params,
    tags and artifacts in MLflow, the registry's versions, and every line the commands and the server printed."""
    secrets_ = [stack.admin_password, WRONG_PASSWORD, *stack.passwords.values()]
    places: dict[str, bytes] = {}
    for path in stack.project.rglob("*"):
        if path.is_file() and path.name != ".env":  # .env is the admin's, git-ignored, as make user reads it
            places[str(path.relative_to(stack.project))] = path.read_bytes()
    places["git log"] = run(["git", "log", "-p", "--all"], stack.project).stdout.encode()
    places["command output"] = "\n".join(stack.outputs).encode()
    places["server log"] = stack.server.service.log.read_bytes()
    with stack.signed_in("admin") as client:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        for found in client.search_runs([experiment.experiment_id]):
            run_id = found.info.run_id
            places[f"run {run_id}"] = repr((found.data.params, found.data.tags, found.info)).encode()
            folder = Path(client.download_artifacts(run_id, "", str(tmp_path / run_id)))
            for path in folder.rglob("*"):
                if path.is_file():
                    places[f"run {run_id} artifact {path.relative_to(folder)}"] = path.read_bytes()
        for version in client.search_model_versions(f"name = '{MODEL}'"):
            places[f"{MODEL} version {version.version}"] = repr((version.tags, version.description)).encode()
    assert len(places) > 50 and any(key.startswith("run ") for key in places)
    leaks = [where for where, data in places.items() for secret in secrets_ if secret.encode() in data]
    assert not leaks, f"a password is in: {leaks}"


@pytest.mark.skipif(CHROMIUM is None, reason="needs a chromium browser on PATH: apt-get install -y chromium")
def test_the_ui_asks_for_sign_in_and_shows_the_runs_once_signed_in(stack: Stack, member_run: MemberRun) -> None:
    with stack.signed_in("admin") as client:
        exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
        [finished] = pipeline_runs(client, exp_id)
    page = f"{stack.server.uri}/#/experiments/{exp_id}/runs?workflowType=machine_learning"
    challenge = {"scheme": "basic", "realm": "mlflow", "origin": stack.server.uri, "source": "Server"}
    refused = visit(page, None, "You are not authenticated")
    assert refused.challenges == [challenge]
    assert "You are not authenticated" in refused.html and finished.info.run_name not in refused.html
    viewer = (USERS[vocabulary.VIEWER], stack.passwords[vocabulary.VIEWER])
    signed_in = visit(page, viewer, f">{finished.info.run_name}<")
    assert signed_in.challenges == [challenge] and f">{finished.info.run_name}<" in signed_in.html
