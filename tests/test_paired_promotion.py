"""The decision with its uncertainty, on per-image statistics built by hand: the paired test against the
champion in a real (embedded) MLflow registry, its gate and fallback, the version's description, the
report's sentences, the factor effects' intervals and the chart."""

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from tests.conftest import log_synthetic_run
from tests.test_report import TEMPLATE, report_data
from tests.test_report import run as report_run
from yolo_mlops.core import vocabulary
from yolo_mlops.core.params import PromoteParams
from yolo_mlops.grid import charts
from yolo_mlops.grid.insights import FactorEffect, insights
from yolo_mlops.grid.ranking import Comparison, RunSummary
from yolo_mlops.grid.registry import Promotion, gates, promote
from yolo_mlops.grid.report import render, separation
from yolo_mlops.grid.resampling import Paired, artifact_path, images_to_separate
from yolo_mlops.yolo.uncertainty import ImageStats, PairedTest, save_image_stats

IMAGES = 10
PARAMS = {"train.model": "yolov8n.yaml", "train.epochs": 1, "train.imgsz": 64, "train.lr0": 0.01, "train.seed": 1,
          vocabulary.DATASET_TAG: "abc.dir", "evaluate.bootstrap": 200}


def hand_stats(hits: list[bool]) -> ImageStats:
    """One person per image and one confident prediction on it: a true positive at every IoU where `hits`."""
    count = len(hits)
    return ImageStats(images=tuple(f"{index:03d}.jpg" for index in range(count)), names=("person",),
                      tp=np.array([[hit] * 10 for hit in hits], dtype=bool),
                      conf=np.linspace(0.9, 0.5, count, dtype=np.float32), pred_cls=np.zeros(count, dtype=np.int64),
                      pred_image=np.arange(count), labels=np.ones((count, 1), dtype=np.int64))


def logged_run(client: MlflowClient, exp: str, name: str, hits: list[bool] | None, tmp_path: Path,
               **params: object) -> RunSummary:
    """A finished run with a model, test metrics (the share of hits, with an interval) and, unless `hits` is
    None, its per-image test statistics logged where the evaluate stage logs them."""
    share = sum(hits) / len(hits) if hits else 0.3
    metrics = {"val.mAP50-95": share, "val.recall": share, "test.mAP50-95": share, "test.recall": share,
               "test.mAP50-95_low": max(0.0, share - 0.2), "test.mAP50-95_high": min(1.0, share + 0.2)}
    run_id = log_synthetic_run(client, exp, name, metrics, PARAMS | params, model=True)
    if hits is not None:
        path = tmp_path / name / artifact_path("test")
        path.parent.mkdir(parents=True)
        save_image_stats(hand_stats(hits), path)
        client.log_artifact(run_id, str(path), str(Path(artifact_path("test")).parent))
    return RunSummary.from_run(client.get_run(run_id))


def paired_result(difference: float, low: float, high: float, probability: float, needed: int | None) -> PairedTest:
    return PairedTest(metric="mAP50-95", difference=difference, low=low, high=high, probability=probability,
                      images_needed=needed, images=IMAGES, resamples=1000)


def promote_params(name: str, confidence: float = 0.95) -> PromoteParams:
    return PromoteParams(registered_model=name, min_test_map50_95=0.0, min_test_recall=0.0, min_margin=0.0,
                         min_confidence=confidence)


@pytest.fixture
def registry(mlflow_store: MlflowClient, request: pytest.FixtureRequest):
    name = f"paired_{request.node.name}"
    return mlflow_store, mlflow_store.create_experiment(name), name


def champion_version(dataset: str = "abc.dir") -> ModelVersion:
    return ModelVersion("m", "1", 0, run_id="champion-run",
                        tags=[ModelVersionTag(vocabulary.DATASET_TAG, dataset),
                              ModelVersionTag("test.mAP50-95", "0.3")])


def challenger(test_map: float = 0.31) -> RunSummary:
    return RunSummary("r", "exp", "FINISHED", {vocabulary.DATASET_TAG: "abc.dir"},
                      {"test.mAP50-95": test_map, "test.recall": 0.5})


