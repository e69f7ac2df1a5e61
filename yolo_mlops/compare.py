"""Side-by-side comparison of a grid's MLflow runs: server-side selection, the ranked table,
MLflow's CSV export, and insights computed from the numbers (factor effects, seed spread)."""

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Run

from yolo_mlops.atomic import atomic_file
from yolo_mlops.errors import PipelineError
from yolo_mlops.sync import BASELINE_TAG, ERROR_TAG, EXP_NAME_TAG

SEED = "train.seed"
TABLE_PARAMS = ("train.epochs", "train.imgsz", "train.lr0", "train.seed")
TABLE_METRICS = ("mAP50-95", "mAP50", "precision", "recall")
# Params that tell configurations apart (the seed is what varies within one configuration).
CONFIG_PARAMS = ("train.model", "train.epochs", "train.imgsz", "train.lr0", "train.batch", "train.optimizer",
                 "prepare.source", "prepare.seed")


def mlflow_metric(name: str) -> str:
    """`val.mAP50-95` (metrics/eval.json, `dvc exp show`) → `evaluate/val_mAP50-95` (the MLflow run)."""
    split, metric = name.split(".", 1)
    return f"evaluate/{split}_{metric}"


@dataclass(frozen=True)
class RunSummary:
    """What the comparison needs of one MLflow run."""

    run_id: str
    name: str
    status: str
    params: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)  # `split.metric` (evaluate), `data.<name>` (prepare)
    error: str = ""

    @classmethod
    def from_run(cls, run: Run) -> "RunSummary":
        metrics = {}
        for key, value in run.data.metrics.items():
            stage, _, name = key.partition("/")
            if stage in ("evaluate", "prepare") and "_" in name:
                split, metric = name.split("_", 1)  # evaluate/val_mAP50 → val.mAP50, prepare/test_images
                metrics[f"{split}.{metric}" if stage == "evaluate" else f"data.{name}"] = value
        return cls(run.info.run_id, run.data.tags.get(EXP_NAME_TAG) or run.info.run_name, run.info.status,
                   dict(run.data.params), metrics, run.data.tags.get(ERROR_TAG, ""))

    def config(self) -> tuple[tuple[str, str], ...]:
        return tuple((key, self.params[key]) for key in CONFIG_PARAMS if key in self.params)


@dataclass(frozen=True)
class Comparison:
    rank_by: tuple[str, ...]
    ranked: list[RunSummary]  # best first
    excluded: list[tuple[RunSummary, str]]  # run, why it is not ranked

    @property
    def primary(self) -> str:
        return self.rank_by[0]

    def tied_with_winner(self) -> list[RunSummary]:
        """The runs equal to the winner on every ranking metric (the winner included)."""
        best = self.ranked[0]
        return [run for run in self.ranked if all(run.metrics[m] == best.metrics[m] for m in self.rank_by)]


def grid_filter(baseline_rev: str) -> str:
    """The experiments DVC ran from one commit (workspace runs of `dvc repro` are not experiments)."""
    return f"tags.`{BASELINE_TAG}` = '{baseline_rev}' and tags.`{EXP_NAME_TAG}` != 'workspace'"


def order_by(rank_by: tuple[str, ...]) -> list[str]:
    """Best first: each ranking metric descending, then the run name (a stable last resort)."""
    return [f"metrics.`{mlflow_metric(name)}` DESC" for name in rank_by] + ["attributes.run_name ASC"]


def experiment_id(client: MlflowClient, experiment_name: str) -> str:
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None or experiment.lifecycle_stage == "deleted":
        raise PipelineError(
            f"mlflow.experiment_name: no MLflow experiment {experiment_name!r} at {mlflow.get_tracking_uri()}; "
            "run the grid first (make run)"
        )
    return experiment.experiment_id


