"""Ctrl-C on the grid, as a terminal sends it: SIGINT to the whole foreground process group (`setsid`, then
`kill -INT -<pgid>`), while both experiments of a 2-point grid train in DVC's queue (two workers), against
the embedded store and against a real `mlflow server` (moto's S3 server stands in for MinIO). Then: a second
driver while one runs, a driver killed with `kill -9` (its lock and its queue left behind), and the next run
completing only what is missing."""

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow import MlflowClient

from tests.conftest import TINY_PARAMS, copy_project, needs_coco128, project_env, run
from tests.stack import S3Server, client_env, mlflow_server, s3_server, wait_for
from yolo_mlops.core import vocabulary
from yolo_mlops.grid.experiments import EXEC_RUN, QUEUE_WORKER, parse_exp_show

pytestmark = [needs_coco128, pytest.mark.e2e]
GRID = "train.seed: [1, 2]\n"
# The interrupt comes after epoch 1 of both experiments reached MLflow; the other epochs (about 2 s each here)
# leave room for it on a loaded machine. Were training over, the next run would take it from DVC's run-cache.
EPOCHS = 10
EPOCH_METRIC = vocabulary.history_metric("train/box_loss")
GATES = {"promote.min_test_map50_95": 0.0, "promote.min_test_recall": 0.0, "promote.min_margin": 0.0}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


def grid(project: Path, env: dict[str, str], log: Path, sigint_ignored: bool = False) -> subprocess.Popen:
    """`python -m yolo_mlops.grid run` in a session and process group of its own, as a terminal starts it.
    `sigint_ignored`: started with SIGINT ignored, as a script's background job (`... &`) starts it."""
    with log.open("w") as sink:
        return subprocess.Popen(["python", "-m", "yolo_mlops.grid", "run"], cwd=project, env=env, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=ignore_sigint if sigint_ignored else None)


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def training_runs(client: MlflowClient) -> list:
    """The RUNNING runs that hold an epoch already."""
    experiment = client.get_experiment_by_name("cv_yolo_tiny")
    running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'") if experiment else []
    return [found for found in running if client.get_metric_history(found.info.run_id, EPOCH_METRIC)]


