"""dvc.yaml declares, for every stage, each project module its entry point imports: changing one
re-runs the stage (and changes the experiment's fingerprint), as a user of DVC expects."""

import subprocess
import sys

import pytest
import yaml

from yolo_mlops.paths import project_root

STAGES = ("prepare", "train", "evaluate", "log")


@pytest.mark.parametrize("stage", STAGES)
def test_every_imported_module_is_a_dependency(stage: str) -> None:
    imported = subprocess.run(
        [sys.executable, "-c", f"import sys, stages.{stage}; "
                               "print('\\n'.join(m for m in sys.modules if m.startswith(('stages.', 'yolo_mlops.'))))"],
        cwd=project_root(), capture_output=True, text=True, check=True,
    ).stdout.split()
    modules = {name.replace(".", "/") + ".py" for name in imported if not name.endswith(".__init__")}
    modules -= {"stages/__init__.py", "yolo_mlops/__init__.py"}
    declared = set(yaml.safe_load((project_root() / "dvc.yaml").read_text())["stages"][stage]["deps"])
    assert modules - declared == set(), f"dvc.yaml stage {stage} misses {sorted(modules - declared)}"
    assert f"stages/{stage}.py" in declared
