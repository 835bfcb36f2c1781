"""rx.RNN's inference kernel (`RnnxCellInfer`, and under XLA the custom call
"rnnx_cell_infer"): outputs equal to the NumPy equations of the four cells and to Keras's
loop in eager mode, in a `tf.function`, under XLA and in `predict_on_batch`; taken only where
it measured faster; never in graphs traced for export or conversion. No test asserts on how
fast anything runs."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_rnnx as rx
from keras_rnnx import rnn
from keras_rnnx._native import select

T, D = 7, 5
INFER = "RnnxCellInfer"
CUSTOM_CALL = "XlaCustomCallV2"
KINDS = ("vanilla", "cec", "original", "forget")


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def numpy_forward(kind, x, kernel, recurrent, bias, h, c, backwards=False):
    """The lecture's equations in float64, step by step: (h for every step, h_T, c_T)."""
    units = recurrent.shape[0]
    steps = range(x.shape[1] - 1, -1, -1) if backwards else range(x.shape[1])
    out = []
    for t in steps:
        a = x[:, t] @ kernel + h @ recurrent + bias
        blocks = [a[:, k * units:(k + 1) * units] for k in range(a.shape[1] // units)]
        if kind == "forget":
            i, f = sigmoid(blocks[0]), sigmoid(blocks[1])
            z, o = np.tanh(blocks[2]), sigmoid(blocks[3])
            c = f * c + i * z
            h = o * np.tanh(c)
        elif kind == "original":
            i, z, o = sigmoid(blocks[0]), np.tanh(blocks[1]), sigmoid(blocks[2])
            c = c + i * z
            h = o * np.tanh(c)
        elif kind == "cec":
            c = c + np.tanh(blocks[0])
            h = np.tanh(c)
        else:
            h = c = np.tanh(blocks[0])
        out.append(h)
    return np.stack(out, axis=1), h, c


def cell_forward(kind, cell, x, h0=None, c0=None, backwards=False):
    """`numpy_forward` with a Keras cell's weights, in float64, from zero states by default."""
    zeros = np.zeros((x.shape[0], cell.units))
    bias = cell.bias.numpy() if cell.use_bias else 0.0
    return numpy_forward(kind, x.astype(np.float64), cell.kernel.numpy(),
                         cell.recurrent_kernel.numpy(), bias,
                         zeros if h0 is None else h0.astype(np.float64),
                         zeros if c0 is None else c0.astype(np.float64), backwards)


def model_for(kind, units, *, sequences=False, backwards=False, seed=0, steps=T, move=0.3):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((steps, D))
    layer = rx.RNN(rx.CELL_KINDS[kind](units), return_sequences=sequences,
                   go_backwards=backwards, return_state=True)
    model = keras.Model(inputs, layer(inputs))
    # Weights moved `move` (standard deviation) off their initialisation, so that every gate
    # matters.
    rng = np.random.default_rng(seed)
    model.set_weights([w + move * rng.normal(size=w.shape).astype("float32")
                       for w in model.get_weights()])
    return model, layer


def assert_equations(got, expected, name=""):
    """The kernel's outputs against the float64 equations, within 2e-5 of their scale."""
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, atol=2e-5 * (1 + np.abs(e).max()), rtol=0,
                                   err_msg=name)


def graph_ops(fn, spec, jit=False):
    concrete = tf.function(fn, jit_compile=jit).get_concrete_function(spec)
    return {op.type for op in concrete.graph.get_operations()}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sequences,backwards", [(False, False), (True, True)])
# Batch 1 and 9 with one column block run whole steps on one thread; batch 2 with units 48 (the
# gated cells: three column blocks) splits each step's columns between the threads; batch 37
# runs row blocks with remainder tiles; units 10 read padded copies of the weights, 48 and 80
# (cec and vanilla: a block of four vectors and one of one) the weights in place.
@pytest.mark.parametrize("batch,units", [(1, 16), (9, 10), (2, 48), (37, 80)])
def test_inference_matches_the_equations_on_every_path(native, monkeypatch, kind, sequences,
                                                       backwards, batch, units):
    monkeypatch.setenv("KERAS_RNNX_NATIVE", "1")
    model, layer = model_for(kind, units, sequences=sequences, backwards=backwards)
    cell = layer.cell
    x = np.random.default_rng(1).normal(size=(batch, T, D)).astype("float32")
    h_seq, h_last, c_last = cell_forward(kind, cell, x, backwards=backwards)
    expected = [h_seq if sequences else h_last, h_last] + ([c_last] if kind != "vanilla" else [])
    paths = {
        "eager": lambda: model(x, training=False),
        "tf.function": lambda: tf.function(lambda v: model(v, training=False))(x),
        "XLA": lambda: tf.function(lambda v: model(v, training=False), jit_compile=True)(x),
        "predict_on_batch": lambda: model.predict_on_batch(x),
    }
    for name, run in paths.items():
        got = [np.asarray(v) for v in run()]
        assert len(got) == len(expected), name
        assert_equations(got, expected, name)


@pytest.mark.parametrize("kind", ["vanilla", "forget"])
def test_inference_starts_from_the_given_state(native, monkeypatch, kind):
    monkeypatch.setenv("KERAS_RNNX_NATIVE", "1")
    units, batch = 48, 3
    model, layer = model_for(kind, units, sequences=True)
    cell = layer.cell
    rng = np.random.default_rng(2)
    x = rng.normal(size=(batch, T, D)).astype("float32")
    h0 = rng.normal(size=(batch, units)).astype("float32")
    c0 = rng.normal(size=(batch, units)).astype("float32") if kind != "vanilla" else h0
    state = [h0, c0] if kind != "vanilla" else [h0]
    h_seq, h_last, c_last = cell_forward(kind, cell, x, h0, c0)
    for name, run in {"eager": lambda: layer(x, initial_state=state, training=False),
                      "tf.function": lambda: tf.function(
                          lambda v, s: layer(v, initial_state=s, training=False))(x, state)
                      }.items():
        assert_equations([np.asarray(v) for v in run()], [h_seq, h_last, c_last], name)
    graph = tf.function(lambda v, s: layer(v, initial_state=s, training=False))
    ops = {op.type for op in graph.get_concrete_function(x, state).graph.get_operations()}
    assert INFER in ops


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch,units", [(4, 128), (37, 80)])
def test_long_sequences_on_several_threads_match_the_equations(native, monkeypatch, kind,
                                                               batch, units):
    """Enough work per call for the kernel to use a second thread (calls under 2e6
    multiply-adds run on one): at batch 4 the gated cells split each step's column blocks
    between the threads (cec and vanilla, with a quarter of the weights to read a step, stay on
    one), batch 37 runs row blocks. Over 40 steps float32 parts from the float64 equations by more
    than 2e-5 in the CEC (its carousel adds up every step's rounding), for Keras's loop too, so
    the tolerance is the larger of that and 4 × Keras's own distance from the equations."""
    steps = 40
    # Weights moved little enough for the recurrence not to turn chaotic (where float32 and
    # float64 part ways entirely).
    model, layer = model_for(kind, units, sequences=True, seed=3, steps=steps,
                             move=0.3 / np.sqrt(units))
    cell = layer.cell
    x = np.random.default_rng(4).normal(size=(batch, steps, D)).astype("float32")
    expected = cell_forward(kind, cell, x)
    monkeypatch.setenv("KERAS_RNNX_NATIVE", "0")
    keras_loop = [np.asarray(v) for v in model(x, training=False)]
    monkeypatch.setenv("KERAS_RNNX_NATIVE", "1")
    for name, run in {"eager": lambda: model(x, training=False),
                      "XLA": lambda: tf.function(lambda v: model(v, training=False),
                                                 jit_compile=True)(x)}.items():
        got = [np.asarray(v) for v in run()]
        for g, k, e in zip(got, keras_loop, expected):
            atol = max(2e-5 * (1 + np.abs(e).max()), 4 * np.abs(k - e).max())
            np.testing.assert_allclose(g, e, atol=atol, rtol=0, err_msg=name)


@pytest.mark.parametrize("jit", [False, True])
def test_inference_from_several_threads_at_once(native, monkeypatch, jit):
    """Calls from six Python threads at once, in a `tf.function` (the op) and under XLA (the
    custom call), both on the kernel's own helper threads, which take one call at a time:
    calls that find them busy run on their own thread. Batch 1 and 2 split each step's columns
    between threads (a part whose thread is late or never comes is run by the thread waiting
    on it), batch 20 runs row blocks. The results are the equations' all the same."""
    import threading

    monkeypatch.setenv("KERAS_RNNX_NATIVE", "1")
    steps, units = 40, 128
    model, layer = model_for("forget", units, sequences=True, steps=steps,
                             move=0.3 / np.sqrt(units))
    fn = tf.function(lambda v: model(v, training=False), jit_compile=jit)
    cell = layer.cell
    inputs = [np.random.default_rng(seed).normal(size=(batch, steps, D)).astype("float32")
              for seed, batch in enumerate([1, 2, 20, 2, 1, 20])]
    for x in inputs[:3]:  # one trace per shape before the threads start
        fn(x)
    assert (CUSTOM_CALL if jit else INFER) in graph_ops(
        lambda v: model(v, training=False), tf.TensorSpec((2, steps, D)), jit)
    results, errors = {}, []

    def run(k):
        try:
            for _ in range(20):
                results[k] = [np.asarray(v) for v in fn(inputs[k])]
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for k, x in enumerate(inputs):
        assert_equations(results[k], cell_forward("forget", cell, x), f"batch {x.shape[0]}")


# The subprocess scripts' batch-1 model (T = 40, units 128: its steps are split between
# threads) and how they save it with their output h (the script's last argument: the path).
BATCH_1_MODEL = """
    import keras, keras_rnnx as rx
    os.environ["KERAS_RNNX_NATIVE"] = "1"
    keras.utils.set_random_seed(0)
    layer = rx.RNN(rx.ForgetGateLSTMCell(128))
    model = keras.Sequential([keras.Input((40, 5)), layer])
    x = np.random.default_rng(0).normal(size=(1, 40, 5)).astype("float32")
"""
SAVE_H = """
    cell = layer.cell
    np.savez(sys.argv[-1], x=x, h=h, kernel=cell.kernel.numpy(), bias=cell.bias.numpy(),
             recurrent=cell.recurrent_kernel.numpy())
"""


def run_saving(script, tmp_path, *args):
    """Runs `script` (indented source) in a fresh Python with `args` and a path to save to:
    its last line of output, split, and the arrays it saved."""
    path = tmp_path / f"saved-{len(list(tmp_path.iterdir()))}.npz"
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args, str(path)],
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()[-1].split(), dict(np.load(path))


