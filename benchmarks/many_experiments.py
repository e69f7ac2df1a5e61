"""Benchmark: the grid's commands with many experiments, on the code before and after, in one script.

Setup (not timed): a clone of the last commit at tiny settings (yolov8n.yaml, 1 epoch, imgsz 64, the real
COCO128), one real experiment through `python -m yolo_mlops.grid run` on a one-point grid, then the other
points made cheaply: for each, a copy of the real experiment's MLflow run (params with the point's values,
metrics and their per-epoch history, tags, dataset input, per-image statistics, the model), and
`dvc exp save` of the workspace holding that point's params and the link to its run. grid.yaml then holds
every point (train.lr0 × train.seed), so that `run` has nothing to queue; one untimed `run` links them.
Then, round after round, alternating the code before (a clone of BASELINE_COMMIT) and after (this working
tree), both driving the same project: `run` again (nothing to queue), `compare`, and the sync alone
(`commands.sync_grid`, on runs whose DVC revision tag and name were reset, as after the last experiment);
the after side's first `run` with its caches emptied. Also `dvc exp show --json` alone. Prints the machine,
each timing, the medians and the ratios, against issue 22's targets (`run` again and `compare` <= 10 s each,
stretch <= 5 s).

    .venv/bin/python benchmarks/many_experiments.py [--experiments 100] [--rounds 1] [--coco128 PATH]
                                                   [--workdir PATH]

On a 2-CPU machine the setup takes about 5 minutes and a round about 3 with 100 experiments.
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
from pathlib import Path

import yaml

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))

from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import LoggedModelOutput, Metric, Param, RunTag  # noqa: E402

from benchmarks.pipeline_overhead import machine, set_params  # noqa: E402
from yolo_mlops.core import vocabulary  # noqa: E402
from yolo_mlops.core.paths import (  # noqa: E402
    DVC_PLOTS_STAMP,
    EMBEDDED_DB,
    GRID_FILE,
    GRID_PER_IMAGE_CACHE,
    MLFLOW_RUN_FILE,
)
from yolo_mlops.grid.experiments import list_experiments  # noqa: E402
from yolo_mlops.grid.points import combinations, experiment_name  # noqa: E402
from yolo_mlops.grid.resampling import artifact_path  # noqa: E402
from yolo_mlops.tracking.model import model_id  # noqa: E402

BASELINE_COMMIT = "c29b269"  # the code before issue 22's changes for many experiments
TARGET_S, STRETCH_S = 10.0, 5.0
LR0S = (0.005, 0.01, 0.02, 0.04)
TINY = {"train__model": "yolov8n.yaml", "train__epochs": 1, "train__imgsz": 64, "train__workers": 0}
# `python -c DRIVER <code> <args>`: `python -m yolo_mlops.grid <args>` with the package imported from <code>.
DRIVER = ("import runpy, sys\nsys.path.insert(0, sys.argv.pop(1))\n"
          "runpy.run_module('yolo_mlops.grid', run_name='__main__', alter_sys=True)")
# `python -c SYNC <code>`: the sync alone, its seconds printed.
SYNC = ("import sys, time\nsys.path.insert(0, sys.argv.pop(1))\nfrom pathlib import Path\n"
        "from yolo_mlops.core.params import load_params\nfrom yolo_mlops.grid import commands\n"
        "from yolo_mlops.tracking.store import connect\nclient, _ = connect()\nstart = time.perf_counter()\n"
        "result = commands.sync_grid(client, Path.cwd(), load_params())\n"
        "print(time.perf_counter() - start, len(result.linked))")


def command(project: Path, env: dict[str, str], *args: str) -> tuple[float, str]:
    """Seconds and output of a command in `project`; exits with its output when it fails."""
    start = time.perf_counter()
    result = subprocess.run(list(args), cwd=project, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args[:4])} ... failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                         f"{result.stderr[-3000:]}")
    return seconds, result.stdout


def grid(code: Path, project: Path, env: dict[str, str], *args: str) -> tuple[float, str]:
    """`python -m yolo_mlops.grid <args>` in `project`, running the package of `code`."""
    return command(project, env, sys.executable, "-c", DRIVER, str(code), *args)


def copy_run(client: MlflowClient, original_id: str, name: str, values: dict[str, object], scratch: Path) -> str:
    """A copy of a finished run for another grid point (`values`): the same metrics and per-epoch history, tags,
    dataset input, per-image statistics and model, the point's params. Returns its id."""
    original = client.get_run(original_id)
    tags = {key: value for key, value in original.data.tags.items()
            if not key.startswith("mlflow.") and key != vocabulary.EXP_REV_TAG}
    copied = client.create_run(original.info.experiment_id, run_name=name,
                               tags=tags | {vocabulary.EXP_NAME_TAG: name}).info.run_id
    params = original.data.params | {key: str(value) for key, value in values.items()}
    metrics = [Metric(key, point.value, point.timestamp, point.step) for key in original.data.metrics
               for point in client.get_metric_history(original_id, key)]
    for start in range(0, max(len(metrics), len(params)), 100):
        client.log_batch(copied, metrics=metrics[start:start + 100],
                         params=[Param(key, value) for key, value in list(params.items())[start:start + 100]])
    client.log_inputs(copied, datasets=list(original.inputs.dataset_inputs))
    folder = str(Path(artifact_path("test")).parent)  # every split's statistics
    client.log_artifacts(copied, client.download_artifacts(original_id, folder, str(scratch)), folder)
    if model_id(original):
        client.log_outputs(copied, [LoggedModelOutput(model_id(original), step=0)])
    client.set_terminated(copied, "FINISHED")
    return copied


