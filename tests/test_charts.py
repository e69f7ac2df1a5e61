"""The comparison's charts, drawn for real (matplotlib, Agg) and read back from the figure."""

import random
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from yolo_mlops.grid import charts


def test_epoch_curves_have_whole_number_epoch_ticks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = []
    monkeypatch.setattr(plt, "close", drawn.append)  # keep the figure to read its axes
    curves = {"a": [(1, 0.1), (2, 0.2), (3, 0.25)], "b": [(1, 0.05), (2, 0.1), (3, 0.3)]}
    charts.curves_chart(curves, "val.mAP50-95", tmp_path / "epoch_curves.png")
    [figure] = drawn
    ticks = [tick for tick in figure.axes[0].get_xticks() if 1 <= tick <= 3]
    assert ticks and all(float(tick).is_integer() for tick in ticks)
    assert (tmp_path / "epoch_curves.png").read_bytes().startswith(b"\x89PNG")


def synthetic_curves(runs: int, epochs: int) -> dict[str, list[tuple[int, float]]]:
    """`runs` runs' histories, best first, as the comparison ranks them; names as long as the grid's."""
    draw = random.Random(runs * 100 + epochs)
    return {f"imgsz_{320 + 96 * (run % 2)}-lr0_0.00{run % 9 + 1}-seed_{run}-{run:06x}":
            [(epoch, (1 - run / runs) * epoch / epochs * 0.3 + draw.uniform(0, 0.02)) for epoch in range(1, epochs + 1)]
            for run in range(runs)}


@pytest.mark.parametrize("runs", [8, 100])
@pytest.mark.parametrize("epochs", [1, 3, 30])
def test_epoch_curves_read_at_8_and_at_100_runs(
        runs: int, epochs: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = []
    monkeypatch.setattr(plt, "close", drawn.append)
    curves = synthetic_curves(runs, epochs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Tight layout not applied" (a legend too big for the figure) included
        charts.curves_chart(curves, "val.mAP50-95", tmp_path / "epoch_curves.png")
    [figure] = drawn
    axes = figure.axes[0]
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    best = list(curves)[:charts.NAMED_RUNS]
    assert legend == [f"{rank}. {name}" for rank, name in enumerate(best, start=1)]
    assert len(axes.get_lines()) == runs  # the others are drawn all the same, lightly
    low, high = axes.get_xlim()
    ticks = [tick for tick in axes.get_xticks() if low <= tick <= high]
    assert ticks and all(float(tick).is_integer() for tick in ticks), ticks
    if epochs < 10:
        assert ticks == list(range(1, epochs + 1))  # every epoch ticked, the single one too
    assert low < 1 and high > epochs  # every epoch inside the axis
    named = {line.get_label() for line in axes.get_lines() if line.get_alpha() is None}
    assert named == set(legend)
    assert f"best {charts.NAMED_RUNS} of {runs}" in axes.get_title()
    figure.savefig(tmp_path / f"look-{runs}-{epochs}.png", dpi=110)  # for a person to look at
    assert (tmp_path / "epoch_curves.png").read_bytes().startswith(b"\x89PNG")