def project_processes(project: Path) -> list[str]:
    """DVC queue workers and experiment executors of the project still alive."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        cmdline = process.info["cmdline"] or []
        if (QUEUE_WORKER in cmdline or EXEC_RUN in cmdline) and str(project) in (process.info["cwd"] or ""):
            found.append(" ".join(cmdline))
    return found


def experiments(project: Path, env: dict[str, str]) -> list:
    return parse_exp_show(json.loads(run(["dvc", "exp", "show", "--json"], project, env=env).stdout))


def assert_stopped_cleanly(project: Path, env: dict[str, str], driver: subprocess.Popen, log: Path) -> None:
    """Exit 130 with what was finished and what not; no worker, no orphan, no temporary copy, and no
    experiment left running or half-done: the interrupted ones are removed, to run again."""
    assert driver.wait(timeout=300) == 130, log.read_text()[-3000:]
    out = log.read_text()
    assert "grid: interrupted. finished: none; stopped: " in out and "Traceback" not in out, out[-3000:]
    assert project_processes(project) == []
    assert not list((project / ".dvc" / "tmp" / "exps").glob("tmp*"))
    assert experiments(project, env) == []


@pytest.fixture(scope="module", params=["embedded", "server"])
def store(request: pytest.FixtureRequest, s3: S3Server,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str], MlflowClient]]:
    folder = tmp_path_factory.mktemp(request.param)
    project = copy_project(folder / "project", TINY_PARAMS | GATES | {"train.epochs": EPOCHS})
    (project / "grid.yaml").write_text(GRID)
    if request.param == "embedded":
        yield project, project_env(), MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
        return
    with mlflow_server(f"sqlite:///{folder}/mlflow.db", s3.endpoint, folder) as server:
        yield project, client_env(server.uri), MlflowClient(server.uri)


def test_ctrl_c_stops_the_queue_cleanly_and_the_next_run_completes_it(store, tmp_path: Path) -> None:
    project, env, client = store
    log = tmp_path / "grid.log"
    # Against the server, the driver starts with SIGINT ignored (a script's `python -m yolo_mlops.grid run &`,
    # then `kill -INT -<pgid>`): it still stops the grid, not only DVC's follower.
    driver = grid(project, env, log, sigint_ignored=client.tracking_uri.startswith("http"))
    lock = project / ".dvc" / "tmp" / "grid.lock"
    try:
        wait_for(lambda: (lock.is_file() and lock.read_text().strip() == str(driver.pid)) or driver.poll() is not None,
                 "the driver's lock", timeout=120)
        # A second driver while this one runs: one line with the first one's pid, nothing touched. (Asked before
        # the trainings start, so that the Ctrl-C below comes while both still train.)
        second = run(["python", "-m", "yolo_mlops.grid", "run"], project, env=env, check=False)
        assert second.returncode == 1 and second.stdout == ""
        assert second.stderr.strip() == (f"error: a grid is already running in {project} (pid {driver.pid}, lock "
                                          ".dvc/tmp/grid.lock); wait for it to end, or stop it with Ctrl-C. Nothing "
                                          "was queued or started.")
        wait_for(lambda: len(training_runs(client)) == 2 or driver.poll() is not None, "both experiments training",
                 timeout=600)
        assert driver.poll() is None, log.read_text()[-3000:]
        interrupted_runs = {found.info.run_id for found in training_runs(client)}
        os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C in the driver's terminal
        assert_stopped_cleanly(project, env, driver, log)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    for run_id in interrupted_runs:  # the attempts, with their epochs, ended KILLED
        assert client.get_run(run_id).info.status == "KILLED"

    again = run(["python", "-m", "yolo_mlops.grid", "run"], project, env=env, timeout=900)
    assert "grid: 2 experiment(s), 0 already run from commit" in again.stdout and "2 to queue" in again.stdout
    done = experiments(project, env)
    assert len(done) == 2 and all(experiment.done for experiment in done)
    runs = client.search_runs([client.get_experiment_by_name("cv_yolo_tiny").experiment_id])
    current = [found for found in runs if vocabulary.PREVIOUS_ATTEMPT_TAG not in found.data.tags]
    assert sorted(found.data.tags[vocabulary.EXP_NAME_TAG] for found in current) == sorted(e.name for e in done)
    assert all(found.info.status == "FINISHED" for found in current)
    previous = [found for found in runs if vocabulary.PREVIOUS_ATTEMPT_TAG in found.data.tags]
    assert {found.info.run_id for found in previous} == interrupted_runs
    assert all(found.info.status == "KILLED" for found in previous)
    # The points run again keep their names (named after their values): the attempts' runs carry them too.
    assert sorted(found.info.run_name for found in previous) == sorted(e.name for e in done)
    assert sorted(found.data.tags[vocabulary.EXP_NAME_TAG] for found in previous) == sorted(e.name for e in done)
    assert all(e.name.startswith(f"seed_{e.params['train.seed']}-") for e in done)

    # A run deleted in the MLflow UI: the comparison names its experiment, and how to restore it.
    deleted = current[0]
    client.delete_run(deleted.info.run_id)
    try:
        compared = run(["python", "-m", "yolo_mlops.grid", "compare"], project, env=env)
    finally:
        client.restore_run(deleted.info.run_id)
    assert (f"- experiment {deleted.data.tags[vocabulary.EXP_NAME_TAG]}: "
            f"its MLflow run {deleted.info.run_id} is deleted "
            f"in MLflow, and left out of the comparison; restore it with `mlflow runs restore --run-id "
            f"{deleted.info.run_id}`") in compared.stdout


@pytest.mark.parametrize("store", ["embedded"], indirect=True)  # the repair is DVC's side: one store is enough
def test_a_driver_killed_with_kill_9_leaves_a_lock_and_a_queue_the_next_run_repairs(store, tmp_path: Path) -> None:
    """`kill -9` of the driver and of DVC's whole queue (no chance to clean anything): the next run takes the
    lock over, repairs DVC's queue and runs what is missing."""
    project, env, client = store
    (project / "grid.yaml").write_text("train.seed: [3]\ntrain.epochs: [1]\n")  # killed once its epoch reached MLflow
    log = tmp_path / "grid.log"
    driver = grid(project, env, log)
    try:
        wait_for(lambda: training_runs(client) or driver.poll() is not None, "training", timeout=600)
        assert driver.poll() is None, log.read_text()[-3000:]
        for process in psutil.process_iter(["cmdline", "cwd"]):  # the queue's process groups, then the driver's
            if QUEUE_WORKER in (process.info["cmdline"] or []) and str(project) in (process.info["cwd"] or ""):
                os.killpg(os.getpgid(process.pid), signal.SIGKILL)
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    time.sleep(1)
    [stuck] = [e for e in experiments(project, env) if e.params["train.seed"] == 3]
    assert stuck.running and stuck.stale
    assert (project / ".dvc" / "tmp" / "grid.lock").read_text().strip() == str(driver.pid)

    again = run(["python", "-m", "yolo_mlops.grid", "run"], project, env=env, timeout=900)
    assert f"grid: taking over the lock of grid driver {driver.pid}" in again.stderr
    assert f"grid: repaired DVC's queue: {stuck.name} left running" in again.stderr
    assert "grid: 1 experiment(s), 0 already run from commit" in again.stdout and "1 to queue" in again.stdout
    assert not list((project / ".dvc" / "tmp" / "exps").glob("tmp*")) and project_processes(project) == []
    [done] = [e for e in experiments(project, env) if e.params["train.seed"] == 3]
    assert done.done and done.name == stuck.name  # the point run again keeps its name


