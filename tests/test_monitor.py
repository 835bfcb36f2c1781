"""RNNMonitor records a fit into a run log that the reader gets back intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import keras
import numpy as np
import pytest

import keras_rnnx as rx
from keras_rnnx import diagnostics, runlog
from keras_rnnx.monitor import RNNMonitor, _Cadence


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((12, 3)),
        rx.RNN(rx.ForgetGateLSTMCell(6), return_sequences=True, name="lower"),
        keras.layers.RNN(rx.VanillaRNNCell(4), name="upper"),
        keras.layers.Dense(1),
    ])
    model.compile(optimizer="adam", loss="mse")
    return model


def data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12, 3)).astype("float32")
    return x, x[:, :3, 0].sum(axis=1, keepdims=True).astype("float32")


def test_records_meta_scalars_and_probe_frames(tmp_path):
    model = small_model()
    x, y = data()
    monitor = RNNMonitor(tmp_path / "run", x[:4], y[:4], every=1,
                         tokens=[f"w{t}" for t in range(12)])
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[monitor])

    reader = runlog.RunReader(tmp_path / "run")
    assert reader.finished and reader.end_status == "ok"
    assert reader.problems == []
    meta = reader.meta
    assert set(meta["layers"]) == {"lower", "upper"}
    assert meta["layers"]["lower"]["cell"] == "forget"
    assert meta["layers"]["lower"]["gates"] == ["i", "f", "z", "o"]
    assert meta["layers"]["upper"]["units"] == 4
    assert meta["probe"]["batch_shape"] == [4, 12, 3]
    assert meta["probe"]["tokens"][:2] == ["w0", "w1"]
    assert meta["versions"]["keras"] == keras.__version__
    assert "lower" in meta["model"]["summary"]

    steps, losses = reader.scalars("loss", phase="epoch")
    np.testing.assert_array_equal(steps, [0, 1])
    np.testing.assert_allclose(losses, history.history["loss"], rtol=1e-6)
    batch_steps, _ = reader.scalars("loss", phase="batch")
    np.testing.assert_array_equal(batch_steps, np.arange(1, 7))

    # every=1: a probe after every step, and the last one sees the final weights.
    np.testing.assert_array_equal(reader.steps("grad_norm", "lower"), np.arange(0, 7))
    final = diagnostics.probe(model, x[:4], y[:4])
    for layer in ("lower", "upper"):
        step, h = reader.frames("h", layer)[-1]
        assert step == 6
        np.testing.assert_allclose(h, final[layer]["states"]["h"], atol=1e-6)
        np.testing.assert_allclose(reader.frames("grad_h", layer)[-1][1],
                                   final[layer]["grad_h"], rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(reader.frames("grad_norm", layer)[-1][1],
                                   final[layer]["grad_norm"], rtol=1e-5)
        np.testing.assert_allclose(reader.frames("jacobian_norm", layer)[-1][1],
                                   final[layer]["jacobian_norm"], rtol=1e-5)
    for gate in "ifzo":
        np.testing.assert_allclose(reader.frames(gate, "lower")[-1][1],
                                   final["lower"]["gates"][gate], atol=1e-6)
    sigma = reader.frames("sigma_max", "lower")[-1][1]
    kernel = model.get_layer("lower").cell.recurrent_kernel.numpy()
    np.testing.assert_allclose(sigma, [np.linalg.norm(b, 2) for b in np.split(kernel, 4, 1)],
                               rtol=1e-5)
    assert meta["layers"]["lower"]["sigma_threshold"] == [4.0, 4.0, 1.0, 4.0]
    grads = reader.frames("recurrent_kernel_grad_norm", "lower")[-1][1]
    assert grads.shape == (4,) and np.all(grads > 0)


def test_auto_cadence_keeps_probing_within_budget(tmp_path):
    model = small_model()
    x, y = data(n=640)
    # A large budget: 80 steps of this small model pay for more than the first frame even on
    # a busy machine (the planned cadence itself is tested on a fake clock below).
    monitor = RNNMonitor(tmp_path / "run", x[:4], y[:4], overhead_budget=0.25)
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[monitor])
    # The traced first probe plus at least one more; never more than the budget allows,
    # give or take the one probe that the running mean of the cost may underestimate.
    assert monitor.probe_count >= 2
    worst = max(cost or 0.0 for cost in monitor._probe_cost.values())
    assert monitor.budget_used <= 0.25 + worst / 1.0
    reader = runlog.RunReader(tmp_path / "run")
    steps = reader.steps("grad_norm", "lower")
    assert steps[0] == 0 and len(steps) == monitor.probe_count
    # The Jacobian norms come with the first probe and then within half of the budget; every
    # probe has all the other fields. The last step of the fit (2 · 640 / 16) is recorded.
    jacobian_steps = reader.steps("jacobian_norm", "lower")
    assert jacobian_steps[0] == 0 and set(jacobian_steps) <= set(steps)
    assert steps[-1] == 80
    np.testing.assert_array_equal(reader.steps("h", "lower"), steps)


def test_backpressure_drops_bulky_frames_only(tmp_path):
    model = small_model()
    x, y = data()
    monitor = RNNMonitor(tmp_path / "run", x[:4], y[:4], every=1, max_pending_mb=1e-6)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[monitor])
    reader = runlog.RunReader(tmp_path / "run")
    assert monitor.dropped_frames > 0
    dropped = reader.events("dropped_frames")
    assert dropped and dropped[-1].data["count"] == monitor.dropped_frames
    probed = np.arange(0, 7)
    for layer in ("lower", "upper"):
        for kind in ("grad_norm", "jacobian_norm", "sigma_max", "kernel_grad_norm"):
            np.testing.assert_array_equal(reader.steps(kind, layer), probed)
        kept = reader.frame_count("h", layer) if "h" in reader.kinds(layer) else 0
        assert kept < len(probed)
    np.testing.assert_array_equal(reader.scalars("loss", phase="batch")[0], np.arange(1, 7))


def test_nonfinite_values_are_recorded_not_fatal(tmp_path):
    model = small_model()
    x, y = data()
    kernel = model.get_layer("upper").cell.kernel
    kernel.assign(np.full(kernel.shape, np.nan, "float32"))
    monitor = RNNMonitor(tmp_path / "run", x[:4], y[:4], every=2)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[monitor])
    assert monitor.nonfinite_count > 0
    reader = runlog.RunReader(tmp_path / "run")
    flagged = {(n.layer, n.name) for n in reader.nonfinite()}
    assert ("upper", "h") in flagged
    assert np.isnan(reader.frames("h", "upper")[0][1]).all()


def test_unwritable_directory_warns_once_and_training_goes_on(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    model = small_model()
    x, y = data()
    monitor = RNNMonitor(blocker / "run", x[:4], y[:4], every=1)
    with pytest.warns(RuntimeWarning, match="cannot record into") as caught:
        history = model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[monitor])
    assert len([w for w in caught if "RNNMonitor" in str(w.message)]) == 1
    assert len(history.history["loss"]) == 2


def test_disk_full_warns_once_and_stops_writing(tmp_path, monkeypatch):
    model = small_model()
    x, y = data()
    calls = {"n": 0}
    original = runlog.RunWriter.write_frame

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(28, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(runlog.RunWriter, "write_frame", failing)
    monitor = RNNMonitor(tmp_path / "run", x[:4], y[:4], every=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[monitor])
    messages = [str(w.message) for w in caught if "RNNMonitor" in str(w.message)]
    assert len(messages) == 1 and "No space left" in messages[0]
    assert len(history.history["loss"]) == 2
    assert calls["n"] == 6  # nothing more was attempted after the failure
    reader = runlog.RunReader(tmp_path / "run")
    assert reader.meta["layers"]


def test_existing_run_needs_resume(tmp_path):
    model = small_model()
    x, y = data()
    model.fit(x, y, epochs=1, batch_size=32, verbose=0,
              callbacks=[RNNMonitor(tmp_path / "run", x[:4], y[:4], every=2)])
    with pytest.raises(ValueError, match="argument `run_dir`.*resume=True"):
        RNNMonitor(tmp_path / "run", x[:4], y[:4])
    model.fit(x, y, epochs=1, batch_size=32, verbose=0,
              callbacks=[RNNMonitor(tmp_path / "run", x[:4], y[:4], every=2, resume=True)])
    reader = runlog.RunReader(tmp_path / "run")
    steps, _ = reader.scalars("loss", phase="batch")
    np.testing.assert_array_equal(steps, np.arange(1, 7))
    assert reader.problems == []


def test_context_manager_marks_a_failed_fit(tmp_path):
    model = small_model()
    x, y = data()

    class Boom(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 1:
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with RNNMonitor(tmp_path / "run", x[:4], y[:4], every=1) as monitor:
            model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[monitor, Boom()])
    reader = runlog.RunReader(tmp_path / "run")
    assert reader.finished and reader.end_status == "error: RuntimeError"
    assert len(reader.scalars("loss", phase="batch")[0]) == 2


@pytest.mark.parametrize("every", [0, -1, 2.5, "often", True])
def test_invalid_every(tmp_path, every):
    with pytest.raises(ValueError, match="argument `every`"):
        RNNMonitor(tmp_path / "run", np.zeros((2, 3, 1), "float32"), every=every)


def test_killed_training_keeps_what_was_flushed(tmp_path):
    """kill -9 in the middle of fit: the log reads back up to the last flushed record, and
    what is lost is at most the last fraction of a second of training."""
    script = textwrap.dedent(f"""
        import sys, time, numpy as np, keras, keras_rnnx as rx
        from keras_rnnx.monitor import RNNMonitor

        class Announce(keras.callbacks.Callback):
            # Runs after the monitor's hook: step N's log has been handed to the monitor.
            def on_train_batch_end(self, batch, logs=None):
                if batch == 20:
                    print("running", flush=True)
                print(batch + 1, time.monotonic(), flush=True)

        x = np.random.default_rng(0).normal(size=(100000, 12, 3)).astype("float32")
        y = x[:, :1, 0]
        model = keras.Sequential([keras.Input((12, 3)), keras.layers.RNN(rx.CECCell(6)),
                                  keras.layers.Dense(1)])
        model.compile("adam", "mse")
        monitor = RNNMonitor({str(tmp_path / "run")!r}, x[:4], y[:4], every=1000)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[monitor, Announce()])
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    try:
        while process.stdout.readline().strip() != "running":
            pass
        time.sleep(1.5)
        killed_at = time.monotonic()  # the same system-wide clock as the child's
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait(30)
    # The kill can cut the child's last line short: read whole "step time" lines only.
    announced = [line.split() for line in process.stdout.read().splitlines()]
    announced = [(int(fields[0]), float(fields[1])) for fields in announced
                 if len(fields) == 2 and float(fields[1]) < killed_at]
    reader = runlog.RunReader(tmp_path / "run")
    assert not reader.finished
    assert not [p for p in reader.problems if "corrupt" in p.lower()]
    steps, values = reader.scalars("loss", phase="batch")
    assert len(steps) > 21 and np.all(np.diff(steps) == 1) and np.all(np.isfinite(values))
    assert reader.frame_count("grad_norm", "rnn") >= 1  # the first probe's
    # Batch logs reach the writer within 0.05 s and the file within 0.1 s more: every step
    # finished half a second before the kill is in the log (the margin is for a busy machine).
    settled = max(step for step, at in announced if at < killed_at - 0.5)
    assert steps[-1] >= settled, (steps[-1], settled, announced[-1])


