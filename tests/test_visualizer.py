"""The desktop viewer, offscreen with pytest-qt: recorded runs → panels (model → view), user
actions → selection (view → model), live following, bad runs, export, layout, screenshots."""

from __future__ import annotations

import csv
import os
import shutil
import threading
import time

os.environ["QT_QPA_PLATFORM"] = "offscreen"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PyQt6 import QtCore, QtGui  # noqa: E402

from keras_rnnx.runlog import RunWriter  # noqa: E402
from visualizer.__main__ import main  # noqa: E402
from visualizer.main_window import MainWindow  # noqa: E402
from visualizer.model import heatmap_image  # noqa: E402
from visualizer.panels.base import TimeAxis  # noqa: E402
from visualizer.synthetic import (  # noqa: E402
    layer_meta,
    run_meta,
    write_probe_step,
    write_synthetic_run,
)

TOKENS = [f"w{t}" for t in range(10)]
UNITS, T, B = 6, 10, 3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("viz_runs")
    write_synthetic_run(root / "lstm", cells={"lstm": "forget", "lstm_2": "forget"},
                        units=UNITS, timesteps=T, batch=B, probes=6, tokens=TOKENS, dropped=4,
                        seed=1)
    write_synthetic_run(root / "vanilla", cells={"rnn": "vanilla"}, units=UNITS, timesteps=T,
                        batch=B, probes=6, seed=2)
    write_synthetic_run(root / "nan", cells={"lstm": "forget"}, units=4, timesteps=6, batch=2,
                        probes=5, nan_from=3, seed=3)
    return root


@pytest.fixture
def settings(tmp_path):
    return QtCore.QSettings(str(tmp_path / "rnnx-viz.ini"), QtCore.QSettings.Format.IniFormat)


@pytest.fixture(scope="module")
def shared_window(runs, qapp):
    """One window on the directory of runs (lstm, nan, vanilla) for the tests that only look
    and select: building the six panels costs about a second."""
    window = MainWindow([str(runs)], settings=None, follow=False)
    window.collection.load()
    window.show()
    qapp.processEvents()
    yield window
    window.close()
    window.deleteLater()
    QtCore.QCoreApplication.sendPostedEvents(None, QtCore.QEvent.Type.DeferredDelete)


@pytest.fixture
def viewer(shared_window, qtbot):
    """The shared window, back to its defaults: lstm alone, newest step, layer lstm, sample 0."""
    window, c = shared_window, shared_window.collection
    c.set_primary(0)
    c.set_compared([])
    c.follow()
    c.select_layer("lstm")
    c.select_sample(0)
    heatmap = window.panels["state_heatmap"]
    heatmap.set_kind("h")
    heatmap.all_layers.setChecked(False)
    window.panels["training_curves"].log_scale.setChecked(False)
    window.current_panel = "state_heatmap"
    window.tick()
    qtbot.wait(20)
    return window


@pytest.fixture
def open_window(qtbot, settings):
    windows = []

    def make(paths, *, compare=(), follow=False, load=True):
        window = MainWindow([str(p) for p in paths], compare=[str(p) for p in compare],
                            settings=settings, follow=follow)
        qtbot.addWidget(window)
        windows.append(window)
        if load:
            window.collection.load()
        window.show()
        qtbot.waitExposed(window)
        window.tick()
        qtbot.wait(20)  # lets the plots lay out, so that view and scene coordinates settle
        return window

    yield make
    for window in windows:
        window.close()


def _frame(path, kind, layer, step=None):
    from keras_rnnx.runlog import RunReader

    return RunReader(path).frame_at(kind, layer, step)


# ---- model -> view ------------------------------------------------------------------------------


