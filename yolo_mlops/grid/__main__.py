"""The grid across experiments: `python -m yolo_mlops.grid <command>` (`make run` runs `run`).
`python -m yolo_mlops.grid --help` lists the commands."""

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from yolo_mlops.core import warm
from yolo_mlops.core.entry import run_main
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.params import Params, load_params
from yolo_mlops.core.paths import CONFIG_CHART, CURVES_CHART, DECISION_FILE, DVC_PLOTS_DIR, RUNS_CSV
from yolo_mlops.core.vocabulary import CHALLENGER, CHAMPION, DECISION_ARTIFACTS, RAY_NODE_IP_TAG
from yolo_mlops.grid import commands, experiments
from yolo_mlops.grid.experiments import DvcExperiment
from yolo_mlops.grid.lock import driver_lock
from yolo_mlops.grid.registry import rollback
from yolo_mlops.grid.report import per_class, table
from yolo_mlops.grid.sync import SyncResult, deleted_note
from yolo_mlops.tracking.store import connect, pipeline_permission, public_uri, sign_in_error, tracking_uri


def plan_line(plan: commands.Plan, where: str) -> str:
    """How many points of the grid are done ("already run"), failed, running and queued, and how many not."""
    states = plan.states()
    others = "".join(f", {len(found)} {state} ({', '.join(found)})" for state, found in states.items()
                     if state != "done" and found)
    return (f"grid: {len(plan.points)} experiment(s), {len(states['done'])} already run{others} from commit "
            f"{plan.baseline[:7]}, {len(plan.missing)} to {where}")


# How to retry failed experiments ({} = their names): DVC's queue keeps a failed experiment, which holds
# its point as run until removed; a point that failed on a Ray worker left no experiment, so it runs again.
LOCAL_RETRY = "`dvc exp remove {}`, then run again"
RAY_RETRY = "fix the cause, then run again (a point that failed on the Ray cluster is run again)"
# Two queue workers: Ultralytics trains on one core fewer than the machine has (at most 8), and an
# experiment's imports, DVC's bookkeeping and MLflow use one core, so a second experiment fills what the
# first leaves idle; on 2 cores the grid takes about 0.6 of the time of one worker (benchmarks/grid_cost.py).
# With several workers DVC 3.67's queue can leave one running after the last experiment: `run_queue`
# does not wait for it, and stops it. `--jobs 1` runs one experiment at a time.
QUEUE_JOBS = 2
INTERRUPTED, AGAIN = "grid: interrupted", "Ctrl-C again kills them at once; the next run repairs that"
INTERRUPTED_STATUS = 130  # a shell's status for a command ended by Ctrl-C (128 + SIGINT)


def planned(root: Path, params: Params, overrides: list[str], here: bool = True) -> commands.Plan:
    """The grid, refused before anything is created (store, queue entry) when a point would fail."""
    plan = commands.plan_grid(root, params, overrides)
    commands.check_before_queueing(plan.missing, plan.overrides, here)
    return commands.plan_grid(root, params, overrides) if repair(root, plan.experiments) else plan


def repair(root: Path, listed: list[DvcExperiment]) -> list[str]:
    """Repair DVC's queue after a killed grid (`experiments.repair_queue`); returns what it removed."""
    repaired = experiments.repair_queue(root, listed)
    if repaired:
        print(f"grid: repaired DVC's queue: {', '.join(repaired)} left running by a killed grid, removed to run "
              "again", file=sys.stderr, flush=True)
    return repaired


def queue(root: Path, plan: commands.Plan) -> commands.Plan:
    print(plan_line(plan, "queue"), flush=True)
    if plan.missing:
        for command, output in commands.queue_plan(root, plan):
            print("$ " + " ".join(command))
            print(output, end="", flush=True)
    return plan


def start(client: MlflowClient, root: Path, params: Params, jobs: int, plan: commands.Plan | None = None) -> list[str]:
    """Run the queue, `jobs` experiments at once, and link the runs; returns the failed experiments. `plan`:
    the grid just planned; when it left nothing to run, its experiments are linked as they were listed."""
    known = plan.experiments if plan is not None and plan.settled else None
    if known is None:
        before = plan.experiments if plan is not None else experiments.list_experiments(root)
        if plan is None and repair(root, before):
            before = experiments.list_experiments(root)
        current = before if plan is None or not plan.missing else None  # None: queued since it was listed
        with warm.serving(root) as server:  # the queue's stages and forwarders fork from it; it outlives `stop`
            try:
                for line in commands.run_queued(root, jobs, current):
                    sys.stdout.write(line)
                    sys.stdout.flush()
            except KeyboardInterrupt:
                stop(client, root, params, before)
        print(f"grid: {warm.summary(server)}", flush=True)
    return print_sync(commands.sync_grid(client, root, params, known=known), LOCAL_RETRY)


