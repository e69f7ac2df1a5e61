"""The grid on DVC's side: queue experiments (`dvc exp run --queue -S ...`), run DVC's queue, read
the experiments back from `dvc exp show --json`, and what a failed one logged."""

import contextlib
import importlib.metadata
import io
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import yaml

from yolo_mlops.core.atomic import write_json
from yolo_mlops.core.entry import ERROR_PREFIX
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.git import git, show, show_many
from yolo_mlops.core.params import PIPELINE_SECTIONS, read_yaml
from yolo_mlops.core.paths import (
    DVC_CONFIG,
    DVC_PLOTS_STAMP,
    DVC_TMP_DIR,
    DVC_YAML,
    EVAL_METRICS_FILE,
    GRID_STOPPING,
    MLFLOW_RUN_FILE,
    PARAMS_FILE,
)
from yolo_mlops.core.tools import run_tool
from yolo_mlops.core.vocabulary import RUN_LINK_ID, flatten, numbers
from yolo_mlops.data.source import sha256_of

if TYPE_CHECKING:
    from yolo_mlops.grid.workers import WorkerWatch

# DVC has no machine-readable form of two outputs the grid needs, so it reads their text, here only:
# the start of each experiment in the queue's output (this line, `run_queue`), and a failed
# experiment's log (`dvc queue logs`, `failure_reason`). Everything else comes from `--json`.
PROGRESS_MARK = "Reproducing experiment '"
OUTPUT_POLL_S = 0.2  # how often the output of DVC's queue is read
OUTPUT_WAIT_S = 10  # how long DVC's command may take to end once the grid stops following the queue
QUEUE_WORKER = "queue-worker"  # in the command line of a DVC queue worker: dvc exp queue-worker <node>
EXEC_RUN = "exec-run"  # in the command line of a running queued experiment: dvc exp exec-run --infofile ...
STOP_TIMEOUT_S = 120  # the longest an interrupted experiment may take to stop, before it is killed


@dataclass(frozen=True)
class DvcExperiment:
    """One experiment of `dvc exp show`: params.yaml as flat `section.key` values, eval metrics as `split.metric`."""

    name: str
    rev: str
    baseline_rev: str
    params: dict[str, Any]
    metrics: dict[str, float]
    failed: bool
    queued: bool = False  # waiting in DVC's queue (or running): no results yet
    error: str | None = None  # why it failed, when known without `dvc queue logs` (a point run on Ray)
    running: bool = False  # started by a queue worker, not finished
    pid: int | None = None  # a running experiment's `dvc exp exec-run` process, as DVC recorded it
    copy: str | None = None  # a running experiment's temporary copy of the repo (.dvc/tmp/exps/tmp...)

    @property
    def done(self) -> bool:
        """Finished with results (not failed, not waiting, not running)."""
        return not self.failed and not self.queued

    @property
    def stale(self) -> bool:
        """Running for DVC, but its process is gone (its worker was killed): DVC never collects it."""
        if not self.running:
            return False
        try:
            return self.pid is None or EXEC_RUN not in psutil.Process(self.pid).cmdline()
        except psutil.Error:
            return True


