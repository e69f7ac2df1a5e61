"""The grid on DVC's side without running it: grid.yaml and the new params sections, -S arguments,
`dvc exp show --json` parsing, what is left to queue, and the refusal of uncommitted changes."""

import re
from pathlib import Path

import pytest
import yaml
from dvc.exceptions import InvalidArgumentError
from dvc.repo import Repo
from dvc.repo.experiments.refs import ExpRefInfo
from dvc.repo.experiments.utils import check_ref_format

from tests.conftest import COCO128_ZIP, copy_project, free_port, needs_coco128, project_env, run
from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.params import load_params
from yolo_mlops.grid import experiments, points
from yolo_mlops.grid.__main__ import plan_line
from yolo_mlops.grid.commands import Plan
from yolo_mlops.grid.points import load_grid

PROJECT = Path(__file__).resolve().parents[1]
CLOSED_PORT = free_port()  # where no tracking server answers


def write_yaml(path: Path, data: object) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_project_grid_is_the_course_grid():
    grid = load_grid(PROJECT / "grid.yaml", load_params(PROJECT / "params.yaml"))
    assert grid == {"train.imgsz": (320, 416), "train.lr0": (0.005, 0.01), "train.seed": (1, 42), "train.epochs": (3,)}
    assert len(points.combinations(grid)) == 8
    first = points.combinations(grid)[0]
    assert points.set_args(first) == ["-S", "train.imgsz=320", "-S", "train.lr0=0.005", "-S", "train.seed=1",
                                      "-S", "train.epochs=3"]
    assert points.experiment_name("a" * 40, first, {}).startswith("imgsz_320-lr0_0.005-seed_1-epochs_3-")


# Values a user can write in grid.yaml (as YAML reads them: `1e-4` is text to YAML 1.1, `1.0e-4` a float).
AWKWARD_VALUES = {"train.lr0": [0.001, 1.0e-4, "1e-4", -0.5], "train.model": ["yolov8n.yaml", "my models/v1.pt",
                                                                             "../up", "a..b", "x@{y}", "~/m^:?*[\\"]}


def test_experiment_names_say_the_values_and_dvc_accepts_them():
    """One name per point of the grid, readable, and valid to DVC's own check (a git ref, and no "/")."""
    scm, baseline = Repo(str(PROJECT)).scm, "b" * 40
    every = points.combinations({key: tuple(values) for key, values in AWKWARD_VALUES.items()})
    made = [points.experiment_name(baseline, point, {}) for point in every]
    assert len(set(made)) == len(every) == 24
    for name in made:
        check_ref_format(scm, ExpRefInfo(baseline, name))  # raises on a name DVC refuses
    with pytest.raises(InvalidArgumentError):  # the check is no formality: the raw values fail it
        check_ref_format(scm, ExpRefInfo(baseline, "lr0_0.001-model_../up"))
    by_point = dict(zip(map(repr, every), made, strict=True))
    assert by_point[repr({"train.lr0": 0.001, "train.model": "yolov8n.yaml"})].startswith(
        "lr0_0.001-model_yolov8n.yaml-")
    assert by_point[repr({"train.lr0": 1.0e-4, "train.model": "my models/v1.pt"})].startswith(
        "lr0_0.0001-model_my_models_v1.pt-")
    assert by_point[repr({"train.lr0": -0.5, "train.model": "a..b"})].startswith("lr0_-0.5-model_a_.b-")
    assert by_point[repr({"train.lr0": "1e-4", "train.model": "../up"})].startswith("lr0_1e-4-model__._up-")


def test_an_experiment_name_is_the_same_for_a_retry_and_apart_for_anything_else():
    point, baseline = {"train.lr0": 0.005, "train.seed": 1}, "c" * 40
    name = points.experiment_name(baseline, point, {"train.epochs": 1})
    assert name == points.experiment_name(baseline, dict(point), {"train.epochs": 1})  # a point run again
    assert re.fullmatch(r"lr0_0\.005-seed_1-[0-9a-f]{6}", name)
    others = [points.experiment_name("d" * 40, point, {"train.epochs": 1}),  # the same point on another commit
              points.experiment_name(baseline, point, {"train.epochs": 2}),  # other -S values
              points.experiment_name(baseline, {"train.lr0": 0.005, "train.seed": 2}, {"train.epochs": 1})]
    assert len({name, *others}) == 4
    alike = [points.experiment_name(baseline, {"train.model": model}, {}) for model in ("a b", "a_b", "a/b")]
    assert len(set(alike)) == 3 and all(found.startswith("model_a_b-") for found in alike)
    long = points.experiment_name(baseline, {"train.model": "m" * 300}, {})
    assert len(long) == points.NAME_LABEL_CHARS + 1 + points.NAME_DIGEST_CHARS


