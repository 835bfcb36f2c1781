"""Text: a corpus probe's text with each character's background coloured by one unit's value.

What Karpathy et al. (2015) drew by hand and LSTMVis (Strobelt et al., 2018) drew after
training, live: the text of the run's corpus probe (`keras_rnnx.corpus_probe`) in a monospace
grid with its own line breaks (a word-level run's tokens one after the other), each character's
background coloured by the selected unit at that character — a diverging map with fixed levels
for h, c and z, a sequential one for gates, with a colour bar. It follows new recordings and
scrubs with the step slider like every panel; hovering tells the character, its position and
the value.

Units are chosen by typing a number, by clicking a row of the hidden-state heatmap
(`follow_heatmap`), or from "units for a feature": for Python source, the units ranked by |r|
with each of `keras_rnnx.interpret.code_features`. Selecting a span of text with the mouse
lists its on units (above a threshold at every character of it) and the spans elsewhere whose
on units match best (`interpret.match`); clicking one scrolls the text to it. The ranking and
the matching run in a worker thread (NumPy only); the canvas colours only what is on screen.
"""

from __future__ import annotations

import functools
import math
import queue
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Sequence

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtGui, QtWidgets

from keras_rnnx import interpret
from visualizer.model import RunCollection
from visualizer.panels.base import DIVERGING, SEQUENTIAL, Panel, format_value
from visualizer.text_model import (
    TextLayout,
    context,
    corpus_view,
    feature_ranking,
    layout_for,
    lut_indices,
    span_match,
    text_levels,
    visible_items,
)

__all__ = ["TextCanvas", "TextPanel", "follow_heatmap", "panel_lut"]

KIND_LABELS = {"h": "hidden state h", "c": "cell state c", "i": "input gate i",
               "f": "forget gate f", "z": "cell input z", "o": "output gate o"}
# The maps are lightened towards white so that black text stays legible on every colour; the
# colour bar shows the same lightened map, so the bar and the text agree.
LIGHTEN = 0.35
BACKGROUND = (255, 255, 255, 255)  # cells of no character (past a line's end)
NAN_RGBA = (255, 0, 255, 255)  # magenta, as in the heatmaps: a colour no map uses
MATCHES = 10
RANKED_SHOWN = 25


@functools.lru_cache(maxsize=None)
def panel_lut(colormap: str) -> np.ndarray:
    """The (256, 4) uint8 lookup table of the Text panel for a pyqtgraph colour map name:
    entry k is the map at k/255, mixed with white by `LIGHTEN`. Cached, so read-only."""
    table = pg.colormap.get(colormap).getLookupTable(nPts=256, alpha=True).astype(np.float64)
    table[:, :3] = LIGHTEN * 255.0 + (1.0 - LIGHTEN) * table[:, :3]
    table[:, 3] = 255
    lut = np.round(table).astype(np.uint8)
    lut.flags.writeable = False
    return lut


def _lut_colormap(lut: np.ndarray) -> pg.ColorMap:
    return pg.ColorMap(np.linspace(0.0, 1.0, len(lut)), lut)


