"""The viewer follows what is being trained, compares up to 8 runs in a grid that fits, and draws
zeros and non-finite values on log axes (pytest-qt, offscreen)."""

from __future__ import annotations

import gc
import math
import os
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PyQt6 import QtCore  # noqa: E402

from keras_rnnx.runlog import RunWriter  # noqa: E402
from visualizer.main_window import MainWindow  # noqa: E402
from visualizer.model import LogValues, grid_shape, log_floor  # noqa: E402
from visualizer.panels.base import run_color  # noqa: E402
from visualizer.synthetic import (  # noqa: E402
    layer_meta,
    run_meta,
    write_probe_step,
    write_synthetic_run,
)

UNITS, T, B = 4, 8, 2


@pytest.fixture
def make_window(qtbot):
    windows = []

    def make(path, **kwargs):
        window = MainWindow([str(path)], settings=None, **kwargs)
        qtbot.addWidget(window)
        windows.append(window)
        window.show()
        qtbot.waitExposed(window)
        return window

    yield make
    for window in windows:
        window.close()
    # Collect the closed windows now, while nothing paints: pyqtgraph items collected by a later
    # garbage collection, in the middle of another test's event processing, can crash Qt.
    windows.clear()
    gc.collect()


def _start_run(path, cell="forget", steps=2):
    """A run being written: its meta and `steps` probes, flushed, the writer left open."""
    info = layer_meta(cell, UNITS, T)
    writer = RunWriter(path, meta=run_meta({"rnn": info}, B, T, 1))
    rng = np.random.default_rng(len(str(path)))
    for step in range(steps):
        write_probe_step(writer, "rnn", info, step, B, rng)
        writer.write_scalars(step, {"loss": 1.0 / (step + 1)}, phase="batch")
    writer.flush()
    return writer


def _list_texts(window):
    return [window.runs_list.item(k).text() for k in range(window.runs_list.count())]


# ---- following the newest run ------------------------------------------------------------------


def test_follows_the_newest_live_run_then_stays_on_a_chosen_one(make_window, tmp_path, qtbot):
    done = write_synthetic_run(tmp_path / "a_done", units=UNITS, timesteps=T, batch=B, probes=2)
    first = _start_run(tmp_path / "b_first")
    window = make_window(tmp_path)
    c = window.collection
    assert window.follow_button.isVisible() and window.follow_button.isChecked()
    # The live run is shown, not the first one by path (a finished run).
    qtbot.waitUntil(lambda: c.primary is not None and c.primary.name == "b_first", timeout=10000)
    assert c.runs[0].path == done
    time.sleep(0.02)  # a later start time for the second run
    second = _start_run(tmp_path / "c_second", steps=0)
    try:
        # A run still building its model (meta only) does not take the screen yet ...
        qtbot.waitUntil(lambda: len(c.runs) == 3 and c.runs[2].status == "live", timeout=10000)
        qtbot.wait(200)
        assert c.primary.name == "b_first"
        # ... its first frame does.
        info = layer_meta("forget", UNITS, T)
        write_probe_step(second, "rnn", info, 0, B, np.random.default_rng(0))
        second.flush()
        qtbot.waitUntil(lambda: c.primary.name == "c_second", timeout=10000)
        heatmap = window.panels["state_heatmap"]
        qtbot.waitUntil(lambda: "c_second" in window.legend.text()
                        and heatmap.cells[0, 0].plot.titleLabel.text == "c_second",
                        timeout=10000)
        assert window.runs_list.currentRow() == 2
        # The user picks the first live run: the view stays there when a newer run starts.
        window.runs_list.setCurrentRow(1)
        assert c.primary.name == "b_first" and not c.follow_newest
        assert not window.follow_button.isChecked()
        time.sleep(0.02)
        third = _start_run(tmp_path / "d_third")
        qtbot.waitUntil(lambda: len(c.runs) == 4 and c.runs[3].status == "live", timeout=10000)
        qtbot.wait(200)
        assert c.primary.name == "b_first"
        # The toggle brings following back: the newest live run at once.
        qtbot.mouseClick(window.follow_button, QtCore.Qt.MouseButton.LeftButton)
        assert c.follow_newest
        qtbot.waitUntil(lambda: c.primary.name == "d_third", timeout=10000)
        assert window.runs_list.currentRow() == 3
        # With no run live, turning following on shows the run that started last.
        third.close()
        qtbot.mouseClick(window.follow_button, QtCore.Qt.MouseButton.LeftButton)
        window.runs_list.setCurrentRow(0)
        assert c.primary.name == "a_done"
        first.close()
        second.close()
        qtbot.waitUntil(lambda: c.statuses() == ("finished",) * 4, timeout=10000)
        qtbot.mouseClick(window.follow_button, QtCore.Qt.MouseButton.LeftButton)
        assert c.follow_newest and c.primary.name == "d_third"
    finally:
        first.close()
        second.close()


