"""The decision report filled in from synthetic run records: six sections, real numbers, the decision."""

import math
from pathlib import Path

import pytest

from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.params import load_params
from yolo_mlops.grid.insights import insights
from yolo_mlops.grid.ranking import Comparison, RunSummary
from yolo_mlops.grid.registry import Gate, Promotion
from yolo_mlops.grid.report import ReportData, render, wilson_interval

PROJECT = Path(__file__).resolve().parents[1]
TEMPLATE = PROJECT / "reports" / "templates" / "decision_template.md"
SECTIONS = ("## 1. Objectives and constraints", "## 2. Recommended model", "## 3. Comparative analysis",
            "## 4. Risk assessment", "## 5. Final decision", "## 6. Next steps")


def run(name: str, imgsz: int, seed: int, value: float, precision: float = 0.8, recall: float = 0.3) -> RunSummary:
    params = {"train.model": "yolov8n.pt", "train.epochs": "3", "train.imgsz": str(imgsz), "train.lr0": "0.01",
              "train.seed": str(seed)}
    metrics = {"val.mAP50-95": value, "val.mAP50": 0.5, "val.recall": recall, "val.precision": precision,
               "test.mAP50-95": value - 0.1, "test.mAP50": 0.4, "test.recall": recall, "test.precision": precision,
               "data.train_images": 40, "data.val_images": 10, "data.test_images": 10, "data.test_boxes": 61}
    return RunSummary(f"id-{name}", name, "FINISHED", params, metrics)


def report_data(approved: bool, ranked: list[RunSummary], excluded=(), champion: str | None = "1") -> ReportData:
    comparison = Comparison(("val.mAP50-95", "val.mAP50", "val.recall"), ranked, list(excluded))
    gates = [Gate("min test mAP50-95", True, "ok"), Gate("min test recall", approved, "recall vs minimum"),
             Gate("beats champion", True, "no champion yet")]
    promotion = Promotion("yolo_tiny_person", "3", True, approved, gates, champion, "3" if approved else champion)
    curves = {r.name: [(1, 0.1), (2, 0.2), (3, 0.3)] for r in ranked}
    return ReportData(load_params(PROJECT / "params.yaml"), "abcdef1234", "sqlite:///mlflow.db", "CPU only, 2 core(s)",
                      comparison, insights(comparison), promotion, curves, "val.mAP50-95")


