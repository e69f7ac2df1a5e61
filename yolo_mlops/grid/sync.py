"""After DVC's queue ran: name each experiment's MLflow run after it (DVC experiment name and
revision, known only once the queue is done), and record each failed experiment as a FAILED run."""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from yolo_mlops.core import vocabulary
from yolo_mlops.core.params import PIPELINE_SECTIONS
from yolo_mlops.grid.experiments import DvcExperiment, failure_reason, list_experiments, mlflow_run_ids

SEARCH_CHUNK = 200  # run ids in one `attributes.run_id IN (...)` filter


@dataclass(frozen=True)
class SyncResult:
    linked: list[str]  # MLflow run ids of the experiments that ran
    failed: list[str]  # names of the failed experiments
    unlogged: list[str]  # experiments that ran without reaching the log stage's MLflow run
    notes: list[str] = field(default_factory=list)  # what the user should know, one line each


def failure_key(experiment: DvcExperiment) -> str:
    """Identity of a failed experiment (its baseline and params), so it is recorded once."""
    payload = json.dumps({"baseline": experiment.baseline_rev, "params": experiment.params}, sort_keys=True,
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def experiment_tags(experiment: DvcExperiment) -> dict[str, str]:
    """The DVC experiment's name, revision (none for a point that failed on Ray) and baseline."""
    tags = {vocabulary.EXP_NAME_TAG: experiment.name, vocabulary.EXP_REV_TAG: experiment.rev,
            vocabulary.BASELINE_TAG: experiment.baseline_rev}
    return {name: value for name, value in tags.items() if value}


def _set_tags(client: MlflowClient, run_id: str, tags: dict[str, str], current: dict[str, str]) -> None:
    """The tags that do not hold their value yet, in one request."""
    changed = [RunTag(name, value) for name, value in tags.items() if current.get(name) != value]
    if changed:
        client.log_batch(run_id, tags=changed)


def _opened_run(client: MlflowClient, experiment_id: str, experiment: DvcExperiment) -> Run | None:
    """The run a stage of the failed experiment opened before it failed (a training that raised), if any. Not
    a KILLED run: that is an interrupted attempt of the same point, which its retry keeps the name of."""
    runs = client.search_runs([experiment_id], filter_string=(
        f"tags.`{vocabulary.EXP_NAME_TAG}` = '{experiment.name}' and tags.`{vocabulary.BASELINE_TAG}` = "
        f"'{experiment.baseline_rev}' and attributes.status != 'FINISHED' and attributes.status != 'KILLED'"),
        order_by=["attributes.start_time DESC"])
    return next((run for run in runs if vocabulary.PREVIOUS_ATTEMPT_TAG not in run.data.tags), None)


def _record_failure(client: MlflowClient, experiment_id: str, root: Path, experiment: DvcExperiment,
                    tags: dict[str, str]) -> str | None:
    """The FAILED run of a failed experiment, recorded once: the run its stages opened (with the epochs it
    trained), or a new one; returns a note when it is recorded now."""
    key = failure_key(experiment)
    found = client.search_runs([experiment_id], filter_string=f"tags.`{vocabulary.FAILURE_KEY_TAG}` = '{key}'",
                               max_results=1)
    if found:
        _set_tags(client, found[0].info.run_id, tags, found[0].data.tags)
        return None
    reason = failure_reason(root, experiment)
    failure = {vocabulary.FAILURE_KEY_TAG: key, vocabulary.LOG_STATUS_TAG: vocabulary.FAILED,
               vocabulary.ERROR_TAG: reason[:5000]}
    opened = _opened_run(client, experiment_id, experiment)
    if opened is not None:
        _set_tags(client, opened.info.run_id, tags | failure, opened.data.tags)
        client.set_terminated(opened.info.run_id, "FAILED")
        return f"experiment {experiment.name} failed ({reason}); recorded in its FAILED run {opened.info.run_id}"
    run_id = client.create_run(experiment_id, run_name=experiment.name, tags=tags | failure | {
        vocabulary.COMMIT_TAG: experiment.baseline_rev,
    }).info.run_id
    params = [Param(name, str(value)) for name, value in experiment.params.items()
              if name.split(".")[0] in PIPELINE_SECTIONS]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start:start + 100])
    client.set_terminated(run_id, "FAILED")
    return f"experiment {experiment.name} failed ({reason}); recorded as FAILED run {run_id}"