def assert_saved_equations(saved):
    """The saved batch-1 h is the float64 NumPy equations' h_T from zero states."""
    zeros = np.zeros((1, 128))
    expected = numpy_forward("forget", saved["x"].astype(np.float64), saved["kernel"],
                             saved["recurrent"], saved["bias"], zeros, zeros)
    assert_equations([saved["h"]], [expected[1]])


INTRA_OP = """
    import os, sys, numpy as np, tensorflow as tf
    if sys.argv[1] != "default":
        tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
""" + BATCH_1_MODEL + """
    fn = tf.function(lambda v: model(v, training=False))
    graph = fn.get_concrete_function(tf.TensorSpec(x.shape)).graph
    assert "RnnxCellInfer" in {op.type for op in graph.get_operations()}
    before = len(os.listdir("/proc/self/task"))
    h = fn(x).numpy()
    print(len(os.listdir("/proc/self/task")) - before)
""" + SAVE_H


def test_inference_takes_no_more_threads_than_the_intra_op_pool(native, tmp_path):
    """A batch-1 call whose steps are split between threads (T = 40, units 128) starts the
    kernel's helper threads (one fewer than the CPUs), but none where TensorFlow's intra-op
    pool has one thread; the outputs are the equations' either way, and the same bits (each
    unit's sums run in the same order on any thread)."""
    if not os.path.isdir("/proc/self/task"):
        pytest.skip("counts threads in /proc/self/task")
    runs = {}
    for threads in ("1", "default"):
        (started,), saved = run_saving(INTRA_OP, tmp_path, threads)
        runs[threads] = int(started), saved
    cpus = len(os.sched_getaffinity(0))
    assert runs["1"][0] == 0
    assert runs["default"][0] == cpus - 1
    for _, saved in runs.values():
        assert_saved_equations(saved)
    np.testing.assert_array_equal(runs["1"][1]["h"], runs["default"][1]["h"])