def test_report_has_six_sections_numbers_and_approval(tmp_path: Path):
    ranked = [run("big-a", 416, 1, 0.45), run("big-b", 416, 42, 0.40), run("small-a", 320, 1, 0.30),
              run("small-b", 320, 42, 0.20)]
    failed = RunSummary("id-bad", "bad-exp", "FAILED", {"train.imgsz": "100"}, error="imgsz must be a multiple")
    target = tmp_path / "decision.md"
    render(report_data(True, ranked, [(failed, "FAILED: imgsz must be a multiple")]), TEMPLATE, target)
    text = target.read_text()
    positions = [text.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    assert "MLflow run id `id-big-a`" in text and "registered as `yolo_tiny_person` version 3" in text
    for name in ("big-a", "big-b", "small-a"):
        assert f"`{name}` (run `id-{name}`)" in text  # the top 3
    assert "imgsz 416 vs 320: +70.0% val.mAP50-95" in text
    assert "| – | bad-exp | | 100 |" in text.replace("|  |", "| |") and "not ranked: bad-exp" in text
    assert text.count("   Mitigation:") >= 4
    assert "precision 0.8000 vs recall 0.3000: unbalanced, 0.5000 apart (more than 0.15)" in text
    assert "was still rising at the last epoch" in text
    assert "**Approve**" in text and "previous champion: version 1, kept for rollback" in text
    for term in ("Short term", "Medium term", "Long term"):
        assert term in text
    assert "${" not in text


def test_rejection_and_tie_are_reported(tmp_path: Path):
    ranked = [run("a", 320, 1, 0.0, 0.0, 0.0), run("b", 320, 42, 0.0, 0.0, 0.0)]
    render(report_data(False, ranked), TEMPLATE, tmp_path / "decision.md")
    text = (tmp_path / "decision.md").read_text()
    assert "**Reject**" in text and "fails: min test recall" in text and "`champion` is still version 1" in text
    assert "TIE: the best runs are equal on every ranking metric" in text
    assert "the ranking is within seed noise" in text
    assert "load it as `models:/yolo_tiny_person@champion`" in text  # the champion that stays


def test_balanced_precision_and_recall_read_as_balanced(tmp_path: Path):
    render(report_data(True, [run("a", 320, 1, 0.3, precision=0.5, recall=0.45)]), TEMPLATE, tmp_path / "decision.md")
    text = (tmp_path / "decision.md").read_text()
    assert "**Precision / recall balance**: test precision 0.5000 vs recall 0.4500: balanced, within 0.15" in text
    assert "unbalanced" not in text and "imbalance" not in text


def test_a_rejection_without_champion_sends_no_one_to_a_missing_alias(tmp_path: Path):
    render(report_data(False, [run("a", 320, 1, 0.0, 0.0, 0.0)], champion=None), TEMPLATE, tmp_path / "decision.md")
    text = (tmp_path / "decision.md").read_text()
    assert "`champion` is unset" in text and "`yolo_tiny_person@champion` does not exist" in text
    assert "models:/yolo_tiny_person@champion" not in text and "check `yolo_tiny_person@champion`" not in text


def test_bad_template_is_refused_and_nothing_is_written(tmp_path: Path):
    template = tmp_path / "template.md"
    template.write_text("# ${registered_model}\n${unknown_section}\n")
    target = tmp_path / "decision.md"
    with pytest.raises(PipelineError, match=r"template.md: unknown or malformed placeholder 'unknown_section'"):
        render(report_data(True, [run("a", 320, 1, 0.3)]), template, target)
    assert not target.exists() and list(tmp_path.iterdir()) == [template]
    with pytest.raises(PipelineError, match="decision report template not found"):
        render(report_data(True, [run("a", 320, 1, 0.3)]), tmp_path / "missing.md", target)


def test_wilson_interval_is_defined_at_zero_recall():
    low, high = wilson_interval(0.0, 61)
    assert low == 0.0 and 0.05 < high < 0.07
    assert all(math.isnan(bound) for bound in wilson_interval(0.5, 0))  # no boxes, no interval


def test_per_class_table_for_the_best_and_the_runner_up_and_the_weakest_class_as_a_risk(tmp_path: Path):
    classes = ("person", "car", "dog")
    ranked = []
    for name, value in (("best", 0.5), ("second", 0.4), ("third", 0.3)):
        base = run(name, 320, 1, value)
        per_class = {f"test.classes.{label}.{metric}": value / (index + 1) for index, label in enumerate(classes)
                     for metric in ("mAP50-95", "mAP50", "precision", "recall")}
        boxes = {f"data.test_classes_{label}_boxes": 10 * (3 - index) for index, label in enumerate(classes)}
        ranked.append(RunSummary(base.run_id, name, "FINISHED", base.params, base.metrics | per_class | boxes,
                                 classes=classes))
    target = tmp_path / "decision.md"
    render(report_data(True, ranked), TEMPLATE, target)
    text = target.read_text()
    header = ("| class | best mAP50-95 | best mAP50 | best precision | best recall | second mAP50-95 | second mAP50 "
              "| second precision | second recall | test boxes |")
    assert header in text and "third mAP50-95" not in text
    assert "| person | 0.5000 | 0.5000 | 0.5000 | 0.5000 | 0.4000 | 0.4000 | 0.4000 | 0.4000 | 30 |" in text
    assert "| dog | 0.1667 | 0.1667 | 0.1667 | 0.1667 | 0.1333 | 0.1333 | 0.1333 | 0.1333 | 10 |" in text
    assert text.index("| person |") < text.index("| car |") < text.index("| dog |")  # the dataset's order
    assert ("**Weakest class**: `dog`: test mAP50-95 0.1667 on 10 box(es), against 0.5000 for `person`." in text)
    assert "- Dataset: 3 class(es), person, car, dog (train 40 images, val 10 images, test 10 images;" in text
