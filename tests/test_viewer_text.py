"""The Text panel, offscreen with pytest-qt: a corpus probe's text coloured by one unit (model →
view, through the lookup table), units chosen from the heatmap, the unit box and the feature
ranking (view → model), LSTMVis matching of a selected span, live following, and messages for
runs without a usable corpus probe."""

from __future__ import annotations

import inspect
import json
import math
import os
import struct
import zlib

os.environ["QT_QPA_PLATFORM"] = "offscreen"

import numpy as np  # noqa: E402
import pyqtgraph as pg  # noqa: E402
import pytest  # noqa: E402
from PyQt6 import QtCore, QtGui, QtWidgets  # noqa: E402

from keras_rnnx import interpret  # noqa: E402
from keras_rnnx.runlog import LOG_FILE_NAME, RunWriter  # noqa: E402
from visualizer.__main__ import main  # noqa: E402
from visualizer.main_window import MainWindow  # noqa: E402
from visualizer.model import RunCollection, RunModel  # noqa: E402
from visualizer.panels.text import LIGHTEN, TextPanel  # noqa: E402
from visualizer.synthetic import layer_meta, run_meta  # noqa: E402
from visualizer.text_model import layout_text, layout_tokens, visible_items  # noqa: E402

UNITS, T = 8, 12
LEFT = QtCore.Qt.MouseButton.LeftButton


def source_text() -> str:
    """Real Python source that tokenizes: a module of the standard library, cut at a blank
    line between top-level statements."""
    source = inspect.getsource(json.decoder)
    cut = source.index("\n\n\n", 2500) + 1
    return source[:cut]


TEXT = source_text()
FEATURES = interpret.code_features(TEXT)


def corpus_states(seed: int = 0, scale: float = 1.0) -> np.ndarray:
    """(N, UNITS) float32 states: unit 3 follows in_string, unit 5 the bracket depth, the rest
    noise, so that the ranking and the matches have something to find."""
    rng = np.random.default_rng(seed)
    h = np.tanh(rng.standard_normal((len(TEXT), UNITS)) * 0.6).astype(np.float32) * scale
    h[:, 3] = np.where(FEATURES["in_string"] == 1, 0.8, -0.7) + 0.05 * h[:, 0]
    h[:, 5] = np.tanh(FEATURES["bracket_depth"] - 0.5)
    return h.astype(np.float32)


def write_corpus_run(path, steps=(10,), text=TEXT, meta=None, probe=True, states=None):
    info = {"lstm": layer_meta("forget", UNITS, T)}
    writer = RunWriter(path, meta=run_meta(info, 1, T, 1))
    writer.write_corpus(text, meta=meta or {"source": "json/decoder.py"})
    for k, step in enumerate(steps):
        if probe:
            rng = np.random.default_rng(step)
            writer.write_frame("h", "lstm", step,
                               np.tanh(rng.standard_normal((1, T, UNITS))).astype(np.float32))
        h = corpus_states(k) if states is None else states[k]
        writer.write_corpus_frame("h", "lstm", step, h)
        writer.write_corpus_frame("f", "lstm", step, (h + 1) / 2)
    return writer


def open_window(qtbot, path, follow=False) -> MainWindow:
    window = MainWindow([str(path)], settings=None, follow=follow)
    qtbot.addWidget(window)
    if not follow:
        window.collection.load()
    window.resize(1500, 950)
    window.show()
    window.show_panel("text")
    window.tick()
    return window


def settle(window: MainWindow, qtbot) -> TextPanel:
    """Ticks until the text panel's worker is idle and its results are drawn."""
    panel = window.panels["text"]
    for _ in range(3):
        window.tick()
        assert panel.jobs.wait(60)
        QtWidgets.QApplication.processEvents()
    window.tick()
    return panel