SHARED_CPU = """
    import os, sys, time, numpy as np
""" + BATCH_1_MODEL + """
    home = os.sched_getaffinity(0)
    before = set(os.listdir("/proc/self/task"))
    h = np.asarray(model(x, training=False))  # eager: the op runs on this thread
    helpers = sorted(int(t) for t in set(os.listdir("/proc/self/task")) - before)

    def cpu_of(tid):  # the CPU the thread last ran on (/proc/<tid>/stat field 39)
        with open(f"/proc/self/task/{tid}/stat") as file:
            stat = file.read()
        return int(stat[stat.rindex(")") + 2:].split()[36])

    away = 0
    for _ in range(40):
        cpu = cpu_of(helpers[0])  # spinning there since the last call
        os.sched_setaffinity(0, {cpu})  # this thread only
        again = np.asarray(model(x, training=False))
        away += cpu_of(helpers[0]) != cpu
        os.sched_setaffinity(0, home)
        assert np.array_equal(again, h)
    time.sleep(0.05)
    restored = all(os.sched_getaffinity(t) == home for t in helpers)
    print(len(helpers), away, restored)
""" + SAVE_H


def test_a_helper_on_the_calling_threads_cpu_is_moved_off_it(native, tmp_path):
    """Forty batch-1 calls (steps split between threads), each from a thread pinned to the CPU
    where the helper is spinning since the call before: the helper is moved off that CPU for
    the call, so that the two do not share it (without the move it stayed there after 26 to 32
    of 40 calls on a 2-core AMD EPYC), and takes its starting affinity back afterwards. The
    outputs stay the equations', bit for bit the same in every call."""
    if len(os.sched_getaffinity(0)) < 2 or not os.path.isdir("/proc/self/task"):
        pytest.skip("needs two CPUs and /proc/self/task")
    (helpers, away, restored), saved = run_saving(SHARED_CPU, tmp_path)
    assert int(helpers) == len(os.sched_getaffinity(0)) - 1
    assert int(away) >= 30, f"the helper was on another CPU after only {away} of 40 calls"
    assert restored == "True", "a helper kept a narrowed CPU affinity"
    assert_saved_equations(saved)


