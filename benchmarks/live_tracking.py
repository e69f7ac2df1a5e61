"""Benchmark: what live tracking adds to the train and evaluate stages.

Alternates, in one script and on one machine, each stage's process (`python -m stages.train`, then
`python -m stages.evaluate`) with its live tracking (train: opens the MLflow run, sends each epoch from a
background thread, samples the system; evaluate: sends its metrics and plots) and the same stage with
live tracking replaced by nothing (baseline). Every round logs to a new MLflow experiment, so each
tracked round really opens a run. The embedded store is used unless MLFLOW_TRACKING_URI is set. Prints
the machine, each timing, the medians, their differences and their sum per experiment (target: at
most 1 s), and the train stage's ratio.

    .venv/bin/python benchmarks/live_tracking.py [--rounds 3] [--coco128 PATH]
"""

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from benchmarks.pipeline_overhead import CONFIG, machine, prepared_clone, set_params, timed  # noqa: E402

# The stage itself, its live tracking replaced by nothing.
UNTRACKED = {
    "train": "import contextlib, stages.train\nfrom yolo_mlops.core.entry import run_main\n"
             "stages.train.tracked_training = lambda: contextlib.nullcontext({})\nrun_main(stages.train.main)",
    "evaluate": "import contextlib, stages.evaluate\nfrom yolo_mlops.core.entry import run_main\n"
                "stages.evaluate.tracked_evaluation = lambda: contextlib.nullcontext()\n"
                "run_main(stages.evaluate.main)",
}
TARGET_S = 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--coco128", default=str(PROJECT.parent / "shared" / "data" / "coco128.zip"))
    args = parser.parse_args()
    env = {key: value for key, value in os.environ.items() if not key.startswith("DVC_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        project = prepared_clone(Path(scratch), args.coco128, env)
        untracked: dict[str, list[float]] = {stage: [] for stage in UNTRACKED}
        tracked: dict[str, list[float]] = {stage: [] for stage in UNTRACKED}
        print(f"machine: {machine()}")
        print(f"config: {CONFIG}, 40/10/10 images; store: {env.get('MLFLOW_TRACKING_URI', 'embedded (SQLite)')}; "
              f"{args.rounds} alternating rounds")
        for round_number in range(1, args.rounds + 1):
            set_params(project, mlflow__experiment_name=f"benchmark_live_{round_number}")
            for stage, code in UNTRACKED.items():
                untracked[stage].append(timed([sys.executable, "-c", code], project, env))
                tracked[stage].append(timed([sys.executable, "-m", f"stages.{stage}"], project, env))
                print(f"round {round_number}: {stage} without live tracking {untracked[stage][-1]:.2f} s, "
                      f"with it {tracked[stage][-1]:.2f} s", flush=True)
    added = {stage: statistics.median(tracked[stage]) - statistics.median(untracked[stage]) for stage in UNTRACKED}
    for stage in UNTRACKED:
        print(f"{stage}: median without {statistics.median(untracked[stage]):.2f} s, with "
              f"{statistics.median(tracked[stage]):.2f} s: {added[stage]:+.2f} s")
    print(f"live tracking adds {sum(added.values()):+.2f} s per experiment (target <= {TARGET_S:.0f} s); train stage "
          f"ratio {statistics.median(tracked['train']) / statistics.median(untracked['train']):.3f}")


if __name__ == "__main__":
    main()