def select_best(client: MlflowClient, experiment_ids: list[str], baseline_rev: str,
                rank_by: tuple[str, ...]) -> RunSummary | None:
    """The best finished run with every ranking metric, filtered and ordered by the tracking server
    (a NaN or missing metric fails the server's numeric filter)."""
    metrics = " and ".join(f"metrics.`{mlflow_metric(name)}` >= 0" for name in rank_by)
    runs = client.search_runs(
        experiment_ids, filter_string=f"{grid_filter(baseline_rev)} and attributes.status = 'FINISHED' and {metrics}",
        order_by=order_by(rank_by), max_results=1,
    )
    return RunSummary.from_run(runs[0]) if runs else None


def retried(failed: RunSummary, runs: list[RunSummary]) -> bool:
    """True when a finished run has every param of this failed one: the point was run again and passed."""
    return bool(failed.params) and any(
        run.status == "FINISHED" and all(run.params.get(key) == value for key, value in failed.params.items())
        for run in runs
    )


def partition(runs: list[RunSummary], rank_by: tuple[str, ...]) -> Comparison:
    """Keep the server's order; set aside the runs that cannot be ranked, with the reason (a failed
    run whose point was retried successfully is left out: it is history, kept in MLflow)."""
    ranked, excluded = [], []
    for run in runs:
        if run.status == "FAILED" and retried(run, runs):
            continue
        missing = [name for name in rank_by if name not in run.metrics]
        nan = [name for name in rank_by if name in run.metrics and math.isnan(run.metrics[name])]
        if run.status == "FAILED":
            excluded.append((run, f"FAILED: {run.error or 'see the run in MLflow'}"))
        elif run.status != "FINISHED":
            excluded.append((run, f"{run.status}: its log stage did not finish"))
        elif missing:
            excluded.append((run, f"no metric {', '.join(missing)}"))
        elif nan:
            excluded.append((run, f"NaN {', '.join(nan)}"))
        else:
            ranked.append(run)
    return Comparison(rank_by, ranked, excluded)


def compare(client: MlflowClient, experiment_ids: list[str], baseline_rev: str, rank_by: tuple[str, ...]) -> Comparison:
    """Every run of the grid, best first; fails when there is nothing to rank."""
    runs = [RunSummary.from_run(run) for run in client.search_runs(
        experiment_ids, filter_string=grid_filter(baseline_rev), order_by=order_by(rank_by), max_results=10_000)]
    if not runs:
        raise PipelineError(
            f"no MLflow run of a DVC experiment from commit {baseline_rev[:7]} in the experiment; run the grid "
            "first (make run), or check MLFLOW_TRACKING_URI and mlflow.experiment_name"
        )
    comparison = partition(runs, rank_by)
    if not comparison.ranked:
        reasons = "; ".join(f"{run.name}: {why}" for run, why in comparison.excluded)
        raise PipelineError(f"none of the {len(runs)} run(s) can be ranked by {', '.join(rank_by)} ({reasons})")
    return comparison


def export_csv(experiment_ids: list[str], baseline_rev: str, rank_by: tuple[str, ...], target: Path) -> None:
    """The grid's runs in MLflow's own CSV export format (`mlflow experiments csv`), best first."""
    frame = mlflow.search_runs(experiment_ids, filter_string=grid_filter(baseline_rev), order_by=order_by(rank_by),
                               max_results=10_000)
    with atomic_file(target) as staging:
        frame.to_csv(staging, index=False)


def _number(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.4f}"


