"""DVC's queue workers while the grid runs (`WorkerWatch`): a worker that dies while experiments are waiting is
reported in one line with its log's last error, the experiment it ran is run again, and another worker is
started, so that the grid keeps its `--jobs`. When none can be started the grid stops with an error instead of
waiting for a queue nobody runs.

Why workers die: DVC's queue is Celery on kombu's filesystem transport, which passes messages as files. A
worker can read a message file before its writer has finished it; kombu then raises JSONDecodeError and the
worker's consumer ends ("Unrecoverable error"), the worker with it (dvc-task issue 73; DVC PR 7903's
discussion). More workers, more such races."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.git import show
from yolo_mlops.core.paths import DVC_QUEUE_DIR, DVC_TMP_DIR, PARAMS_FILE
from yolo_mlops.core.vocabulary import flatten
from yolo_mlops.grid import experiments, points
from yolo_mlops.grid.experiments import EXEC_RUN, QUEUE_WORKER, DvcExperiment

CHECK_INTERVAL_S = 1.0  # how often the workers are looked for
STATUS_WAIT_S = 2.0  # how long dvc-task's process that started a worker may take to record its exit status
STOP_WAIT_S = 10.0  # how long a dead worker's experiment may take to stop on SIGINT, before it is killed
START_WAIT_S = 30.0  # how long a started worker may take to appear
START_ATTEMPTS = 3  # replacements tried in a row before the grid gives up on a worker
# "[...: CRITICAL/MainProcess] ...", "KeyError: ..."
LOG_ERROR = re.compile(r"\b(CRITICAL|ERROR)/|^\w*(Error|Exception)\b")
LINE_CHARS = 300  # the longest log line quoted


@dataclass(frozen=True)
class Worker:
    """A queue worker as first seen alive: its process, its number k (`dvc-exp-worker-<k>`), and its process
    group, which the experiment it runs (`dvc exp exec-run` and the stage) shares."""

    process: psutil.Process
    number: str
    group: int
    offset: int  # the size of its log when first seen: what it writes comes after

    def cause(self, root: Path, status: int | None) -> str:
        """Why it ended: its log's last error since it was first seen, else how it ended."""
        error = last_error(self.log(root), self.offset)
        return error or f"{ending(status)}, no error in {self.log(root).name}"

    @property
    def name(self) -> str:
        return f"dvc-exp-worker-{self.number}"

    def log(self, root: Path) -> Path:
        return worker_log(root, self.number)


def worker_log(root: Path, number: str) -> Path:
    """The log of the queue workers of a number (dvc-task appends each one's output to it)."""
    return root / DVC_QUEUE_DIR / f"dvc-exp-worker-{number}.out"


def worker_number(cmdline: list[str]) -> str:
    """k of a worker's node name, `dvc exp queue-worker dvc-exp-<hash>-<k>@localhost`."""
    node = cmdline[cmdline.index(QUEUE_WORKER) + 1] if cmdline.index(QUEUE_WORKER) + 1 < len(cmdline) else ""
    return node.partition("@")[0].rsplit("-", 1)[-1] or "?"


def last_error(log: Path, offset: int = 0) -> str | None:
    """The last error a worker's log holds after `offset` (Celery's CRITICAL and ERROR lines, Python's
    exceptions), if any."""
    try:
        with log.open("rb") as stream:
            stream.seek(offset)
            text = stream.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    errors = [line.strip() for line in text.splitlines() if LOG_ERROR.search(line.strip())]
    return None if not errors else errors[-1] if len(errors[-1]) <= LINE_CHARS else errors[-1][:LINE_CHARS] + "..."


def ending(status: int | None) -> str:
    """How a process ended, from its exit status."""
    if status is None:
        return "exit status unknown"
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-status).name}"
    return f"exit status {status}"


def exit_status(root: Path, worker: Worker) -> int | None:
    """A worker's exit status, as dvc-task's process that started it records it (dvc-exp-worker-<k>.json); None
    when not recorded in time (that process died too)."""
    info = root / DVC_QUEUE_DIR / f"{worker.name}.json"
    deadline = time.monotonic() + STATUS_WAIT_S
    while True:
        with contextlib.suppress(OSError, ValueError):
            recorded = json.loads(info.read_text())
            if recorded.get("pid") == worker.process.pid and recorded.get("returncode") is not None:
                return recorded["returncode"]
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def group_members(group: int) -> list[psutil.Process]:
    """The processes alive in a process group."""
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == group:
                members.append(process)
    return members


def stop_group(group: int, timeout: float = STOP_WAIT_S) -> None:
    """SIGINT to a process group, as Ctrl-C (a stage ends its MLflow run KILLED), then SIGKILL to what is left.
    Never this process's own group."""
    if group == os.getpgrp():
        return
    members = group_members(group)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGINT)
    _, alive = psutil.wait_procs(members, timeout=timeout)
    if alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=timeout)


def running_experiment(process: psutil.Process) -> tuple[str, str] | None:
    """The experiment a `dvc exp exec-run --infofile <file>` process runs: its name and temporary copy, from
    DVC's executor info file (JSON)."""
    cmdline = _cmdline(process)
    with contextlib.suppress(ValueError, IndexError, OSError, KeyError, TypeError):
        info = json.loads(Path(cmdline[cmdline.index("--infofile") + 1]).read_text())
        if info.get("name"):
            return info["name"], info["root_dir"]
    return None


def point_args(root: Path, experiment: DvcExperiment) -> list[str]:
    """The -S arguments that queue the experiment again: its params that differ from its baseline's."""
    baseline = flatten(yaml.safe_load(show(root, experiment.baseline_rev, PARAMS_FILE) or "") or {})
    return points.set_args({key: value for key, value in experiment.params.items() if baseline.get(key) != value})