def cell_pixel(panel: TextPanel, image: QtGui.QImage, item: int) -> tuple[int, int, int]:
    """The colour at the centre of the first cell of `item` in a grab of the canvas."""
    canvas = panel.canvas
    line, col = canvas.layout_.line_span(item)
    rect = canvas.cell_rect(line, col)
    ratio = image.devicePixelRatio()
    color = image.pixelColor(int((rect.center().x()) * ratio), int(rect.center().y() * ratio))
    return color.red(), color.green(), color.blue()


def mouse(widget: QtWidgets.QWidget, kind: QtCore.QEvent.Type, pos: QtCore.QPointF,
          button=LEFT, buttons=LEFT) -> None:
    event = QtGui.QMouseEvent(kind, pos, widget.mapToGlobal(pos), button, buttons,
                              QtCore.Qt.KeyboardModifier.NoModifier)
    QtWidgets.QApplication.sendEvent(widget, event)


def item_point(panel: TextPanel, item: int) -> QtCore.QPointF:
    line, col = panel.canvas.layout_.line_span(item)
    return panel.canvas.cell_rect(line, col).center()


# ---- layout ------------------------------------------------------------------------------------


def test_layout_places_every_character_with_its_own_line_breaks():
    text = "ab\tc\n\nxy"
    layout = layout_text(text)
    assert layout.lines == ["ab      c ", " ", "xy"]
    assert layout.row.tolist() == [0, 0, 0, 0, 0, 1, 2, 2]
    assert layout.col.tolist() == [0, 1, 2, 8, 9, 0, 0, 1]
    assert layout.width.tolist() == [1, 1, 6, 1, 1, 1, 1, 1]
    # every cell of a line names its character; the tab covers six cells
    grid = visible_items(layout, 0, 4, 0, 11)
    assert grid[0].tolist() == [0, 1, 2, 2, 2, 2, 2, 2, 3, 4, -1]
    assert grid[1].tolist()[:2] == [5, -1] and grid[2].tolist()[:3] == [6, 7, -1]
    assert (grid[3] == -1).all()
    assert visible_items(layout, 2, 1, 1, 2).tolist() == [[7, -1]]


def test_token_layout_wraps_between_tokens_and_breaks_at_newline_tokens():
    layout = layout_tokens(["hello", "world", "\n", "a"], wrap=8)
    assert layout.lines == ["hello", "world ↵", "a"] and layout.tokens
    assert layout.row.tolist() == [0, 1, 1, 2] and layout.col.tolist() == [0, 0, 6, 0]
    assert visible_items(layout, 1, 1, 0, 8).tolist() == [[1, 1, 1, 1, 1, -1, 2, -1]]


# ---- model → view: colours ---------------------------------------------------------------------


@pytest.mark.parametrize("kind, colormap, low, high", [("h", "CET-D1", -1.0, 1.0),
                                                        ("f", "viridis", 0.0, 1.0),
                                                        ("c", "CET-D1", -1.0, 1.0)])
