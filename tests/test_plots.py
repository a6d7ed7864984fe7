"""Report figures: labels of the cost-effectiveness scatter never overlap; click axes show 1 and the last click."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from matplotlib.text import Text

from litseg.plots import (
    DPI,
    MARKER_SIZE,
    integer_ticks,
    labelled_scatter,
    labelled_scatter_figure,
    line_plot,
    line_plot_figure,
)

# README, weak-label study: relative annotation effort and test mIoU per supervision kind.
README_STUDY = {
    "tags": (1, 0.386), "points": (2, 0.342), "tags+points": (3, 0.377), "scribbles": (5, 0.572),
    "boxes": (5, 0.549), "points+boxes": (7, 0.600), "points+scribbles": (7, 0.548),
    "scribbles+boxes": (10, 0.547), "full": (25, 0.558),
}


def _intersect(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def label_layout(points):
    fig, ax, labels = labelled_scatter_figure(points, "effort", "mIoU", "cost-effectiveness")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = {t.get_text(): Text.get_window_extent(t, renderer) for t in labels}
    centres = ax.transData.transform(np.array(list(points.values()), dtype=float))
    return fig, ax, labels, boxes, centres


def assert_no_overlap(points) -> dict:
    fig, ax, labels, boxes, centres = label_layout(points)
    assert [t.get_text() for t in labels] == list(points)
    for (name_a, a), (name_b, b) in itertools.combinations(boxes.items(), 2):
        assert not _intersect(a, b), f"labels {name_a!r} and {name_b!r} overlap: {a} / {b}"
    radius = math.sqrt(MARKER_SIZE) / 2 * DPI / 72  # marker radius in pixels
    for name, box in boxes.items():
        for cx, cy in centres:
            near_x = min(max(cx, box.x0), box.x1)
            near_y = min(max(cy, box.y0), box.y1)
            assert math.hypot(near_x - cx, near_y - cy) > radius, f"label {name!r} covers a marker"
    return {"fig": fig, "ax": ax, "boxes": boxes}


def test_cost_effectiveness_labels_of_the_readme_study_do_not_overlap():
    out = assert_no_overlap(README_STUDY)
    axes_box = out["ax"].get_window_extent()
    for name, box in out["boxes"].items():  # all fit inside the axes here
        assert axes_box.x0 <= box.x0 and box.x1 <= axes_box.x1, name
        assert axes_box.y0 <= box.y0 and box.y1 <= axes_box.y1, name
    # the two that used to collide at (7, 0.548) and (10, 0.547)
    assert not _intersect(out["boxes"]["points+scribbles"], out["boxes"]["scribbles+boxes"])


def test_labels_do_not_overlap_on_adversarial_data():
    same = {f"run {i} at the same spot": (3.0, 0.5) for i in range(7)}
    crowded = same | {"a neighbour": (3.01, 0.5005), "corner": (0.0, 0.0), "other corner": (10.0, 1.0),
                      "a very long label for the edge of the axes": (10.0, 0.0)}
    assert_no_overlap(crowded)
    assert_no_overlap({f"label {i}": (1.0, 1.0) for i in range(20)})  # more labels than one ring holds
    assert_no_overlap({"only": (2.0, 2.0)})


def test_label_placement_is_deterministic(tmp_path):
    first = label_layout(README_STUDY)[3]
    second = label_layout(README_STUDY)[3]
    assert {k: tuple(v.bounds) for k, v in first.items()} == {k: tuple(v.bounds) for k, v in second.items()}
    labelled_scatter(README_STUDY, tmp_path / "cost_effectiveness.png", "effort", "mIoU", "study")
    assert (tmp_path / "cost_effectiveness.png").stat().st_size > 0


@pytest.mark.parametrize(("first", "last", "expected"), [
    (1, 20, [1, 5, 10, 15, 20]),
    (1, 10, [1, 2, 4, 6, 8, 10]),
    (1, 21, [1, 5, 10, 15, 21]),
    (1, 50, [1, 10, 20, 30, 40, 50]),
    (1, 100, [1, 20, 40, 60, 80, 100]),
    (1, 3, [1, 2, 3]),
    (1, 1, [1]),
    (0, 7, list(range(8))),
])
def test_integer_ticks_include_both_ends(first, last, expected):
    assert integer_ticks(first, last) == expected


def test_miou_vs_clicks_axis_labels_the_first_and_last_click(tmp_path):
    curves = {"GrabCut": np.linspace(0.6, 0.95, 20), "Berkeley": np.linspace(0.5, 0.9, 20)}
    fig, ax = line_plot_figure(curves, "number of clicks", "mIoU", "mIoU vs clicks", ylim=(0.0, 1.0),
                               integer_x=True)
    fig.canvas.draw()
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["1", "5", "10", "15", "20"]
    lo, hi = ax.get_xlim()
    assert lo < 1 and hi > 20  # both end ticks are visible
    line_plot(curves, tmp_path / "miou_vs_clicks.png", "number of clicks", "mIoU", "t", integer_x=True)
    assert (tmp_path / "miou_vs_clicks.png").stat().st_size > 0
