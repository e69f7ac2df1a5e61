"""End to end through the real DVC queue: a 2 × 2 × 2 grid at tiny settings (yolov8n.yaml, imgsz
64 / 96, 1 epoch, real COCO128), queued, run by two queue workers at once on a new embedded MLflow
store (`python -m yolo_mlops.grid start --jobs 2`: `dvc exp run --run-all --jobs 2`), compared and
promoted in MLflow, then run again unchanged, then with two failing grid points, then the champion's
run copied under another name (the same model, the same per-image statistics) and promoted against
itself. One grid run is shared by every assertion (module-scoped)."""

import csv
import json
import re
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.entities import LoggedModelOutput, Metric, Param

from tests.conftest import COCO128_ZIP, TINY_PARAMS, copy_project, needs_coco128, run, tracking_uri
from yolo_mlops.core import vocabulary
from yolo_mlops.core.paths import WARM_DIR
from yolo_mlops.core.warm import FORKS_LOG
from yolo_mlops.grid.experiments import parse_exp_show, stop_leftover_workers
from yolo_mlops.grid.points import experiment_name
from yolo_mlops.grid.resampling import artifact_path
from yolo_mlops.tracking.model import model_id
from yolo_mlops.tracking.pyfunc_model import BOX_COLUMNS

pytestmark = [pytest.mark.e2e, needs_coco128]
GRID = "train.imgsz: [64, 96]\ntrain.lr0: [0.005, 0.01]\ntrain.seed: [1, 42]\ntrain.epochs: [1]\n"
# Valid params (so they are queued), but COCO128 holds fewer person images: the prepare stage fails.
FAILING_GRID = "prepare.train: [500]\ntrain.imgsz: [64]\ntrain.lr0: [0.01]\ntrain.seed: [1, 2]\ntrain.epochs: [1]\n"
MODEL = "yolo_tiny_person"
GATES = {"promote.min_test_map50_95": 0.0, "promote.min_test_recall": 0.0, "promote.min_margin": 0.0}


def grid_run(project: Path, check: bool = True) -> Any:
    return run(["python", "-m", "yolo_mlops.grid", "run"], project, check=check, timeout=1500)


def state(project: Path) -> dict[str, Any]:
    """What DVC and MLflow hold after a grid run."""
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp_show = json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)
    versions = client.search_model_versions(f"name = '{MODEL}'")
    return {
        "experiments": parse_exp_show(exp_show),
        "runs": client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000),
        "registry": sorted((str(v.version), v.run_id, v.last_updated_timestamp, tuple(sorted(v.tags.items())))
                           for v in versions),
        "aliases": {a: str(v) for a, v in client.get_registered_model(MODEL).aliases.items()} if versions else {},
        "decision": (project / "reports" / "decision.md").read_text(),
        "csv": list(csv.DictReader((project / "reports" / "runs.csv").open())),
    }


def copy_run(project: Path, run_id: str, name: str, scratch: Path) -> str:
    """A copy of a finished run under another DVC experiment name, as if the same experiment had run twice: its
    params, metrics, tags, dataset input, per-image statistics and (the same) logged model."""
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    original = client.get_run(run_id)
    tags = {key: value for key, value in original.data.tags.items() if not key.startswith("mlflow.")}
    copied = client.create_run(original.info.experiment_id, run_name=name,
                               tags=tags | {vocabulary.EXP_NAME_TAG: name}).info.run_id
    client.log_batch(copied, metrics=[Metric(key, value, 0, 0) for key, value in original.data.metrics.items()],
                     params=[Param(key, value) for key, value in original.data.params.items()])
    client.log_inputs(copied, datasets=list(original.inputs.dataset_inputs))
    folder = str(Path(artifact_path("test")).parent)  # every split's statistics
    client.log_artifacts(copied, client.download_artifacts(run_id, folder, str(scratch)), folder)
    client.log_outputs(copied, [LoggedModelOutput(model_id(original), step=0)])
    client.set_terminated(copied, "FINISHED")
    return copied


