"""Tracking while the stages run: the train stage opens the experiment's MLflow run and sends each
epoch as Ultralytics finishes it, beside MLflow's system metrics; the evaluate stage adds its results.

Best effort by design, like Ultralytics' own callbacks: tracking never stops a stage and never makes
it wait. Epochs go through a bounded queue to a background thread; a store that fails or falls behind
gets one warning, and from then on the log stage sends what did not arrive (nothing is lost)."""

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from yolo_mlops.core import vocabulary as names
from yolo_mlops.core.params import Params
from yolo_mlops.core.paths import EVAL_METRICS_FILE
from yolo_mlops.tracking.record import EVALUATE_ARTIFACTS, run_header, stage_metrics
from yolo_mlops.tracking.run import find_run, is_complete, log_metrics, missing_metrics, now_ms, open_run, upload
from yolo_mlops.tracking.store import connect, experiment_id, public_uri
from yolo_mlops.yolo.history import read_history

log = logging.getLogger(__name__)
PENDING_BATCHES = 100  # epochs waiting for the store; more than that and the log stage sends the rest
CLOSE_TIMEOUT_S = 15.0  # the longest the end of training waits for epochs still on their way
SYSTEM_METRICS_INTERVAL_S = 5.0  # MLflow's default is 10 s; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides
LATER = "the stage goes on, and the log stage sends what is missing"


class Tracker:
    """The experiment's run while training: Ultralytics' `on_fit_epoch_end` hands each epoch's row of
    results.csv (the values DVC records) to a background sender, and MLflow samples the system."""

    def __init__(self, client: MlflowClient, run_id: str, uri: str) -> None:
        self.client, self.run_id = client, run_id
        self.sent_epochs = 0
        self.failed = threading.Event()
        self.pending: queue.Queue[list[Metric] | None] = queue.Queue(maxsize=PENDING_BATCHES)
        self.sender = threading.Thread(target=self._send, name="mlflow-live", daemon=True)
        self.sender.start()
        self.monitor = SystemMetricsMonitor(run_id, sampling_interval=SYSTEM_METRICS_INTERVAL_S, tracking_uri=uri)
        self.monitor.start()

    @property
    def callbacks(self) -> dict[str, Callable[[Any], None]]:
        """Ultralytics' events this tracker listens to."""
        return {"on_fit_epoch_end": self.on_fit_epoch_end}

    def warn(self, error: Exception | str) -> None:
        """One warning per run: the first failure stops live sending."""
        if not self.failed.is_set():
            self.failed.set()
            reason = f"{type(error).__name__}: {error}" if isinstance(error, Exception) else error
            log.warning("warning: MLflow run %s: live tracking stopped (%s); %s", self.run_id, reason, LATER)

    def on_fit_epoch_end(self, trainer: Any) -> None:
        """Queue the epochs results.csv gained since the last call (none for the final validation of best.pt)."""
        try:
            epochs = read_history(Path(trainer.csv))
            new = [Metric(names.history_metric(name), value, now_ms(), step)
                   for step, epoch in enumerate(epochs[self.sent_epochs:], start=self.sent_epochs + 1)
                   for name, value in epoch.items()]
            self.sent_epochs = len(epochs)
            if new and not self.failed.is_set():
                self.pending.put_nowait(new)
        except queue.Full:
            self.warn(f"the store is more than {PENDING_BATCHES} epochs behind")
        except Exception as error:  # tracking never stops training
            self.warn(error)

    def _send(self) -> None:
        while (batch := self.pending.get()) is not None:
            if self.failed.is_set():
                continue
            try:
                log_metrics(self.client, self.run_id, batch)
            except Exception as error:
                self.warn(error)

    def close(self, status: str | None) -> None:
        """Stop sampling, let the epochs on their way arrive (at most CLOSE_TIMEOUT_S), and end the run
        with `status` (FAILED when training failed); None leaves it RUNNING for the next stages."""
        self.monitor.finish()
        try:
            self.pending.put(None, timeout=CLOSE_TIMEOUT_S)
            self.sender.join(CLOSE_TIMEOUT_S)
        except queue.Full:
            pass
        if self.sender.is_alive():
            self.warn(f"epochs still unsent after {CLOSE_TIMEOUT_S:.0f} s")
        if status is not None:
            try:
                self.client.set_terminated(self.run_id, status)
            except Exception as error:
                self.warn(error)


def _experiment_run(params: Params, stage: str, new_attempt: bool) -> tuple[MlflowClient, str, str] | None:
    """(client, run id, store URI) of the experiment's run, opened now when `new_attempt` or when no stage
    opened it yet; None when the run is complete already (nothing to send) or the store cannot be used."""
    try:
        header = run_header(params)
        client, uri = connect()
        exp_id = experiment_id(client, params.mlflow.experiment_name)
        run = find_run(client, exp_id, header.fingerprint)
        if run is not None and is_complete(run):
            log.info("%s: MLflow run %s holds this experiment already; nothing to send", stage, run.info.run_id)
            return None
        run_id = open_run(client, exp_id, header) if run is None or new_attempt else run.info.run_id
    except Exception as error:  # the store, the server or the network: training does not depend on them
        log.warning("warning: %s: MLflow cannot be reached (%s); %s", stage, error, LATER)
        return None
    log.info("%s: tracking in MLflow run %s (%s) at %s", stage, run_id, header.run_name, public_uri(uri))
    return client, run_id, uri


@contextmanager
def tracked_training(params: Params) -> Iterator[Tracker | None]:
    """A new attempt of the experiment's run for the train stage; the run ends FAILED if training raises
    (a `kill -9` leaves it RUNNING: the next attempt marks it). None: train without live tracking."""
    opened = _experiment_run(params, "train", new_attempt=True)
    tracker = Tracker(*opened) if opened else None
    try:
        yield tracker
    except BaseException:
        if tracker is not None:
            tracker.close("FAILED")
        raise
    if tracker is not None:
        tracker.close(None)


def send_evaluation(params: Params) -> None:
    """The evaluate stage's metrics (metrics/eval.json) and plots, to the experiment's run."""
    opened = _experiment_run(params, "evaluate", new_attempt=False)
    if opened is None:
        return
    client, run_id, _ = opened
    try:
        run = client.get_run(run_id)
        metrics = stage_metrics(names.EVALUATE, EVAL_METRICS_FILE)
        log_metrics(client, run_id, missing_metrics(client, run, [(name, value, 0) for name, value in metrics.items()]))
        upload(client, run_id, EVALUATE_ARTIFACTS)
    except Exception as error:
        log.warning("warning: evaluate: sending to MLflow run %s failed (%s); %s", run_id, error, LATER)
