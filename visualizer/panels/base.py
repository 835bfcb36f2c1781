"""What every panel shares: a heading naming what is shown, a hover read-out, PNG/CSV export.

A panel draws from the `RunCollection` it is given and from nothing else. `refresh()` redraws
only when something it shows changed (`view_key()`), so the window's timer may call it at 30 Hz
for free. Subclasses implement `redraw()` (model → view) and `table()` (the data on screen, as
rows for CSV).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtGui, QtWidgets

from visualizer.model import RunCollection

__all__ = [
    "BLOCK_COLORS",
    "RUN_COLORS",
    "HeatmapCell",
    "LogMarks",
    "Panel",
    "block_order",
    "block_pen",
    "compare_pen",
    "SideLegend",
    "outside_legend",
    "style_pen",
    "run_color",
    "format_value",
    "TimeAxis",
    "ValueAxis",
    "dress",
    "plain_axes",
    "run_pen",
    "series_pen",
    "set_time_ticks",
    "time_plot",
    "value_plot",
]

# Colour-blind-safe (Okabe-Ito) colours: one per run (Okabe-Ito's black is a light grey here,
# on the dark plot background), and one per gate block.
RUN_COLORS = ("#56B4E9", "#E69F00", "#009E73", "#F0E442", "#CC79A7", "#D55E00", "#0072B2",
              "#BBBBBB")
BLOCK_COLORS = {
    "i": "#56B4E9",
    "f": "#009E73",
    "z": "#E69F00",
    "c": "#E69F00",
    "o": "#CC79A7",
    "W": "#DDDDDD",
    "h": "#DDDDDD",
}
_EXTRA_COLORS = ("#F0E442", "#D55E00", "#0072B2", "#999999")
_RUN_STYLES = (
    QtCore.Qt.PenStyle.SolidLine,
    QtCore.Qt.PenStyle.DashLine,
    QtCore.Qt.PenStyle.DotLine,
    QtCore.Qt.PenStyle.DashDotLine,
)

DIVERGING = "CET-D1"  # blue - white - red, for quantities symmetric around 0
SEQUENTIAL = "viridis"  # for gates in [0, 1]
MAGNITUDE = "inferno"  # for log-magnitudes


def run_color(index: int) -> str:
    """The colour of run `index` (`RunCollection.color_index`), the same in every panel."""
    return RUN_COLORS[index % len(RUN_COLORS)]


def run_pen(
    index: int, *, width: float = 2.0, style: QtCore.Qt.PenStyle | None = None
) -> QtGui.QPen:
    pen = pg.mkPen(run_color(index), width=width)
    if style is not None:
        pen.setStyle(style)
    return pen


def block_pen(name: str, block_index: int, run_index: int) -> QtGui.QPen:
    """Colour by gate block, line style by run (solid for the first run)."""
    color = BLOCK_COLORS.get(name, _EXTRA_COLORS[block_index % len(_EXTRA_COLORS)])
    pen = pg.mkPen(color, width=2)
    pen.setStyle(_RUN_STYLES[run_index % len(_RUN_STYLES)])
    return pen


# With several runs on one plot a gate block is a line style, the same in every cell.
_BLOCK_STYLES = {
    "i": QtCore.Qt.PenStyle.SolidLine,
    "f": QtCore.Qt.PenStyle.DashLine,
    "z": QtCore.Qt.PenStyle.DotLine,
    "o": QtCore.Qt.PenStyle.DashDotLine,
}


def block_order(entry: tuple[Any, str]) -> int:
    """Sort key of a `(pen, block name)` legend entry: the lecture's i, f, z, o, then others."""
    return list(_BLOCK_STYLES).index(entry[1]) if entry[1] in _BLOCK_STYLES else len(_BLOCK_STYLES)


def block_style(name: str, block_index: int) -> QtCore.Qt.PenStyle:
    return _BLOCK_STYLES.get(name, _RUN_STYLES[block_index % len(_RUN_STYLES)])


def compare_pen(name: str, block_index: int, run_index: int) -> QtGui.QPen:
    """With several runs on one plot: colour by run, line style by gate block."""
    return run_pen(run_index, style=block_style(name, block_index))