@pytest.mark.parametrize(("probability", "passed"), [(0.95, True), (0.9499, False), (1.0, True)])
def test_beats_champion_passes_when_the_probability_reaches_min_confidence(probability: float, passed: bool):
    evidence = Paired(paired_result(0.01, -0.02, 0.04, probability, 120), IMAGES, 1000)
    gate = gates(challenger(), champion_version(), promote_params("m"), evidence)[-1]
    assert gate.name == "beats champion" and gate.passed is passed
    assert f"probability {probability:.3f}" in gate.detail and "vs minimum 0.95" in gate.detail
    assert "95 % interval -0.0200 to +0.0400" in gate.detail


def test_without_a_paired_test_the_margin_decides_and_says_why():
    evidence = Paired(None, 0, 1000, "champion version 1 has no per-image test statistics")
    margin = PromoteParams("m", 0.0, 0.0, min_margin=0.02, min_confidence=0.95)
    gate = gates(challenger(0.31), champion_version(), margin, evidence)[-1]
    assert not gate.passed and gate.detail.startswith("no paired test (champion version 1 has no per-image")
    assert "+ margin 0.0200" in gate.detail
    assert gates(challenger(0.33), champion_version(), margin, evidence)[-1].passed


def test_better_on_every_image_is_promoted_with_probability_and_interval_in_the_description(registry, tmp_path):
    client, exp, name = registry
    promote(client, logged_run(client, exp, "champion", [True] * 3 + [False] * 7, tmp_path), promote_params(name))
    better = promote(client, logged_run(client, exp, "better", [True] * 10, tmp_path), promote_params(name))
    assert better.approved and better.paired.test.probability == 1.0 and better.paired.images == IMAGES
    assert better.paired.resamples == 200  # the challenger's evaluate.bootstrap
    text = client.get_model_version(name, better.version).description
    assert "test.mAP50-95 1.0000 (95 % interval 0.8000 to 1.0000)" in text
    assert ("Paired test against champion version 1 on the same 10 test images (200 resamples): probability 1.000 "
            "that this version is better (the gate asks for 0.95)") in text


def test_a_run_against_itself_under_another_name_is_not_sure_enough(registry, tmp_path):
    client, exp, name = registry
    hits = [True, False] * 5
    first = promote(client, logged_run(client, exp, "original", hits, tmp_path), promote_params(name))
    copy = promote(client, logged_run(client, exp, "copy", hits, tmp_path), promote_params(name))
    test = copy.paired.test
    assert abs(test.probability - 0.5) < 0.05 and test.low <= 0 <= test.high and test.difference == 0
    assert not copy.approved and copy.champion == first.version  # the margin (0) alone would have passed
    assert "probability 0.500" in client.get_model_version(name, copy.version).description


def test_other_test_images_fall_back_to_the_unpaired_gate(registry, tmp_path):
    client, exp, name = registry
    promote(client, logged_run(client, exp, "champion", [True] * 3 + [False] * 7, tmp_path), promote_params(name))
    other_run = logged_run(client, exp, "other", [True] * 10, tmp_path, **{vocabulary.DATASET_TAG: "x.dir"})
    other = promote(client, other_run,
                    promote_params(name))
    assert other.paired.test is None and "tested on other images (dataset md5 abc.dir vs x.dir)" in other.paired.why_not
    assert other.approved and "+ margin 0.0000" in other.gates[-1].detail  # point against point, with the margin
    text = client.get_model_version(name, other.version).description
    assert "No paired test against champion version 1: champion version 1 was tested on other images" in text


def test_a_champion_without_per_image_statistics_is_judged_by_the_margin(registry, tmp_path):
    client, exp, name = registry
    promote(client, logged_run(client, exp, "old", None, tmp_path), promote_params(name))  # registered before
    newer = promote(client, logged_run(client, exp, "newer", [True] * 10, tmp_path), promote_params(name))
    assert newer.paired.test is None and "champion version 1 has no per-image test statistics" in newer.paired.why_not
    assert newer.approved and "+ margin 0.0000" in newer.gates[-1].detail