def test_colours_are_the_values_written_through_the_lookup_table(tmp_path, qtbot, kind,
                                                                  colormap, low, high):
    """h and z on [-1, 1], gates on [0, 1]; the unbounded cell state c as tanh(c) on
    [-1, 1] (Karpathy et al. 2015, Fig. 2)."""
    text = "".join(f"{'ab cd  e' * 3}\n" for _ in range(30))
    rng = np.random.default_rng(7)
    h = rng.uniform(-1.2, 1.2, (len(text), UNITS)).astype(np.float32)
    h[5, 2], h[6, 2] = low, high  # the ends of the levels
    h[9, 2] = np.nan
    writer = write_corpus_run(tmp_path / "run", states=[h], text=text)
    writer.write_corpus_frame("c", "lstm", 10, 40 * h)  # a cell state far beyond ±1
    writer.close()
    window = open_window(qtbot, tmp_path / "run")
    panel = window.panels["text"]
    panel.select_kind(kind)
    panel.select_unit(2)
    panel.canvas.resize(900, 700)
    settle(window, qtbot)
    written = {"h": h[:, 2], "f": (h[:, 2] + 1) / 2, "c": np.tanh(40 * h[:, 2])}[kind]
    assert panel.shown["kind"] == kind and panel.shown["unit"] == 2
    assert panel.shown["levels"] == (low, high)
    image = panel.canvas.viewport().grab().toImage()
    reference = pg.colormap.get(colormap)
    table = reference.getLookupTable(nPts=256, alpha=False).astype(np.float64)
    blanks = [i for i, c in enumerate(text) if c in " \n"]
    first, lines, _, _ = panel.canvas.visible_range()
    on_screen = [i for i in blanks if panel.canvas.layout_.row[i] < first + lines - 1]
    assert len(on_screen) > 100
    for item in on_screen:
        value = float(written[item])
        pixel = np.array(cell_pixel(panel, image, item), np.float64)
        if math.isnan(value):
            assert pixel.tolist() == [255, 0, 255]
            continue
        x = min(max((value - low) / (high - low), 0.0), 1.0)
        # the entry of a 256-entry table that holds the value, lightened as the bar says
        entry = table[min(int(math.floor(x * 256)), 255)]
        expected = LIGHTEN * 255 + (1 - LIGHTEN) * entry
        assert np.abs(pixel - expected).max() <= 1.0, (item, value, pixel, expected)
        # and the continuous colour map itself, to within the table's resolution
        exact = LIGHTEN * 255 + (1 - LIGHTEN) * np.asarray(
            reference.map(np.array([x]), mode="float")[0][:3]) * 255
        assert np.abs(pixel - exact).max() <= 4.0, (item, value, pixel, exact)
    # the colour bar shows the same levels and the same lightened map
    assert tuple(panel.bar.levels()) == (low, high)
    bar_lut = panel.bar.colorMap().getLookupTable(nPts=256, alpha=False)
    np.testing.assert_allclose(bar_lut, LIGHTEN * 255 + (1 - LIGHTEN) * table, atol=1)


def test_hover_tells_the_character_its_position_and_the_value(tmp_path, qtbot):
    write_corpus_run(tmp_path / "run").close()
    window = open_window(qtbot, tmp_path / "run")
    panel = settle(window, qtbot)
    item = TEXT.index("def ")
    mouse(panel.canvas.viewport(), QtCore.QEvent.Type.MouseMove, item_point(panel, item),
          QtCore.Qt.MouseButton.NoButton, QtCore.Qt.MouseButton.NoButton)
    line = TEXT.count("\n", 0, item) + 1
    column = item - (TEXT.rfind("\n", 0, item) + 1) + 1
    value = float(corpus_states(0)[item, panel.shown["unit"]])
    text = panel.readout.text()
    assert text.startswith("'d' (U+0064)") and f"at {item} (line {line}, column {column})" in text
    assert f"= {value:.4g}" in text


# ---- choosing units ----------------------------------------------------------------------------


def test_clicking_a_heatmap_row_selects_that_unit(tmp_path, qtbot):
    write_corpus_run(tmp_path / "run").close()
    window = open_window(qtbot, tmp_path / "run")
    panel = settle(window, qtbot)
    heatmap = window.panels["state_heatmap"]
    window.show_panel("state_heatmap")
    window.tick()
    QtWidgets.QApplication.processEvents()
    cell = heatmap.cells[0, 0]
    for unit in (6, 1):
        scene = cell.plot.vb.mapViewToScene(QtCore.QPointF(4.5, unit + 0.5))
        pos = heatmap.graphics.mapFromScene(scene)
        qtbot.mouseClick(heatmap.graphics.viewport(), LEFT, pos=pos)
        window.tick()
        assert panel.unit == unit and panel.shown["unit"] == unit
        np.testing.assert_array_equal(panel.values(), corpus_states(0)[:, unit])


