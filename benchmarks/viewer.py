"""How fast the viewer redraws, how it keeps up with a fast writer, and whether memory stays flat.

Three measurements, each against a baseline measured in the same run:

1. Redraw rate of the hidden-state panel showing 4 layers × 512 units × T = 1000 (one heatmap
   per layer, new data every redraw: the panel is scrubbed to another step each time), against
   raw `pg.ImageItem.setImage` of the same arrays into four bare plots of the same size. Median
   of repeated runs, offscreen.
2. Responsiveness while another process appends probe frames as fast as it can: the intervals
   between ticks of the window's 30 Hz timer (median and worst), against the same window idle,
   and how far the view lags behind the writer.
3. Resident memory while reading a 10,000-probe run with the viewer's bounded history, against
   a `RunReader` that keeps every frame (each in a fresh process).
4. The Text panel on a corpus probe of 50,000 characters of Python source × 512 units × 4
   layers: frames per second while scrolling and while switching units (each frame repainted),
   against a plain `QPlainTextEdit` scrolling the same text; how long the feature ranking and
   a span match take in the panel's worker thread, and the longest gap between the window's
   timer ticks meanwhile; resident memory with the run open.

    python benchmarks/viewer.py            # about a minute
    python benchmarks/viewer.py --quick    # smaller, for a smoke test
    python benchmarks/viewer.py --text     # only the Text panel (4.)

Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
from machine import describe  # noqa: E402


def rss_mib() -> float:
    """Resident set size of this process, from /proc (Linux), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---- 1. redraw rate ----------------------------------------------------------------------------


def write_big_run(path: Path, layers: int, units: int, timesteps: int, probes: int) -> None:
    from keras_rnnx.runlog import RunWriter
    from visualizer.synthetic import layer_meta, run_meta

    infos = {f"lstm_{k}": layer_meta("forget", units, timesteps) for k in range(layers)}
    rng = np.random.default_rng(0)
    base = np.tanh(rng.standard_normal((1, timesteps, units)).astype(np.float32))
    with RunWriter(path, meta=run_meta(infos, 1, timesteps, 1)) as writer:
        for probe in range(probes):
            for k, name in enumerate(infos):
                h = np.roll(base, probe * 7 + k * 3, axis=1)
                writer.write_frame("h", name, probe, h, axes=("batch", "time", "unit"))


def redraw_rate(layers: int, units: int, timesteps: int, redraws: int, repeats: int) -> dict:
    import pyqtgraph as pg

    from visualizer.main_window import make_application
    from visualizer.model import RunCollection, heatmap_image
    from visualizer.panels.state_heatmap import StateHeatmapPanel

    app = make_application()
    probes = 8
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "big"
        write_big_run(run, layers, units, timesteps, probes)
        collection = RunCollection([run])
        collection.load()
        panel = StateHeatmapPanel(collection)
        panel.all_layers.setChecked(True)
        panel.resize(1600, 1000)
        panel.show()
        app.processEvents()
        steps = collection.steps().tolist()

        def viewer_pass() -> float:
            start = time.perf_counter()
            for k in range(redraws):
                collection.scrub(steps[k % len(steps)])
                panel.refresh()
                panel.graphics.viewport().repaint()
            return redraws / (time.perf_counter() - start)

        images = [
            [heatmap_image(collection.primary.frame("h", layer, s)[1], 0) for s in steps]
            for layer in collection.primary.layers()
        ]
        bare = pg.GraphicsLayoutWidget()
        items = []
        lut = pg.colormap.get("CET-D1").getLookupTable(nPts=256)
        for row in range(layers):
            plot = bare.addPlot(row=row, col=0)
            item = pg.ImageItem(axisOrder="row-major")
            item.setLookupTable(lut)
            plot.addItem(item)
            items.append(item)
        bare.resize(1600, 1000)
        bare.show()
        app.processEvents()

        def baseline_pass() -> float:
            start = time.perf_counter()
            for k in range(redraws):
                for item, per_step in zip(items, images):
                    item.setImage(per_step[k % len(steps)], levels=(-1.0, 1.0), autoLevels=False)
                bare.viewport().repaint()
            return redraws / (time.perf_counter() - start)

        viewer_pass(), baseline_pass()  # warm-up
        viewer, baseline = [], []
        for _ in range(repeats):
            viewer.append(viewer_pass())
            baseline.append(baseline_pass())
        panel.close()
        bare.close()
    return {"viewer_fps": statistics.median(viewer), "baseline_fps": statistics.median(baseline)}