def ranked_runs(intervals: list[tuple[float, float, float]]) -> list[RunSummary]:
    runs = []
    for index, (value, low, high) in enumerate(intervals):
        base = report_run(f"r{index}", 320, index, 0.5 - index / 100)
        runs.append(RunSummary(base.run_id, base.name, "FINISHED", base.params, base.metrics | {
            "test.mAP50-95": value, "test.mAP50-95_low": low, "test.mAP50-95_high": high}))
    return runs


def test_the_report_says_whether_the_test_set_tells_the_top_runs_apart(tmp_path: Path):
    apart = separation(ranked_runs([(0.6, 0.5, 0.7), (0.3, 0.2, 0.4), (0.1, 0.0, 0.2)]))
    assert apart == ("The test set tells `r0` apart from the other top runs: its 95 % interval of test.mAP50-95 "
                     "overlaps none of theirs.")
    close = ranked_runs([(0.35, 0.25, 0.45), (0.30, 0.20, 0.40), (0.1, 0.0, 0.2)])
    assert separation(close) == (
        "The test set cannot tell `r0` apart from `r1`: their 95 % intervals of test.mAP50-95 overlap; about 160 test "
        "images instead of 10 would tell `r0` from `r1`, if the difference between them stayed as it is.")
    same = separation(ranked_runs([(0.0, 0.0, 0.0), (0.0, 0.0, 0.0)]))
    assert "score the same (0.0000), so more test images alone would not tell which is better" in same
    assert "record no 95 % interval" in separation([report_run("a", 320, 1, 0.3), report_run("b", 320, 2, 0.2)])
    target = tmp_path / "decision.md"
    render(report_data(True, close), TEMPLATE, target)
    text = target.read_text()
    assert text.count("The test set cannot tell") == 1
    assert "test mAP50-95 0.3500 (95 % interval 0.2500 to 0.4500)" in text


def test_images_needed_shrink_the_intervals_as_one_over_the_square_root():
    assert images_to_separate(10, gap=0.05, half_widths=0.1) == 40  # twice narrower: four times the images
    assert images_to_separate(10, gap=0.0, half_widths=0.1) == float("inf")


def test_the_final_decision_states_the_probability_and_the_gate(tmp_path: Path):
    data = report_data(False, ranked_runs([(0.35, 0.25, 0.45), (0.30, 0.20, 0.40)]))
    paired = Paired(paired_result(0.01, -0.03, 0.05, 0.71, 250), IMAGES, 1000)
    promotion = Promotion(**{**data.promotion.__dict__, "paired": paired, "judged_against": "1"})
    target = tmp_path / "decision.md"
    render(type(data)(**{**data.__dict__, "promotion": promotion}), TEMPLATE, target)
    decision = target.read_text().split("## 5. Final decision")[1]
    assert ("Paired test against champion version 1 on the same 10 test images (1000 resamples): probability 0.710 "
            "that this version is better (the gate asks for 0.95)") in decision
    assert "not sure enough (below 0.95)" in decision and "about 250 test images would be needed" in decision
    fallback = Promotion(**{**promotion.__dict__, "paired": Paired(None, 0, 1000, "champion version 1 was tested on "
                                                                                 "other images")})
    render(type(data)(**{**data.__dict__, "promotion": fallback}), TEMPLATE, target)
    decision = target.read_text().split("## 5. Final decision")[1]
    assert "No paired test against champion version 1: champion version 1 was tested on other images." in decision
    assert "fell back to the margin gate: beat the champion by 0.01" in decision


def effect_replicates(runs: list[RunSummary], shifts: dict[str, float]) -> dict[str, dict[str, np.ndarray]]:
    """Replicates around each run's value, shared noise (the same images) plus a run's own shift."""
    noise = np.random.default_rng(0).normal(0, 0.05, 500)
    return {run.run_id: {"mAP50-95": run.metrics["val.mAP50-95"] + noise + shifts.get(run.name, 0.0)}
            for run in runs}


