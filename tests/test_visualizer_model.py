"""The viewer's Qt-free parts: the run model, the collection and selection, the reader thread,
and the rule that the viewer never imports TensorFlow or Keras."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from keras_rnnx.runlog import RunWriter
from visualizer.follower import RunFollower
from visualizer.model import (
    RunCollection,
    RunModel,
    find_runs,
    heatmap_image,
    nice_bound,
    quantity_levels,
    uniform_rows,
)
from visualizer.synthetic import layer_meta, run_meta, write_probe_step, write_synthetic_run

TOKENS = [f"tok{t}" for t in range(12)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    write_synthetic_run(root / "lstm", cells={"lstm": "forget", "lstm_2": "forget"}, units=8,
                        timesteps=12, batch=3, probes=6, tokens=TOKENS, dropped=5, seed=1)
    write_synthetic_run(root / "group" / "vanilla", cells={"rnn": "vanilla"}, units=8,
                        timesteps=12, batch=3, probes=6, seed=2)
    write_synthetic_run(root / "nan", cells={"lstm": "forget"}, units=4, timesteps=6, batch=2,
                        probes=5, nan_from=3, seed=3)
    return root


def _loaded(path, **kwargs) -> RunModel:
    model = RunModel(path, **kwargs)
    while model.poll(None):
        pass
    return model


# ---- small pure helpers -------------------------------------------------------------------------


def test_find_runs_accepts_a_run_a_logdir_or_the_log_file(runs, tmp_path):
    assert find_runs(runs / "lstm") == [runs / "lstm"]
    assert find_runs(runs / "lstm" / "events.rnnx") == [runs / "lstm"]
    assert find_runs(runs) == [runs / "group" / "vanilla", runs / "lstm", runs / "nan"]
    assert find_runs(tmp_path / "missing") == []
    assert find_runs(tmp_path) == []


def test_nice_bound_rounds_up_to_one_two_two_and_a_half_five():
    assert [nice_bound(v) for v in (0.7, 1.0, 1.2, 2.3, 4.0, 7.0, 0.031)] == [
        1.0, 1.0, 2.0, 2.5, 5.0, 10.0, 0.05]
    assert nice_bound(0.0) == 1.0 and nice_bound(float("nan")) == 1.0


def test_colour_levels_are_the_activation_bounds_or_symmetric_for_unbounded_quantities():
    info = layer_meta("forget", 4, 5)
    assert quantity_levels("h", info) == (-1.0, 1.0, True)
    assert quantity_levels("f", info) == (0.0, 1.0, True)
    assert quantity_levels("z", info) == (-1.0, 1.0, True)
    c = np.array([[0.3, -3.2], [1.0, np.nan]])
    assert quantity_levels("c", info, c) == (-5.0, 5.0, False)  # bounds null in the meta
    assert quantity_levels("grad_h", info, c * 1e-3) == (-0.005, 0.005, False)
    assert quantity_levels("i", {}) == (0.0, 1.0, True)  # no meta: the lecture's defaults
    assert quantity_levels("h", {}) == (-1.0, 1.0, True)


def test_heatmap_image_is_units_by_time_float32_c_contiguous():
    frame = np.arange(2 * 5 * 3, dtype=np.float64).reshape(2, 5, 3)
    image = heatmap_image(frame, 1)
    assert image.shape == (3, 5) and image.dtype == np.float32 and image.flags.c_contiguous
    np.testing.assert_array_equal(image, frame[1].T)
    np.testing.assert_array_equal(heatmap_image(frame, 7), frame[1].T)  # sample clamped


def test_uniform_rows_gives_the_newest_row_at_or_before_each_grid_step():
    steps = np.array([0, 10, 40])
    rows = np.array([[0.0], [1.0], [4.0]])
    grid, resampled = uniform_rows(steps, rows, max_rows=5)
    assert grid.tolist() == [0, 10, 20, 30, 40]
    assert resampled[:, 0].tolist() == [0.0, 1.0, 1.0, 1.0, 4.0]


# ---- a recorded run -> the model ----------------------------------------------------------------


def test_run_model_reads_layers_frames_scalars_and_events(runs):
    model = _loaded(runs / "lstm")
    assert model.status == "finished"
    assert model.layers() == ["lstm", "lstm_2"]
    assert model.layer_info("lstm")["gates"] == ["i", "f", "z", "o"]
    assert model.units("lstm") == 8 and model.batch_size() == 3
    assert model.tokens(1) == TOKENS
    assert model.steps().tolist() == [0, 10, 20, 30, 40, 50]
    step, h = model.frame("h", "lstm", 25)
    assert step == 20 and h.shape == (3, 12, 8)
    assert model.frame("nope", "lstm") is None
    steps, sigma = model.series("sigma_max", "lstm")
    assert steps.tolist() == [0, 10, 20, 30, 40, 50] and sigma.shape == (6, 4)
    assert model.block_names("lstm", 4) == ["i", "f", "z", "o"]
    assert model.sigma_thresholds("lstm", 4) == [4.0, 4.0, 1.0, 4.0]
    step, norms = model.grad_norm("lstm", 30)
    assert step == 30 and norms.shape == (12,)
    loss_steps, loss = model.scalars("loss", "batch")
    assert loss_steps.tolist() == list(range(1, 51))
    assert model.scalar_names("epoch") == ["loss", "val_loss", "mae", "val_mae"]
    assert model.dropped_frames() == 5
    assert model.message() is None


def test_grad_norm_falls_back_to_the_norm_of_grad_h(tmp_path):
    info = layer_meta("vanilla", 3, 4)
    with RunWriter(tmp_path / "run", meta=run_meta({"rnn": info}, 2, 4, 1)) as writer:
        grad = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
        writer.write_frame("grad_h", "rnn", 7, grad)
    model = _loaded(tmp_path / "run")
    step, norms = model.grad_norm("rnn")
    assert step == 7
    np.testing.assert_allclose(norms, np.sqrt((grad.astype(np.float64) ** 2).sum(axis=(0, 2))))
    steps, matrix = model.grad_norm_history("rnn")
    assert steps.tolist() == [7] and matrix.shape == (1, 4)


def test_nan_and_inf_are_reported_with_the_first_step(runs):
    model = _loaded(runs / "nan")
    found = {(n.record, n.name): n for n in model.nonfinite()}
    assert found["frame", "h"].first_step == 30 and found["frame", "h"].layer == "lstm"
    assert found["scalars", "loss"].first_step == 21


def test_history_is_bounded_by_the_memory_budget_and_still_spans_the_run(tmp_path):
    info = layer_meta("forget", 16, 20)
    rng = np.random.default_rng(0)
    with RunWriter(tmp_path / "long", meta=run_meta({"lstm": info}, 2, 20, 1)) as writer:
        for probe in range(200):
            write_probe_step(writer, "lstm", info, probe, 2, rng)
    per_step = (2 + 4 + 1) * 2 * 20 * 16 * 4  # h, c, four gates, grad_h as float32
    model = _loaded(tmp_path / "long", history=64, memory_budget=10 * per_step)
    assert 8 <= model.max_frames <= 12
    kept = model.reader.frames("h", "lstm")
    assert len(kept) <= model.max_frames
    assert kept[0][0] == 0 and kept[-1][0] == 199  # the first and newest frames stay
    assert model.frame("h", "lstm", 3)[0] == 0
    big = _loaded(tmp_path / "long", history=64)
    assert big.max_frames == 64


# ---- runs that cannot be read (yet) -------------------------------------------------------------


def _record(header: dict) -> bytes:
    import json

    head = json.dumps(header).encode()
    payload = struct.pack("<I", len(head)) + head
    length = struct.pack("<Q", len(payload))
    return (length + struct.pack("<I", zlib.crc32(length)) + payload
            + struct.pack("<I", zlib.crc32(payload)))


def test_bad_runs_say_what_is_wrong(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "events.rnnx").write_text("this is a text file, not a run log\n" * 3)
    model = _loaded(foreign)
    assert model.status == "error" and "not a keras-rnnx run log" in model.error
    assert model.message()[0] == "error"

    newer = tmp_path / "newer"
    newer.mkdir()
    magic = {"type": "magic", "format": "keras-rnnx-runlog", "version": 99, "time": 0.0}
    (newer / "events.rnnx").write_bytes(_record(magic))
    model = _loaded(newer)
    assert "version 99" in model.error and "upgrade" in model.error

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "events.rnnx").write_bytes(b"")
    model = _loaded(empty)
    assert model.status == "waiting" and "waiting for the run to start" in model.message()[1]

    missing = _loaded(tmp_path / "never")
    assert missing.status == "error" and "no such run directory" in missing.error


def test_a_torn_tail_is_ignored_and_a_corrupt_record_is_reported(runs, tmp_path):
    torn = tmp_path / "torn"
    shutil.copytree(runs / "lstm", torn)
    data = (torn / "events.rnnx").read_bytes()
    (torn / "events.rnnx").write_bytes(data[:-100])
    model = _loaded(torn)
    assert model.status == "live" and model.error is None and model.layers()

    corrupt = tmp_path / "corrupt"
    shutil.copytree(runs / "lstm", corrupt)
    raw = bytearray((corrupt / "events.rnnx").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (corrupt / "events.rnnx").write_bytes(bytes(raw))
    model = _loaded(corrupt)
    assert model.error is None and model.problems
    assert model.message()[0] == "warning" and "problem" in model.message()[1]


def test_a_run_deleted_while_open_keeps_what_was_read(runs, tmp_path):
    doomed = tmp_path / "doomed"
    shutil.copytree(runs / "lstm", doomed)
    model = _loaded(doomed)
    shutil.rmtree(doomed)
    assert model.poll() == 0
    assert model.status == "deleted" and "deleted" in model.error
    assert model.frame("h", "lstm") is not None


# ---- the collection and the selection -----------------------------------------------------------


def test_collection_finds_runs_and_new_ones_appearing_later(runs, tmp_path):
    collection = RunCollection([runs])
    assert [r.name for r in collection.runs] == ["group/vanilla", "lstm", "nan"]
    logdir = tmp_path / "logdir"
    collection = RunCollection([logdir])
    assert collection.runs == [] and collection.message()[0] == "error"
    logdir.mkdir()
    assert "waiting for an events.rnnx" in collection.message()[1]
    write_synthetic_run(logdir / "late", probes=2, units=4, timesteps=5)
    assert collection.rescan() and [r.name for r in collection.runs] == ["late"]
    assert collection.message() is None


def test_selection_follows_the_newest_step_until_scrubbed(runs):
    collection = RunCollection([runs / "lstm", runs / "group"])
    collection.load()
    assert collection.following and collection.current_step() == 50
    collection.scrub(20)
    assert not collection.following and collection.current_step() == 20
    collection.follow()
    assert collection.current_step() == 50
    collection.select_sample(99)
    assert collection.sample == 2  # clamped to the probe batch
    assert collection.current_layer() == "lstm"
    collection.select_layer("lstm_2")
    collection.set_compared([1])
    vanilla = collection.runs[1]
    assert collection.shown_runs() == [collection.primary, vanilla]
    # Layer names differ between the runs: the compared run shows the same position, clamped.
    assert collection.layer_for(vanilla) == "rnn"
    version = collection.version
    collection.set_primary(1)
    assert collection.version > version and collection.current_layer() == "rnn"


def test_the_reader_thread_follows_a_run_being_written(tmp_path):
    info = layer_meta("vanilla", 4, 5)
    writer = RunWriter(tmp_path / "live", meta=run_meta({"rnn": info}, 2, 5, 1))
    writer.flush()
    collection = RunCollection([tmp_path / "live"])
    follower = RunFollower(collection, interval=0.01).start()
    try:
        rng = np.random.default_rng(0)
        for step in range(5):
            write_probe_step(writer, "rnn", info, step, 2, rng)
            writer.flush()
        deadline = time.monotonic() + 10
        while collection.current_step() != 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert collection.current_step() == 4
        assert collection.primary.status == "live"
        writer.close()
        while collection.primary.status != "finished" and time.monotonic() < deadline:
            time.sleep(0.02)
        assert collection.primary.status == "finished"
    finally:
        follower.stop()
    assert not follower.alive


# ---- the viewer never imports TensorFlow or Keras -----------------------------------------------


def test_the_viewer_never_imports_tensorflow_or_keras(runs):
    script = f"""
import os, sys
os.environ["QT_QPA_PLATFORM"] = "offscreen"
import visualizer
assert "tensorflow" not in sys.modules and "keras" not in sys.modules, "after import"
from visualizer.main_window import MainWindow, make_application
app = make_application()
window = MainWindow([{str(runs / "lstm")!r}], settings=None, follow=False)
window.collection.load()
window.show()
window.tick(force=True)
app.processEvents()
window.close()
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
assert not bad, bad
print("clean")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "clean" in result.stdout