def test_typing_a_unit_number_selects_it(tmp_path, qtbot):
    write_corpus_run(tmp_path / "run").close()
    window = open_window(qtbot, tmp_path / "run")
    panel = settle(window, qtbot)
    box = panel.unit_box
    box.lineEdit().selectAll()
    qtbot.keyClicks(box.lineEdit(), "7")
    qtbot.keyClick(box.lineEdit(), QtCore.Qt.Key.Key_Return)
    window.tick()
    assert panel.shown["unit"] == 7
    np.testing.assert_array_equal(panel.values(), corpus_states(0)[:, 7])
    assert box.maximum() == UNITS - 1  # no unit beyond the layer's


def test_feature_ranking_is_unit_correlations_and_picks_units(tmp_path, qtbot):
    write_corpus_run(tmp_path / "run").close()
    window = open_window(qtbot, tmp_path / "run")
    panel = settle(window, qtbot)
    status, ranking = panel.ranking()
    assert status == "ok" and set(ranking) == set(interpret.FEATURES)
    states = corpus_states(0)
    for feature in interpret.FEATURES:
        units, r = ranking[feature]
        expected = interpret.unit_correlations(states, FEATURES[feature])
        np.testing.assert_array_equal(np.sort(units), np.arange(UNITS))
        np.testing.assert_array_equal(r, expected[units])
        assert np.all(np.diff(np.abs(r)) <= 0)  # best |r| first
        for unit in units[:3]:  # an independent reference of Pearson's r
            if states[:, unit].std() and FEATURES[feature].std():
                rho = np.corrcoef(states[:, unit], FEATURES[feature])[0, 1]
                assert r[list(units).index(unit)] == pytest.approx(rho, abs=1e-9)
    assert ranking["in_string"][0][0] == 3 and ranking["bracket_depth"][0][0] == 5
    panel.select_feature("bracket_depth")
    window.tick()
    shown = [panel.ranking_list.item(k).data(QtCore.Qt.ItemDataRole.UserRole)
             for k in range(panel.ranking_list.count())]
    assert shown == ranking["bracket_depth"][0].tolist()
    item = panel.ranking_list.item(0)
    qtbot.mouseClick(panel.ranking_list.viewport(), LEFT,
                     pos=panel.ranking_list.visualItemRect(item).center())
    window.tick()
    assert panel.shown["unit"] == 5
    # a feature's best unit on request (--feature without --unit)
    panel.select_feature("in_string", best=True)
    settle(window, qtbot)
    assert panel.shown["unit"] == ranking["in_string"][0][0] == 3


def test_text_that_does_not_tokenize_says_why_it_has_no_ranking(tmp_path, qtbot):
    text = "def f(:\n    'open\n" * 20
    write_corpus_run(tmp_path / "run", text=text,
                     states=[np.zeros((len(text), UNITS), np.float32)]).close()
    window = open_window(qtbot, tmp_path / "run")
    panel = settle(window, qtbot)
    assert panel.ranking()[0] == "error"
    assert "not Python source that tokenizes" in panel.ranking_note.text()
    assert "line" in panel.ranking_note.text()


# ---- match view --------------------------------------------------------------------------------


