"""What a run carries: history names, flattened metrics, the experiment's fingerprint."""

from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.params import load_params
from yolo_mlops.core.vocabulary import flatten, history_metric, mlflow_metric, numbers
from yolo_mlops.tracking.record import code_digest, dataset_md5, fingerprint
from yolo_mlops.yolo.history import read_history, write_dvclive

RESULTS_CSV = """epoch,time,train/box_loss,metrics/precision(B),metrics/mAP50-95(B),lr/pg0
1,3.1,5.9,0.0,0.0,0.01
2,6.3,5.1,0.2,0.05,0.009
"""


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


def test_fingerprint_follows_what_the_stages_run_on() -> None:
    """Known before training: params of train and evaluate, the dataset's hash, the code, the experiment."""
    params = load_params(PROJECT_ROOT / "params.yaml")
    base = fingerprint(params, "d1.dir", "code-1")
    assert fingerprint(load_params(PROJECT_ROOT / "params.yaml"), "d1.dir", "code-1") == base
    for overrides in ({"train.lr0": 0.005}, {"evaluate.conf": 0.01}, {"mlflow.experiment_name": "other"}):
        assert fingerprint(load_params(PROJECT_ROOT / "params.yaml", overrides), "d1.dir", "code-1") != base
    assert fingerprint(params, "d2.dir", "code-1") != base
    assert fingerprint(params, "d1.dir", "code-2") != base


def test_identity_is_the_dataset_content_not_the_source_text() -> None:
    """COCO128 from its URL and the same bytes from a local zip: the same dataset md5, the same experiment."""
    from_url = load_params(PROJECT_ROOT / "params.yaml", {
        "prepare.source": "https://github.com/ultralytics/assets/releases/download/v0.0.0/coco128.zip"})
    from_zip = load_params(PROJECT_ROOT / "params.yaml", {"prepare.source": "../shared/data/coco128.zip"})
    assert fingerprint(from_url, "d1.dir", "code") == fingerprint(from_zip, "d1.dir", "code")


def test_code_digest_follows_the_code_dvc_yaml_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands and code dependencies of train and evaluate; not other stages' outputs, not Python's caches."""
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "train": {"cmd": "python -m stages.train", "deps": ["stages/train.py", "lib", "data/tiny_coco"]},
        "evaluate": {"cmd": "python -m stages.evaluate", "deps": ["lib", "models"]},
    }}))
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "train.py").write_text("print('train')\n")
    (tmp_path / "lib" / "__pycache__").mkdir(parents=True)
    (tmp_path / "lib" / "a.py").write_text("A = 1\n")
    monkeypatch.chdir(tmp_path)
    base = code_digest()
    (tmp_path / "lib" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"cache")
    assert code_digest() == base, "no data, no weights and no cache is code"
    (tmp_path / "lib" / "a.py").write_text("A = 2\n")
    assert code_digest() != base
    (tmp_path / "lib" / "a.py").write_text("A = 1\n")
    (tmp_path / "lib" / "b.py").write_text("")
    assert code_digest() != base
    (tmp_path / "stages" / "train.py").unlink()
    with pytest.raises(PipelineError, match="dvc.yaml: dependency stages/train.py does not exist"):
        code_digest()


def test_the_dataset_hash_comes_from_dvc_lock(tmp_path: Path) -> None:
    lock = tmp_path / "dvc.lock"
    with pytest.raises(PipelineError, match="dvc.lock: missing; run the pipeline with `dvc repro`"):
        dataset_md5(lock)
    lock.write_text("schema: '2.0'\nstages:\n  train: {cmd: x}\n")
    with pytest.raises(PipelineError, match="no entry for the prepare stage's output data/tiny_coco"):
        dataset_md5(lock)
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {"prepare": {
        "cmd": "python -m stages.prepare", "outs": [{"path": "data/tiny_coco", "md5": "d1.dir"}]}}}))
    assert dataset_md5(lock) == "d1.dir"
