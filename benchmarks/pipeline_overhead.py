"""Benchmark: what DVC + MLflow logging cost on top of bare Ultralytics training.

Alternates, in one script and on one machine, (a) bare Ultralytics, in a fresh process, doing
what a user without this project runs to get the same numbers and plots: `train` (whose final
validation of best.pt gives the val metrics and plots) then `val` on the test split; and (b) the
same config through `dvc repro --force`: every stage and a new MLflow run. Then times each
stage's process alone (the rest of (b) is DVC itself) and a no-op `dvc repro`. Prints the
machine, each timing, the medians, the ratio (target <= 1.25, stretch <= 1.10) and the no-op time
(target <= 2 s).

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--coco128", default=str(PROJECT.parent / "shared" / "data" / "coco128.zip"))
    args = parser.parse_args()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        project = prepared_clone(Path(scratch), args.coco128, env)
        bare_env = env | {"PYTHONPATH": str(project)}
        bare, pipeline = [], []
        print(f"machine: {machine()}")
        print(f"config: {CONFIG}, 40/10/10 images; {args.rounds} alternating rounds")
        for round_number in range(1, args.rounds + 1):
            bare.append(timed([sys.executable, "-c", BARE_TRAINING, str(Path(scratch) / "bare")], project, bare_env))
            # A new MLflow experiment each round, so that every round really logs a new run.
            set_params(project, mlflow__experiment_name=f"benchmark_{round_number}")
            pipeline.append(timed(["dvc", "repro", "--force"], project, env))
            print(f"round {round_number}: bare Ultralytics {bare[-1]:.1f} s, dvc repro + MLflow {pipeline[-1]:.1f} s")
        no_op = [timed(["dvc", "repro"], project, env) for _ in range(3)]
        set_params(project, mlflow__experiment_name="benchmark_stages")  # so that log creates a run again
        stages = {name: timed([sys.executable, "-m", f"stages.{name}"], project, env) for name in STAGES}
    ratio = statistics.median(pipeline) / statistics.median(bare)
    print(f"median: bare {statistics.median(bare):.1f} s, pipeline {statistics.median(pipeline):.1f} s, "
          f"ratio {ratio:.3f} (target <= 1.25, stretch <= 1.10)")
    print("each stage's process alone: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in stages.items())
          + f"; DVC itself: {statistics.median(pipeline) - sum(stages.values()):.1f} s (the rest of the median)")
    print(f"no-op dvc repro: median {statistics.median(no_op):.2f} s of {[round(t, 2) for t in no_op]} (target <= 2 s)")


if __name__ == "__main__":
    main()
