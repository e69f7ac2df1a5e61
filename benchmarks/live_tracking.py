"""Benchmark: what live tracking adds to the train stage.

Alternates, in one script and on one machine, the train stage's process (`python -m stages.train`) with
its live tracking, which opens the MLflow run, sends each epoch from a background thread and samples the
system, and the same stage with live tracking replaced by nothing (baseline). Every round logs to a new
MLflow experiment, so each tracked round really opens a run. The embedded store is used unless
MLFLOW_TRACKING_URI is set. Prints the machine, each timing, the medians, their difference (target:
at most 1 s per experiment) and their ratio.

    .venv/bin/python benchmarks/live_tracking.py [--rounds 3] [--coco128 PATH]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from benchmarks.pipeline_overhead import machine, set_params, timed  # noqa: E402

CONFIG = {"model": "yolov8n.yaml", "epochs": 3, "imgsz": 320, "device": "cpu"}
UNTRACKED_TRAINING = """
import contextlib
import stages.train
from yolo_mlops.core.entry import run_main
stages.train.tracked_training = lambda params: contextlib.nullcontext({})  # the stage, without live tracking
run_main(stages.train.main)
"""
TARGET_S = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--coco128", default=str(PROJECT.parent / "shared" / "data" / "coco128.zip"))
    args = parser.parse_args()
    env = {key: value for key, value in os.environ.items() if not key.startswith("DVC_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        project = Path(scratch) / "project"
        subprocess.run(["git", "clone", "-q", str(PROJECT), str(project)], check=True)
        set_params(project, prepare__source=str(Path(args.coco128).resolve()),
                   **{f"train__{key}": value for key, value in CONFIG.items()})
        subprocess.run(["dvc", "repro", "prepare"], cwd=project, env=env, check=True, stdout=subprocess.DEVNULL)
        untracked, tracked = [], []
        print(f"machine: {machine()}")
        print(f"config: {CONFIG}, 40/10/10 images; store: {env.get('MLFLOW_TRACKING_URI', 'embedded (SQLite)')}; "
              f"{args.rounds} alternating rounds")
        for round_number in range(1, args.rounds + 1):
            set_params(project, mlflow__experiment_name=f"benchmark_live_{round_number}")
            untracked.append(timed([sys.executable, "-c", UNTRACKED_TRAINING], project, env))
            tracked.append(timed([sys.executable, "-m", "stages.train"], project, env))
            print(f"round {round_number}: train stage without live tracking {untracked[-1]:.2f} s, "
                  f"with it {tracked[-1]:.2f} s")
    base, live = statistics.median(untracked), statistics.median(tracked)
    print(f"median: without {base:.2f} s, with {live:.2f} s: live tracking adds {live - base:+.2f} s per experiment "
          f"(target <= {TARGET_S:.0f} s), ratio {live / base:.3f}")


if __name__ == "__main__":
    main()