def style_pen(name: str, block_index: int) -> QtGui.QPen:
    """The neutral pen that stands for gate block `name` in a legend of line styles."""
    pen = pg.mkPen("#DDDDDD", width=2)
    pen.setStyle(block_style(name, block_index))
    return pen


def series_pen(
    name: str, block_index: int, run_index: int, single: bool, legend: list
) -> QtGui.QPen:
    """The pen of gate block `name` of run `run_index` (`single`: the only run on the plot), and
    its `(pen, name)` entry added to `legend` unless the block already has one."""
    pen = block_pen(name, block_index, 0) if single else compare_pen(name, block_index, run_index)
    if not any(label == name for _, label in legend):
        legend.append((pen if single else style_pen(name, block_index), name))
    return pen


def format_value(value: float) -> str:
    if value is None or not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
        return f"{value:.3e}"
    return f"{value:.4g}"


class TimeAxis(pg.AxisItem):
    """A time axis labelled with the probe's tokens when the run has them, thinned to fit.

    Pixel t of a heatmap spans [t, t + 1], so a token labels t + 0.5. Without tokens it is a
    plain numeric axis.
    """

    def __init__(self, orientation: str = "bottom", **kwargs: Any) -> None:
        super().__init__(orientation, **kwargs)
        self.tokens: list[str] | None = None
        self.offset = 0.5

    def set_tokens(self, tokens: Sequence[str] | None, offset: float = 0.5) -> None:
        tokens = [str(t) for t in tokens] if tokens else None
        if tokens != self.tokens or offset != self.offset:
            self.tokens, self.offset = tokens, offset
            self.picture = None
            self.update()

    def tickValues(self, minVal, maxVal, size):  # noqa: N802, N803 - pyqtgraph's names
        tokens = self.tokens
        if not tokens:
            return super().tickValues(minVal, maxVal, size)
        low = max(0, math.ceil(minVal - self.offset))
        high = min(len(tokens) - 1, math.floor(maxVal - self.offset))
        if high < low or size <= 0:
            return []
        metrics = QtGui.QFontMetrics(self.font())
        widest = max(metrics.horizontalAdvance(t) for t in tokens[low : high + 1]) + 10
        per_token = size / max(maxVal - minVal, 1e-9)
        every = 1
        for every in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000):
            if every * per_token >= widest:
                break
        first = low + (-low) % every
        return [(float(every), [t + self.offset for t in range(first, high + 1, every)])]

    def tickStrings(self, values, scale, spacing):  # noqa: N802 - pyqtgraph's name
        tokens = self.tokens
        if not tokens:
            return super().tickStrings(values, scale, spacing)
        labels = []
        for value in values:
            index = int(math.floor(value - self.offset + 1e-6))
            labels.append(tokens[index] if 0 <= index < len(tokens) else "")
        return labels


class ValueAxis(pg.AxisItem):
    """A value axis whose labels on a log scale never crowd: decades, and on a range shorter
    than 1.5 decades also 2 and 5 (pyqtgraph labels every minor tick, 2 to 9, where they fit
    on average, and they bunch up under each decade)."""

    def logTickStrings(self, values, scale, spacing):  # noqa: N802 - pyqtgraph's name
        strings = super().logTickStrings(values, scale, spacing)
        span = abs(self.range[1] - self.range[0])
        kept = []
        for value, text in zip(values, strings):
            mantissa = 10.0 ** (value - math.floor(value + 1e-9))
            decade = abs(mantissa - 1.0) < 1e-6 or abs(mantissa - 10.0) < 1e-5
            short = span < 1.5 and min(abs(mantissa - 2.0), abs(mantissa - 5.0)) < 1e-6
            kept.append(text if decade or short else "")
        return kept


def value_plot(layout: pg.GraphicsLayout | pg.GraphicsLayoutWidget, row: int, col: int,
               **kwargs: Any) -> pg.PlotItem:
    """A plot whose left axis is a `ValueAxis`."""
    plot = layout.addPlot(row=row, col=col, axisItems={"left": ValueAxis("left")}, **kwargs)
    plain_axes(plot)
    return plot