@pytest.fixture(scope="module")
def grid_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    project = copy_project(tmp_path_factory.mktemp("grid") / "project", TINY_PARAMS | GATES)
    (project / "grid.yaml").write_text(GRID)  # read from the working tree: no commit needed
    queued = run(["python", "-m", "yolo_mlops.grid", "queue"], project)
    new_store = not (project / "mlflow.db").exists()
    # Two workers on a new store: the first log stages open (and so create) the store at the same time.
    parallel = run(["python", "-m", "yolo_mlops.grid", "start", "--jobs", "2"], project, timeout=1500)
    workers_left = stop_leftover_workers(project, since=0)  # DVC may leave one: the grid stops it itself
    forks = (project / WARM_DIR / FORKS_LOG).read_text().splitlines()  # before the next grid run empties it
    first = grid_run(project)
    after_first = state(project)
    again = grid_run(project)
    after_again = state(project)
    (project / "grid.yaml").write_text(FAILING_GRID)
    failing = grid_run(project, check=False)
    after_failing = state(project)
    # The retry the output advises: remove the failed experiment, and the next queueing queues it again.
    failed_names = [e.name for e in after_failing["experiments"] if e.failed]
    run(["dvc", "exp", "remove", *failed_names], project)
    requeued = run(["python", "-m", "yolo_mlops.grid", "queue"], project)
    after_requeue = parse_exp_show(json.loads(run(["dvc", "exp", "show", "--json"], project).stdout))
    # The champion against itself: its run copied under a name ranked before it (a tie, broken by the name).
    champion_run = after_first["csv"][0]["run_id"]
    copied = copy_run(project, champion_run, "0-copy-of-the-champion", tmp_path_factory.mktemp("copy"))
    itself = run(["python", "-m", "yolo_mlops.grid", "promote"], project)
    return {"project": project, "queued": queued, "new_store": new_store, "parallel": parallel,
            "after_requeue": after_requeue,
            "workers_left": workers_left, "forks": forks,
            "first": first, "after_first": after_first, "again": again,
            "after_again": after_again, "failing": failing, "after_failing": after_failing, "requeued": requeued,
            "copied": copied, "itself": itself, "after_itself": state(project)}


def test_two_queue_workers_on_a_new_store_run_the_whole_grid(grid_runs):
    out = grid_runs["queued"].stdout
    assert "grid: 8 experiment(s), 0 already run" in out and "8 to queue" in out
    assert out.count("$ dvc exp run --queue --name ") == 8  # one command per point, named after its values
    assert "$ dvc exp run --queue --name imgsz_64-lr0_0.005-seed_1-epochs_1-" in out
    assert "-S train.imgsz=64 -S train.lr0=0.005 -S train.seed=1 -S train.epochs=1\n" in out
    assert grid_runs["new_store"] and "Traceback" not in grid_runs["parallel"].stdout + grid_runs["parallel"].stderr
    assert "[8/8] Reproducing experiment" in grid_runs["parallel"].stdout
    assert "sync: 8 experiment(s) linked to their MLflow run" in grid_runs["parallel"].stdout
    assert grid_runs["workers_left"] == []  # no DVC queue worker of the project outlives the command
    assert "grid: 8 experiment(s), 8 already run" in grid_runs["first"].stdout
    experiments = grid_runs["after_first"]["experiments"]
    assert len(experiments) == 8 and not any(e.failed for e in experiments)  # 8 of 8
    points = {(e.params["train.imgsz"], e.params["train.lr0"], e.params["train.seed"]) for e in experiments}
    assert points == {(i, lr, s) for i in (64, 96) for lr in (0.005, 0.01) for s in (1, 42)}


