"""The compiled CPU kernels of `rx.RNN`'s training path (`keras_rnnx._native`).

Outputs are checked against the NumPy equations (tests/reference.py) and gradients against
TensorFlow's autodiff of `keras.layers.RNN`'s generic loop; the fallbacks (XLA, masks, mixed
precision, no compiler, disabled) against the same layer.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest
import reference
import tensorflow as tf

import keras_rnnx as rx
from keras_rnnx import _native

B, T, D, U = 37, 9, 4, 6  # 37 rows: uneven row blocks on two threads
HAVE_COMPILER = bool(os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++"))
OP = "RnnxCellForward"


def test_kernels_are_built_where_a_compiler_is_installed():
    if not HAVE_COMPILER:
        pytest.skip("no C++ compiler on this machine")
    assert _native.load() is not None, _native.status()
    assert _native.status().startswith("in use")


@pytest.fixture(scope="module")
def native(native):
    """The loaded kernels (conftest), with `KERAS_RNNX_NATIVE=1`: these tests check the
    kernels' numbers and where they may run, so rx.RNN must take them wherever they can run,
    measured faster or not (tests/test_native_select.py checks that choice)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_RNNX_NATIVE", "1")
        yield native


@pytest.fixture(params=reference.KINDS)
def kind(request):
    return request.param


def pair(kind, **layer_kwargs):
    """The same cell in `rx.RNN` and in `keras.layers.RNN`, sharing random weights."""
    rng = np.random.default_rng(0)
    fast = rx.RNN(rx.CELL_KINDS[kind](U), **layer_kwargs)
    slow = keras.layers.RNN(rx.CELL_KINDS[kind](U), **layer_kwargs)
    batch = B if layer_kwargs.get("stateful") else None
    for layer in (fast, slow):
        layer.build((batch, T, D))
    weights = [rng.uniform(-0.6, 0.6, w.shape).astype("float32") for w in fast.get_weights()]
    fast.set_weights(weights)
    slow.set_weights(weights)
    return fast, slow, weights


def op_types(fn, *specs):
    graph = tf.function(fn).get_concrete_function(*specs).graph
    return {op.type for op in graph.get_operations()}


def spec(shape=(B, T, D), dtype=tf.float32):
    return tf.TensorSpec(shape, dtype)


OPTIONS = {
    "plain": {},
    "sequences_and_state": dict(return_sequences=True, return_state=True),
    "go_backwards": dict(return_sequences=True, go_backwards=True, return_state=True),
}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_training_outputs_and_gradients(native, kind, option):
    kwargs = OPTIONS[option]
    fast, slow, weights = pair(kind, **kwargs)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(B, T, D)).astype("float32"))
    init = [tf.constant(rng.normal(size=(B, U)).astype("float32"))
            for _ in range(reference.N_STATES[kind])]

    assert OP in op_types(lambda x: fast(x, training=True), spec())
    assert OP not in op_types(lambda x: fast(x, training=False), spec())

    def run(layer):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch([x, *init])
                out = keras.tree.flatten(layer(x, initial_state=init, training=True))
                loss = sum(tf.reduce_sum(tf.sin(o) * (k + 1.0)) for k, o in enumerate(out))
            return out, tape.gradient(loss, [*layer.trainable_weights, x, *init])
        return step()

    out, grads = run(fast)
    ref_seq, ref_states = reference.run(kind, x.numpy().astype("float64"),
                                        [w.astype("float64") for w in weights],
                                        initial_state=[s.numpy() for s in init],
                                        go_backwards=kwargs.get("go_backwards", False))
    expected = ([ref_seq] if kwargs.get("return_sequences") else [ref_seq[:, -1]])
    if kwargs.get("return_state"):
        expected += ref_states
    assert len(out) == len(expected)
    for got, want in zip(out, expected):
        np.testing.assert_allclose(got.numpy(), want, atol=2e-5)

    _, slow_grads = run(slow)
    for got, want in zip(grads, slow_grads):
        scale = float(np.max(np.abs(want.numpy()))) + 1e-6
        np.testing.assert_allclose(got.numpy() / scale, want.numpy() / scale, atol=2e-5)


