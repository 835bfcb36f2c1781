"""Run overview: model summary, cells, dropped frames, NaN/Inf warnings, reading problems."""

from __future__ import annotations

import datetime
import html
import time
from typing import Any, Sequence

from PyQt6 import QtWidgets

from visualizer.model import RunCollection, RunModel
from visualizer.panels.base import Panel

__all__ = ["OverviewPanel", "run_facts"]

_STATUS = {
    "live": ("#2E7D32", "live: following the run as it is written"),
    "finished": ("#1565C0", "finished"),
    "waiting": ("#6D6D6D", "waiting for the run to start"),
    "error": ("#C62828", "cannot be read"),
    "deleted": ("#C62828", "deleted while open"),
}


def run_facts(run: RunModel) -> list[tuple[str, str]]:
    """The overview of one run as `(key, value)` pairs (also what the CSV export holds)."""
    meta = run.meta
    facts = [("run", run.name), ("path", str(run.path)), ("status", run.status)]
    reader = run.reader
    if reader is not None and reader.end_status is not None:
        facts.append(("end status", reader.end_status))
    if run.error:
        facts.append(("error", run.error))
    model = meta.get("model") or {}
    if isinstance(model, dict) and model.get("name"):
        facts.append(("model", str(model["name"])))
    start = meta.get("start_time")
    if isinstance(start, (int, float)):
        when = datetime.datetime.fromtimestamp(start).isoformat(sep=" ", timespec="seconds")
        facts.append(("started", when))
    for layer in run.layers():
        info = run.layer_info(layer)
        parts = [str(info.get("cell", "?"))]
        if info.get("units") is not None:
            parts.append(f"{info['units']} units")
        if info.get("timesteps") is not None:
            parts.append(f"T = {info['timesteps']}")
        if info.get("states"):
            parts.append("states " + ", ".join(info["states"]))
        if info.get("gates"):
            parts.append("gates " + ", ".join(info["gates"]))
        facts.append((f"layer {layer}", " · ".join(parts)))
    probe = meta.get("probe") or {}
    if isinstance(probe, dict) and probe.get("batch_shape") is not None:
        facts.append(("probe batch", str(probe["batch_shape"])))
    monitor = meta.get("monitor") or {}
    if isinstance(monitor, dict) and monitor.get("every") is not None:
        facts.append(("probe every", f"{monitor['every']} steps"))
    versions = meta.get("versions") or {}
    if isinstance(versions, dict) and versions:
        facts.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    kept, read = run.frame_counts()
    facts.append(("records read", str(run.record_count)))
    facts.append(("frames kept / read", f"{kept} / {read}"
                  + (f" (at most {run.max_frames} per series)" if run.max_frames else "")))
    facts.append(("dropped frames", str(run.dropped_frames())))
    for found in run.nonfinite():
        facts.append(("NaN/Inf", str(found)))
    for problem in run.problems:
        facts.append(("problem", problem))
    return facts


class OverviewPanel(Panel):
    """A page per run shown: what was trained, how it is going, what went wrong and when."""

    name = "overview"
    title = "Run overview"

    def __init__(self, collection: RunCollection, parent: QtWidgets.QWidget | None = None):
        super().__init__(collection, parent)
        self.text = QtWidgets.QTextBrowser()
        self.text.setOpenLinks(False)
        self.body.addWidget(self.text)
        self.html = ""
        self._drawn_at = -1e9

    def notice_text(self) -> str | None:
        return None  # the overview itself explains what is wrong with a run

    def view_key(self) -> Any:
        return (self.collection.version, self.collection.runs_version())

    def refresh(self, force: bool = False) -> bool:
        key = self.view_key()
        recent = time.monotonic() - self._drawn_at < 1.0
        same_selection = isinstance(self._drawn_key, tuple) and key[0] == self._drawn_key[0]
        if not force and key != self._drawn_key and recent and same_selection:
            return False  # new data from a streaming writer: text at most once a second
        drew = super().refresh(force)
        if drew:
            self._drawn_at = time.monotonic()
        return drew

    def redraw(self) -> None:
        runs = self.collection.shown_runs()
        pages = [self._page(run) for run in runs]
        if not runs:
            message = self.collection.message()
            pages = [f"<p>{html.escape(message[1]) if message else 'No run open.'}</p>"]
        page = "<hr>".join(pages)
        if page != self.html:
            self.html = page
            scroll = self.text.verticalScrollBar().value()
            self.text.setHtml(page)
            self.text.verticalScrollBar().setValue(scroll)
        warnings = sum(len(run.nonfinite()) for run in runs)
        dropped = sum(run.dropped_frames() for run in runs)
        parts = ["Run overview", f"{len(runs)} run" + ("s" if len(runs) != 1 else "")]
        if warnings:
            parts.append(f"⚠ {warnings} NaN/Inf series")
        if dropped:
            parts.append(f"{dropped} frames dropped")
        self.set_heading(" · ".join(parts))

    def _page(self, run: RunModel) -> str:
        color, status = _STATUS.get(run.status, ("#000000", run.status))
        out = [f"<h3>{html.escape(run.name)} "
               f"<span style='color:{color}'>● {html.escape(status)}</span></h3>"]
        if run.error:
            out.append(f"<p style='background:#FDECEA;color:#C62828;padding:4px'><b>"
                       f"{html.escape(run.error)}</b></p>")
        nonfinite = run.nonfinite()
        if nonfinite:
            items = "".join(f"<li><b>{html.escape(str(n))}</b></li>" for n in nonfinite)
            out.append(f"<div style='background:#FDECEA;color:#C62828'><b>NaN/Inf appeared "
                       f"(first step {nonfinite[0].first_step}):</b><ul>{items}</ul></div>")
        dropped = run.dropped_frames()
        if dropped:
            out.append(f"<p style='background:#FFF4E5;color:#8A4B00'><b>{dropped} frames "
                       f"dropped</b> by the monitor (its writer fell behind; scalars and "
                       f"gradient norms are never dropped).</p>")
        for problem in run.problems:
            out.append(f"<p style='color:#8A4B00'>{html.escape(problem)}</p>")
        rows = "".join(
            f"<tr><td><b>{html.escape(k)}</b></td><td>{html.escape(v)}</td></tr>"
            for k, v in run_facts(run)
            if k not in ("run", "NaN/Inf", "problem", "error")
        )
        out.append(f"<table cellspacing='2' cellpadding='2'>{rows}</table>")
        summary = (run.meta.get("model") or {}).get("summary") if isinstance(
            run.meta.get("model"), dict) else None
        if summary:
            out.append(f"<pre style='font-size:small'>{html.escape(str(summary))}</pre>")
        return "".join(out)

    def plain_text(self) -> str:
        return self.text.toPlainText()

    def table(self) -> tuple[list[str], list[Sequence[Any]]]:
        rows = [(run.name, k, v) for run in self.collection.shown_runs() for k, v in run_facts(run)]
        return ["run", "key", "value"], rows