def test_a_selected_span_lists_its_on_units_and_the_matches_of_interpret_match(tmp_path,
                                                                                qtbot):
    write_corpus_run(tmp_path / "run").close()
    window = open_window(qtbot, tmp_path / "run")
    panel = settle(window, qtbot)
    panel.canvas.resize(900, 600)
    QtWidgets.QApplication.processEvents()
    # drag over a few characters inside the module's first string literal
    start = TEXT.index('"""') + 4
    stop = start + 5
    viewport = panel.canvas.viewport()
    mouse(viewport, QtCore.QEvent.Type.MouseButtonPress, item_point(panel, start))
    mouse(viewport, QtCore.QEvent.Type.MouseMove, item_point(panel, start + 2),
          QtCore.Qt.MouseButton.NoButton)
    mouse(viewport, QtCore.QEvent.Type.MouseMove, item_point(panel, stop - 1),
          QtCore.Qt.MouseButton.NoButton)
    mouse(viewport, QtCore.QEvent.Type.MouseButtonRelease, item_point(panel, stop - 1),
          buttons=QtCore.Qt.MouseButton.NoButton)
    assert panel.span == (start, stop)
    settle(window, qtbot)
    states = corpus_states(0)
    threshold = panel.threshold_box.value()
    status, (on, matches) = panel.match_result()
    assert status == "ok"
    expected_on = [u for u in range(UNITS) if (states[start:stop, u] > threshold).all()]
    assert on.tolist() == expected_on and 3 in expected_on
    assert matches == interpret.match(states, start, stop, threshold, 10) and matches
    listed = [panel.match_list.item(k).data(QtCore.Qt.ItemDataRole.UserRole)
              for k in range(panel.match_list.count())]
    assert [tuple(span) for span in listed] == [(a, b) for a, b, _ in matches]
    assert panel.canvas.selection == (start, stop)  # outlined on the text, as the matches are
    assert panel.canvas.matches == [(a, b) for a, b, _ in matches]
    assert [panel.on_list.item(k).text() for k in range(panel.on_list.count())] == \
        [str(u) for u in expected_on]
    # clicking a match that is off screen scrolls the text to it
    bar = panel.canvas.verticalScrollBar()
    bar.setValue(bar.maximum())
    assert bar.maximum() > 0
    near = min(range(panel.match_list.count()),
               key=lambda k: panel.match_list.item(k).data(QtCore.Qt.ItemDataRole.UserRole)[0])
    target = panel.match_list.item(near).data(QtCore.Qt.ItemDataRole.UserRole)
    line = panel.canvas.layout_.line_span(target[0])[0]
    assert line < bar.maximum()  # off screen, above
    item = panel.match_list.item(near)
    panel.match_list.scrollToItem(item)
    qtbot.mouseClick(panel.match_list.viewport(), LEFT,
                     pos=panel.match_list.visualItemRect(item).center())
    window.tick()
    first, lines, _, _ = panel.canvas.visible_range()
    assert first <= line < first + lines - 1
    assert panel.canvas.current_match == tuple(target)
    # the threshold is adjustable: a higher one gives interpret.match's answer for it
    panel.threshold_box.setValue(0.75)
    settle(window, qtbot)
    _, (on, matches) = panel.match_result()
    assert matches == interpret.match(states, start, stop, 0.75, 10)
    assert on.tolist() == [u for u in range(UNITS) if (states[start:stop, u] > 0.75).all()]


# ---- live follow, scrubbing --------------------------------------------------------------------


def test_follows_new_recordings_live_and_scrubs_with_the_step_slider(tmp_path, qtbot):
    path = tmp_path / "run"
    writer = write_corpus_run(path, steps=(10,))
    writer.flush()
    window = open_window(qtbot, path, follow=True)
    panel = window.panels["text"]
    qtbot.waitUntil(lambda: panel.shown.get("step") == 10, timeout=20000)
    panel.select_unit(4)
    later = corpus_states(1, scale=0.5)
    writer.write_frame("h", "lstm", 20, np.zeros((1, T, UNITS), np.float32))
    writer.write_corpus_frame("h", "lstm", 20, later)
    writer.write_corpus_frame("f", "lstm", 20, (later + 1) / 2)
    writer.flush()
    qtbot.waitUntil(lambda: panel.shown.get("step") == 20, timeout=20000)
    np.testing.assert_array_equal(panel.values(), later[:, 4])
    assert "step 20" in panel.heading.text()
    writer.close()
    window.slider.setValue(0)  # scrub back to the first recording
    window.tick()
    assert panel.shown["step"] == 10
    np.testing.assert_array_equal(panel.values(), corpus_states(0)[:, 4])


