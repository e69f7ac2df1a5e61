"""The comparison's charts as PNG: the primary metric by configuration (seed spread as error bars
and dots, the test-set interval beside it), and the per-epoch curves of the runs (the best named, the others
drawn lightly)."""

from pathlib import Path
from typing import Any

from yolo_mlops.core.atomic import atomic_file
from yolo_mlops.grid.insights import Insights


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def config_chart(insights: Insights, target: Path) -> None:
    """Each configuration's seed spread of the primary metric (bar: mean ± std, dots: one seed each) and, beside
    it, its test-set 95 % interval over the images (the seeds' mean bounds), when the runs record one."""
    plt = _pyplot()
    spreads = insights.spreads
    labels = [spread.label(insights.varying).replace(", ", "\n") for spread in spreads]
    figure, axes = plt.subplots(figsize=(max(6.0, 1.3 * len(spreads)), 4.5))
    positions = range(len(spreads))
    tested = [(position, spread.test) for position, spread in zip(positions, spreads, strict=True) if spread.test]
    width = 0.4 if tested else 0.8
    shift = width / 2 if tested else 0.0
    bars = [position - shift for position in positions]
    axes.bar(bars, [s.mean for s in spreads], width=width, yerr=[s.std for s in spreads], capsize=4,
             color="#4c72b0", alpha=0.7, label=f"{insights.metric}: mean ± std over seeds")
    for position, spread in zip(bars, spreads, strict=True):
        axes.scatter([position] * len(spread.values), spread.values, color="black", s=14, zorder=3)
    if tested:
        points = [test[0] for _, test in tested]
        below = [test[0] - test[1] for _, test in tested]
        above = [test[2] - test[0] for _, test in tested]
        test_metric = "test." + insights.metric.split(".", 1)[1]
        axes.errorbar([position + shift for position, _ in tested], points, yerr=[below, above], fmt="D",
                      color="#dd8452", capsize=4, markersize=5, zorder=3,
                      label=f"{test_metric}: 95 % interval over the test images")
    axes.set_xticks(list(positions), labels, fontsize=8)
    axes.set_ylabel(insights.metric.split(".", 1)[1])
    axes.set_title(f"{insights.metric} by configuration: seed spread (dots: one seed each) beside the test-set "
                   "interval", fontsize=10)
    axes.legend(loc="best", fontsize=8)
    _save(plt, figure, target)


NAMED_RUNS = 5  # the epoch curves name the best runs; the others are drawn lightly, without a legend entry


def curves_chart(curves: dict[str, list[tuple[int, float]]], metric: str, target: Path) -> None:
    """`curves`: run name → [(epoch, value)], from the runs' MLflow metric history, best run first (the
    ranking's order). The best NAMED_RUNS runs are drawn in colour and named in the legend, the rest in light
    grey beneath them, so that the chart reads the same at 8 runs and at 100."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    ranked = list(curves.items())
    named: list[Any] = []
    for rank, (name, points) in reversed(list(enumerate(ranked))):  # the best drawn last, on top
        steps, values = [step for step, _ in points], [value for _, value in points]
        if rank < NAMED_RUNS:
            named[:0] = axes.plot(steps, values, marker="o", markersize=4, linewidth=1.8, color=f"C{rank}",
                                  zorder=3, label=f"{rank + 1}. {name}")
        else:
            axes.plot(steps, values, marker="o", markersize=2, linewidth=0.8, color="0.55", alpha=0.35, zorder=2)
    _whole_epochs(axes, {step for _, points in ranked for step, _ in points})
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    shown = f"the best {NAMED_RUNS} of {len(ranked)} runs named" if len(ranked) > NAMED_RUNS else "all runs"
    axes.set_title(f"{metric} per epoch, {shown}")
    if named:
        axes.legend(handles=named, loc="best", fontsize=7, title="rank. run", title_fontsize=7)
    _save(plt, figure, target)


def _whole_epochs(axes: Any, epochs: set[int]) -> None:
    """Epoch ticks on whole numbers only, one epoch included (matplotlib would tick 0.95 ... 1.05)."""
    from matplotlib.ticker import MaxNLocator

    if not epochs:
        return
    first, last = min(epochs), max(epochs)
    if last - first < 10:
        axes.set_xticks(range(first, last + 1))
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if first == last:
        axes.set_xlim(first - 0.5, last + 0.5)  # one epoch: a column of dots on its one tick


def _save(plt: Any, figure: Any, target: Path) -> None:
    figure.tight_layout()
    with atomic_file(target) as staging:
        figure.savefig(staging, format="png", dpi=110)
    plt.close(figure)
