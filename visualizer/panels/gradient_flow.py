"""Gradient flow through time: ‖∂L/∂h_t‖ against t, now and over training.

The top plot draws ‖∂L/∂h_t‖ on a log scale for the step on screen, one curve per run compared
in the run's colour (vanilla against LSTM on one axis shows the vanishing gradient at once: the
lecture's picture). Values a log axis cannot draw are drawn all the same: exact zeros (a
gradient that underflowed) as ▽ at a stated floor a decade under the smallest positive value,
NaN and Inf as ✕ at the top. Below, for each run, a heatmap of training step × t of
log₁₀ ‖∂L/∂h_t‖ (zeros at the floor's colour, NaN/Inf painted over), as small multiples that
reflow into a grid and share one colour bar; "history maps" off leaves the whole panel to the
curves.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtWidgets

from visualizer.model import (
    RunCollection,
    RunModel,
    grid_shape,
    log_floor,
    log_values,
    uniform_rows,
)
from visualizer.panels.base import (
    MAGNITUDE,
    HeatmapCell,
    LogMarks,
    Panel,
    dress,
    format_value,
    run_color,
    run_pen,
    set_time_ticks,
    time_plot,
)

__all__ = ["GradientFlowPanel", "log10_image", "log10_or_nan"]


def log10_or_nan(values: np.ndarray) -> np.ndarray:
    """log₁₀ of positive finite values, NaN (drawn transparent) elsewhere."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full(values.shape, np.nan)
    good = np.isfinite(values) & (values > 0)
    out[good] = np.log10(values[good])
    return out


def log10_image(values: np.ndarray, floor: float) -> np.ndarray:
    """log₁₀ of `values` for a heatmap: zeros at log₁₀ `floor`, +Inf kept as +Inf (painted
    over), NaN, -Inf and negative values as NaN (painted over)."""
    values = np.asarray(values, dtype=np.float64)
    out = log10_or_nan(values)
    out[values == 0] = math.log10(floor)
    out[values == np.inf] = np.inf
    return out


