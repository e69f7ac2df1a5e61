"""Tracking while the stages run: the train stage opens the experiment's MLflow run and sends each
epoch as Ultralytics finishes it, beside MLflow's system metrics; the evaluate stage adds its results.

Best effort by design, like Ultralytics' own callbacks: tracking never stops a stage. The run is opened
before the stage works (a tracking server that does not answer is given up within seconds); then a
background thread sends what the stage hands it, through a bounded queue, so the stage never waits
for the store. A store that fails or falls behind gets one warning, and from then on the log stage
sends what did not arrive (nothing is lost). benchmarks/live_tracking.py measures what this costs."""

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from yolo_mlops.core import vocabulary as names
from yolo_mlops.core.params import Params
from yolo_mlops.core.paths import EVAL_METRICS_FILE
from yolo_mlops.tracking.record import EVALUATE_ARTIFACTS, run_header, stage_metrics
from yolo_mlops.yolo.history import read_history

log = logging.getLogger(__name__)
PENDING_JOBS = 100  # epochs waiting for the store; more than that and the log stage sends the rest
CLOSE_TIMEOUT_S = 30.0  # the longest the end of a stage waits for the jobs still on their way
SYSTEM_METRICS_INTERVAL_S = 5.0  # MLflow's default is 10 s; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides
LATER = "the stage goes on, and the log stage sends what is missing"
Job = Callable[[Any, str], None]  # (MlflowClient, run id) → None, run on the background thread


class LiveRun:
    """The experiment's run while a stage works. `new_attempt` (train): a new run, earlier unfinished ones
    marked as its previous attempts; otherwise the run a stage opened before, or a new one. Nothing is
    sent to a run that is complete already (`dvc repro --force` of a logged experiment)."""

    def __init__(self, params: Params, stage: str, new_attempt: bool, system_metrics: bool = False) -> None:
        self.params, self.stage, self.new_attempt, self.system_metrics = params, stage, new_attempt, system_metrics
        self.status: str | None = None
        self.failed = threading.Event()
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=PENDING_JOBS)
        try:
            self.opened = self._open()
        except Exception as error:  # the store, the server or the network: the stage does not depend on them
            self.warn(f"cannot be reached ({error})")
            self.opened = None
        self.thread = threading.Thread(target=self._work, name=f"mlflow-{stage}", daemon=True)
        self.thread.start()

    def warn(self, error: Exception | str) -> None:
        """One warning per stage: the first failure stops live sending."""
        if not self.failed.is_set():
            self.failed.set()
            reason = f"{type(error).__name__}: {error}" if isinstance(error, Exception) else error
            log.warning("warning: %s: MLflow: %s; %s", self.stage, reason, LATER)

    def submit(self, job: Job) -> None:
        """Run `job` on the background thread (never blocks the stage)."""
        if self.opened is None or self.failed.is_set():
            return
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            self.warn(f"the store is more than {PENDING_JOBS} epochs behind")

    def close(self, status: str | None) -> None:
        """Let the jobs finish (at most CLOSE_TIMEOUT_S), then stop sampling and end the run with `status`
        (FAILED when the stage failed); None leaves it RUNNING for the next stages."""
        self.status = status
        try:
            self.jobs.put(None, timeout=CLOSE_TIMEOUT_S)
            self.thread.join(CLOSE_TIMEOUT_S)
        except queue.Full:
            pass
        if self.thread.is_alive():
            self.warn(f"still busy after {CLOSE_TIMEOUT_S:.0f} s")

    def _open(self) -> tuple[Any, str, str] | None:
        """(client, run id, store URI), or None when there is nothing to send. MLflow is imported here: a stage
        that tracks nothing does not pay for it."""
        from yolo_mlops.tracking.run import find_run, is_complete, open_run
        from yolo_mlops.tracking.store import connect, experiment_id, public_uri

        header = run_header(self.params)
        client, uri = connect()
        exp_id = experiment_id(client, self.params.mlflow.experiment_name)
        run = find_run(client, exp_id, header.fingerprint)
        if run is not None and is_complete(run):
            log.info("%s: MLflow run %s holds this experiment already; nothing to send", self.stage,
                     run.info.run_id)
            return None
        run_id = open_run(client, exp_id, header) if run is None or self.new_attempt else run.info.run_id
        log.info("%s: tracking in MLflow run %s (%s) at %s", self.stage, run_id, header.run_name, public_uri(uri))
        return client, run_id, uri

    def _work(self) -> None:
        opened, monitor = self.opened, None
        if opened is not None and self.system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(opened[1], sampling_interval=SYSTEM_METRICS_INTERVAL_S,
                                           tracking_uri=opened[2])
            monitor.start()
        while (job := self.jobs.get()) is not None:
            if opened is None or self.failed.is_set():
                continue
            try:
                job(opened[0], opened[1])
            except Exception as error:
                self.warn(error)
        if monitor is not None:
            monitor.finish()
        if opened is not None and self.status is not None:
            try:
                opened[0].set_terminated(opened[1], self.status)
            except Exception as error:
                self.warn(error)


class EpochSender:
    """Ultralytics' `on_fit_epoch_end`: the epochs results.csv gained since the last call (the values DVC
    records; none for the final validation of best.pt), handed to the run's background thread."""

    def __init__(self, run: LiveRun) -> None:
        self.run, self.sent = run, 0

    def __call__(self, trainer: Any) -> None:
        try:
            epochs = read_history(Path(trainer.csv))
            new = [(names.history_metric(name), value, step)
                   for step, epoch in enumerate(epochs[self.sent:], start=self.sent + 1)
                   for name, value in epoch.items()]
            self.sent = len(epochs)
            if new:
                self.run.submit(lambda client, run_id: _log(client, run_id, new))
        except Exception as error:  # tracking never stops training
            self.run.warn(error)


def _log(client: Any, run_id: str, metrics: list[tuple[str, float, int]]) -> None:
    from yolo_mlops.tracking.run import log_metrics, metric_points

    log_metrics(client, run_id, metric_points(metrics))


@contextmanager
def tracked_training(params: Params) -> Iterator[dict[str, Callable[[Any], None]]]:
    """A new attempt of the experiment's run while the train stage trains; yields Ultralytics' callbacks.
    The run ends FAILED if training raises (a `kill -9` leaves it RUNNING: the next attempt marks it)."""
    run = LiveRun(params, "train", new_attempt=True, system_metrics=True)
    try:
        yield {"on_fit_epoch_end": EpochSender(run)}
    except BaseException:
        run.close("FAILED")
        raise
    run.close(None)


@contextmanager
def tracked_evaluation(params: Params) -> Iterator[None]:
    """The evaluate stage's metrics (metrics/eval.json) and plots, sent to the experiment's run once the
    stage has written them; the run is opened while the stage evaluates."""
    run = LiveRun(params, "evaluate", new_attempt=False)
    try:
        yield
    except BaseException:
        run.close(None)
        raise
    run.submit(_send_evaluation)
    run.close(None)


def _send_evaluation(client: Any, run_id: str) -> None:
    from yolo_mlops.tracking.run import log_metrics, missing_metrics, upload

    metrics = stage_metrics(names.EVALUATE, EVAL_METRICS_FILE)
    wanted = [(name, value, 0) for name, value in metrics.items()]
    log_metrics(client, run_id, missing_metrics(client, client.get_run(run_id), wanted))
    upload(client, run_id, EVALUATE_ARTIFACTS)
