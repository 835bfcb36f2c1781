"""Weight-gradient norms per gate block over training: ‖∂L/∂W‖, ‖∂L/∂U‖ and ‖∂L/∂b‖."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtWidgets

from visualizer.model import WEIGHT_GRAD_KINDS, RunCollection, log_values
from visualizer.panels.base import (
    LogMarks,
    Panel,
    block_order,
    block_pen,
    compare_pen,
    dress,
    format_value,
    outside_legend,
    style_pen,
    value_plot,
)

__all__ = ["WeightGradsPanel"]

CAPTIONS = {
    "kernel_grad_norm": ("‖∂L/∂W‖", "input kernel W"),
    "recurrent_kernel_grad_norm": ("‖∂L/∂U‖", "recurrent kernel U"),
    "bias_grad_norm": ("‖∂L/∂b‖", "bias b"),
}


class WeightGradsPanel(Panel):
    """Three log-scale plots sharing the step axis: a line per gate block (colour) and run."""

    name = "weight_grads"
    title = "Weight-gradient norms"

    def __init__(self, collection: RunCollection, parent: QtWidgets.QWidget | None = None):
        super().__init__(collection, parent)
        self.graphics = pg.GraphicsLayoutWidget()
        self.body.addWidget(self.graphics)
        self.plots: dict[str, pg.PlotItem] = {}
        self.marks: dict[str, LogMarks] = {}
        self.step_lines: list[pg.InfiniteLine] = []
        for row, kind in enumerate(WEIGHT_GRAD_KINDS):
            plot = value_plot(self.graphics, row, 0)
            symbol, caption = CAPTIONS[kind]
            plot.setLogMode(y=True)
            dress(plot, legend=False)
            plot.setLabel("left", symbol)
            plot.setTitle(caption, size="9pt")
            if row:
                plot.setXLink(self.plots[WEIGHT_GRAD_KINDS[0]])
            if row == len(WEIGHT_GRAD_KINDS) - 1:
                plot.setLabel("bottom", "training step")
            line = pg.InfiniteLine(angle=90, pen=pg.mkPen("#888888"))
            plot.addItem(line, ignoreBounds=True)
            self.step_lines.append(line)
            self.plots[kind] = plot
            self.marks[kind] = LogMarks(plot)
            self.watch_hover(self.graphics, plot, self._describe(kind))
        # One legend of the gate blocks for the three plots, beside them (never on the data).
        self.legend = outside_legend(self.graphics, 0, 1, rowspan=len(WEIGHT_GRAD_KINDS))
        self._items: list[tuple[pg.PlotItem, pg.PlotDataItem]] = []
        self._curves: dict[tuple, tuple[pg.PlotItem, pg.PlotDataItem]] = {}
        self._shown: list[dict[str, Any]] = []
        self._data_key: Any = None

    def redraw(self) -> None:
        runs = self.collection.shown_runs()
        data_key = self.collection.runs_version()
        if data_key != self._data_key:
            self._data_key = data_key
            self._draw_curves(runs)
        self._draw_step(runs)

    def _draw_curves(self, runs: list) -> None:
        """Updates the curves in place: new data only, no new plot items unless new series."""
        self._items, self._shown = [], []
        wanted = set()
        legend: list = []
        series: dict[str, list] = {kind: [] for kind in WEIGHT_GRAD_KINDS}
        for index, run in enumerate(runs):
            layer = self.collection.layer_for(run)
            if layer is None:
                continue
            for kind in WEIGHT_GRAD_KINDS:
                steps, values = run.series(kind, layer)
                if not steps.size:
                    continue
                values = values.reshape(len(steps), -1)
                names = run.block_names(layer, values.shape[1])
                plot = self.plots[kind]
                for block, name in enumerate(names):
                    color = self.collection.color_index(run)
                    pen = block_pen(name, block, 0) if len(runs) == 1 else \
                        compare_pen(name, block, color)
                    if not any(label == name for _, label in legend):
                        legend.append((pen if len(runs) == 1 else style_pen(name, block), name))
                    key = (index, run.name, kind, block, name, len(runs))
                    wanted.add(key)
                    if key not in self._curves:
                        item = plot.plot(connect="finite", name=name)
                        self._curves[key] = (plot, item)
                    item = self._curves[key][1]
                    item.setPen(pen)
                    series[kind].append((item, steps.astype(np.float64), values[:, block],
                                         pen.color().name()))
                    self._items.append((plot, item))
                self._shown.append({"run": run.name, "layer": layer, "kind": kind,
                                    "steps": steps, "values": values, "names": names})
        # Zeros at a floor under each plot's smallest value, NaN/Inf as crosses (LogMarks).
        for kind, found in series.items():
            prepared = log_values([values for _, _, values, _ in found])
            for (item, steps, _, _), values in zip(found, prepared):
                item.setData(steps, values.shown)
            self.marks[kind].update([(steps, values, color) for (_, steps, _, color), values
                                     in zip(found, prepared)])
        self.legend.set_entries(sorted(legend, key=block_order))
        for key in [k for k in self._curves if k not in wanted]:
            plot, item = self._curves.pop(key)
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

    def _describe(self, kind: str):
        symbol = CAPTIONS[kind][0]

        def describe(x: float, y: float) -> str | None:
            best = None
            for shown in self._shown:
                if shown["kind"] != kind:
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
            return (f"{shown['run']} · {shown['layer']} · step {step}: {symbol}[{name}] = "
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