def test_a_corpus_recording_between_probe_steps_is_on_the_slider(tmp_path):
    writer = write_corpus_run(tmp_path / "run", steps=(10,))
    writer.write_corpus_frame("h", "lstm", 15, corpus_states(2))
    writer.close()
    collection = RunCollection([tmp_path / "run"])
    collection.load()
    assert collection.steps().tolist() == [10, 15]


def test_corpus_recordings_are_bounded_by_the_memory_budget(tmp_path):
    text = "x" * 1000
    with RunWriter(tmp_path / "run") as writer:
        writer.write_corpus(text)
        for step in range(12):
            writer.write_frame("h", "l", step, np.zeros((1, 4, 2), np.float32))
            writer.write_corpus_frame("h", "l", step, np.full((1000, 4), step, np.float32))
    model = RunModel(tmp_path / "run", memory_budget=40_000)  # half of it: 1.25 recordings
    while model.poll(None):
        pass
    kept = model.reader.corpus_frames("h", "l")
    assert model.max_corpus_frames == 1 and len(kept) == 1 and kept[0][0] == 11
    model = RunModel(tmp_path / "run", memory_budget=200_000)  # 6 recordings of 16 kB
    while model.poll(None):
        pass
    kept = [s for s, _ in model.reader.corpus_frames("h", "l")]
    assert model.max_corpus_frames == 6 and len(kept) <= 6 and kept[-1] == 11


# ---- messages ----------------------------------------------------------------------------------


def framed_record(header: dict, data: bytes = b"") -> bytes:
    """One record in the documented byte layout (docs/runlog.md)."""
    head = json.dumps(header).encode()
    payload = struct.pack("<I", len(head)) + head + data
    length = struct.pack("<Q", len(payload))
    return (length + struct.pack("<I", zlib.crc32(length)) + payload
            + struct.pack("<I", zlib.crc32(payload)))


def test_runs_without_a_usable_corpus_probe_say_why(tmp_path, qtbot):
    info = {"lstm": layer_meta("forget", UNITS, T)}
    with RunWriter(tmp_path / "none", meta=run_meta(info, 1, T, 1)) as writer:
        writer.write_frame("h", "lstm", 1, np.zeros((1, T, UNITS), np.float32))
    with RunWriter(tmp_path / "text_only", meta=run_meta(info, 1, T, 1)) as writer:
        writer.write_corpus("x = 1\n")
        writer.write_frame("h", "lstm", 1, np.zeros((1, T, UNITS), np.float32))
    with RunWriter(tmp_path / "corrupt", meta=run_meta(info, 1, T, 1)) as writer:
        writer.write_frame("h", "lstm", 1, np.zeros((1, T, UNITS), np.float32))
    with open(tmp_path / "corrupt" / LOG_FILE_NAME, "ab") as file:
        file.write(framed_record({"type": "corpus", "name": "corpus", "characters": 3,
                                  "dtype": "|u1", "shape": [3]}, b"\xff\xfe\xfd"))
        file.write(framed_record({"type": "corpus_frame", "corpus": "corpus", "kind": "h",
                                  "layer": "lstm", "step": 1, "dtype": "<f4", "shape": [3, 2]},
                                 np.zeros((3, 2), "<f4").tobytes()))
    with RunWriter(tmp_path / "empty", meta=run_meta(info, 1, T, 1)) as writer:
        writer.write_frame("h", "lstm", 1, np.zeros((1, T, UNITS), np.float32))
    with open(tmp_path / "empty" / LOG_FILE_NAME, "ab") as file:  # a text of no characters
        file.write(framed_record({"type": "corpus", "name": "corpus", "characters": 0,
                                  "dtype": "|u1", "shape": [0]}))
    expected = {
        "none": "This run has no corpus probe",
        "text_only": "has no recording yet",
        "corrupt": "has frames but no readable text",
        "empty": "The run's corpus probe could not be read",
    }
    for name, message in expected.items():
        window = open_window(qtbot, tmp_path / name)
        panel = window.panels["text"]
        window.tick(force=True)
        assert panel.notice.isVisibleTo(panel) and message in panel.notice.text(), name
        if name == "corrupt":
            assert "not UTF-8" in panel.notice.text()
        if name == "empty":
            assert "corpus record of 0 characters" in panel.notice.text()
        window.close()


