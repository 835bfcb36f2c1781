"""Headless rendering of the window or one panel to PNG, for tests, docs and examples."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from PyQt6 import QtWidgets

from visualizer.main_window import MainWindow
from visualizer.model import DEFAULT_HISTORY
from visualizer.panels import PANELS

__all__ = ["panel_name", "save_screenshot"]


def panel_name(name: str) -> str:
    """The canonical panel name for `name` (`gradient-flow` and `gradient_flow` both work)."""
    canonical = name.strip().lower().replace("-", "_")
    if canonical not in PANELS:
        raise ValueError(
            f"Invalid value for argument `panel`: {name!r}; expected one of {', '.join(PANELS)}."
        )
    return canonical


def save_screenshot(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    panel: str | None = None,
    compare: Sequence[str | os.PathLike] = (),
    size: tuple[int, int] = (1600, 1000),
    layer: str | None = None,
    sample: int = 0,
    step: int | None = None,
    kind: str | None = None,
    all_layers: bool = False,
    log_y: bool = False,
    history: int = DEFAULT_HISTORY,
    unit: int | None = None,
    feature: str | None = None,
) -> tuple[Path, list[tuple[str, str]]]:
    """Reads the runs completely, renders the window (or `panel`) and saves it as PNG.

    A QApplication must exist (create it with the `offscreen` platform to run headless).
    `unit` colours the text panel (and `kind`, with `panel="text"`, is its quantity);
    `feature` is the code feature it ranks units by (without `unit`, its best unit colours the
    text); the ranking is awaited. Returns the path written and the window's messages (errors and
    warnings about the runs).
    """
    app = QtWidgets.QApplication.instance()
    if app is None:
        raise RuntimeError("save_screenshot needs a QApplication")
    window = MainWindow(paths, compare=compare, settings=None, follow=False, history=history)
    try:
        collection = window.collection
        collection.load()
        if layer is not None:
            collection.select_layer(layer)
        collection.select_sample(sample)
        if step is not None:
            collection.scrub(step)
        heatmap = window.panels["state_heatmap"]
        heatmap.all_layers.setChecked(all_layers)
        if kind is not None:
            heatmap.set_kind(kind)
        window.panels["training_curves"].log_scale.setChecked(log_y)
        text = window.panels["text"]
        if feature is not None:
            text.select_feature(feature, best=unit is None)
        if unit is not None:
            text.select_unit(unit)
        if kind is not None and panel is not None and panel_name(panel) == "text":
            text.select_kind(kind)
        window.tick(force=True)
        if kind is not None:
            heatmap.set_kind(kind)
        if panel is None:
            target: QtWidgets.QWidget = window
        else:
            target = window.panels[panel_name(panel)]
            target.setParent(None)
        target.resize(*size)
        target.show()
        for _ in range(3):
            app.processEvents()
            window.tick(force=True)
            if panel is not None:
                target.refresh(force=True)
            text.jobs.wait()
        app.processEvents()
        if unit is not None and text.frame_units is not None and unit >= text.frame_units:
            raise ValueError(f"--unit {unit}: the text panel's recording has {text.frame_units} "
                             f"units (0..{text.frame_units - 1})")
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if not target.grab().save(str(out), "PNG"):
            raise OSError(f"{out}: could not write the PNG file")
        return out, window.messages()
    finally:
        window.close()
        if panel is not None:
            target.close()
