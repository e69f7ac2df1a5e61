"""docker-compose.yml, .env.example, the MLflow image and the DVC remotes, checked as data
(no container engine on these machines), and `make remote` on bad input."""

import re
from pathlib import Path

import pytest
import yaml
from mlflow.environment_variables import MLFLOW_S3_ENDPOINT_URL

from tests.conftest import PROJECT_ROOT, copy_project, project_env, run

COMPOSE = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
# ${NAME}, ${NAME:-default}, ${NAME:?message}
VARIABLE = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def env_example() -> dict[str, str]:
    lines = (PROJECT_ROOT / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def interpolate(text: str) -> str:
    """Compose's substitution with the values of .env.example."""
    values = env_example()
    return VARIABLE.sub(lambda match: values.get(match[1]) or match[2] or "", text)


def test_every_service_of_the_docs_exists() -> None:
    assert set(SERVICES) == {"minio", "minio-init", "postgres", "mlflow"}
    overview = (PROJECT_ROOT / "docs" / "team-stack.md").read_text().split("\n## ", 1)[0]
    for name in SERVICES:
        assert f"`{name}`" in overview, f"docs/team-stack.md's overview does not describe service {name}"


def test_published_ports_are_bound_to_loopback_by_default() -> None:
    published = {}
    for name, service in SERVICES.items():
        for mapping in service.get("ports", []):
            host_ip, host_port, _ = interpolate(mapping).rsplit(":", 2)
            assert host_ip == "127.0.0.1", f"{name} publishes {mapping} beyond loopback"
            published[int(host_port)] = name
    assert published == {9000: "minio", 9001: "minio", 5000: "mlflow"}  # PostgreSQL stays internal
    assert exported_in_comments("MLFLOW_TRACKING_URI", "http://localhost:5000")
    assert env_example()["DVC_S3_ENDPOINT_URL"] == "http://localhost:9000"


def test_up_waits_for_a_working_stack() -> None:
    for name in ("minio", "postgres", "mlflow"):
        assert SERVICES[name]["healthcheck"]["test"], f"{name} has no health check"
    assert SERVICES["minio-init"]["depends_on"] == {"minio": {"condition": "service_healthy"}}
    assert SERVICES["mlflow"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "minio": {"condition": "service_healthy"},
        "minio-init": {"condition": "service_completed_successfully"},
    }
    init = " ".join(SERVICES["minio-init"]["command"])
    assert "mc mb --ignore-existing stack/mlflow stack/dvc" in init


def test_data_lives_in_named_volumes() -> None:
    for name, target in (("minio", "/data"), ("postgres", "/var/lib/postgresql/data")):
        [mount] = SERVICES[name]["volumes"]
        volume, path = mount.split(":")
        assert path == target and volume in COMPOSE["volumes"], f"{name}: {mount} is not a named volume"


def test_mlflow_server_uses_postgresql_proxies_artifacts_to_minio_and_pins_mlflow() -> None:
    mlflow = SERVICES["mlflow"]
    command = mlflow["command"]
    assert command[command.index("--artifacts-destination") + 1] == "s3://mlflow" and "--serve-artifacts" in command
    environment = mlflow["environment"]
    assert environment["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert environment[MLFLOW_S3_ENDPOINT_URL.name] == "http://minio:9000"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(environment)
    pins = dict(line.split("==") for line in (PROJECT_ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    dockerfile = (PROJECT_ROOT / mlflow["build"] / "Dockerfile").read_text()
    assert f'"mlflow[auth]=={pins["mlflow[auth]"]}"' in dockerfile  # the sign-in app's packages too
    assert re.search(r"psycopg2-binary==[\d.]+", dockerfile) and re.search(r"boto3==[\d.]+", dockerfile)


def test_mlflow_server_signs_everyone_in_with_its_user_store_in_postgresql() -> None:
    """`--app-name basic-auth`; the image's entry point writes the auth config (database_uri: the same
    PostgreSQL database) from the environment; the admin's password and the key come from .env, required."""
    mlflow = SERVICES["mlflow"]
    assert mlflow["command"][-2:] == ["--app-name", "basic-auth"]
    environment = mlflow["environment"]
    assert environment["MLFLOW_AUTH_DATABASE_URI"] == environment["MLFLOW_BACKEND_STORE_URI"]
    for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert environment[name] == f"${{{name}:?set it in .env (see .env.example)}}"
    dockerfile = (PROJECT_ROOT / mlflow["build"] / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["sh", "/usr/local/bin/auth-config.sh"]' in dockerfile
    assert "COPY auth-config.sh /usr/local/bin/auth-config.sh" in dockerfile
    assert "ENV MLFLOW_AUTH_CONFIG_PATH=" in dockerfile


def test_the_auth_entry_point_writes_a_private_config_keeping_a_url_encoded_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "basic_auth.ini"
    env = project_env(MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_AUTH_ADMIN_PASSWORD="x" * 12,
                      MLFLOW_FLASK_SERVER_SECRET_KEY="k" * 32,
                      MLFLOW_AUTH_DATABASE_URI="postgresql+psycopg2://mlflow:p%40ss@postgres:5432/mlflow")
    entry = str(PROJECT_ROOT / "docker/mlflow/auth-config.sh")
    result = run(["sh", entry, "sh", "-c", "echo started"], tmp_path, env=env)
    assert result.stdout == "started\n" and config.stat().st_mode & 0o077 == 0
    from mlflow.server.auth.config import read_auth_config

    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(config))
    auth = read_auth_config()
    assert auth.database_uri == "postgresql+psycopg2://mlflow:p%40ss@postgres:5432/mlflow"
    assert auth.default_permission == "NO_PERMISSIONS" and auth.admin_username == "admin"
    env.pop("MLFLOW_AUTH_ADMIN_PASSWORD")
    missing = run(["sh", entry, "true"], tmp_path, env=env, check=False)
    assert missing.returncode != 0 and "MLFLOW_AUTH_ADMIN_PASSWORD: is not set" in missing.stderr


def makefile_recipe(target: str) -> str:
    """The recipe (tab-indented lines) of a Makefile target."""
    found = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", (PROJECT_ROOT / "Makefile").read_text(), re.MULTILINE)
    assert found, f"Makefile has no target {target}"
    return found[1]


def exported_in_comments(name: str, value: str) -> bool:
    """True when a comment of .env.example tells the user to `export NAME=value` in the shell."""
    comments = [line for line in (PROJECT_ROOT / ".env.example").read_text().splitlines() if line.startswith("#")]
    return any(f"export {name}={value}" in line for line in comments)


def test_no_client_reads_the_env_file() -> None:
    """The pipeline, DVC and MLflow read the shell's environment only: no project code loads .env."""
    code = [path for folder in ("yolo_mlops", "stages") for path in (PROJECT_ROOT / folder).rglob("*.py")]
    assert code
    loaders = [str(path.relative_to(PROJECT_ROOT)) for path in code
               if re.search(r"dotenv|[\"']\.env[\"']", path.read_text(encoding="utf-8"))]
    assert not loaders, f"{loaders} read .env: .env.example and the README say only make up/remote do"
    requirements = (PROJECT_ROOT / "requirements.txt").read_text().lower()
    assert "dotenv" not in requirements


def test_every_env_example_variable_is_read_by_make() -> None:
    """.env is read by `make up` (docker compose substitutes its variables), `make remote`, `make user` and the
    Ray targets (which source it) only; a client setting is a comment saying what to export."""
    example = env_example()
    compose = {match[1] for match in VARIABLE.finditer((PROJECT_ROOT / "docker-compose.yml").read_text())}
    assert compose <= set(example), f"compose uses {compose - set(example)}, missing from .env.example"
    assert "docker compose up" in makefile_recipe("up")  # compose reads .env from the project folder
    remote = makefile_recipe("remote")
    assert ". ./.env" in remote
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    ray_token = makefile.split("RAY_TOKEN := ", 1)[1].split("\n\n", 1)[0]  # what make ray-head/ray-worker run
    assert ". ./.env" in makefile_recipe("user") and ". ./.env" in ray_token
    sourced = {name for name in example
               if any(re.search(rf"\b{name}\b", text) for text in (remote, makefile_recipe("user"), ray_token))}
    unread = set(example) - compose - sourced
    assert not unread, (f".env.example sets {unread}: neither make up (compose) nor make remote, make user or the "
                        "Ray targets read it")


def test_env_example_holds_no_active_client_line() -> None:
    """The clients (DVC, MLflow, the pipeline) read the shell only: .env.example tells what to export, in comments."""
    assert not [name for name in env_example() if name.startswith("MLFLOW_TRACKING_")]
    assert exported_in_comments("MLFLOW_TRACKING_URI", "http://localhost:5000")
    assert "export MLFLOW_TRACKING_USERNAME=" in (PROJECT_ROOT / ".env.example").read_text()


def test_dvc_remotes_minio_and_local_without_credentials() -> None:
    config = (PROJECT_ROOT / ".dvc/config").read_text()
    assert "['remote \"minio\"']\n    url = s3://dvc\n    endpointurl = http://localhost:9000" in config
    assert "['remote \"local\"']\n    url = ../.dvc-remote" in config
    assert not re.search(r"access_key_id|secret_access_key|password", config)
    assert "/config.local" in (PROJECT_ROOT / ".dvc/.gitignore").read_text().split()


def make_fails(target: str, project: Path, message: str) -> None:
    """`make target` exits non-zero saying `message`, before doing anything."""
    result = run(["make", target], project, env=project_env(), check=False)
    assert result.returncode != 0 and message in result.stdout + result.stderr
    assert not (project / ".dvc/config.local").exists()
    assert "docker compose" not in result.stdout


def test_make_remote_refuses_a_missing_env_file(tmp_path: Path) -> None:
    make_fails("remote", copy_project(tmp_path / "project"), "error: .env is missing")


def test_make_remote_refuses_an_incomplete_env_file(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    (project / ".env").write_text("DVC_S3_ENDPOINT_URL=http://localhost:9000\nDVC_S3_ACCESS_KEY_ID=dvc-client\n")
    make_fails("remote", project, "error: .env: DVC_S3_SECRET_ACCESS_KEY is not set")


def test_make_up_refuses_a_missing_env_file(tmp_path: Path) -> None:
    make_fails("up", copy_project(tmp_path / "project"), "error: .env is missing")


def test_make_up_refuses_placeholder_credentials(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    (project / ".env").write_text((project / ".env.example").read_text())
    make_fails("up", project, "error: .env still holds change-me placeholder passwords")


def filled_env(**values: str) -> str:
    """.env.example with every change-me value replaced, then `values`."""
    example = {name: (f"chosen-{name.lower()}" if value.startswith("change-me") else value)
               for name, value in env_example().items()}
    return "".join(f"{name}={value}\n" for name, value in (example | values).items())


@pytest.mark.parametrize(("values", "message"), [
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": "password1234"}, "MLFLOW_AUTH_ADMIN_PASSWORD is MLflow's well-known old default"),
    ({"MLFLOW_AUTH_ADMIN_PASSWORD": "short"}, "MLFLOW_AUTH_ADMIN_PASSWORD is shorter than 12 characters"),
    ({"MLFLOW_FLASK_SERVER_SECRET_KEY": ""}, "error: .env: MLFLOW_FLASK_SERVER_SECRET_KEY is not set"),
])
def test_make_up_refuses_mlflows_default_a_short_admin_password_and_a_missing_key(
        tmp_path: Path, values: dict[str, str], message: str) -> None:
    project = copy_project(tmp_path / "project")
    (project / ".env").write_text(filled_env(**values))
    make_fails("up", project, message)


def test_make_user_and_the_ray_targets_refuse_without_their_secret(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    make_fails("user", project, "error: give the user and the role: make user NAME=<name> ROLE=")
    (project / ".env").write_text(filled_env(MLFLOW_AUTH_ADMIN_PASSWORD="", RAY_AUTH_TOKEN="change-me-ray"))
    result = run(["make", "-o", ".venv/.installed", "user", "NAME=alice", "ROLE=member"], project, check=False)
    assert result.returncode != 0 and "error: .env: MLFLOW_AUTH_ADMIN_PASSWORD is not set" in result.stdout
    for target in ("ray-head", "ray-worker RAY=127.0.0.1:6379"):
        result = run(["make", "-o", ".venv/.installed", *target.split()], project, check=False)
        assert result.returncode != 0 and "error: no Ray token: set RAY_AUTH_TOKEN in .env" in result.stdout
        assert "ray start" not in result.stdout + result.stderr


def test_the_ray_targets_start_nodes_in_token_mode_with_the_token_of_env_or_of_a_file(tmp_path: Path) -> None:
    """What `make ray-head` / `make ray-worker` hand to `ray start` (a stand-in `ray` on PATH prints it; the real
    cluster in token mode is tests/test_ray_token.py's): token mode, the token in the environment only."""
    project = copy_project(tmp_path / "project")
    stand_in = tmp_path / "bin" / "ray"
    stand_in.parent.mkdir()
    stand_in.write_text('#!/bin/sh\necho "ray $* | mode=$RAY_AUTH_MODE token=${RAY_AUTH_TOKEN:+set} '
                        'path=${RAY_AUTH_TOKEN_PATH:-}"\n')
    stand_in.chmod(0o755)
    env = project_env(PATH=f"{stand_in.parent}:{project_env()['PATH']}")
    token = "t" * 64
    (project / ".env").write_text(filled_env(RAY_AUTH_TOKEN=token))
    head = run(["make", "-o", ".venv/.installed", "ray-head"], project, env=env)
    assert "ray start --head --port=6379" in head.stdout and "| mode=token token=set path=\n" in head.stdout
    (tmp_path / "token").write_text("f" * 64)
    worker = run(["make", "-o", ".venv/.installed", "ray-worker", "RAY=10.0.0.1:6379"], project,
                 env=env | {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")})
    assert "ray start --address=10.0.0.1:6379" in worker.stdout
    assert f"| mode=token token= path={tmp_path / 'token'}\n" in worker.stdout  # the file wins; .env is not read
    for result in (head, worker):
        assert token not in result.stdout + result.stderr and "f" * 64 not in result.stdout + result.stderr