def test_every_stage_and_forwarder_of_the_queue_forked_from_the_warm_process(grid_runs):
    forked = Counter(line.split()[2] for line in grid_runs["forks"])
    # Each experiment: train, evaluate and log, and the forwarders of train and evaluate; prepare ran once
    # before the queue (the experiments restored it from DVC's run-cache).
    assert forked == {"stages.prepare": 1, "stages.train": 8, "stages.evaluate": 8, "stages.log": 8,
                      "yolo_mlops.tracking.forwarder": 16}
    assert all("/.dvc/tmp/exps/" in line for line in grid_runs["forks"] if "stages.prepare" not in line)
    assert "grid: forked from the warm process (1 prepare, 8 train, " in grid_runs["parallel"].stdout


def value_name(experiment: Any) -> str:
    """The name the experiment should have: `points.experiment_name` of its grid point and commit."""
    return experiment_name(experiment.baseline_rev, {key: experiment.params[key] for key in yaml.safe_load(GRID)}, {})


def test_experiments_are_named_after_their_values_in_dvc_mlflow_csv_and_report(grid_runs):
    """`dvc exp show`, MLflow's run names, reports/runs.csv and the report carry the names of the values."""
    after = grid_runs["after_first"]
    shown = [e.name for e in after["experiments"]]  # as `dvc exp show --json` names them
    assert shown == [value_name(e) for e in after["experiments"]]
    assert {name.rsplit("-", 1)[0] for name in shown} == {
        f"imgsz_{i}-lr0_{lr}-seed_{s}-epochs_1" for i in (64, 96) for lr in (0.005, 0.01) for s in (1, 42)}
    assert sorted(r.info.run_name for r in after["runs"]) == sorted(shown)  # MLflow's run names
    assert sorted(row["tags.mlflow.runName"] for row in after["csv"]) == sorted(shown)
    assert sorted(row["tags.dvc.exp_name"] for row in after["csv"]) == sorted(shown)
    assert all(f"| {name} |" in after["decision"] for name in shown)  # the report's table of every run


def test_one_mlflow_run_per_experiment_with_the_same_numbers(grid_runs):
    experiments, runs = grid_runs["after_first"]["experiments"], grid_runs["after_first"]["runs"]
    assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)
    by_name = {r.data.tags[vocabulary.EXP_NAME_TAG]: r for r in runs}
    assert set(by_name) == {e.name for e in experiments}
    for experiment in experiments:
        mlflow_run = by_name[experiment.name]
        assert mlflow_run.info.run_name == experiment.name
        assert mlflow_run.data.tags[vocabulary.EXP_REV_TAG] == experiment.rev
        assert mlflow_run.data.tags[vocabulary.BASELINE_TAG] == experiment.baseline_rev
        for key in ("train.imgsz", "train.lr0", "train.seed", "train.epochs", "train.model", "prepare.source"):
            assert mlflow_run.data.params[key] == str(experiment.params[key])
        # val and test: mAP50, mAP50-95, precision, recall, f1, the 4 of person, and the _low / _high of 4 of them
        assert len(experiment.metrics) == 34
        for name, value in experiment.metrics.items():
            assert mlflow_run.data.metrics[vocabulary.eval_metric(name)] == value


