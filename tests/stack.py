"""The team stack as real processes on loopback, for the test_stack_* tests.

docker-compose.yml runs MinIO, PostgreSQL and `mlflow server`. These machines have no container
engine and MinIO cannot be installed here, so moto's standalone S3 server (`moto_server`) stands
in for MinIO: it speaks the S3 protocol over HTTP to boto3, DVC and MLflow alike. PostgreSQL and
`mlflow server` are the real programs, started by the tests and bound to 127.0.0.1 only."""

import fcntl
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.conftest import PROJECT_ROOT, TINY_PARAMS, copy_project, free_port, project_env, run

HOST = "127.0.0.1"
BUCKETS = ("mlflow", "dvc")  # as created by the compose file's init service
# Throw-away credentials of the stand-in S3 server (moto accepts any).
S3_ENV = {"AWS_ACCESS_KEY_ID": "stack-test-user", "AWS_SECRET_ACCESS_KEY": "stack-test-password",
          "AWS_DEFAULT_REGION": "us-east-1"}
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30
BIN = Path(sys.executable).parent
AUTH_ENTRYPOINT = PROJECT_ROOT / "docker" / "mlflow" / "auth-config.sh"  # the MLflow image's entry point


def answers(url: str) -> bool:
    """True when `url` answers HTTP 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def wait_for(ready: Callable[[], bool], what: str, process: "Service | None" = None,
             timeout: float = START_TIMEOUT_S) -> None:
    """Poll `ready` until it holds; fail with the service's log when it dies or the time is up."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process is not None and process.popen.poll() is not None:
            pytest.fail(f"{what} exited {process.popen.returncode}:\n{process.log_tail()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready after {timeout} s" + (f":\n{process.log_tail()}" if process else ""))
        time.sleep(0.2)


@dataclass
class Service:
    """A server process in its own process group, its output in a log file."""

    popen: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, command: list[str], env: dict[str, str], log: Path) -> "Service":
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as output:
            popen = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        return cls(popen, log)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """Kill the whole process group at once, as a crash or an OOM kill would."""
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def client(self):  # boto3's S3 client type is generated at run time
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=S3_ENV["AWS_SECRET_ACCESS_KEY"],
                            region_name=S3_ENV["AWS_DEFAULT_REGION"])

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


@contextmanager
def s3_server(log_dir: Path, port: int | None = None) -> Iterator[S3Server]:
    """moto's S3 server (the stand-in for MinIO) on 127.0.0.1, with the stack's buckets."""
    port = port or free_port(HOST)
    service = Service.start([str(BIN / "moto_server"), "-H", HOST, "-p", str(port)], project_env(),
                            log_dir / f"moto-{port}.log")
    try:
        server = S3Server(f"http://{HOST}:{port}")
        wait_for(lambda: answers(server.endpoint), "moto S3 server", service)
        for bucket in BUCKETS:
            server.client().create_bucket(Bucket=bucket)
        yield server
    finally:
        service.stop()