def deleted_note(name: str, run_id: str) -> str:
    """What to say of an experiment whose MLflow run someone deleted (it stays its one run: see tracking/run.py)."""
    return (f"experiment {name}: its MLflow run {run_id} is deleted in MLflow, and left out of the comparison; "
            f"restore it with `mlflow runs restore --run-id {run_id}`")


def deleted_runs(client: MlflowClient, experiment_id: str, root: Path) -> dict[str, str]:
    """This commit's finished experiments whose MLflow run is deleted in MLflow (in its trash): name → run id.
    One search of the trash; DVC's experiments and their links are read only when it holds runs."""
    trash = {run.info.run_id for run in client.search_runs([experiment_id], run_view_type=ViewType.DELETED_ONLY)}
    if not trash:
        return {}
    done = [experiment for experiment in list_experiments(root) if experiment.done]
    return {name: run_id for name, run_id in mlflow_run_ids(root, done).items() if run_id in trash}


def runs_by_id(client: MlflowClient, experiment_id: str, run_ids: list[str]) -> dict[str, Run]:
    """The runs of `run_ids` that the experiment holds, deleted ones included, in a few searches (one per
    SEARCH_CHUNK ids) instead of one request per run."""
    found: dict[str, Run] = {}
    unique = sorted({run_id for run_id in run_ids if run_id.isalnum()})  # MLflow's ids: hex, safe to quote
    for start in range(0, len(unique), SEARCH_CHUNK):
        chunk = unique[start:start + SEARCH_CHUNK]
        listed = ", ".join(f"'{run_id}'" for run_id in chunk)
        for run in client.search_runs([experiment_id], filter_string=f"attributes.run_id IN ({listed})",
                                      run_view_type=ViewType.ALL, max_results=len(chunk)):
            found[run.info.run_id] = run
    return found


def _get_run(client: MlflowClient, run_id: str) -> Run | None:
    """A run another experiment holds; None when the tracking store has no such run."""
    try:
        return client.get_run(run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        return None


def sync(client: MlflowClient, experiment_id: str, root: Path, experiments: list[DvcExperiment],
         extra_tags: dict[str, dict[str, str]] | None = None) -> SyncResult:
    """Idempotent: tags that already hold the right value are not written again. Experiments still
    waiting in DVC's queue are left for a later sync. `extra_tags`: more tags for the runs of some
    experiments, by experiment name (the Ray node a point ran on). The experiments' links are read from git
    at once, and their runs in a few searches."""
    result = SyncResult([], [], [])
    ended = [experiment for experiment in experiments if not experiment.queued]
    run_ids = mlflow_run_ids(root, [experiment for experiment in ended if not experiment.failed])
    runs = runs_by_id(client, experiment_id, [run_id for run_id in run_ids.values() if run_id])
    for experiment in ended:
        tags = experiment_tags(experiment) | (extra_tags or {}).get(experiment.name, {})
        if experiment.failed:
            note = _record_failure(client, experiment_id, root, experiment, tags)
            result.notes.extend([note] if note else [])
            result.failed.append(experiment.name)
            continue
        run_id = run_ids[experiment.name]
        if run_id is None:
            result.unlogged.append(experiment.name)
            continue
        run = runs.get(run_id) or _get_run(client, run_id)
        if run is None:
            result.notes.append(
                f"experiment {experiment.name} logged MLflow run {run_id}, which this tracking store does not hold "
                f"(another MLFLOW_TRACKING_URI, or a deleted run); left out. To run it again here: "
                f"`dvc exp remove {experiment.name}`, then queue the grid again")
            result.unlogged.append(experiment.name)
            continue
        if run.info.lifecycle_stage == "deleted":
            result.notes.append(deleted_note(experiment.name, run_id))
            result.unlogged.append(experiment.name)
            continue
        # The run's name too, as MLflow's run-name tag (which renames the run): one request for all of them.
        current = run.data.tags | {MLFLOW_RUN_NAME: run.info.run_name}
        _set_tags(client, run_id, tags | {MLFLOW_RUN_NAME: experiment.name}, current)
        result.linked.append(run_id)
    return result