def set_time_ticks(axis: pg.AxisItem, tokens: Sequence[str] | None, length: int,
                   offset: float = 0.5) -> None:
    """Labels a `TimeAxis` with `tokens` when there is one per time step (else numbers)."""
    if isinstance(axis, TimeAxis):
        axis.set_tokens(tokens if tokens and len(tokens) == length else None, offset)


def time_plot(layout: pg.GraphicsLayout | pg.GraphicsLayoutWidget, row: int, col: int,
              **kwargs: Any) -> pg.PlotItem:
    """A plot whose bottom axis is a `TimeAxis`."""
    plot = layout.addPlot(row=row, col=col, axisItems={"bottom": TimeAxis("bottom"),
                                                       "left": ValueAxis("left")}, **kwargs)
    plain_axes(plot)
    return plot


def plain_axes(plot: pg.PlotItem) -> None:
    """No SI-prefix rescaling ("loss (x0.001)") on the value axes."""
    for name in ("left", "bottom"):
        plot.getAxis(name).enableAutoSIPrefix(False)


def dress(plot: pg.PlotItem, *, legend: bool = True, grid_alpha: float = 0.25) -> None:
    """The panels' common plot style: plain axes, a faint grid and a legend in the corner."""
    plain_axes(plot)
    plot.showGrid(x=True, y=True, alpha=grid_alpha)
    if legend:
        plot.addLegend(offset=(-10, 10), labelTextSize="8pt", brush=(0, 0, 0, 150))


_STYLE_GLYPHS = {
    QtCore.Qt.PenStyle.SolidLine: "━━━",
    QtCore.Qt.PenStyle.DashLine: "━ ━",
    QtCore.Qt.PenStyle.DotLine: "┅┅┅",
    QtCore.Qt.PenStyle.DashDotLine: "━ · ━",
}


class SideLegend(pg.LabelItem):
    """A legend of `(pen, label)` entries, drawn as text: a line of the pen's colour and style
    (as glyphs) before each label. Text, not sample curves: legend samples of curves that
    belong to no plot crashed Qt when collected."""

    def __init__(self) -> None:
        super().__init__("", size="8pt", justify="left")
        self.entries: list[tuple[str, int, str]] = []

    def set_entries(self, entries: Sequence[tuple[QtGui.QPen, str]]) -> None:
        """Replaces the entries (only when they change: a new text relays the plots)."""
        key = [(pen.color().name(), int(pen.style().value), label) for pen, label in entries]
        if key == self.entries:
            return
        self.entries = key
        rows = []
        for pen, label in entries:
            glyph = _STYLE_GLYPHS.get(pen.style(), "━━━")
            rows.append(f'<span style="color:{pen.color().name()}">{glyph}</span>&nbsp;'
                        f'<span style="color:#CCCCCC">{label}</span>')
        self.setText("<br>".join(rows))

    def labels(self) -> list[str]:
        return [label for _, _, label in self.entries]


def outside_legend(layout: pg.GraphicsLayout, row: int, col: int,
                   rowspan: int = 1) -> SideLegend:
    """A legend in its own layout cell beside a plot, so that it never covers the data."""
    legend = SideLegend()
    # Fixed both ways: a legend stretched to the row's height spreads its entries apart.
    legend.setSizePolicy(QtWidgets.QSizePolicy.Policy.Fixed,
                         QtWidgets.QSizePolicy.Policy.Fixed)
    layout.addItem(legend, row=row, col=col, rowspan=rowspan)
    return legend