def simulate_cadence(total, step, light, full, logging, first, budget=0.02):
    """Runs `_Cadence` over a fit of `total` steps of `step` seconds on a fake clock: frames
    cost `light` (`full` with the Jacobian norms) seconds, batch logging `logging` a step, the
    first (Jacobian) frame at step 0 `first`. Replans when a frame is due and after it, as
    RNNMonitor does. Returns (frame steps, Jacobian frame steps, monitor seconds, training)."""
    cadence = _Cadence(budget, 0.5, total)
    spent, frame_spent = first, first
    frames, fulls = [0], [0]
    next_frame, next_full = 1, float("inf")

    def plan(now, training):
        every, full_every = cadence.intervals(
            done=now, training=training, step_seconds=step, spent=spent,
            other=spent - frame_spent, light=light, full=full)
        every = max(1.0, 0.05 * now) if every == float("inf") else every
        return max(now, frames[-1] + round(every)), fulls[-1] + full_every

    for now in range(1, total + 1):
        spent += logging
        training = now * step
        if now >= next_frame and now >= 2:
            next_frame, next_full = plan(now, training)
            is_full = cadence.kind(now >= next_full, light, full)
            if now >= next_frame and is_full is not None:
                cost = full if is_full else light
                spent += cost
                frame_spent += cost
                frames.append(now)
                if is_full:
                    fulls.append(now)
                next_frame, next_full = plan(now, training)
        elif now < 2:
            next_frame = now + 1
    return np.array(frames), np.array(fulls), spent, total * step