def test_batch_of_one_and_one_step(native, kind):
    fast, slow, _ = pair(kind, return_sequences=True)
    x = tf.constant(np.random.default_rng(2).normal(size=(1, 1, D)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        a, b = fast(x, training=True), slow(x, training=True)
        loss_a, loss_b = tf.reduce_sum(a ** 2), tf.reduce_sum(b ** 2)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    for ga, gb in zip(tape.gradient(loss_a, fast.trainable_weights),
                      tape.gradient(loss_b, slow.trainable_weights)):
        np.testing.assert_allclose(ga.numpy(), gb.numpy(), atol=1e-6)


def test_stateful_training_carries_the_state(native):
    fast, slow, _ = pair("forget", stateful=True, return_sequences=True)
    rng = np.random.default_rng(3)
    for _ in range(2):
        x = rng.normal(size=(B, T, D)).astype("float32")
        np.testing.assert_allclose(fast(x, training=True).numpy(),
                                   slow(x, training=True).numpy(), atol=1e-5)
    for a, b in zip(fast.states, slow.states):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
        assert np.abs(a.numpy()).max() > 0


@pytest.mark.parametrize("kind", ["forget", "vanilla"])
def test_fit_follows_the_generic_loop(native, kind):
    """model.fit with Keras's CPU default (no XLA): same losses as keras.layers.RNN."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(128, T, D)).astype("float32")
    y = np.sin(x.sum(axis=(1, 2)))[:, None].astype("float32")
    histories = []
    for layer_type in (rx.RNN, keras.layers.RNN):
        keras.utils.set_random_seed(5)
        model = keras.Sequential([keras.Input((T, D)), layer_type(rx.CELL_KINDS[kind](U)),
                                  keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", jit_compile=False)
        histories.append(model.fit(x, y, batch_size=32, epochs=4, shuffle=False,
                                   verbose=0).history["loss"])
    np.testing.assert_allclose(histories[0], histories[1], rtol=1e-5)
    assert histories[0][-1] < histories[0][0]


def test_xla_masks_recurrent_dropout_and_float16_take_the_tensorflow_loop(native):
    fast, slow, _ = pair("forget", return_sequences=True)
    assert OP not in op_types(tf.function(lambda x: fast(x, training=True), jit_compile=True),
                              spec())
    mask = spec((B, T), tf.bool)
    assert OP not in op_types(lambda x, m: fast(x, mask=m, training=True), spec(), mask)
    dropout = rx.RNN(rx.ForgetGateLSTMCell(U, recurrent_dropout=0.2))
    assert OP not in op_types(lambda x: dropout(x, training=True), spec())
    for half in (rx.RNN(rx.ForgetGateLSTMCell(U), dtype="mixed_float16"),
                 rx.RNN(rx.ForgetGateLSTMCell(U, dtype="mixed_float16"))):
        assert OP not in op_types(lambda x: half(x, training=True), spec())
    relu = rx.RNN(rx.ForgetGateLSTMCell(U, activation="relu"))
    assert OP not in op_types(lambda x: relu(x, training=True), spec())
    # ... and XLA training still runs, with the generic loop's numbers.
    x = np.random.default_rng(6).normal(size=(B, T, D)).astype("float32")
    xla = tf.function(lambda x: fast(x, training=True), jit_compile=True)
    np.testing.assert_allclose(xla(x).numpy(), slow(x, training=True).numpy(), atol=1e-5)


def test_kernels_check_their_inputs(native):
    p = tf.zeros((T, B, 4 * U))
    with pytest.raises(tf.errors.InvalidArgumentError, match="recurrent_kernel must have shape"):
        native.rnnx_cell_forward(p, tf.zeros((U, 3 * U)), tf.zeros((B, U)), tf.zeros((B, U)),
                                 cell="forget")
    with pytest.raises(tf.errors.InvalidArgumentError, match="h0 must have shape"):
        native.rnnx_cell_forward(p, tf.zeros((U, 4 * U)), tf.zeros((B + 1, U)),
                                 tf.zeros((B, U)), cell="forget")
    with pytest.raises(tf.errors.InvalidArgumentError, match="p must have shape"):
        native.rnnx_cell_forward(tf.zeros((T, B, 4 * U + 1)), tf.zeros((U, 4 * U)),
                                 tf.zeros((B, U)), tf.zeros((B, U)), cell="forget")


def test_backward_can_leave_the_recurrent_kernel_gradient_to_the_caller(native):
    """With with_d_recurrent_kernel=False (as rx.RNN calls it, computing dR with tf.matmul)
    the other gradients are unchanged and dR is an empty [0, width] tensor."""
    rng = np.random.default_rng(9)
    p = tf.constant(rng.normal(size=(T, B, 4 * U)).astype("float32"))
    r = tf.constant(rng.normal(scale=0.3, size=(U, 4 * U)).astype("float32"))
    h0, c0, dh_last, dc_last = (tf.constant(rng.normal(size=(B, U)).astype("float32"))
                                for _ in range(4))
    h, c, gates = native.rnnx_cell_forward(p, r, h0, c0, cell="forget")
    dh = tf.constant(rng.normal(size=(T, B, U)).astype("float32"))
    args = (r, h0, c0, h, c, gates, dh, dh_last, dc_last)
    full = native.rnnx_cell_backward(*args, cell="forget")
    part = native.rnnx_cell_backward(*args, cell="forget", with_d_recurrent_kernel=False)
    for k in (0, 2, 3):
        np.testing.assert_array_equal(part[k].numpy(), full[k].numpy())
    assert part[1].shape == (0, 4 * U)
    h_prev = np.concatenate([h0.numpy()[None], h.numpy()[:-1]]).reshape(-1, U)
    np.testing.assert_allclose(full[1].numpy(), h_prev.T @ full[0].numpy().reshape(-1, 4 * U),
                               rtol=1e-4, atol=1e-4)


def test_saved_models_do_not_contain_the_kernels(native, tmp_path):
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((T, D)), rx.RNN(rx.ForgetGateLSTMCell(U)),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse", jit_compile=False)
    x = np.random.default_rng(8).normal(size=(64, T, D)).astype("float32")
    model.fit(x, x[:, 0, :1], epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    model.export(tmp_path / "served", verbose=False)
    with zipfile.ZipFile(tmp_path / "m.keras") as archive:
        assert not any(b"Rnnx" in archive.read(name) for name in archive.namelist())
    for root, _, files in os.walk(tmp_path / "served"):
        for name in files:
            with open(os.path.join(root, name), "rb") as file:
                assert b"RnnxCell" not in file.read(), name


FALLBACK = """
    import numpy as np, keras, tensorflow as tf, keras_rnnx as rx
    from keras_rnnx import _native
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 7, 3)).astype("float32")
    model = keras.Sequential([keras.Input((7, 3)), rx.RNN(rx.ForgetGateLSTMCell(5)),
                              keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse", jit_compile=False)
    loss = model.fit(x, x[:, 0, :1], epochs=2, verbose=0).history["loss"][-1]
    print(repr(_native.status()))
    print(repr(loss))
"""


def run_fallback(env_update):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **env_update}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(FALLBACK)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    status, loss = done.stdout.strip().splitlines()[-2:]
    return eval(status), float(loss), done.stderr  # noqa: S307 - our own repr() output


def test_without_the_kernels_training_takes_the_tensorflow_loop(tmp_path):
    disabled, loss, _ = run_fallback({"KERAS_RNNX_NATIVE": "0"})
    assert disabled == "not in use: disabled by KERAS_RNNX_NATIVE"
    broken, broken_loss, stderr = run_fallback({"CXX": "/bin/false",
                                                "KERAS_RNNX_CACHE": str(tmp_path)})
    assert broken.startswith("not in use: the compiler failed"), broken
    assert "compiling the CPU kernels" in stderr
    assert not list(tmp_path.glob("*.so"))
    assert np.isfinite(loss) and broken_loss == pytest.approx(loss, rel=1e-6)