class LogMarks:
    """What a log axis cannot draw as a line, drawn on `plot` all the same (see `LogValues`).

    Values of exactly 0 become hollow down-triangles at the stated floor, with a dotted line
    labelled with the floor; NaN and ±Inf become crosses at the top of the data (with their
    index on the hover read-out). `update` takes `(x, LogValues, colour)` per series.
    """

    def __init__(self, plot: pg.PlotItem) -> None:
        self.plot = plot
        self.zero_items: list[pg.ScatterPlotItem] = []
        self.bad_items: list[pg.ScatterPlotItem] = []
        self.floor_line = pg.InfiniteLine(
            angle=0, pen=pg.mkPen("#AAAAAA", width=1, style=QtCore.Qt.PenStyle.DotLine),
            label="", labelOpts={"position": 0.98, "color": "#CCCCCC",
                                 "anchors": [(1, 1), (1, 1)]},
        )
        self.floor_line.setVisible(False)
        plot.addItem(self.floor_line)
        self.floor: float | None = None
        self.zero_count = 0
        self.bad_count = 0

    def update(self, series: Sequence[tuple[np.ndarray, Any, str]]) -> None:
        for item in self.zero_items + self.bad_items:
            self.plot.removeItem(item)
        self.zero_items, self.bad_items = [], []
        log = self.plot.ctrl.logYCheck.isChecked()
        tops = [np.nanmax(v.shown) for _, v, _ in series if np.isfinite(v.shown).any()]
        top = max(tops) * 3 if tops else 1.0
        # Items other than PlotDataItem are placed in view coordinates: log10 on a log axis.
        place = (lambda v: math.log10(v)) if log else (lambda v: v)
        self.zero_count = self.bad_count = 0
        floor = None
        for x, values, color in series:
            x = np.asarray(x, dtype=np.float64)
            if values.zeros.size:
                floor = values.floor
                self.zero_count += int(values.zeros.size)
                # Every run's zeros sit on the same floor: growing hollow triangles keep the
                # runs' markers apart where they coincide.
                size = 7 + 4 * len(self.zero_items)
                item = pg.ScatterPlotItem(
                    x[values.zeros], np.full(values.zeros.size, place(values.floor)), symbol="t",
                    size=size, pen=pg.mkPen(color, width=1.5), brush=None,
                )
                self.plot.addItem(item)
                self.zero_items.append(item)
            bad = values.nonfinite
            if values.negative.size:
                bad = np.sort(np.concatenate([bad, values.negative]))
            if bad.size:
                self.bad_count += int(bad.size)
                item = pg.ScatterPlotItem(x[bad], np.full(bad.size, place(top)), symbol="x",
                                          size=10, pen=pg.mkPen("#FF4040", width=2),
                                          brush="#FF4040")
                self.plot.addItem(item)
                self.bad_items.append(item)
        self.floor = floor
        self.floor_line.setVisible(floor is not None)
        if floor is not None:
            # InfiniteLine positions are in view coordinates: log10 on a log axis.
            self.floor_line.setValue(place(floor))
            self.floor_line.label.setFormat(f"0 drawn at {floor:.0e} (▽)")


