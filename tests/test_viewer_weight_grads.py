"""The weight-gradient panel draws the LSTM variants' extra weights: the peephole vectors
p_i, p_f, p_o and FGR's gate recurrence G per column block, only for runs that record them
(pytest-qt, offscreen). The runs are written with the real run-log writer, frames named as
RNNMonitor names them (tests/test_variants.py checks the monitor writes those names)."""

from __future__ import annotations

import gc
import math
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PyQt6 import QtCore  # noqa: E402

from keras_rnnx.runlog import RunWriter  # noqa: E402
from visualizer.main_window import MainWindow  # noqa: E402
from visualizer.panels.base import BLOCK_COLORS, run_color  # noqa: E402
from visualizer.synthetic import layer_meta, run_meta, write_synthetic_run  # noqa: E402

UNITS, T, B = 4, 6, 2
STEPS = [0, 10, 20, 30]
BASE = ("kernel_grad_norm", "recurrent_kernel_grad_norm", "bias_grad_norm")
PEEPHOLE = "peephole_weights_grad_norm"  # the panel's plot of the three peephole kinds
G = "gate_recurrent_kernel_grad_norm"
# ‖∂L/∂p‖ per gate over the four steps (p_f is exactly 0 at step 10), ‖∂L/∂G‖ per column
# block (NaN in block f at step 20).
P_NORMS = {
    "input": [0.02, 0.03, 0.05, 0.04],
    "forget": [0.01, 0.0, 0.02, 0.03],
    "output": [0.1, 0.2, 0.15, 0.3],
}
G_NORMS = np.array([[0.2, 0.3, 0.4], [0.25, 0.35, 0.45], [0.3, np.nan, 0.5], [0.1, 0.2, 0.6]])


def _write_variant_run(path, peepholes=("input", "forget", "output"), fgr=True):
    """An LSTM-variant run as RNNMonitor records it: W, U, b per block i, f, z, o, then one
    norm per peephole vector and, for FGR, G's three column-block norms."""
    info = layer_meta("forget", UNITS, T)
    info.update(cell="LSTM-FGR" if fgr else "LSTM-V", cell_class="LSTMVariantCell")
    if fgr:
        info["states"] = ["h", "c", "g"]
    writer = RunWriter(path, meta=run_meta({"rnn": info}, B, T, 1))
    for row, step in enumerate(STEPS):
        for k, kind in enumerate(BASE):
            writer.write_frame(kind, "rnn", step,
                               np.array([1.0, 2.0, 3.0, 4.0]) * 10.0 ** -(k + row / 4))
        for gate in peepholes:
            writer.write_frame(f"{gate}_gate_peephole_weights_grad_norm", "rnn", step,
                               np.array([P_NORMS[gate][row]]))
        if fgr:
            writer.write_frame(G, "rnn", step, G_NORMS[row])
        writer.write_scalars(step, {"loss": 1.0 / (row + 1)}, phase="batch")
    writer.close()
    return path


@pytest.fixture
def make_window(qtbot):
    windows = []

    def make(paths, compare=()):
        window = MainWindow([str(p) for p in paths], compare=[str(p) for p in compare],
                            settings=None, follow=False)
        qtbot.addWidget(window)
        windows.append(window)
        window.collection.load()
        window.show()
        qtbot.waitExposed(window)
        window.show_panel("weight_grads")
        window.tick(force=True)
        qtbot.wait(20)  # lets the plots lay out, so that view and scene coordinates settle
        return window

    yield make
    for window in windows:
        window.close()
    windows.clear()
    gc.collect()  # now, while nothing paints (see tests/test_viewer_follow.py)


def _curves(panel, key):
    """`{curve name: PlotDataItem}` of plot `key`."""
    return {item.name(): item for plot, item in panel._items if plot is panel.plots[key]}


def test_peephole_and_gate_recurrence_plots_show_the_recorded_norms(make_window, tmp_path):
    window = make_window([_write_variant_run(tmp_path / "fgr")])
    panel = window.panels["weight_grads"]
    assert panel.visible_plots() == [*BASE, PEEPHOLE, G]
    # W, U, b in the first column, the peepholes and G beside them; the lowest plot of each
    # column names the step axis.
    assert [panel.plots[k].getAxis("bottom").labelText for k in panel.visible_plots()] == \
        ["", "", "training step", "", "training step"]
    width = panel.graphics.width()
    assert panel.plots[BASE[0]].geometry().right() < 0.6 * width
    assert panel.plots[PEEPHOLE].geometry().left() > 0.4 * width
    assert panel.plots[G].geometry().top() > panel.plots[PEEPHOLE].geometry().bottom() - 1
    assert panel.plots[PEEPHOLE].titleLabel.text == "peepholes p"

    peep = _curves(panel, PEEPHOLE)
    assert sorted(peep) == ["p_f", "p_i", "p_o"]
    for name, gate in (("p_i", "input"), ("p_f", "forget"), ("p_o", "output")):
        np.testing.assert_array_equal(peep[name].xData, STEPS)
        # A zero cannot be drawn on a log axis: the line breaks there (a marker stands in).
        want = np.array(P_NORMS[gate])
        np.testing.assert_allclose(peep[name].yData, np.where(want > 0, want, np.nan))
    # Each gate keeps its colour from the W, U, b plots.
    kernel = _curves(panel, "kernel_grad_norm")
    for gate in "ifo":
        color = peep[f"p_{gate}"].opts["pen"].color().name()
        assert color == kernel[gate].opts["pen"].color().name() == BLOCK_COLORS[gate].lower()

    g = _curves(panel, G)
    assert sorted(g) == ["f", "i", "o"]
    for block, name in enumerate("ifo"):
        np.testing.assert_allclose(g[name].yData, G_NORMS[:, block])  # NaN stays a gap

    # p_f's zero at step 10 sits on the floor a decade under the plot's smallest value (0.01).
    marks = panel.marks[PEEPHOLE]
    assert marks.floor == pytest.approx(1e-3)
    x, y = marks.zero_items[0].getData()
    np.testing.assert_array_equal(x, [10])
    np.testing.assert_allclose(y, -3)
    # G's NaN at step 20 is a cross; G has no zeros.
    assert not panel.marks[G].zero_items and panel.marks[G].bad_count == 1
    np.testing.assert_array_equal(panel.marks[G].bad_items[0].getData()[0], [20])

    # The exported table has the same values, one row per block.
    header, rows = panel.table()
    table = {(r[2], r[3], r[4]): r[5] for r in rows}
    assert table["output_gate_peephole_weights_grad_norm", 20, "o"] == 0.15
    assert table[G, 30, "o"] == 0.6
    assert len(rows) == len(STEPS) * (3 * 4 + 3 + 3)
    assert "no weight-gradient frames" not in panel.heading.text()


