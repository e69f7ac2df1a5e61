"""A DVC queue worker that dies mid-grid (`kill -9`, as kombu's filesystem race ends one): the grid says so in one
line with the worker log's last error, starts another so that it keeps its --jobs, and runs the dead worker's
experiment again, each experiment ending with one FINISHED MLflow run. When no worker can be started, the grid
stops with an error instead of waiting."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow import MlflowClient

from tests.conftest import TINY_PARAMS, copy_project, needs_coco128, project_env, run
from tests.stack import wait_for
from tests.test_grid_interrupt import GATES, experiments, grid, project_processes
from yolo_mlops.core import vocabulary
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.paths import DVC_QUEUE_DIR
from yolo_mlops.grid.experiments import EXEC_RUN, QUEUE_WORKER, queue_workers
from yolo_mlops.grid.workers import WorkerWatch, worker_number

RACE_ERROR = ("[2026-11-30 10:12:01,442: CRITICAL/MainProcess] Unrecoverable error: "
              "JSONDecodeError('Expecting value: line 1 column 1 (char 0)')")
NOTICE_S = 15  # the longest the grid may take to report a dead worker


def fake_worker(project: Path, number: int) -> subprocess.Popen:
    """A process that DVC's queue would take for a worker (`dvc exp queue-worker <node>` in its command line, in
    the project, in a process group of its own), doing nothing."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "queue-worker",
                             f"dvc-exp-abc123-{number}@localhost"], cwd=project, start_new_session=True)


def replacement(project: Path, dead: psutil.Process, number: str) -> bool:
    """Whether a worker of the dead one's number runs again."""
    for worker in queue_workers(project):
        with contextlib.suppress(psutil.Error):
            if worker.pid != dead.pid and worker_number(worker.cmdline()) == number:
                return True
    return False


def watched(watch: WorkerWatch) -> list[str]:
    time.sleep(1.1)  # the watch looks once a second
    return list(watch.check())


def test_no_worker_can_be_started_stops_the_grid_with_an_error(tmp_path: Path) -> None:
    """A worker dies while an experiment waits and the replacements fail: the line, then a PipelineError naming
    the log, within seconds."""
    project = copy_project(tmp_path / "project")
    run(["dvc", "exp", "run", "--queue", "-S", "train.seed=7"], project)
    log = project / DVC_QUEUE_DIR / "dvc-exp-worker-2.out"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"{RACE_ERROR.replace('10:12:01', '09:00:00')} (an earlier worker of that number)\n")
    since = time.time() - 1
    worker = fake_worker(project, 2)
    try:
        watch = WorkerWatch(project, 2, since, start_command=["false"])
        assert watched(watch) == []
        with log.open("a") as sink:  # what the worker wrote before it died
            sink.write(f"[2026-11-30 10:11:58,001: INFO/MainProcess] Connected to filesystem://localhost//\n"
                       f"{RACE_ERROR}\nTraceback (most recent call last):\n  ...\n")
        worker.kill()
        worker.wait()
        lines = []
        started = time.monotonic()
        time.sleep(1.1)
        with pytest.raises(PipelineError) as raised:
            for line in watch.check():  # its line, then the error
                lines.append(line)
        assert time.monotonic() - started < NOTICE_S
    finally:
        worker.kill()
    assert lines == [f"grid: DVC queue worker dvc-exp-worker-2 died ({RACE_ERROR}); starting another to keep "
                     "--jobs 2\n"]
    message = str(raised.value)
    assert message.startswith("DVC's queue has no worker left: dvc-exp-worker-2 died (") and str(log) in message
    assert "3 attempts to start another failed (`false` exited with 1)" in message


def test_a_worker_that_exits_cleanly_is_not_replaced(tmp_path: Path) -> None:
    """A worker that ends with status 0 (DVC's idle timeout once the queue is empty) is no death."""
    project = copy_project(tmp_path / "project")
    run(["dvc", "exp", "run", "--queue", "-S", "train.seed=7"], project)
    since = time.time() - 1
    worker = fake_worker(project, 1)
    watch = WorkerWatch(project, 1, since, start_command=["false"])
    assert watched(watch) == []
    worker.kill()
    worker.wait()
    info = project / DVC_QUEUE_DIR / "dvc-exp-worker-1.json"  # as dvc-task records a worker's exit
    info.parent.mkdir(parents=True, exist_ok=True)
    info.write_text(json.dumps({"pid": worker.pid, "returncode": 0}))
    assert watched(watch) == []


@needs_coco128
@pytest.mark.e2e
def test_a_worker_killed_mid_grid_is_reported_and_replaced(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project", TINY_PARAMS | GATES)
    (project / "grid.yaml").write_text("train.seed: [1, 2, 3]\n")
    env, client = project_env(), MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    log = tmp_path / "grid.log"
    driver = grid(project, env, log)

    def busy_worker() -> psutil.Process | None:
        for worker in queue_workers(project):
            try:
                if any(EXEC_RUN in child.cmdline() for child in worker.children()):
                    return worker
            except psutil.Error:
                continue
        return None

    try:
        wait_for(lambda: busy_worker() is not None or driver.poll() is not None, "an experiment running", timeout=300)
        assert driver.poll() is None, log.read_text()[-3000:]
        victim = busy_worker()
        assert victim is not None
        number = worker_number(victim.cmdline())
        os.kill(victim.pid, signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: "grid: DVC queue worker" in log.read_text() or driver.poll() is not None, "the report",
                 timeout=NOTICE_S)
        noticed = time.monotonic() - killed
        wait_for(lambda: replacement(project, victim, number) or driver.poll() is not None, "a replacement worker",
                 timeout=60)
        replaced = driver.poll() is None
        assert driver.wait(timeout=600) == 0, log.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        for process in psutil.process_iter(["cmdline", "cwd"]):  # the queue's process groups are their own
            if (QUEUE_WORKER in (process.info["cmdline"] or []) or EXEC_RUN in (process.info["cmdline"] or [])) \
                    and str(project) in (process.info["cwd"] or ""):
                with contextlib.suppress(OSError):
                    os.killpg(os.getpgid(process.pid), signal.SIGKILL)
    out = log.read_text()
    [line] = [line for line in out.splitlines() if line.startswith("grid: DVC queue worker")]
    assert line.startswith(f"grid: DVC queue worker dvc-exp-worker-{number} died (") and noticed < NOTICE_S
    assert line.endswith("runs again; starting another to keep --jobs 2") and replaced, out[-4000:]
    assert "grid: dvc exp run --run-all again, for what a dead queue worker left (queued again: " in out
    done = experiments(project, env)
    assert len(done) == 3 and all(experiment.done for experiment in done)
    runs = client.search_runs([client.get_experiment_by_name("cv_yolo_tiny").experiment_id])
    finished = sorted(found.data.tags[vocabulary.EXP_NAME_TAG] for found in runs if found.info.status == "FINISHED")
    assert finished == sorted(experiment.name for experiment in done)  # exactly one FINISHED run each
    assert project_processes(project) == [] and not list((project / ".dvc" / "tmp" / "exps").glob("tmp*"))