def postgres_bindir() -> Path | None:
    """Where Debian's `postgresql` package put initdb and pg_ctl, if it is installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@contextmanager
def postgres_server() -> Iterator[str]:
    """A throw-away PostgreSQL cluster on 127.0.0.1 with an `mlflow` database; yields its URI.

    PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user."""
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql; .ci/run does it on CI)")
    as_user: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and there is no `postgres` user to run PostgreSQL as")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="stack-postgres-"))  # under /tmp: the postgres user can enter it
    port, password = free_port(HOST), "stack-test-db-password"
    (root / "password").write_text(password)
    for path in (root, root / "password") if as_user else ():
        shutil.chown(path, "postgres", "postgres")
    data, env = root / "data", project_env(PGPASSWORD=password)

    def postgres(*command: str) -> None:
        result = subprocess.run([*as_user, str(bindir / command[0]), *command[1:]], env=env, cwd=root,
                                capture_output=True, text=True, timeout=START_TIMEOUT_S)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")

    try:
        postgres("initdb", "-D", str(data), "-U", "mlflow", f"--pwfile={root / 'password'}",
                 "--auth=scram-sha-256", "-E", "UTF8")
        postgres("pg_ctl", "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", str(START_TIMEOUT_S),
                 "-o", f"-c listen_addresses={HOST} -p {port} -k {root}", "start")
        postgres("createdb", "-h", HOST, "-p", str(port), "-U", "mlflow", "mlflow")
        yield f"postgresql+psycopg2://mlflow:{password}@{HOST}:{port}/mlflow"  # the driver installed
    finally:
        if (data / "postmaster.pid").exists():
            postgres("pg_ctl", "-D", str(data), "-m", "fast", "-w", "-t", str(STOP_TIMEOUT_S), "stop")
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class MlflowServer:
    """A real `mlflow server`: artifacts proxied to s3://mlflow (as in docker-compose.yml) or,
    with `proxy_artifacts=False`, uploaded by the clients themselves."""

    backend_uri: str
    s3_endpoint: str
    log_dir: Path
    port: int
    proxy_artifacts: bool = True
    auth: dict[str, str] | None = None  # sign-in on (`--app-name basic-auth`): the admin's password and the key
    service: Service | None = None

    @property
    def uri(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> "MlflowServer":
        artifacts = (["--serve-artifacts", "--artifacts-destination", "s3://mlflow"] if self.proxy_artifacts
                     else ["--no-serve-artifacts", "--default-artifact-root", "s3://mlflow"])
        env = project_env(MLFLOW_S3_ENDPOINT_URL=self.s3_endpoint, AWS_MAX_ATTEMPTS="2", **S3_ENV)
        command = [str(BIN / "mlflow"), "server", "--backend-store-uri", self.backend_uri, *artifacts,
                   "--host", HOST, "--port", str(self.port), "--workers", "1"]
        if self.auth is not None:  # as docker-compose.yml runs it: the image's entry point writes the auth config
            env |= self.auth | {"MLFLOW_AUTH_DATABASE_URI": self.backend_uri,
                                "MLFLOW_AUTH_CONFIG_PATH": str(self.log_dir / f"basic_auth-{self.port}.ini")}
            command = ["sh", str(AUTH_ENTRYPOINT), *command, "--app-name", "basic-auth"]
        self.service = Service.start(command, env, self.log_dir / f"mlflow-{self.port}.log")
        wait_for(lambda: answers(f"{self.uri}/health"), "mlflow server", self.service)
        return self

    def stop(self) -> None:
        if self.service:
            self.service.stop()


@contextmanager
def mlflow_server(backend_uri: str, s3_endpoint: str, log_dir: Path, port: int | None = None,
                  proxy_artifacts: bool = True, auth: dict[str, str] | None = None) -> Iterator[MlflowServer]:
    server = MlflowServer(backend_uri, s3_endpoint, log_dir, port or free_port(HOST), proxy_artifacts, auth)
    try:
        yield server.start()
    finally:
        server.stop()


def client_env(tracking_uri: str, **extra: str) -> dict[str, str]:
    """A team member's shell: only MLFLOW_TRACKING_URI set, no S3 endpoint and no S3 credentials."""
    env = {key: value for key, value in project_env().items() if not key.startswith("AWS_")}
    return env | {"MLFLOW_TRACKING_URI": tracking_uri, "AWS_EC2_METADATA_DISABLED": "true",
                  "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_CONFIG_FILE": os.devnull} | extra


def copy_results(source: Path, destination: Path) -> Path:
    """A copy of a project folder with its git history, DVC cache and outputs."""
    shutil.copytree(source, destination, symlinks=True)
    return destination


@dataclass(frozen=True)
class Offline:
    """The tiny pipeline run while its tracking server is down."""

    project: Path
    result: subprocess.CompletedProcess
    port: int  # where the tracking server should have been