def test_the_run_list_shows_live_finished_and_crashed(make_window, tmp_path, qtbot):
    window = make_window(tmp_path, stale_seconds=3.0)
    ok = _start_run(tmp_path / "ok")
    failing = _start_run(tmp_path / "failing")
    killed = _start_run(tmp_path / "killed")

    def all_live():
        # The runs keep writing until the viewer has found them, however slow the machine.
        for step, writer in enumerate((ok, failing, killed)):
            writer.write_scalars(step, {"loss": 1.0}, phase="batch")
            writer.flush()
        return _list_texts(window) == ["failing  [live]", "killed  [live]", "ok  [live]"]

    qtbot.waitUntil(all_live, timeout=15000)
    ok.close()  # on_train_end: the end record says "ok"
    failing.close("error: ValueError")  # fit raised inside the monitor's `with` block
    # `killed` is never closed and writes nothing more, like a process killed with SIGKILL.
    qtbot.waitUntil(lambda: _list_texts(window)[::2] == ["failing  [crashed]", "ok  [finished]"],
                    timeout=15000)
    assert "error: ValueError" in window.runs_list.item(0).toolTip()
    qtbot.waitUntil(lambda: _list_texts(window)[1] == "killed  [crashed]", timeout=15000)
    assert "no end record" in window.runs_list.item(1).toolTip()
    # A run that writes again after a pause is live again.
    killed.write_scalars(99, {"loss": 0.5}, phase="batch")
    killed.flush()
    qtbot.waitUntil(lambda: _list_texts(window)[1] == "killed  [live]", timeout=15000)
    killed.close()
    qtbot.waitUntil(lambda: _list_texts(window)[1] == "killed  [finished]", timeout=10000)


def test_following_keeps_every_compared_run_on_screen(tmp_path):
    from visualizer.model import RunCollection

    older = _start_run(tmp_path / "a")
    time.sleep(0.02)
    newer = _start_run(tmp_path / "b")
    other = write_synthetic_run(tmp_path / "c", units=UNITS, timesteps=T, batch=B, probes=2)
    try:
        collection = RunCollection([tmp_path])
        collection.load()
        collection.set_compared([2])  # a compared with c, as with --compare
        assert [r.name for r in collection.shown_runs()] == ["a", "c"]
        assert collection.follow_newest_run()
        assert [r.name for r in collection.shown_runs()] == ["b", "a", "c"]
        assert collection.runs[2].path == other
        # Without a comparison the newest run simply replaces the one shown.
        collection.choose(0)
        collection.set_compared([])
        collection.set_follow_newest(True)
        assert [r.name for r in collection.shown_runs()] == ["b"]
    finally:
        older.close()
        newer.close()


# ---- comparing 8 runs ----------------------------------------------------------------------------

CELLS = ("vanilla", "cec", "original", "forget")


@pytest.fixture(scope="module")
def eight_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eight")
    for k in range(8):
        write_synthetic_run(root / f"run{k}_{CELLS[k % 4]}", cells={"rnn": CELLS[k % 4]},
                            units=16, timesteps=40, batch=2, probes=6, seed=k)
    return root


def _inside(outer: QtCore.QRectF, inner: QtCore.QRectF) -> bool:
    return outer.adjusted(-1, -1, 1, 1).contains(inner)


def _scene_rect(view) -> QtCore.QRectF:
    """The part of the scene a GraphicsView shows."""
    return view.mapToScene(view.viewport().rect()).boundingRect()