def test_factor_effects_carry_their_interval_and_say_when_it_includes_zero():
    ranked = [report_run("big-a", 416, 1, 0.45), report_run("big-b", 416, 42, 0.40),
              report_run("small-a", 320, 1, 0.30), report_run("small-b", 320, 42, 0.20)]
    comparison = Comparison(("val.mAP50-95",), ranked, [])
    [effect] = insights(comparison, effect_replicates(ranked, {})).effects
    sentence = effect.sentence("val.mAP50-95")
    assert sentence.startswith("imgsz 416 vs 320: +70.0% val.mAP50-95, 95 % interval +70.0% to +70.0% from "
                               "resampling the val images")  # the same images, the same noise: no doubt
    assert "includes 0" not in sentence
    noisy = {run.run_id: {"mAP50-95": values["mAP50-95"] + np.random.default_rng(index).normal(0, 0.3, 500)}
             for index, (run, values) in enumerate(zip(ranked, effect_replicates(ranked, {}).values(), strict=True))}
    [effect] = insights(comparison, noisy).effects
    assert effect.difference[0] < 0 < effect.difference[1]
    assert "the interval includes 0: these val images cannot tell whether imgsz 416 is better or worse than 320" \
        in effect.sentence("val.mAP50-95")
    partial = {key: value for key, value in effect_replicates(ranked, {}).items() if key != "id-small-b"}
    [effect] = insights(comparison, partial).effects
    assert "from resampling the val images of the 3 run(s) that logged per-image statistics" in \
        effect.sentence("val.mAP50-95")
    [bare] = insights(comparison).effects  # no per-image statistics: said, not a bare +70 %
    assert "+70.0% val.mAP50-95, no interval: the runs logged no per-image statistics" in bare.sentence("val.mAP50-95")


def test_effect_interval_is_the_difference_of_the_means_resample_by_resample():
    effect = FactorEffect("train.imgsz", "416", "320", 0.5, 0.4, 2, (0.02, 0.18))
    assert effect.sentence("val.mAP50-95").startswith("imgsz 416 vs 320: +25.0% val.mAP50-95, 95 % interval +5.0% to "
                                                      "+45.0%")
    ranked = [report_run("a", 416, 1, 0.5), report_run("b", 320, 1, 0.4)]
    replicates = {"id-a": {"mAP50-95": np.array([0.5, 0.6, 0.7, 0.8])},
                  "id-b": {"mAP50-95": np.array([0.4, 0.3, 0.7, 0.9])}}
    [found] = insights(Comparison(("val.mAP50-95",), ranked, []), replicates).effects
    differences = np.array([0.1, 0.3, 0.0, -0.1])
    assert found.difference == pytest.approx((np.quantile(differences, 0.025), np.quantile(differences, 0.975)))


def test_the_chart_draws_each_configurations_test_interval_beside_its_seed_spread(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch):
    drawn = []
    monkeypatch.setattr(plt, "close", drawn.append)
    ranked = []
    for index in range(10):  # 10 configurations, 2 seeds each
        for seed in (1, 42):
            base = report_run(f"c{index}-{seed}", 64 + 32 * index, seed, 0.3 + index / 100)
            ranked.append(RunSummary(base.run_id, base.name, "FINISHED", base.params, base.metrics | {
                "test.mAP50-95_low": 0.1, "test.mAP50-95_high": 0.4}))
    charts.config_chart(insights(Comparison(("val.mAP50-95",), ranked, [])), tmp_path / "chart.png")
    [figure] = drawn
    axes = figure.axes[0]
    assert len(axes.patches) == 10 and len(axes.get_xticklabels()) == 10
    [bars] = [line for line in axes.containers if type(line).__name__ == "ErrorbarContainer" and line.has_xerr is False
              and line.get_label().startswith("test.mAP50-95")]
    lows = [segment[0][1] for segment in bars.lines[2][0].get_segments()]
    assert lows == pytest.approx([0.1] * 10)
    assert figure.get_size_inches()[0] >= 13  # wide enough for 10 labels
    assert (tmp_path / "chart.png").read_bytes().startswith(b"\x89PNG")
