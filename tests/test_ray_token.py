"""Ray's token mode (RAY_AUTH_MODE=token), on loopback: a real cluster (`ray.cluster_utils.Cluster`, as
tests/stack.py starts every test cluster, in token mode) refuses a driver without its token or with a
wrong one, and runs a driver's tasks with it. The grid itself runs on such a cluster in test_grid_ray.py;
`make ray-head` / `make ray-worker` without a token are refused in test_stack_compose.py."""

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, project_env
from tests.stack import RAY_TOKEN_ENV, ray_cluster

# A driver as `python -m yolo_mlops.grid run --ray` joins the cluster (grid/cluster.py), then one task.
DRIVER = ("import ray; from yolo_mlops.core.entry import run_main; from yolo_mlops.grid.cluster import connect; "
          "run_main(lambda: print('cpus', connect(sys.argv[1])['CPU'], 'task', ray.get(ray.remote(lambda: 6 * 7)"
          ".remote())))")
TOKEN = RAY_TOKEN_ENV["RAY_AUTH_TOKEN"]


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    with ray_cluster(workers=1) as (cluster, _):
        yield cluster.address


def driver(address: str, **token: str) -> tuple[subprocess.CompletedProcess, float]:
    """The driver in a process of its own (Ray keeps one token per process), with only `token`'s variables."""
    env = {name: value for name, value in project_env().items() if not name.startswith("RAY_AUTH_")} | token
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", f"import sys; {DRIVER}", address], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=180)
    return result, time.monotonic() - started


def error_line(result: subprocess.CompletedProcess) -> str:
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    return line


def test_a_driver_without_a_token_is_refused_at_once_saying_what_to_set(address: str) -> None:
    result, took = driver(address)
    assert result.returncode == 1 and took < 15
    line = error_line(result)
    assert "no Ray token: set RAY_AUTH_TOKEN to the cluster's token" in line and "RAY_AUTH_TOKEN_PATH" in line
    assert line.endswith("Nothing was run.")


def test_a_driver_with_a_wrong_token_is_refused_by_the_cluster(address: str) -> None:
    result, took = driver(address, RAY_AUTH_TOKEN="0" * 64)
    assert result.returncode == 1 and took < 90
    line = error_line(result)
    assert f"Ray cluster at {address} refused this driver" in line and "with the token from RAY_AUTH_TOKEN" in line
    assert "set RAY_AUTH_TOKEN to the cluster's token" in line and "0" * 64 not in result.stdout + result.stderr


def test_a_driver_with_the_token_runs_its_tasks(address: str) -> None:
    result, _ = driver(address, RAY_AUTH_TOKEN=TOKEN)  # RAY_AUTH_MODE unset: the grid sets it
    assert result.returncode == 0, result.stderr[-3000:]
    assert "cpus 1.0 task 42" in result.stdout and TOKEN not in result.stdout + result.stderr


def test_a_driver_takes_the_token_from_the_file_ray_auth_token_path_names(address: str, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN)
    result, _ = driver(address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(tmp_path / "token"))
    assert result.returncode == 0, result.stderr[-3000:]
    missing, _ = driver(address, RAY_AUTH_TOKEN_PATH=str(tmp_path / "absent"))
    assert missing.returncode == 1 and "RAY_AUTH_TOKEN_PATH=" in error_line(missing) and "no such file" in error_line(
        missing)