def test_hover_names_the_peephole_and_the_column_block(make_window, tmp_path):
    window = make_window([_write_variant_run(tmp_path / "fgr")])
    panel = window.panels["weight_grads"]
    vb = panel.plots[PEEPHOLE].vb
    text = panel.hover_at(vb.mapViewToScene(QtCore.QPointF(20, math.log10(0.15))))
    assert text == "fgr · rnn · step 20: ‖∂L/∂p_o‖ = 0.15"
    vb = panel.plots[G].vb
    text = panel.hover_at(vb.mapViewToScene(QtCore.QPointF(29, math.log10(0.2))))
    assert text == "fgr · rnn · step 30: ‖∂L/∂G‖[f] = 0.2"


def test_a_lecture_cell_run_has_only_the_three_plots(make_window, tmp_path):
    lecture = write_synthetic_run(tmp_path / "forget", cells={"rnn": "forget"}, units=UNITS,
                                  timesteps=T, batch=B, probes=3)
    window = make_window([lecture])
    panel = window.panels["weight_grads"]
    assert panel.visible_plots() == list(BASE)
    assert not panel.plots[PEEPHOLE].isVisible() and not panel.plots[G].isVisible()
    assert panel.plots["bias_grad_norm"].getAxis("bottom").labelText == "training step"
    assert not _curves(panel, PEEPHOLE) and not _curves(panel, G)
    assert len(panel._items) == 3 * 4
    # The hidden column takes no room: W, U and b have the whole width (but the legend's).
    for key in BASE:
        assert panel.plots[key].geometry().width() > 0.8 * panel.graphics.width()


def test_compared_runs_and_switching_back_to_a_lecture_run(make_window, tmp_path):
    """A V run (peepholes, no G) beside an FGR run and a lecture run: the peephole plot holds
    both variant runs (colour by run, line style by gate), G the FGR run only; showing the
    lecture run alone hides both plots again."""
    _write_variant_run(tmp_path / "a_fgr")
    _write_variant_run(tmp_path / "b_v", fgr=False)
    write_synthetic_run(tmp_path / "c_forget", cells={"rnn": "forget"}, units=UNITS,
                        timesteps=T, batch=B, probes=3)
    window = make_window([tmp_path])
    c = window.collection
    assert [r.name for r in c.runs] == ["a_fgr", "b_v", "c_forget"]
    c.set_primary(1)
    c.set_compared([0, 2])
    window.tick(force=True)
    panel = window.panels["weight_grads"]
    assert panel.visible_plots() == [*BASE, PEEPHOLE, G]
    peep = [item for plot, item in panel._items if plot is panel.plots[PEEPHOLE]]
    assert len(peep) == 2 * 3
    pens = {(item.opts["pen"].color().name(), item.name(), item.opts["pen"].style())
            for item in peep}
    styles = {"p_i": QtCore.Qt.PenStyle.SolidLine, "p_f": QtCore.Qt.PenStyle.DashLine,
              "p_o": QtCore.Qt.PenStyle.DashDotLine}
    assert pens == {(run_color(k).lower(), name, style)
                    for k in (0, 1) for name, style in styles.items()}
    g = [item for plot, item in panel._items if plot is panel.plots[G]]
    assert {item.opts["pen"].color().name() for item in g} == {run_color(0).lower()}
    assert sorted(panel.legend.labels()) == ["f", "i", "o", "z"]

    c.set_compared([])
    c.set_primary(2)
    window.tick(force=True)
    assert panel.visible_plots() == list(BASE)
    assert not _curves(panel, PEEPHOLE) and not _curves(panel, G)
    c.set_primary(0)
    window.tick(force=True)
    assert panel.visible_plots() == [*BASE, PEEPHOLE, G]
    np.testing.assert_allclose(_curves(panel, PEEPHOLE)["p_i"].yData, P_NORMS["input"])