class TextCanvas(QtWidgets.QAbstractScrollArea):
    """The text in a cell grid; paints only the lines and columns on screen.

    Scroll bars count lines and columns. `hovered(item)` (-1 for none) follows the mouse;
    dragging selects a span of items and `span_selected(start, stop)` fires on release.
    """

    hovered = QtCore.pyqtSignal(int)
    span_selected = QtCore.pyqtSignal(int, int)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        font = QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont)
        font.setStyleHint(QtGui.QFont.StyleHint.TypeWriter)
        font.setPointSize(10)
        self.setFont(font)
        self.viewport().setMouseTracking(True)
        self.layout_: TextLayout | None = None
        # (array (N, U), unit, low, high, lut): what colours the cells, or None for plain text
        self.source: tuple[np.ndarray, int, float, float, np.ndarray, bool] | None = None
        self.selection: tuple[int, int] | None = None
        self.matches: list[tuple[int, int]] = []
        self.current_match: tuple[int, int] | None = None
        self._anchor: int | None = None
        self._measure()

    def _measure(self) -> None:
        metrics = QtGui.QFontMetricsF(self.font())
        self.cell_w = max(metrics.horizontalAdvance("M"), 1.0)
        self.cell_h = max(math.ceil(metrics.height()), 1)
        self.ascent = metrics.ascent()

    # ---- model → view -----------------------------------------------------------------------

    def set_layout(self, layout: TextLayout | None) -> None:
        if layout is self.layout_:
            return
        self.layout_ = layout
        self.source = None
        self.selection, self.matches, self.current_match = None, [], None
        self._update_bars()
        self.viewport().update()

    def set_source(self, array: np.ndarray | None, unit: int = 0, levels=(0.0, 1.0),
                   lut: np.ndarray | None = None, squash: bool = False) -> None:
        """Colours item i by `lut[lut_indices(v, *levels)]` with v = `array[i, unit]` (its
        tanh with `squash`), NaN/Inf magenta; None draws plain text. Only the items on screen
        are looked up, at each paint, so switching units costs the same for any corpus
        length."""
        self.source = None if array is None else (array, int(unit), float(levels[0]),
                                                  float(levels[1]), lut, bool(squash))
        self.viewport().update()

    def cell_colours(self, grid: np.ndarray) -> np.ndarray | None:
        """The (lines, columns, 4) uint8 colours of a grid of items (see `visible_items`)."""
        if self.source is None:
            return None
        array, unit, low, high, lut, squash = self.source
        values = array[np.maximum(grid, 0), unit].astype(np.float32)
        if squash:
            values = np.tanh(values)
        pixels = lut[lut_indices(values, low, high)]
        pixels[~np.isfinite(values)] = NAN_RGBA
        pixels[grid < 0] = BACKGROUND
        return pixels

    def set_highlights(self, selection: tuple[int, int] | None,
                       matches: Sequence[tuple[int, int]],
                       current: tuple[int, int] | None) -> None:
        self.selection, self.matches, self.current_match = selection, list(matches), current
        self.viewport().update()

    def _update_bars(self) -> None:
        layout = self.layout_
        lines = layout.line_count if layout else 0
        columns = layout.columns if layout else 0
        page_lines = max(int(self.viewport().height() // self.cell_h), 1)
        page_cols = max(int(self.viewport().width() // self.cell_w), 1)
        self.verticalScrollBar().setRange(0, max(lines - page_lines, 0))
        self.verticalScrollBar().setPageStep(page_lines)
        self.horizontalScrollBar().setRange(0, max(columns - page_cols + 1, 0))
        self.horizontalScrollBar().setPageStep(page_cols)

    def resizeEvent(self, event: QtGui.QResizeEvent) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self._update_bars()

    def scrollContentsBy(self, dx: int, dy: int) -> None:  # noqa: N802 - Qt's name
        # Every paint draws the whole viewport from the layout: moving the old pixels first
        # (Qt's default) would only be work thrown away.
        self.viewport().update()

    def scroll_to_item(self, item: int) -> None:
        """Scrolls so that `item` is on screen, a third of the way down."""
        layout = self.layout_
        if layout is None or not 0 <= item < layout.count:
            return
        line, col = layout.line_span(item)
        page_lines = max(int(self.viewport().height() // self.cell_h), 1)
        page_cols = max(int(self.viewport().width() // self.cell_w), 1)
        self.verticalScrollBar().setValue(max(line - page_lines // 3, 0))
        first_col = self.horizontalScrollBar().value()
        if not first_col <= col < first_col + page_cols - 1:
            self.horizontalScrollBar().setValue(max(col - page_cols // 3, 0))
        self.viewport().update()

    # ---- geometry ---------------------------------------------------------------------------

    def visible_range(self) -> tuple[int, int, int, int]:
        """`(first line, lines, first column, columns)` on screen."""
        size = self.viewport().size()
        return (self.verticalScrollBar().value(), int(size.height() // self.cell_h) + 1,
                self.horizontalScrollBar().value(), int(size.width() // self.cell_w) + 1)

    def cell_rect(self, line: int, col: int, cells: int = 1) -> QtCore.QRectF:
        """The viewport rectangle of `cells` cells from (line, col)."""
        first_line, _, first_col, _ = self.visible_range()
        return QtCore.QRectF((col - first_col) * self.cell_w, (line - first_line) * self.cell_h,
                             cells * self.cell_w, self.cell_h)

    def item_at(self, pos: QtCore.QPointF) -> int:
        """The item under viewport point `pos`, or -1."""
        layout = self.layout_
        if layout is None:
            return -1
        first_line, _, first_col, _ = self.visible_range()
        line = first_line + int(pos.y() // self.cell_h)
        col = first_col + int(pos.x() // self.cell_w)
        if pos.x() < 0 or pos.y() < 0 or not 0 <= line < layout.line_count:
            return -1
        begin, end = int(layout.cell_start[line]), int(layout.cell_start[line + 1])
        if not 0 <= col < end - begin:
            return -1
        return int(layout.cell_item[begin + col])

    # ---- painting ---------------------------------------------------------------------------

    def paintEvent(self, event: QtGui.QPaintEvent) -> None:  # noqa: N802 - Qt's name
        painter = QtGui.QPainter(self.viewport())
        try:
            layout = self.layout_
            pixels = None
            if layout is not None:
                first_line, lines, first_col, columns = self.visible_range()
                grid = visible_items(layout, first_line, lines, first_col, columns)
                pixels = self.cell_colours(grid)
            if pixels is None:
                painter.fillRect(self.viewport().rect(), QtGui.QColor(*BACKGROUND))
            else:
                # Cells blown up to pixels here (rows × cell height, columns × the rounded cell
                # widths) and drawn 1:1 in Qt's native 32-bit format (BGRA bytes, opaque): a
                # scaled drawImage of the small image, or one in RGBA, costs several times more.
                # The image covers the viewport (a cell more each way): no fill first.
                widths = np.diff(np.round(np.arange(columns + 1) * self.cell_w).astype(np.int64))
                big = np.repeat(np.repeat(pixels[..., [2, 1, 0, 3]], self.cell_h, axis=0),
                                widths, axis=1)
                image = QtGui.QImage(big.data, big.shape[1], big.shape[0], big.shape[1] * 4,
                                     QtGui.QImage.Format.Format_ARGB32_Premultiplied)
                painter.drawImage(0, 0, image)
            if layout is None:
                return
            painter.setPen(QtGui.QColor(0, 0, 0))
            painter.setFont(self.font())
            for k in range(lines):
                line = first_line + k
                if line >= layout.line_count:
                    break
                text = layout.lines[line][first_col:first_col + columns]
                if not text.strip():
                    continue
                baseline = k * self.cell_h + self.ascent
                if text.isascii():
                    painter.drawText(QtCore.QPointF(0, baseline), text)
                else:
                    # Glyphs from fallback fonts have other widths: one per cell keeps the grid.
                    for j, char in enumerate(text):
                        if char != " ":
                            painter.drawText(QtCore.QPointF(j * self.cell_w, baseline), char)
            self._paint_spans(painter)
        finally:
            painter.end()

    def _paint_spans(self, painter: QtGui.QPainter) -> None:
        spans = [(span, QtGui.QColor("#E69F00"), 1.5, QtCore.Qt.PenStyle.DashLine)
                 for span in self.matches if span != self.current_match]
        if self.current_match is not None:
            spans.append((self.current_match, QtGui.QColor("#D55E00"), 2.5,
                          QtCore.Qt.PenStyle.SolidLine))
        if self.selection is not None:
            spans.append((self.selection, QtGui.QColor("#000000"), 2.0,
                          QtCore.Qt.PenStyle.SolidLine))
        painter.setBrush(QtCore.Qt.BrushStyle.NoBrush)
        for span, color, width, style in spans:
            pen = QtGui.QPen(color, width)
            pen.setStyle(style)
            painter.setPen(pen)
            for rect in self._span_rects(*span):
                painter.drawRect(rect)

    def _span_rects(self, start: int, stop: int) -> list[QtCore.QRectF]:
        """One rectangle per line of items [start, stop) that is on screen."""
        layout = self.layout_
        if layout is None or stop <= start:
            return []
        first_line, lines, _, _ = self.visible_range()
        start, stop = max(start, 0), min(stop, layout.count)
        rows = layout.row[start:stop]  # sorted: items run line by line
        rects = []
        top = max(int(rows[0]), first_line - 1)
        for line in range(top, min(int(rows[-1]), first_line + lines) + 1):
            a = int(np.searchsorted(rows, line, side="left")) + start
            b = int(np.searchsorted(rows, line, side="right")) + start - 1
            if b < a:
                continue
            left = int(layout.col[a])
            right = int(layout.col[b] + layout.width[b])
            rects.append(self.cell_rect(line, left, right - left).adjusted(1, 1, -1, -1))
        return rects

    # ---- mouse ------------------------------------------------------------------------------

    def mousePressEvent(self, event: QtGui.QMouseEvent) -> None:  # noqa: N802 - Qt's name
        if event.button() == QtCore.Qt.MouseButton.LeftButton:
            item = self.item_at(event.position())
            self._anchor = item if item >= 0 else None
            if self._anchor is not None:
                self.selection = (item, item + 1)
                self.viewport().update()
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QtGui.QMouseEvent) -> None:  # noqa: N802 - Qt's name
        item = self.item_at(event.position())
        self.hovered.emit(item)
        if self._anchor is not None and item >= 0 and \
                event.buttons() & QtCore.Qt.MouseButton.LeftButton:
            self.selection = (min(self._anchor, item), max(self._anchor, item) + 1)
            self.viewport().update()
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event: QtGui.QMouseEvent) -> None:  # noqa: N802 - Qt's name
        if event.button() == QtCore.Qt.MouseButton.LeftButton and self._anchor is not None:
            self._anchor = None
            if self.selection is not None:
                self.span_selected.emit(*self.selection)
        super().mouseReleaseEvent(event)

    def leaveEvent(self, event: QtCore.QEvent) -> None:  # noqa: N802 - Qt's name
        self.hovered.emit(-1)
        super().leaveEvent(event)


class _Jobs:
    """One worker thread for the analysis (NumPy only, no Qt): results by key, newest kept.

    `version` bumps when a result arrives; the panel's view key includes it, so the window's
    timer draws the result at its next tick. The thread is a daemon: a long match still
    running never holds up closing the viewer.
    """

    def __init__(self, keep: int = 16) -> None:
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._work, name="rnnx-viz-text", daemon=True)
        self.thread.start()
        self.keep = keep
        self.results: OrderedDict[Any, tuple[str, Any]] = OrderedDict()
        self.pending: set = set()
        self.version = 0
        self._lock = threading.Lock()

    def submit(self, key: Any, function: Callable[..., Any], *args: Any) -> None:
        with self._lock:
            if key in self.results or key in self.pending:
                return
            self.pending.add(key)

        def run() -> None:
            try:
                result = ("ok", function(*args))
            except Exception as error:  # noqa: BLE001 - shown in the panel, named
                result = ("error", f"{error}")
            with self._lock:
                self.results[key] = result
                while len(self.results) > self.keep:
                    self.results.popitem(last=False)
                self.pending.discard(key)
                self.version += 1

        self.queue.put(run)

    def _work(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            job()

    def stop(self) -> None:
        self.queue.put(None)

    def get(self, key: Any) -> tuple[str, Any] | None:
        with self._lock:
            return self.results.get(key)

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self.pending

    def wait(self, timeout: float = 30.0) -> bool:
        """Blocks until every submitted job is done (screenshots, tests); returns whether."""
        deadline = time.monotonic() + timeout
        while not self.idle:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True


class TextPanel(Panel):
    """The corpus probe's text, coloured by one unit; units by feature; LSTMVis matching."""

    name = "text"
    title = "Text"

    def __init__(self, collection: RunCollection, parent: QtWidgets.QWidget | None = None):
        super().__init__(collection, parent)
        self.jobs = _Jobs()
        self.wanted_layer: str | None = None
        self.wanted_kind = "h"
        self.unit = 0
        self.span: tuple[int, int] | None = None
        self.current_match: tuple[int, int] | None = None
        self._features: dict[int, tuple[str, Any]] = {}
        self._features_lock = threading.Lock()
        self._layout_key: Any = None
        self._colour_key: Any = None
        self._levels_cache: dict[Any, tuple[float, float, bool]] = {}
        self._drawn_ranking: Any = None
        self._drawn_match: Any = None
        self.shown: dict[str, Any] = {}
        self._best_pending = False

        self.layer_box = QtWidgets.QComboBox()
        self.layer_box.setToolTip("Layer of the corpus probe")
        self.layer_box.setMinimumContentsLength(10)
        self.layer_box.activated.connect(
            lambda i: self.select_layer(self.layer_box.itemText(i)) if i >= 0 else None)
        self.kind_box = QtWidgets.QComboBox()
        self.kind_box.setToolTip("Quantity: hidden state, cell state or a gate")
        self.kind_box.activated.connect(
            lambda i: self.select_kind(self.kind_box.itemData(i)) if i >= 0 else None)
        self.unit_box = QtWidgets.QSpinBox()
        self.unit_box.setPrefix("unit ")
        self.unit_box.setToolTip("The unit whose value colours the text (type a number, click "
                                 "a row of the hidden-state heatmap, or pick one by feature)")
        self.unit_box.setKeyboardTracking(False)
        self.unit_box.valueChanged.connect(self._unit_typed)
        for widget in (self.layer_box, self.kind_box, self.unit_box):
            self.options.addWidget(widget)

        self.canvas = TextCanvas()
        self.canvas.hovered.connect(self._hovered)
        self.canvas.span_selected.connect(self.select_span)
        self.bar_view = pg.GraphicsLayoutWidget()
        self.bar_view.setFixedWidth(92)
        self.bar = pg.ColorBarItem(values=(-1, 1), colorMap=_lut_colormap(panel_lut(DIVERGING)),
                                   interactive=False, label="h", width=14)
        self.bar.getAxis("left").setTextPen("k")
        self.bar.getAxis("left").setPen("k")
        self.bar_view.setBackground("w")  # beside the text, which is on white
        self.bar_view.addItem(self.bar)
        self._bar_key: Any = None

        self.feature_box = QtWidgets.QComboBox()
        self.feature_box.setToolTip("Rank the units by |r| with this feature of the text "
                                    "(keras_rnnx.interpret.code_features)")
        for feature in interpret.FEATURES:
            self.feature_box.addItem(feature, feature)
        self.feature_box.currentIndexChanged.connect(lambda _: self._invalidate_ranking())
        self.ranking_list = QtWidgets.QListWidget()
        self.ranking_list.setToolTip("Click a unit to colour the text by it")
        self.ranking_list.itemClicked.connect(self._unit_item_clicked)
        self.ranking_note = QtWidgets.QLabel()
        self.ranking_note.setWordWrap(True)
        feature_group = QtWidgets.QGroupBox("Units for a feature")
        column = QtWidgets.QVBoxLayout(feature_group)
        column.addWidget(self.feature_box)
        column.addWidget(self.ranking_list, 1)
        column.addWidget(self.ranking_note)

        self.threshold_box = QtWidgets.QDoubleSpinBox()
        self.threshold_box.setRange(-1000.0, 1000.0)
        self.threshold_box.setDecimals(2)
        self.threshold_box.setSingleStep(0.05)
        self.threshold_box.setValue(0.3)
        self.threshold_box.setPrefix("on above ")
        self.threshold_box.setToolTip("A unit is on in a span when its value is above this at "
                                      "every character of it")
        self.threshold_box.valueChanged.connect(lambda _: self._invalidate_match())
        self.span_label = QtWidgets.QLabel("Select a span of text with the mouse.")
        self.span_label.setWordWrap(True)
        self.on_list = QtWidgets.QListWidget()
        self.on_list.setFlow(QtWidgets.QListView.Flow.LeftToRight)
        self.on_list.setWrapping(True)
        self.on_list.setMaximumHeight(70)
        self.on_list.setToolTip("The span's on units: click one to colour the text by it")
        self.on_list.itemClicked.connect(self._unit_item_clicked)
        self.match_list = QtWidgets.QListWidget()
        self.match_list.setFont(self.readout.font())
        self.match_list.setToolTip("Spans elsewhere whose on units match best (Jaccard index): "
                                   "click one to scroll to it")
        self.match_list.itemClicked.connect(self._match_clicked)
        match_group = QtWidgets.QGroupBox("Match (LSTMVis)")
        column = QtWidgets.QVBoxLayout(match_group)
        column.addWidget(self.threshold_box)
        column.addWidget(self.span_label)
        column.addWidget(self.on_list)
        column.addWidget(self.match_list, 1)

        side = QtWidgets.QWidget()
        side_column = QtWidgets.QVBoxLayout(side)
        side_column.setContentsMargins(0, 0, 0, 0)
        side_column.addWidget(feature_group, 1)
        side_column.addWidget(match_group, 1)
        left = QtWidgets.QWidget()
        row = QtWidgets.QHBoxLayout(left)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.canvas, 1)
        row.addWidget(self.bar_view)
        self.splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        # In a scroll area, the lists never make the dock (and the window) taller than it is.
        side_scroll = QtWidgets.QScrollArea()
        side_scroll.setWidgetResizable(True)
        side_scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        side_scroll.setWidget(side)
        side_scroll.setMinimumSize(120, 60)
        self.splitter.addWidget(left)
        self.splitter.addWidget(side_scroll)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 1)
        self.body.addWidget(self.splitter)
        self.frame_units: int | None = None  # units of the recording drawn last
        # (reader, run version, view): the corpus view notice_text computed, which redraw (run
        # right after it by Panel.refresh) reuses instead of computing it again
        self._notice_view: tuple[Any, int, Any] | None = None

    # ---- user → selection -------------------------------------------------------------------

    def select_unit(self, unit: int, layer: str | None = None) -> None:
        """Colours the text by `unit` (of `layer` when given) at the next tick."""
        if layer is not None:
            self.wanted_layer = layer
        if int(unit) < 0:
            raise ValueError(f"unit must be 0 or more, got {unit}")
        self.unit = int(unit)
        if self.unit_box.value() != self.unit and self.unit <= self.unit_box.maximum():
            self.unit_box.blockSignals(True)
            self.unit_box.setValue(self.unit)
            self.unit_box.blockSignals(False)

    def select_layer(self, layer: str) -> None:
        self.wanted_layer = layer

    def select_kind(self, kind: str) -> None:
        self.wanted_kind = kind

    def select_feature(self, feature: str, best: bool = False) -> None:
        """Lists the units ranked by |r| with `feature`; with `best`, the first of them colours
        the text once the ranking is there."""
        index = self.feature_box.findData(feature)
        if index < 0:
            raise ValueError(f"Invalid value for argument `feature`: {feature!r}; expected one "
                             f"of {', '.join(interpret.FEATURES)}.")
        self.feature_box.setCurrentIndex(index)
        self._best_pending = best

    def select_span(self, start: int, stop: int) -> None:
        """Matches the span [start, stop) of the text (as a mouse selection does)."""
        self.span = (int(start), int(stop))
        self.current_match = None
        self._invalidate_match()

    def _unit_typed(self, value: int) -> None:
        self.unit = int(value)

    def _unit_item_clicked(self, item: QtWidgets.QListWidgetItem) -> None:
        unit = item.data(QtCore.Qt.ItemDataRole.UserRole)
        if unit is not None:
            self.select_unit(int(unit))

    def _match_clicked(self, item: QtWidgets.QListWidgetItem) -> None:
        span = item.data(QtCore.Qt.ItemDataRole.UserRole)
        if span:
            self.show_match(int(span[0]), int(span[1]))

    def show_match(self, start: int, stop: int) -> None:
        """Scrolls the text to the match [start, stop) and outlines it."""
        self.current_match = (start, stop)
        self.canvas.scroll_to_item(start)
        self._drawn_match = None

    def _invalidate_ranking(self) -> None:
        self._drawn_ranking = None

    def _invalidate_match(self) -> None:
        self._drawn_match = None

    def options_key(self) -> Any:
        return (self.wanted_layer, self.wanted_kind, self.unit, self.span, self.current_match,
                self.threshold_box.value(), self.feature_box.currentData(), self.jobs.version,
                self._drawn_ranking is None, self._drawn_match is None)

    # ---- model → view (on the timer) --------------------------------------------------------

    def notice_text(self) -> str | None:
        self._notice_view = None
        base = super().notice_text()
        if base:
            return base
        primary = self.collection.primary
        reader = primary.reader if primary else None
        view = corpus_view(reader, primary.problems if primary else ())
        if primary is not None:
            self._notice_view = (reader, primary.version, view)
        return view.message

    def redraw(self) -> None:
        primary = self.collection.primary
        if primary is None or primary.reader is None:
            self.set_heading("Text · no run")
            self.canvas.set_layout(None)
            self._layout_key = self._colour_key = None
            self.shown = {}
            return
        reader = primary.reader
        noticed, self._notice_view = self._notice_view, None
        if noticed is not None and noticed[0] is reader and noticed[1] == primary.version:
            view = noticed[2]
        else:
            view = corpus_view(reader, primary.problems)
        if view.message is not None or view.text is None:
            self.set_heading(f"Text · {primary.name}")
            self.canvas.set_layout(None)
            self._layout_key = self._colour_key = None
            self.shown = {}
            return
        layout_key = (id(primary), view.name, len(view.text), hash(view.text))
        if layout_key != self._layout_key:
            self._layout_key = layout_key
            self.canvas.set_layout(layout_for(view.text, view.meta))
            self.span, self.current_match = None, None
        layout = self.canvas.layout_
        layer = self._sync_layers(view.layers)
        kinds = self._sync_kinds(view.kinds(reader, layer))
        kind = self.wanted_kind if self.wanted_kind in kinds else (kinds[0] if kinds else "h")
        step = self.collection.current_step()
        frame = None
        try:
            frame = reader.corpus_frame_at(kind, layer, step, corpus=view.name)
        except KeyError:
            frame = None
        info = primary.layer_info(layer)
        parts = [f"corpus {view.name!r} ({layout.count:,} "
                 f"{'tokens' if layout.tokens else 'characters'})", f"layer {layer}",
                 KIND_LABELS.get(kind, kind)]
        self.shown = {"run": primary.name, "layer": layer, "kind": kind, "text": view.text,
                      "layout": layout, "corpus": view.name, "step": None}
        if frame is None:
            first = reader.corpus_steps(view.name)
            parts.append(f"no recording at or before step {step}"
                         + (f" (the first is at step {int(first[0])})" if first.size else ""))
            self.canvas.set_source(None)
            self._colour_key = None
            self.set_heading("Text · " + " · ".join(parts))
            return
        frame_step, array = frame
        units = self.frame_units = int(array.shape[1])
        if self.unit_box.maximum() != units - 1:
            self.unit_box.blockSignals(True)
            self.unit_box.setRange(0, max(units - 1, 0))
            self.unit_box.blockSignals(False)
        unit = min(self.unit, units - 1)
        if self.unit_box.value() != unit:
            self.unit_box.blockSignals(True)
            self.unit_box.setValue(unit)
            self.unit_box.blockSignals(False)
        levels_key = (id(primary), view.name, layer, kind)
        if levels_key not in self._levels_cache:
            self._levels_cache[levels_key] = text_levels(kind, info, array)
        low, high, squash = self._levels_cache[levels_key]
        colormap = SEQUENTIAL if low >= 0 else DIVERGING
        lut = panel_lut(colormap)
        colour_key = (id(array), unit, low, high, colormap, squash)
        if colour_key != self._colour_key:
            self._colour_key = colour_key
            self.canvas.set_source(array, unit, (low, high), lut, squash)
        label = f"{'tanh(c)' if squash else kind} ∈ [{low:g}, {high:g}]"
        bar_key = (colormap, low, high, label)
        if bar_key != self._bar_key:
            self._bar_key = bar_key
            self.bar.setColorMap(_lut_colormap(lut))
            self.bar.setLevels((low, high))
            self.bar.getAxis("left").setLabel(label)
        self.shown.update(step=frame_step, unit=unit, array=array, levels=(low, high),
                          squash=squash,
                          colormap=colormap, lut=lut, units=units)
        parts += [f"unit {unit} of {units}", f"step {frame_step}"]
        self.set_heading("Text · " + " · ".join(parts))
        self._draw_ranking(view, layer, kind, frame_step, array, layout)
        self._draw_match(view, kind, array, layout)

    def _sync_layers(self, layers: list[str]) -> str:
        current = [self.layer_box.itemText(i) for i in range(self.layer_box.count())]
        if current != layers:
            self.layer_box.clear()
            self.layer_box.addItems(layers)
        if self.wanted_layer in layers:
            layer = self.wanted_layer
        else:
            selected = self.collection.current_layer()
            layer = selected if selected in layers else layers[0]
        if self.layer_box.currentText() != layer:
            self.layer_box.setCurrentIndex(layers.index(layer))
        return layer

    def _sync_kinds(self, found: list[str]) -> list[str]:
        order = list(dict.fromkeys(["h", "c", "i", "f", "z", "o", *found]))
        kinds = [k for k in order if k in found]
        current = [self.kind_box.itemData(i) for i in range(self.kind_box.count())]
        if current != kinds:
            self.kind_box.clear()
            for kind in kinds:
                self.kind_box.addItem(KIND_LABELS.get(kind, kind), kind)
        wanted = self.wanted_kind if self.wanted_kind in kinds else (kinds[0] if kinds else None)
        if wanted is not None and self.kind_box.currentData() != wanted:
            self.kind_box.setCurrentIndex(kinds.index(wanted))
        return kinds

    # ---- analysis results -------------------------------------------------------------------

    def _code_features(self, text: str) -> dict[str, np.ndarray]:
        """`interpret.code_features(text)`, once per text (in the worker thread)."""
        key = hash(text)
        with self._features_lock:
            found = self._features.get(key)
        if found is None:
            try:
                found = ("ok", interpret.code_features(text))
            except ValueError as error:
                found = ("error", f"the text is not Python source that tokenizes ({error}), so "
                                  f"it has no code features")
            with self._features_lock:
                self._features = {key: found}
        if found[0] == "error":
            raise ValueError(found[1])
        return found[1]

    def _rank(self, text: str, array: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return feature_ranking(array, self._code_features(text))

    def ranking_key(self) -> Any:
        s = self.shown
        return ("rank", self._layout_key, s.get("layer"), s.get("kind"), s.get("step"))

    def ranking(self) -> tuple[str, Any] | None:
        """The worker's result for what is shown: `("ok", {feature: (units, r)})`,
        `("error", message)`, or None while it is being computed."""
        return self.jobs.get(self.ranking_key())

    def _draw_ranking(self, view, layer, kind, step, array, layout) -> None:
        if layout.tokens:
            key = ("tokens", self._layout_key)
            if self._drawn_ranking != key:
                self._drawn_ranking = key
                self.ranking_list.clear()
                self.ranking_note.setText("Code features need a character-level corpus of "
                                          "Python source; this run's corpus is tokens.")
            return
        key = self.ranking_key()
        self.jobs.submit(key, self._rank, view.text, array)
        result = self.jobs.get(key)
        feature = self.feature_box.currentData()
        drawn = (key, feature, result is not None)
        if drawn == self._drawn_ranking:
            return
        self._drawn_ranking = drawn
        self.ranking_list.clear()
        if result is None:
            self.ranking_note.setText(f"Ranking the {array.shape[1]} units of {layer} by |r| "
                                      f"with each feature…")
            return
        status, value = result
        if status == "error":
            self.ranking_note.setText(value)
            return
        units, r = value[feature]
        if self._best_pending and units.size:
            self._best_pending = False
            self.select_unit(int(units[0]))  # drawn at the next tick
        for unit, rho in zip(units[:RANKED_SHOWN].tolist(), r[:RANKED_SHOWN].tolist()):
            item = QtWidgets.QListWidgetItem(f"unit {unit:>4}   r = {rho:+.3f}")
            item.setData(QtCore.Qt.ItemDataRole.UserRole, unit)
            self.ranking_list.addItem(item)
        self.ranking_note.setText(f"{kind} of {layer} at step {step}: Pearson r with "
                                  f"{feature} over {layout.count:,} characters, best |r| first")

    def match_key(self) -> Any:
        s = self.shown
        return ("match", self._layout_key, s.get("layer"), s.get("kind"), s.get("step"),
                self.span, round(self.threshold_box.value(), 6))

    def match_result(self) -> tuple[str, Any] | None:
        """The worker's `("ok", (on units, matches))` for the selected span, an error, or None
        while it is computed (or no span is selected)."""
        return self.jobs.get(self.match_key()) if self.span else None

    def _draw_match(self, view, kind, array, layout) -> None:
        span = self.span
        if span is not None and not 0 <= span[0] < span[1] <= layout.count:
            span = self.span = None
        key = self.match_key()
        if span is not None:
            self.jobs.submit(key, span_match, array, span[0], span[1],
                             float(self.threshold_box.value()), MATCHES)
        result = self.jobs.get(key) if span is not None else None
        drawn = (key, result is not None, self.current_match)
        if drawn == self._drawn_match:
            return
        self._drawn_match = drawn
        self.on_list.clear()
        self.match_list.clear()
        matches: list[tuple[int, int]] = []
        if span is None:
            self.span_label.setText("Select a span of text with the mouse: its on units and "
                                    "the best matching spans elsewhere are listed here.")
        elif result is None:
            self.span_label.setText(f"Span {span[0]}–{span[1]}: matching…")
        elif result[0] == "error":
            self.span_label.setText(f"Span {span[0]}–{span[1]}: {result[1]}")
        else:
            on, found = result[1]
            threshold = self.threshold_box.value()
            _, piece, _ = context(view.text, layout, span[0], span[1], 0)
            self.span_label.setText(
                f"Span {span[0]}–{span[1]} {piece[:40]!r}: {len(on)} on units "
                f"({kind} > {threshold:g} at every {'token' if layout.tokens else 'character'})"
                + ("" if found or not len(on) else "; no other span shares an on unit"))
            for unit in on.tolist():
                item = QtWidgets.QListWidgetItem(str(unit))
                item.setData(QtCore.Qt.ItemDataRole.UserRole, unit)
                self.on_list.addItem(item)
            for start, stop, score in found:
                before, piece, after = context(view.text, layout, start, stop, 16)
                item = QtWidgets.QListWidgetItem(
                    f"{score:.2f}  {start:>6}  …{before}[{piece}]{after}…")
                item.setData(QtCore.Qt.ItemDataRole.UserRole, (start, stop))
                self.match_list.addItem(item)
                matches.append((start, stop))
        self.canvas.set_highlights(span, matches, self.current_match)

    # ---- hover, export ----------------------------------------------------------------------

    def describe(self, item: int) -> str | None:
        """The read-out for item `item`: the character, its position, the value shown."""
        s = self.shown
        layout: TextLayout | None = s.get("layout")
        if layout is None or not 0 <= item < layout.count:
            return None
        line, col = layout.line_span(item)
        if layout.tokens:
            what = f"token {context(s['text'], layout, item, item + 1, 0)[1]!r}"
        else:
            char = s["text"][item]
            what = f"{char!r} (U+{ord(char):04X})"
        where = f"at {item} (line {line + 1}, column {col + 1})"
        array = s.get("array")
        value = ""
        if array is not None:
            v = float(array[item, s["unit"]])
            value = f": {s['kind']} of unit {s['unit']} = {format_value(v)}"
            if s.get("squash"):
                value += f" (tanh {format_value(math.tanh(v))})"
        return f"{what} {where}{value}"

    def _hovered(self, item: int) -> None:
        text = self.describe(item)
        if text:
            self.readout.setText(text)

    def values(self) -> np.ndarray | None:
        """The values of the unit shown at every character, (N,) float32, or None."""
        s = self.shown
        if s.get("array") is None:
            return None
        return np.asarray(s["array"][:, s["unit"]], dtype=np.float32)

    def table(self) -> tuple[list[str], list[Sequence[Any]]]:
        s = self.shown
        values = self.values()
        if values is None:
            return ["index", "character", "value"], []
        text, layout = s["text"], s["layout"]
        chars = (text if not layout.tokens else
                 [context(text, layout, i, i + 1, 0)[1] for i in range(layout.count)])
        head = (s["run"], s["layer"], s["kind"], s["step"], s["unit"])
        return (["run", "layer", "kind", "step", "unit", "index", "character", "value"],
                [(*head, i, c, v) for i, (c, v) in enumerate(zip(chars, values.tolist()))])

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 - Qt's name
        self.jobs.stop()
        super().closeEvent(event)


def follow_heatmap(heatmap: Panel, text: TextPanel) -> None:
    """Clicking a row (a unit) of `heatmap` (the `StateHeatmapPanel`) selects that unit of that
    layer in the Text panel."""

    def clicked(event) -> None:
        if event.button() != QtCore.Qt.MouseButton.LeftButton:
            return
        pos = event.scenePos()
        for key, cell in list(getattr(heatmap, "cells", {}).items()):
            if cell.plot.scene() is None or not cell.plot.vb.sceneBoundingRect().contains(pos):
                continue
            point = cell.plot.vb.mapSceneToView(pos)
            hit = cell.value_at(point.x(), point.y())
            if hit is None:
                continue
            layer = getattr(heatmap, "_shown", {}).get(key, {}).get("layer")
            text.select_unit(hit[1], layer=layer)
            return

    heatmap.graphics.scene().sigMouseClicked.connect(clicked)