@pytest.mark.parametrize("kind", KINDS)
def test_inference_graphs_hold_the_kernel_and_keras_loop_gives_the_same(native, monkeypatch,
                                                                        kind):
    monkeypatch.setenv("KERAS_RNNX_NATIVE", "1")
    model, _ = model_for(kind, 12, sequences=True)
    spec = tf.TensorSpec((4, T, D), tf.float32)
    assert INFER in graph_ops(lambda v: model(v, training=False), spec)
    assert CUSTOM_CALL in graph_ops(lambda v: model(v, training=False), spec, jit=True)
    x = np.random.default_rng(2).normal(size=(4, T, D)).astype("float32")
    fast = [np.asarray(v) for v in model(x, training=False)]
    monkeypatch.setenv("KERAS_RNNX_NATIVE", "0")
    assert INFER not in graph_ops(lambda v: model(v, training=False), spec)
    loop = [np.asarray(v) for v in model(x, training=False)]
    for a, b in zip(fast, loop):
        np.testing.assert_allclose(a, b, atol=2e-5 * (1 + np.abs(b).max()), rtol=0)


@pytest.mark.parametrize("kernels_faster", [False, True])
def test_inference_graph_follows_the_measurement(native, monkeypatch, kernels_faster):
    """Timings injected as this process's decision for the inference shape class: the graph
    holds the kernel exactly when it measured faster than Keras's loop."""
    monkeypatch.delenv("KERAS_RNNX_NATIVE", raising=False)
    fast, slow = (1.0, 2.0) if kernels_faster else (2.0, 1.0)
    timings = {"kernels": [fast] * 3, "loop": [slow] * 3}
    for suffix in ("", "-xla"):
        key = select.shape_key(f"forget-inference{suffix}", 6, 4, select._threads())
        monkeypatch.setitem(select._decisions, key, {**timings,
                                                      "use_kernels": select.faster(timings)})
    model, _ = model_for("forget", 6)
    spec = tf.TensorSpec((4, T, D), tf.float32)
    assert (INFER in graph_ops(lambda v: model(v, training=False), spec)) is kernels_faster
    assert (CUSTOM_CALL in graph_ops(lambda v: model(v, training=False), spec, jit=True)) \
        is kernels_faster


