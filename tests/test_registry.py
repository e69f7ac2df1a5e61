"""Promotion in a real (embedded) MLflow Model Registry, on synthetic runs with a trivial pyfunc
model: gates, aliases, provenance tags, the version's description, rollback, idempotence and
all-or-nothing."""

import math

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tests.conftest import log_synthetic_run
from yolo_mlops.core import vocabulary
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.params import PromoteParams
from yolo_mlops.core.vocabulary import CHALLENGER, CHAMPION, STAGE_TAG
from yolo_mlops.core.vocabulary import PREVIOUS_CHAMPION_TAG as PREVIOUS_TAG
from yolo_mlops.grid.ranking import RunSummary
from yolo_mlops.grid.registry import aliases, gates, promote, rollback

PARAMS = {"train.model": "yolov8n.yaml", "train.epochs": 3, "train.imgsz": 320, "train.lr0": 0.01,
          "train.seed": 42, vocabulary.DATASET_TAG: "abc.dir", vocabulary.COMMIT_TAG: "c0ffee"}


def test_metrics(map50_95: float, recall: float) -> dict[str, float]:
    return {"val.mAP50-95": map50_95, "val.recall": recall, "test.mAP50-95": map50_95, "test.recall": recall,
            "test.precision": 0.5, "test.mAP50": 0.6}


test_metrics.__test__ = False  # a helper, not a test


def gate_params(name: str, margin: float = 0.01) -> PromoteParams:
    return PromoteParams(registered_model=name, min_test_map50_95=0.2, min_test_recall=0.3, min_margin=margin)


@pytest.fixture
def registry(mlflow_store: MlflowClient, request: pytest.FixtureRequest):
    """(client, experiment id, a registered model name unique to the test)."""
    name = f"model_{request.node.name}"
    return mlflow_store, mlflow_store.create_experiment(name), name


def candidate(client: MlflowClient, exp: str, name: str, map50_95: float, recall: float = 0.5,
              **params: object) -> RunSummary:
    run_id = log_synthetic_run(client, exp, name, test_metrics(map50_95, recall), PARAMS | params, model=True)
    return RunSummary.from_run(client.get_run(run_id))


def snapshot(client: MlflowClient, name: str) -> list[tuple]:
    versions = client.search_model_versions(f"name = '{name}'")
    return sorted((v.version, v.run_id, v.last_updated_timestamp, v.description, tuple(sorted(v.tags.items())))
                  for v in versions)


def description(client: MlflowClient, name: str, version: str) -> str:
    return client.get_model_version(name, version).description


def test_gates_without_and_against_a_champion():
    run = RunSummary("r1", "exp", "FINISHED", {vocabulary.DATASET_TAG: "abc.dir"}, test_metrics(0.25, 0.2))
    results = {gate.name: gate.passed for gate in gates(run, None, gate_params("m"))}
    assert results == {"min test mAP50-95": True, "min test recall": False, "beats champion": True}


def test_first_promotion_registers_with_provenance_and_becomes_champion(registry):
    client, exp, name = registry
    run = candidate(client, exp, "exp-a", 0.30)
    promotion = promote(client, run, gate_params(name))
    assert promotion.approved and promotion.created and promotion.champion == promotion.version == "1"
    assert aliases(client, name) == {CHALLENGER: "1", CHAMPION: "1"}
    version = client.get_model_version_by_alias(name, CHAMPION)
    assert version.run_id == run.run_id and version.source.startswith("models:/")
    assert version.tags[vocabulary.RUN_ID_TAG] == run.run_id and version.tags[vocabulary.EXP_NAME_TAG] == "exp-a"
    assert version.tags[vocabulary.DATASET_TAG] == "abc.dir" and version.tags[vocabulary.COMMIT_TAG] == "c0ffee"
    assert version.tags["train.lr0"] == "0.01" and float(version.tags["test.mAP50-95"]) == 0.30
    assert version.tags[STAGE_TAG] == "Production"
    report = f"decision/decision.md](#/experiments/{exp}/runs/{run.run_id}/artifacts/decision/decision.md)"
    assert version.description == (
        "**Approve**: promoted to `champion`.\n\ntest.mAP50-95 0.3000 (no interval recorded). No champion to compare "
        "with yet: no paired test.\n\n| gate | outcome | detail |\n|---|---|---|\n"
        "| min test mAP50-95 | pass | test mAP50-95 0.3000 vs minimum 0.2000 |\n"
        "| min test recall | pass | test recall 0.5000 vs minimum 0.3000 |\n"
        "| beats champion | pass | no champion yet |\n\n"
        f"Decision report: [{report} of the run (`runs:/{run.run_id}/decision/decision.md`), written to "
        "`reports/decision.md` in the project.")
    import mlflow.pyfunc

    frame = pd.DataFrame({"image": ["x.jpg"]})
    assert mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}").predict(frame).equals(frame)