class GradientFlowPanel(Panel):
    """‖∂L/∂h_t‖ against t (log scale) for the current step, and training step × t heatmaps."""

    name = "gradient_flow"
    title = "Gradient flow through time"

    def __init__(self, collection: RunCollection, parent: QtWidgets.QWidget | None = None):
        super().__init__(collection, parent)
        self.show_maps = QtWidgets.QCheckBox("history maps")
        self.show_maps.setChecked(True)
        self.show_maps.setToolTip("Training step × t maps of each run below the curves; off "
                                  "leaves the panel to ‖∂L/∂h_t‖ of all runs at this step")
        self.show_maps.toggled.connect(lambda _: self.refresh())
        self.options.addWidget(self.show_maps)
        self.graphics = pg.GraphicsLayoutWidget()
        self.body.addWidget(self.graphics)
        self.line_plot = time_plot(self.graphics, 0, 0)
        self.line_plot.setLogMode(y=True)
        self.line_plot.setLabel("left", "‖∂L/∂h_t‖")
        self.line_plot.setLabel("bottom", "time step t")
        # The runs' names and colours are the window's legend: nothing covers the curves.
        dress(self.line_plot, legend=False)
        self.marks = LogMarks(self.line_plot)
        self.watch_hover(self.graphics, self.line_plot, self._describe_line)
        self._curves: dict[int, pg.PlotDataItem] = {}
        self._maps_key: Any = None
        self._maps_layout = pg.GraphicsLayout()
        self.graphics.addItem(self._maps_layout, row=1, col=0)
        self.graphics.ci.layout.setRowStretchFactor(0, 2)
        self.graphics.ci.layout.setRowStretchFactor(1, 3)
        self.bar: pg.ColorBarItem | None = None
        self.cells: list[HeatmapCell] = []
        self._step_lines: list[pg.InfiniteLine] = []
        self._lines: list[dict[str, Any]] = []
        self._maps: list[dict[str, Any]] = []
        self._data_key: Any = None
        self.note = ""

    def options_key(self) -> Any:
        return (self.show_maps.isChecked(), self._fit_columns())

    def _fit_columns(self) -> int:
        count = len(self.collection.shown_runs())
        if count <= 1 or not self.show_maps.isChecked():
            return max(count, 1)
        size = self.graphics.size()
        return grid_shape(count, size.width() - 90, size.height() * 0.6, aspect=1.5,
                          margin=(60, 45))[1]

    def redraw(self) -> None:
        runs = self.collection.shown_runs()
        step = self.collection.current_step()
        self._draw_lines(runs, step)
        maps = self.show_maps.isChecked()
        self._maps_layout.setVisible(maps)
        self.graphics.ci.layout.setRowStretchFactor(1, 3 if maps else 0)
        self._maps_layout.setMaximumHeight(1e6 if maps else 0)
        data_key = (self.collection.runs_version(), maps, self._fit_columns())
        if data_key != self._data_key:
            self._data_key = data_key
            self._draw_maps(runs if maps else [])
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
            if len(self._lines) > 1:
                parts.append(f"{len(self._lines)} runs")
        elif runs:
            parts.append("no gradient frames (the monitor records them when it has targets)")
        self.set_heading(" · ".join(parts))

    def _draw_lines(self, runs: list[RunModel], step: int | None) -> None:
        self._lines = []
        found_all = []
        for index, run in enumerate(runs):
            layer = self.collection.layer_for(run)
            found = run.grad_norm(layer, step) if layer is not None else None
            found_all.append((index, run, layer, found))
        prepared = log_values([f[1] for *_, f in found_all if f is not None])
        marks = []
        zeros, bad = [], []
        k = 0
        for index, run, layer, found in found_all:
            curve = self._curves.get(index)
            if found is None:
                if curve is not None:
                    curve.setData([], [])
                continue
            values = prepared[k]
            k += 1
            frame_step, norms = found
            color = run_color(self.collection.color_index(run))
            if curve is None:
                curve = self._curves[index] = self.line_plot.plot(connect="finite", symbol="o",
                                                                  symbolSize=4, symbolPen=None)
            curve.setPen(run_pen(self.collection.color_index(run)))
            curve.setSymbolBrush(color)
            curve.opts["name"] = f"{run.name} · {layer} · step {frame_step}"
            x = np.arange(len(norms), dtype=np.float64)
            curve.setData(x, values.shown)
            marks.append((x, values, color))
            if values.zeros.size:
                zeros.append(f"{run.name} {values.zeros_text()}")
            if values.bad_text():
                bad.append(f"{run.name}: {values.bad_text()}")
            self._lines.append({"run": run.name, "layer": layer, "step": frame_step,
                                "values": norms, "units": run.units(layer),
                                "tokens": run.tokens(self.collection.sample),
                                "floor": values.floor})
        for index in list(self._curves):
            if index >= len(runs):
                curve = self._curves.pop(index)
                self.line_plot.removeItem(curve)
        self.marks.update(marks)
        # One short line above the plot (a long title would widen the plot past its panel).
        notes = []
        if zeros:
            notes.append(f"‖∂L/∂h_t‖ = 0 drawn ▽ at {prepared[0].floor:.0e}: " + ", ".join(zeros))
        if bad:
            notes.append("✕ " + "; ".join(bad))
        self.note = " · ".join(notes)
        title = self.note if len(self.note) < 110 else self.note[:107] + "…"
        if self.line_plot.titleLabel.text != title:
            self.line_plot.setTitle(title or None, size="8pt", color="#DDDDDD")
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
        columns = max(self._fit_columns(), 1)
        key = (tuple(run.name for run, *_ in histories), columns)
        if key != self._maps_key:
            self._maps_key = key
            self._build_maps(len(histories), columns)
        matrices = [m for _, _, steps, m in histories if m is not None and len(steps)]
        floor = log_floor(matrices)
        logs = []
        for run, layer, steps, matrix in histories:
            if matrix is None or not len(steps):
                logs.append(None)
                continue
            grid, rows = uniform_rows(steps, matrix)
            logs.append((grid, log10_image(rows, floor).astype(np.float32)))
        finite = [v[1][np.isfinite(v[1])] for v in logs if v is not None]
        finite = [f for f in finite if f.size]
        if finite:
            low = math.floor(min(float(f.min()) for f in finite))
            high = math.ceil(max(float(f.max()) for f in finite))
            high = high if high > low else low + 1
        else:
            low, high = -1.0, 1.0
        zeros = any(bool((m == 0).any()) for m in matrices)
        label = "log₁₀ ‖∂L/∂h_t‖" + (f" (0 at {math.log10(floor):g})" if zeros else "")
        if self.bar is not None:
            self.bar.setLevels((low, high))
            if self.bar.getAxis("left").labelText != label:
                self.bar.getAxis("left").setLabel(label)
        self._maps = []
        for col, ((run, layer, steps, _), found) in enumerate(zip(histories, logs)):
            cell = self.cells[col]
            color = run_color(self.collection.color_index(run))
            if found is None:
                cell.show(None, (low, high), MAGNITUDE, label)
                cell.plot.setTitle(f"{run.name} · no ∂L/∂h_t frames", size="9pt", color=color)
                self._maps.append({})
                continue
            grid, image = found
            spacing = float(grid[1] - grid[0]) if len(grid) > 1 else 1.0
            changed = cell.show(image, (low, high), MAGNITUDE, label)
            rect = QtCore.QRectF(0, float(grid[0]), image.shape[1],
                                 float(grid[-1] - grid[0]) + spacing)
            cell.set_rect(rect)
            if changed or cell.rect != rect:
                cell.rect = rect
                cell.plot.setRange(rect, padding=0)
            title = run.name  # short: the steps kept are on the axis and in the hover read-out
            if cell.nonfinite:
                title += f" · {cell.nonfinite} NaN/Inf"
            cell.plot.setTitle(title, size="9pt", color=color)
            set_time_ticks(cell.plot.getAxis("bottom"), run.tokens(self.collection.sample),
                           image.shape[1])
            self._maps.append({"run": run.name, "layer": layer, "grid": grid, "image": image,
                               "rect": rect})

    def _build_maps(self, count: int, columns: int) -> None:
        self._maps_layout.clear()
        self.cells, self._step_lines = [], []
        self.forget_hover()
        self.watch_hover(self.graphics, self.line_plot, self._describe_line)
        self.bar = None
        if not count:
            return
        self.bar = pg.ColorBarItem(values=(0, 1), colorMap=MAGNITUDE, interactive=False,
                                   label="log₁₀ ‖∂L/∂h_t‖", width=14)
        rows = -(-count // columns)
        for index in range(count):
            r, c = divmod(index, columns)
            plot = time_plot(self._maps_layout, r, c)
            if c == 0:
                plot.setLabel("left", "training step")
            if r == rows - 1 or index + columns >= count:
                plot.setLabel("bottom", "time step t")
            plot.setDefaultPadding(0)
            cell = HeatmapCell(plot, MAGNITUDE, "log₁₀ ‖∂L/∂h_t‖", bar=self.bar)
            line = pg.InfiniteLine(angle=0, pen=pg.mkPen("#FFFFFF", width=1,
                                                          style=QtCore.Qt.PenStyle.DashLine))
            plot.addItem(line, ignoreBounds=True)
            self.cells.append(cell)
            self._step_lines.append(line)
            self.watch_hover(self.graphics, plot, self._describe_map(index))
        self.bar.setImageItem([cell.image for cell in self.cells])
        self._maps_layout.addItem(self.bar, row=0, col=columns, rowspan=rows)

    def _describe_line(self, x: float, y: float) -> str | None:
        t = int(round(x))
        best = None
        for line in self._lines:
            values = line["values"]
            if not 0 <= t < len(values) or not (values[t] >= 0 and np.isfinite(values[t])):
                continue
            at = values[t] if values[t] > 0 else line["floor"]  # zeros sit at the floor
            distance = abs(math.log10(at) - y)
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
