"""What keeps the grid's commands short with many experiments: finished runs' per-image statistics and
replicates kept on disk, `dvc plots diff` skipped when nothing it draws changed, every experiment's link read
from git at once, and the grid queued in one process."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from tests.conftest import TINY_PARAMS, copy_project, log_synthetic_run, run
from tests.test_paired_promotion import hand_stats
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.git import show, show_many
from yolo_mlops.core.paths import DVC_PLOTS_STAMP
from yolo_mlops.grid import experiments
from yolo_mlops.grid.ranking import RunSummary
from yolo_mlops.grid.resampling import artifact_path, run_replicates
from yolo_mlops.yolo.uncertainty import save_image_stats


def stats_run(client: MlflowClient, exp: str, name: str, folder: Path, status: str = "FINISHED") -> RunSummary:
    """A run with its per-image test statistics logged where the evaluate stage logs them."""
    run_id = log_synthetic_run(client, exp, name, {"test.mAP50-95": 0.5}, {"evaluate.bootstrap": 50}, status=status)
    path = folder / name / artifact_path("test")
    path.parent.mkdir(parents=True)
    save_image_stats(hand_stats([True, False, True, True, False, True]), path)
    client.log_artifact(run_id, str(path), str(Path(artifact_path("test")).parent))
    return RunSummary.from_run(client.get_run(run_id))


class CountedClient:
    """The client, with its artifact downloads counted."""

    def __init__(self, client: MlflowClient) -> None:
        self.client, self.downloads = client, 0

    def download_artifacts(self, *args: object) -> str:
        self.downloads += 1
        return self.client.download_artifacts(*args)


def test_a_finished_runs_replicates_are_kept_and_computed_again_when_their_file_changes(mlflow_store, tmp_path):
    exp = mlflow_store.create_experiment("scale-cache")
    finished = stats_run(mlflow_store, exp, "done", tmp_path)
    cache, counted = tmp_path / "cache", CountedClient(mlflow_store)

    first = run_replicates(counted, [finished], "test", cache)
    assert counted.downloads == 1 and set((cache / finished.run_id).rglob("*.npz"))
    again = run_replicates(counted, [finished], "test", cache)
    assert counted.downloads == 1  # read from the cache
    assert again.keys() == first.keys() == {finished.run_id}
    for metric, values in first[finished.run_id].items():
        np.testing.assert_array_equal(again[finished.run_id][metric], values)

    [kept] = (cache / finished.run_id).rglob("test.npz")
    kept.write_bytes(kept.read_bytes()[:-10])  # damaged: its sha256 no longer matches the record
    repaired = run_replicates(counted, [finished], "test", cache)
    assert counted.downloads == 2
    np.testing.assert_array_equal(repaired[finished.run_id]["mAP50-95"], first[finished.run_id]["mAP50-95"])


def test_a_run_still_running_is_never_cached(mlflow_store, tmp_path):
    exp = mlflow_store.create_experiment("scale-running")
    running = stats_run(mlflow_store, exp, "running", tmp_path, status="RUNNING")
    cache, counted = tmp_path / "cache", CountedClient(mlflow_store)
    for downloads in (1, 2):
        assert running.run_id in run_replicates(counted, [running], "test", cache)
        assert counted.downloads == downloads
    assert not (cache / running.run_id).exists()


def git_repo(root: Path, dvc: bool = False) -> list[str]:
    """A git repository (`dvc`: a DVC project declaring plots.csv a plot) of three commits, tagged c0, c1, c2,
    whose plots.csv changes: their revisions."""
    root.mkdir()
    run(["git", "init", "-q", "-b", "main"], root)
    run(["git", "config", "user.name", "test"], root)
    run(["git", "config", "user.email", "test@example.invalid"], root)
    if dvc:
        run(["dvc", "init", "-q"], root)
        (root / "dvc.yaml").write_text("plots:\n  - plots.csv:\n      x: step\n      y: value\n")
    revs = []
    for index in range(3):
        (root / "plots.csv").write_text("step,value\n" + "".join(f"{step},{step * index}\n" for step in range(3)))
        (root / "empty.txt").write_text("" if index else "once\n")
        run(["git", "add", "-A"], root)
        run(["git", "commit", "-qm", f"commit {index}"], root)
        run(["git", "tag", f"c{index}"], root)
        revs.append(subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                   check=True).stdout.strip())
    return revs


def test_batched_git_reads_equal_one_by_one_reads(tmp_path):
    root = tmp_path / "repo"
    revs = git_repo(root)
    wanted = [(rev, Path(name)) for rev in [*revs, "0" * 40] for name in ("plots.csv", "empty.txt", "none.txt")]
    assert show_many(root, wanted) == [show(root, rev, path) for rev, path in wanted]
    assert show_many(root, wanted)[1] == "once\n" and show_many(root, wanted)[4] == "" and show_many(root, []) == []


def test_dvc_plots_diff_is_skipped_when_the_same_revisions_drew_it_and_run_when_they_change(tmp_path):
    root = tmp_path / "repo"
    revs = git_repo(root, dvc=True)
    output = Path("reports/dvc_plots")
    index_html = root / output / "index.html"

    assert experiments.plots_diff(root, {"c0": revs[0], "c1": revs[1]}, output) is None
    drawn = index_html.stat().st_mtime_ns
    assert json.loads((root / DVC_PLOTS_STAMP).read_text())["revs"] == {"c0": revs[0], "c1": revs[1]}
    assert experiments.plots_diff(root, {"c0": revs[0], "c1": revs[1]}, output) is None
    assert index_html.stat().st_mtime_ns == drawn  # skipped

    assert experiments.plots_diff(root, {"c0": revs[0], "c1": revs[1], "c2": revs[2]}, output) is None
    assert index_html.stat().st_mtime_ns != drawn and "c2" in index_html.read_text()
    drawn = index_html.stat().st_mtime_ns
    index_html.write_text(index_html.read_text() + "<!-- edited -->")  # not what DVC drew: drawn again
    assert experiments.plots_diff(root, {"c0": revs[0], "c1": revs[1], "c2": revs[2]}, output) is None
    assert "edited" not in index_html.read_text()


def queued(project: Path) -> list[tuple[str, dict[str, object], bool]]:
    """Each experiment of `dvc exp show --json`: its name, params (flat) and whether it waits in the queue."""
    listed = experiments.parse_exp_show(json.loads(run(["dvc", "exp", "show", "--json"], project).stdout))
    return sorted((experiment.name, experiment.params, experiment.queued) for experiment in listed)


def test_queue_all_queues_what_one_dvc_command_per_point_queues(tmp_path):
    entries = [("imgsz_64-seed_1", ["-S", "train.imgsz=64", "-S", "train.seed=1"]),
               ("imgsz_96-seed_2", ["-S", "train.imgsz=96", "-S", "train.seed=2"])]
    by_api, by_cli = (copy_project(tmp_path / side, TINY_PARAMS) for side in ("api", "cli"))
    commands = list(experiments.queue_all(by_api, entries))
    for name, set_args in entries:
        run(["dvc", "exp", "run", "--queue", "--name", name, *set_args], by_cli)

    assert [command for command, _ in commands] == [
        ["dvc", "exp", "run", "--queue", "--name", name, *set_args] for name, set_args in entries]
    outputs = [output for _, output in commands]
    assert all(f"Queued experiment '{name}'" in output for (name, _), output in zip(entries, outputs, strict=True))
    assert queued(by_api) == queued(by_cli) and len(queued(by_api)) == 2 and all(q for *_, q in queued(by_api))
    with pytest.raises(PipelineError, match="bad name"):  # DVC's refusal, with its message
        list(experiments.queue_all(by_api, [("bad name", ["-S", "train.seed=3"])]))
