"""The grid's points: grid.yaml's axes, their combinations, the -S values given for every point,
each point's DVC experiment name, and which points this commit has not run yet."""

import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any

import yaml

from yolo_mlops.core.errors import PipelineError
from yolo_mlops.core.params import Params, load_params, read_yaml
from yolo_mlops.core.paths import GRID_FILE
from yolo_mlops.grid.experiments import DvcExperiment


def load_grid(path: Path = GRID_FILE, params: Params | None = None) -> dict[str, tuple[Any, ...]]:
    """The experiment grid: params.yaml key → the values to try (every combination is one experiment).

    Only the shape is checked here; a value a stage refuses makes that experiment fail, visibly."""
    raw = read_yaml(path)
    if not isinstance(raw, dict) or not raw:
        raise PipelineError(f"{path}: must map params.yaml keys (e.g. train.imgsz) to lists of values")
    known = (params or load_params()).flat()
    grid: dict[str, tuple[Any, ...]] = {}
    for key, values in raw.items():
        if key not in known or isinstance(known[key], list):
            raise PipelineError(f"{path}: {key!r} is not a single-valued key of params.yaml (e.g. train.lr0)")
        if not isinstance(values, list) or not values:
            raise PipelineError(f"{path}: {key} must be a non-empty list of values (got {values!r})")
        for value in values:
            if not isinstance(value, str | int | float) or (isinstance(value, str) and ("," in value or not value)):
                raise PipelineError(f"{path}: {key} value {value!r} must be a number or a text without commas")
        if len(set(values)) != len(values):
            raise PipelineError(f"{path}: {key} lists a value twice ({values!r})")
        grid[key] = tuple(values)
    return grid


def parse_overrides(overrides: list[str], grid: dict[str, tuple[Any, ...]], known: dict[str, Any]) -> dict[str, Any]:
    """`key=value` (DVC's -S syntax) → {key: value parsed as YAML, as DVC does}, for every experiment."""
    parsed: dict[str, Any] = {}
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or key not in known:
            raise PipelineError(f"-S {override}: expected key=value with a params.yaml key such as train.model")
        if key in grid:
            raise PipelineError(f"-S {override}: {key} is an axis of the grid; change it in grid.yaml instead")
        if "," in text:
            raise PipelineError(f"-S {override}: one value per key (the grid's axes are in grid.yaml)")
        parsed[key] = yaml.safe_load(text)
    return parsed


def combinations(grid: dict[str, tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Every point of the grid, in the order DVC expands `-S key=a,b`."""
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


# What git refuses in a ref name (DVC's names are refs, refs/exps/<baseline>/<name>, and DVC refuses a "/" too),
# turned into "_": every character but letters, digits, "_", "." and "-", and a "." before another (no "..").
NAME_REFUSED = re.compile(r"[^A-Za-z0-9_.-]+|\.(?=\.)")
NAME_LABEL_CHARS = 80  # the readable part of a name; the digest after it keeps names apart
NAME_DIGEST_CHARS = 6


def experiment_name(baseline: str, point: dict[str, Any], overrides: dict[str, Any]) -> str:
    """The DVC experiment name of a grid point, on DVC's local queue and on Ray alike: its values, readable
    (`lr0_0.005-seed_1`), then a short hash of the baseline, point and -S values (`-3f2a1c`). The same point of
    the same commit always gets the same name, so a point run again (after an interrupt, a failure removed
    with `dvc exp remove`, a dead Ray node) keeps its name; two points, or one point on two commits, never
    share one, even where their values read alike once made valid (`a b` and `a_b`)."""
    label = "-".join(f"{key.rsplit('.', 1)[-1]}_{value}" for key, value in point.items())
    digest = hashlib.sha256(json.dumps([baseline, point, overrides], sort_keys=True, default=str).encode())
    return NAME_REFUSED.sub("_", label)[:NAME_LABEL_CHARS] + "-" + digest.hexdigest()[:NAME_DIGEST_CHARS]


def matches(experiment: DvcExperiment, wanted: dict[str, Any]) -> bool:
    return all(experiment.params.get(key) == value for key, value in wanted.items())


def missing_combinations(points: list[dict[str, Any]], overrides: dict[str, Any],
                         experiments: list[DvcExperiment]) -> list[dict[str, Any]]:
    """The grid points no experiment of this commit has run yet (a failed one counts as run: it is
    reported, not retried; `dvc exp remove <name>` lets the next queueing retry it)."""
    return [point for point in points if not any(matches(exp, point | overrides) for exp in experiments)]


def set_args(values: dict[str, Any]) -> list[str]:
    """DVC's `-S key=value` arguments of one point (values as YAML reads them back)."""
    return [arg for key, value in values.items() for arg in ("-S", f"{key}={_yaml_scalar(value)}")]


def _yaml_scalar(value: Any) -> str:
    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).removesuffix(
        "\n...\n").strip()
