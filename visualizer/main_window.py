"""The viewer's window: panels in docks, the selectors, the step slider, and the one timer.

Threading: a `RunFollower` thread decodes new records (no Qt there); a single `QTimer` on the
GUI thread ticks at ~30 Hz, reads the models and redraws the visible panels whose data changed.
The GUI thread never decodes a file and never waits on the reader, so a fast writer coalesces
into "the newest frame at the next tick" instead of a backlog of redraws.
"""

from __future__ import annotations

import html
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from PyQt6 import QtCore, QtGui, QtWidgets

from visualizer.follower import RunFollower
from visualizer.model import (
    DEFAULT_HISTORY,
    DEFAULT_MEMORY_BUDGET,
    DEFAULT_STALE_SECONDS,
    RunCollection,
)
from visualizer.panels import PANELS, Panel
from visualizer.panels.base import RUN_COLORS, run_color
from visualizer.panels.text import follow_heatmap

__all__ = ["MainWindow", "SETTINGS_APPLICATION", "SETTINGS_ORGANIZATION", "make_application"]

SETTINGS_ORGANIZATION = "keras-rnnx"
SETTINGS_APPLICATION = "rnnx-viz"
_LAYOUT_VERSION = 2
# At most this many runs are ticked by "Compare all": beyond it curves cannot be told apart.
COMPARE_MAX = len(RUN_COLORS)
_SEVERITY = {"error": 0, "warning": 1, "info": 2}
_BANNER_STYLE = {
    "error": "background:#FDECEA; color:#B71C1C; padding:4px; border:1px solid #E57373;",
    "warning": "background:#FFF4E5; color:#7A4100; padding:4px; border:1px solid #FFB74D;",
    "info": "background:#E8F1FB; color:#0D3C61; padding:4px; border:1px solid #90CAF9;",
}
SHORTCUTS = (
    ("Ctrl+O", "open a run or a directory of runs"),
    ("Ctrl+Shift+O", "add a run to compare"),
    ("F5", "reopen the runs"),
    ("Ctrl+E / Ctrl+Shift+E", "export the current panel as PNG / its data as CSV"),
    ("Left / Right", "previous / next recorded step"),
    ("Home / End", "first step / follow the newest step"),
    ("Ctrl+F", "follow the newest live run (on / off)"),
    ("Ctrl+G", "compare ‖∂L/∂h_t‖ of all runs (up to 8) in one plot"),
    ("Page Up / Page Down", "previous / next layer"),
    ("[ / ]", "previous / next probe sample"),
    ("Ctrl+L", "log scale of the training curves"),
    ("Alt+1 … Alt+7", "show a panel"),
    ("Ctrl+Q", "quit"),
)


