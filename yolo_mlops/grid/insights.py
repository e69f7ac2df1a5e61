"""What the numbers of a comparison say: each factor's effect averaged over the others, with its 95 %
interval from resampling the images within each run, the seed spread of each configuration beside its
test-set interval, and whether the winner's margin is within the seed spread."""

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from yolo_mlops.grid.ranking import CONFIG_PARAMS, Comparison, RunSummary
from yolo_mlops.yolo.uncertainty import interval

Replicates = dict[str, dict[str, np.ndarray]]  # run id → metric (`mAP50-95`) → its bootstrap replicates


@dataclass(frozen=True)
class SeedSpread:
    config: tuple[tuple[str, str], ...]
    values: tuple[float, ...]
    test: tuple[float, float, float] | None = None  # test metric, its 95 % interval over the images: seeds' mean

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
    difference: tuple[float, float] | None = None  # 95 % interval of mean − baseline_mean over the images
    resampled: int | None = None  # runs (of both levels) whose images were resampled, when not all of them

    @property
    def relative(self) -> float | None:
        return (self.mean - self.baseline_mean) / self.baseline_mean if self.baseline_mean else None

    @property
    def includes_zero(self) -> bool:
        return self.difference is not None and self.difference[0] <= 0 <= self.difference[1]

    def _change(self, value: float) -> str:
        return f"{value / self.baseline_mean:+.1%}" if self.relative is not None else f"{value:+.4f}"

    def sentence(self, metric: str) -> str:
        """The effect with its interval (never a bare "+19 %"), and what an interval including 0 means."""
        name = self.factor.split(".")[-1]
        split = metric.split(".")[0]
        if self.difference is None:
            spread = "no interval: the runs logged no per-image statistics to resample"
        else:
            spread = (f"95 % interval {self._change(self.difference[0])} to {self._change(self.difference[1])} "
                      f"from resampling the {split} images"
                      + (f" of the {self.resampled} run(s) that logged per-image statistics"
                         if self.resampled is not None else ""))
        text = (f"{name} {self.level} vs {self.baseline_level}: {self._change(self.mean - self.baseline_mean)} "
                f"{metric}, {spread} ({self.mean:.4f} vs {self.baseline_mean:.4f}, mean of {self.runs} run(s) each)")
        if self.includes_zero:
            text += (f"; the interval includes 0: these {split} images cannot tell whether {name} {self.level} "
                     f"is better or worse than {self.baseline_level}")
        return text


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


def mean_replicates(runs: list[RunSummary], replicates: Replicates, metric: str) -> np.ndarray | None:
    """The mean of the runs with replicates of `metric`, resample by resample (the runs' images are resampled
    alike); None when none has them, or they were drawn with different numbers of resamples."""
    values = [found for run in runs if (found := replicates.get(run.run_id, {}).get(metric)) is not None]
    if not values or len({len(value) for value in values}) != 1:
        return None
    return np.mean(np.stack(values), axis=0)


def effect_interval(level: list[RunSummary], base: list[RunSummary], replicates: Replicates,
                    metric: str) -> tuple[float, float] | None:
    """95 % interval of (mean over the level's runs) − (mean over the baseline level's runs), from each run's
    replicates over the images: the difference of the two means, resample by resample (over the runs that
    logged per-image statistics)."""
    ours, theirs = mean_replicates(level, replicates, metric), mean_replicates(base, replicates, metric)
    if ours is None or theirs is None or len(ours) != len(theirs):
        return None
    return interval(ours - theirs)


def images_interval(runs: list[RunSummary], metric: str) -> tuple[float, float, float] | None:
    """The runs' `metric` and its interval bounds (`<metric>_low`, `_high`), each averaged over the runs."""
    triples = [run.interval(metric) for run in runs]
    if any(math.isnan(value) for triple in triples for value in triple):
        return None
    means = tuple(statistics.fmean(triple[index] for triple in triples) for index in range(3))
    return means[0], means[1], means[2]


def insights(comparison: Comparison, replicates: Replicates | None = None) -> Insights:
    """Factor effects averaged over the other factors (with intervals when `replicates` holds the runs' bootstrap
    replicates over the images of the primary metric's split), seed spread and test-set interval per
    configuration, margin vs spread."""
    runs, metric = comparison.ranked, comparison.primary
    resampled, measured = replicates or {}, metric.split(".", 1)[1]
    varying = [key for key in CONFIG_PARAMS if len({run.params.get(key) for run in runs}) > 1]
    effects = []
    for factor in varying:
        by_level: dict[str, list[RunSummary]] = defaultdict(list)
        for run in runs:
            by_level[run.params[factor]].append(run)
        levels = sorted(by_level, key=_sort_key)
        base = levels[0]
        effects += [FactorEffect(factor, level, base, _mean(by_level[level], metric), _mean(by_level[base], metric),
                                 len(by_level[level]),
                                 effect_interval(by_level[level], by_level[base], resampled, measured),
                                 _partly(by_level[level] + by_level[base], resampled, measured))
                    for level in levels[1:]]
    groups: dict[tuple[tuple[str, str], ...], list[RunSummary]] = defaultdict(list)
    for run in runs:
        groups[run.config()].append(run)
    tested = f"test.{measured}"
    spreads = [SeedSpread(config, tuple(run.metrics[metric] for run in members), images_interval(members, tested))
               for config, members in groups.items()]
    spreads.sort(key=lambda spread: -spread.mean)
    several = [spread.std for spread in spreads if len(spread.values) > 1]
    margin = runs[0].metrics[metric] - runs[1].metrics[metric] if len(runs) > 1 else None
    tie = len(comparison.tied_with_winner()) > 1
    return Insights(metric, varying, effects, spreads, margin, statistics.fmean(several) if several else 0.0, tie)


def _partly(runs: list[RunSummary], replicates: Replicates, metric: str) -> int | None:
    """How many of `runs` have replicates of `metric`, when some but not all do."""
    count = sum(metric in replicates.get(run.run_id, {}) for run in runs)
    return count if 0 < count < len(runs) else None


def _mean(runs: list[RunSummary], metric: str) -> float:
    return statistics.fmean(run.metrics[metric] for run in runs)
