"""Two queued experiments with the same prepare params, started together by two queue workers: each used to
run prepare into the shared DVC cache at the same moment, and one could fail ("unable to remove
'…/metrics/data.json' without a confirmation"). The grid runs what they share once before the queue starts,
and each experiment restores it from DVC's run-cache. Repeated, with a new prepare section each round, so
that each round starts without a run-cache entry. The race is in the prepare stage: the project's pipeline
is cut to that stage here (dvc.yaml, committed), so that the test trains nothing; so is it in the test of
what the next run repairs after an interrupt."""

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import needs_coco128, run
from yolo_mlops.core.paths import GRID_STOPPING
from yolo_mlops.grid.experiments import parse_exp_show

pytestmark = [needs_coco128, pytest.mark.e2e]
ROUNDS = 2


def prepare_only(project: Path) -> Path:
    """The project with its pipeline cut to the prepare stage, committed."""
    pipeline = yaml.safe_load((project / "dvc.yaml").read_text())
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"prepare": pipeline["stages"]["prepare"]}}))
    (project / "dvc.lock").unlink()
    run(["git", "commit", "-qam", "the prepare stage only"], project)
    return project


def test_two_experiments_sharing_prepare_never_fail_each_other(tiny_project: Path) -> None:
    project = prepare_only(tiny_project)
    for round_ in range(ROUNDS):
        run(["dvc", "exp", "run", "--queue", "-S", f"prepare.seed={round_ + 1}",
             "-S", f"train.seed={2 * round_ + 1},{2 * round_ + 2}"], project)
        started = run(["python", "-m", "yolo_mlops.grid", "start", "--jobs", "2"], project, check=False)
        out = started.stdout + started.stderr
        assert started.returncode == 0, out[-3000:]
        assert "grid: prepare of 2 experiment(s) run once before the queue\n" in started.stdout
        experiments = [e for e in parse_exp_show(json.loads(run(["dvc", "exp", "show", "--json"], project).stdout))
                       if e.params["prepare.seed"] == round_ + 1]
        assert len(experiments) == 2 and all(experiment.done for experiment in experiments), out[-3000:]
        for experiment in experiments:  # restored, not run again
            log = run(["dvc", "queue", "logs", experiment.name], project).stdout
            assert "Stage 'prepare' is cached - skipping run" in log, log[-2000:]
            assert "Running stage 'prepare'" not in log


def test_the_next_run_removes_what_an_interrupt_stopped_and_keeps_a_failure_of_its_own(tiny_project: Path) -> None:
    """A second Ctrl-C (or a kill) ends the driver before it removes what it stopped, which DVC then holds as
    failed. The next run removes the experiments the interrupt named (GRID_STOPPING, written before it stopped
    the queue) so that they run again, and keeps one that failed on its own, with its error."""
    project = prepare_only(tiny_project)
    run(["dvc", "exp", "run", "--queue", "-S", "prepare.classes=[unicorn]", "-S", "train.seed=1,2"], project)
    first = run(["python", "-m", "yolo_mlops.grid", "start", "--jobs", "1"], project, check=False)
    failed = sorted(e.name for e in parse_exp_show(json.loads(run(["dvc", "exp", "show", "--json"], project).stdout))
                    if e.failed)
    assert first.returncode == 1 and len(failed) == 2, (first.stdout + first.stderr)[-3000:]
    stopped, failed_alone = failed
    (project / GRID_STOPPING).write_text(json.dumps([stopped]))  # as an interrupt left it
    again = run(["python", "-m", "yolo_mlops.grid", "start", "--jobs", "1"], project, check=False)
    assert f"grid: repaired DVC's queue: {stopped} " in again.stderr, again.stderr[-3000:]
    left = parse_exp_show(json.loads(run(["dvc", "exp", "show", "--json"], project).stdout))
    assert [(e.name, e.failed) for e in left] == [(failed_alone, True)]
    assert f"FAILED: {failed_alone} " in again.stdout and not (project / GRID_STOPPING).exists()
