"""What a run carries: history names, flattened metrics, the experiment's fingerprint."""

from pathlib import Path

import pytest

from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.vocabulary import flatten, history_metric, mlflow_metric, numbers
from yolo_mlops.tracking.record import dataset_md5, fingerprint, read_lock
from yolo_mlops.yolo.history import read_history, write_dvclive

RESULTS_CSV = """epoch,time,train/box_loss,metrics/precision(B),metrics/mAP50-95(B),lr/pg0
1,3.1,5.9,0.0,0.0,0.01
2,6.3,5.1,0.2,0.05,0.009
"""
LOCK = {
    "prepare": {"cmd": "python -m stages.prepare", "deps": [{"path": "stages/prepare.py", "md5": "a"}],
                "params": {"params.yaml": {"prepare": {"seed": 0}}},
                "outs": [{"path": "data/tiny_coco", "md5": "d1.dir"}]},
    "train": {"cmd": "python -m stages.train", "deps": [{"path": "data/tiny_coco", "md5": "d1.dir"}],
              "params": {"params.yaml": {"train": {"lr0": 0.01}}}, "outs": [{"path": "models", "md5": "m1.dir"}]},
    "evaluate": {"cmd": "python -m stages.evaluate", "deps": [], "params": {}, "outs": []},
}


def test_history_has_one_row_per_epoch_under_stable_names(tmp_path: Path) -> None:
    (tmp_path / "results.csv").write_text(RESULTS_CSV)
    history = read_history(tmp_path / "results.csv")
    assert history == [
        {"train/box_loss": 5.9, "val/precision": 0.0, "val/mAP50-95": 0.0, "lr/pg0": 0.01},
        {"train/box_loss": 5.1, "val/precision": 0.2, "val/mAP50-95": 0.05, "lr/pg0": 0.009},
    ]
    assert [history_metric(name) for name in history[0]] == [
        "train/box_loss", "train/val_precision", "train/val_mAP50-95", "train/lr_pg0"]
    write_dvclive(history, tmp_path / "dvclive")
    tsv = (tmp_path / "dvclive" / "plots" / "metrics" / "val" / "mAP50-95.tsv").read_text().splitlines()
    assert tsv == ["step\tmAP50-95", "1\t0.0", "2\t0.05"]


def test_broken_history_is_refused(tmp_path: Path) -> None:
    (tmp_path / "results.csv").write_text("epoch,train/box_loss\n1,nan-ish\n")
    with pytest.raises(PipelineError, match=r"results.csv:2: not a row of numbers"):
        read_history(tmp_path / "results.csv")
    with pytest.raises(PipelineError, match="missing; run the train stage"):
        read_history(tmp_path / "absent.csv")


def test_flatten_keeps_numbers_only() -> None:
    flat = numbers(flatten({"val": {"mAP50": 0.5, "note": "x", "ok": True}, "n": 3}))
    assert flat == {"val.mAP50": 0.5, "n": 3.0}
    assert {mlflow_metric("evaluate", name): value for name, value in flat.items()} == {
        "evaluate/val_mAP50": 0.5, "evaluate/n": 3.0}


def test_fingerprint_follows_inputs_not_outputs() -> None:
    base = fingerprint(LOCK, "cv_yolo_tiny")
    retrained = {**LOCK, "train": {**LOCK["train"], "outs": [{"path": "models", "md5": "m2.dir"}]},
                 "evaluate": {**LOCK["evaluate"], "deps": [{"path": "models", "md5": "m2.dir"}]}}
    assert fingerprint(retrained, "cv_yolo_tiny") == base
    new_data = {**LOCK, "train": {**LOCK["train"], "deps": [{"path": "data/tiny_coco", "md5": "d2.dir"}]}}
    assert fingerprint(new_data, "cv_yolo_tiny") != base
    changed = {**LOCK, "train": {**LOCK["train"], "params": {"params.yaml": {"train": {"lr0": 0.005}}}}}
    assert fingerprint(changed, "cv_yolo_tiny") != base
    assert fingerprint(LOCK, "other_experiment") != base
    assert dataset_md5(LOCK) == "d1.dir"


def test_lock_must_hold_the_upstream_stages(tmp_path: Path) -> None:
    with pytest.raises(PipelineError, match="dvc.lock: missing"):
        read_lock(tmp_path / "dvc.lock")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  prepare: {cmd: x}\n")
    with pytest.raises(PipelineError, match="no entry for stage.*train, evaluate"):
        read_lock(tmp_path / "dvc.lock")


def test_identity_is_the_dataset_content_not_the_source_text() -> None:
    """COCO128 from its URL and the same bytes from a local zip: the same dataset md5, the same experiment."""
    from_url = {**LOCK, "prepare": {**LOCK["prepare"], "params": {"params.yaml": {"prepare": {
        "seed": 0, "source": "https://github.com/ultralytics/assets/releases/download/v0.0.0/coco128.zip"}}}}}
    from_zip = {**LOCK, "prepare": {**LOCK["prepare"], "params": {"params.yaml": {"prepare": {
        "seed": 0, "source": "../shared/data/coco128.zip"}}}, "deps": [{"path": "stages/prepare.py", "md5": "b"}]}}
    assert fingerprint(from_url, "cv_yolo_tiny") == fingerprint(from_zip, "cv_yolo_tiny") == fingerprint(
        LOCK, "cv_yolo_tiny")
    other_data = [{"path": "data/tiny_coco", "md5": "d2.dir"}]
    other_split = {**from_zip, "prepare": {**from_zip["prepare"], "outs": other_data},
                   "train": {**LOCK["train"], "deps": other_data}}
    assert fingerprint(other_split, "cv_yolo_tiny") != fingerprint(from_zip, "cv_yolo_tiny")