def dvc(root: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """`dvc <args>` in `root`: its standard output, or a PipelineError with DVC's message."""
    return run_tool(root, "dvc", *args, env=env)


def stage_code(root: Path) -> list[str]:
    """What the stages run: dvc.yaml, DVC's config and every dependency of a stage in dvc.yaml that no
    stage produces (code and packages; data made by the pipeline is not code)."""
    stages = (read_yaml(root / DVC_YAML) or {}).get("stages", {})
    outputs = {str(next(iter(out)) if isinstance(out, dict) else out)
               for stage in stages.values() for kind in ("outs", "metrics", "plots") for out in stage.get(kind, [])}
    deps = {dep for stage in stages.values() for dep in stage.get("deps", [])}
    return [str(DVC_YAML), str(DVC_CONFIG), *sorted(dep for dep in deps if dep not in outputs
                                                    and not any(dep.startswith(f"{out}/") for out in outputs))]


def pipeline_changes(root: Path) -> list[str]:
    """Uncommitted changes that DVC's queue would silently leave out: what the stages run (dvc.yaml and
    its code dependencies) and the pipeline sections of params.yaml (compare / promote are read from the
    working tree)."""
    git(root, "rev-parse", "--verify", "HEAD")
    status = git(root, "status", "--porcelain", "--untracked-files=all", "--", *stage_code(root))
    changed = sorted({line[3:].strip() for line in status.splitlines() if line.strip()})
    committed = yaml.safe_load(show(root, "HEAD", PARAMS_FILE) or "") or {}
    current = read_yaml(root / PARAMS_FILE) or {}
    changed += [f"{PARAMS_FILE} ({section})" for section in PIPELINE_SECTIONS
                if committed.get(section) != current.get(section)]
    return changed


def refuse_uncommitted(root: Path) -> None:
    changed = pipeline_changes(root)
    if changed:
        raise PipelineError(
            "uncommitted pipeline changes: " + ", ".join(changed) + ". Every experiment records the last "
            "git commit as its code (DVC baseline, git.commit) and DVC's queue leaves new files out, so these "
            "changes would run unrecorded or not at all. Commit them (git add ... && git commit) "
            "or stash them (git stash), then queue again. Nothing was queued."
        )


def parse_exp_show(entries: list[dict[str, Any]]) -> list[DvcExperiment]:
    """The experiments of `dvc exp show --json` (baselines and the workspace are not experiments)."""
    experiments = []
    for baseline in entries:
        for experiment in baseline.get("experiments") or []:
            revision = experiment["revs"][0]
            data = revision.get("data") or {}
            params = data.get("params", {}).get(str(PARAMS_FILE), {}).get("data", {})
            metrics = data.get("metrics", {}).get(str(EVAL_METRICS_FILE), {}).get("data", {})
            executor = experiment.get("executor") or revision.get("executor") or {}
            state, local = executor.get("state"), executor.get("local") or {}
            experiments.append(DvcExperiment(
                name=revision.get("name") or experiment.get("name") or revision["rev"][:7],
                rev=revision["rev"],
                baseline_rev=baseline["rev"],
                params=flatten(params),
                metrics=numbers(flatten(metrics)),
                failed=revision.get("error") is not None or state == "failed",
                queued=state in ("queued", "running"),
                running=state == "running",
                pid=local.get("pid") if state == "running" else None,
                copy=local.get("root") if state == "running" else None,
            ))
    return experiments


def list_experiments(root: Path) -> list[DvcExperiment]:
    """The experiments DVC holds for the current commit, queued ones included (`dvc exp show --json`)."""
    return parse_exp_show(json.loads(dvc(root, "exp", "show", "--json")))


def queue_all(root: Path, entries: list[tuple[str, list[str]]]) -> Iterator[tuple[list[str], str]]:
    """`dvc exp run --queue --name <name> <set_args>` for each (name, set_args), through DVC's Python API in this
    one process (`Repo.experiments.run(queue=True)`, what that command calls), instead of one `dvc` process each:
    yields the equivalent command and DVC's output as each is queued. A PipelineError with DVC's message
    when DVC refuses one (those before it stay queued)."""
    from dvc.exceptions import DvcException  # DVC's Python API: imported on this path only
    from dvc.repo import Repo
    from dvc.ui import ui

    if not entries:
        return
    ui.enable()  # DVC's messages, written to this process's stdout as its command line writes them
    with contextlib.chdir(root), Repo(str(root)) as repo:  # as `dvc` runs: parts of DVC's API read the cwd
        for name, set_args in entries:
            command = ["dvc", "exp", "run", "--queue", "--name", name, *set_args]
            output = io.StringIO()
            try:
                with contextlib.redirect_stdout(output):
                    repo.experiments.run(name=name, queue=True, params=set_args[1::2])
            except DvcException as error:
                raise PipelineError(f"{' '.join(command)} failed in {root}: {error}") from None
            yield command, output.getvalue()


def run_queue(root: Path, total: int, jobs: int, watch: "WorkerWatch | None" = None) -> Iterator[str]:
    """Run the queued experiments with DVC's queue (`dvc exp run --run-all --jobs <jobs>`: that many queue
    workers at once), yielding its output line by line, each experiment's start marked [k/total]. DVC
    replays each experiment's log in queue order. A failed experiment does not stop the others.

    DVC's output goes through a file, read until DVC's command ends: a queue worker that outlives it
    (with several workers, dvc-task's worker can miss its shutdown) keeps the file open, not the grid,
    and is stopped then (`stop_leftover_workers`). `watch` (grid/workers.py) looks at the workers meanwhile;
    after a worker died, DVC's command is run again for what is left (it can stop on the dead worker's
    experiment), and for that experiment, queued again."""
    started, since = 0, time.time()
    while True:
        pending = ""
        with tempfile.NamedTemporaryFile("wb", prefix="dvc-queue-", suffix=".log") as output, \
                open(output.name, encoding="utf-8", errors="replace") as reader, \
                subprocess.Popen(["dvc", "exp", "run", "--run-all", "--jobs", str(jobs)], cwd=root, stdout=output,
                                 stderr=subprocess.STDOUT) as process:
            try:
                while True:
                    ended = process.poll() is not None  # before reading: all DVC wrote is in the file then
                    *lines, pending = (pending + reader.read()).split("\n")
                    for line in lines:
                        if line.startswith(PROGRESS_MARK):
                            started += 1
                            line = f"[{started}/{total}] {line}"
                        yield line + "\n"
                    if ended:
                        break
                    if watch is not None:
                        yield from watch.check()
                    time.sleep(OUTPUT_POLL_S)
            except BaseException:  # an interrupt: DVC's command only follows the queue; it stops following
                process.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):  # so that it starts no worker after this
                    process.wait(OUTPUT_WAIT_S)
                raise
        if pending:
            yield pending + "\n"
        again = watch.rerun() if watch is not None else None
        if again is None:
            break
        total += len(again)
        yield ("grid: dvc exp run --run-all again, for what a dead queue worker left"
               + (f" (queued again: {', '.join(again)})" if again else "") + "\n")
    if process.returncode == 0 and (left := still_queued(root)):  # DVC's command stops following on SIGINT
        yield f"grid: dvc exp run --run-all stopped while DVC's queue still holds {', '.join(left)}\n"
        raise KeyboardInterrupt  # stopped as Ctrl-C stops the grid: its workers are not left running
    for pid in stop_leftover_workers(root, since):
        yield f"grid: stopped DVC queue worker {pid}, left running after the last experiment\n"
    if process.returncode != 0:
        raise PipelineError(f"dvc exp run --run-all exited with {process.returncode}; see its output above")


