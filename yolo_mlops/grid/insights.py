"""What the numbers of a comparison say: each factor's effect averaged over the others, the seed
spread of each configuration, and whether the winner's margin is within that spread."""

import statistics
from collections import defaultdict
from dataclasses import dataclass

from yolo_mlops.grid.ranking import CONFIG_PARAMS, Comparison


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
