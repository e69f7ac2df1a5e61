"""Benchmark: a grid of short points that loses a DVC queue worker half-way (`kill -9`), against itself.

`python -m yolo_mlops.grid run` over POINTS seeds (1 epoch, imgsz 64, `yolov8n.yaml`, two queue workers) in a
fresh clone of the last commit, the embedded store. Once KILL_AFTER experiments have a FINISHED MLflow run, one
worker that runs an experiment is killed with SIGKILL, as kombu's filesystem race ends one. The baseline, in the
same run: the seconds per point while both workers were up (the queue's first start to the kill, over the
points finished by then); against it, the seconds per point after the kill (the kill to the last finished run,
over the points left, the dead worker's experiment run again among them). Prints the machine, both figures and
their ratio (issue 22's target: <= 1.1), the grid's one line about the dead worker, and how long it took to
appear. Checks that every experiment ended with one FINISHED run.

    .venv/bin/python benchmarks/queue_workers.py [--points 10] [--kill-after 3] [--coco128 PATH]

On a 2-CPU machine it takes about 8 minutes.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from mlflow import MlflowClient  # noqa: E402

from benchmarks.pipeline_overhead import machine  # noqa: E402
from yolo_mlops.core.paths import EMBEDDED_DB, GRID_FILE  # noqa: E402
from yolo_mlops.core.vocabulary import EXP_NAME_TAG  # noqa: E402
from yolo_mlops.grid.experiments import EXEC_RUN, PROGRESS_MARK, queue_workers  # noqa: E402

POINTS, KILL_AFTER = 10, 3
SETTINGS = {"train.model": "yolov8n.yaml", "train.epochs": 1, "train.imgsz": 64}
TARGET = 1.1
EXPERIMENT = "cv_yolo_tiny"  # params.yaml's MLflow experiment
DEAD_LINE = "grid: DVC queue worker "


def finished_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'") if experiment else []


def kill_busy_worker(clone: Path) -> int | None:
    """SIGKILL to one queue worker that runs an experiment; its pid, or None when none does."""
    for worker in queue_workers(clone):
        try:
            if any(EXEC_RUN in child.cmdline() for child in worker.children()):
                os.kill(worker.pid, signal.SIGKILL)
                return worker.pid
        except (psutil.Error, ProcessLookupError):  # it ended meanwhile
            continue
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=POINTS)
    parser.add_argument("--kill-after", type=int, default=KILL_AFTER)
    parser.add_argument("--coco128", default=str(PROJECT.parent / "shared" / "data" / "coco128.zip"))
    args = parser.parse_args()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as scratch:
        clone = Path(scratch) / "project"
        subprocess.run(["git", "clone", "-q", str(PROJECT), str(clone)], check=True)
        (clone / GRID_FILE).write_text(yaml.safe_dump({"train.seed": list(range(1, args.points + 1))}))
        overrides = [arg for key, value in SETTINGS.items() for arg in ("-S", f"{key}={value}")]
        command = [sys.executable, "-m", "yolo_mlops.grid", "run", "-S",
                   f"prepare.source={Path(args.coco128).resolve()}", *overrides]
        client = MlflowClient(f"sqlite:///{clone / EMBEDDED_DB}")
        marks: dict[str, float] = {}
        lines: list[str] = []

        def follow(stream) -> None:
            for line in stream:
                lines.append(line)
                if PROGRESS_MARK in line:
                    marks.setdefault("queue", time.time())
                if line.startswith(DEAD_LINE):
                    marks.setdefault("reported", time.time())

        driver = subprocess.Popen(command, cwd=clone, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        reader = threading.Thread(target=follow, args=(driver.stdout,), daemon=True)
        reader.start()
        killed_after = 0
        while driver.poll() is None and "kill" not in marks:
            if (client.get_experiment_by_name(EXPERIMENT) if (clone / EMBEDDED_DB).exists() else None) is not None:
                killed_after = len(finished_runs(client))
                if killed_after >= args.kill_after and kill_busy_worker(clone) is not None:
                    marks["kill"] = time.time()
            time.sleep(1)
        driver.wait()
        reader.join(timeout=10)
        if driver.returncode != 0 or "kill" not in marks or "queue" not in marks:
            raise SystemExit(f"the grid exited {driver.returncode} (killed a worker: {'kill' in marks}):\n"
                             + "".join(lines[-40:]))
        runs = finished_runs(client)
        names = [run.data.tags.get(EXP_NAME_TAG) for run in runs]
        ends = sorted(run.info.end_time / 1000 for run in runs)
        killed_after = sum(end <= marks["kill"] for end in ends)
    before = (marks["kill"] - marks["queue"]) / killed_after
    after = (ends[-1] - marks["kill"]) / (len(ends) - killed_after)
    dead = next((line.strip() for line in lines if line.startswith(DEAD_LINE)), "none")
    print(f"\nmachine: {machine()}; load average {os.getloadavg()[0]:.2f} at the end")
    print(f"grid: {args.points} points ({SETTINGS}), two queue workers; one killed after {killed_after} finished")
    print(f"the grid's line, {marks.get('reported', float('nan')) - marks['kill']:.1f} s after the kill: {dead}")
    print(f"FINISHED MLflow runs: {len(runs)} for {len(set(names))} experiment(s)"
          + ("" if len(runs) == len(set(names)) == args.points else " -- NOT one each"))
    print(f"seconds per point: {before:.1f} with both workers up (the baseline), {after:.1f} after the kill; "
          f"ratio {after / before:.2f} (target <= {TARGET}: {'met' if after / before <= TARGET else 'not met'})")


if __name__ == "__main__":
    main()
