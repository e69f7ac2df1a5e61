"""The MLflow UI in a real browser (Debian's headless chromium) on a real `mlflow server`, on a store
filled by the project's own code: the experiment's training runs, named after their DVC experiments,
and a promoted version's description, whose link opens the decision report.

MLflow 3.17's UI chooses an experiment's view from its own GenAI / Model training switch (remembered
by the browser, or `?workflowType=` in the address), not from the experiment's kind tag: the plain
address opens the GenAI overview, the Model training one the runs table (docs/pipeline.md, "What reaches MLflow")."""

import contextlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.conftest import free_port, log_synthetic_run, project_env, tracking_uri
from tests.stack import BIN, HOST, Service, answers, wait_for
from yolo_mlops.core import vocabulary
from yolo_mlops.core.params import PromoteParams
from yolo_mlops.core.paths import DECISION_FILE
from yolo_mlops.grid.ranking import RunSummary
from yolo_mlops.grid.registry import promote
from yolo_mlops.tracking.forwarder import send_evaluation
from yolo_mlops.tracking.model import log_model
from yolo_mlops.tracking.record import RunHeader
from yolo_mlops.tracking.run import log_metrics, metric_points, open_run
from yolo_mlops.tracking.store import experiment_id, experiment_page, open_client

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs a chromium browser on PATH: apt-get install -y "
                                                          "chromium (Debian; .ci/run installs it when run as root)")

EXPERIMENT, MODEL = "cv_yolo_tiny", "yolo_tiny_person"
RUNS = {"frail-tick": 0.31, "lusty-bard": 0.27, "pious-yawn": 0.22}  # DVC experiment name → test mAP50-95
TRAINING = "hoary-vole"  # a run the train stage opened: its dataset input and source
DATASET_MD5 = "8157775d643ff8905893be1545635804.dir"
REPORT_TITLE = f"Decision report: {MODEL}"
BROWSER_TIMEOUT_S = 60


@dataclass(frozen=True)
class Ui:
    url: str
    experiment_id: str
    run_ids: dict[str, str]  # run name → run id
    evaluated: tuple[str, str]  # (experiment id, model id) of a model logged and evaluated as evaluate does it
    classes_experiment: str = ""  # runs sent as the stages send them, on a 3-class dataset
    classes_runs: tuple[str, ...] = ()


CLASSES_EXPERIMENT, CLASS_NAMES = "cv_yolo_classes", ("person", "car", "dog")


def log_stage_like_runs(client: MlflowClient, exp: str) -> tuple[str, ...]:
    """Three runs as the stages send them: opened with the dataset (input, profile, table: the same for every run),
    two epochs of training (the learning rate the same for all), then evaluate's all-class and per-class metrics."""
    run_ids = []
    profile = {"classes": list(CLASS_NAMES), "test": {"images": 10, "boxes": 40,
                                                      "classes": {name: {"boxes": 10} for name in CLASS_NAMES}}}
    for index in range(3):
        run_id = open_run(client, exp, RunHeader(
            run_name=f"exp-{index}", fingerprint=f"{index}" * 64,
            params={"train.lr0": "0.01", "train.seed": str(index)},
            tags={vocabulary.EXP_NAME_TAG: f"exp-{index}"}, dataset_md5=DATASET_MD5, dataset_profile=profile,
            dataset_table={"split": ["test"], "class": ["all"], "images": [10]}))
        epochs = [{"train/box_loss": 3.0 - index / 10 - epoch, "lr/pg0": 0.01, "val/mAP50-95": 0.1 * epoch + index}
                  for epoch in range(2)]
        log_metrics(client, run_id, metric_points((vocabulary.history_metric(name), value, step)
                                                  for step, epoch in enumerate(epochs, start=1)
                                                  for name, value in epoch.items()))
        evaluation = {split: {"mAP50-95": 0.2 + index / 10, "recall": 0.5,
                              "classes": {name: {"mAP50-95": 0.1 * rank + index / 10} for rank, name in
                                          enumerate(CLASS_NAMES)}} for split in ("val", "test")}
        log_metrics(client, run_id, metric_points((vocabulary.eval_metric(name), value, 0) for name, value in
                                                  vocabulary.numbers(vocabulary.flatten(evaluation)).items()))
        client.set_terminated(run_id, "FINISHED")
        run_ids.append(run_id)
    return tuple(run_ids)