@pytest.mark.parametrize(("content", "message"), [
    ({"train.nope": [1]}, "'train.nope' is not a single-valued key of params.yaml"),
    ({"evaluate.splits": [["val"]]}, "'evaluate.splits' is not a single-valued key"),
    ({"train.lr0": []}, "train.lr0 must be a non-empty list"),
    ({"train.lr0": 0.01}, "train.lr0 must be a non-empty list"),
    ({"train.lr0": [0.01, 0.01]}, "train.lr0 lists a value twice"),
    ({"train.model": ["a,b.yaml"]}, "must be a number or a text without commas"),
])
def test_bad_grid_is_refused_naming_the_file(tmp_path: Path, content: object, message: str):
    path = write_yaml(tmp_path / "grid.yaml", content)
    with pytest.raises(PipelineError, match=f"{path}: .*{message}"):
        load_grid(path, load_params(PROJECT / "params.yaml"))


def test_a_grid_that_is_not_a_mapping_is_refused(tmp_path: Path):
    path = write_yaml(tmp_path / "grid.yaml", [1, 2])
    with pytest.raises(PipelineError, match="must map params.yaml keys"):
        load_grid(path, load_params(PROJECT / "params.yaml"))


@pytest.mark.parametrize(("section", "key", "value", "message"), [
    ("compare", "rank_by", [], "must list the primary metric"),
    ("compare", "rank_by", ["val.mAP75"], "entries must be split.metric"),
    ("compare", "rank_by", ["train.mAP50"], "entries must be split.metric"),
    ("compare", "rank_by", ["val.recall", "val.recall"], "must list the primary metric, then distinct"),
    ("promote", "registered_model", "bad name!", "must be a name of letters"),
    ("promote", "min_test_recall", 1.5, r"must be in \[0, 1\]"),
    ("promote", "min_margin", "x", "must be of type float"),
    ("promote", "min_confidence", 0.3, r"must be in \[0.5, 1\]: the probability that the challenger beats"),
    ("promote", "min_confidence", 1.5, r"must be in \[0.5, 1\]"),
])
def test_bad_compare_and_promote_params_are_refused(tmp_path: Path, section: str, key: str, value: object,
                                                    message: str):
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params[section][key] = value
    path = write_yaml(tmp_path / "params.yaml", params)
    with pytest.raises(PipelineError, match=f"{section}.{key} {message}"):
        load_params(path)


def test_min_confidence_is_095_when_params_yaml_does_not_set_it(tmp_path: Path):
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    assert load_params(PROJECT / "params.yaml").promote.min_confidence == params["promote"].pop("min_confidence")
    assert load_params(write_yaml(tmp_path / "params.yaml", params)).promote.min_confidence == 0.95


def test_course_params_are_not_experiment_params():
    flat = load_params(PROJECT / "params.yaml").flat()
    assert "train.lr0" in flat and not any(key.startswith(("compare.", "promote.")) for key in flat)


def test_overrides_apply_to_every_experiment_and_cannot_redefine_an_axis():
    params = load_params(PROJECT / "params.yaml")
    grid = {"train.lr0": (0.005, 0.01)}
    extra = points.parse_overrides(["prepare.source=../shared/data/coco128.zip", "train.epochs=1"], grid,
                                        params.flat())
    assert extra == {"prepare.source": "../shared/data/coco128.zip", "train.epochs": 1}
    for bad, message in [("train.lr0=0.1", "is an axis of the grid"), ("nope=1", "expected key=value"),
                         ("train.epochs", "expected key=value"), ("train.seed=1,2", "one value per key")]:
        with pytest.raises(PipelineError, match=message):
            points.parse_overrides([bad], grid, params.flat())