@pytest.mark.parametrize("maps", [True, False])
def test_eight_runs_fit_a_1600x1000_window(make_window, eight_runs, qtbot, maps):
    window = make_window(eight_runs, follow=False)
    window.collection.load()
    window.resize(1600, 1000)
    gradient = window.panels["gradient_flow"]
    qtbot.mouseClick(window.compare_button, QtCore.Qt.MouseButton.LeftButton)
    assert not gradient.show_maps.isChecked()  # one click: the curves of all runs, large
    gradient.show_maps.setChecked(maps)
    c = window.collection
    assert len(c.shown_runs()) == 8
    names = [run.name for run in c.shown_runs()]
    for _ in range(3):  # the layout settles over a few timer ticks
        qtbot.wait(50)
        window.tick()
    # The window's legend names every run in its colour.
    for run in c.shown_runs():
        assert run.name in window.legend.text()
        assert run_color(c.color_index(run)) in window.legend.text()
    assert len({run_color(c.color_index(run)) for run in c.shown_runs()}) == 8

    heatmap = window.panels["state_heatmap"]
    assert len(heatmap.cells) == 8
    assert sorted(cell.plot.titleLabel.text for cell in heatmap.cells.values()) == sorted(names)
    rows, cols = max(heatmap.cells)[0] + 1, max(c for _, c in heatmap.cells) + 1
    assert rows > 1 and cols > 1  # a grid, not one row of 8
    visible = _scene_rect(heatmap.graphics)
    for cell in heatmap.cells.values():
        box = cell.plot.vb.sceneBoundingRect()
        assert _inside(visible, cell.plot.sceneBoundingRect()), cell.plot.titleLabel.text
        assert box.width() > 60 and box.height() > 25
    assert _inside(visible, heatmap.bar.sceneBoundingRect())

    # Every run's ‖∂L/∂h_t‖ on one plot, in the run's colour.
    curves = [gradient._curves[k] for k in sorted(gradient._curves)]
    assert len(curves) == 8
    assert [curve.opts["pen"].color().name().upper() for curve in curves] == \
        [run_color(c.color_index(run)).upper() for run in c.shown_runs()]
    visible = _scene_rect(gradient.graphics)
    assert _inside(visible, gradient.line_plot.sceneBoundingRect())
    assert len(gradient.cells) == (8 if maps else 0)
    for cell in gradient.cells:
        assert _inside(visible, cell.plot.sceneBoundingRect())
        assert cell.plot.vb.sceneBoundingRect().width() > 40
    if not maps:  # the curves have the panel to themselves
        assert gradient.line_plot.vb.sceneBoundingRect().height() > 0.6 * visible.height()

    # Legends sit beside the data, never on it.
    jacobian = window.panels["jacobian"]
    window.show_panel("jacobian")
    window.tick()
    qtbot.wait(50)
    legend = jacobian.sigma_legend.sceneBoundingRect()
    assert not legend.intersects(jacobian.sigma_plot.vb.sceneBoundingRect())
    assert not legend.intersects(jacobian.norm_plot.vb.sceneBoundingRect())
    for plot in window.panels["training_curves"]._plots.values():
        for other in window.panels["training_curves"]._legends.values():
            assert not other.sceneBoundingRect().intersects(plot.vb.sceneBoundingRect())


# ---- zeros and non-finite values on a log axis -------------------------------------------------


def test_zero_gradients_are_drawn_at_the_stated_floor(make_window, tmp_path, qtbot):
    """The CEC run's ‖∂L/∂h_t‖ underflows to exactly 0 for t < 99; a NaN and an Inf appear."""
    steps = 100
    info = layer_meta("cec", 3, steps)
    writer = RunWriter(tmp_path / "cec", meta=run_meta({"rnn": info}, 1, steps, 1))
    norms = np.zeros(steps, np.float32)
    norms[99] = 3.7e-4
    norms[97] = 2.5e-9
    norms[10], norms[20] = np.nan, np.inf
    writer.write_frame("grad_norm", "rnn", 0, norms)
    writer.close()
    window = make_window(tmp_path / "cec", follow=False)
    window.collection.load()
    window.tick(force=True)
    panel = window.panels["gradient_flow"]
    curve = panel._curves[0]
    # The line has the positive values only; the 96 zeros are triangles at the floor.
    assert np.isfinite(curve.yData).sum() == 2
    floor = 1e-10  # one decade under the smallest positive value, 2.5e-9
    assert panel.marks.floor == pytest.approx(floor)
    zeros = panel.marks.zero_items[0]
    x, y = zeros.getData()
    expected = [t for t in range(steps) if t not in (10, 20, 97, 99)]
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_allclose(y, math.log10(floor))  # view coordinates of a log axis
    assert panel.marks.floor_line.isVisible()
    assert panel.marks.floor_line.value() == pytest.approx(-10)
    assert "1e-10" in panel.marks.floor_line.label.toPlainText()
    # NaN and Inf: crosses where they occur, above the data.
    bad_x, bad_y = panel.marks.bad_items[0].getData()
    np.testing.assert_array_equal(bad_x, [10, 20])
    assert (bad_y > math.log10(3.7e-4)).all()
    note = panel.line_plot.titleLabel.text
    assert "‖∂L/∂h_t‖ = 0 drawn ▽ at 1e-10: cec t 0 … 98" in note
    assert "1 NaN at t 10, 1 +Inf at t 20" in note
    # The history map paints the zeros with the colour at the floor, NaN/Inf over it.
    cell = panel.cells[0]
    row = cell.image.image[0]
    assert row[0] == pytest.approx(-10) and row[99] == pytest.approx(math.log10(3.7e-4))
    assert cell.nonfinite == 2 and cell.marks.isVisible()
    assert cell.marks.image[0, 10].tolist() == [255, 0, 255, 255]  # NaN: magenta
    assert cell.marks.image[0, 20].tolist() == [255, 255, 255, 255]  # +Inf: white


