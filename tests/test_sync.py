"""Linking DVC experiments to their MLflow runs after the queue ran."""

from pathlib import Path

import pytest

from tests.conftest import log_synthetic_run
from yolo_mlops.core import vocabulary as names
from yolo_mlops.grid import sync
from yolo_mlops.grid.experiments import DvcExperiment


def experiment(name: str) -> DvcExperiment:
    return DvcExperiment(name=name, rev=f"rev-{name}", baseline_rev="base", params={}, metrics={}, failed=False)


def test_a_run_missing_from_the_store_is_left_out_with_advice_and_the_others_are_linked(
        mlflow_store, monkeypatch: pytest.MonkeyPatch) -> None:
    experiment_id = mlflow_store.create_experiment("sync-missing")
    present = log_synthetic_run(mlflow_store, experiment_id, "old-name", {"val.mAP50": 0.5})
    run_ids = {"kept": present, "elsewhere": "0123456789abcdef0123456789abcdef"}
    monkeypatch.setattr(sync, "mlflow_run_id", lambda root, exp: run_ids[exp.name])

    result = sync.sync(mlflow_store, experiment_id, Path("."), [experiment("elsewhere"), experiment("kept")])

    assert result.linked == [present] and result.unlogged == ["elsewhere"] and result.failed == []
    assert mlflow_store.get_run(present).info.run_name == "kept"
    assert mlflow_store.get_run(present).data.tags[names.EXP_REV_TAG] == "rev-kept"
    advice = "\n".join(result.notes)
    assert "elsewhere" in advice and "does not hold" in advice and "dvc exp remove elsewhere" in advice