class MainWindow(QtWidgets.QMainWindow):
    """The viewer on `paths` (runs, or directories of runs), with `compare` runs beside them.

    Args:
        paths: run directories, `events.rnnx` files or directories of runs.
        compare: more of those, drawn beside the first run from the start.
        settings: where the window layout is remembered; None remembers nothing.
        follow: start the reader thread (tests and screenshots read synchronously instead).
        history: frames kept per series at most (see `RunModel`).
        interval_ms: the redraw timer's period.
        stale_seconds: a run without an end record that has not grown for this long is shown
            as crashed.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        compare: Sequence[str | os.PathLike] = (),
        settings: QtCore.QSettings | None = None,
        follow: bool = True,
        history: int = DEFAULT_HISTORY,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        interval_ms: int = 33,
        stale_seconds: float = DEFAULT_STALE_SECONDS,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.stale_seconds = stale_seconds
        self.history = history
        self.memory_budget = memory_budget
        self.follow_enabled = follow
        self.follower: RunFollower | None = None
        self.current_panel = "state_heatmap"
        self._updating = False
        self._compare_roots: list[Path] = []
        self._steps = np.empty(0, np.int64)
        self._sync_key: object = None
        self.last_draw_seconds = 0.0
        self.collection = self._make_collection(paths, compare)

        self.panels: dict[str, Panel] = {name: cls(self.collection) for name, cls in PANELS.items()}
        follow_heatmap(self.panels["state_heatmap"], self.panels["text"])
        self.dock_area = QtWidgets.QMainWindow()
        self.dock_area.setWindowFlags(QtCore.Qt.WindowType.Widget)
        self.dock_area.setDockNestingEnabled(True)
        self.docks: dict[str, QtWidgets.QDockWidget] = {}
        for name, panel in self.panels.items():
            self.docks[name] = self._dock(panel.title, name, panel)
        self.runs_list = QtWidgets.QListWidget()
        self.runs_list.setToolTip("Tick runs to compare them; click a run to show it (and stop "
                                  "following the newest run)")
        self.runs_list.itemChanged.connect(self._run_checked)
        self.runs_list.currentRowChanged.connect(self._run_selected)
        self.docks["runs"] = self._dock("Runs", "runs", self.runs_list)
        self.default_layout()

        self.banner = QtWidgets.QLabel()
        self.banner.setWordWrap(True)
        self.banner.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        self.banner.hide()
        self.banner_severity: str | None = None
        # The runs on screen, in their colours: the legend of every panel, outside the data.
        self.legend = QtWidgets.QLabel()
        self.legend.setWordWrap(True)
        self.legend.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self.legend.setToolTip("The runs shown, in the colour each has in every panel")

        self.slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.slider.setToolTip("Training step: drag to scrub the history (Left/Right, Home/End)")
        self.slider.setRange(0, 0)
        self.slider.valueChanged.connect(self._slider_moved)
        self.step_label = QtWidgets.QLabel("no frames yet")
        self.live_button = QtWidgets.QToolButton()
        self.live_button.setText("● Live")
        self.live_button.setCheckable(True)
        self.live_button.setChecked(True)
        self.live_button.setToolTip("Follow the newest step as the run is written (End)")
        self.live_button.toggled.connect(self._live_toggled)
        step_bar = QtWidgets.QHBoxLayout()
        step_bar.addWidget(QtWidgets.QLabel("Step"))
        step_bar.addWidget(self.slider, 1)
        step_bar.addWidget(self.step_label)
        step_bar.addWidget(self.live_button)

        central = QtWidgets.QWidget()
        column = QtWidgets.QVBoxLayout(central)
        column.setContentsMargins(4, 4, 4, 4)
        column.addWidget(self.banner)
        column.addWidget(self.legend)
        column.addWidget(self.dock_area, 1)
        column.addLayout(step_bar)
        self.setCentralWidget(central)

        self.layer_box = QtWidgets.QComboBox()
        self.layer_box.setMinimumContentsLength(14)
        self.layer_box.setToolTip("Layer (Page Up / Page Down)")
        self.layer_box.activated.connect(self._layer_chosen)
        self.sample_box = QtWidgets.QSpinBox()
        self.sample_box.setToolTip("Probe sample ([ / ])")
        self.sample_box.valueChanged.connect(self._sample_chosen)
        toolbar = self.addToolBar("Selection")
        toolbar.setObjectName("selection_toolbar")
        toolbar.addWidget(QtWidgets.QLabel(" Layer "))
        toolbar.addWidget(self.layer_box)
        toolbar.addWidget(QtWidgets.QLabel("  Sample "))
        toolbar.addWidget(self.sample_box)
        toolbar.addSeparator()
        self.follow_button = QtWidgets.QToolButton()
        self.follow_button.setText("Follow newest run")
        self.follow_button.setCheckable(True)
        self.follow_button.setChecked(self.collection.follow_newest)
        self.follow_button.setToolTip("Show the newest live run and switch to each run that "
                                      "starts later (Ctrl+F); choosing a run turns it off")
        self.follow_button.toggled.connect(self._follow_toggled)
        # On or off must be seen at a glance: it decides which run the window shows.
        self.follow_button.setStyleSheet(
            "QToolButton { padding: 2px 6px; border: 1px solid #999; border-radius: 3px; }"
            "QToolButton:checked { background: #2E7D32; color: white; border-color: #1B5E20; }")
        toolbar.addWidget(self.follow_button)
        self.compare_button = QtWidgets.QToolButton()
        self.compare_button.setText("Compare ‖∂L/∂h_t‖ of all runs")
        self.compare_button.setToolTip(
            f"Tick every run (up to {COMPARE_MAX}) and show their gradient through time in one "
            f"plot at the current step (Ctrl+G)")
        self.compare_button.clicked.connect(lambda _checked=False: self.compare_all())
        toolbar.addWidget(self.compare_button)

        self._build_menus()
        QtWidgets.QApplication.instance().focusChanged.connect(self._focus_changed)
        self.resize(1500, 950)
        self.restore_settings()
        self.timer = QtCore.QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.tick)
        self._start_follower()
        self.timer.start()
        self.tick()

    # ---- construction ---------------------------------------------------------------------------

    def _make_collection(self, paths, compare) -> RunCollection:
        self._compare_roots = [Path(p) for p in compare]
        collection = RunCollection(
            [*paths, *compare], history=self.history, memory_budget=self.memory_budget,
            stale_seconds=self.stale_seconds,
        )
        self._mark_compared(collection)
        return collection

    def _mark_compared(self, collection: RunCollection) -> None:
        roots = [r.resolve() for r in self._compare_roots]
        chosen = set(collection.compared)
        for index, run in enumerate(collection.runs):
            path = run.path.resolve()
            if any(path == r or r in path.parents or path == r.parent for r in roots):
                chosen.add(index)
        collection.set_compared(sorted(chosen))

    def _dock(self, title: str, name: str, widget: QtWidgets.QWidget) -> QtWidgets.QDockWidget:
        dock = QtWidgets.QDockWidget(title, self.dock_area)
        dock.setObjectName(f"dock_{name}")
        dock.setWidget(widget)
        dock.visibilityChanged.connect(lambda visible, n=name: visible and self._panel_shown(n))
        return dock

    def default_layout(self) -> None:
        """The run list at the far left; heatmap and curves; gradient flow over the others."""
        area = self.dock_area
        left, right = QtCore.Qt.DockWidgetArea.LeftDockWidgetArea, \
            QtCore.Qt.DockWidgetArea.RightDockWidgetArea
        horizontal, vertical = QtCore.Qt.Orientation.Horizontal, QtCore.Qt.Orientation.Vertical
        for dock in self.docks.values():
            dock.setFloating(False)
            dock.show()
        area.addDockWidget(left, self.docks["runs"])
        area.splitDockWidget(self.docks["runs"], self.docks["state_heatmap"], horizontal)
        area.addDockWidget(right, self.docks["gradient_flow"])
        area.splitDockWidget(self.docks["state_heatmap"], self.docks["training_curves"], vertical)
        area.splitDockWidget(self.docks["gradient_flow"], self.docks["jacobian"], vertical)
        for name in ("weight_grads", "overview", "text"):
            area.tabifyDockWidget(self.docks["jacobian"], self.docks[name])
        self.docks["jacobian"].raise_()
        area.resizeDocks([self.docks["runs"]], [200], horizontal)

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        self._action(file_menu, "&Open run…", "Ctrl+O", self.open_dialog)
        self._action(file_menu, "Add run to &compare…", "Ctrl+Shift+O", self.compare_dialog)
        self._action(file_menu, "&Reload", "F5", self.reload)
        file_menu.addSeparator()
        self._action(file_menu, "&Export panel as PNG…", "Ctrl+E",
                     lambda: self.export_current("png"))
        self._action(file_menu, "Export panel data as &CSV…", "Ctrl+Shift+E",
                     lambda: self.export_current("csv"))
        file_menu.addSeparator()
        self._action(file_menu, "&Quit", "Ctrl+Q", self.close)

        view = bar.addMenu("&View")
        for number, (name, panel) in enumerate(self.panels.items(), start=1):
            self._action(view, panel.title, f"Alt+{number}", lambda n=name: self.show_panel(n))
        view.addAction(self.docks["runs"].toggleViewAction())
        view.addSeparator()
        self.log_action = self._action(view, "&Log-scale training curves", "Ctrl+L",
                                       self._toggle_log)
        self._action(view, "&Reset layout", None, self.default_layout)

        go = bar.addMenu("&Go")
        self._action(go, "&Previous step", "Left", lambda: self.step_by(-1))
        self._action(go, "&Next step", "Right", lambda: self.step_by(1))
        self._action(go, "&First step", "Home", self.first_step)
        self._action(go, "Follow the &newest step", "End", self.follow_live)
        self._action(go, "Follow the newest &run", "Ctrl+F",
                     lambda: self.follow_button.toggle())
        self._action(go, "&Compare ‖∂L/∂h_t‖ of all runs", "Ctrl+G", self.compare_all)
        go.addSeparator()
        self._action(go, "Previous &layer", "PgUp", lambda: self.layer_by(-1))
        self._action(go, "Next l&ayer", "PgDown", lambda: self.layer_by(1))
        self._action(go, "Previous &sample", "[", lambda: self.sample_by(-1))
        self._action(go, "Next s&ample", "]", lambda: self.sample_by(1))

        help_menu = bar.addMenu("&Help")
        self._action(help_menu, "&Keyboard shortcuts", "F1", self.show_shortcuts)

    def _action(self, menu, text, shortcut, slot) -> QtGui.QAction:
        action = QtGui.QAction(text, self)
        if shortcut:
            action.setShortcut(QtGui.QKeySequence(shortcut))
            action.setShortcutContext(QtCore.Qt.ShortcutContext.WindowShortcut)
        action.triggered.connect(lambda _checked=False: slot())
        menu.addAction(action)
        self.addAction(action)
        return action

    # ---- the timer: model → view ----------------------------------------------------------------

    def tick(self, force: bool = False) -> None:
        """Syncs the selectors with the runs and redraws the visible panels that changed."""
        self.collection.follow_newest_run()
        key = (self.collection.data_version(), self.collection.current_step(),
               self.collection.current_layer(), self.collection.statuses(),
               self.collection.follow_newest)
        if force or key != self._sync_key:
            self._sync_key = key
            self._sync_runs()
            self._sync_legend()
            self._sync_selectors()
            self._sync_steps()
            self._sync_banner()
            self._sync_titles()
        started = time.perf_counter()
        for name, panel in self.panels.items():
            if force or self.panel_visible(name):
                panel.refresh(force=force)
        self.last_draw_seconds = time.perf_counter() - started

    def panel_visible(self, name: str) -> bool:
        return self.panels[name].isVisible()

    def _sync_runs(self) -> None:
        c = self.collection
        shown = {id(r) for r in c.shown_runs()}
        self._updating = True
        try:
            while self.runs_list.count() > len(c.runs):
                self.runs_list.takeItem(self.runs_list.count() - 1)
            for index, run in enumerate(c.runs):
                text = f"{run.name}  [{run.status}]"
                item = self.runs_list.item(index)
                if item is None:
                    item = QtWidgets.QListWidgetItem(text)
                    item.setFlags(item.flags() | QtCore.Qt.ItemFlag.ItemIsUserCheckable)
                    item.setIcon(_swatch(run_color(c.color_index(run))))
                    self.runs_list.addItem(item)
                if item.text() != text:
                    item.setText(text)
                detail = run.status_detail()
                if item.toolTip() != detail:
                    item.setToolTip(detail)
                state = QtCore.Qt.CheckState.Checked if id(run) in shown else \
                    QtCore.Qt.CheckState.Unchecked
                if item.checkState() != state:
                    item.setCheckState(state)
                font = item.font()
                if font.bold() != (run is c.primary):
                    font.setBold(run is c.primary)
                    item.setFont(font)
            if c.runs and self.runs_list.currentRow() != c.primary_index:
                self.runs_list.setCurrentRow(c.primary_index)
            if self.follow_button.isChecked() != c.follow_newest:
                self.follow_button.setChecked(c.follow_newest)
        finally:
            self._updating = False

    def _sync_legend(self) -> None:
        c = self.collection
        entries = []
        for run in c.shown_runs():
            color = run_color(c.color_index(run))
            name = html.escape(run.name, quote=False)
            entries.append(f'<span style="color:{color}; font-size:14pt">■</span>&nbsp;'
                           f'{name} <span style="color:#777">[{run.status}]</span>')
        follow = " · following the newest run" if c.follow_newest else ""
        self.legend.setText("&nbsp;&nbsp;&nbsp;".join(entries) + follow if entries else "")
        self.legend.setVisible(bool(entries))

    def _sync_selectors(self) -> None:
        c = self.collection
        primary = c.primary
        layers = primary.layers() if primary is not None else []
        self._updating = True
        try:
            current = [self.layer_box.itemText(i) for i in range(self.layer_box.count())]
            if current != layers:
                self.layer_box.clear()
                self.layer_box.addItems(layers)
            layer = c.current_layer()
            if layer is not None and self.layer_box.currentText() != layer:
                self.layer_box.setCurrentIndex(layers.index(layer))
            batch = primary.batch_size() if primary is not None else 1
            if self.sample_box.maximum() != batch - 1:
                self.sample_box.setRange(0, max(batch - 1, 0))
            if self.sample_box.value() != c.sample:
                self.sample_box.setValue(c.sample)
        finally:
            self._updating = False

    def _sync_steps(self) -> None:
        c = self.collection
        self._steps = c.steps()
        steps = self._steps
        self._updating = True
        try:
            top = max(len(steps) - 1, 0)
            if self.slider.maximum() != top:
                self.slider.setRange(0, top)
            index = self.step_index()
            if index is not None and self.slider.value() != index:
                self.slider.setValue(index)
            if self.live_button.isChecked() != c.following:
                self.live_button.setChecked(c.following)
        finally:
            self._updating = False
        step = c.current_step()
        if step is None:
            self.step_label.setText("no frames yet")
            return
        index = self.step_index() or 0
        mode = "live" if c.following else "scrubbed"
        self.step_label.setText(
            f"step {step}  ·  frame {index + 1} of {len(steps)} kept  ·  {mode}"
        )

    def step_index(self) -> int | None:
        """The slider position of the step on screen."""
        steps = self._steps
        step = self.collection.current_step()
        if step is None or not len(steps):
            return None
        return int(np.clip(np.searchsorted(steps, step, side="right") - 1, 0, len(steps) - 1))

    def messages(self) -> list[tuple[str, str]]:
        """What the message bar has to say, most severe first."""
        c = self.collection
        found = []
        message = c.message()
        if message:
            found.append(message)
        for run in c.shown_runs():
            message = run.message()
            if message:
                found.append(message)
            nonfinite = run.nonfinite()
            if nonfinite:
                first = nonfinite[0]
                more = f" (and {len(nonfinite) - 1} more series)" if len(nonfinite) > 1 else ""
                found.append(("warning", f"{run.name}: {first}{more}"))
        return sorted(found, key=lambda m: _SEVERITY.get(m[0], 3))

    def _sync_banner(self) -> None:
        found = self.messages()
        if not found:
            self.banner.hide()
            self.banner_severity = None
            return
        severity, text = found[0]
        if len(found) > 1:
            text += f"   (+{len(found) - 1} more: see Run overview)"
        self.banner_severity = severity
        self.banner.setStyleSheet(_BANNER_STYLE.get(severity, ""))
        self.banner.setText(text)
        self.banner.show()

    def _sync_titles(self) -> None:
        c = self.collection
        runs = c.shown_runs()
        if not runs:
            self.setWindowTitle("rnnx-viz")
            self.statusBar().showMessage(", ".join(map(str, c.roots)))
            return
        names = " vs ".join(r.name for r in runs)
        self.setWindowTitle(f"rnnx-viz — {names}")
        primary = runs[0]
        kept, read = primary.frame_counts()
        self.statusBar().showMessage(
            f"{primary.name}: {primary.status} · {primary.record_count} records · "
            f"{kept} of {read} frames kept · {primary.dropped_frames()} dropped by the monitor"
        )

    # ---- user → model ---------------------------------------------------------------------------

    def _slider_moved(self, value: int) -> None:
        if self._updating or not len(self._steps):
            return
        value = min(max(value, 0), len(self._steps) - 1)
        if value == len(self._steps) - 1 and self.collection.primary is not None \
                and self.collection.primary.status == "live":
            self.collection.follow()
        else:
            self.collection.scrub(int(self._steps[value]))
        self.tick()

    def _live_toggled(self, checked: bool) -> None:
        if self._updating:
            return
        if checked:
            self.collection.follow()
        else:
            step = self.collection.current_step()
            if step is not None:
                self.collection.scrub(step)
        self.tick()

    def _layer_chosen(self, index: int) -> None:
        if not self._updating and index >= 0:
            self.collection.select_layer(self.layer_box.itemText(index))
            self.tick()

    def _sample_chosen(self, value: int) -> None:
        if not self._updating:
            self.collection.select_sample(value)
            self.tick()

    def _run_checked(self, item: QtWidgets.QListWidgetItem) -> None:
        if self._updating:
            return
        c = self.collection
        checked = [i for i in range(self.runs_list.count())
                   if self.runs_list.item(i).checkState() == QtCore.Qt.CheckState.Checked]
        c.set_compared([i for i in checked if i != c.primary_index])
        self.tick()

    def _run_selected(self, row: int) -> None:
        if self._updating or row < 0:
            return
        self.collection.choose(row)
        self.tick()

    def _follow_toggled(self, checked: bool) -> None:
        if self._updating:
            return
        self.collection.set_follow_newest(checked)
        self.tick()

    def compare_all(self) -> None:
        """Ticks every run (the newest `COMPARE_MAX`) and shows ‖∂L/∂h_t‖ of all in one plot."""
        c = self.collection
        order = sorted(range(len(c.runs)), key=lambda k: (c.runs[k].start_time or 0.0, k))
        chosen = [k for k in order[-COMPARE_MAX:] if k != c.primary_index]
        if c.primary_index not in order[-COMPARE_MAX:] and len(chosen) == COMPARE_MAX:
            chosen = chosen[1:]
        c.set_compared(chosen)
        # The lecture's picture: the curves of all runs get the whole panel.
        self.panels["gradient_flow"].show_maps.setChecked(False)
        self.show_panel("gradient_flow")
        self.tick()

    def step_by(self, delta: int) -> None:
        """Moves `delta` recorded steps; moving past the newest follows the run again."""
        steps = self._steps if len(self._steps) else self.collection.steps()
        if not len(steps):
            return
        index = self.step_index()
        index = len(steps) - 1 if index is None else index
        target = index + delta
        if target >= len(steps) - 1 and delta > 0:
            self.collection.follow()
        else:
            self.collection.scrub(int(steps[min(max(target, 0), len(steps) - 1)]))
        self.tick()

    def first_step(self) -> None:
        steps = self.collection.steps()
        if len(steps):
            self.collection.scrub(int(steps[0]))
            self.tick()

    def follow_live(self) -> None:
        self.collection.follow()
        self.tick()

    def layer_by(self, delta: int) -> None:
        primary = self.collection.primary
        layers = primary.layers() if primary is not None else []
        if not layers:
            return
        index = layers.index(self.collection.current_layer())
        self.collection.select_layer(layers[(index + delta) % len(layers)])
        self.tick()

    def sample_by(self, delta: int) -> None:
        self.collection.select_sample(self.collection.sample + delta)
        self.tick()

    def _toggle_log(self) -> None:
        box = self.panels["training_curves"].log_scale
        box.setChecked(not box.isChecked())

    def show_panel(self, name: str) -> None:
        dock = self.docks[name]
        dock.show()
        dock.raise_()
        self.current_panel = name

    def _panel_shown(self, name: str) -> None:
        if name in self.panels:
            self.panels[name].refresh()

    def _focus_changed(self, _old, new) -> None:
        widget = new
        while widget is not None:
            if isinstance(widget, Panel):
                self.current_panel = widget.name
                return
            widget = widget.parentWidget()

    def show_shortcuts(self) -> None:
        rows = "".join(f"<tr><td><b>{k}</b></td><td>{v}</td></tr>" for k, v in SHORTCUTS)
        QtWidgets.QMessageBox.information(self, "Keyboard shortcuts", f"<table>{rows}</table>")

    # ---- files ----------------------------------------------------------------------------------

    def open_paths(self, paths: Sequence[str | os.PathLike],
                   compare: Sequence[str | os.PathLike] = ()) -> None:
        """Replaces the open runs with those under `paths` (and `compare`)."""
        self._stop_follower()
        self.collection = self._make_collection(paths, compare)
        for panel in self.panels.values():
            panel.set_collection(self.collection)
        self._sync_key = None
        self._start_follower()
        self.tick()

    def add_compare(self, path: str | os.PathLike) -> None:
        """Adds the runs under `path` and draws them beside the current one."""
        self._compare_roots.append(Path(path))
        self.collection.roots.append(Path(path))
        self.collection.rescan()
        self._mark_compared(self.collection)
        if not self.follow_enabled:
            self.collection.load()
        self.tick()

    def reload(self) -> None:
        roots = [r for r in self.collection.roots if r not in self._compare_roots]
        self.open_paths(roots, list(self._compare_roots))

    def _last_dir(self) -> str:
        if self.settings is not None:
            return str(self.settings.value("last_dir", os.getcwd()))
        return os.getcwd()

    def _remember_dir(self, path: str) -> None:
        if self.settings is not None:
            self.settings.setValue("last_dir", str(Path(path).parent))

    def open_dialog(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(
            self, "Open a run or a directory of runs", self._last_dir()
        )
        if path:
            self._remember_dir(path)
            self.open_paths([path])

    def compare_dialog(self) -> None:
        path = QtWidgets.QFileDialog.getExistingDirectory(
            self, "Add a run to compare", self._last_dir()
        )
        if path:
            self._remember_dir(path)
            self.add_compare(path)

    def export_current(self, what: str, path: str | os.PathLike | None = None) -> Path | None:
        """Exports the current panel (the one last clicked) as `"png"` or `"csv"`."""
        panel = self.panels[self.current_panel]
        if path is None:
            return panel.export_dialog(what)
        return panel.export_png(path) if what == "png" else panel.export_csv(path)

    # ---- reader thread and settings -------------------------------------------------------------

    def _start_follower(self) -> None:
        if self.follow_enabled:
            self.follower = RunFollower(self.collection).start()

    def _stop_follower(self) -> None:
        if self.follower is not None:
            self.follower.stop()
            self.follower = None

    def restore_settings(self) -> None:
        s = self.settings
        if s is None:
            return
        geometry = s.value("window/geometry")
        if isinstance(geometry, QtCore.QByteArray):
            self.restoreGeometry(geometry)
        state = s.value("window/docks")
        if isinstance(state, QtCore.QByteArray):
            self.dock_area.restoreState(state, _LAYOUT_VERSION)
        self.panels["training_curves"].log_scale.setChecked(
            str(s.value("training_curves/log_y", "false")).lower() == "true"
        )
        self.panels["state_heatmap"].all_layers.setChecked(
            str(s.value("state_heatmap/all_layers", "false")).lower() == "true"
        )
        kind = s.value("state_heatmap/kind")
        if isinstance(kind, str) and kind:
            self.panels["state_heatmap"].set_kind(kind)

    def save_settings(self) -> None:
        s = self.settings
        if s is None:
            return
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/docks", self.dock_area.saveState(_LAYOUT_VERSION))
        s.setValue("training_curves/log_y",
                   self.panels["training_curves"].log_scale.isChecked())
        s.setValue("state_heatmap/all_layers",
                   self.panels["state_heatmap"].all_layers.isChecked())
        s.setValue("state_heatmap/kind", self.panels["state_heatmap"].wanted_kind)
        s.sync()

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 - Qt's name
        self.timer.stop()
        self._stop_follower()
        self.save_settings()
        super().closeEvent(event)


def _swatch(color: str) -> QtGui.QIcon:
    pixmap = QtGui.QPixmap(12, 12)
    pixmap.fill(QtGui.QColor(color))
    return QtGui.QIcon(pixmap)


def make_application(argv: Sequence[str] | None = None) -> QtWidgets.QApplication:
    """The running QApplication, or a new one named for the settings."""
    app = QtWidgets.QApplication.instance()
    if app is None:
        app = QtWidgets.QApplication(list(argv) if argv is not None else ["rnnx-viz"])
    app.setOrganizationName(SETTINGS_ORGANIZATION)
    app.setApplicationName(SETTINGS_APPLICATION)
    # The reader thread holds the GIL while decoding; with the default 5 ms switch interval each
    # Qt call of the GUI thread could wait that long to get it back (see visualizer.follower).
    sys.setswitchinterval(min(sys.getswitchinterval(), 0.001))
    return app
