"""Benchmark: what DVC + MLflow logging cost on top of bare Ultralytics training.

Alternates, in one script and on one machine, (a) bare Ultralytics, in a fresh process, doing
what a user without this project runs to get the same numbers and plots: `train` (whose final
validation of best.pt gives the val metrics and plots) then `val` on the test split; (b) the
same config through `dvc repro --force`: every stage and a new MLflow run; and (c) the same as (b)
with the warm process (core/warm.py, started once as the grid starts it), each stage and forwarder
forked from it. Then times each stage's process alone, cold and warm (the rest of (b) is DVC
itself) and a no-op `dvc repro`. Prints the machine, each timing, the medians, the ratios against
bare Ultralytics (target <= 1.15, stretch <= 1.05) and the no-op time (target <= 2 s).

    .venv/bin/python benchmarks/pipeline_overhead.py [--rounds 2] [--coco128 PATH]
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from yolo_mlops.core import warm  # noqa: E402
from yolo_mlops.core.paths import PARAMS_FILE  # noqa: E402

CONFIG = {"model": "yolov8n.yaml", "epochs": 3, "imgsz": 320, "device": "cpu"}
BARE_TRAINING = """
import sys
from yolo_mlops.core.params import load_params
from yolo_mlops.core.paths import DATASET_DIR
from yolo_mlops.core.tempdir import stage_tempdir
from yolo_mlops.yolo.dataset import stage_dataset
from yolo_mlops.yolo.model import ultralytics
p = load_params().train
with stage_tempdir("benchmark") as folder:
    data = stage_dataset(DATASET_DIR, folder)
    model = ultralytics().YOLO(p.model)
    model.train(data=str(data), epochs=p.epochs, imgsz=p.imgsz, lr0=p.lr0, seed=p.seed, batch=p.batch,
                optimizer=p.optimizer, device=p.device, workers=p.workers, deterministic=True,
                project=sys.argv[1], name="train", exist_ok=True, plots=True)
    ultralytics().YOLO(str(model.trainer.best)).val(data=str(data), split="test", imgsz=p.imgsz, batch=p.batch,
                                                    device=p.device, plots=True, project=sys.argv[1], name="test",
                                                    exist_ok=True)
"""
STAGES = ("prepare", "train", "evaluate", "log")
READY_TIMEOUT_S = 300


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def set_params(project: Path, **values: object) -> None:
    path = project / PARAMS_FILE
    params = yaml.safe_load(path.read_text())
    for dotted, value in values.items():
        section, key = dotted.split("__")
        params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def prepared_clone(folder: Path, coco128: str, env: dict[str, str]) -> Path:
    """A clone of this project's last commit in `folder`, set to CONFIG, with its prepare stage run."""
    project = folder / "project"
    subprocess.run(["git", "clone", "-q", str(PROJECT), str(project)], check=True)
    set_params(project, prepare__source=str(Path(coco128).resolve()),
               **{f"train__{key}": value for key, value in CONFIG.items()})
    subprocess.run(["dvc", "repro", "prepare"], cwd=project, env=env, check=True, stdout=subprocess.DEVNULL)
    return project


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs ({cpu}), Python "
            f"{platform.python_version()}, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")


def started(server: warm.Server | None) -> float:
    """Seconds until the warm process has imported its libraries."""
    start = time.perf_counter()
    if server is None:
        raise SystemExit(f"the warm process did not start (is {warm.ADDRESS_VARIABLE}= set?)")
    while not server.ready():
        if time.perf_counter() - start > READY_TIMEOUT_S:
            raise SystemExit(f"the warm process did not import its libraries in {READY_TIMEOUT_S} s")
        time.sleep(0.1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--coco128", default=str(PROJECT.parent / "shared" / "data" / "coco128.zip"))
    args = parser.parse_args()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_", "DVC_")) and key != warm.ADDRESS_VARIABLE}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    os.environ.clear()
    os.environ.update(env)  # the warm process's environment is this one's
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        project = prepared_clone(Path(scratch), args.coco128, env)
        bare_env = env | {"PYTHONPATH": str(project)}
        runs: dict[str, list[float]] = {"bare": [], "cold": [], "warm": []}
        print(f"machine: {machine()}")
        print(f"config: {CONFIG}, 40/10/10 images; {args.rounds} alternating rounds")
        with warm.serving(project) as server:
            print(f"warm process: started, its imports done in {started(server):.1f} s (once per grid)")
            warm_env = dict(os.environ)
            for round_number in range(1, args.rounds + 1):
                runs["bare"].append(timed([sys.executable, "-c", BARE_TRAINING, str(Path(scratch) / "bare")],
                                          project, bare_env))
                for arm, arm_env in (("cold", env), ("warm", warm_env)):
                    # A new MLflow experiment each run, so that every run really logs a new run.
                    set_params(project, mlflow__experiment_name=f"benchmark_{arm}_{round_number}")
                    runs[arm].append(timed(["dvc", "repro", "--force"], project, arm_env))
                print(f"round {round_number}: bare Ultralytics {runs['bare'][-1]:.1f} s, dvc repro + MLflow "
                      f"{runs['cold'][-1]:.1f} s, the same forked from the warm process {runs['warm'][-1]:.1f} s")
            stages = {}
            for arm, arm_env in (("cold", env), ("warm", warm_env)):
                set_params(project, mlflow__experiment_name=f"benchmark_stages_{arm}")  # log creates a run again
                stages[arm] = {name: timed([sys.executable, "-m", f"stages.{name}"], project, arm_env)
                               for name in STAGES}
            forked = len(server.forks()) if server is not None else 0
        no_op = [timed(["dvc", "repro"], project, env) for _ in range(3)]
    medians = {arm: statistics.median(times) for arm, times in runs.items()}
    print(f"median: bare {medians['bare']:.1f} s, pipeline {medians['cold']:.1f} s (ratio "
          f"{medians['cold'] / medians['bare']:.3f}), warm {medians['warm']:.1f} s (ratio "
          f"{medians['warm'] / medians['bare']:.3f}; target <= 1.15, stretch <= 1.05); {forked} process(es) forked")
    for arm in ("cold", "warm"):
        print(f"each stage's process alone, {arm}: "
              + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages[arm].items())
              + f"; DVC itself: {medians[arm] - sum(stages[arm].values()):.1f} s (the rest of the median)")
    print(f"no-op dvc repro: median {statistics.median(no_op):.2f} s of {[round(t, 2) for t in no_op]} (target <= 2 s)")

if __name__ == "__main__":
    main()
