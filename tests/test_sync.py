"""Linking DVC experiments to their MLflow runs after the queue ran."""

from pathlib import Path

import pytest

from tests.conftest import log_synthetic_run
from yolo_mlops.core import vocabulary
from yolo_mlops.grid import sync
from yolo_mlops.grid.experiments import DvcExperiment


def experiment(name: str) -> DvcExperiment:
    return DvcExperiment(name=name, rev=f"rev-{name}", baseline_rev="base", params={}, metrics={}, failed=False)


def test_a_run_missing_from_the_store_is_left_out_with_advice_and_the_others_are_linked(
        mlflow_store, monkeypatch: pytest.MonkeyPatch) -> None:
    experiment_id = mlflow_store.create_experiment("sync-missing")
    present = log_synthetic_run(mlflow_store, experiment_id, "old-name", {"val.mAP50": 0.5})
    run_ids = {"kept": present, "elsewhere": "0123456789abcdef0123456789abcdef"}
    monkeypatch.setattr(sync, "mlflow_run_ids", lambda root, listed: {exp.name: run_ids[exp.name] for exp in listed})

    result = sync.sync(mlflow_store, experiment_id, Path("."), [experiment("elsewhere"), experiment("kept")])

    assert result.linked == [present] and result.unlogged == ["elsewhere"] and result.failed == []
    assert mlflow_store.get_run(present).info.run_name == "kept"
    assert mlflow_store.get_run(present).data.tags[vocabulary.EXP_REV_TAG] == "rev-kept"
    advice = "\n".join(result.notes)
    assert "elsewhere" in advice and "does not hold" in advice and "dvc exp remove elsewhere" in advice


def test_a_failed_experiment_is_recorded_in_the_run_its_training_opened(
        mlflow_store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A training that raised left its run (FAILED, with its epochs): the failure is recorded there, once."""
    experiment_id = mlflow_store.create_experiment("sync-failed-training")
    opened = mlflow_store.create_run(experiment_id, run_name="frail-tick", tags={
        vocabulary.EXP_NAME_TAG: "frail-tick", vocabulary.BASELINE_TAG: "base"}).info.run_id
    mlflow_store.set_terminated(opened, "FAILED")
    monkeypatch.setattr(sync, "failure_reason", lambda root, exp: "error: train: CUDA out of memory")
    failed = DvcExperiment(name="frail-tick", rev="", baseline_rev="base", params={"train.imgsz": 640},
                           metrics={}, failed=True)

    for _ in range(2):
        result = sync.sync(mlflow_store, experiment_id, Path("."), [failed])
        assert result.failed == ["frail-tick"]
    [run] = mlflow_store.search_runs([experiment_id])
    assert run.info.run_id == opened and run.info.status == "FAILED"
    assert run.data.tags[vocabulary.ERROR_TAG] == "error: train: CUDA out of memory"
    assert run.data.tags[vocabulary.LOG_STATUS_TAG] == vocabulary.FAILED


def test_a_retry_that_fails_before_training_leaves_the_interrupted_attempt_killed(
        mlflow_store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A point stopped by Ctrl-C (its run KILLED) and run again keeps its name; when the retry fails before its
    training opens a run (no previous-attempt tag then), its failure is a FAILED run of its own, and the
    interrupted attempt stays KILLED, with its epochs."""
    experiment_id = mlflow_store.create_experiment("sync-failed-retry")
    name = "lr0_0.01-seed_1-3f2a1c"
    interrupted = mlflow_store.create_run(experiment_id, run_name=name, tags={
        vocabulary.EXP_NAME_TAG: name, vocabulary.BASELINE_TAG: "base"}).info.run_id
    mlflow_store.set_terminated(interrupted, "KILLED")
    monkeypatch.setattr(sync, "failure_reason", lambda root, exp: "error: prepare: no such file")
    retry = DvcExperiment(name=name, rev="", baseline_rev="base", params={"train.lr0": 0.01}, metrics={}, failed=True)

    result = sync.sync(mlflow_store, experiment_id, Path("."), [retry])

    assert result.failed == [name]
    runs = {run.info.status: run for run in mlflow_store.search_runs([experiment_id])}
    assert set(runs) == {"KILLED", "FAILED"} and runs["KILLED"].info.run_id == interrupted
    assert vocabulary.ERROR_TAG not in runs["KILLED"].data.tags
    assert runs["FAILED"].info.run_name == name
    assert runs["FAILED"].data.tags[vocabulary.ERROR_TAG] == "error: prepare: no such file"