def dom(url: str, profile: Path) -> str:
    """The page's DOM once its scripts are done, as a fresh browser profile (nothing remembered) renders it
    on a full HD screen; the white space between tags left out."""
    result = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                             "--window-size=1920,1080",  # the runs table renders the columns in view only
                             "--virtual-time-budget=20000", "--dump-dom", url],
                            capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)
    assert result.returncode == 0 and "</html>" in result.stdout, result.stderr[-2000:]
    return re.sub(r">\s+<", "><", result.stdout)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ui]:
    """`mlflow server` on 127.0.0.1 and a SQLite store holding the grid's runs, the best one promoted."""
    folder = tmp_path_factory.mktemp("ui")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with tracking_uri(uri):  # the model of a synthetic run is logged through MLflow's global tracking URI
        client = open_client(uri)
        exp = experiment_id(client, EXPERIMENT)
        run_ids = {name: log_synthetic_run(client, exp, name, {"val.mAP50-95": value, "test.mAP50-95": value,
                                                               "test.recall": 0.5}, model=name == "frail-tick")
                   for name, value in RUNS.items()}
        best = RunSummary.from_run(client.get_run(run_ids["frail-tick"]))
        promote(client, best, PromoteParams(registered_model=MODEL, min_test_map50_95=0.2, min_test_recall=0.3,
                                            min_margin=0.01))
        open_run(client, exp, RunHeader(
            run_name=TRAINING, fingerprint="f" * 64, params={"train.imgsz": "64"},
            tags={vocabulary.EXP_NAME_TAG: TRAINING, vocabulary.SOURCE_TYPE_TAG: vocabulary.SOURCE_TYPE,
                  vocabulary.SOURCE_NAME_TAG: "/home/user/yolo-mlops",
                  vocabulary.ENTRY_POINT_TAG: vocabulary.ENTRY_POINT},
            dataset_md5=DATASET_MD5, dataset_profile={"classes": ["person"], "train": {"images": 40}},
            dataset_table={"split": ["train"], "class": ["all"], "images": [40]}))
        report = folder / DECISION_FILE.name
        report.write_text(f"# {REPORT_TITLE}\n", encoding="utf-8")
        client.log_artifact(best.run_id, str(report), vocabulary.DECISION_ARTIFACTS)  # as `grid promote` logs it
        classes_experiment = experiment_id(client, CLASSES_EXPERIMENT)
        classes_runs = log_stage_like_runs(client, classes_experiment)
        evaluated = evaluated_model(client, folder)
    port = free_port(HOST)
    server = Service.start([str(BIN / "mlflow"), "server", "--backend-store-uri", uri, "--host", HOST,
                            "--port", str(port), "--workers", "1"], project_env(), folder / "mlflow.log")
    try:
        wait_for(lambda: answers(f"http://{HOST}:{port}/health"), "mlflow server", server)
        yield Ui(f"http://{HOST}:{port}/", exp, run_ids, evaluated, classes_experiment, classes_runs)
    finally:
        server.stop()


def evaluated_model(client: MlflowClient, folder: Path) -> tuple[str, str]:
    """A run whose model is logged, then evaluated, by the evaluate stage's forwarder (its jobs, in its order),
    in an experiment of its own: (experiment id, model id)."""
    (folder / "metrics").mkdir()
    (folder / "metrics" / "eval.json").write_text(json.dumps({split: {"mAP50": 0.5, "recall": 0.25}
                                                              for split in ("val", "test")}))
    (folder / "plots").mkdir()
    (folder / "metrics" / "per_image").mkdir()  # the evaluate stage's outputs, as it writes them (empty here)
    (folder / "best.pt").write_bytes(b"weights")  # logged, never loaded here
    exp = experiment_id(client, "evaluated")
    run = client.create_run(exp, run_name="evaluated")
    with contextlib.chdir(folder):
        model = log_model(client, run, folder / "best.pt", 64)
        send_evaluation(client, run.info.run_id, None)  # type: ignore[arg-type]
    return exp, model