def run_without_server(project_dir: Path) -> Offline:
    """`dvc repro` with MLFLOW_TRACKING_URI at a port nothing listens on: prepare, train and
    evaluate complete, the log stage fails. Tests work on copies of the project."""
    port = free_port(HOST)
    project = copy_project(project_dir, TINY_PARAMS)
    result = run(["dvc", "repro"], project, env=client_env(f"http://{HOST}:{port}"), check=False)
    return Offline(project, result, port)


RAY_OBJECT_STORE = 100 * 2**20  # bytes per node: the grid passes no data through Ray's object store
# The test clusters' token (Ray's token mode), one per test session: Ray caches the token of a process.
RAY_TOKEN_ENV = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


@contextmanager
def one_at_a_time(name: str) -> Iterator[None]:
    """Hold a lock that other test processes on this machine wait for (`make test` runs its test files in two
    pytest-xdist workers): two Ray clusters at once would share ports and CPUs."""
    with open(Path(tempfile.gettempdir()) / f"yolo-mlops-tests-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def ray_cluster(workers: int) -> Iterator[tuple[Any, list]]:
    """A real Ray cluster on this machine (`ray.cluster_utils.Cluster`) in token mode (RAY_TOKEN_ENV): a head
    node that runs nothing (no CPU, no dashboard) and `workers` worker nodes of one CPU each, as processes;
    yields the cluster (`.address`; `.remove_node(node)` kills a node) and its worker nodes. Its processes, and
    the drivers the test starts meanwhile, inherit this environment, the token included."""
    from ray.cluster_utils import Cluster

    with one_at_a_time("ray-cluster"):  # another test file's cluster, in the other pytest-xdist worker
        saved = {name: os.environ.get(name) for name in ("PATH", "RAY_USAGE_STATS_ENABLED", *RAY_TOKEN_ENV)}
        os.environ["PATH"] = f"{BIN}{os.pathsep}{saved['PATH'] or ''}"  # the tasks run this virtualenv's dvc, as
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # `make ray-worker`'s do; and no usage statistics, as there
        os.environ.update(RAY_TOKEN_ENV)  # token mode, as `make ray-head` starts it: the drivers started here get it
        reset_ray_token_state()
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False, "object_store_memory": RAY_OBJECT_STORE})
        try:
            nodes = [cluster.add_node(num_cpus=1, object_store_memory=RAY_OBJECT_STORE) for _ in range(workers)]
            cluster.wait_for_nodes()
            yield cluster, nodes
        finally:
            cluster.shutdown()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            reset_ray_token_state()


def reset_ray_token_state() -> None:
    """Make this process's Ray read its token mode and token from the environment again (Ray caches them;
    as its own tests do, ray._private.authentication_test_utils)."""
    from ray._private.authentication_test_utils import reset_auth_token_state

    reset_auth_token_state()


def team_clone(project: Path, s3: S3Server, git_remote: Path) -> Path:
    """Make a committed project copy a team member's clone: a bare repository as its git remote `origin`
    (pushed), and the S3 bucket `dvc` as its default DVC remote in .dvc/config.local, as `make remote`
    writes it (endpoint and keys)."""
    run(["git", "init", "-q", "--bare", str(git_remote)], project)
    run(["git", "remote", "add", "origin", str(git_remote)], project)
    run(["git", "push", "-q", "origin", "HEAD"], project)
    for args in (["add", "--local", "-d", "team", "s3://dvc"],
                 ["modify", "--local", "team", "endpointurl", s3.endpoint],
                 ["modify", "--local", "team", "access_key_id", S3_ENV["AWS_ACCESS_KEY_ID"]],
                 ["modify", "--local", "team", "secret_access_key", S3_ENV["AWS_SECRET_ACCESS_KEY"]]):
        run(["dvc", "remote", *args], project)
    return project