def build(project: Path, env: dict[str, str], count: int, scratch: Path) -> None:
    """`count` experiments in `project`: one real, the others saved with `dvc exp save` (see the docstring)."""
    seeds = range(max(1, count // len(LR0S)))
    points = combinations({"train.lr0": LR0S, "train.seed": tuple(seeds)})
    first, others = points[0], points[1:]
    (project / GRID_FILE).write_text(yaml.safe_dump({key: [value] for key, value in first.items()}))
    seconds, _ = command(project, env, sys.executable, "-m", "yolo_mlops.grid", "run")
    print(f"setup: one real experiment through `grid run` in {seconds:.0f} s", flush=True)
    [real] = list_experiments(project)
    command(project, env, "dvc", "exp", "apply", real.name)
    link = json.loads((project / MLFLOW_RUN_FILE).read_text())
    client = MlflowClient(f"sqlite:///{project / EMBEDDED_DB}")
    baseline = real.baseline_rev
    start = time.perf_counter()
    for k, values in enumerate(others, start=1):
        name = experiment_name(baseline, values, {})
        run_id = copy_run(client, link[vocabulary.RUN_LINK_ID], name, values, scratch / str(k))
        set_params(project, **{key.replace(".", "__"): value for key, value in values.items()})
        (project / MLFLOW_RUN_FILE).write_text(json.dumps(link | {vocabulary.RUN_LINK_ID: run_id, "run_name": name}))
        command(project, env, "dvc", "exp", "save", "--name", name)
        if k % 20 == 0:
            print(f"setup: {k + 1} experiments ({time.perf_counter() - start:.0f} s)", flush=True)
    command(project, env, "git", "checkout", "HEAD", "--", "params.yaml", "dvc.lock", str(MLFLOW_RUN_FILE))
    (project / GRID_FILE).write_text(yaml.safe_dump({"train.lr0": list(LR0S), "train.seed": list(seeds)}))


def reset_links(project: Path) -> None:
    """Every run's DVC revision tag and name made stale, as before the sync after the last experiment."""
    client = MlflowClient(f"sqlite:///{project / EMBEDDED_DB}")
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=10_000):
        client.log_batch(run.info.run_id, tags=[RunTag(vocabulary.EXP_REV_TAG, "stale")])
        client.update_run(run.info.run_id, name=f"stale-{run.info.run_id[:8]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiments", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--coco128", default=str(PROJECT.parent / "shared" / "data" / "coco128.zip"))
    parser.add_argument("--workdir", help="a folder to build the project in and keep (reused when it holds one)")
    args = parser.parse_args()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    os.environ["PATH"] = env["PATH"]  # list_experiments runs `dvc` from this process
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # the copies download artifacts
    with tempfile.TemporaryDirectory(prefix="bench-many-") as folder:
        scratch = Path(args.workdir or folder)
        print(f"machine: {machine()}", flush=True)
        before, project = scratch / "before", scratch / "project"
        if not project.exists():
            subprocess.run(["git", "clone", "-q", str(PROJECT), str(before)], check=True)
            subprocess.run(["git", "checkout", "-q", BASELINE_COMMIT], cwd=before, check=True)
            subprocess.run(["git", "clone", "-q", str(PROJECT), str(project)], check=True)
            set_params(project, prepare__source=str(Path(args.coco128).resolve()), **TINY)
            command(project, env, "git", "commit", "-qam", "tiny settings")
            build(project, env, args.experiments, scratch / "copies")
        listed = list_experiments(project)
        seconds, out = grid(before, project, env, "run")
        print(f"setup: {len(listed)} experiments; the first `run` of them all (code before) {seconds:.1f} s: "
              + next(line for line in out.splitlines() if line.startswith("sync:")), flush=True)
        codes = {"before": before, "after": PROJECT}
        times: dict[str, list[float]] = {f"{what} {side}": [] for what in ("run", "compare", "sync") for side in codes}
        times |= {"run after, caches empty": [], "dvc exp show --json": []}
        for k in range(1, args.rounds + 1):
            for side, code in codes.items():
                if side == "after":
                    shutil.rmtree(project / GRID_PER_IMAGE_CACHE, ignore_errors=True)
                    (project / DVC_PLOTS_STAMP).unlink(missing_ok=True)
                    times["run after, caches empty"].append(grid(code, project, env, "run")[0])
                times[f"run {side}"].append(grid(code, project, env, "run")[0])
                times[f"compare {side}"].append(grid(code, project, env, "compare")[0])
                reset_links(project)
                _, out = command(project, env, sys.executable, "-c", SYNC, str(code))
                seconds, linked = out.split()[-2:]
                times[f"sync {side}"].append(float(seconds))
                if int(linked) != len(listed):
                    raise SystemExit(f"the sync ({side}) linked {linked} of {len(listed)} experiments")
            times["dvc exp show --json"].append(command(project, env, "dvc", "exp", "show", "--json")[0])
            print(f"round {k}: " + ", ".join(f"{what} {values[-1]:.1f} s" for what, values in times.items()),
                  flush=True)
    median = {what: statistics.median(values) for what, values in times.items()}
    print(f"\nmachine: {machine()}; {len(listed)} experiments, {args.rounds} round(s), medians:")
    for what, seconds in median.items():
        print(f"  {what}: {seconds:.1f} s")
    for what in ("run", "compare", "sync"):
        after = median[f"{what} after"]
        goal = (f"; target <= {TARGET_S:g} s: {'met' if after <= TARGET_S else 'NOT met'}, stretch <= {STRETCH_S:g} s: "
                f"{'met' if after <= STRETCH_S else 'not met'}") if what != "sync" else ""
        print(f"{what}: before {median[f'{what} before']:.1f} s, after {after:.1f} s, after / before "
              f"{after / median[f'{what} before']:.2f}{goal}")


if __name__ == "__main__":
    main()
