"""The experiment grid on DVC's side: queue it (`dvc exp run --queue -S ...`), run DVC's queue with
its progress shown, and read the experiments back from `dvc exp show --json`."""

import itertools
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from yolo_mlops.errors import PipelineError
from yolo_mlops.params import PIPELINE_SECTIONS
from yolo_mlops.paths import EVAL_METRICS_FILE, MLFLOW_RUN_FILE, PARAMS_FILE

# The pipeline's code and config: an experiment records the last git commit as their version.
PIPELINE_PATHS = ("dvc.yaml", "stages", "yolo_mlops", ".dvc/config")
PROGRESS_MARK = "Reproducing experiment '"


@dataclass(frozen=True)
class DvcExperiment:
    """One experiment of `dvc exp show`: params.yaml as flat `section.key` values, eval metrics as `split.metric`."""

    name: str
    rev: str
    baseline_rev: str
    params: dict[str, Any]
    metrics: dict[str, float]
    failed: bool


def _git(root: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise PipelineError(f"git {' '.join(args)} failed in {root}: {result.stderr.strip()}")
    return result.stdout


def _dvc(root: Path, *args: str) -> str:
    result = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise PipelineError(f"dvc {' '.join(args)} failed: {(result.stderr or result.stdout).strip()[-2000:]}")
    return result.stdout


def head_rev(root: Path) -> str:
    """The commit DVC's queue runs the experiments from (their baseline)."""
    return _git(root, "rev-parse", "HEAD").strip()


def pipeline_changes(root: Path) -> list[str]:
    """Uncommitted changes that DVC's queue would silently leave out: pipeline code, dvc.yaml,
    and the pipeline sections of params.yaml (compare / promote are read from the working tree)."""
    _git(root, "rev-parse", "--verify", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=all", "--", *PIPELINE_PATHS)
    changed = sorted({line[3:].strip() for line in status.splitlines() if line.strip()})
    committed = yaml.safe_load(_git(root, "show", f"HEAD:{PARAMS_FILE}")) or {}
    current = yaml.safe_load((root / PARAMS_FILE).read_text(encoding="utf-8")) or {}
    changed += [f"{PARAMS_FILE} ({section})" for section in PIPELINE_SECTIONS
                if committed.get(section) != current.get(section)]
    return changed


def refuse_uncommitted(root: Path) -> None:
    changed = pipeline_changes(root)
    if changed:
        raise PipelineError(
            "uncommitted pipeline changes: " + ", ".join(changed) + ". Every experiment records the last "
            "git commit as its code (DVC baseline, git.commit) and DVC's queue leaves new files out, so these "
            "changes would run unrecorded or not at all. Commit them (git add ... && git commit) "
            "or stash them (git stash), then queue again. Nothing was queued."
        )


def parse_overrides(overrides: list[str], grid: dict[str, tuple[Any, ...]], known: dict[str, Any]) -> dict[str, Any]:
    """`key=value` (DVC's -S syntax) → {key: value parsed as YAML, as DVC does}, for every experiment."""
    parsed: dict[str, Any] = {}
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or key not in known:
            raise PipelineError(f"-S {override}: expected key=value with a params.yaml key such as train.model")
        if key in grid:
            raise PipelineError(f"-S {override}: {key} is an axis of the grid; change it in grid.yaml instead")
        if "," in text:
            raise PipelineError(f"-S {override}: one value per key (the grid's axes are in grid.yaml)")
        parsed[key] = yaml.safe_load(text)
    return parsed


def combinations(grid: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Every point of the grid, in the order DVC expands `-S key=a,b`."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat |= _flat(value, name) if isinstance(value, dict) else {name: value}
    return flat


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in values.items()
            if isinstance(value, int | float) and not isinstance(value, bool)}


def parse_exp_show(entries: list[dict[str, Any]]) -> list[DvcExperiment]:
    """The experiments of `dvc exp show --json` (baselines and the workspace are not experiments)."""
    experiments = []
    for baseline in entries:
        for experiment in baseline.get("experiments") or []:
            revision = experiment["revs"][0]
            data = revision.get("data") or {}
            params = data.get("params", {}).get(str(PARAMS_FILE), {}).get("data", {})
            metrics = data.get("metrics", {}).get(str(EVAL_METRICS_FILE), {}).get("data", {})
            experiments.append(DvcExperiment(
                name=revision.get("name") or experiment.get("name") or revision["rev"][:7],
                rev=revision["rev"],
                baseline_rev=baseline["rev"],
                params=_flat(params),
                metrics=_numbers(_flat(metrics)),
                failed=revision.get("error") is not None,
            ))
    return experiments


def list_experiments(root: Path) -> list[DvcExperiment]:
    """The experiments DVC holds for the current commit (`dvc exp show --json`)."""
    return parse_exp_show(json.loads(_dvc(root, "exp", "show", "--json")))


def matches(experiment: DvcExperiment, wanted: dict[str, Any]) -> bool:
    return all(experiment.params.get(key) == value for key, value in wanted.items())


def missing_combinations(points: list[dict[str, Any]], overrides: dict[str, Any],
                         experiments: list[DvcExperiment]) -> list[dict[str, Any]]:
    """The grid points no experiment of this commit has run yet (a failed one counts as run: it is
    reported, not retried; `dvc exp remove <name>` lets the next queueing retry it)."""
    return [point for point in points if not any(matches(exp, point | overrides) for exp in experiments)]


def set_args(values: dict[str, Any]) -> list[str]:
    """DVC's `-S key=value` arguments (a tuple of values becomes DVC's grid syntax `key=a,b`)."""
    args = []
    for key, value in values.items():
        listed = value if isinstance(value, tuple) else (value,)
        args += ["-S", f"{key}=" + ",".join(_yaml_scalar(item) for item in listed)]
    return args


def _yaml_scalar(value: Any) -> str:
    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).removesuffix(
        "\n...\n").strip()


def queue(root: Path, grid: dict[str, tuple[Any, ...]], points: list[dict[str, Any]],
          overrides: dict[str, Any]) -> None:
    """Queue the points: the whole grid in one `dvc exp run --queue` (DVC expands `key=a,b`), or one
    command per point when only some are missing."""
    whole = len(points) == len(combinations(grid))
    for values in [grid] if whole else points:
        command = ["dvc", "exp", "run", "--queue", *set_args(values | overrides)]
        print("$ " + " ".join(command), flush=True)
        print(_dvc(root, *command[1:]), end="", flush=True)


def run_queue(root: Path, total: int) -> None:
    """Run the queued experiments with DVC's queue (`dvc exp run --run-all`), following their logs and
    marking each start as [k/total]. A failed experiment does not stop the others."""
    started = 0
    with subprocess.Popen(["dvc", "exp", "run", "--run-all", "--jobs", "1"], cwd=root, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(PROGRESS_MARK):
                started += 1
                line = f"[{started}/{total}] {line}"
            sys.stdout.write(line)
            sys.stdout.flush()
    if process.returncode != 0:
        raise PipelineError(f"dvc exp run --run-all exited with {process.returncode}; see its output above")


def mlflow_run_id(root: Path, experiment: DvcExperiment) -> str | None:
    """The MLflow run the experiment's log stage wrote to (metrics/mlflow_run.json in its commit)."""
    result = subprocess.run(["git", "show", f"{experiment.rev}:{MLFLOW_RUN_FILE}"], cwd=root,
                            capture_output=True, text=True)
    return json.loads(result.stdout)["run_id"] if result.returncode == 0 else None


def failure_reason(root: Path, experiment: DvcExperiment) -> str:
    """The error line of a failed experiment, from `dvc queue logs`."""
    result = subprocess.run(["dvc", "queue", "logs", experiment.name], cwd=root, capture_output=True, text=True)
    errors = [line.strip() for line in result.stdout.splitlines() if line.startswith(("error:", "ERROR:"))]
    return errors[0] if errors else "the experiment failed (see `dvc queue logs " + experiment.name + "`)"