class Panel(QtWidgets.QWidget):
    """Base of the six panels: heading, options row, body, hover read-out, export."""

    name = ""
    title = ""

    exported = QtCore.pyqtSignal(str)

    def __init__(self, collection: RunCollection, parent: QtWidgets.QWidget | None = None):
        super().__init__(parent)
        self.collection = collection
        self._drawn_key: Any = object()
        self._hover_targets: list[tuple[pg.PlotItem, Callable[[float, float], str | None]]] = []
        self.setObjectName(self.name)
        self.setFocusPolicy(QtCore.Qt.FocusPolicy.ClickFocus)

        self.heading = QtWidgets.QLabel(self.title)
        font = self.heading.font()
        font.setBold(True)
        self.heading.setFont(font)
        self.heading.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        # A long heading is cut, never a reason for the panel to be wider.
        self.heading.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored,
                                   QtWidgets.QSizePolicy.Policy.Preferred)
        self.options = QtWidgets.QHBoxLayout()
        self.options.setContentsMargins(0, 0, 0, 0)
        self.export_button = QtWidgets.QToolButton()
        self.export_button.setText("Export")
        self.export_button.setPopupMode(QtWidgets.QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QtWidgets.QMenu(self.export_button)
        menu.addAction("Save image (PNG)…", lambda: self.export_dialog("png"))
        menu.addAction("Save data (CSV)…", lambda: self.export_dialog("csv"))
        self.export_button.setMenu(menu)

        header = QtWidgets.QHBoxLayout()
        header.addWidget(self.heading, 1)
        header.addLayout(self.options)
        header.addWidget(self.export_button)

        self.readout = QtWidgets.QLabel(" ")
        self.readout.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        mono = QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont)
        self.readout.setFont(mono)
        self.readout.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored,
                                   QtWidgets.QSizePolicy.Policy.Preferred)

        self.body_widget = QtWidgets.QWidget()
        self.body = QtWidgets.QVBoxLayout(self.body_widget)
        self.body.setContentsMargins(0, 0, 0, 0)
        self.notice = QtWidgets.QLabel()
        self.notice.setAlignment(QtCore.Qt.AlignmentFlag.AlignCenter)
        self.notice.setWordWrap(True)
        self.notice.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored,
                                  QtWidgets.QSizePolicy.Policy.Expanding)
        self.notice.hide()
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.setSpacing(2)
        layout.addLayout(header)
        layout.addWidget(self.notice, 1)
        layout.addWidget(self.body_widget, 1)
        layout.addWidget(self.readout)

    # ---- drawing --------------------------------------------------------------------------------

    def view_key(self) -> Any:
        """Changes whenever what this panel shows may change."""
        c = self.collection
        return (c.data_version(), c.current_step(), c.current_layer(), c.sample,
                self.options_key())

    def options_key(self) -> Any:
        return ()

    def refresh(self, force: bool = False) -> bool:
        """Redraws if anything shown changed (or `force`); returns whether it redrew."""
        key = self.view_key()
        if not force and key == self._drawn_key:
            return False
        self._drawn_key = key
        self.show_notice(self.notice_text())
        self.redraw()
        return True

    def notice_text(self) -> str | None:
        """What to say instead of empty plots when no shown run has data (yet)."""
        runs = self.collection.shown_runs()
        if not runs:
            message = self.collection.message()
            return message[1] if message else "No run open (File › Open)."
        if all(run.status in ("error", "waiting") for run in runs):
            message = runs[0].message()
            return message[1] if message else None
        return None

    def show_notice(self, text: str | None) -> None:
        self.notice.setText(text or "")
        self.notice.setVisible(bool(text))
        self.body_widget.setVisible(not text)

    def set_collection(self, collection: RunCollection) -> None:
        self.collection = collection
        self._drawn_key = object()

    def redraw(self) -> None:
        raise NotImplementedError

    def table(self) -> tuple[list[str], list[Sequence[Any]]]:
        """The data on screen: a header and rows, for CSV export."""
        raise NotImplementedError

    def set_heading(self, text: str) -> None:
        self.heading.setText(text)

    # ---- hover read-outs ------------------------------------------------------------------------

    def watch_hover(
        self, widget: pg.GraphicsLayoutWidget, plot: pg.PlotItem,
        describe: Callable[[float, float], str | None],
    ) -> None:
        """Shows `describe(x, y)` (view coordinates) while the mouse is over `plot`."""
        if not any(w is widget for w in getattr(self, "_hover_widgets", [])):
            self._hover_widgets = getattr(self, "_hover_widgets", []) + [widget]
            widget.scene().sigMouseMoved.connect(self.hover_at)
        self._hover_targets.append((plot, describe))

    def forget_hover(self) -> None:
        self._hover_targets = []

    def hover_at(self, scene_pos: QtCore.QPointF) -> str | None:
        """Updates the read-out for the mouse at `scene_pos`; returns the text shown."""
        for plot, describe in self._hover_targets:
            if plot.scene() is None or not plot.vb.sceneBoundingRect().contains(scene_pos):
                continue
            point = plot.vb.mapSceneToView(scene_pos)
            text = describe(point.x(), point.y())
            if text:
                self.readout.setText(text)
                return text
        return None

    # ---- export ---------------------------------------------------------------------------------

    def export_png(self, path: str | os.PathLike) -> Path:
        """Saves the panel as it is on screen (heading, plots, colour bars) to a PNG file."""
        path = Path(path)
        self.refresh()
        if not self.grab().save(str(path), "PNG"):
            raise OSError(f"{path}: could not write the PNG file")
        self.exported.emit(str(path))
        return path

    def export_csv(self, path: str | os.PathLike) -> Path:
        """Saves the data on screen, one row per value, to a CSV file."""
        path = Path(path)
        self.refresh()
        header, rows = self.table()
        with open(path, "w", newline="", encoding="utf-8") as file:
            writer = csv.writer(file)
            writer.writerow(header)
            writer.writerows(rows)
        self.exported.emit(str(path))
        return path

    def export_dialog(self, what: str) -> Path | None:
        suffix = {"png": "PNG image (*.png)", "csv": "CSV table (*.csv)"}[what]
        path, _ = QtWidgets.QFileDialog.getSaveFileName(
            self, f"Export {self.title}", f"{self.name}.{what}", suffix
        )
        if not path:
            return None
        try:
            return self.export_png(path) if what == "png" else self.export_csv(path)
        except OSError as error:
            QtWidgets.QMessageBox.warning(self, "Export failed", str(error))
            return None


