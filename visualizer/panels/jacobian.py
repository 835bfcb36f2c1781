"""The recurrent Jacobian: ‖∂h_t/∂h_{t-1}‖ per step, and σ_max of the recurrent kernel.

The lecture's bound: ‖∂h_t/∂h_{t-1}‖ ≤ ‖W_hh‖ · γ with γ the largest slope of the activation
(1 for tanh, 1/4 for the logistic sigmoid). While σ_max(W_hh) stays below 1/γ the error
signal must vanish over long lags; the dashed lines mark 1/γ for each gate block.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtWidgets

from visualizer.model import RunCollection
from visualizer.panels.base import (
    Panel,
    block_order,
    dress,
    format_value,
    outside_legend,
    run_pen,
    series_pen,
    set_time_ticks,
    time_plot,
)

__all__ = ["JacobianPanel"]


class JacobianPanel(Panel):
    """‖∂h_t/∂h_{t-1}‖ against t for the selected sample, and σ_max per gate block over training."""

    name = "jacobian"
    title = "Recurrent Jacobian"

    def __init__(self, collection: RunCollection, parent: QtWidgets.QWidget | None = None):
        super().__init__(collection, parent)
        self.graphics = pg.GraphicsLayoutWidget()
        self.body.addWidget(self.graphics)
        self.norm_plot = time_plot(self.graphics, 0, 0)
        self.norm_plot.setLabel("left", "‖∂h_t/∂h_{t-1}‖")
        self.norm_plot.setLabel("bottom", "time step t")
        # The runs' colours are the window's legend; the blocks' legend sits beside σ_max.
        dress(self.norm_plot, legend=False)
        self.norm_plot.addItem(
            pg.InfiniteLine(1.0, angle=0, pen=pg.mkPen("#AAAAAA", style=QtCore.Qt.PenStyle.DotLine),
                            label="1", labelOpts={"position": 0.02, "color": "#AAAAAA"}),
        )
        self.sigma_plot = self.graphics.addPlot(row=1, col=0)
        self.sigma_plot.setLabel("left", "σ_max(recurrent kernel)")
        self.sigma_plot.setLabel("bottom", "training step")
        dress(self.sigma_plot, legend=False)
        self.sigma_legend = outside_legend(self.graphics, 1, 1)
        self.step_line = pg.InfiniteLine(angle=90, pen=pg.mkPen("#888888"))
        self.sigma_plot.addItem(self.step_line, ignoreBounds=True)
        self.watch_hover(self.graphics, self.norm_plot, self._describe_norm)
        self.watch_hover(self.graphics, self.sigma_plot, self._describe_sigma)
        self._norm_items: list[pg.PlotDataItem] = []
        self._sigma_items: list[Any] = []
        self._norms: list[dict[str, Any]] = []
        self._sigmas: list[dict[str, Any]] = []
        self._norm_key: Any = None
        self._sigma_key: Any = None
        self.sigma_plot.setTitle("σ_max of each gate block of the recurrent kernel, over training",
                                 size="9pt")

    def redraw(self) -> None:
        runs = self.collection.shown_runs()
        step, sample = self.collection.current_step(), self.collection.sample
        data_key = self.collection.runs_version()
        if (data_key, step, sample) != self._norm_key:
            self._norm_key = (data_key, step, sample)
            self._draw_norms(runs, step, sample)
        if data_key != self._sigma_key:
            self._sigma_key = data_key
            self._draw_sigmas(runs)
        self.step_line.setVisible(step is not None)
        if step is not None:
            self.step_line.setValue(step)
        self.norm_plot.setTitle(f"‖∂h_t/∂h_{{t-1}}‖ of probe sample {sample}", size="9pt")
        parts = ["Recurrent Jacobian"]
        head = self._norms[0] if self._norms else (self._sigmas[0] if self._sigmas else None)
        if head is not None:
            parts.append(f"layer {head['layer']}")
        if self._norms:
            parts.append(f"step {self._norms[0]['step']}")
        elif runs:
            parts.append("no jacobian_norm frames")
        if runs and (layer := self.collection.layer_for(runs[0])) and runs[0].units(layer):
            parts.append(f"{runs[0].units(layer)} units")
        self.set_heading(" · ".join(parts))

    def _draw_norms(self, runs: list, step: int | None, sample: int) -> None:
        self._norms = []
        for index, run in enumerate(runs):
            layer = self.collection.layer_for(run)
            frame = run.frame("jacobian_norm", layer, step) if layer is not None else None
            if frame is None:
                continue
            frame_step, array = frame
            values = np.asarray(array, dtype=np.float64)
            if values.ndim == 2:
                values = values[min(sample, values.shape[0] - 1)]
            values = values.reshape(-1)
            self._norms.append({"run": run.name, "layer": layer, "step": frame_step,
                                "values": values, "tokens": run.tokens(sample),
                                "index": self.collection.color_index(run)})
        while len(self._norm_items) > len(self._norms):
            self.norm_plot.removeItem(self._norm_items.pop())
        for k, shown in enumerate(self._norms):
            if k == len(self._norm_items):
                self._norm_items.append(self.norm_plot.plot(connect="finite"))
            item = self._norm_items[k]
            item.setPen(run_pen(shown["index"]))
            item.setData(np.arange(len(shown["values"]), dtype=np.float64), shown["values"])
        if self._norms:
            first = self._norms[0]
            set_time_ticks(self.norm_plot.getAxis("bottom"), first["tokens"], len(first["values"]),
                           offset=0.0)

    def _draw_sigmas(self, runs: list) -> None:
        for item in self._sigma_items:
            self.sigma_plot.removeItem(item)
        self._sigma_items, self._sigmas = [], []
        thresholds: dict[float, str] = {}
        legend: list = []
        for run in runs:
            index = self.collection.color_index(run)
            layer = self.collection.layer_for(run)
            if layer is None:
                continue
            steps, sigmas = run.series("sigma_max", layer)
            if not steps.size:
                continue
            sigmas = sigmas.reshape(len(steps), -1)
            names = run.block_names(layer, sigmas.shape[1])
            cell_thresholds = run.sigma_thresholds(layer, sigmas.shape[1])
            for block, name in enumerate(names):
                # One run: a colour per block. Several: the run's colour, a line style per block.
                pen = series_pen(name, block, index, len(runs) == 1, legend)
                item = self.sigma_plot.plot(
                    steps.astype(np.float64), sigmas[:, block], connect="finite", pen=pen,
                    name=f"σ_max {name}" if len(runs) == 1 else f"σ_max {run.name}: {name}",
                )
                self._sigma_items.append(item)
                threshold = cell_thresholds[block]
                if threshold is not None:
                    kind = "tanh" if threshold == 1 else "sigmoid" if threshold == 4 else ""
                    thresholds.setdefault(threshold, kind)
            self._sigmas.append({"run": run.name, "layer": layer, "steps": steps,
                                 "values": sigmas, "names": names,
                                 "thresholds": cell_thresholds})
        self.sigma_legend.set_entries(sorted(legend, key=block_order))
        for threshold, kind in sorted(thresholds.items()):
            text = f"1/γ = {threshold:g}" + (f" ({kind} blocks)" if kind else "")
            line = pg.InfiniteLine(
                threshold, angle=0,
                pen=pg.mkPen("#FF6060", width=1.5, style=QtCore.Qt.PenStyle.DashLine),
                label=text,
                labelOpts={"position": 0.02, "color": "#FF8080", "anchors": [(0, 1), (0, 1)]},
            )
            self.sigma_plot.addItem(line)
            self._sigma_items.append(line)
            # Invisible, but it keeps the 1/γ line and its label inside the auto range.
            room = pg.PlotDataItem([self._sigmas[0]["steps"][0]], [threshold * 1.15], pen=None,
                                   symbol="o", symbolSize=1, symbolPen=None,
                                   symbolBrush=(0, 0, 0, 0))
            self.sigma_plot.addItem(room)
            self._sigma_items.append(room)

    def _describe_norm(self, x: float, y: float) -> str | None:
        t = int(round(x))
        best = None
        for shown in self._norms:
            values = shown["values"]
            if 0 <= t < len(values) and np.isfinite(values[t]):
                distance = abs(values[t] - y)
                if best is None or distance < best[0]:
                    best = (distance, shown)
        if best is None:
            return None
        shown = best[1]
        tokens = shown["tokens"]
        token = f" ({tokens[t]!r})" if tokens and t < len(tokens) else ""
        return (f"{shown['run']} · {shown['layer']} · step {shown['step']} · t {t}{token}: "
                f"‖∂h_t/∂h_(t-1)‖ = {format_value(float(shown['values'][t]))}")

    def _describe_sigma(self, x: float, y: float) -> str | None:
        best = None
        for shown in self._sigmas:
            steps = shown["steps"]
            index = int(np.clip(np.searchsorted(steps, x), 0, len(steps) - 1))
            if index > 0 and abs(steps[index - 1] - x) < abs(steps[index] - x):
                index -= 1
            for block, name in enumerate(shown["names"]):
                value = float(shown["values"][index, block])
                distance = abs(value - y) if np.isfinite(value) else np.inf
                if best is None or distance < best[0]:
                    best = (distance, shown, int(steps[index]), name, value,
                            shown["thresholds"][block])
        if best is None:
            return None
        _, shown, step, name, value, threshold = best
        bound = f" (1/γ = {threshold:g})" if threshold is not None else ""
        return (f"{shown['run']} · {shown['layer']} · step {step}: σ_max[{name}] = "
                f"{format_value(value)}{bound}")

    def table(self) -> tuple[list[str], list[Sequence[Any]]]:
        rows = []
        for shown in self._norms:
            rows.extend((shown["run"], shown["layer"], "jacobian_norm", shown["step"], t, "",
                         float(v)) for t, v in enumerate(shown["values"].tolist()))
        for shown in self._sigmas:
            for index, step in enumerate(shown["steps"].tolist()):
                rows.extend((shown["run"], shown["layer"], "sigma_max", step, "", name,
                             float(shown["values"][index, block]))
                            for block, name in enumerate(shown["names"]))
        return ["run", "layer", "quantity", "step", "t", "block", "value"], rows