def test_word_level_runs_are_drawn_token_by_token(tmp_path, qtbot):
    tokens = ["the", "film", "was", "not", "good", "\n"] * 40
    text = "\u2022" * len(tokens)  # one character per token: the rows of the frames
    h = np.linspace(-1, 1, len(tokens) * UNITS, dtype=np.float32).reshape(len(tokens), UNITS)
    write_corpus_run(tmp_path / "run", text=text, meta={"tokens": tokens}, states=[h]).close()
    window = open_window(qtbot, tmp_path / "run")
    panel = settle(window, qtbot)
    layout = panel.canvas.layout_
    assert layout.tokens and layout.lines[0] == "the film was not good ↵"
    assert "tokens" in panel.heading.text() and "tokens" in panel.ranking_note.text()
    assert panel.describe(3).startswith("token 'not' at 3 (line 1, column 14)")


def test_screenshot_of_the_text_panel_with_a_unit(tmp_path, capsys):
    write_corpus_run(tmp_path / "run").close()
    out = tmp_path / "text.png"
    assert main([str(tmp_path / "run"), "--screenshot", str(out), "--panel", "text",
                 "--unit", "3", "--size", "1200x700"]) == 0
    image = QtGui.QImage(str(out))
    assert (image.width(), image.height()) == (1200, 700)
    assert main([str(tmp_path / "run"), "--screenshot", str(out), "--panel", "text",
                 "--feature", "bracket_depth"]) == 0
    with pytest.raises(SystemExit):
        main([str(tmp_path / "run"), "--screenshot", str(out), "--panel", "text",
              "--feature", "depth"])
    assert "--feature: unknown feature 'depth'" in capsys.readouterr().err


def test_screenshot_refuses_a_unit_out_of_range_or_for_another_panel(tmp_path, capsys):
    write_corpus_run(tmp_path / "run").close()
    out = tmp_path / "text.png"
    with pytest.raises(SystemExit):
        main([str(tmp_path / "run"), "--screenshot", str(out), "--panel", "text",
              "--unit", "-1"])
    assert "--unit" in capsys.readouterr().err
    assert main([str(tmp_path / "run"), "--screenshot", str(out), "--panel", "text",
                 "--unit", str(UNITS)]) == 2
    assert f"--unit {UNITS}: the text panel's recording has {UNITS} units" \
        in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main([str(tmp_path / "run"), "--screenshot", str(out), "--panel", "state_heatmap",
              "--unit", "3"])
    assert "--panel text" in capsys.readouterr().err


def test_ranking_and_matching_import_neither_tensorflow_nor_keras(tmp_path):
    import subprocess
    import sys

    write_corpus_run(tmp_path / "run").close()
    script = f"""
import os, sys
os.environ["QT_QPA_PLATFORM"] = "offscreen"
from visualizer.main_window import MainWindow, make_application
app = make_application()
window = MainWindow([{str(tmp_path / "run")!r}], settings=None, follow=False)
window.collection.load()
window.show()
window.show_panel("text")
panel = window.panels["text"]
panel.select_span(10, 14)
for _ in range(3):
    window.tick(force=True)
    panel.jobs.wait(120)
assert panel.ranking()[0] == "ok" and panel.match_result()[0] == "ok"
window.close()
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
assert not bad, bad
print("clean")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert result.returncode == 0, result.stderr
    assert "clean" in result.stdout