def still_queued(root: Path) -> list[str]:
    """The experiments DVC's queue is running or holds, through DVC's Python API (it reads the queue's files)."""
    from dvc.repo import Repo  # DVC's Python API: imported on this path only

    with contextlib.chdir(root), Repo(str(root)) as repo:
        queue = repo.experiments.celery_queue
        return [entry.name or entry.stash_rev[:7] for entry in [*queue.iter_active(), *queue.iter_queued()]]


def queue_workers(root: Path, since: float = 0.0) -> list[psutil.Process]:
    """The DVC queue workers of this project started since `since` (epoch seconds)."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd", "create_time"]):
        cmdline, cwd = process.info["cmdline"] or [], process.info["cwd"] or ""
        if QUEUE_WORKER in cmdline and Path(cwd).is_relative_to(root) and process.info["create_time"] >= since:
            found.append(process)
    return found


def stop_leftover_workers(root: Path, since: float) -> list[int]:
    """Stop the queue workers of this project started since `since` (epoch seconds) that are still running
    once DVC's `--run-all` has ended: every experiment is collected then, so they only wait. Returns their
    process ids."""
    stopped = []
    for process in queue_workers(root, since):
        with contextlib.suppress(psutil.Error):
            process.kill()
            stopped.append(process.pid)
    return stopped


def _signal_groups(workers: list[psutil.Process], sig: int) -> None:
    """`sig` to each worker's process group: DVC starts each worker in a group of its own (dvc-task), which
    its experiment's `dvc exp exec-run` and the stage it runs share, as a terminal's Ctrl-C reaches them."""
    for group in {os.getpgid(worker.pid) for worker in workers if psutil.pid_exists(worker.pid)}:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)


def interrupt_queue(root: Path, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop DVC's queue in this project: a Ctrl-C (SIGINT) to each queue worker's process group. The stage
    an experiment runs stops (its MLflow run ends KILLED); DVC records the experiment as failed and removes
    its temporary copy; the worker shuts down without taking the next experiment (Celery's warm shutdown),
    which stays queued. Waits for the workers to end, at most `timeout` s; a second interrupt while it waits,
    or the timeout, kills them at once (`kill_queue`). Returns True when they stopped cleanly."""
    workers = queue_workers(root)
    _signal_groups(workers, signal.SIGINT)
    try:
        _, alive = psutil.wait_procs(workers, timeout=timeout)
    except KeyboardInterrupt:
        kill_queue(workers)
        raise
    if alive:
        kill_queue(workers)
    return not alive