class _Capture:
    """Stands in for a RunWriter to keep the frames of one probe, so they can be rewritten
    quickly: the benchmark measures the viewer, not the synthetic data generator."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, str, np.ndarray]] = []

    def write_frame(self, kind, layer, step, array, axes=None) -> None:
        self.frames.append((kind, layer, np.asarray(array)))


def probe_frames(infos: dict, batch: int) -> list[tuple[str, str, np.ndarray]]:
    from visualizer.synthetic import write_probe_step

    capture = _Capture()
    rng = np.random.default_rng(0)
    for name, info in infos.items():
        write_probe_step(capture, name, info, 0, batch, rng)
    return capture.frames


# ---- 2. responsiveness with a fast writer -------------------------------------------------------


def write_fast(run_dir: str, seconds: float) -> None:
    """The writer process: probe frames of 4 LSTM layers as fast as it can, flushed each step."""
    from keras_rnnx.runlog import RunWriter
    from visualizer.synthetic import layer_meta, run_meta

    infos = {f"lstm_{k}": layer_meta("forget", 64, 100) for k in range(4)}
    frames = probe_frames(infos, 4)
    deadline = time.monotonic() + seconds
    step = 0
    with RunWriter(run_dir, meta=run_meta(infos, 4, 100, 1)) as writer:
        while time.monotonic() < deadline:
            for kind, layer, array in frames:
                writer.write_frame(kind, layer, step, array)
            writer.write_scalars(step, {"loss": 1.0 / (step + 1)}, phase="batch")
            writer.flush()
            step += 1
    print(json.dumps({"steps": step}))


def tick_intervals(window, app, seconds: float, draws: list | None = None) -> list[float]:
    """Milliseconds between the window's timer ticks (connected after its own `tick`, so
    `draws` gets how long each tick's redraw took)."""
    from PyQt6 import QtCore

    stamps: list[float] = []

    def stamp() -> None:
        stamps.append(time.perf_counter())
        if draws is not None:
            draws.append(window.last_draw_seconds * 1000)

    window.timer.timeout.connect(stamp)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        app.processEvents(QtCore.QEventLoop.ProcessEventsFlag.WaitForMoreEvents, 50)
    return list(np.diff(stamps) * 1000)


def responsiveness(seconds: float) -> dict:
    from visualizer.main_window import MainWindow, make_application

    app = make_application()
    with tempfile.TemporaryDirectory() as tmp:
        idle_run = Path(tmp) / "idle"
        write_fast(str(idle_run), 0.5)
        window = MainWindow([idle_run], settings=None)
        window.resize(1600, 1000)
        window.show()
        tick_intervals(window, app, 1.0)
        idle = tick_intervals(window, app, seconds)
        window.close()

        live_run = Path(tmp) / "live"
        writer = subprocess.Popen(
            [sys.executable, __file__, "--write", str(live_run), str(seconds + 1)],
            stdout=subprocess.PIPE, text=True,
        )
        while not (live_run / "events.rnnx").exists():
            time.sleep(0.01)
        window = MainWindow([live_run], settings=None)
        window.resize(1600, 1000)
        window.show()
        draws: list[float] = []
        busy = tick_intervals(window, app, seconds, draws)
        shown = window.collection.current_step()
        written = json.loads(writer.communicate()[0])["steps"]
        time.sleep(0.5)
        app.processEvents()
        window.close()
    return {
        "idle_median_ms": statistics.median(idle), "idle_max_ms": max(idle),
        "busy_median_ms": statistics.median(busy), "busy_max_ms": max(busy),
        "busy_p99_ms": float(np.percentile(busy, 99)),
        "draw_median_ms": statistics.median(draws), "draw_max_ms": max(draws),
        "steps_written": written, "step_shown_at_end": shown,
        "written_per_second": written / (seconds + 1),
    }


