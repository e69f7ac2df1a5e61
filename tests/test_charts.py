"""The comparison's charts, drawn for real (matplotlib, Agg) and read back from the figure."""

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