def exp_show_entry(name: str, rev: str, params: dict, metrics: dict | None, failed: bool = False) -> dict:
    data = {"params": {"params.yaml": {"data": params}}}
    if metrics is not None:
        data["metrics"] = {"metrics/eval.json": {"data": metrics}}
    return {"revs": [{"rev": rev, "name": name, "data": data,
                      "error": {"msg": "Experiment run failed", "type": ""} if failed else None}]}


def test_exp_show_parsing_and_what_is_left_to_queue():
    entries = [
        {"rev": "workspace", "experiments": None},
        {"rev": "base1", "experiments": [
            exp_show_entry("ok-exp", "r1", {"train": {"imgsz": 320, "lr0": 0.01}},
                           {"val": {"mAP50-95": 0.4, "note": "x"}, "test": {"recall": 0.5}}),
            exp_show_entry("bad-exp", "r2", {"train": {"imgsz": 100, "lr0": 0.01}}, None, failed=True),
        ]},
    ]
    ok, bad = experiments.parse_exp_show(entries)
    assert (ok.name, ok.rev, ok.baseline_rev, ok.failed) == ("ok-exp", "r1", "base1", False)
    assert ok.params == {"train.imgsz": 320, "train.lr0": 0.01}
    assert ok.metrics == {"val.mAP50-95": 0.4, "test.recall": 0.5}
    assert bad.failed and bad.metrics == {}
    every = points.combinations({"train.imgsz": (100, 320, 416), "train.lr0": (0.01,)})
    assert points.missing_combinations(every, {}, [ok, bad]) == [{"train.imgsz": 416, "train.lr0": 0.01}]
    assert len(points.missing_combinations(every, {"train.epochs": 1}, [ok, bad])) == 3


def test_uncommitted_pipeline_changes_are_refused_before_queueing(tmp_path: Path):
    project = copy_project(tmp_path / "project")
    assert experiments.pipeline_changes(project) == []
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["promote"]["min_margin"] = 0.5  # read from the working tree: allowed
    write_yaml(project / "params.yaml", params)
    (project / "grid.yaml").write_text("train.lr0: [0.1]\n")  # read from the working tree: allowed
    (project / "yolo_mlops" / "grid" / "charts.py").write_text("# changed\n")  # no stage runs the grid: allowed
    assert experiments.pipeline_changes(project) == []
    params["train"]["lr0"] = 0.5
    write_yaml(project / "params.yaml", params)
    (project / "stages" / "train.py").write_text("# changed\n", encoding="utf-8")
    (project / "yolo_mlops" / "core" / "new_module.py").write_text("", encoding="utf-8")  # a package stages use
    assert experiments.pipeline_changes(project) == ["stages/train.py", "yolo_mlops/core/new_module.py",
                                                     "params.yaml (train)"]
    with pytest.raises(PipelineError, match=r"uncommitted pipeline changes: stages/train.py, .*params.yaml "
                                            r"\(train\)\. Every experiment records the last git commit as its code"):
        experiments.refuse_uncommitted(project)
    result = run(["python", "-m", "yolo_mlops.grid", "queue"], project, check=False)
    assert result.returncode == 1 and "error: uncommitted pipeline changes" in result.stderr
    assert "Nothing was queued" in result.stderr
    assert "Queued" not in run(["dvc", "queue", "status"], project).stdout


