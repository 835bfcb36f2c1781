"""Starting the viewer from a training script, as a separate process.

`RNNMonitor(..., open_viewer=True)` and the examples' `--viz` call `open_viewer(run_dir)`,
which runs `python -m visualizer RUN_DIR` detached in its own session: training never waits on
it, and closing it (or its crashing) cannot touch the training process. This module lives in
`keras_rnnx` and imports no `visualizer` module (nor Qt): the plugin never depends on the GUI
package, it only asks whether PyQt6 and pyqtgraph are installed. On a machine without a
display nothing is started and one line on stderr says why.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from typing import Mapping, Sequence

__all__ = ["display_problem", "open_viewer", "viewer_command"]


def display_problem(environ: Mapping[str, str] | None = None,
                    platform: str | None = None) -> str | None:
    """Why a window cannot be shown here, or None if it can.

    Linux and other X11/Wayland systems need `DISPLAY` or `WAYLAND_DISPLAY`; macOS and Windows
    are assumed to have a display.
    """
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    if platform.startswith(("darwin", "win", "cygwin")):
        return None
    if environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"):
        return None
    return "no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"


def viewer_command(run_dir: str | os.PathLike, extra_args: Sequence[str] = ()) -> list[str]:
    """The command line that opens the viewer on `run_dir` with this Python."""
    return [sys.executable, "-m", "visualizer", os.fspath(run_dir), *extra_args]


def open_viewer(
    run_dir: str | os.PathLike, *, extra_args: Sequence[str] = ()
) -> subprocess.Popen | None:
    """Starts `python -m visualizer RUN_DIR` detached; returns the process, or None.

    Returns None, after one line on stderr saying why, when there is no display, when PyQt6
    or pyqtgraph is not installed, or when the process cannot be started. Never raises for
    those: a viewer is a convenience, training goes on without it.
    """
    problem = display_problem()
    if problem is None:
        # `find_spec` of a top-level name looks for it without importing it.
        missing = [m for m in ("visualizer", "PyQt6", "pyqtgraph")
                   if importlib.util.find_spec(m) is None]
        if missing:
            problem = f"{' and '.join(missing)} not installed (pip install keras-rnnx[viz])"
    if problem is not None:
        _say_why(problem)
        return None
    options: dict = {
        "stdin": subprocess.DEVNULL,
        "stdout": subprocess.DEVNULL,
        "stderr": subprocess.DEVNULL,
        "close_fds": True,
    }
    if sys.platform.startswith("win"):
        options["creationflags"] = (
            subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.DETACHED_PROCESS
        )
    else:
        options["start_new_session"] = True
    try:
        return subprocess.Popen(viewer_command(run_dir, extra_args), **options)
    except OSError as error:
        _say_why(str(error))
        return None


def _say_why(problem: str) -> None:
    # One line on stderr, not a warning: a warning also prints the calling source line.
    print(f"rnnx-viz: viewer not started: {problem}.", file=sys.stderr, flush=True)