def stop(client: MlflowClient, root: Path, params: Params, before: list[DvcExperiment]) -> NoReturn:
    """Ctrl-C or SIGTERM while DVC's queue runs: stop it, say what was finished and what not, exit 130."""
    print(f"\n{INTERRUPTED}: stopping the experiments DVC's queue is running ({AGAIN})", file=sys.stderr, flush=True)
    stopped = commands.stop_grid(client, root, params, before)
    lines = [f"finished: {', '.join(stopped.finished) or 'none'}"]
    if stopped.stopped:
        lines.append(f"stopped: {', '.join(stopped.stopped)} (removed from DVC's experiments, their MLflow runs "
                     "KILLED as previous attempts)" + (" after they were killed" if stopped.killed else ""))
    if stopped.queued:
        lines.append(f"not started: {', '.join(stopped.queued)} (still in DVC's queue)")
    print(f"{INTERRUPTED}. " + "; ".join(lines) + ". Run the same command again to run what is missing.",
          file=sys.stderr, flush=True)
    sys.exit(INTERRUPTED_STATUS)


def print_sync(result: SyncResult, retry: str) -> list[str]:
    """Print what the sync did; returns the failed experiments. `retry`: how to retry them ({} = their names)."""
    for note in result.notes:
        print(f"sync: {note}", file=sys.stderr)
    print(f"sync: {len(result.linked)} experiment(s) linked to their MLflow run"
          + (f"; FAILED: {', '.join(result.failed)} (to retry: {retry.format(' '.join(result.failed))})"
             if result.failed else "")
          + (f"; without MLflow run: {', '.join(result.unlogged)}" if result.unlogged else ""))
    return result.failed


def on_ray(client: MlflowClient, root: Path, params: Params, plan: commands.Plan,
           address: str) -> tuple[list[str], str]:
    """The missing grid points as Ray tasks, progress as they finish, then `dvc exp pull` and the sync;
    returns the failed experiments and the hardware they ran on, for the report."""
    from yolo_mlops.grid import cluster  # Ray is imported on this path only

    fanout, resources = cluster.plan_fanout(root, plan, client.tracking_uri, address)
    size = f" ({resources.get('CPU', 0):g} CPU(s), {resources.get('GPU', 0):g} GPU(s))" if resources else ""
    print(plan_line(plan, f"run on the Ray cluster at {address}{size}"), flush=True)
    results = []
    for result in cluster.run(fanout):
        results.append(result)
        print(f"[{len(results)}/{len(fanout.tasks)}] {result.name} on {result.node}: "
              + ("done" if result.error is None else f"FAILED ({result.error})"), flush=True)
    pulled = cluster.pull(root, results)
    if pulled:
        print(f"dvc exp pull {cluster.GIT_REMOTE}: {len(pulled)} experiment(s)", flush=True)
    failed = cluster.failed_points(fanout, results)
    synced = print_sync(commands.sync_grid(client, root, params, failed, cluster.node_tags(results)), RAY_RETRY)
    return synced, f"Ray cluster at {address}{size}; each run's tag {RAY_NODE_IP_TAG} names its machine"


def compare(client: MlflowClient, root: Path, params: Params) -> commands.Compared:
    compared = commands.compare_grid(client, root, params)
    comparison = compared.comparison
    print(f"\nRuns ranked by {', then '.join(comparison.rank_by)} (val and test shown):\n")
    print(table(comparison))
    print("\n" + per_class(comparison))
    print("\n" + "\n".join(f"- {line}" for line in compared.insights.lines()))
    for name, run_id in compared.deleted.items():
        print(f"- {deleted_note(name, run_id)}")
    written = [str(RUNS_CSV), str(CONFIG_CHART)]
    written += [f"{CURVES_CHART} ({compared.curve_metric} per epoch)"] if compared.curve_metric else []
    written += [] if compared.plots_error else [f"{DVC_PLOTS_DIR}/index.html (dvc plots diff of the experiments)"]
    print(f"\nWritten: {', '.join(written)}")
    print(f"MLflow UI: {compared.page}")
    if compared.plots_error:
        print(f"warning: dvc plots diff failed, {DVC_PLOTS_DIR}/ not updated: {compared.plots_error}", file=sys.stderr)
    return compared


def promote(client: MlflowClient, root: Path, params: Params, compared: commands.Compared,
            hardware: str | None = None) -> None:
    promoted = commands.promote_best(client, root, params, compared, hardware)
    best, promotion = promoted.best, promoted.promotion
    print(f"\npromote: run {best.run_id} ({best.name}) is {promotion.name} version {promotion.version} "
          f"({'new' if promotion.created else 'registered before'}), alias {CHALLENGER}")
    for gate in promotion.gates:
        print(f"  gate {gate.name}: {'pass' if gate.passed else 'FAIL'} ({gate.detail})")
    print(f"decision: {promotion.decision}; {CHAMPION} = "
          + (f"version {promotion.champion} (models:/{promotion.name}@{CHAMPION})" if promotion.champion else "none"))
    print(f"report: {DECISION_FILE} (also logged to run {best.run_id} under {DECISION_ARTIFACTS}/)")


def refuse_failures(failed: list[str], retry: str) -> None:
    if failed:
        raise PipelineError(
            f"{len(failed)} experiment(s) of this commit failed: {', '.join(failed)} (reasons above and in their "
            f"FAILED MLflow runs); the others were compared. To retry: {retry.format(' '.join(failed))}"
        )