def test_comparison_outputs(grid_runs):
    out, project = grid_runs["first"].stdout, grid_runs["project"]
    assert "Runs ranked by val.mAP50-95, then val.mAP50, then val.recall" in out
    rows = grid_runs["after_first"]["csv"]
    assert len(rows) == 8 and {"run_id", "status", "metrics.evaluate/val_mAP50-95", "tags.dvc.exp_name"} <= set(rows[0])
    values = [float(row["metrics.evaluate/val_mAP50-95"]) for row in rows]
    assert values == sorted(values, reverse=True)
    for chart in ("metric_by_config.png", "epoch_curves.png"):
        assert (project / "reports" / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (project / "reports" / "dvc_plots" / "index.html").read_text()
    assert all(e.name in html for e in grid_runs["after_first"]["experiments"])


def test_best_run_is_registered_champion_and_loads(grid_runs, tmp_path: Path):
    after = grid_runs["after_first"]
    assert len(after["registry"]) == 1 and after["aliases"] == {"challenger": "1", "champion": "1"}
    version, run_id, _, tags = after["registry"][0]
    assert version == "1"
    best = grid_runs["after_first"]["csv"][0]
    assert run_id == best["run_id"] == dict(tags)[vocabulary.RUN_ID_TAG]
    assert {vocabulary.DATASET_TAG, vocabulary.COMMIT_TAG, vocabulary.EXP_NAME_TAG, "train.lr0", "test.mAP50-95",
            "val.recall"} <= set(dict(tags))
    with zipfile.ZipFile(COCO128_ZIP) as archive:
        member = next(name for name in archive.namelist() if name.endswith(".jpg"))
        image = tmp_path / "image.jpg"
        image.write_bytes(archive.read(member))
    with tracking_uri(f"sqlite:///{grid_runs['project'] / 'mlflow.db'}"):
        model = mlflow.pyfunc.load_model(f"models:/{MODEL}@{vocabulary.CHAMPION}")
    boxes = model.predict(pd.DataFrame({"image": [str(image)]}), params={"conf": 0.0})
    assert list(boxes.columns) == BOX_COLUMNS and (boxes["image"] == 0).all()


def test_decision_report(grid_runs):
    text, runs = grid_runs["after_first"]["decision"], grid_runs["after_first"]["runs"]
    for number, title in enumerate(("Objectives and constraints", "Recommended model", "Comparative analysis",
                                    "Risk assessment", "Final decision", "Next steps"), start=1):
        assert f"## {number}. {title}" in text
    best = grid_runs["after_first"]["csv"][0]["run_id"]
    assert f"MLflow run id `{best}`" in text and "**Approve**" in text
    assert sum(f"(run `{r.info.run_id}`)" in text for r in runs) == 3  # the top 3
    ranking = sorted((tuple(r.data.metrics[vocabulary.eval_metric(f"val.{m}")] for m in ("mAP50-95", "mAP50", "recall"))
                      for r in runs), reverse=True)
    assert ("TIE:" in text) == (ranking[0] == ranking[1])  # all zero is likely after one epoch from scratch
    client = MlflowClient(f"sqlite:///{grid_runs['project'] / 'mlflow.db'}")
    logged = client.download_artifacts(best, "decision/decision.md")  # its latest report, after the last grid run
    assert Path(logged).read_text() == grid_runs["after_failing"]["decision"]


def test_first_report_states_the_test_intervals_and_whether_they_separate_the_top_runs(grid_runs):
    text, runs = grid_runs["after_first"]["decision"], grid_runs["after_first"]["runs"]
    assert "No champion to compare with yet: no paired test." in text  # the first promotion
    bounds = {r.data.tags[vocabulary.EXP_NAME_TAG]: [r.data.metrics[vocabulary.eval_metric(f"test.mAP50-95{end}")]
                                                for end in ("", "_low", "_high")] for r in runs}
    top = [row["tags.dvc.exp_name"] for row in grid_runs["after_first"]["csv"][:3]]
    for name in top:
        value, low, high = bounds[name]
        assert low <= value <= high and f"test mAP50-95 {value:.4f} (95 % interval {low:.4f} to {high:.4f})" in text
    best, others = bounds[top[0]], [bounds[name] for name in top[1:]]
    overlap = any(low <= best[2] and best[1] <= high for _, low, high in others)
    assert (f"The test set cannot tell `{top[0]}` apart from" in text) == overlap
    assert (f"The test set tells `{top[0]}` apart from the other top runs" in text) == (not overlap)
    assert "no interval: the runs logged no per-image statistics" not in text  # the effects carry intervals
    assert re.search(r"imgsz 96 vs 64: [^\n]*, 95 % interval [^\n]* from resampling the val images", text)


def test_a_run_promoted_against_itself_under_another_name_is_not_separated(grid_runs):
    out, after = grid_runs["itself"].stdout, grid_runs["after_itself"]
    text = after["decision"]
    assert after["aliases"] == {"challenger": "2", "champion": "1"}  # not promoted: no better than itself
    assert "**Reject**" in text and "fails: beats champion" in text
    assert ("Paired test against champion version 1 on the same 10 test images (1000 resamples): probability 0.500 "
            "that this version is better (the gate asks for 0.95)") in text
    assert "That is not sure enough (below 0.95)" in text and "score the same" in text
    best = grid_runs["after_first"]["csv"][0]["tags.dvc.exp_name"]
    assert f"The test set cannot tell `0-copy-of-the-champion` apart from `{best}`" in text
    assert text.count("The test set cannot tell") == 1
    assert "no interval" not in text and "run(s) that logged per-image statistics" not in text  # the copy's too
    client = MlflowClient(f"sqlite:///{grid_runs['project'] / 'mlflow.db'}")
    version = client.get_model_version(MODEL, "2")
    assert version.run_id == grid_runs["copied"] and "probability 0.500" in version.description
    assert "(95 % interval " in version.description and "promote: run " in out


def test_running_again_changes_nothing(grid_runs):
    assert "8 already run" in grid_runs["again"].stdout and "0 to queue" in grid_runs["again"].stdout
    first, again = grid_runs["after_first"], grid_runs["after_again"]
    assert sorted(r.info.run_id for r in again["runs"]) == sorted(r.info.run_id for r in first["runs"])
    assert again["registry"] == first["registry"] and again["aliases"] == first["aliases"]
    assert again["decision"] == first["decision"]


def test_failed_experiments_are_visible_and_do_not_stop_the_comparison(grid_runs):
    out, after = grid_runs["failing"].stdout, grid_runs["after_failing"]
    for step in (1, 2):  # DVC's queue, with the grid's progress
        assert f"[{step}/2] Reproducing experiment '" in out
    failed = sorted((e for e in after["experiments"] if e.failed), key=lambda e: e.params["train.seed"])
    assert [(e.params["prepare.train"], e.params["train.seed"]) for e in failed] == [(500, 1), (500, 2)]
    failed_runs = {r.data.tags[vocabulary.EXP_NAME_TAG]: r for r in after["runs"] if r.info.status == "FAILED"}
    assert set(failed_runs) == {e.name for e in failed} and len(after["runs"]) == 10
    for experiment in failed:
        failed_run = failed_runs[experiment.name]
        assert failed_run.data.params["prepare.train"] == "500"
        # The stage's own error line, not DVC's generic "failed to reproduce".
        assert failed_run.data.tags[vocabulary.ERROR_TAG].startswith("error: prepare: only ")
        assert "but train + val + test = 520 were requested" in failed_run.data.tags[vocabulary.ERROR_TAG]
    retry = re.search(r"\(to retry: `dvc exp remove ([^`]*)`", out)
    assert retry and set(retry.group(1).split()) == {e.name for e in failed}
    assert grid_runs["failing"].returncode == 1  # the report is written, and the exit status says a point failed
    listed = re.search(r"error: 2 experiment\(s\) of this commit failed: ([^ ]+), ([^ ]+) \(",
                       grid_runs["failing"].stderr)
    assert listed and set(listed.groups()) == {e.name for e in failed}
    assert "grid: 2 experiment(s), 0 already run" in grid_runs["requeued"].stdout
    assert "2 to queue" in grid_runs["requeued"].stdout
    requeued = [e for e in grid_runs["after_requeue"] if e.queued]
    assert sorted(e.name for e in requeued) == sorted(e.name for e in failed)  # a point run again keeps its name
    assert all(name.startswith("train_500-imgsz_64-lr0_0.01-seed_") for name in failed_runs)
    assert all(f"not ranked: {e.name}: FAILED" in after["decision"] for e in failed)
    assert len(after["csv"]) == 10 and after["registry"] == grid_runs["after_first"]["registry"]
