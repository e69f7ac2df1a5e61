"""The grid's points: grid.yaml's axes, their combinations, the -S values given for every point,
and which points this commit has not run yet."""

import itertools
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


def matches(experiment: DvcExperiment, wanted: dict[str, Any]) -> bool:
    return all(experiment.params.get(key) == value for key, value in wanted.items())


def missing_combinations(points: list[dict[str, Any]], overrides: dict[str, Any],
                         experiments: list[DvcExperiment]) -> list[dict[str, Any]]:
    """The grid points no experiment of this commit has run yet (a failed one counts as run: it is
    reported, not retried; `dvc exp remove <name>` lets the next queueing retry it)."""
    return [point for point in points if not any(matches(exp, point | overrides) for exp in experiments)]


def set_args(values: dict[str, Any]) -> list[str]:
    """DVC's `-S key=value` arguments (a tuple of values becomes DVC's grid syntax `key=a,b`)."""
    args = []
    for key, value in values.items():
        listed = value if isinstance(value, tuple) else (value,)
        args += ["-S", f"{key}=" + ",".join(_yaml_scalar(item) for item in listed)]
    return args


def _yaml_scalar(value: Any) -> str:
    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).removesuffix(
        "\n...\n").strip()