def table(comparison: Comparison) -> str:
    """The ranked runs as a Markdown table (val ranks, test alongside); unranked runs listed after."""
    header = ["#", "run", "epochs", "imgsz", "lr0", "seed"] + [f"val {m}" for m in TABLE_METRICS] + [
        f"test {m}" for m in TABLE_METRICS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, run in enumerate(comparison.ranked, start=1):
        cells = [str(rank), run.name] + [run.params.get(key, "") for key in TABLE_PARAMS]
        cells += [_number(run.metrics.get(f"{split}.{m}", math.nan))
                  for split in ("val", "test") for m in TABLE_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    for run, why in comparison.excluded:
        cells = ["–", run.name] + [run.params.get(key, "") for key in TABLE_PARAMS] + [why] + [""] * 7
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass(frozen=True)
class SeedSpread:
    config: tuple[tuple[str, str], ...]
    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0

    @property
    def range(self) -> float:
        return max(self.values) - min(self.values)

    def label(self, varying: list[str]) -> str:
        values = dict(self.config)
        return ", ".join(f"{key.split('.')[-1]}={values[key]}" for key in varying) or "all runs"


@dataclass(frozen=True)
class FactorEffect:
    factor: str
    level: str
    baseline_level: str
    mean: float
    baseline_mean: float
    runs: int

    @property
    def relative(self) -> float | None:
        return (self.mean - self.baseline_mean) / self.baseline_mean if self.baseline_mean else None

    def sentence(self, metric: str) -> str:
        name = self.factor.split(".")[-1]
        change = f"{self.relative:+.1%}" if self.relative is not None else f"{self.mean - self.baseline_mean:+.4f}"
        return (f"{name} {self.level} vs {self.baseline_level}: {change} {metric} "
                f"({self.mean:.4f} vs {self.baseline_mean:.4f}, mean of {self.runs} run(s) each)")


@dataclass(frozen=True)
class Insights:
    metric: str
    varying: list[str]  # the configuration params that differ between runs
    effects: list[FactorEffect]
    spreads: list[SeedSpread]
    margin: float | None  # winner − runner-up on the primary metric
    seed_std: float  # typical seed spread: mean std of the configurations run with several seeds
    tie: bool

    @property
    def margin_within_noise(self) -> bool:
        return self.margin is not None and self.seed_std > 0 and self.margin < self.seed_std

    def lines(self) -> list[str]:
        lines = [effect.sentence(self.metric) for effect in self.effects]
        lines += [f"seed spread, {spread.label(self.varying)}: {self.metric} {spread.mean:.4f} ± {spread.std:.4f} "
                  f"(range {spread.range:.4f}, {len(spread.values)} seed(s))" for spread in self.spreads]
        if self.tie:
            lines.append("TIE: the best runs are equal on every ranking metric; the tie-breaks (and then the run "
                         "name) decided")
        if self.margin_within_noise:
            lines.append(f"WARNING: the winner's margin over the runner-up ({self.margin:.4f} {self.metric}) is "
                         f"smaller than the seed spread (std {self.seed_std:.4f}): the ranking may be noise")
        return lines


def _sort_key(level: str) -> tuple[int, float | str]:
    try:
        return (0, float(level))
    except ValueError:
        return (1, level)


def insights(comparison: Comparison) -> Insights:
    """Factor effects averaged over the other factors, seed spread per configuration, margin vs spread."""
    runs, metric = comparison.ranked, comparison.primary
    varying = [key for key in CONFIG_PARAMS if len({run.params.get(key) for run in runs}) > 1]
    effects = []
    for factor in varying:
        by_level: dict[str, list[float]] = defaultdict(list)
        for run in runs:
            by_level[run.params[factor]].append(run.metrics[metric])
        levels = sorted(by_level, key=_sort_key)
        base = levels[0]
        effects += [FactorEffect(factor, level, base, statistics.fmean(by_level[level]),
                                 statistics.fmean(by_level[base]), len(by_level[level])) for level in levels[1:]]
    groups: dict[tuple[tuple[str, str], ...], list[float]] = defaultdict(list)
    for run in runs:
        groups[run.config()].append(run.metrics[metric])
    spreads = [SeedSpread(config, tuple(values)) for config, values in groups.items()]
    spreads.sort(key=lambda spread: -spread.mean)
    several = [spread.std for spread in spreads if len(spread.values) > 1]
    margin = runs[0].metrics[metric] - runs[1].metrics[metric] if len(runs) > 1 else None
    tie = len(comparison.tied_with_winner()) > 1
    return Insights(metric, varying, effects, spreads, margin, statistics.fmean(several) if several else 0.0, tie)