def test_heatmap_shows_the_sample_with_fixed_levels_and_token_axis(viewer, runs):
    window = viewer
    panel = window.panels["state_heatmap"]
    cell = panel.cells[0, 0]
    step, h = _frame(runs / "lstm", "h", "lstm")
    np.testing.assert_array_equal(cell.image.image, heatmap_image(h, 0))
    assert cell.image.image.dtype == np.float32 and cell.image.image.flags.c_contiguous
    assert tuple(cell.image.levels) == (-1.0, 1.0) and cell.bar.values == (-1.0, 1.0)
    assert cell.image.lut.shape[0] == 256
    heading = panel.heading.text()
    assert "layer lstm" in heading and f"step {step}" in heading and f"{UNITS} units" in heading
    axis = cell.plot.getAxis("bottom")
    assert isinstance(axis, TimeAxis) and axis.tokens == TOKENS

    panel.set_kind("f")
    window.tick()
    _, f = _frame(runs / "lstm", "f", "lstm")
    np.testing.assert_array_equal(cell.image.image, heatmap_image(f, 0))
    assert tuple(cell.image.levels) == (0.0, 1.0)
    panel.set_kind("c")
    window.tick()
    low, high = cell.image.levels
    assert low == -high and high >= np.abs(_frame(runs / "lstm", "c", "lstm")[1][0]).max()
    kinds = [panel.kind_box.itemData(i) for i in range(panel.kind_box.count())]
    assert kinds == ["h", "c", "i", "f", "z", "o", "grad_h"]


def test_all_layers_gives_a_row_per_layer(viewer, runs):
    window = viewer
    panel = window.panels["state_heatmap"]
    panel.all_layers.setChecked(True)
    window.tick()
    assert sorted(panel.cells) == [(0, 0), (1, 0)]
    _, h2 = _frame(runs / "lstm", "h", "lstm_2")
    np.testing.assert_array_equal(panel.cells[1, 0].image.image, heatmap_image(h2, 0))


def test_gradient_flow_compares_runs_on_one_log_axis(viewer, runs):
    window = viewer
    window.collection.set_compared([2])
    window.tick()
    panel = window.panels["gradient_flow"]
    assert panel.line_plot.ctrl.logYCheck.isChecked()
    curves = [panel._curves[i] for i in sorted(panel._curves)]
    assert len(curves) == 2
    for curve, (path, layer) in zip(curves, [(runs / "lstm", "lstm"), (runs / "vanilla", "rnn")]):
        _, norms = _frame(path, "grad_norm", layer)
        np.testing.assert_allclose(curve.yData, norms, rtol=1e-6)
        np.testing.assert_array_equal(curve.xData, np.arange(T))
    vanilla = curves[1].yData
    assert vanilla[0] < vanilla[-1]  # the synthetic vanilla gradient decays back in time
    assert len(panel.cells) == 2
    from keras_rnnx.runlog import RunReader

    history = RunReader(runs / "vanilla").frames("grad_norm", "rnn")
    expected = np.log10(np.stack([a for _, a in history]).astype(np.float64))
    image = panel.cells[1].image.image
    assert image.shape[1] == T
    np.testing.assert_allclose(image[0], expected[0], rtol=1e-5)
    np.testing.assert_allclose(image[-1], expected[-1], rtol=1e-5)


def test_jacobian_panel_shows_the_sample_norms_and_sigma_max_with_one_over_gamma(viewer, runs):
    window = viewer
    window.show_panel("jacobian")
    window.collection.select_sample(2)
    window.tick()
    panel = window.panels["jacobian"]
    _, jac = _frame(runs / "lstm", "jacobian_norm", "lstm")
    np.testing.assert_allclose(panel._norm_items[0].yData, jac[2], rtol=1e-6)
    curves = [i for i in panel._sigma_items if hasattr(i, "yData") and i.opts.get("pen")]
    assert len(curves) == 4  # one per gate block
    lines = sorted(i.value() for i in panel._sigma_items if hasattr(i, "angle"))
    assert lines == [1.0, 4.0]


def test_weight_gradient_panel_draws_each_gate_block(viewer, runs):
    window = viewer
    window.show_panel("weight_grads")
    window.tick()
    panel = window.panels["weight_grads"]
    assert len(panel._items) == 3 * 4
    from keras_rnnx.runlog import RunReader

    frames = RunReader(runs / "lstm").frames("recurrent_kernel_grad_norm", "lstm")
    item = [i for p, i in panel._items if p is panel.plots["recurrent_kernel_grad_norm"]][1]
    np.testing.assert_allclose(item.yData, [a[1] for _, a in frames])
    assert item.name() == "f"


