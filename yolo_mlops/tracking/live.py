"""Tracking while the stages run: the train stage sends each epoch to the experiment's MLflow run as
Ultralytics finishes it, beside MLflow's system metrics; the evaluate stage sends the model and its results.

The stage itself never imports MLflow nor waits for it. It starts a forwarder, a process of its own
(tracking/forwarder.py), and hands it jobs, one JSON line each, through a pipe: ["epochs", rows],
["model"], ["evaluation"], and ["status", "FAILED"] when the stage failed. The end of the pipe ends the
forwarder: after it has done its jobs, the run gets the status handed to it, or stays as it is for the
next stages (a stage that ended well, or was killed). Ultralytics trains on one core fewer than the
machine has, so the forwarder's import of MLflow, its store and its requests run beside the stage.

Best effort by design, like Ultralytics' own callbacks: tracking never stops a stage. A store that fails
or falls behind gets one warning, and from then on the log stage sends what did not arrive (nothing is
lost). benchmarks/live_tracking.py measures what this costs."""

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from yolo_mlops.core import vocabulary
from yolo_mlops.yolo.history import read_history

log = logging.getLogger(__name__)
FORWARDER = "yolo_mlops.tracking.forwarder"
CLOSE_TIMEOUT_S = 30.0  # the longest the end of a stage waits for the jobs still on their way
LATER = "the stage goes on, and the log stage sends what is missing"
# The forwarder's options, and its jobs (tracking/forwarder.py, JOBS).
NEW_ATTEMPT, SYSTEM_METRICS = "--new-attempt", "--system-metrics"
EPOCHS, MODEL, EVALUATION, STATUS = "epochs", "model", "evaluation", "status"


def warn(stage: str, reason: str) -> None:
    log.warning("warning: %s: MLflow: %s; %s", stage, reason, LATER)


class LiveRun:
    """The experiment's run while a stage works, through the stage's forwarder. `options`: NEW_ATTEMPT (train:
    a new run, earlier unfinished ones marked as its previous attempts; otherwise the run a stage opened
    before, or a new one), SYSTEM_METRICS (sampled while the stage runs)."""

    def __init__(self, stage: str, *options: str) -> None:
        self.stage, self.warned = stage, False
        try:
            self.forwarder: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-m", FORWARDER, stage, *options], stdin=subprocess.PIPE)
        except OSError as error:
            self.forwarder = None
            self.warn(f"its forwarder process did not start ({error})")
            return
        assert self.forwarder.stdin is not None
        self.pipe = self.forwarder.stdin.fileno()
        os.set_blocking(self.pipe, False)

    def warn(self, reason: str) -> None:
        """One warning per stage: the first failure stops live sending."""
        if not self.warned:
            self.warned = True
            warn(self.stage, reason)

    def submit(self, job: str, *values: Any) -> None:
        """Hand `job` to the forwarder; never blocks the stage (a full pipe means the store is behind)."""
        if self.forwarder is None or self.warned:
            return
        try:
            os.write(self.pipe, (json.dumps([job, *values]) + "\n").encode())
        except BlockingIOError:
            self.warn("the store is a pipe's worth of jobs behind")
        except BrokenPipeError:  # the forwarder ended early, and said why
            self.warned = True

    def close(self, status: str | None) -> None:
        """End the forwarder once its jobs are done (waiting at most CLOSE_TIMEOUT_S), the run ended with
        `status` (FAILED when the stage failed); None leaves it RUNNING for the next stages."""
        if self.forwarder is None:
            return
        with suppress(OSError):
            os.set_blocking(self.pipe, True)
            if status is not None:
                os.write(self.pipe, (json.dumps([STATUS, status]) + "\n").encode())
        with suppress(OSError):
            self.forwarder.stdin.close()  # type: ignore[union-attr]
        try:
            self.forwarder.wait(CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.warn(f"still busy after {CLOSE_TIMEOUT_S:.0f} s")
            self.forwarder.kill()
            self.forwarder.wait()


class EpochSender:
    """Ultralytics' `on_fit_epoch_end`: the epochs results.csv gained since the last call (the values DVC
    records; none for the final validation of best.pt), handed to the forwarder."""

    def __init__(self, run: LiveRun) -> None:
        self.run, self.sent = run, 0

    def __call__(self, trainer: Any) -> None:
        try:
            epochs = read_history(Path(trainer.csv))
            new = [(vocabulary.history_metric(name), value, step)
                   for step, epoch in enumerate(epochs[self.sent:], start=self.sent + 1)
                   for name, value in epoch.items()]
            self.sent = len(epochs)
            if new:
                self.run.submit(EPOCHS, new)
        except Exception as error:  # tracking never stops training
            self.run.warn(f"{type(error).__name__}: {error}")


@contextmanager
def tracked_training() -> Iterator[dict[str, Callable[[Any], None]]]:
    """A new attempt of the experiment's run while the train stage trains; yields Ultralytics' callbacks.
    The run ends KILLED on a Ctrl-C (SIGINT), FAILED if training raises (a `kill -9` leaves it RUNNING: the
    next attempt marks it)."""
    run = LiveRun(vocabulary.TRAIN, NEW_ATTEMPT, SYSTEM_METRICS)
    try:
        yield {"on_fit_epoch_end": EpochSender(run)}
    except KeyboardInterrupt:
        run.close("KILLED")
        raise
    except BaseException:
        run.close("FAILED")
        raise
    run.close(None)


@contextmanager
def tracked_evaluation() -> Iterator[None]:
    """The evaluate stage's run: the trained model (models/best.pt) is logged while the stage evaluates,
    and its metrics (metrics/eval.json) and plots are sent once the stage has written them."""
    run = LiveRun(vocabulary.EVALUATE)
    run.submit(MODEL)
    try:
        yield
    except BaseException:
        run.close(None)
        raise
    run.submit(EVALUATION)
    run.close(None)
