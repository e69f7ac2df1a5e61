"""Ranking, selection and insights on synthetic runs in a real (embedded) MLflow store: no training."""

import csv
import math
from pathlib import Path

import pytest

from tests.conftest import log_synthetic_run
from yolo_mlops.core import vocabulary
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.grid.insights import insights
from yolo_mlops.grid.ranking import Comparison, RunSummary, compare, export_csv, select_best
from yolo_mlops.grid.report import table
from yolo_mlops.tracking.store import experiment_id

RANK_BY = ("val.mAP50-95", "val.mAP50", "val.recall")


def metrics(map50_95: float, map50: float = 0.5, recall: float = 0.5, test: float = 0.3) -> dict[str, float]:
    return {"val.mAP50-95": map50_95, "val.mAP50": map50, "val.recall": recall, "val.precision": 0.6,
            "test.mAP50-95": test, "test.mAP50": 0.4, "test.recall": 0.4, "test.precision": 0.5}


def summary(name: str, imgsz: int, lr0: float, seed: int, value: float) -> RunSummary:
    params = {"train.epochs": "3", "train.imgsz": str(imgsz), "train.lr0": str(lr0), "train.seed": str(seed)}
    return RunSummary(name, name, "FINISHED", params, metrics(value))


@pytest.fixture
def store(mlflow_store, request):
    return mlflow_store, mlflow_store.create_experiment(request.node.name)


def test_server_ranks_by_primary_then_tie_breaks_and_excludes_unrankable(store):
    client, exp = store
    log_synthetic_run(client, exp, "low", metrics(0.10))
    log_synthetic_run(client, exp, "tie-b", metrics(0.30, map50=0.6, recall=0.2))
    log_synthetic_run(client, exp, "tie-a", metrics(0.30, map50=0.6, recall=0.9))  # recall breaks the tie
    log_synthetic_run(client, exp, "second-map50", metrics(0.30, map50=0.7, recall=0.1))
    log_synthetic_run(client, exp, "nan", metrics(math.nan))
    log_synthetic_run(client, exp, "no-metrics", {})
    log_synthetic_run(client, exp, "failed", {}, params={"train.imgsz": 100}, status="FAILED")
    # a point that failed once, then passed when retried: history in MLflow, not a run to report
    log_synthetic_run(client, exp, "failed-then-retried", {}, params={"train.imgsz": 64}, status="FAILED")
    log_synthetic_run(client, exp, "retried", metrics(0.05), params={"train.imgsz": 64, "train.lr0": 0.01})
    log_synthetic_run(client, exp, "other-commit", metrics(0.99), baseline="other")
    # a training killed, then run again (the retry is "low"): history in MLflow, not in the comparison
    killed = log_synthetic_run(client, exp, "killed-attempt", {}, params={"train.imgsz": 100}, status="FAILED")
    client.set_tag(killed, vocabulary.PREVIOUS_ATTEMPT_TAG, "id-of-the-retry")
    workspace_run = log_synthetic_run(client, exp, "workspace-run", metrics(0.98))
    client.set_tag(workspace_run, vocabulary.EXP_NAME_TAG, vocabulary.WORKSPACE)

    comparison = compare(client, [exp], "base", RANK_BY)
    assert [run.name for run in comparison.ranked] == ["second-map50", "tie-a", "tie-b", "low", "retried"]
    reasons = {run.name: why for run, why in comparison.excluded}
    assert set(reasons) == {"nan", "no-metrics", "failed"}
    assert "NaN val.mAP50-95" in reasons["nan"] and "no metric val.mAP50-95" in reasons["no-metrics"]
    assert reasons["failed"].startswith("FAILED")
    best = select_best(client, [exp], "base", RANK_BY)
    assert best is not None and best.name == "second-map50"
    assert "| 1 | second-map50 |" in table(comparison) and "| – | nan |" in table(comparison)


def test_all_equal_metrics_are_a_tie_decided_by_name(store):
    client, exp = store
    for name in ("exp-c", "exp-a", "exp-b"):
        log_synthetic_run(client, exp, name, metrics(0.0, 0.0, 0.0), {"train.seed": 1})
    comparison = compare(client, [exp], "base", RANK_BY)
    assert [run.name for run in comparison.ranked] == ["exp-a", "exp-b", "exp-c"]
    assert select_best(client, [exp], "base", RANK_BY).name == "exp-a"
    found = insights(comparison)
    assert found.tie and any(line.startswith("TIE") for line in found.lines())


