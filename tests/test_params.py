"""params.yaml validation: every bad value is refused with the file and the key named."""

from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, write_params
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.params import load_params


@pytest.fixture
def params_dir(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    return tmp_path


def test_project_params_load_with_the_documented_defaults() -> None:
    params = load_params(PROJECT_ROOT / "params.yaml")
    assert params.prepare.split_sizes == {"train": 40, "val": 10, "test": 10}
    assert (params.prepare.classes, params.prepare.split, params.prepare.fractions) == (("person",), "draw", False)
    train = params.train
    assert (train.model, train.epochs, train.imgsz, train.lr0, train.seed) == ("yolov8n.pt", 3, 320, 0.01, 42)
    assert train.optimizer != "auto" and train.device == "auto"
    assert params.evaluate.splits == ("val", "test")
    assert params.mlflow.experiment_name == "cv_yolo_tiny"
    assert params.flat()["train.lr0"] == 0.01 and params.flat()["evaluate.splits"] == ["val", "test"]


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("train.lr0", 0, "train.lr0 must be > 0"),
    ("train.lr0", -0.01, "train.lr0 must be > 0"),
    ("train.epochs", 0, "train.epochs must be >= 1"),
    ("train.imgsz", 100, "train.imgsz must be a positive multiple of 32"),
    ("train.imgsz", -32, "train.imgsz must be a positive multiple of 32"),
    ("train.device", "gpu", "train.device must be auto, cpu"),
    ("train.optimizer", "auto", "train.optimizer must be one of"),
    ("train.model", "yolov8n", "train.model must be a .pt weights file or a .yaml"),
    ("train.lr0", "fast", "train.lr0 must be of type float"),
    ("train.epochs", True, "train.epochs must be of type int"),
    ("prepare.train", 0, "prepare.train must be >= 1"),
    ("prepare.source", " ", "prepare.source must name"),
    ("prepare.classes", [], "prepare.classes must list at least one class name, or be 'all'"),
    ("prepare.classes", "person", "prepare.classes must be of type list"),
    ("prepare.classes", ["person", "person"], "prepare.classes must not name a class twice"),
    ("prepare.split", "random", "prepare.split must be one of draw, keep"),
    ("prepare.val", 1.5, "prepare.val as a fraction must be in (0, 1)"),
    ("prepare.val", 0.1, "prepare.test must be all counts (40, 10, 10) or all fractions (0.8, 0.1, 0.1) "
                         "(got train=40, val=0.1, test=10)"),
    ("evaluate.splits", ["val", "holdout"], "evaluate.splits must be a non-empty list"),
    ("evaluate.conf", 1.5, "evaluate.conf must be in [0, 1)"),
    ("evaluate.bootstrap", 50, "evaluate.bootstrap must be 0 (no intervals) or 200 to 100000 resamples (got 50)"),
    ("evaluate.bootstrap", -1, "evaluate.bootstrap must be 0 (no intervals) or 200"),
    ("evaluate.bootstrap", 1000.5, "evaluate.bootstrap must be of type int"),
    ("mlflow.experiment_name", "", "mlflow.experiment_name must not be empty"),
])
def test_bad_values_are_refused_naming_file_and_key(params_dir: Path, key: str, value: object, expected: str) -> None:
    write_params(params_dir, {key: value})
    with pytest.raises(PipelineError, match=r"params\.yaml") as error:
        load_params(params_dir / "params.yaml")
    assert expected in str(error.value)


def test_unknown_and_missing_keys_are_named(params_dir: Path) -> None:
    path = params_dir / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["train"]["lr"] = 0.1
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PipelineError, match="unknown key.*'train': lr"):
        load_params(path)
    del raw["train"]["lr"], raw["train"]["seed"]
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PipelineError, match="train.seed is missing"):
        load_params(path)


def test_fractions_and_all_classes_are_accepted_and_the_old_class_keys_point_to_classes(params_dir: Path) -> None:
    write_params(params_dir, {"prepare.train": 0.8, "prepare.val": 0.1, "prepare.test": 0.1, "prepare.classes": "all"})
    prepare = load_params(params_dir / "params.yaml").prepare
    assert prepare.fractions and prepare.classes == "all" and prepare.split_sizes["train"] == 0.8
    write_params(params_dir, {"prepare.train": 0.9})
    with pytest.raises(PipelineError, match="as fractions, must add up to at most 1"):
        load_params(params_dir / "params.yaml")
    path = params_dir / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["prepare"] |= {"class_id": 0, "class_name": "person", "train": 40, "val": 10, "test": 10}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(PipelineError, match=r"unknown key\(s\) in 'prepare': class_id, class_name \(replaced by "
                                            r"prepare.classes, e.g. classes: \[person\]\)"):
        load_params(path)


def test_broken_yaml_and_missing_file(params_dir: Path) -> None:
    path = params_dir / "params.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(PipelineError, match="not valid YAML"):
        load_params(path)
    with pytest.raises(PipelineError, match="not found"):
        load_params(params_dir / "absent.yaml")


def test_numeric_device_index_is_accepted_as_text(params_dir: Path) -> None:
    write_params(params_dir, {"train.device": 0})
    assert load_params(params_dir / "params.yaml").train.device == "0"
