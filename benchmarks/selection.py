"""Benchmark: selecting the best run among 1,000 in the embedded MLflow store (SQLite), with the
filter and the ordering done by the tracking server's search (target: ≤ 2 s).

    python benchmarks/selection.py [--runs 1000] [--repeat 5]

Fills a throw-away store with synthetic runs shaped like the log stage's (ranking metrics, DVC
tags; a tenth of them from another commit, some FAILED, some with NaN metrics), then times
`yolo_mlops.grid.ranking.select_best` as `make run` calls it."""

import argparse
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlflow import MlflowClient
from mlflow.entities import Metric, RunTag

from yolo_mlops.core import vocabulary
from yolo_mlops.core.params import load_params
from yolo_mlops.core.paths import EMBEDDED_DB, PARAMS_FILE
from yolo_mlops.grid.ranking import select_best

BASELINE = "b" * 40


def fill(client: MlflowClient, experiment_id: str, runs: int, rank_by: tuple[str, ...]) -> None:
    generator = random.Random(0)
    for index in range(runs):
        baseline = BASELINE if index % 10 else "a" * 40
        run_id = client.create_run(experiment_id, run_name=f"exp-{index:04d}").info.run_id
        value = math.nan if index % 97 == 0 else generator.random()
        client.log_batch(
            run_id,
            metrics=[Metric(vocabulary.eval_metric(name), value if i == 0 else generator.random(), 0, 0)
                     for i, name in enumerate(rank_by)],
            tags=[RunTag(vocabulary.EXP_NAME_TAG, f"exp-{index:04d}"), RunTag(vocabulary.BASELINE_TAG, baseline),
                  RunTag(vocabulary.LOG_STATUS_TAG, vocabulary.COMPLETE)],
        )
        client.set_terminated(run_id, "FAILED" if index % 50 == 0 else "FINISHED")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rank_by = load_params(Path(__file__).resolve().parents[1] / PARAMS_FILE).compare.rank_by
    with tempfile.TemporaryDirectory(prefix="selection-bench-") as folder:
        client = MlflowClient(f"sqlite:///{Path(folder) / EMBEDDED_DB}")
        experiment_id = client.create_experiment("bench", artifact_location=Path(folder).as_uri())
        started = time.perf_counter()
        fill(client, experiment_id, args.runs, rank_by)
        print(f"filled {args.runs} runs in {time.perf_counter() - started:.1f} s")
        timings, best = [], None
        for _ in range(args.repeat):
            started = time.perf_counter()
            best = select_best(client, [experiment_id], BASELINE, rank_by)
            timings.append(time.perf_counter() - started)
    assert best is not None
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} core(s), "
          f"Python {platform.python_version()}, SQLite store")
    print(f"selected {best.name} ({rank_by[0]} {best.metrics[rank_by[0]]:.4f}) among {args.runs} runs")
    print(f"select_best over {args.runs} runs: median {statistics.median(timings):.3f} s, "
          f"max {max(timings):.3f} s over {args.repeat} repeats (target ≤ 2 s)")


if __name__ == "__main__":
    main()