def largest_gap(steps, total):
    return np.max(np.diff(np.concatenate([steps, [total]]))) / total


def test_auto_cadence_spreads_frames_evenly_within_budget():
    # Figures of the demo's model as the budget arithmetic wants them: 2,808 steps, a frame
    # 0.3 step, a Jacobian frame 1 step (the first one too), logging 0.2 % of a step.
    total, step = 2808, 0.014
    frames, fulls, spent, training = simulate_cadence(
        total, step, light=0.3 * step, full=1.0 * step, logging=0.002 * step, first=step)
    assert spent <= 0.02 * training + step  # within the budget, give or take one frame
    assert spent >= 0.018 * training  # and it spends it
    # 56 steps of budget, less 5.6 for logging and 1 for the first frame, buy 49.4 / (1 + 3 *
    # 0.3) = 26 Jacobian frames and 104 in all, less what planning in whole steps rounds off.
    assert len(frames) >= 100 and len(fulls) >= 24
    assert largest_gap(frames, total) <= 0.05
    # Evenly: no Jacobian gap more than twice the mean one.
    gaps = np.diff(fulls)
    assert gaps.max() <= 2 * gaps.mean()


def test_auto_cadence_expensive_probes_keep_the_gap_rule_where_affordable():
    # Frames of 2 steps, Jacobian frames of 6: 20 frames (one every 5 %) cost 40 of the 56
    # steps the budget allows, so the gap rule holds and the Jacobian frames get the rest
    # (50 - 40 = 10 steps: two more at 4 steps over a frame each).
    total, step = 2808, 0.014
    frames, fulls, spent, training = simulate_cadence(
        total, step, light=2 * step, full=6 * step, logging=0.0, first=6 * step)
    assert spent <= 0.02 * training + 6 * step
    assert largest_gap(frames, total) <= 0.05
    assert len(fulls) >= 3
    # Too expensive for the gap rule (a frame costs 10 steps): the budget wins, and what it
    # pays for is still spread over the whole run, not spent at its start.
    frames, fulls, spent, training = simulate_cadence(
        total, step, light=10 * step, full=30 * step, logging=0.0, first=30 * step)
    assert spent <= 0.02 * training + 10 * step
    assert 2 <= len(frames) <= 7 and frames[-1] >= total / 2


