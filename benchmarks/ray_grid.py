"""Benchmark: the grid on a Ray cluster of one worker node against two.

Runs, in one script on one machine, the 4-point tiny grid of tests/test_grid_ray.py (lr0 × seed,
yolov8n.yaml, imgsz 64, 1 epoch, real COCO128) with `python -m yolo_mlops.grid run --ray`, first on
a cluster with one worker node, then with two, each node limited to one CPU. Each run has a fresh
project clone, git remote, S3 bucket (moto, the stand-in for MinIO) and `mlflow server`, so that no
run-cache hit carries over from one to the other. Prints the machine, the time until the last point
finished (the fan-out) and the whole command's time (with pull, sync, compare and promotion) for
each, and the speed-ups.

    .venv/bin/python benchmarks/ray_grid.py [--coco128 PATH]
"""

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

import ray  # noqa: E402

from tests.conftest import COCO128_ZIP, TINY_PARAMS, copy_project  # noqa: E402
from tests.stack import client_env, mlflow_server, ray_cluster, s3_server, team_clone  # noqa: E402
from tests.test_grid_ray import GATES, GRID, grid_command  # noqa: E402


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), Python "
            f"{platform.python_version()}, Ray {ray.__version__}")


def timed_grid(workers: int, coco128: Path, root: Path) -> tuple[float, float]:
    """(seconds until the last point finished, seconds of the whole command) on `workers` worker nodes."""
    with s3_server(root) as s3, mlflow_server(f"sqlite:///{root}/mlflow.db", s3.endpoint, root) as server, \
            ray_cluster(workers) as (cluster, _):
        project = team_clone(copy_project(root / "project", TINY_PARAMS | GATES | {"prepare.source": str(coco128)}),
                             s3, root / "remote.git")
        (project / "grid.yaml").write_text(GRID)
        env = {key: value for key, value in client_env(server.uri).items()
               if key not in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")}
        started = time.monotonic()
        fanned_out = 0.0
        with subprocess.Popen(grid_command(cluster.address), cwd=project, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as driver:
            assert driver.stdout is not None
            for line in driver.stdout:
                if line.startswith("[4/4]"):
                    fanned_out = time.monotonic() - started
                print(f"  {line}", end="", flush=True)
        if driver.returncode != 0:
            raise SystemExit(f"the grid on {workers} worker node(s) exited {driver.returncode}")
        return fanned_out, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--coco128", type=Path, default=COCO128_ZIP)
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    figures = {}
    for workers in (1, 2):
        print(f"\n{workers} worker node(s) of 1 CPU:", flush=True)
        with tempfile.TemporaryDirectory(prefix=f"ray-grid-{workers}-") as folder:
            figures[workers] = timed_grid(workers, args.coco128.resolve(), Path(folder))
    print()
    for workers, (points, whole) in figures.items():
        print(f"{workers} worker node(s): 4 points done in {points:.1f} s, whole command {whole:.1f} s")
    print(f"speed-up with 2 nodes: {figures[1][0] / figures[2][0]:.2f}x on the points, "
          f"{figures[1][1] / figures[2][1]:.2f}x on the whole command")


if __name__ == "__main__":
    main()