class WorkerWatch:
    """Watches the queue workers of `root` started since `since` while DVC's queue runs `jobs` at once. `check`,
    called often, looks every CHECK_INTERVAL_S; `start_command` starts the missing workers (DVC's `dvc queue
    start -j <jobs>` starts those of the numbers 1..jobs that are not running)."""

    def __init__(self, root: Path, jobs: int, since: float, start_command: list[str] | None = None) -> None:
        self.root, self.jobs, self.since = root, jobs, since
        self.start_command = start_command or ["dvc", "queue", "start", "--jobs", str(jobs)]
        self.known: dict[int, Worker] = {}
        self.lost: dict[str, str] = {}  # experiments of dead workers, to run again (`rerun`): name → temporary copy
        self.died = False  # a worker died since the last `rerun`
        self.last_check = 0.0

    def alive(self) -> dict[int, psutil.Process]:
        return {process.pid: process for process in experiments.queue_workers(self.root, self.since)}

    def check(self) -> Iterator[str]:
        """Lines to print: one for each worker that died while experiments wait (its replacement follows)."""
        if time.monotonic() - self.last_check < CHECK_INTERVAL_S:
            return
        alive = self.alive()
        for pid, process in alive.items():
            if pid not in self.known:
                with contextlib.suppress(psutil.Error, ProcessLookupError, ValueError):
                    number = worker_number(process.cmdline())
                    log = worker_log(self.root, number)
                    size = log.stat().st_size if log.exists() else 0
                    self.known[pid] = Worker(process, number, os.getpgid(pid), size)
        dead = [self.known.pop(pid) for pid in list(self.known) if pid not in alive]
        for worker in dead:
            yield from self.replace(worker)
        self.last_check = time.monotonic()

    def replace(self, worker: Worker) -> Iterator[str]:
        """A worker that ended while DVC's `--run-all` still waits for experiments: nothing when it exited cleanly
        (DVC's idle timeout); else the line, another worker started, its experiment stopped and marked failed
        (`lose`)."""
        status = exit_status(self.root, worker)
        if status == 0:
            return
        orphans = [process for process in group_members(worker.group) if EXEC_RUN in _cmdline(process)]
        lost = dict(filter(None, (running_experiment(process) for process in orphans)))
        again = f"; its experiment {', '.join(lost)} runs again" if lost else ""
        self.died = True
        yield (f"grid: DVC queue worker {worker.name} died ({worker.cause(self.root, status)}){again}; "
               f"starting another to keep --jobs {self.jobs}\n")
        yield from self.start(worker, status)
        stop_group(worker.group)
        self.lose(lost)

    def lose(self, lost: dict[str, str]) -> None:
        """The dead worker's experiments (name → temporary copy), their processes stopped: DVC marks them failed
        (`dvc queue kill`: their process is gone, and no worker will collect them), so that DVC's `--run-all` goes
        on to the next (or stops: DVC 3.67 can fail on a task marked so while it waits for it). They run again
        after it (`rerun`)."""
        if lost:
            with contextlib.suppress(PipelineError):
                experiments.dvc(self.root, "queue", "kill", *lost)
            self.lost |= lost

    def rerun(self) -> list[str] | None:
        """Once DVC's `--run-all` has ended: None when no worker died since the last call; else the experiments of
        dead workers removed (`experiments.repair_queue`), their temporary copies deleted, and queued again under
        their names, for another `--run-all`. Returns their names."""
        if not self.died:
            return None
        lost, self.lost, self.died = self.lost, {}, False
        if lost:
            experiments.record_stopping(self.root, list(lost))
            listed = experiments.list_experiments(self.root)
            experiments.repair_queue(self.root, listed)
            again = [experiment for experiment in listed if experiment.name in lost]
            for experiment in again:
                if Path(lost[experiment.name]).is_relative_to(self.root / DVC_TMP_DIR):
                    shutil.rmtree(lost[experiment.name], ignore_errors=True)
            list(experiments.queue_all(self.root, [(experiment.name, point_args(self.root, experiment))
                                                   for experiment in again]))  # DVC's output not shown
        return list(lost)

    def start(self, dead: Worker, status: int | None) -> Iterator[str]:
        """Start the missing workers, START_ATTEMPTS times at most. With none alive after that, a PipelineError."""
        reason = ""
        for _ in range(START_ATTEMPTS):
            before = set(self.alive())
            # Its output to a file, not a pipe: the worker it starts inherits it, and would hold a pipe open.
            with tempfile.TemporaryFile("w+") as output:
                started = subprocess.run(self.start_command, cwd=self.root, stdout=output, stderr=subprocess.STDOUT)
                output.seek(0)
                said = output.read().strip().splitlines()
            if started.returncode != 0:
                reason = f"`{' '.join(self.start_command)}` exited with {started.returncode}" + (
                    f": {said[-1]}" if said else "")
                continue
            deadline = time.monotonic() + START_WAIT_S
            while time.monotonic() < deadline:
                if set(self.alive()) - before:
                    return
                time.sleep(CHECK_INTERVAL_S / 4)
            reason = f"no worker appeared within {START_WAIT_S:g} s of `{' '.join(self.start_command)}`"
        if not self.alive():
            raise PipelineError(
                f"DVC's queue has no worker left: {dead.name} died ({dead.cause(self.root, status)}) and "
                f"{START_ATTEMPTS} attempts to start another failed ({reason}); see {dead.log(self.root)}. "
                "The experiments still queued wait in DVC's queue: run the same command again to run them")
        yield (f"grid: could not start another DVC queue worker ({reason}); the grid goes on with "
               f"{len(self.alive())} worker(s)\n")


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []
