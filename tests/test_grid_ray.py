"""The grid on a Ray cluster, on loopback: a head and two worker nodes of one CPU each
(`ray.cluster_utils.Cluster`), a bare git repository as the git remote, moto's S3 server as the DVC
remote, a real `mlflow server`, and a 2 × 2 grid at tiny settings. One worker node is killed while
the grid runs; then the command is run again with one experiment missing here. The refusals are
checked without a cluster."""

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.conftest import TINY_PARAMS, copy_project, free_port, needs_coco128, project_env, run
from tests.stack import client_env, mlflow_server, ray_cluster, s3_server, team_clone
from yolo_mlops.core import vocabulary
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.params import load_params
from yolo_mlops.core.paths import TEMP_DIR
from yolo_mlops.grid import cluster, commands
from yolo_mlops.grid.experiments import parse_exp_show
from yolo_mlops.grid.sync import sync

GRID = "train.lr0: [0.005, 0.01]\ntrain.seed: [1, 42]\n"
# Valid params (so it is run), but COCO128 holds fewer person images: the point's prepare stage fails.
FAILING_GRID = "prepare.train: [500]\ntrain.lr0: [0.005]\ntrain.seed: [1]\n"
GATES = {"promote.min_test_map50_95": 0.0, "promote.min_test_recall": 0.0, "promote.min_margin": 0.0}
MODEL = "yolo_tiny_person"
KILL_DELAY_S = 8  # after the second point finished: its node is then well into its next experiment


def grid_command(address: str) -> list[str]:
    return ["python", "-m", "yolo_mlops.grid", "run", "--ray", address]