class HeatmapCell:
    """One plot of a heatmap grid: an `ImageItem` with fixed levels and its colour bar."""

    def __init__(self, plot: pg.PlotItem, colormap: str, label: str,
                 bar: pg.ColorBarItem | None = None) -> None:
        self.plot = plot
        self.image = pg.ImageItem(axisOrder="row-major")
        self.image.setAutoDownsample(False)
        plot.addItem(self.image)
        # NaN and Inf pixels would be transparent: an overlay paints them in a colour no map
        # uses (magenta NaN, white +Inf, cyan -Inf).
        self.marks = pg.ImageItem(axisOrder="row-major")
        self.marks.setZValue(5)
        self.marks.setVisible(False)
        plot.addItem(self.marks)
        self.colormap = colormap
        self.shared_bar = bar is not None
        if bar is None:
            bar = pg.ColorBarItem(
                values=(0, 1), colorMap=colormap, interactive=False, label=label, width=14
            )
            bar.setImageItem(self.image, insert_in=plot)
        self.bar = bar
        self.levels = (0.0, 1.0)
        self.shape: tuple[int, ...] | None = None
        self.rect: QtCore.QRectF | None = None
        self.data: np.ndarray | None = None
        self.nonfinite = 0
        self._image_rect: QtCore.QRectF | None = None

    def set_rect(self, rect: QtCore.QRectF) -> None:
        """Places the image (and its NaN/Inf marks) on `rect` of the view."""
        self._image_rect = rect
        self.image.setRect(rect)
        self.marks.setRect(rect)

    def show(self, image: np.ndarray | None, levels: tuple[float, float], colormap: str,
             label: str) -> bool:
        """Draws `image` (float32, C-contiguous) with `levels`; True if its shape changed.

        With a shared colour bar, its owner sets the colour map, label and levels of the bar.
        """
        if colormap != self.colormap and not self.shared_bar:
            self.colormap = colormap
            self.bar.setColorMap(colormap)
        if not self.shared_bar and label != self.bar.getAxis("left").labelText:
            self.bar.getAxis("left").setLabel(label)
        levels = (float(levels[0]), float(levels[1]))
        if levels != self.levels:
            self.levels = levels
            if not self.shared_bar:
                self.bar.setLevels(levels)
        self.data = image
        if image is None:
            self.image.clear()
            self.marks.setVisible(False)
            changed = self.shape is not None
            self.shape = None
            return changed
        self.image.setImage(image, levels=levels, autoLevels=False)
        bad = ~np.isfinite(image)
        self.nonfinite = int(bad.sum())
        if self.nonfinite:
            rgba = np.zeros((*image.shape, 4), np.uint8)
            rgba[np.isnan(image)] = (255, 0, 255, 255)
            rgba[image == np.inf] = (255, 255, 255, 255)
            rgba[image == -np.inf] = (0, 255, 255, 255)
            self.marks.setImage(rgba, autoLevels=False, levels=(0, 255))
            self.marks.setRect(self._image_rect or QtCore.QRectF(0, 0, image.shape[1],
                                                                 image.shape[0]))
            self.marks.setVisible(True)
        else:
            self.marks.setVisible(False)
        changed = image.shape != self.shape
        self.shape = image.shape
        return changed

    def value_at(self, x: float, y: float) -> tuple[int, int, float] | None:
        """`(column, row, value)` of the pixel under view point (x, y), in image coordinates."""
        if self.data is None:
            return None
        local = self.image.mapFromView(QtCore.QPointF(x, y))
        col, row = math.floor(local.x()), math.floor(local.y())
        rows, cols = self.data.shape
        if not (0 <= row < rows and 0 <= col < cols):
            return None
        return col, row, float(self.data[row, col])