def cmd_run(root: Path, params: Params, args: argparse.Namespace) -> None:
    if args.ray:
        from yolo_mlops.grid.cluster import refuse_embedded_store  # Ray is imported on this path only

        refuse_embedded_store(tracking_uri())
    plan = planned(root, params, args.overrides, here=not args.ray)  # a refusal creates nothing
    client, _ = connect()  # before any training: fail now if the tracking server is down
    hardware = None  # this machine's
    if args.ray:
        failed, hardware = on_ray(client, root, params, plan, args.ray)
    else:
        failed = start(client, root, params, args.jobs, queue(root, plan))
    promote(client, root, params, compare(client, root, params), hardware)
    refuse_failures(failed, RAY_RETRY if args.ray else LOCAL_RETRY)


def cmd_queue(root: Path, params: Params, args: argparse.Namespace) -> None:
    queue(root, planned(root, params, args.overrides))
    print("Run them with `dvc exp run --run-all` (or `python -m yolo_mlops.grid start`)")


def cmd_start(root: Path, params: Params, args: argparse.Namespace) -> None:
    client, _ = connect()
    refuse_failures(start(client, root, params, args.jobs), LOCAL_RETRY)


def cmd_compare(root: Path, params: Params, args: argparse.Namespace) -> None:
    client, _ = connect(create=False)
    compare(client, root, params)


def cmd_promote(root: Path, params: Params, args: argparse.Namespace) -> None:
    client, _ = connect(create=False)
    promote(client, root, params, compare(client, root, params))


def cmd_rollback(root: Path, params: Params, args: argparse.Namespace) -> None:
    client, _ = connect(create=False)
    previous, target = rollback(client, params.promote.registered_model, args.to)
    print(f"rollback: {params.promote.registered_model}@{CHAMPION} moved from version {previous} to version {target}")


def overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a params.yaml value for every experiment of the grid (as dvc exp run -S)")


def queue_workers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-j", "--jobs", type=positive, default=QUEUE_JOBS, metavar="N",
                        help=f"DVC queue workers, experiments run at once (dvc exp run --run-all --jobs; "
                             f"default {QUEUE_JOBS})")


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def run_options(parser: argparse.ArgumentParser) -> None:
    overrides(parser)
    queue_workers(parser)
    parser.add_argument("--ray", metavar="ADDRESS", default=os.environ.get("RAY_ADDRESS") or None,
                        help="run the missing grid points as tasks on the Ray cluster at ADDRESS (auto, host:6379) "
                             "instead of DVC's local queue (default: $RAY_ADDRESS, Ray's own variable)")


def target_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", help="the version to make champion (default: the previous champion)")


def no_options(parser: argparse.ArgumentParser) -> None:
    """A command without options."""


Command = Callable[[Path, Params, argparse.Namespace], None]
DRIVERS = ("run", "queue", "start")  # the commands that change DVC's queue: one at a time per project
# name → (what runs, its help, its options): every subcommand, declared once.
COMMANDS: dict[str, tuple[Command, str, Callable[[argparse.ArgumentParser], None]]] = {
    "run": (cmd_run, "all of it: queue, run, sync, compare, promote (what `make run` does)", run_options),
    "queue": (cmd_queue, "queue the grid points this commit has not run yet", overrides),
    "start": (cmd_start, "run DVC's queue, then link the experiments to their MLflow runs", queue_workers),
    "compare": (cmd_compare, "ranked table, reports/runs.csv, insights, charts", no_options),
    "promote": (cmd_promote, "compare, register the best run, gates, reports/decision.md", no_options),
    "rollback": (cmd_rollback, f"move the {CHAMPION} alias back", target_version),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m yolo_mlops.grid", description=__doc__)
    subcommands = parser.add_subparsers(dest="command", required=True)
    for name, (func, summary, add_options) in COMMANDS.items():
        sub = subcommands.add_parser(name, help=summary, description=summary)
        sub.set_defaults(func=func)
        add_options(sub)
    args = parser.parse_args(argv)
    # Ctrl-C stops the grid even where the driver started with SIGINT ignored (a script's background job),
    # and SIGTERM stops it as Ctrl-C does; DVC's processes started from here get SIGINT back.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupt)
    root, params = Path.cwd(), load_params()
    try:
        with driver_lock(root) if args.command in DRIVERS else contextlib.nullcontext() as left:
            if left:
                print(f"grid: taking over the lock of grid driver {left}, which ended without releasing it",
                      file=sys.stderr)
            args.func(root, params, args)
    except MlflowException as error:
        refused = sign_in_error(error, pipeline_permission(params.mlflow.experiment_name))
        raise (refused or PipelineError(f"MLflow at {public_uri(tracking_uri())}: {error.message}")) from None
    except KeyboardInterrupt:  # a second one while the queue stopped, or one before or after the queue ran
        print(f"\n{INTERRUPTED}; what DVC's queue was still running, if anything, is killed: the next run repairs "
              "that and runs what is missing", file=sys.stderr)
        sys.exit(INTERRUPTED_STATUS)


def interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    run_main(main)
