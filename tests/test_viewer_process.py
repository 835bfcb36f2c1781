"""Starting the viewer as a process from keras_rnnx: detached, one line when it cannot, and
without importing any `visualizer` module into the training process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from keras_rnnx import viewer_process


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from visualizer.synthetic import write_synthetic_run

    path = tmp_path_factory.mktemp("runs") / "lstm"
    write_synthetic_run(path, cells={"lstm": "forget"}, units=8, timesteps=12, batch=3,
                        probes=4, seed=1)
    return path


def test_no_display_means_no_viewer_and_one_line_saying_why(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    started = []
    monkeypatch.setattr(viewer_process.subprocess, "Popen", lambda *a, **k: started.append(a))
    assert viewer_process.open_viewer(tmp_path) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "viewer not started: no display" in err
    assert started == []
    assert viewer_process.display_problem({"WAYLAND_DISPLAY": "wayland-0"}, "linux") is None
    assert viewer_process.display_problem({}, "darwin") is None
    assert viewer_process.display_problem({}, "win32") is None


def test_the_viewer_starts_detached_with_this_python(monkeypatch, tmp_path):
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(sys, "platform", "linux")
    calls = []

    class FakePopen:
        def __init__(self, command, **options):
            calls.append((command, options))

    monkeypatch.setattr(viewer_process.subprocess, "Popen", FakePopen)
    process = viewer_process.open_viewer(tmp_path / "run")
    assert isinstance(process, FakePopen)
    command, options = calls[0]
    assert command == [sys.executable, "-m", "visualizer", str(tmp_path / "run")]
    assert options["start_new_session"] is True
    assert options["stdout"] is subprocess.DEVNULL and options["stderr"] is subprocess.DEVNULL


def test_launching_from_keras_rnnx_imports_no_visualizer_module(run_dir, tmp_path):
    """The viewer really starts (it writes a screenshot of the run), and the launching process
    (keras_rnnx with its monitor) never imported `visualizer`, PyQt6 or
    pyqtgraph."""
    out = tmp_path / "shot.png"
    script = f"""
import sys
import keras_rnnx.monitor
from keras_rnnx.viewer_process import open_viewer
process = open_viewer({str(run_dir)!r}, extra_args=["--screenshot", {str(out)!r},
                                                     "--size", "640x400"])
assert process is not None, "viewer not started"
assert process.wait(timeout=90) == 0, "viewer failed"
bad = sorted(m for m in sys.modules
             if m.split(".")[0] in ("visualizer", "PyQt6", "pyqtgraph"))
assert not bad, bad
print("clean")
"""
    env = dict(os.environ, DISPLAY=os.environ.get("DISPLAY", ":99"), QT_QPA_PLATFORM="offscreen")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=180, env=env)
    assert result.returncode == 0, result.stderr
    assert "clean" in result.stdout
    assert out.stat().st_size > 1000


def test_a_missing_viewer_package_is_named(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(sys, "platform", "linux")
    real = viewer_process.importlib.util.find_spec
    monkeypatch.setattr(viewer_process.importlib.util, "find_spec",
                        lambda name: None if name == "pyqtgraph" else real(name))
    assert viewer_process.open_viewer(tmp_path) is None
    assert "pyqtgraph not installed" in capsys.readouterr().err
