"""docker-compose.yml, .env.example, the MLflow image and the DVC remotes, checked as data
(no container engine on these machines), and `make remote` on bad input."""

import re
from pathlib import Path

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
    readme = (PROJECT_ROOT / "README.md").read_text().split("## Team stack", 1)[1].split("\n## ", 1)[0]
    for name in SERVICES:
        assert f"`{name}`" in readme, f"README's team section does not describe service {name}"


def test_published_ports_are_bound_to_loopback_by_default() -> None:
    published = {}
    for name, service in SERVICES.items():
        for mapping in service.get("ports", []):
            host_ip, host_port, _ = interpolate(mapping).rsplit(":", 2)
            assert host_ip == "127.0.0.1", f"{name} publishes {mapping} beyond loopback"
            published[int(host_port)] = name
    assert published == {9000: "minio", 9001: "minio", 5000: "mlflow"}  # PostgreSQL stays internal
    assert env_example()["MLFLOW_TRACKING_URI"] == "http://localhost:5000"
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
    assert f"mlflow=={pins['mlflow']}" in dockerfile
    assert re.search(r"psycopg2-binary==[\d.]+", dockerfile) and re.search(r"boto3==[\d.]+", dockerfile)


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


def test_every_env_example_variable_is_read_by_make_up_or_make_remote_or_exported_by_the_user() -> None:
    """.env is read by `make up` (docker compose substitutes its variables) and `make remote` (which
    sources it) only; any other variable of .env.example must be one its comments say to export."""
    example = env_example()
    compose = {match[1] for match in VARIABLE.finditer((PROJECT_ROOT / "docker-compose.yml").read_text())}
    assert compose <= set(example), f"compose uses {compose - set(example)}, missing from .env.example"
    assert "docker compose up" in makefile_recipe("up")  # compose reads .env from the project folder
    remote = makefile_recipe("remote")
    assert ". ./.env" in remote
    sourced = {name for name in example if re.search(rf"\b{name}\b", remote)}
    exported = {name for name, value in example.items() if exported_in_comments(name, value)}
    assert "MLFLOW_TRACKING_URI" in exported, ".env.example must say to export MLFLOW_TRACKING_URI in the shell"
    unread = set(example) - compose - sourced - exported
    assert not unread, (f".env.example sets {unread}: neither make up (compose) nor make remote reads it, "
                        "and its comments do not say to export it in the shell")


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
