"""Hidden state heatmap: units × time for one probe sample, with fixed colour levels.

`h` by default; the cell state `c`, each gate and `grad_h` are switchable. Bounded quantities
keep the bounds of their activation as colour levels at every step ([-1, 1] for tanh, [0, 1]
for sigmoid gates), so a colour always means the same value. One plot per run compared, as
small multiples that reflow into a grid to fit the panel, with one colour bar for all of them
(the same colour is the same value in every run); optionally one row per layer.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtWidgets

from visualizer.model import (
    HEATMAP_KINDS,
    RunCollection,
    RunModel,
    grid_shape,
    heatmap_image,
    nice_bound,
    quantity_levels,
)
from visualizer.panels.base import (
    DIVERGING,
    SEQUENTIAL,
    HeatmapCell,
    Panel,
    format_value,
    run_color,
    set_time_ticks,
    time_plot,
)

__all__ = ["StateHeatmapPanel"]

KIND_LABELS = {
    "h": "hidden state h",
    "c": "cell state c",
    "i": "input gate i",
    "f": "forget gate f",
    "z": "cell input z",
    "o": "output gate o",
    "grad_h": "∂L/∂h_t",
}


class StateHeatmapPanel(Panel):
    """Heatmaps of one quantity (h, c, a gate, grad_h): a column per run, a row per layer."""

    name = "state_heatmap"
    title = "Hidden state"

    def __init__(self, collection: RunCollection, parent: QtWidgets.QWidget | None = None):
        super().__init__(collection, parent)
        self.kind_box = QtWidgets.QComboBox()
        self.kind_box.setToolTip("Quantity shown: hidden state, cell state, a gate, or ∂L/∂h_t")
        self.kind_box.addItem(KIND_LABELS["h"], "h")
        self.kind_box.currentIndexChanged.connect(self._kind_chosen)
        self.wanted_kind = "h"
        self.all_layers = QtWidgets.QCheckBox("all layers")
        self.all_layers.setToolTip("One row per layer instead of the selected layer only")
        self.all_layers.toggled.connect(lambda _: self.refresh())
        self.options.addWidget(self.kind_box)
        self.options.addWidget(self.all_layers)
        self.graphics = pg.GraphicsLayoutWidget()
        self.body.addWidget(self.graphics)
        self._grid_key: Any = None
        self.bar: pg.ColorBarItem | None = None
        self._bar_map = DIVERGING
        self.columns = 1
        self.cells: dict[tuple[int, int], HeatmapCell] = {}
        self._shown: dict[tuple[int, int], dict[str, Any]] = {}

    @property
    def kind(self) -> str:
        return self.kind_box.currentData() or "h"

    def set_kind(self, kind: str) -> None:
        """Shows `kind` (`"h"`, `"c"`, a gate name, `"grad_h"`), now or once the run has it."""
        self.wanted_kind = kind
        index = self.kind_box.findData(kind)
        if index >= 0:
            self.kind_box.setCurrentIndex(index)
        else:
            self.refresh()

    def _kind_chosen(self, index: int) -> None:
        if index >= 0:
            self.wanted_kind = self.kind_box.itemData(index)
        self.refresh()

    def options_key(self) -> Any:
        return (self.wanted_kind, self.all_layers.isChecked(), self._fit_columns())

    def _fit_columns(self) -> int:
        """Columns of the small multiples that fit the panel's size now (one per run with
        `all layers`, where the rows are the layers)."""
        count = len(self.collection.shown_runs())
        if self.all_layers.isChecked() or count <= 1:
            return max(count, 1)
        size = self.graphics.size()
        return grid_shape(count, size.width() - 90, size.height(), margin=(50, 45))[1]

    def _sync_kinds(self) -> None:
        """Offers the heatmap quantities the selected layer of the primary run has."""
        primary, layer = self.collection.primary, self.collection.current_layer()
        found = primary.kinds(layer) if primary is not None and layer is not None else []
        info = primary.layer_info(layer) if primary is not None and layer is not None else {}
        described = list(info.get("states") or []) + list(info.get("gates") or [])
        order = list(dict.fromkeys(["h", *described, *HEATMAP_KINDS]))
        kinds = [k for k in order if k in found] or ["h"]
        current = [self.kind_box.itemData(i) for i in range(self.kind_box.count())]
        wanted = self.wanted_kind if self.wanted_kind in kinds else kinds[0]
        if kinds == current and self.kind == wanted:
            return
        self.kind_box.blockSignals(True)
        if kinds != current:
            self.kind_box.clear()
            for kind in kinds:
                self.kind_box.addItem(KIND_LABELS.get(kind, kind), kind)
        self.kind_box.setCurrentIndex(kinds.index(wanted))
        self.kind_box.blockSignals(False)

    def _grid(self) -> list[list[tuple[RunModel, str | None]]]:
        """Rows of columns of what each small multiple shows: with `all layers` a row per layer
        and a column per run; otherwise the runs, row by row, `columns` to a row."""
        runs = self.collection.shown_runs()
        if not self.all_layers.isChecked():
            cells = [(run, self.collection.layer_for(run)) for run in runs]
            columns = max(self.columns, 1)
            return [cells[k:k + columns] for k in range(0, len(cells), columns)] or [[]]
        depth = max((len(run.layers()) for run in runs), default=0)
        return [
            [(run, run.layers()[row] if row < len(run.layers()) else None) for run in runs]
            for row in range(max(depth, 1))
        ]

    def _build(self, grid: list[list[tuple[RunModel, str | None]]]) -> None:
        self.graphics.clear()
        self.forget_hover()
        self.cells = {}
        count = sum(len(row) for row in grid)
        shared = count > 1
        self.bar = None
        if shared:
            self.bar = pg.ColorBarItem(values=(0, 1), colorMap=DIVERGING, interactive=False,
                                       label="h", width=14)
            self._bar_map = DIVERGING
        columns = max((len(row) for row in grid), default=1)
        for r, row in enumerate(grid):
            for c, _ in enumerate(row):
                plot = time_plot(self.graphics, r, c)
                plot.invertY(True)
                # Small multiples: axis names once, on the left column and the bottom row.
                if c == 0:
                    plot.setLabel("left", "unit")
                if r == len(grid) - 1 or (r + 1 < len(grid) and c >= len(grid[r + 1])):
                    plot.setLabel("bottom", "time step t")
                plot.setDefaultPadding(0)
                self.cells[r, c] = HeatmapCell(plot, DIVERGING, "h", bar=self.bar)
                self.watch_hover(self.graphics, plot, self._describe(r, c))
        if self.bar is not None:
            self.bar.setImageItem([cell.image for cell in self.cells.values()])
            self.graphics.addItem(self.bar, row=0, col=columns, rowspan=len(grid))

    def redraw(self) -> None:
        self._sync_kinds()
        self.columns = self._fit_columns()
        grid = self._grid()
        grid_key = tuple(tuple((run.name, layer) for run, layer in row) for row in grid)
        if grid_key != self._grid_key:
            self._grid_key = grid_key
            self._build(grid)
        kind, sample = self.kind, self.collection.sample
        step = self.collection.current_step()
        self._shown = {}
        frames = {}
        for r, row in enumerate(grid):
            for c, (run, layer) in enumerate(row):
                frames[r, c] = run.frame(kind, layer, step) if layer is not None else None
        levels = self._shared_levels(grid, frames, kind, sample) if self.bar else None
        for r, row in enumerate(grid):
            for c, (run, layer) in enumerate(row):
                cell = self.cells[r, c]
                self._shown[r, c] = self._draw_cell(cell, run, layer, kind, sample, step,
                                                    frames[r, c], levels)
        primary = self.collection.primary
        if primary is None:
            self.set_heading("Hidden state · no run")
        else:
            first = self._shown.get((0, 0), {})
            parts = [KIND_LABELS.get(kind, kind)]
            if first.get("layer"):
                parts.append(f"layer {first['layer']}")
            if first.get("step") is not None:
                parts.append(f"step {first['step']}")
            if first.get("units"):
                parts.append(f"{first['units']} units")
            parts.append(f"sample {sample}")
            if len(self._shown) > 1:
                parts.append(f"{len(self._shown)} plots, one colour scale")
            self.set_heading(" · ".join(parts))

    def _shared_levels(self, grid, frames, kind: str, sample: int) -> tuple[float, float, str]:
        """Colour levels, map and label of the one colour bar of several small multiples: the
        activation's bounds when every run has them, else symmetric around 0 to the largest
        value shown."""
        fixed, peak = [], 0.0
        for r, row in enumerate(grid):
            for c, (run, layer) in enumerate(row):
                frame = frames[r, c]
                if frame is None or frame[1].ndim not in (2, 3):
                    continue
                image = heatmap_image(frame[1], sample)
                low, high, is_fixed = quantity_levels(kind, run.layer_info(layer), image)
                if is_fixed:
                    fixed.append((low, high))
                else:
                    peak = max(peak, high)
        if fixed and not peak and len(set(fixed)) == 1:
            low, high = fixed[0]
            label = f"{kind} ∈ [{low:g}, {high:g}]"
        else:
            bound = nice_bound(max([peak] + [max(abs(a), abs(b)) for a, b in fixed]))
            low, high = -bound, bound
            label = f"{kind} ∈ [{low:g}, {high:g}] (scaled)"
        colormap = SEQUENTIAL if low >= 0 else DIVERGING
        if self.bar is not None:
            if self._bar_map != colormap:
                self._bar_map = colormap
                self.bar.setColorMap(colormap)
            if self.bar.getAxis("left").labelText != label:
                self.bar.getAxis("left").setLabel(label)
            if tuple(self.bar.levels()) != (low, high):
                self.bar.setLevels((low, high))
        return low, high, label

    def _draw_cell(self, cell: HeatmapCell, run: RunModel, layer: str | None, kind: str,
                   sample: int, step: int | None, frame: tuple[int, np.ndarray] | None,
                   shared: tuple[float, float, str] | None) -> dict[str, Any]:
        plot = cell.plot
        info = run.layer_info(layer) if layer is not None else {}
        color = run_color(self.collection.color_index(run))
        if frame is None or frame[1].ndim not in (2, 3):
            cell.show(None, cell.levels, cell.colormap, kind)
            why = "no layer" if layer is None else f"no {kind!r} frames for layer {layer}"
            if run.status in ("waiting", "error"):
                why = run.status
            elif run.status == "live" and layer is not None and not run.steps().size:
                why = "waiting for the first probe"
            if plot.titleLabel.text != f"{run.name} · {why}":
                plot.setTitle(f"{run.name} · {why}", size="9pt", color=color)
            return {"run": run.name, "layer": layer, "title": why, "step": None, "units": None}
        frame_step, array = frame
        image = heatmap_image(array, sample)
        if shared is not None:
            low, high, label = shared
        else:
            low, high, fixed = quantity_levels(kind, info, image)
            label = f"{kind} ∈ [{low:g}, {high:g}]" + ("" if fixed else " (scaled)")
        colormap = SEQUENTIAL if low >= 0 else DIVERGING
        if cell.show(image, (low, high), colormap, label):
            plot.setRange(xRange=(0, image.shape[1]), yRange=(0, image.shape[0]), padding=0)
            plot.setLimits(xMin=0, xMax=image.shape[1], yMin=0, yMax=image.shape[0])
        tokens = run.tokens(sample)
        set_time_ticks(plot.getAxis("bottom"), tokens, image.shape[1])
        units = image.shape[0]
        # The step is in the panel's heading; a title that changes each step would make the
        # plot layout recompute at every redraw. A compared run's own step shows when it differs.
        primary_step = step if step is not None else frame_step
        # Short titles: a long one would set the plot's minimum width and push the grid out of
        # the panel. Layer, quantity and units are in the heading.
        title = run.name
        if self.all_layers.isChecked() or layer != self.collection.current_layer():
            title += f" · {layer}"
        if frame_step != primary_step:
            title += f" · step {frame_step}"
        if cell.nonfinite:
            title += f" · {cell.nonfinite} NaN/Inf (magenta/white)"
        if plot.titleLabel.text != title:
            plot.setTitle(title, size="9pt", color=color)
        return {"run": run.name, "layer": layer, "kind": kind, "step": frame_step,
                "units": units, "title": title, "image": image, "tokens": tokens,
                "sample": sample}

    def _describe(self, r: int, c: int):
        def describe(x: float, y: float) -> str | None:
            cell, shown = self.cells.get((r, c)), self._shown.get((r, c), {})
            hit = cell.value_at(x, y) if cell is not None else None
            if hit is None:
                return None
            t, unit, value = hit
            tokens = shown.get("tokens")
            token = f" ({tokens[t]!r})" if tokens and t < len(tokens) else ""
            return (f"{shown['run']} · {shown['layer']} · unit {unit}, t {t}{token}: "
                    f"{shown['kind']} = {format_value(value)}")

        return describe

    def table(self) -> tuple[list[str], list[Sequence[Any]]]:
        rows = []
        for shown in self._shown.values():
            image = shown.get("image")
            if image is None:
                continue
            units, steps = np.indices(image.shape)
            head = (shown["run"], shown["layer"], shown["kind"], shown["step"], shown["sample"])
            rows.extend(
                (*head, u, t, v)
                for u, t, v in zip(units.ravel().tolist(), steps.ravel().tolist(),
                                   image.ravel().tolist())
            )
        return ["run", "layer", "kind", "step", "sample", "unit", "t", "value"], rows
