"""Weight-gradient norms per gate block over training: ‖∂L/∂W‖, ‖∂L/∂U‖ and ‖∂L/∂b‖, and for
the LSTM variants the peephole vectors' ‖∂L/∂p_i‖, ‖∂L/∂p_f‖, ‖∂L/∂p_o‖ and FGR's ‖∂L/∂G‖ per
column block (i, f, o: the pre-activations G feeds)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtGui, QtWidgets

from visualizer.model import (
    GATE_RECURRENT_BLOCKS,
    GATE_RECURRENT_GRAD_KIND,
    PEEPHOLE_GRAD_KINDS,
    WEIGHT_GRAD_KINDS,
    RunCollection,
    log_values,
)
from visualizer.panels.base import (
    LogMarks,
    Panel,
    block_order,
    dress,
    format_value,
    outside_legend,
    series_pen,
    value_plot,
)

__all__ = ["WeightGradsPanel"]

PEEPHOLE_PLOT = "peephole_weights_grad_norm"  # one plot for the three peephole vectors' kinds

CAPTIONS = {
    "kernel_grad_norm": ("‖∂L/∂W‖", "input kernel W"),
    "recurrent_kernel_grad_norm": ("‖∂L/∂U‖", "recurrent kernel U"),
    "bias_grad_norm": ("‖∂L/∂b‖", "bias b"),
    PEEPHOLE_PLOT: ("‖∂L/∂p‖", "peepholes p"),
    GATE_RECURRENT_GRAD_KIND: ("‖∂L/∂G‖", "gate recurrence G (column blocks)"),
}
# The plots and their (row, column): W, U, b down the first column; the peepholes and G beside
# them, on screen only while a shown run has their frames (a hidden column takes no room, so a
# lecture cell's run keeps the whole width, and five plots never share one column's height).
PLACES = {
    WEIGHT_GRAD_KINDS[0]: (0, 0),
    WEIGHT_GRAD_KINDS[1]: (1, 0),
    WEIGHT_GRAD_KINDS[2]: (2, 0),
    PEEPHOLE_PLOT: (0, 1),
    GATE_RECURRENT_GRAD_KIND: (1, 1),
}
PLOT_KEYS = tuple(PLACES)
# The widest labels of a log axis (pyqtgraph writes 1e-5 as 10⁻⁵, 5e-4 as 0.0005).
TICK_TEXT_SAMPLES = ("0.0005", "5·10⁻⁵", "2·10⁻¹⁰")


class WeightGradsPanel(Panel):
    """Log-scale plots sharing the step axis: a line per gate block (colour) and run.

    ‖∂L/∂W‖, ‖∂L/∂U‖ and ‖∂L/∂b‖ always; beside them, only while a shown run has the frames,
    the peephole vectors (a line p_i, p_f, p_o per gate) and FGR's gate recurrence G (a line
    per column block i, f, o).
    """

    name = "weight_grads"
    title = "Weight-gradient norms"

    def __init__(self, collection: RunCollection, parent: QtWidgets.QWidget | None = None):
        super().__init__(collection, parent)
        self.graphics = pg.GraphicsLayoutWidget()
        self.body.addWidget(self.graphics)
        self.plots: dict[str, pg.PlotItem] = {}
        self.marks: dict[str, LogMarks] = {}
        self.step_lines: list[pg.InfiniteLine] = []
        for key, (row, col) in PLACES.items():
            plot = value_plot(self.graphics, row, col)
            symbol, caption = CAPTIONS[key]
            plot.setLogMode(y=True)
            dress(plot, legend=False)
            plot.setLabel("left", symbol)
            # One tick-text width for every plot, so that their step axes line up under the
            # step line (pyqtgraph sizes each axis to its own labels: "1" narrower than "0.05").
            font = QtGui.QFontMetrics(plot.getAxis("left").font())
            plot.getAxis("left").setStyle(
                autoExpandTextSpace=False,
                tickTextWidth=max(font.horizontalAdvance(t) for t in TICK_TEXT_SAMPLES) + 2)
            plot.setTitle(caption, size="9pt")
            if key != PLOT_KEYS[0]:
                plot.setXLink(self.plots[PLOT_KEYS[0]])
            line = pg.InfiniteLine(angle=90, pen=pg.mkPen("#888888"))
            plot.addItem(line, ignoreBounds=True)
            self.step_lines.append(line)
            self.plots[key] = plot
            self.marks[key] = LogMarks(plot)
            self.watch_hover(self.graphics, plot, self._describe(key))
        # One legend of the gate blocks for all plots, beside them (never on the data).
        self.legend = outside_legend(self.graphics, 0, 2, rowspan=len(WEIGHT_GRAD_KINDS))
        self._items: list[tuple[pg.PlotItem, pg.PlotDataItem]] = []
        self._curves: dict[tuple, tuple[pg.PlotItem, pg.PlotDataItem]] = {}
        self._shown: list[dict[str, Any]] = []
        self._data_key: Any = None
        self._lowest: dict[int, str] = {}
        self._show_plots(WEIGHT_GRAD_KINDS)

    def visible_plots(self) -> list[str]:
        """The plots on screen, column by column, top to bottom."""
        return [key for key in PLOT_KEYS if self.plots[key].isVisible()]

    def _show_plots(self, keys) -> None:
        """Shows the plots `keys` (a hidden plot takes no room) and labels the step axis of
        the lowest one in each column."""
        keys = [key for key in PLOT_KEYS if key in keys]
        lowest = {PLACES[key][1]: key for key in keys}
        if keys == self.visible_plots() and self._lowest == lowest:
            return  # a new axis label relays the plots: not on every live redraw
        self._lowest = lowest
        for key in PLOT_KEYS:
            plot = self.plots[key]
            plot.setVisible(key in keys)
            plot.setLabel("bottom", "training step" if key in lowest.values() else None)

    def redraw(self) -> None:
        runs = self.collection.shown_runs()
        data_key = self.collection.runs_version()
        if data_key != self._data_key:
            self._data_key = data_key
            self._draw_curves(runs)
        self._draw_step(runs)

    @staticmethod
    def _sources(run, layer: str, key: str) -> list[tuple[str, np.ndarray, np.ndarray, list]]:
        """`(frame kind, steps, values (step, block), gate names)` of each series of plot
        `key` that `run` has for `layer`."""
        if key == PEEPHOLE_PLOT:
            kinds = [(kind, [gate]) for gate, kind in PEEPHOLE_GRAD_KINDS.items()]
        elif key == GATE_RECURRENT_GRAD_KIND:
            kinds = [(key, list(GATE_RECURRENT_BLOCKS))]
        else:
            kinds = [(key, None)]
        found = []
        for kind, names in kinds:
            steps, values = run.series(kind, layer)
            if not steps.size:
                continue
            values = values.reshape(len(steps), -1)
            if names is None or len(names) != values.shape[1]:
                names = run.block_names(layer, values.shape[1])
            found.append((kind, steps, values, names))
        return found

    def _draw_curves(self, runs: list) -> None:
        """Updates the curves in place: new data only, no new plot items unless new series."""
        self._items, self._shown = [], []
        wanted = set()
        legend: list = []
        series: dict[str, list] = {key: [] for key in PLOT_KEYS}
        for index, run in enumerate(runs):
            layer = self.collection.layer_for(run)
            if layer is None:
                continue
            color = self.collection.color_index(run)
            for key in PLOT_KEYS:
                plot = self.plots[key]
                for kind, steps, values, names in self._sources(run, layer, key):
                    for block, name in enumerate(names):
                        pen = series_pen(name, block, color, len(runs) == 1, legend)
                        curve_key = (index, run.name, kind, block, name, len(runs))
                        wanted.add(curve_key)
                        label = f"p_{name}" if key == PEEPHOLE_PLOT else name
                        if curve_key not in self._curves:
                            item = plot.plot(connect="finite", name=label)
                            self._curves[curve_key] = (plot, item)
                        item = self._curves[curve_key][1]
                        item.setPen(pen)
                        series[key].append((item, steps.astype(np.float64), values[:, block],
                                            pen.color().name()))
                        self._items.append((plot, item))
                    self._shown.append({"run": run.name, "layer": layer, "plot": key,
                                        "kind": kind, "steps": steps, "values": values,
                                        "names": names})
        # Zeros at a floor under each plot's smallest value, NaN/Inf as crosses (LogMarks).
        for key, found in series.items():
            prepared = log_values([values for _, _, values, _ in found])
            for (item, steps, _, _), values in zip(found, prepared):
                item.setData(steps, values.shown)
            self.marks[key].update([(steps, values, color) for (_, steps, _, color), values
                                    in zip(found, prepared)])
        self._show_plots([key for key in PLOT_KEYS
                          if key in WEIGHT_GRAD_KINDS or series[key]])
        self.legend.set_entries(sorted(legend, key=block_order))
        for curve_key in [k for k in self._curves if k not in wanted]:
            plot, item = self._curves.pop(curve_key)
            plot.removeItem(item)

    def _draw_step(self, runs: list) -> None:
        step = self.collection.current_step()
        for line in self.step_lines:
            line.setVisible(step is not None)
            if step is not None:
                line.setValue(step)
        parts = ["Weight-gradient norms per gate block"]
        if runs and (layer := self.collection.layer_for(runs[0])):
            parts.append(f"layer {layer}")
            units = runs[0].units(layer)
            if units:
                parts.append(f"{units} units")
        if step is not None:
            parts.append(f"step {step}")
        if runs and not self._shown:
            parts.append("no weight-gradient frames (recorded when the probe has targets)")
        self.set_heading(" · ".join(parts))

    def _describe(self, key: str):
        symbol = CAPTIONS[key][0]

        def quantity(name: str) -> str:
            return f"‖∂L/∂p_{name}‖" if key == PEEPHOLE_PLOT else f"{symbol}[{name}]"

        def describe(x: float, y: float) -> str | None:
            best = None
            for shown in self._shown:
                if shown["plot"] != key:
                    continue
                steps = shown["steps"]
                index = int(np.clip(np.searchsorted(steps, x), 0, len(steps) - 1))
                if index > 0 and abs(steps[index - 1] - x) < abs(steps[index] - x):
                    index -= 1
                for block, name in enumerate(shown["names"]):
                    value = float(shown["values"][index, block])
                    if not value > 0:
                        continue
                    distance = abs(np.log10(value) - y)
                    if best is None or distance < best[0]:
                        best = (distance, shown, int(steps[index]), name, value)
            if best is None:
                return None
            _, shown, step, name, value = best
            return (f"{shown['run']} · {shown['layer']} · step {step}: {quantity(name)} = "
                    f"{format_value(value)}")

        return describe

    def table(self) -> tuple[list[str], list[Sequence[Any]]]:
        rows = []
        for shown in self._shown:
            for index, step in enumerate(shown["steps"].tolist()):
                rows.extend((shown["run"], shown["layer"], shown["kind"], step, name,
                             float(shown["values"][index, block]))
                            for block, name in enumerate(shown["names"]))
        return ["run", "layer", "quantity", "step", "block", "value"], rows
