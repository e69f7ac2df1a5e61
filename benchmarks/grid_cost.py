"""Benchmark: the experiment grid through the project's `run` command against the plain way.

Alternates, in one script and on one machine, round after round:
(a) the plain way, two at a time (the baseline): one fresh `python` process per grid point, two running at
    once, each pinned to half of the machine's cores, training `YOLO("yolov8n.yaml")` with Ultralytics'
    defaults (plots on) and the other train params of params.yaml on the prepared 40/10/10 data,
    Ultralytics' integrations off except its own MLflow logging (params, metrics, the run folder) to a
    SQLite store of its own;
(b) `python -m yolo_mlops.grid run` in a fresh clone of the last commit (setup, the virtualenv,
    excluded; the embedded store), with its default of two DVC queue workers: the same parallelism;
(c) informational: the plain way one point after the other, and the grid with `--jobs 1`.
`--config` picks the grid: `course` (grid.yaml as committed: 3 epochs, imgsz 320/416) or `short`
(SHORT_GRID: 1 epoch, imgsz 64/96, where the constant each experiment pays is most of its cost).
Then times `run` again with nothing changed, and breaks one experiment's overhead down in another
fresh clone: DVC's queue (one queued experiment against `dvc repro --force`), DVC's bookkeeping
(`dvc repro --force` against each stage's process alone), each stage's process start (a fresh
`python` importing what the stage imports before it works), MLflow (train and evaluate against
themselves with live tracking replaced by nothing, and the log stage less its process start).
Prints the machine, each timing, the ratios against the targets (grid / plain two at a time: course
<= 1.10, stretch 1.0; short <= 2.0, stretch 1.5; the no-op run <= 10 s), each grid run split into its
experiments (their MLflow runs' span) and what comes before and after them, and the breakdown.

    .venv/bin/python benchmarks/grid_cost.py [--config course|short] [--rounds 1] [--skip SIDE ...]
                                             [--coco128 PATH]

On a 2-CPU machine one round takes about 25 minutes (course) or 12 (short); `--skip serial jobs1
breakdown` leaves the baseline and the grid.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from mlflow import MlflowClient  # noqa: E402

from benchmarks.live_tracking import UNTRACKED  # noqa: E402
from benchmarks.pipeline_overhead import CONFIG, STAGES, machine, prepared_clone, set_params, timed  # noqa: E402
from yolo_mlops.core.params import load_params, read_yaml  # noqa: E402
from yolo_mlops.core.paths import DATA_YAML, DATASET_DIR, EMBEDDED_DB, GRID_FILE, PARAMS_FILE  # noqa: E402
from yolo_mlops.grid.experiments import list_experiments  # noqa: E402
from yolo_mlops.grid.points import combinations, load_grid  # noqa: E402
from yolo_mlops.yolo.model import ULTRALYTICS_SETTINGS  # noqa: E402

MODEL = "yolov8n.yaml"
PLAIN_EXPERIMENT = "plain"
# `python -c PLAIN_TRAINING <model> <train() arguments> [<cores>]`: the plain way, pinned as `taskset` would.
PLAIN_TRAINING = ("import json, os, sys\nif len(sys.argv) > 3:\n    os.sched_setaffinity(0, json.loads(sys.argv[3]))\n"
                  "from ultralytics import YOLO\nYOLO(sys.argv[1]).train(**json.loads(sys.argv[2]))")
# The embedded store created before the breakdown, so that its first timing does not pay for the schema.
STORE_SETUP = "from yolo_mlops.tracking.store import connect\nconnect()"
PLAIN_SETTINGS = "import json, sys\nfrom ultralytics import settings\nsettings.update(json.loads(sys.argv[1]))"
# What each stage imports before it works, in a fresh process: its process start.
ULTRALYTICS_START = ("import stages.{}, torch, torchvision\nfrom yolo_mlops.yolo.model import ultralytics\n"
                     "ultralytics().YOLO")
STARTS = {"prepare": "import stages.prepare", "train": ULTRALYTICS_START.format("train"),
          "evaluate": ULTRALYTICS_START.format("evaluate"), "log": "import stages.log, mlflow"}
# Issue 22's targets for the grid against the plain way two at a time, by configuration: (target, stretch).
TARGETS = {"course": (1.10, 1.0), "short": (2.0, 1.5)}
NO_OP_TARGET_S = 10.0
SHORT_GRID = {"train.imgsz": [64, 96], "train.lr0": [0.005, 0.01], "train.seed": [1, 42], "train.epochs": [1]}
PLAIN_AT_ONCE = 2  # the plain way's trainings at once: the grid's two DVC queue workers
SIDES = ("serial", "jobs1", "breakdown")  # what --skip can leave out (informational parts)
# The breakdown's pieces are constants per experiment: a short training keeps their noise small.
BREAKDOWN_CONFIG, BREAKDOWN_ROUNDS = {"epochs": 1, "imgsz": 64}, 3


def grid_of(config: str) -> dict[str, list[object]]:
    """The grid of a configuration: grid.yaml as committed (course), or SHORT_GRID."""
    return SHORT_GRID if config == "short" else read_yaml(PROJECT / GRID_FILE)


def plain_runs(project: Path, grid_file: Path) -> list[dict[str, object]]:
    """Ultralytics' train() arguments for each grid point: params.yaml's train section, the point's values."""
    params = load_params(project / PARAMS_FILE)
    train = asdict(params.train) | {"device": "cpu"}
    del train["model"]
    grid = load_grid(grid_file, params)
    if any(not key.startswith("train.") for key in grid):
        raise SystemExit(f"{GRID_FILE}: the plain way trains only, so every axis must be a train.* key")
    return [train | {key.removeprefix("train."): value for key, value in point.items()}
            for point in combinations(grid)]