def test_challenger_only_when_gates_fail_then_champion_moves_and_rolls_back(registry):
    client, exp, name = registry
    first = promote(client, candidate(client, exp, "exp-a", 0.30), gate_params(name))
    weak = promote(client, candidate(client, exp, "exp-b", 0.305), gate_params(name))  # below the margin
    assert not weak.approved and weak.champion == first.version
    assert aliases(client, name) == {CHALLENGER: weak.version, CHAMPION: first.version}
    assert [gate.passed for gate in weak.gates] == [True, True, False]
    assert description(client, name, weak.version).startswith("**Reject**: `challenger` only; `champion` stayed "
                                                               "version 1.\n")
    assert ("| beats champion | FAIL | no paired test (this run has no per-image test statistics: it was evaluated "
            "before they were recorded): test mAP50-95 0.3050 vs champion version 1 0.3000 + margin 0.0100 |"
            in description(client, name, weak.version))
    assert description(client, name, first.version).startswith("**Approve**: promoted to `champion`.\n")
    strong = promote(client, candidate(client, exp, "exp-c", 0.40), gate_params(name))
    assert strong.approved and aliases(client, name) == {CHALLENGER: strong.version, CHAMPION: strong.version}
    assert client.get_model_version(name, strong.version).tags[PREVIOUS_TAG] == first.version
    assert description(client, name, strong.version).startswith(
        "**Approve**: promoted to `champion`, replacing version 1.\n")
    stages = {str(v.version): v.tags[STAGE_TAG] for v in client.search_model_versions(f"name = '{name}'")}
    assert stages == {first.version: "Archived", weak.version: "Archived", strong.version: "Production"}

    assert rollback(client, name) == (strong.version, first.version)
    assert aliases(client, name)[CHAMPION] == first.version
    assert client.get_model_version(name, strong.version).tags[STAGE_TAG] == "Staging"
    with pytest.raises(PipelineError, match="is the first champion: nothing to roll back to"):
        rollback(client, name)
    assert rollback(client, name, strong.version) == (first.version, strong.version)


def test_other_test_split_falls_back_to_the_margin_and_says_so(registry):
    client, exp, name = registry
    promote(client, candidate(client, exp, "exp-a", 0.30), gate_params(name))
    other = promote(client, candidate(client, exp, "exp-b", 0.305, **{vocabulary.DATASET_TAG: "other.dir"}),
                    gate_params(name))
    assert not other.approved and other.gates[-1].detail == (
        "no paired test (champion version 1 was tested on other images (dataset md5 abc.dir vs other.dir)): test "
        "mAP50-95 0.3050 vs champion version 1 0.3000 + margin 0.0100")
    assert promote(client, candidate(client, exp, "exp-c", 0.90, **{vocabulary.DATASET_TAG: "other.dir"}),
                   gate_params(name)).approved


def test_promoting_the_same_run_again_changes_nothing(registry):
    client, exp, name = registry
    promote(client, candidate(client, exp, "exp-a", 0.30), gate_params(name))
    run = candidate(client, exp, "exp-b", 0.50)
    first = promote(client, run, gate_params(name))
    before = snapshot(client, name)
    again = promote(client, run, gate_params(name))
    assert not again.created and again.approved and again.version == "2"
    assert again.gates == first.gates  # judged against the champion it replaced, as the first time
    assert snapshot(client, name) == before and aliases(client, name) == {CHALLENGER: "2", CHAMPION: "2"}


def test_a_version_registered_without_a_description_gets_one(registry):
    client, exp, name = registry
    run = candidate(client, exp, "exp-a", 0.10)  # fails the gates: no champion
    first = promote(client, run, gate_params(name))
    expected = description(client, name, first.version)
    assert expected.startswith("**Reject**: `challenger` only; `champion` stayed unset.\n")
    client.update_model_version(name, first.version, description="")  # as a version promoted before descriptions
    again = promote(client, run, gate_params(name))
    assert not again.created and description(client, name, again.version) == expected


def test_failure_half_way_restores_the_aliases(registry, monkeypatch: pytest.MonkeyPatch):
    client, exp, name = registry
    first = promote(client, candidate(client, exp, "exp-a", 0.30), gate_params(name))
    run = candidate(client, exp, "exp-b", 0.50)
    real = MlflowClient.set_registered_model_alias

    def fail_on_champion(self: MlflowClient, model: str, alias: str, version: str) -> None:
        if alias == CHAMPION and version != first.version:
            raise MlflowException("injected registry outage")
        real(self, model, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", fail_on_champion)
    with pytest.raises(PipelineError, match=r"failed while setting alias champion.*injected registry outage.*"
                                            r"Nothing changed.*challenger → version 1, champion → version 1"
                                            r"; version 2 removed"):
        promote(client, run, gate_params(name))
    assert aliases(client, name) == {CHALLENGER: first.version, CHAMPION: first.version}
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == [first.version]


def test_unknown_registered_model_and_missing_champion(registry):
    client, _, name = registry
    with pytest.raises(PipelineError, match=f"no registered model '{name}'"):
        rollback(client, name)
    client.create_registered_model(name)
    with pytest.raises(PipelineError, match="has no champion to roll back"):
        rollback(client, name)


def test_nan_metric_fails_the_gates():
    run = RunSummary("r1", "exp", "FINISHED", {}, test_metrics(math.nan, math.nan))
    assert not any(gate.passed for gate in gates(run, None, gate_params("m"))[:2])


def test_connecting_leaves_the_users_environment_alone(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """Queued experiments started after connect() must still see the embedded store as embedded."""
    import os

    from yolo_mlops.tracking.store import connect

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    connect()
    assert "MLFLOW_TRACKING_URI" not in os.environ
