"""dvc.yaml and the code agree: every stage depends on each package its entry point imports (changing
one re-runs the stage, as a user of DVC expects), no stage imports the grid, and the outputs dvc.yaml
declares are exactly the paths of yolo_mlops/core/paths.py."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT
from yolo_mlops.core import paths
from yolo_mlops.core.paths import STAGE_OUTPUTS

STAGES = ("prepare", "train", "evaluate", "log")
DVC_YAML = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def imported_modules(stage: str) -> set[str]:
    """The project modules `python -m stages.<stage>` imports."""
    return set(subprocess.run(
        [sys.executable, "-c", f"import sys, stages.{stage}; "
                               "print('\\n'.join(m for m in sys.modules if m.startswith(('stages.', 'yolo_mlops.'))))"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True,
    ).stdout.split())


@pytest.mark.parametrize("stage", STAGES)
def test_every_imported_package_is_a_dependency(stage: str) -> None:
    packages = {"/".join(name.split(".")[:2]) for name in imported_modules(stage) if name.startswith("yolo_mlops.")}
    declared = set(DVC_YAML[stage]["deps"])
    assert packages - declared == set(), f"dvc.yaml stage {stage} misses {sorted(packages - declared)}"
    assert f"stages/{stage}.py" in declared
    code = {dep for dep in declared if dep.startswith(("stages/", "yolo_mlops/"))}
    assert code == packages | {f"stages/{stage}.py"}, f"dvc.yaml stage {stage} depends on code it does not import"


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_the_grid(stage: str) -> None:
    assert not {name for name in imported_modules(stage) if name.startswith("yolo_mlops.grid")}


def imports(module: Path) -> set[str]:
    """Every module name an `import` or `from ... import` of this file names."""
    names = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def test_no_package_of_the_stages_imports_the_grid() -> None:
    modules = [module for package in ("core", "data", "yolo", "tracking")
               for module in (PROJECT_ROOT / "yolo_mlops" / package).glob("*.py")]
    modules += list((PROJECT_ROOT / "stages").glob("*.py"))
    assert len(modules) > 20
    for module in modules:
        grid = {name for name in imports(module) if name.startswith("yolo_mlops.grid")}
        assert not grid, f"{module} imports {sorted(grid)}"


def test_data_dependencies_are_paths_of_the_code() -> None:
    known = {value for value in vars(paths).values() if isinstance(value, Path)}
    for stage, spec in DVC_YAML.items():
        data = {Path(dep) for dep in spec.get("deps", []) if not dep.startswith(("stages/", "yolo_mlops/"))}
        assert data <= known, f"dvc.yaml stage {stage} depends on {sorted(map(str, data - known))}"


def declared_paths(stage: dict, kind: str) -> tuple[Path, ...]:
    return tuple(Path(next(iter(out)) if isinstance(out, dict) else out) for out in stage.get(kind, []))


@pytest.mark.parametrize("stage", STAGES)
def test_outputs_metrics_and_plots_are_the_paths_of_the_code(stage: str) -> None:
    for kind in ("outs", "metrics", "plots"):
        assert declared_paths(DVC_YAML[stage], kind) == STAGE_OUTPUTS[stage].get(kind, ()), f"{stage} {kind}"
    assert set(DVC_YAML) == set(STAGE_OUTPUTS)


def test_top_level_plots_are_files_the_evaluate_stage_writes() -> None:
    from yolo_mlops.core.paths import PLOTS_RESULTS, PR_CURVE_CSV, split_plots
    from yolo_mlops.core.vocabulary import SPLITS
    from yolo_mlops.yolo.evaluate import PLOT_NAMES

    written = {PLOTS_RESULTS} | {split_plots(split) / name for split in SPLITS
                                 for name in (PR_CURVE_CSV, *PLOT_NAMES.values())}
    plots = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["plots"]
    paths = set()
    for plot in plots:
        name, spec = next(iter(plot.items())) if isinstance(plot, dict) else (plot, None)
        paths |= {Path(path) for path in spec["y"]} if spec else {Path(name)}
    assert paths and paths <= written, sorted(map(str, paths - written))


def test_artifacts_are_the_model_and_the_dataset_under_the_names_mlflow_uses() -> None:
    from dvc.repo import Repo

    from yolo_mlops.core.params import load_params

    with Repo(str(PROJECT_ROOT)) as repo:
        artifacts = repo.artifacts.read()["dvc.yaml"]  # DVC's own reading, schema included
    by_type = {artifact.type: (name, Path(artifact.path)) for name, artifact in artifacts.items()}
    registered_model = load_params(PROJECT_ROOT / paths.PARAMS_FILE).promote.registered_model
    assert by_type == {"model": (registered_model, paths.BEST_WEIGHTS),
                       "dataset": (paths.DATASET_DIR.name, paths.DATASET_DIR)}
    for artifact in artifacts.values():
        assert artifact.desc and artifact.labels
