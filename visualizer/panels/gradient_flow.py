"""Gradient flow through time: ‖∂L/∂h_t‖ against t, now and over training.

The top plot draws ‖∂L/∂h_t‖ on a log scale for the step on screen, one curve per run compared
(vanilla against LSTM on one axis shows the vanishing gradient at once). Below, for each run, a
heatmap of training step × t of log₁₀ ‖∂L/∂h_t‖: the picture of vanishing and exploding
gradients as training goes on.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtWidgets

from visualizer.model import RunCollection, RunModel, uniform_rows
from visualizer.panels.base import (
    MAGNITUDE,
    HeatmapCell,
    Panel,
    dress,
    format_value,
    run_pen,
    set_time_ticks,
    time_plot,
)

__all__ = ["GradientFlowPanel", "log10_or_nan"]


def log10_or_nan(values: np.ndarray) -> np.ndarray:
    """log₁₀ of positive finite values, NaN (drawn transparent) elsewhere."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full(values.shape, np.nan)
    good = np.isfinite(values) & (values > 0)
    out[good] = np.log10(values[good])
    return out


class GradientFlowPanel(Panel):
    """‖∂L/∂h_t‖ against t (log scale) for the current step, and training step × t heatmaps."""

    name = "gradient_flow"
    title = "Gradient flow through time"

    def __init__(self, collection: RunCollection, parent: QtWidgets.QWidget | None = None):
        super().__init__(collection, parent)
        self.graphics = pg.GraphicsLayoutWidget()
        self.body.addWidget(self.graphics)
        self.line_plot = time_plot(self.graphics, 0, 0)
        self.line_plot.setLogMode(y=True)
        self.line_plot.setLabel("left", "‖∂L/∂h_t‖")
        self.line_plot.setLabel("bottom", "time step t")
        dress(self.line_plot)
        self.watch_hover(self.graphics, self.line_plot, self._describe_line)
        self._curves: dict[int, pg.PlotDataItem] = {}
        self._maps_key: Any = None
        self._maps_layout = pg.GraphicsLayout()
        self.graphics.addItem(self._maps_layout, row=1, col=0)
        self.graphics.ci.layout.setRowStretchFactor(0, 2)
        self.graphics.ci.layout.setRowStretchFactor(1, 3)
        self.cells: list[HeatmapCell] = []
        self._step_lines: list[pg.InfiniteLine] = []
        self._lines: list[dict[str, Any]] = []
        self._maps: list[dict[str, Any]] = []
        self._data_key: Any = None

    def redraw(self) -> None:
        runs = self.collection.shown_runs()
        step = self.collection.current_step()
        self._draw_lines(runs, step)
        data_key = self.collection.runs_version()
        if data_key != self._data_key:
            self._data_key = data_key
            self._draw_maps(runs)
        for line, shown in zip(self._step_lines, self._maps):
            line.setVisible(step is not None and bool(shown))
            if step is not None:
                line.setValue(step)
        primary = self._lines[0] if self._lines else None
        parts = ["‖∂L/∂h_t‖ through time"]
        if primary is not None:
            parts += [f"layer {primary['layer']}", f"step {primary['step']}"]
            if primary.get("units"):
                parts.append(f"{primary['units']} units")
        elif runs:
            parts.append("no gradient frames (the monitor records them when it has targets)")
        self.set_heading(" · ".join(parts))

    def _draw_lines(self, runs: list[RunModel], step: int | None) -> None:
        self._lines = []
        for index, run in enumerate(runs):
            layer = self.collection.layer_for(run)
            found = run.grad_norm(layer, step) if layer is not None else None
            curve = self._curves.get(index)
            if found is None:
                if curve is not None:
                    curve.setData([], [])
                continue
            frame_step, norms = found
            if curve is None:
                curve = self._curves[index] = self.line_plot.plot(
                    pen=run_pen(index), connect="finite", symbol="o", symbolSize=4,
                    symbolBrush=run_pen(index).color(), symbolPen=None,
                )
            label = f"{run.name} · {layer} · step {frame_step}"
            curve.opts["name"] = label
            legend = self.line_plot.legend
            if legend is not None:
                legend.removeItem(curve)
                legend.addItem(curve, label)
            shown = norms.astype(np.float64, copy=True)
            shown[~(np.isfinite(shown) & (shown > 0))] = np.nan
            curve.setData(np.arange(len(norms), dtype=np.float64), shown)
            self._lines.append({"run": run.name, "layer": layer, "step": frame_step,
                                "values": norms, "units": run.units(layer),
                                "tokens": run.tokens(self.collection.sample)})
        for index in list(self._curves):
            if index >= len(runs):
                curve = self._curves.pop(index)
                self.line_plot.removeItem(curve)
        if self._lines:
            first = self._lines[0]
            set_time_ticks(self.line_plot.getAxis("bottom"), first["tokens"], len(first["values"]),
                           offset=0.0)

    def _draw_maps(self, runs: list[RunModel]) -> None:
        histories = []
        for run in runs:
            layer = self.collection.layer_for(run)
            steps, matrix = run.grad_norm_history(layer) if layer else (np.empty(0), None)
            histories.append((run, layer, steps, matrix))
        key = tuple(run.name for run, *_ in histories)
        if key != self._maps_key:
            self._maps_key = key
            self._maps_layout.clear()
            self.cells, self._step_lines = [], []
            self.forget_hover()
            self.watch_hover(self.graphics, self.line_plot, self._describe_line)
            for col in range(len(histories)):
                plot = time_plot(self._maps_layout, 0, col)
                plot.setLabel("left", "training step")
                plot.setLabel("bottom", "time step t")
                plot.setDefaultPadding(0)
                cell = HeatmapCell(plot, MAGNITUDE, "log₁₀ ‖∂L/∂h_t‖")
                line = pg.InfiniteLine(angle=0, pen=pg.mkPen("#FFFFFF", width=1,
                                                              style=QtCore.Qt.PenStyle.DashLine))
                plot.addItem(line, ignoreBounds=True)
                self.cells.append(cell)
                self._step_lines.append(line)
                self.watch_hover(self.graphics, plot, self._describe_map(col))
        logs = []
        for run, layer, steps, matrix in histories:
            if matrix is None or not len(steps):
                logs.append(None)
                continue
            grid, rows = uniform_rows(steps, matrix)
            logs.append((grid, log10_or_nan(rows).astype(np.float32)))
        finite = [v[1][np.isfinite(v[1])] for v in logs if v is not None]
        finite = [f for f in finite if f.size]
        if finite:
            low = math.floor(min(float(f.min()) for f in finite))
            high = math.ceil(max(float(f.max()) for f in finite))
            high = high if high > low else low + 1
        else:
            low, high = -1.0, 1.0
        self._maps = []
        for col, ((run, layer, steps, _), found) in enumerate(zip(histories, logs)):
            cell, line = self.cells[col], self._step_lines[col]
            if found is None:
                cell.show(None, (low, high), MAGNITUDE, "log₁₀ ‖∂L/∂h_t‖")
                cell.plot.setTitle(f"{run.name} · no ∂L/∂h_t frames", size="9pt")
                self._maps.append({})
                continue
            grid, image = found
            spacing = float(grid[1] - grid[0]) if len(grid) > 1 else 1.0
            changed = cell.show(image, (low, high), MAGNITUDE, "log₁₀ ‖∂L/∂h_t‖")
            rect = QtCore.QRectF(0, float(grid[0]), image.shape[1],
                                 float(grid[-1] - grid[0]) + spacing)
            cell.set_rect(rect)
            if changed or cell.rect != rect:
                cell.rect = rect
                cell.plot.setRange(rect, padding=0)
            cell.plot.setTitle(
                f"{run.name} · {layer} · {len(steps)} steps kept, {int(grid[0])}–{int(grid[-1])}",
                size="9pt",
            )
            set_time_ticks(cell.plot.getAxis("bottom"), run.tokens(self.collection.sample),
                           image.shape[1])
            self._maps.append({"run": run.name, "layer": layer, "grid": grid, "image": image,
                               "rect": rect})

    def _describe_line(self, x: float, y: float) -> str | None:
        t = int(round(x))
        best = None
        for line in self._lines:
            values = line["values"]
            if not 0 <= t < len(values) or not values[t] > 0:
                continue
            distance = abs(math.log10(values[t]) - y)
            if best is None or distance < best[0]:
                best = (distance, line)
        if best is None:
            return None
        line = best[1]
        tokens = line["tokens"]
        token = f" ({tokens[t]!r})" if tokens and t < len(tokens) else ""
        return (f"{line['run']} · {line['layer']} · step {line['step']} · t {t}{token}: "
                f"‖∂L/∂h_t‖ = {format_value(float(line['values'][t]))}")

    def _describe_map(self, col: int):
        def describe(x: float, y: float) -> str | None:
            if col >= len(self._maps) or not self._maps[col]:
                return None
            shown = self._maps[col]
            hit = self.cells[col].value_at(x, y)
            if hit is None:
                return None
            t, row, value = hit
            step = int(shown["grid"][row])
            magnitude = format_value(10.0 ** value) if math.isfinite(value) else "n/a"
            return (f"{shown['run']} · {shown['layer']} · step {step} · t {t}: "
                    f"‖∂L/∂h_t‖ = {magnitude}")

        return describe

    def table(self) -> tuple[list[str], list[Sequence[Any]]]:
        rows = []
        for run in self.collection.shown_runs():
            layer = self.collection.layer_for(run)
            if layer is None:
                continue
            steps, matrix = run.grad_norm_history(layer)
            for s, row in zip(steps.tolist(), matrix):
                rows.extend((run.name, layer, s, t, float(v)) for t, v in enumerate(row.tolist()))
        return ["run", "layer", "step", "t", "grad_norm"], rows
