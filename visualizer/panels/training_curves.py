"""Training curves: loss and metrics per batch and per epoch, training against validation."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pyqtgraph as pg
from PyQt6 import QtCore, QtWidgets

from visualizer.model import LogValues, RunCollection, RunModel, log_floor
from visualizer.panels.base import (
    LogMarks,
    Panel,
    SideLegend,
    dress,
    format_value,
    outside_legend,
    run_pen,
    value_plot,
)

__all__ = ["TrainingCurvesPanel", "metric_groups"]

PHASES = (("batch", "per batch (global step)"), ("epoch", "per epoch"))


def metric_groups(names: Sequence[str]) -> dict[str, list[str]]:
    """Groups Keras log names by metric: `loss` with `val_loss` (and `probe_loss`), etc.

    Loss comes first; the other metrics keep the order in which they were first logged.
    """
    groups: dict[str, list[str]] = {}
    for name in names:
        base = name[4:] if name.startswith("val_") else name
        if name == "probe_loss":
            base = "loss"
        groups.setdefault(base, []).append(name)
    ordered = {"loss": groups.pop("loss")} if "loss" in groups else {}
    ordered.update(groups)
    return ordered


def _series_style(name: str) -> tuple[QtCore.Qt.PenStyle, str]:
    if name.startswith("val_"):
        return QtCore.Qt.PenStyle.DashLine, "validation"
    if name.startswith("probe_"):
        return QtCore.Qt.PenStyle.DotLine, "probe batch"
    return QtCore.Qt.PenStyle.SolidLine, "training"


class TrainingCurvesPanel(Panel):
    """One row per metric, batch-level values on the left and epoch-level on the right."""

    name = "training_curves"
    title = "Training curves"

    def __init__(self, collection: RunCollection, parent: QtWidgets.QWidget | None = None):
        super().__init__(collection, parent)
        self.log_scale = QtWidgets.QCheckBox("log y")
        self.log_scale.setToolTip("Logarithmic y axis (Ctrl+L)")
        self.log_scale.toggled.connect(lambda _: self.refresh())
        self.options.addWidget(self.log_scale)
        self.graphics = pg.GraphicsLayoutWidget()
        self.body.addWidget(self.graphics)
        self._layout_key: Any = None
        self._plots: dict[tuple[str, str], pg.PlotItem] = {}
        self._curves: dict[tuple[int, str, str], pg.PlotDataItem] = {}
        self._step_lines: list[pg.InfiniteLine] = []
        self._nan_lines: list[tuple[pg.PlotItem, pg.InfiniteLine]] = []
        self._shown: list[tuple[str, str, str, np.ndarray, np.ndarray]] = []
        self._data_key: Any = None

    def options_key(self) -> Any:
        return (self.log_scale.isChecked(),)

    def view_key(self) -> Any:
        # The sample and the layer do not change these curves.
        c = self.collection
        return (c.data_version(), c.current_step(), self.options_key())

    def _rebuild(self, groups: dict[str, list[str]], present: set[tuple[str, str]]) -> None:
        self.graphics.clear()
        self.forget_hover()
        self._plots, self._curves, self._step_lines, self._nan_lines = {}, {}, [], []
        self._legends: dict[str, SideLegend] = {}
        self._marks: dict[tuple[str, str], LogMarks] = {}
        titled: set[str] = set()
        for row, group in enumerate(groups):
            for col, (phase, caption) in enumerate(PHASES):
                if not any((name, phase) in present for name in groups[group]):
                    continue
                plot = value_plot(self.graphics, row, col)
                dress(plot, grid_alpha=0.2, legend=False)
                if group not in self._legends:
                    # Beside the row's plots: a legend never covers a curve.
                    self._legends[group] = outside_legend(self.graphics, row, len(PHASES))
                plot.setLabel("left", group)
                plot.setLabel("bottom", "global step" if phase == "batch" else "epoch")
                if phase not in titled:
                    titled.add(phase)
                    plot.setTitle(caption, size="10pt")
                self._plots[group, phase] = plot
                self._marks[group, phase] = LogMarks(plot)
                self.watch_hover(self.graphics, plot, self._describe(group, phase))
                if phase == "batch":
                    line = pg.InfiniteLine(angle=90, pen=pg.mkPen("#888888", width=1))
                    line.setVisible(False)
                    plot.addItem(line, ignoreBounds=True)
                    self._step_lines.append(line)

    def redraw(self) -> None:
        runs = self.collection.shown_runs()
        names: list[str] = []
        present: set[tuple[str, str]] = set()
        for run in runs:
            for phase, _ in PHASES:
                phase_names = run.scalar_names(phase)
                present.update((name, phase) for name in phase_names)
                names.extend(phase_names)
        groups = metric_groups(list(dict.fromkeys(names)))
        layout_key = (tuple((g, tuple(n)) for g, n in groups.items()), tuple(sorted(present)),
                      tuple(r.name for r in runs))
        if layout_key != self._layout_key:
            self._layout_key = layout_key
            self._rebuild(groups, present)
        log = self.log_scale.isChecked()
        data_key = (self.collection.runs_version(), log, layout_key)
        if data_key != self._data_key:
            self._data_key = data_key
            self._draw_all(runs, groups, log)
        step = self.collection.current_step()
        for line in self._step_lines:
            line.setVisible(step is not None)
            if step is not None:
                line.setValue(step)
        primary = self.collection.primary
        what = f"{len(set(names))} series" if names else "no scalars logged yet"
        self.set_heading(
            f"Training curves · {primary.name if primary else 'no run'} · {what}"
            + (f" · step {step}" if step is not None else "")
        )

    def _draw_all(self, runs: list[RunModel], groups: dict[str, list[str]], log: bool) -> None:
        for plot in self._plots.values():
            plot.setLogMode(y=log)
        for plot, line in self._nan_lines:
            plot.removeItem(line)
        self._nan_lines = []
        self._shown = []
        self._log_series: dict[tuple[str, str], list] = {key: [] for key in self._plots}
        for run_index, run in enumerate(runs):
            for group, members in groups.items():
                for phase, _ in PHASES:
                    plot = self._plots.get((group, phase))
                    if plot is None:
                        continue
                    for name in members:
                        self._draw_series(plot, run_index, run, name, phase, log, len(runs))
                        if (steps := run.scalars(name, phase)[0]).size:
                            self._log_series[group, phase].append(
                                (steps, run.scalars(name, phase)[1],
                                 run_pen(self.collection.color_index(run)).color().name()))
        # On a log axis, zeros (and values below 0) are drawn at a stated floor, not dropped;
        # NaN and Inf already have their red line.
        for key, marks in self._marks.items():
            found = self._log_series.get(key, []) if log else []
            floor = log_floor([values for _, values, _ in found])
            marks.update([(steps, LogValues(np.where(np.isfinite(values), values, 1.0), floor),
                           color) for steps, values, color in found])
        # The legend names the series by line style; the runs' colours are the window's legend
        # (one run: its colour here too).
        color = self.collection.color_index(runs[0]) if len(runs) == 1 else None
        for group, members in groups.items():
            legend = self._legends.get(group)
            if legend is None:
                continue
            entries = []
            for name in members:
                style, _ = _series_style(name)
                pen = run_pen(color, style=style) if color is not None else \
                    pg.mkPen("#DDDDDD", width=2, style=style)
                entries.append((pen, name))
            legend.set_entries(entries)

    def _draw_series(self, plot: pg.PlotItem, run_index: int, run: RunModel, name: str,
                     phase: str, log: bool, run_count: int) -> None:
        key = (run_index, name, phase)
        steps, values = run.scalars(name, phase)
        curve = self._curves.get(key)
        if not steps.size:
            if curve is not None:
                curve.setData([], [])
            return
        style, role = _series_style(name)
        color = self.collection.color_index(run)
        if curve is None:
            curve = plot.plot(connect="finite", symbol="o" if phase == "epoch" else None,
                              symbolSize=5, symbolPen=None,
                              name=name if run_count == 1 else f"{run.name}: {name}")
            self._curves[key] = curve
        # The run at this position may change (following the newest run): its colour too.
        curve.setPen(run_pen(color, width=1.5 if phase == "batch" else 2.5, style=style))
        curve.setSymbolBrush(run_pen(color).color())
        shown = values.astype(np.float64, copy=True)
        shown[~np.isfinite(shown)] = np.nan
        if log:
            shown[shown <= 0] = np.nan
        curve.setData(steps.astype(np.float64), shown)
        self._shown.append((run.name, name, phase, steps, values))
        bad = ~np.isfinite(values)
        if bad.any():
            first = int(steps[np.argmax(bad)])
            pen = pg.mkPen("#FF4040", width=2, style=QtCore.Qt.PenStyle.DashLine)
            line = pg.InfiniteLine(
                first, angle=90, pen=pen,
                label=f"{name}: NaN/Inf from {phase} {first}",
                labelOpts={"color": "#FF4040", "position": 0.9},
            )
            plot.addItem(line, ignoreBounds=True)
            self._nan_lines.append((plot, line))

    def _describe(self, group: str, phase: str):
        def describe(x: float, y: float) -> str | None:
            best = None
            for run_name, name, series_phase, steps, values in self._shown:
                if series_phase != phase or name not in self._layout_members(group):
                    continue
                if not steps.size:
                    continue
                index = int(np.clip(np.searchsorted(steps, x), 0, len(steps) - 1))
                if index > 0 and abs(steps[index - 1] - x) < abs(steps[index] - x):
                    index -= 1
                value = float(values[index])
                log = self.log_scale.isChecked() and value > 0
                shown_y = np.log10(value) if log else value
                distance = abs(shown_y - y) if np.isfinite(shown_y) else np.inf
                if best is None or distance < best[0]:
                    best = (distance, run_name, name, int(steps[index]), value)
            if best is None:
                return None
            _, run_name, name, step, value = best
            unit = "step" if phase == "batch" else "epoch"
            return f"{run_name} · {name} at {unit} {step} = {format_value(value)}"

        return describe

    def _layout_members(self, group: str) -> tuple[str, ...]:
        for g, members in (self._layout_key or ((), ()))[0]:
            if g == group:
                return members
        return ()

    def table(self) -> tuple[list[str], list[Sequence[Any]]]:
        rows = []
        for run in self.collection.shown_runs():
            for phase, _ in PHASES:
                for name in run.scalar_names(phase):
                    steps, values = run.scalars(name, phase)
                    rows.extend((run.name, phase, name, int(s), float(v))
                                for s, v in zip(steps.tolist(), values.tolist()))
        return ["run", "phase", "name", "step", "value"], rows