def test_log_values_floor_and_grid_shape_by_hand():
    values = np.array([0.0, 0.0, 4e-7, 2.0, np.nan, -1.0, np.inf, -np.inf])
    assert log_floor([values]) == pytest.approx(1e-8)  # 4e-7 → 1e-7 → one decade below
    assert log_floor([np.zeros(3)]) == 1e-30
    assert log_floor([values, np.array([3e-12])], decades_below=2) == pytest.approx(1e-14)
    prepared = LogValues(values, 1e-8)
    assert prepared.zeros.tolist() == [0, 1]
    assert prepared.nan.tolist() == [4] and prepared.negative.tolist() == [5]
    assert prepared.posinf.tolist() == [6] and prepared.neginf.tolist() == [7]
    np.testing.assert_array_equal(np.isfinite(prepared.shown), [0, 0, 1, 1, 0, 0, 0, 0])
    assert prepared.zeros_text() == "t 0–1"
    assert prepared.bad_text() == "1 NaN at t 4, 1 +Inf at t 6, 1 -Inf at t 7, 1 < 0 at t 5"
    assert LogValues(np.ones(3), 0.1).bad_text() == LogValues(np.ones(3), 0.1).zeros_text() == ""
    # 8 cells of aspect 2 in a 1000 × 600 area: 3 columns (3 rows) give each cell
    # min(333 / 2, 200) = 166 px of height; 2 columns (4 rows) min(250, 150) = 150; 4 columns
    # (2 rows) min(125, 300) = 125.
    assert grid_shape(8, 1000, 600) == (3, 3)
    assert grid_shape(1, 10, 10) == (1, 1)
    assert grid_shape(4, 4000, 100) == (1, 4)
    assert grid_shape(0, 100, 100) == (0, 0)


def test_zero_weight_gradients_are_drawn_at_the_floor(make_window, tmp_path):
    info = layer_meta("vanilla", 3, 4)
    writer = RunWriter(tmp_path / "run", meta=run_meta({"rnn": info}, 1, 4, 1))
    norms = [0.0, 2e-3, 0.0, 5e-2]
    for step, value in enumerate(norms):
        for kind in ("kernel_grad_norm", "recurrent_kernel_grad_norm", "bias_grad_norm"):
            writer.write_frame(kind, "rnn", 10 * step, np.array([value]))
    writer.close()
    window = make_window(tmp_path / "run", follow=False)
    window.collection.load()
    window.tick(force=True)
    panel = window.panels["weight_grads"]
    marks = panel.marks["recurrent_kernel_grad_norm"]
    assert marks.floor == pytest.approx(1e-4)  # a decade under 2e-3
    x, y = marks.zero_items[0].getData()
    np.testing.assert_array_equal(x, [0, 20])
    np.testing.assert_allclose(y, -4)
    curve = [i for p, i in panel._items if p is panel.plots["recurrent_kernel_grad_norm"]][0]
    np.testing.assert_array_equal(np.isfinite(curve.yData), [False, True, False, True])


def test_a_zero_loss_on_the_log_scale_is_drawn_at_the_floor(make_window, tmp_path):
    with RunWriter(tmp_path / "run") as writer:
        for step, loss in enumerate([1.0, 0.0, 0.5]):
            writer.write_scalars(step, {"loss": loss}, phase="batch")
    window = make_window(tmp_path / "run", follow=False)
    window.collection.load()
    panel = window.panels["training_curves"]
    panel.log_scale.setChecked(True)
    window.tick(force=True)
    marks = panel._marks["loss", "batch"]
    x, y = marks.zero_items[0].getData()
    np.testing.assert_array_equal(x, [1])
    np.testing.assert_allclose(y, -2)  # floor 0.01: a decade under the smallest loss, 0.5
    assert marks.floor_line.isVisible()
    panel.log_scale.setChecked(False)  # on a linear axis 0 is an ordinary point
    window.tick(force=True)
    assert not marks.zero_items and not marks.floor_line.isVisible()