# ---- 3. memory over a long run ------------------------------------------------------------------


def memory_profile(run_dir: str, mode: str, probes: int) -> None:
    """In a fresh process: writes a run of `probes` probe steps while reading it as it grows,
    printing RSS (JSON) after every tenth. `mode`: "viewer" (RunModel, bounded history) or
    "unbounded" (a RunReader that keeps every frame)."""
    from keras_rnnx.runlog import RunReader, RunWriter
    from visualizer.model import RunModel
    from visualizer.synthetic import layer_meta, run_meta

    info = layer_meta("forget", 32, 50)
    kinds = ("h", "grad_h", "grad_norm", "sigma_max", "jacobian_norm")
    frames = [f for f in probe_frames({"lstm": info}, 2) if f[0] in kinds]
    writer = RunWriter(run_dir, meta=run_meta({"lstm": info}, 2, 50, 1))
    writer.flush()
    if mode == "viewer":
        model = RunModel(run_dir)
        poll = model.poll
    else:
        reader = RunReader(run_dir)
        poll = reader.refresh
    start = rss_mib()
    samples = []
    for step in range(probes):
        for kind, layer, array in frames:
            writer.write_frame(kind, layer, step, array)
        writer.write_scalars(step, {"loss": 1.0 / (step + 1)}, phase="batch")
        if step % 50 == 49:
            writer.flush()
            while poll(None):
                pass
        if (step + 1) % (probes // 10) == 0:
            samples.append((step + 1, rss_mib()))
    writer.close()
    kept = len(model.reader.frames("h", "lstm")) if mode == "viewer" else len(
        reader.frames("h", "lstm"))
    print(json.dumps({"start": start, "samples": samples, "kept_h_frames": kept}))


def memory(probes: int) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("viewer", "unbounded"):
            out = subprocess.run(
                [sys.executable, __file__, "--memory", str(Path(tmp) / mode), mode, str(probes)],
                capture_output=True, text=True, check=True,
            )
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    return results


# ---- 4. the text panel --------------------------------------------------------------------------


def python_source(characters: int) -> str:
    """Whole `.py` files of the standard library, in name order, that tokenize together,
    until there are at least `characters` characters (whole files: a cut could leave a
    string open, and the feature ranking needs text that tokenizes)."""
    import sysconfig

    from keras_rnnx.interpret import code_features

    root = Path(sysconfig.get_paths()["stdlib"])
    text = ""
    for path in sorted(root.glob("*.py")):
        try:
            piece = path.read_text(encoding="utf-8")
            code_features(text + piece)
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        text += piece
        if len(text) >= characters:
            break
    return text


def write_text_run(path: Path, text: str, layers: int, units: int) -> None:
    from keras_rnnx.runlog import RunWriter
    from visualizer.synthetic import layer_meta, run_meta

    infos = {f"lstm_{k}": layer_meta("forget", units, 100) for k in range(layers)}
    rng = np.random.default_rng(0)
    with RunWriter(path, meta=run_meta(infos, 1, 100, 1)) as writer:
        writer.write_corpus(text, meta={"source": "benchmark"})
        for name in infos:
            writer.write_frame("h", name, 1, np.zeros((1, 100, units), np.float32))
            h = np.tanh(rng.standard_normal((len(text), units), np.float32))
            writer.write_corpus_frame("h", name, 1, h.astype(np.float16))


def text_panel(characters: int, layers: int, units: int, frames: int, repeats: int) -> dict:
    from PyQt6 import QtCore, QtWidgets

    from visualizer.main_window import MainWindow, make_application

    app = make_application()
    text = python_source(characters)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "text"
        write_text_run(run, text, layers, units)
        rss_before = rss_mib()
        window = MainWindow([run], settings=None, follow=False)
        window.collection.load()
        window.resize(1600, 1000)
        window.show()
        panel = window.panels["text"]
        panel.setParent(None)  # on its own, at the size of the window (as --screenshot does)
        panel.resize(1600, 1000)
        panel.show()
        started = time.perf_counter()
        window.tick()  # lays the text out, colours unit 0, submits the feature ranking
        first_draw = time.perf_counter() - started
        app.processEvents()
        # The timer keeps ticking while the worker ranks 512 units by 5 features.
        stamps = [time.perf_counter()]
        window.timer.timeout.connect(lambda: stamps.append(time.perf_counter()))
        started = time.perf_counter()
        while not panel.jobs.idle:
            app.processEvents(QtCore.QEventLoop.ProcessEventsFlag.WaitForMoreEvents, 50)
        ranking_seconds = time.perf_counter() - started
        gaps = list(np.diff(stamps) * 1000) or [float("nan")]
        window.tick()
        canvas = panel.canvas
        bar = canvas.verticalScrollBar()
        states = window.collection.primary.reader.corpus_frame_at(
            "h", panel.shown["layer"])[1]
        started = time.perf_counter()
        panel.select_span(1000, 1006)
        window.tick()
        panel.jobs.wait(600)
        match_seconds = time.perf_counter() - started
        rss_open = rss_mib()

        def scroll_pass(bar=bar, view=canvas) -> float:
            start = time.perf_counter()
            for k in range(frames):
                bar.setValue((k * 37) % max(bar.maximum(), 1))
                view.viewport().repaint()
            return frames / (time.perf_counter() - start)

        def unit_pass() -> float:
            start = time.perf_counter()
            for k in range(frames):
                panel.select_unit((k * 97) % units)
                panel.refresh()
                canvas.viewport().repaint()
            return frames / (time.perf_counter() - start)

        plain = QtWidgets.QPlainTextEdit()
        plain.setReadOnly(True)
        plain.setFont(canvas.font())
        plain.setPlainText(text)
        plain.resize(canvas.viewport().size())
        plain.show()
        app.processEvents()
        plain_bar = plain.verticalScrollBar()

        def plain_pass() -> float:
            return scroll_pass(plain_bar, plain)

        scroll_pass(), unit_pass(), plain_pass()  # warm-up
        scroll, unit, baseline = [], [], []
        for _ in range(repeats):
            scroll.append(scroll_pass())
            unit.append(unit_pass())
            baseline.append(plain_pass())
        plain.close()
        window.close()
        panel.close()
    return {
        "characters": len(text), "lines": text.count("\n"), "states_mb": states.nbytes / 2**20,
        "scroll_fps": statistics.median(scroll), "unit_fps": statistics.median(unit),
        "plain_fps": statistics.median(baseline), "first_draw_s": first_draw,
        "ranking_s": ranking_seconds, "tick_gap_max_ms": max(gaps),
        "tick_gap_median_ms": statistics.median(gaps), "match_s": match_seconds,
        "rss_before_mib": rss_before, "rss_open_mib": rss_open,
        "viewport": (canvas.viewport().width(), canvas.viewport().height()),
    }


def print_text_panel(quick: bool) -> None:
    layers, units = 4, (128 if quick else 512)
    characters = 10_000 if quick else 50_000
    result = text_panel(characters, layers, units, frames=20 if quick else 60,
                        repeats=2 if quick else 5)
    width, height = result["viewport"]
    print(f"\n4. Text panel, {result['characters']:,} characters ({result['lines']:,} lines) of "
          f"Python source x {units} units x {layers} layers (h, float16: "
          f"{result['states_mb']:.0f} MB a layer); text area {width} x {height} px")
    print(f"   scrolling (a new page each frame)       {result['scroll_fps']:7.1f} fps")
    print(f"   switching units (a new unit each frame) {result['unit_fps']:7.1f} fps")
    print(f"   baseline: QPlainTextEdit scrolling      {result['plain_fps']:7.1f} fps "
          f"(plain text, no colours)")
    print(f"   first draw (layout of the text)         {result['first_draw_s'] * 1000:7.0f} ms")
    print(f"   feature ranking, 5 features x {units} units, in the worker: "
          f"{result['ranking_s']:.2f} s; timer ticks meanwhile: median "
          f"{result['tick_gap_median_ms']:.0f} ms, max {result['tick_gap_max_ms']:.0f} ms")
    print(f"   span match (interpret.match, k=10), in the worker: {result['match_s']:.2f} s")
    print(f"   resident memory: {result['rss_before_mib']:.0f} MiB before opening the run, "
          f"{result['rss_open_mib']:.0f} MiB with it open")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    parser.add_argument("--text", action="store_true", help="only the Text panel benchmark")
    parser.add_argument("--write", nargs=2, metavar=("RUN_DIR", "SECONDS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--memory", nargs=3, metavar=("RUN_DIR", "MODE", "PROBES"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write:
        write_fast(args.write[0], float(args.write[1]))
        return
    if args.memory:
        memory_profile(args.memory[0], args.memory[1], int(args.memory[2]))
        return
    if args.text:
        banner()
        print_text_panel(args.quick)
        return
    main_benchmark(args.quick)


def banner() -> None:
    print(f"rnnx-viz benchmark on {describe()}, Qt platform {os.environ.get('QT_QPA_PLATFORM')}")


def main_benchmark(quick: bool) -> None:
    layers, units, timesteps = 4, (128 if quick else 512), (250 if quick else 1000)
    banner()

    fps = redraw_rate(layers, units, timesteps, redraws=10 if quick else 30,
                      repeats=2 if quick else 5)
    print(f"\n1. Redraw, {layers} layers x {units} units x T = {timesteps}, new data each time")
    print(f"   viewer (StateHeatmapPanel, all layers)   {fps['viewer_fps']:7.1f} fps")
    print(f"   baseline (raw ImageItem.setImage)        {fps['baseline_fps']:7.1f} fps")
    ratio = fps["viewer_fps"] / fps["baseline_fps"]
    print(f"   ratio viewer / baseline                  {ratio:7.2f}")

    seconds = 2.0 if quick else 6.0
    live = responsiveness(seconds)
    print(f"\n2. Timer ticks (nominal 33 ms) over {seconds:g} s, window 1600 x 1000")
    print(f"   idle:                       median {live['idle_median_ms']:6.1f} ms, "
          f"max {live['idle_max_ms']:6.1f} ms")
    print(f"   writer appending (4 layers): median {live['busy_median_ms']:6.1f} ms, "
          f"p99 {live['busy_p99_ms']:6.1f} ms, max {live['busy_max_ms']:6.1f} ms")
    print(f"   redraw inside a busy tick:   median {live['draw_median_ms']:6.1f} ms, "
          f"max {live['draw_max_ms']:6.1f} ms")
    print(f"   ratio busy / idle median                 "
          f"{live['busy_median_ms'] / live['idle_median_ms']:7.2f}")
    print(f"   writer: {live['steps_written']} probe steps "
          f"({live['written_per_second']:.0f}/s, 4 layers x 8 frames each); "
          f"step shown when the writer stopped: {live['step_shown_at_end']}")

    probes = 2000 if quick else 10000
    mem = memory(probes)
    print(f"\n3. Resident memory while reading a {probes}-probe run as it is written (MiB)")
    header = "   probes read  " + "".join(f"{n:>8}" for n, _ in mem["viewer"]["samples"])
    print(header)
    for mode, label in (("viewer", "viewer (bounded)"), ("unbounded", "RunReader (all)")):
        row = "".join(f"{r:8.0f}" for _, r in mem[mode]["samples"])
        print(f"   {label:<13}{row}   ({mem[mode]['kept_h_frames']} h frames kept)")
    for mode in ("viewer", "unbounded"):
        samples = mem[mode]["samples"]
        growth = samples[-1][1] - samples[1][1]
        print(f"   growth from {samples[1][0]} to {samples[-1][0]} probes, {mode:<9}: "
              f"{growth:7.1f} MiB")

    print_text_panel(quick)


if __name__ == "__main__":
    main()