def run_killing_a_node(project: Path, env: dict[str, str], ray: Any,
                       nodes: list) -> tuple[str, int, str, list[str]]:
    """The grid on the cluster; once two points are done, the node that ran the second is killed (it is
    then running another point). Returns the output, the exit status, the killed node's id and the
    tasks' temporary folders at that moment."""
    killed, working = "", []
    with subprocess.Popen(grid_command(ray.address), cwd=project, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as driver:
        assert driver.stdout is not None
        lines = []
        for line in driver.stdout:
            lines.append(line)
            if line.startswith("[2/4]") and not killed:
                time.sleep(KILL_DELAY_S)
                node = next(node for node in nodes if node.node_id.startswith(line.split(" on node ")[1][:8]))
                killed = node.node_id
                working = sorted(path.name for path in (project / TEMP_DIR).glob("ray-*"))
                ray.remove_node(node, allow_graceful=False)
    return "".join(lines), driver.returncode, killed, working


def state(project: Path, server_uri: str) -> dict[str, Any]:
    client = MlflowClient(server_uri)
    experiment = client.get_experiment_by_name(load_params(project / "params.yaml").mlflow.experiment_name)
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    return {
        "experiments": parse_exp_show(json.loads(run(["dvc", "exp", "show", "--json"], project).stdout)),
        "runs": [found for found in runs if vocabulary.PREVIOUS_ATTEMPT_TAG not in found.data.tags],
        # A point whose node died while it trained: the run its training opened there, marked by the retry.
        "previous_attempts": [found for found in runs if vocabulary.PREVIOUS_ATTEMPT_TAG in found.data.tags],
        "versions": client.search_model_versions(f"name = '{MODEL}'"),
    }


@pytest.fixture(scope="module")
def ray_grid(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("ray")
    with s3_server(root) as s3, mlflow_server(f"sqlite:///{root}/mlflow.db", s3.endpoint, root) as server, \
            ray_cluster(workers=2) as (ray, nodes):
        project = team_clone(copy_project(root / "project", TINY_PARAMS | GATES), s3, root / "remote.git")
        (project / "grid.yaml").write_text(GRID)
        # The driver's DVC reads the bucket's keys from .dvc/config.local, as after `make remote`.
        env = {key: value for key, value in client_env(server.uri).items()
               if key not in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")}
        output, status, killed, working = run_killing_a_node(project, env, ray, nodes)
        first = state(project, server.uri)
        # Run again with one experiment missing here (it is still on the git remote): only it is run.
        removed = first["experiments"][0].name
        run(["dvc", "exp", "remove", removed], project)
        again = run(grid_command(ray.address), project, env=env)
        after_again = state(project, server.uri)
        (project / "grid.yaml").write_text(FAILING_GRID)
        failing = run(grid_command(ray.address), project, env=env, check=False)
        # The workers run the driver's clone's code (Ray passes them its sys.path), so their tasks' clones were
        # under its .tmp/ (ray-*, beside the grid's own caches): every one is gone, the killed task's included
        # (its retry emptied it first).
        leftovers = [path.name for path in (project / TEMP_DIR).glob("ray-*")]
        return {"working": working, "leftovers": leftovers, "project": project, "output": output, "status": status,
                "killed": killed, "first": first, "removed": removed, "again": again.stdout, "after_again": after_again,
                "failing": failing,
                "after_failing": state(project, server.uri), "workers": [node.node_id for node in nodes]}


@needs_coco128
@pytest.mark.e2e
def test_every_point_is_one_experiment_and_one_finished_run_despite_a_dead_node(ray_grid):
    assert ray_grid["status"] == 0, ray_grid["output"][-3000:]
    out = ray_grid["output"]
    assert "grid: 4 experiment(s), 0 already run" in out and "4 to run on the Ray cluster" in out
    assert all(f"[{k}/4] " in out for k in range(1, 5)) and out.count(": done\n") == 4
    assert ray_grid["killed"] in ray_grid["workers"]
    experiments, runs = ray_grid["first"]["experiments"], ray_grid["first"]["runs"]
    assert len(experiments) == 4 and not any(e.failed for e in experiments)
    assert {(e.params["train.lr0"], e.params["train.seed"]) for e in experiments} == {
        (lr, seed) for lr in (0.005, 0.01) for seed in (1, 42)}
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)  # none doubled by the retry
    previous = ray_grid["first"]["previous_attempts"]  # none if the node died before or after a training
    assert len(previous) <= 1 and all(found.info.status == "FAILED" for found in previous)
    assert {found.data.tags[vocabulary.PREVIOUS_ATTEMPT_TAG] for found in previous} <= {r.info.run_id for r in runs}
    by_name = {r.data.tags[vocabulary.EXP_NAME_TAG]: r for r in runs}
    assert set(by_name) == {e.name for e in experiments}
    for experiment in experiments:
        mlflow_run = by_name[experiment.name]
        assert mlflow_run.info.run_name == experiment.name
        assert mlflow_run.data.tags[vocabulary.EXP_REV_TAG] == experiment.rev
        # val and test: 5 all-class metrics, 4 of person, and the _low / _high of 4 of them
        assert len(experiment.metrics) == 34
        for name, value in experiment.metrics.items():
            assert mlflow_run.data.metrics[vocabulary.eval_metric(name)] == value
        assert f"{experiment.name} on node {mlflow_run.data.tags[vocabulary.RAY_NODE_TAG][:8]}" in out
    # The tasks cloned under the clone's .tmp/, not /tmp, and left nothing there.
    assert ray_grid["working"] and ray_grid["leftovers"] == []


@needs_coco128
@pytest.mark.e2e
def test_both_worker_nodes_ran_points_and_the_best_is_promoted(ray_grid):
    runs = ray_grid["first"]["runs"]
    nodes = [r.data.tags[vocabulary.RAY_NODE_TAG] for r in runs]
    assert set(nodes) == set(ray_grid["workers"])
    assert nodes.count(ray_grid["killed"]) == 1  # its point in progress at the kill was finished by the other node
    assert len(ray_grid["first"]["versions"]) == 1
    assert "promote: run" in ray_grid["output"]
    report = (ray_grid["project"] / "reports" / "decision.md").read_text()
    assert f"MLflow run id `{ray_grid['first']['versions'][0].run_id}`" in report
    # Where the runs trained: the cluster, not the driver (its last run had a point to run, so it joined it).
    assert "- Hardware: Ray cluster at " in report and f"tag {vocabulary.RAY_NODE_IP_TAG} names" in report


@needs_coco128
@pytest.mark.e2e
def test_running_again_runs_only_what_is_missing_and_doubles_nothing(ray_grid):
    again, after = ray_grid["again"], ray_grid["after_again"]
    assert "grid: 4 experiment(s), 3 already run" in again and "1 to run" in again
    assert f"[1/1] {ray_grid['removed']} on node" in again and ": done" in again
    assert sorted(e.name for e in after["experiments"]) == sorted(e.name for e in ray_grid["first"]["experiments"])
    assert sorted(r.info.run_id for r in after["runs"]) == sorted(r.info.run_id for r in ray_grid["first"]["runs"])
    assert len(after["versions"]) == 1


@needs_coco128
@pytest.mark.e2e
def test_a_point_failing_on_a_worker_is_a_failed_run_and_exit_1_after_the_comparison(ray_grid):
    result, after = ray_grid["failing"], ray_grid["after_failing"]
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "grid: 1 experiment(s), 0 already run" in result.stdout and ": FAILED (error: " in result.stdout
    failed = [r for r in after["runs"] if r.info.status == "FAILED"]
    assert len(failed) == 1 and len(after["runs"]) == 5 and len(after["experiments"]) == 4
    assert failed[0].data.params["prepare.train"] == "500" and failed[0].data.tags[vocabulary.RAY_NODE_TAG]
    assert "but train + val + test = 520 were requested" in failed[0].data.tags[vocabulary.ERROR_TAG]
    assert "Runs ranked by" in result.stdout and "promote: run" in result.stdout
    failed_name = failed[0].data.tags[vocabulary.EXP_NAME_TAG]
    assert f"error: 1 experiment(s) of this commit failed: {failed_name}" in result.stderr
    assert "a point that failed on the Ray cluster is run again" in result.stderr


# --- Refusals, before anything runs --------------------------------------------------------------------------------

SERVER = "http://127.0.0.1:5000"


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A committed project copy with a pushed git remote and the S3 bucket as its default DVC remote."""
    from tests.stack import S3Server

    project = copy_project(tmp_path / "project")
    return team_clone(project, S3Server("http://127.0.0.1:9"), tmp_path / "remote.git")


def refusal(call) -> str:
    with pytest.raises(PipelineError) as refused:
        call()
    assert str(refused.value).endswith("Nothing was run.")
    return str(refused.value)


def test_refuses_the_embedded_store_before_anything_runs(tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    result = run(grid_command("127.0.0.1:9"), project, env=project_env(), check=False)
    assert result.returncode == 1 and "Nothing was run." in result.stderr
    assert ("error: the embedded SQLite store cannot be shared with Ray workers: set MLFLOW_TRACKING_URI to the "
            "team's MLflow server (make up)") in result.stderr


def test_refuses_without_a_git_remote(clone: Path) -> None:
    run(["git", "remote", "remove", "origin"], clone)
    assert "no git remote 'origin'" in refusal(lambda: cluster.refuse_unshared(clone, SERVER))


def test_refuses_a_baseline_that_is_not_pushed(clone: Path) -> None:
    run(["git", "commit", "-q", "--allow-empty", "-m", "not pushed"], clone)
    message = refusal(lambda: cluster.refuse_unshared(clone, SERVER))
    assert "is not on origin" in message and "git push origin" in message


def test_refuses_without_a_dvc_remote(clone: Path) -> None:
    run(["dvc", "remote", "default", "--local", "--unset"], clone)
    run(["dvc", "remote", "default", "--project", "--unset"], clone)
    assert "no default DVC remote" in refusal(lambda: cluster.refuse_unshared(clone, SERVER))


def test_refuses_a_dvc_remote_on_a_local_path(clone: Path) -> None:
    run(["dvc", "remote", "default", "--local", "local"], clone)  # the project's own: ../.dvc-remote
    message = refusal(lambda: cluster.refuse_unshared(clone, SERVER))
    assert "DVC remote 'local' is a folder on this machine" in message and "make remote" in message


def test_refuses_uncommitted_pipeline_changes(clone: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(clone)
    (clone / "dvc.yaml").write_text((clone / "dvc.yaml").read_text() + "\n# changed\n")
    with pytest.raises(PipelineError, match="uncommitted pipeline changes: dvc.yaml"):
        commands.plan_grid(clone, load_params(clone / "params.yaml"), [])


def test_refuses_a_relative_coco128_path() -> None:
    assert "every machine has" in refusal(lambda: cluster.refuse_local_source("../shared/data/coco128.zip"))


def test_refuses_an_address_without_a_cluster_within_seconds() -> None:
    started = time.monotonic()
    message = refusal(lambda: cluster.connect(f"127.0.0.1:{free_port()}"))
    assert message.startswith("no Ray cluster at 127.0.0.1:") and "ray start --head" in message
    assert time.monotonic() - started < 10


def test_a_point_reserves_a_gpu_when_its_device_asks_for_cuda() -> None:
    assert [cluster.gpus_needed(device, 2) for device in ("0", "0,1", "auto", "cpu", "mps")] == [1, 2, 1, 0, 0]
    assert cluster.gpus_needed("auto", 0) == 0


def test_a_point_that_failed_on_a_worker_is_a_failed_run_naming_its_node(mlflow_store) -> None:
    fanout = cluster.Fanout("git", "base", SERVER, [], {"lr0_1-abc": {"train.lr0": 1.0, "train.seed": 1}})
    results = [cluster.PointResult("lr0_1-abc", "f" * 56, "10.0.0.7", "error: train.lr0 too high")]
    experiment_id = mlflow_store.create_experiment("ray-failed")
    for _ in range(2):  # a second sync finds the same FAILED run
        result = sync(mlflow_store, experiment_id, Path("."), cluster.failed_points(fanout, results),
                      cluster.node_tags(results))
    assert result.failed == ["lr0_1-abc"]
    (failed,) = mlflow_store.search_runs([experiment_id])
    assert failed.info.status == "FAILED" and failed.data.tags[vocabulary.ERROR_TAG] == "error: train.lr0 too high"
    assert failed.data.tags[vocabulary.RAY_NODE_TAG] == "f" * 56 and failed.data.params["train.lr0"] == "1.0"