@pytest.fixture(scope="module")
def bare_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed copy of the project whose embedded MLflow store holds nothing yet."""
    return copy_project(tmp_path_factory.mktemp("bare") / "project")


def course_error(project: Path, command: list[str], env: dict[str, str], message: str) -> str:
    """Run a course command expected to fail with `message`; its stderr, once the common checks hold."""
    result = run(["python", "-m", "yolo_mlops.grid", *command], project, env=project_env(**env),
                 check=False, timeout=120)
    assert result.returncode == 1 and f"error: {message}" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Queued" not in run(["dvc", "queue", "status"], project).stdout
    assert not (project / "mlflow.db").exists()  # a refusal creates no store
    return result.stderr


@pytest.mark.parametrize(("command", "env", "message"), [
    (["compare"], {}, "MLflow store sqlite:///"),
    (["rollback"], {}, "MLflow store sqlite:///"),
    (["compare"], {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{CLOSED_PORT}"},
     f"MLflow tracking server http://127.0.0.1:{CLOSED_PORT} (MLFLOW_TRACKING_URI) is unreachable"),
    (["run", "-S", "train.lr0=0.1"], {}, "-S train.lr0=0.1: train.lr0 is an axis of the grid; change it in grid.yaml"),
], ids=["compare-no-store", "rollback-no-store", "compare-server-down", "run-axis-override"])  # no port in an id
def test_course_errors_are_clear_and_exit_1(bare_project: Path, command: list[str], env: dict[str, str],
                                            message: str):
    course_error(bare_project, command, env, message)


@pytest.mark.parametrize(("command", "message"), [
    (["run", "-S", "train.batch=0"], "experiment train.imgsz=320, train.lr0=0.005, train.seed=1, train.epochs=3, "
                                     "train.batch=0 (grid.yaml and -S): params.yaml: train.batch must be >= 1"),
    (["queue", "-S", "prepare.source=no/such.zip"], "prepare.source: "),
    pytest.param(["queue", "-S", f"prepare.source={COCO128_ZIP}", "-S", "train.model=yolov9000.yaml"],
                 "train.model: unknown model config 'yolov9000.yaml'", marks=needs_coco128),
])
def test_course_errors_while_queueing_say_nothing_was_queued(bare_project: Path, command: list[str], message: str):
    assert "Nothing was queued" in course_error(bare_project, command, {}, message)


def test_a_bad_grid_point_is_refused_before_anything_is_queued(bare_project: Path):
    grid = bare_project / "grid.yaml"
    committed = grid.read_text()
    grid.write_text("train.imgsz: [320, 100]\ntrain.lr0: [0.01]\n")  # read from the working tree
    try:
        result = run(["python", "-m", "yolo_mlops.grid", "queue"], bare_project, check=False, timeout=120)
    finally:
        grid.write_text(committed)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: experiment train.imgsz=100, train.lr0=0.01 (grid.yaml and -S): params.yaml: train.imgsz must be " \
           "a positive multiple of 32 (got 100). Nothing was queued." in result.stderr
    assert "Queued" not in run(["dvc", "queue", "status"], bare_project).stdout


def test_a_bad_grid_yaml_is_refused_before_the_store_or_a_queue_entry_is_created(bare_project: Path):
    grid = bare_project / "grid.yaml"
    committed = grid.read_text()
    grid.write_text("train.nope: [1, 2]\n")  # read from the working tree
    try:
        course_error(bare_project, ["run"], {}, "grid.yaml: 'train.nope' is not a single-valued key of params.yaml")
    finally:
        grid.write_text(committed)


def test_already_run_counts_finished_experiments_only_and_names_the_others():
    """Queued and running experiments have no results yet: the plan line names them, not as already run."""
    def entry(name: str, lr0: float, state: str | None, failed: bool = False) -> dict:
        shown = exp_show_entry(name, name, {"train": {"lr0": lr0}}, None, failed=failed)
        if state:
            shown["executor"] = {"state": state, "local": {"pid": 2**22 + 1, "root": "/nowhere"}}
        return shown

    entries = [{"rev": "base", "experiments": [entry("done-exp", 0.1, None), entry("bad-exp", 0.2, None, True),
                                                entry("busy-exp", 0.3, "running"), entry("wait-exp", 0.4, "queued")]}]
    listed = experiments.parse_exp_show(entries)
    busy = next(experiment for experiment in listed if experiment.name == "busy-exp")
    assert busy.running and busy.queued and busy.stale  # its process is gone: the next driver repairs it
    grid = {"train.lr0": (0.1, 0.2, 0.3, 0.4, 0.5)}
    every = points.combinations(grid)
    plan = Plan("b" * 40, {}, every, points.missing_combinations(every, {}, listed), listed)
    assert plan_line(plan, "queue") == ("grid: 5 experiment(s), 1 already run, 1 failed (bad-exp), 1 running "
                                        "(busy-exp), 1 queued (wait-exp) from commit bbbbbbb, 1 to queue")