def kill_queue(workers: list[psutil.Process]) -> None:
    """SIGKILL to the workers' process groups: nothing is collected; the next grid run repairs the queue
    (`repair_queue`)."""
    _signal_groups(workers, signal.SIGKILL)


def remove_experiments(root: Path, names: list[str]) -> None:
    """`dvc exp remove <names>`: finished, failed or queued experiments, by name."""
    if names:
        dvc(root, "exp", "remove", *names)


def record_stopping(root: Path, names: list[str]) -> None:
    """Before an interrupt stops DVC's queue: the experiments it may stop (running or waiting). Whichever of
    them ends failed was stopped, not failed on its own: `repair_queue` removes it to run again, in this driver
    or, after a second Ctrl-C or a kill, in the next one. A failure from before the interrupt is not named."""
    write_json(root / GRID_STOPPING, sorted(names))


def repair_queue(root: Path, listed: list[DvcExperiment]) -> list[str]:
    """Experiments a stopped or killed queue left behind: those left "running" for good (`stale`), which
    `dvc queue kill` marks failed (DVC does so for a task whose process is gone), and those an interrupt
    stopped (`record_stopping`), which DVC holds as failed. They are removed, with their temporary copies, so
    that the grid runs them again. Returns their names."""
    record = root / GRID_STOPPING
    stopping: set[str] = set()
    with contextlib.suppress(OSError, ValueError, TypeError):
        stopping = set(json.loads(record.read_text()))
    stale = [experiment for experiment in listed if experiment.stale]
    names = [experiment.name for experiment in stale]
    if names:
        with contextlib.suppress(PipelineError):  # DVC kills what it can and marks the rest failed
            dvc(root, "queue", "kill", *names)
    stopped = [experiment.name for experiment in listed
               if experiment.failed and experiment.name in stopping and experiment.name not in names]
    remove_experiments(root, names + stopped)
    for experiment in stale:
        if experiment.copy and Path(experiment.copy).is_relative_to(root / DVC_TMP_DIR):
            shutil.rmtree(experiment.copy, ignore_errors=True)
    record.unlink(missing_ok=True)
    return names + stopped


def run_stage_once(root: Path, stage: str, experiment: DvcExperiment) -> str | None:
    """`dvc repro <stage>` of a queued experiment, before the queue runs it: in a throw-away clone of its
    commit (DVC's stash of it, params applied), on this project's DVC cache. The stage's outputs land in
    the cache and its run in DVC's run-cache, from which each experiment with the same stage (same params,
    same code) restores it instead of running it: two experiments that would run it at the same moment
    write the same outputs into the shared cache at once, and one fails ("unable to remove ... without a
    confirmation"). Returns DVC's error when the stage failed (the experiments then fail on it themselves)."""
    cache = Path(dvc(root, "cache", "dir").strip())
    with tempfile.TemporaryDirectory(prefix=f"grid-{stage}-") as folder:
        clone = Path(folder) / "repo"
        git(root, "clone", "-q", "--shared", "--no-checkout", str(root), str(clone))
        git(clone, "checkout", "-q", "--detach", experiment.rev)
        dvc(clone, "cache", "dir", "--local", str(cache if cache.is_absolute() else root / ".dvc" / cache))
        try:  # DVC_ROOT: the stage's shared state (downloads) is the project's, as in the queue
            dvc(clone, "repro", "--single-item", stage, env={"DVC_ROOT": str(root)})
        except PipelineError as error:
            return str(error)[-500:]
    return None