def test_training_curves_batch_and_epoch_with_log_toggle(viewer, runs):
    window = viewer
    panel = window.panels["training_curves"]
    curve = panel._curves[0, "loss", "batch"]
    from keras_rnnx.runlog import RunReader

    steps, values = RunReader(runs / "lstm").scalars("loss", "batch")
    np.testing.assert_array_equal(curve.xData, steps)
    np.testing.assert_allclose(curve.yData, values)
    assert (0, "val_loss", "epoch") in panel._curves
    assert sorted(panel._plots) == [("loss", "batch"), ("loss", "epoch"), ("mae", "epoch")]
    window.log_action.trigger()
    window.tick()
    assert panel.log_scale.isChecked()
    assert panel._plots["loss", "batch"].ctrl.logYCheck.isChecked()


def test_overview_and_banner_report_dropped_frames_and_nan(viewer, runs):
    window = viewer
    window.collection.set_primary(1)
    window.collection.set_compared([0])
    window.show_panel("overview")
    window.tick()
    text = window.panels["overview"].plain_text()
    assert "synthetic" in text and "forget" in text
    assert "4 frames dropped" in text
    assert "NaN in h of layer 'lstm' from step 30" in text
    assert window.banner.isVisible() and window.banner_severity == "warning"
    assert "from step" in window.banner.text()
    curves = window.panels["training_curves"]
    assert any("NaN/Inf from batch 21" in line.label.toPlainText()
               for _, line in curves._nan_lines)


# ---- user -> model ------------------------------------------------------------------------------


def test_scrubbing_the_slider_and_the_step_shortcuts(viewer, runs, qtbot):
    window = viewer
    c = window.collection
    assert c.following and window.live_button.isChecked() and window.slider.value() == 5
    window.slider.setValue(2)  # as a drag does
    assert not c.following and c.current_step() == 20
    assert not window.live_button.isChecked()
    assert "step 20" in window.panels["state_heatmap"].heading.text()
    _, h = _frame(runs / "lstm", "h", "lstm", 20)
    np.testing.assert_array_equal(window.panels["state_heatmap"].cells[0, 0].image.image,
                                  heatmap_image(h, 0))
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow)
    qtbot.keyClick(window, QtCore.Qt.Key.Key_Left)
    assert c.current_step() == 10 and window.slider.value() == 1
    qtbot.keyClick(window, QtCore.Qt.Key.Key_Home)
    assert c.current_step() == 0
    qtbot.keyClick(window, QtCore.Qt.Key.Key_End)
    assert c.following and c.current_step() == 50 and window.live_button.isChecked()


def test_layer_and_sample_selectors(viewer, runs, qtbot):
    window = viewer
    c = window.collection
    assert [window.layer_box.itemText(i) for i in range(window.layer_box.count())] == [
        "lstm", "lstm_2"]
    window.layer_box.setCurrentIndex(1)
    window.layer_box.activated.emit(1)
    assert c.current_layer() == "lstm_2"
    window.sample_box.setValue(2)
    assert c.sample == 2
    assert window.sample_box.maximum() == B - 1
    _, h = _frame(runs / "lstm", "h", "lstm_2")
    np.testing.assert_array_equal(window.panels["state_heatmap"].cells[0, 0].image.image,
                                  heatmap_image(h, 2))
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow)
    qtbot.keyClick(window, QtCore.Qt.Key.Key_PageUp)
    assert c.current_layer() == "lstm"
    qtbot.keyClick(window, QtCore.Qt.Key.Key_BracketLeft)
    assert c.sample == 1


def test_ticking_a_run_compares_it_side_by_side(viewer, runs):
    window = viewer
    c = window.collection
    assert [r.name for r in c.runs] == ["lstm", "nan", "vanilla"]
    assert len(c.shown_runs()) == 1 and len(window.panels["state_heatmap"].cells) == 1
    window.runs_list.item(2).setCheckState(QtCore.Qt.CheckState.Checked)
    assert c.compared == [2]
    window.tick()
    heatmap = window.panels["state_heatmap"]
    assert len(heatmap.cells) == 2
    # The two plots reflow to fit the panel (side by side or one above the other).
    titles = [cell.plot.titleLabel.text for _, cell in sorted(heatmap.cells.items())]
    assert titles[0] == "lstm" and titles[1] == "vanilla · rnn"
    assert len(window.panels["gradient_flow"]._curves) == 2
    window.runs_list.setCurrentRow(2)
    assert c.primary.name == "vanilla"
    assert window.layer_box.currentText() == "rnn"