def test_auto_cadence_keeps_the_gap_rule_for_jacobian_frames_where_affordable():
    # Frames of 0.2 steps, Jacobian frames of 1.5: the 4:1 split buys 50 / 2.1 = 23.8
    # Jacobian frames, and each waits for the first frame at or after its step, so their
    # gaps came out near 5.8 %. Planned every 0.9 · 5 % less a frame's interval (about 106
    # steps) they cost 26.5 · 1.5 = 40 of the 50 steps (46 with the 15 % margin): they come
    # that often and the other frames get the rest.
    total, step = 2808, 0.014
    frames, fulls, spent, training = simulate_cadence(
        total, step, light=0.2 * step, full=1.5 * step, logging=0.0, first=1.5 * step)
    assert spent <= 0.02 * training + 1.5 * step
    assert largest_gap(fulls, total) <= 0.05 and len(fulls) >= 22
    assert largest_gap(frames, total) <= 0.05 and len(frames) >= 100
    # Jacobian frames of 3 steps: one every 5 % would cost 60 steps, more than the budget
    # leaves; the split stands, the Jacobian frames are fewer and the gap rule yields.
    frames, fulls, spent, training = simulate_cadence(
        total, step, light=0.2 * step, full=3 * step, logging=0.0, first=3 * step)
    assert spent <= 0.02 * training + 3 * step
    assert largest_gap(fulls, total) > 0.05 and largest_gap(frames, total) <= 0.05