def plots_stamp(revs: dict[str, str]) -> dict[str, Any]:
    """What made `dvc plots diff`'s output: the experiments (name → revision, a commit: its plots never change)
    and DVC's version."""
    return {"revs": dict(sorted(revs.items())), "dvc": importlib.metadata.version("dvc")}


def plots_diff(root: Path, revs: dict[str, str], output: Path) -> str | None:
    """`dvc plots diff` of the experiments (name → revision) into `output` (HTML); DVC's error when it failed,
    else None. Skipped when the stamp (DVC_PLOTS_STAMP) says that the same revisions and the same DVC version
    made the index.html present (its sha256). With one experiment DVC adds the workspace, which changes, and a
    revision may be unknown (""): then it always runs."""
    stamp_file, index = root / DVC_PLOTS_STAMP, root / output / "index.html"
    stamp = plots_stamp(revs)
    if len(revs) > 1 and all(revs.values()) and index.is_file():
        with contextlib.suppress(OSError, ValueError):
            if json.loads(stamp_file.read_text()) == stamp | {"index_sha256": sha256_of(index)}:
                return None
    stamp_file.unlink(missing_ok=True)  # the output changes now: the stamp no longer holds
    (root / output).parent.mkdir(parents=True, exist_ok=True)  # DVC writes into it, and does not make it
    try:
        dvc(root, "plots", "diff", *revs, "-o", str(output))
    except PipelineError as error:
        return str(error)[-500:]
    if len(revs) > 1 and index.is_file():
        write_json(stamp_file, stamp | {"index_sha256": sha256_of(index)})
    return None


def mlflow_run_ids(root: Path, listed: list[DvcExperiment]) -> dict[str, str | None]:
    """The MLflow run each experiment's log stage wrote to (metrics/mlflow_run.json in its commit), by name
    (None without one): one batched git read (`show_many`) for all of them."""
    with_rev = [experiment for experiment in listed if experiment.rev]
    texts = show_many(root, [(experiment.rev, MLFLOW_RUN_FILE) for experiment in with_rev])
    found: dict[str, str | None] = {experiment.name: None for experiment in listed}
    for experiment, text in zip(with_rev, texts, strict=True):
        found[experiment.name] = json.loads(text)[RUN_LINK_ID] if text else None
    return found


def error_line(log: str) -> str | None:
    """A failed stage's own error line (`error: ...`, core/entry.py) in DVC's output, if it printed one."""
    errors = [line.strip() for line in log.splitlines() if line.startswith((ERROR_PREFIX, ERROR_PREFIX.upper()))]
    return errors[0] if errors else None


def failure_reason(root: Path, experiment: DvcExperiment) -> str:
    """Why the experiment failed: its own error, else the failed stage's line from `dvc queue logs`."""
    if experiment.error:
        return experiment.error
    try:
        log = dvc(root, "queue", "logs", experiment.name)
    except PipelineError:
        log = ""
    return error_line(log) or "the experiment failed (see `dvc queue logs " + experiment.name + "`)"


def pull_experiments(root: Path, git_remote: str, names: list[str]) -> str:
    """`dvc exp pull <git_remote> <names>`: the experiments' git refs, and their outputs from the DVC remote."""
    return dvc(root, "exp", "pull", git_remote, *names)


def remote_experiments(root: Path, git_remote: str, baseline: str) -> list[str]:
    """The names of the experiments of `baseline` that `git_remote` holds (`dvc exp list --name-only`,
    one name a line: the command has no --json)."""
    return dvc(root, "exp", "list", git_remote, "--rev", baseline, "--name-only").split()


def default_remote(root: Path) -> tuple[str, str] | None:
    """The default DVC remote (`.dvc/config` and `.dvc/config.local` merged): its name and URL, or None."""
    name = dvc(root, "config", "core.remote").strip()  # empty when none is set
    return (name, dvc(root, "config", f"remote.{name}.url").strip()) if name else None