@pytest.mark.parametrize("target", ["driver", "follower"])
def test_sigterm_to_the_driver_or_sigint_to_dvcs_follower_alone_stops_the_queue_too(target: str,
                                                                                      tmp_path: Path) -> None:
    """SIGTERM to the driver only (`kill <pid>`, a service manager), or SIGINT to DVC's `dvc exp run --run-all`
    only (which then stops following and exits 0, the queue running on): the queue's process groups get
    nothing from a terminal, and the driver stops them itself. The pipeline is cut to one stage that waits
    (committed), so that the test trains nothing."""
    project = copy_project(tmp_path / "project")
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"wait": {
        "cmd": "python -c 'import time; time.sleep(600)'", "params": ["train.seed"]}}}))
    (project / "dvc.lock").unlink()
    run(["git", "commit", "-qam", "one waiting stage"], project)
    run(["dvc", "exp", "run", "--queue", "-S", "train.seed=7"], project)
    log = tmp_path / "grid.log"
    with log.open("w") as sink:
        driver = subprocess.Popen(["python", "-m", "yolo_mlops.grid", "start", "--jobs", "1"], cwd=project,
                                  env=project_env(), stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def waiting() -> bool:
            return any("time.sleep(600)" in " ".join(process.info["cmdline"] or [])
                       for process in psutil.process_iter(["cmdline"])) or driver.poll() is not None

        wait_for(waiting, "the stage running", timeout=300)
        assert driver.poll() is None, log.read_text()[-3000:]
        if target == "driver":
            driver.send_signal(signal.SIGTERM)
        else:
            [follower] = [child for child in psutil.Process(driver.pid).children()
                          if "--run-all" in child.cmdline()]
            follower.send_signal(signal.SIGINT)
        assert_stopped_cleanly(project, project_env(), driver, log)
        stopped = "grid: dvc exp run --run-all stopped while DVC's queue still holds "
        assert (stopped in log.read_text()) == (target == "follower")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
