"""dvc.yaml's `artifacts:` as DVC's own tools read them, on a real pipeline run: a registered version of the model
and of the dataset comes back through `dvc artifacts get` from a bare git repository and a DVC remote (nothing from
the project's cache), `dvc ls` lists them, and declaring them changes no stage's status."""

import filecmp
import json
from pathlib import Path

import yaml

from tests.conftest import run
from tests.stack import Offline, copy_results
from yolo_mlops.core.paths import BEST_WEIGHTS, DATASET_DIR, DVC_YAML

MODEL, DATASET = "yolo_tiny_person", DATASET_DIR.name


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def test_the_model_and_the_dataset_come_back_through_dvc_artifacts_get(
        offline_results: Offline, tmp_path: Path) -> None:
    project = copy_results(offline_results.project, tmp_path / "project")
    # prepare, train and evaluate ran (the log stage failed: no tracking server); without `artifacts:` their
    # status is the same: the declarations are no part of any stage.
    status = json.loads(run(["dvc", "status", "--json"], project).stdout)
    assert {"prepare", "train", "evaluate"}.isdisjoint(status), status
    declared = yaml.safe_load((project / DVC_YAML).read_text())
    (project / DVC_YAML).write_text(yaml.safe_dump({k: v for k, v in declared.items() if k != "artifacts"}))
    assert json.loads(run(["dvc", "status", "--json"], project).stdout) == status
    run(["git", "checkout", "--", str(DVC_YAML)], project)

    # The team's way: outputs pushed to a DVC remote, dvc.lock committed, a version registered as a git tag in
    # GTO's format (what `gto register` writes), the repository pushed.
    remote, origin, got = tmp_path / "dvc-remote", tmp_path / "origin.git", tmp_path / "got"
    run(["dvc", "remote", "add", "--default", "team", str(remote)], project)
    run(["dvc", "push"], project)
    run(["git", "add", "dvc.lock", ".dvc/config"], project)
    run(["git", "commit", "-qm", "results"], project)
    for name in (MODEL, DATASET):
        run(["git", "tag", "-a", f"{name}@v1.0.0", "-m", f"Registering artifact {name} version v1.0.0"], project)
    run(["git", "clone", "-q", "--bare", str(project), str(origin)], tmp_path)
    got.mkdir()

    result = run(["dvc", "artifacts", "get", str(origin), MODEL, "-o", "best.pt"], got)
    assert "Downloaded 1 file(s)" in result.stdout + result.stderr
    assert filecmp.cmp(got / "best.pt", project / BEST_WEIGHTS, shallow=False)
    run(["dvc", "artifacts", "get", str(origin), MODEL, "--rev", "v1.0.0", "-o", "v1.pt"], got)
    assert filecmp.cmp(got / "v1.pt", project / BEST_WEIGHTS, shallow=False)
    run(["dvc", "artifacts", "get", str(origin), DATASET, "-o", DATASET], got)
    assert files_under(got / DATASET) == files_under(project / DATASET_DIR)
    assert any(name.startswith("images/test/") for name in files_under(got / DATASET))

    listed = {entry["path"]: entry for entry in json.loads(
        run(["dvc", "ls", "--json", "--dvc-only", str(origin), str(BEST_WEIGHTS.parent)], tmp_path).stdout)}
    assert BEST_WEIGHTS.name in listed
    datasets = json.loads(run(["dvc", "ls", "--json", str(origin), str(DATASET_DIR.parent)], tmp_path).stdout)
    assert {entry["path"]: entry["isout"] for entry in datasets}.get(DATASET_DIR.name) is True

    # Without a registered version there is nothing to get, and DVC says so.
    result = run(["dvc", "artifacts", "get", str(origin), MODEL, "--rev", "v9.9.9", "-o", "v9.pt"], got, check=False)
    assert result.returncode != 0 and not (got / "v9.pt").exists()