def test_hover_reads_out_unit_time_token_and_value(viewer, runs):
    window = viewer
    panel = window.panels["state_heatmap"]
    cell = panel.cells[0, 0]
    scene_pos = cell.image.mapToScene(QtCore.QPointF(3.5, 2.5))  # t = 3, unit = 2
    text = panel.hover_at(scene_pos)
    value = cell.image.image[2, 3]
    assert text is not None
    assert "unit 2, t 3 ('w3')" in text and f"{value:.4g}" in text
    assert panel.readout.text() == text
    flow = window.panels["gradient_flow"]
    point = flow.line_plot.vb.mapViewToScene(
        QtCore.QPointF(4, np.log10(flow._lines[0]["values"][4])))
    assert "t 4 ('w4')" in flow.hover_at(point)


def test_export_png_and_csv_of_the_current_panel(viewer, runs, tmp_path):
    window = viewer
    window.panels["gradient_flow"].setFocus()
    window.current_panel = "state_heatmap"
    png = window.export_current("png", tmp_path / "heatmap.png")
    image = QtGui.QImage(str(png))
    assert not image.isNull() and image.width() > 100
    table = window.export_current("csv", tmp_path / "heatmap.csv")
    with open(table, newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["run", "layer", "kind", "step", "sample", "unit", "t", "value"]
    assert len(rows) == 1 + UNITS * T
    _, h = _frame(runs / "lstm", "h", "lstm")
    unit, t = int(rows[1 + 7][5]), int(rows[1 + 7][6])
    assert float(rows[1 + 7][7]) == pytest.approx(float(h[0, t, unit]), rel=1e-6)
    for name, panel in window.panels.items():
        header, body = panel.table()
        assert header and (body or name == "text"), name  # these runs have no corpus probe
        assert panel.export_png(tmp_path / f"{name}.png").stat().st_size > 1000


def test_window_layout_and_options_are_remembered(qtbot, runs, settings):
    first = MainWindow([str(runs / "lstm")], settings=settings, follow=False)
    qtbot.addWidget(first)
    first.show()
    first.docks["overview"].setFloating(True)
    first.panels["training_curves"].log_scale.setChecked(True)
    first.panels["state_heatmap"].set_kind("c")
    first.resize(700, 500)  # inside the offscreen screen (800 x 600)
    first.close()
    second = MainWindow([str(runs / "lstm")], settings=settings, follow=False)
    qtbot.addWidget(second)
    assert second.docks["overview"].isFloating()
    assert second.panels["training_curves"].log_scale.isChecked()
    assert second.panels["state_heatmap"].wanted_kind == "c"
    second.collection.load()
    second.show()
    second.tick()
    assert second.panels["state_heatmap"].kind == "c"
    assert second.size() == QtCore.QSize(700, 500)
    second.close()


# ---- live following and bad runs ----------------------------------------------------------------


def test_live_view_follows_a_writer_until_the_user_scrubs_back(open_window, tmp_path, qtbot):
    info = layer_meta("forget", 4, 6)
    writer = RunWriter(tmp_path / "live", meta=run_meta({"lstm": info}, 2, 6, 1))
    writer.flush()
    window = open_window([tmp_path / "live"], follow=True, load=False)
    heatmap = window.panels["state_heatmap"]
    stop = threading.Event()
    written = []

    def write():
        rng = np.random.default_rng(0)
        step = 0
        while not stop.is_set() and step < 400:
            write_probe_step(writer, "lstm", info, step, 2, rng)
            writer.write_scalars(step, {"loss": 1.0 / (step + 1)}, phase="batch")
            writer.flush()
            written.append(step)
            step += 1
            time.sleep(0.01)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        qtbot.waitUntil(lambda: len(written) > 5 and "step" in heatmap.heading.text(),
                        timeout=10000)
        # The timer redraws the newest step: the slider sits at its end.
        qtbot.waitUntil(lambda: window.slider.maximum() >= 8, timeout=10000)
        assert window.slider.value() == window.slider.maximum()
        window.slider.setValue(3)
        scrubbed = window.collection.current_step()
        assert not window.collection.following
        newest = written[-1]
        qtbot.waitUntil(lambda: written[-1] > newest + 5, timeout=10000)
        qtbot.wait(100)
        assert window.collection.current_step() == scrubbed  # the view stays where it was put
        assert f"step {scrubbed}" in heatmap.heading.text()
        window.follow_live()
        target = written[-1]
        qtbot.waitUntil(lambda: window.collection.current_step() >= target, timeout=10000)
    finally:
        stop.set()
        thread.join()
        writer.close()
    qtbot.waitUntil(lambda: window.collection.primary.status == "finished", timeout=10000)
    loss = window.panels["training_curves"]._curves[0, "loss", "batch"]
    qtbot.waitUntil(lambda: window.tick() or len(loss.xData) == len(written), timeout=10000)


def test_a_still_empty_run_waits_then_shows_data(open_window, tmp_path, qtbot):
    run = tmp_path / "empty"
    run.mkdir()
    window = open_window([tmp_path], follow=True, load=False)
    assert window.banner.isVisible() and window.banner_severity == "info"
    assert "waiting" in window.banner.text()
    write_synthetic_run(run, probes=2, units=4, timesteps=5)
    qtbot.waitUntil(lambda: bool(window.collection.runs), timeout=10000)
    heatmap = window.panels["state_heatmap"]
    qtbot.waitUntil(lambda: (0, 0) in heatmap.cells and heatmap.cells[0, 0].shape == (4, 5),
                    timeout=10000)
    qtbot.waitUntil(lambda: not window.banner.isVisible(), timeout=5000)


def test_a_foreign_file_shows_a_clear_message(open_window, tmp_path):
    run = tmp_path / "foreign"
    run.mkdir()
    (run / "events.rnnx").write_text("col1,col2\n1,2\n" * 10)
    window = open_window([run])
    assert window.banner.isVisible() and window.banner_severity == "error"
    assert "not a keras-rnnx run log" in window.banner.text()
    heatmap = window.panels["state_heatmap"]
    assert heatmap.notice.isVisible() and "not a keras-rnnx run log" in heatmap.notice.text()
    assert "cannot be read" in window.panels["overview"].plain_text()


def test_a_run_deleted_while_open_keeps_the_window_alive(open_window, runs, tmp_path, qtbot):
    run = tmp_path / "doomed"
    shutil.copytree(runs / "lstm", run)
    window = open_window([run], follow=True)
    qtbot.waitUntil(lambda: window.collection.primary.status == "finished", timeout=10000)
    shutil.rmtree(run)
    qtbot.waitUntil(lambda: window.banner.isVisible() and "deleted" in window.banner.text(),
                    timeout=10000)
    window.slider.setValue(1)
    assert window.panels["state_heatmap"].cells[0, 0].shape == (UNITS, T)


# ---- headless screenshots -----------------------------------------------------------------------


@pytest.mark.parametrize("panel", [None, "gradient-flow", "state_heatmap"])
def test_screenshot_mode_renders_a_png(qtbot, runs, tmp_path, capsys, panel):
    out = tmp_path / "shot.png"
    argv = [str(runs / "lstm"), "--compare", str(runs / "vanilla"), "--screenshot", str(out),
            "--size", "800x500"]
    if panel:
        argv += ["--panel", panel]
    assert main(argv) == 0
    image = QtGui.QImage(str(out))
    assert (image.width(), image.height()) == (800, 500)
    assert str(out) in capsys.readouterr().out


def test_screenshot_of_a_bad_run_prints_the_message(qtbot, tmp_path, capsys):
    run = tmp_path / "foreign"
    run.mkdir()
    (run / "events.rnnx").write_text("hello\n" * 20)
    assert main([str(run), "--screenshot", str(tmp_path / "bad.png")]) == 0
    assert "not a keras-rnnx run log" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(run), "--screenshot", str(tmp_path / "x.png"), "--panel", "nope"])