@pytest.mark.parametrize("xla", [False, True])
def test_real_inference_measurement(native, xla):
    model, layer = model_for("vanilla", 6)
    timings = rnn._measure_inference(layer, native, "vanilla", 8, xla)
    assert len(timings["kernels"]) == len(timings["loop"]) == select.ROUNDS
    assert all(s > 0 for s in timings["kernels"] + timings["loop"])


def test_exported_and_converted_graphs_never_hold_the_kernel(native, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_RNNX_NATIVE", "1")
    inputs = keras.Input((T, D), batch_size=3)  # a fixed batch converts to builtin ops
    model = keras.Model(inputs, keras.layers.Dense(1)(rx.RNN(rx.ForgetGateLSTMCell(8))(inputs)))
    x = np.random.default_rng(3).normal(size=(3, T, D)).astype("float32")
    model.predict_on_batch(x)  # traced with the kernel first
    model.export(str(tmp_path / "exported"), verbose=False)
    tf.saved_model.save(model, str(tmp_path / "saved"))
    for path in ("exported", "saved"):
        content = (tmp_path / path / "saved_model.pb").read_bytes()
        assert b"RnnxCell" not in content and b"rnnx_cell_infer" not in content, path
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    assert converter.convert()  # builtin ops only would fail on a custom op
    loaded = tf.saved_model.load(str(tmp_path / "exported"))
    np.testing.assert_allclose(np.asarray(loaded.serve(x)), model.predict_on_batch(x),
                               atol=1e-5)


def test_gradients_through_inference_take_keras_loop(native, monkeypatch):
    """Under a gradient tape (saliency maps, the probe) inference keeps Keras's loop, which
    has a gradient: the same gradients as with the kernels off, eager and in a function."""
    monkeypatch.setenv("KERAS_RNNX_NATIVE", "1")
    model, _ = model_for("forget", 8)
    x = tf.constant(np.random.default_rng(4).normal(size=(3, T, D)).astype("float32"))

    def saliency(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            out = model(v, training=False)[0]
        return tape.gradient(out, v)

    eager = saliency(x).numpy()
    traced = tf.function(saliency)(x).numpy()
    monkeypatch.setenv("KERAS_RNNX_NATIVE", "0")
    reference = saliency(x).numpy()
    np.testing.assert_allclose(eager, reference, atol=1e-6)
    np.testing.assert_allclose(traced, reference, atol=1e-6)
