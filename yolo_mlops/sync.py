"""After DVC's queue ran: name each experiment's MLflow run after it (DVC experiment name and
revision, known only once the queue is done), and record each failed experiment as a FAILED run."""

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Param
from mlflow.exceptions import MlflowException

from yolo_mlops.experiments import DvcExperiment, failure_reason, mlflow_run_id
from yolo_mlops.params import PIPELINE_SECTIONS
from yolo_mlops.tracking import COMPLETE_TAG

EXP_NAME_TAG = "dvc.exp_name"
EXP_REV_TAG = "dvc.exp_rev"
BASELINE_TAG = "dvc.baseline_rev"
FAILURE_KEY_TAG = "yolo_mlops.failure_key"
ERROR_TAG = "yolo_mlops.error"


@dataclass(frozen=True)
class SyncResult:
    linked: list[str]  # MLflow run ids of the experiments that ran
    failed: list[str]  # names of the failed experiments
    unlogged: list[str]  # experiments that ran without reaching the log stage's MLflow run


def failure_key(experiment: DvcExperiment) -> str:
    """Identity of a failed experiment (its baseline and params), so it is recorded once."""
    payload = json.dumps({"baseline": experiment.baseline_rev, "params": experiment.params}, sort_keys=True,
                         default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _set_tags(client: MlflowClient, run_id: str, tags: dict[str, str], current: dict[str, str]) -> None:
    for name, value in tags.items():
        if current.get(name) != value:
            client.set_tag(run_id, name, value)


def _record_failure(client: MlflowClient, experiment_id: str, root: Path, experiment: DvcExperiment) -> None:
    key = failure_key(experiment)
    tags = {EXP_NAME_TAG: experiment.name, EXP_REV_TAG: experiment.rev, BASELINE_TAG: experiment.baseline_rev}
    found = client.search_runs([experiment_id], filter_string=f"tags.`{FAILURE_KEY_TAG}` = '{key}'", max_results=1)
    if found:
        _set_tags(client, found[0].info.run_id, tags, found[0].data.tags)
        return
    reason = failure_reason(root, experiment)
    run_id = client.create_run(experiment_id, run_name=experiment.name, tags=tags | {
        FAILURE_KEY_TAG: key, COMPLETE_TAG: "failed", ERROR_TAG: reason[:5000], "git.commit": experiment.baseline_rev,
    }).info.run_id
    params = [Param(name, str(value)) for name, value in experiment.params.items()
              if name.split(".")[0] in PIPELINE_SECTIONS]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start:start + 100])
    client.set_terminated(run_id, "FAILED")
    print(f"sync: experiment {experiment.name} failed ({reason}); recorded as FAILED run {run_id}", file=sys.stderr)


def sync(client: MlflowClient, experiment_id: str, root: Path, experiments: list[DvcExperiment]) -> SyncResult:
    """Idempotent: tags that already hold the right value are not written again."""
    linked, failed, unlogged = [], [], []
    for experiment in experiments:
        if experiment.failed:
            _record_failure(client, experiment_id, root, experiment)
            failed.append(experiment.name)
            continue
        run_id = mlflow_run_id(root, experiment)
        if run_id is None:
            unlogged.append(experiment.name)
            continue
        try:
            run = client.get_run(run_id)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            print(f"sync: experiment {experiment.name} logged MLflow run {run_id}, which this tracking store does "
                  f"not hold (another MLFLOW_TRACKING_URI, or a deleted run); left out. To run it again here: "
                  f"`dvc exp remove {experiment.name}`, then queue the grid again", file=sys.stderr)
            unlogged.append(experiment.name)
            continue
        _set_tags(client, run_id, {EXP_NAME_TAG: experiment.name, EXP_REV_TAG: experiment.rev,
                                   BASELINE_TAG: experiment.baseline_rev}, run.data.tags)
        if run.info.run_name != experiment.name:
            client.update_run(run_id, name=experiment.name)
        linked.append(run_id)
    return SyncResult(linked, failed, unlogged)