def test_empty_experiment_and_nothing_rankable_are_errors(store):
    client, exp = store
    with pytest.raises(PipelineError, match="no MLflow run of a DVC experiment from commit"):
        compare(client, [exp], "base", RANK_BY)
    log_synthetic_run(client, exp, "nan", metrics(math.nan))
    with pytest.raises(PipelineError, match=r"none of the 1 run\(s\) can be ranked.*nan: NaN"):
        compare(client, [exp], "base", RANK_BY)
    assert select_best(client, [exp], "base", RANK_BY) is None
    with pytest.raises(PipelineError, match="no MLflow experiment 'missing'"):
        experiment_id(client, "missing", create=False)


def test_csv_is_mlflows_export_in_rank_order(store, tmp_path: Path):
    client, exp = store
    log_synthetic_run(client, exp, "b", metrics(0.2), {"train.imgsz": 320})
    log_synthetic_run(client, exp, "a", metrics(0.4), {"train.imgsz": 416})
    previous = log_synthetic_run(client, exp, "a-killed", {}, {"train.imgsz": 416}, status="FAILED")
    client.set_tag(previous, vocabulary.PREVIOUS_ATTEMPT_TAG, "id-of-a")
    export_csv(client, [exp], "base", RANK_BY, tmp_path / "runs.csv")
    with open(tmp_path / "runs.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["tags.dvc.exp_name"] for row in rows] == ["a", "b"]
    assert {"run_id", "experiment_id", "status", "artifact_uri", "start_time", "end_time",
            "metrics.evaluate/val_mAP50-95", "params.train.imgsz"} <= set(rows[0])


def test_insights_factor_effects_seed_spread_and_margin_warning():
    runs = [summary("a", 416, 0.01, 1, 0.50), summary("b", 416, 0.01, 42, 0.40),
            summary("c", 416, 0.005, 1, 0.46), summary("d", 416, 0.005, 42, 0.42),
            summary("e", 320, 0.01, 1, 0.30), summary("f", 320, 0.01, 42, 0.20),
            summary("g", 320, 0.005, 1, 0.25), summary("h", 320, 0.005, 42, 0.25)]
    runs.sort(key=lambda run: -run.metrics["val.mAP50-95"])
    found = insights(Comparison(RANK_BY, runs, []))
    assert found.varying == ["train.imgsz", "train.lr0"]
    imgsz = next(effect for effect in found.effects if effect.factor == "train.imgsz")
    assert (imgsz.level, imgsz.baseline_level) == ("416", "320")
    assert imgsz.mean == pytest.approx(0.445) and imgsz.baseline_mean == pytest.approx(0.25)
    assert imgsz.relative == pytest.approx(0.78)
    assert "imgsz 416 vs 320: +78.0% val.mAP50-95" in imgsz.sentence("val.mAP50-95")
    spread = next(s for s in found.spreads if dict(s.config)["train.imgsz"] == "416"
                  and dict(s.config)["train.lr0"] == "0.01")
    assert spread.mean == pytest.approx(0.45) and spread.std == pytest.approx(math.sqrt(0.005))
    assert spread.range == pytest.approx(0.10)
    assert found.margin == pytest.approx(0.04) and found.margin_within_noise  # 0.04 < mean std 0.0424
    assert any(line.startswith("WARNING: the winner's margin") for line in found.lines())
    assert not found.tie


def test_effect_from_zero_is_absolute():
    runs = [summary("a", 416, 0.01, 1, 0.1), summary("b", 320, 0.01, 1, 0.0)]
    effect = insights(Comparison(RANK_BY, runs, [])).effects[0]
    assert effect.relative is None and "+0.1000 val.mAP50-95" in effect.sentence("val.mAP50-95")


def test_a_configuration_is_its_dataset_content_not_the_source_text():
    params = {"train.imgsz": "320", "train.lr0": "0.01", vocabulary.DATASET_TAG: "d1.dir"}
    from_url = RunSummary("a", "a", "FINISHED", params | {"train.seed": "1", "prepare.source": "https://x/coco128.zip"})
    from_zip = RunSummary("b", "b", "FINISHED", params | {"train.seed": "42", "prepare.source": "coco128.zip"})
    other_data = RunSummary("c", "c", "FINISHED", params | {"train.seed": "1", vocabulary.DATASET_TAG: "d2.dir"})
    assert from_url.config() == from_zip.config() != other_data.config()
    assert (vocabulary.DATASET_TAG, "d1.dir") in from_url.config()