def test_the_address_the_grid_prints_opens_the_training_runs(ui: Ui, tmp_path: Path):
    """`python -m yolo_mlops.grid compare` prints `experiment_page`: the runs table, each run by its DVC experiment
    name, the run a stage opened with its dataset (DVC's md5 as digest) and source (project:dvc.yaml)."""
    page = dom(experiment_page(ui.url, ui.experiment_id), tmp_path / "profile")
    assert f"<title>Runs - Experiment {ui.experiment_id} - MLflow</title>" in page
    assert 'data-testid="sort-header-Run Name"' in page and f"<strong>{len(RUNS) + 1}</strong> matching runs" in page
    assert all(f">{name}<" in page for name in [*RUNS, TRAINING])
    assert f"tiny_coco ({DATASET_MD5})" in page and ">yolo-mlops:dvc.yaml<" in page
    assert 'data-testid="time-range-select-dropdown"' not in page  # the GenAI overview's


def test_without_the_switch_the_experiment_opens_on_the_genai_overview(ui: Ui, tmp_path: Path):
    """What docs/pipeline.md says to switch away from: the UI leaves the experiment's kind tag, which the server
    does hand it, aside."""
    served = MlflowClient(ui.url.rstrip("/")).get_experiment(ui.experiment_id)
    assert served.tags[vocabulary.EXPERIMENT_KIND_TAG] == vocabulary.EXPERIMENT_KIND
    page = dom(f"{ui.url}#/experiments/{ui.experiment_id}", tmp_path / "profile")
    assert f"<title>Overview - Experiment {ui.experiment_id} - MLflow</title>" in page
    assert 'data-testid="time-range-select-dropdown"' in page
    assert not any(name in page for name in [*RUNS, TRAINING])


def test_the_promoted_version_shows_its_decision_and_gates_and_links_to_the_report(ui: Ui, tmp_path: Path):
    page = dom(f"{ui.url}#/models/{MODEL}/versions/1", tmp_path / "version")
    assert "<p><strong>Approve</strong>: promoted to <code>champion</code>.</p>" in page
    assert "<tr><td>min test mAP50-95</td><td>pass</td><td>test mAP50-95 0.3100 vs minimum 0.2000</td></tr>" in page
    link = f"#/experiments/{ui.experiment_id}/runs/{ui.run_ids['frail-tick']}/artifacts/decision/decision.md"
    assert f'href="{link}">decision/decision.md</a>' in page
    report = dom(f"{ui.url}{link}", tmp_path / "report")
    assert re.search(f"<h1[^>]*>{REPORT_TITLE}</h1>", report)  # the report, rendered from its Markdown


def test_a_run_opens_on_training_and_evaluation_and_compare_plots_a_metric_that_differs(ui: Ui, tmp_path: Path):
    """The run's Model metrics tab: evaluate's and train's charts first (sections in name order), the per-class
    results in the section after them, no dataset statistics. The Compare view's parallel coordinates plot shows
    the first metric the runs share by default (MLflow's choice): one that tells the runs apart."""
    run_id = ui.classes_runs[0]
    page = dom(f"{ui.url}#/experiments/{ui.classes_experiment}/runs/{run_id}/model-metrics", tmp_path / "metrics")
    sections = re.findall(r'section-header[^>]*>(?:<[^>]+>)*?<div[^>]*>([^<]+)</div><div[^>]*>\((\d+)\)<', page)
    assert [(name, int(count)) for name, count in sections] == [("evaluate", 4), ("train", 3), ("Model metrics", 6)]
    runs = ",".join(f"%22{run}%22" for run in ui.classes_runs)
    page = dom(f"{ui.url}#/compare-runs?runs=%5B{runs}%5D&experiments=%5B%22{ui.classes_experiment}%22%5D",
               tmp_path / "compare")
    default = re.search(r"Metrics:(?:<[^>]+>)+([^<]+)<", page).group(1)
    values = {MlflowClient(ui.url.rstrip("/")).get_run(run).data.metrics[default] for run in ui.classes_runs}
    assert not default.startswith(f"{vocabulary.PREPARE}/") and len(values) == len(ui.classes_runs)


def test_the_logged_model_page_shows_the_evaluation_metrics(ui: Ui, tmp_path: Path):
    """evaluate's forwarder logs the model while the stage evaluates, then the metrics, linked to the model."""
    exp, model = ui.evaluated
    page = dom(f"{ui.url}#/experiments/{exp}/models/{model}", tmp_path / "model")
    assert "Metrics (0)" not in page and "Metrics (4)" in page, re.findall(r"Metrics[^<]{0,20}", page)
    assert "evaluate/val_mAP50" in page