def core_shares(parts: int) -> list[set[int]]:
    """This process's cores divided into `parts` shares (each at least one core)."""
    cores = sorted(os.sched_getaffinity(0))
    size = max(1, len(cores) // parts)
    return [set(cores[k * size:(k + 1) * size] or cores[-size:]) for k in range(parts)]


def plain_way(folder: Path, data_yaml: Path, runs: list[dict[str, object]], env: dict[str, str],
              at_once: int = 1) -> float:
    """One fresh process per point, `at_once` of them at a time (each pinned to its share of the cores),
    logging to `folder`/plain.db; the wall-clock seconds of them all."""
    folder.mkdir()
    env = env | {"MLFLOW_TRACKING_URI": f"sqlite:///{folder}/plain.db", "MLFLOW_EXPERIMENT_NAME": PLAIN_EXPERIMENT}
    # The store's schema is made once, before the clock: two first trainings at once would both create it.
    subprocess.run([sys.executable, "-c", "import mlflow; mlflow.set_experiment(mlflow.environment_variables"
                    ".MLFLOW_EXPERIMENT_NAME.get())"], env=env, check=True, capture_output=True)
    shares = core_shares(at_once)

    def train(i: int) -> None:
        command = [sys.executable, "-c", PLAIN_TRAINING, MODEL,
                   json.dumps(runs[i] | {"data": str(data_yaml), "project": str(folder / "runs"), "name": f"p{i}"})]
        cores = [json.dumps(sorted(shares[i % at_once]))] if at_once > 1 else []
        subprocess.run(command + cores, cwd=folder, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    with ThreadPoolExecutor(max_workers=at_once) as pool:
        start = time.perf_counter()  # a worker slot takes the next point as soon as one ends, as DVC's queue does
        list(pool.map(train, range(len(runs))))
        return time.perf_counter() - start


def check_plain_store(folder: Path, expected: int) -> str:
    """What Ultralytics' MLflow callback left in the plain store; exits when a run lacks anything."""
    client = MlflowClient(f"sqlite:///{folder}/plain.db")
    runs = client.search_runs([client.get_experiment_by_name(PLAIN_EXPERIMENT).experiment_id])
    artifacts = [len(client.list_artifacts(run.info.run_id)) for run in runs]
    summary = (f"{len(runs)} run(s), {[run.info.status for run in runs].count('FINISHED')} FINISHED, params "
               f"{min(len(run.data.params) for run in runs)}+, metrics {min(len(run.data.metrics) for run in runs)}+, "
               f"artifacts {min(artifacts)}+ each")
    if len(runs) != expected or not all(run.data.params and run.data.metrics for run in runs) or not all(artifacts):
        raise SystemExit(f"the plain way's MLflow store is incomplete: {summary}")
    return summary


def grid_command(coco128: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "yolo_mlops.grid", "run", "-S", f"prepare.source={coco128}",
            "-S", f"train.model={MODEL}", *options]


def grid_way(clone: Path, coco128: str, env: dict[str, str], grid: dict[str, list[object]],
             *options: str) -> tuple[float, float]:
    """`run` in a fresh clone of the last commit, nothing cached from another side, over `grid` (written to
    the clone's grid.yaml, which no stage depends on). Returns its seconds and its experiments' span: the first
    MLflow run's start (its train stage opens it) to the last one's end (its log stage)."""
    subprocess.run(["git", "clone", "-q", str(PROJECT), str(clone)], check=True)
    (clone / GRID_FILE).write_text(yaml.safe_dump(grid, sort_keys=False))
    seconds = timed(grid_command(coco128, *options), clone, env)
    client = MlflowClient(f"sqlite:///{clone / EMBEDDED_DB}")
    runs = client.search_runs([experiment.experiment_id for experiment in client.search_experiments()])
    return seconds, (max(run.info.end_time for run in runs) - min(run.info.start_time for run in runs)) / 1000


def breakdown_round(project: Path, env: dict[str, str], k: int, samples: dict[str, list[float]]) -> None:
    """One round of the breakdown's timings, each appended to `samples` under its name."""
    def step(name: str, command: list[str]) -> None:
        samples[name].append(timed(command, project, env))
        print(f"  breakdown round {k}: {name} {samples[name][-1]:.2f} s", flush=True)

    set_params(project, mlflow__experiment_name=f"breakdown_repro_{k}")  # a new run each time
    step("repro", ["dvc", "repro", "--force"])
    samples["queued"].append(sum(timed(command, project, env) for command in (
        ["dvc", "exp", "run", "--queue", "--force", "-S", f"mlflow.experiment_name=breakdown_queue_{k}"],
        ["dvc", "exp", "run", "--run-all", "--jobs", "1"])))
    print(f"  breakdown round {k}: one queued experiment {samples['queued'][-1]:.2f} s", flush=True)
    failed = [experiment.name for experiment in list_experiments(project) if experiment.failed or experiment.queued]
    if failed:
        raise SystemExit(f"the queued experiment did not succeed: {failed} (dvc queue logs {failed[0]})")
    set_params(project, mlflow__experiment_name=f"breakdown_stages_{k}")
    for name in STAGES:
        if name in UNTRACKED:
            step(f"{name} untracked", [sys.executable, "-c", UNTRACKED[name]])
        step(name, [sys.executable, "-m", f"stages.{name}"])
    for name, code in STARTS.items():
        step(f"{name} start", [sys.executable, "-c", code])


def breakdown(project: Path, env: dict[str, str]) -> dict[str, float]:
    """One experiment's seconds, piece by piece (medians of BREAKDOWN_ROUNDS), in a prepared clone set to
    BREAKDOWN_CONFIG, on the embedded store."""
    set_params(project, **{f"train__{key}": value for key, value in BREAKDOWN_CONFIG.items()})
    samples: dict[str, list[float]] = defaultdict(list)
    for k in range(1, BREAKDOWN_ROUNDS + 1):
        breakdown_round(project, env, k, samples)
    t = {name: statistics.median(values) for name, values in samples.items()}
    stages = sum(t[name] for name in STAGES)
    starts = {name: t[f"{name} start"] for name in STARTS}
    tracking = {name: t[name] - t[f"{name} untracked"] for name in UNTRACKED} | {"log": t["log"] - starts["log"]}
    return {"DVC's queue": t["queued"] - t["repro"], "DVC's bookkeeping": t["repro"] - stages,
            "process starts (" + ", ".join(f"{name} {seconds:.2f}" for name, seconds in starts.items()) + ")":
                sum(starts.values()),
            "MLflow (" + ", ".join(f"{name} {seconds:+.2f}" for name, seconds in tracking.items()) + ")":
                sum(tracking.values()),
            "the work itself (the stages less their process starts and MLflow)":
                stages - sum(starts.values()) - sum(tracking.values()),
            "= one experiment through DVC's queue": t["queued"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=TARGETS, default="course")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--skip", nargs="*", choices=SIDES, default=[], help="informational parts to leave out")
    parser.add_argument("--coco128", default=str(PROJECT.parent / "shared" / "data" / "coco128.zip"))
    args = parser.parse_args()
    coco128 = str(Path(args.coco128).resolve())
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    os.environ["PATH"] = env["PATH"]  # list_experiments runs `dvc` from this process
    grid = grid_of(args.config)
    with tempfile.TemporaryDirectory(prefix="bench-grid-") as scratch:
        root = Path(scratch)
        print(f"machine: {machine()}", flush=True)
        # Setup, not timed: the prepared data (a copy, for Ultralytics' label caches), the breakdown's store, the plain
        # way's Ultralytics settings.
        project = prepared_clone(root / "breakdown", coco128, env)
        data_yaml = root / "plain-data" / DATA_YAML.relative_to(DATASET_DIR.parent)
        shutil.copytree(project / DATASET_DIR, data_yaml.parent)
        subprocess.run([sys.executable, "-c", STORE_SETUP], cwd=project, env=env, check=True, capture_output=True)
        plain_env = env | {"YOLO_CONFIG_DIR": str(root / "ultralytics")}
        subprocess.run([sys.executable, "-c", PLAIN_SETTINGS, json.dumps(ULTRALYTICS_SETTINGS | {"mlflow": True})],
                       env=plain_env, check=True, stdout=subprocess.DEVNULL)
        grid_file = root / GRID_FILE.name
        grid_file.write_text(yaml.safe_dump(grid, sort_keys=False))
        runs = plain_runs(PROJECT, grid_file)
        print(f"grid ({args.config}): {len(runs)} points, {MODEL}, 40/10/10 images, e.g. {runs[0]}; "
              f"{args.rounds} alternating round(s); cores per plain training two at a time: "
              f"{[sorted(share) for share in core_shares(PLAIN_AT_ONCE)]}", flush=True)
        plain: dict[str, list[float]] = {"two at a time": []} | ({} if "serial" in args.skip else {"serial": []})
        sides = {"default": ()} | ({} if "jobs1" in args.skip else {"--jobs 1": ("--jobs", "1")})
        timings: dict[str, list[float]] = {side: [] for side in sides}
        spans: dict[str, list[float]] = {side: [] for side in sides}
        for k in range(1, args.rounds + 1):
            for side in plain:
                folder = root / f"plain-{k}-{side.replace(' ', '-')}"
                plain[side].append(plain_way(folder, data_yaml, runs, plain_env,
                                             PLAIN_AT_ONCE if side == "two at a time" else 1))
                print(f"round {k}: plain way ({side}) {plain[side][-1]:.1f} s; its MLflow store: "
                      f"{check_plain_store(folder, len(runs))}", flush=True)
            for side, options in sides.items():
                clone = root / f"grid-{k}{options[-1] if options else ''}"
                seconds, span = grid_way(clone, coco128, env, grid, *options)
                timings[side].append(seconds)
                spans[side].append(span)
                print(f"round {k}: grid run ({side}) {seconds:.1f} s, its experiments' MLflow runs {span:.1f} s of it",
                      flush=True)
        no_op = timed(grid_command(coco128), root / f"grid-{args.rounds}", env)
        print(f"grid run again, nothing changed: {no_op:.1f} s", flush=True)
        pieces = {}
        if "breakdown" not in args.skip:
            print(f"breakdown of one experiment (config {CONFIG | BREAKDOWN_CONFIG}, the embedded store, medians of "
                  f"{BREAKDOWN_ROUNDS} rounds):", flush=True)
            pieces = breakdown(project, env)
    base = statistics.median(plain["two at a time"])
    target, stretch = TARGETS[args.config]
    print(f"\nmachine: {machine()}; grid {args.config}: {len(runs)} points")
    for side, times in plain.items():
        median = statistics.median(times)
        print(f"plain way ({side}): median {median:.1f} s of {[round(t, 1) for t in times]} "
              f"({median / len(runs):.1f} s a point)" + ("; the baseline" if side == "two at a time" else ""))
    for side, times in timings.items():
        median = statistics.median(times)
        goal = f"target <= {target}, stretch <= {stretch}" if side == "default" else "informational"
        print(f"grid run ({side}): median {median:.1f} s of {[round(t, 1) for t in times]} "
              f"({median / len(runs):.1f} s a point); grid / plain two at a time {median / base:.3f} ({goal})")
        span = statistics.median(spans[side])
        rest = statistics.median([total - inside for total, inside in zip(times, spans[side], strict=True)])
        print(f"  its experiments, the first MLflow run's start to the last one's end: median {span:.1f} s, "
              f"{span / base:.3f} x the baseline; before and after them (checks, queueing, prepare once, DVC's "
              f"workers starting; the comparison, charts, promotion, report): median {rest:.1f} s")
    print(f"grid run again, nothing changed: {no_op:.1f} s (target <= {NO_OP_TARGET_S:.0f} s)")
    if pieces:
        print(f"one experiment's overhead, seconds per experiment (config {CONFIG | BREAKDOWN_CONFIG}, medians of "
              f"{BREAKDOWN_ROUNDS} rounds):")
    for name, seconds in pieces.items():
        print(f"  {name}: {seconds:.2f} s")


if __name__ == "__main__":
    main()
