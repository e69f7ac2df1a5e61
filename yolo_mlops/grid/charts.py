"""The comparison's charts as PNG: the primary metric by configuration (seed spread as error bars
and dots, the test-set interval beside it), and the per-epoch curves of every run overlaid."""

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


def curves_chart(curves: dict[str, list[tuple[int, float]]], metric: str, target: Path) -> None:
    """`curves`: run name → [(epoch, value)], from the runs' MLflow metric history."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, points in sorted(curves.items()):
        axes.plot([step for step, _ in points], [value for _, value in points], marker="o", markersize=3,
                  label=name)
    from matplotlib.ticker import MaxNLocator

    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    axes.set_xlabel("epoch")
    axes.set_ylabel(metric)
    axes.set_title(f"{metric} per epoch, all runs")
    axes.legend(loc="best", fontsize=7)
    _save(plt, figure, target)


def _save(plt: Any, figure: Any, target: Path) -> None:
    figure.tight_layout()
    with atomic_file(target) as staging:
        figure.savefig(staging, format="png", dpi=110)
    plt.close(figure)
