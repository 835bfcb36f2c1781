"""`rx.RNN`'s fast path equals `keras.layers.RNN`'s generic loop, option by option.

The fast path is taken in training, so the comparisons call the layers with training=True
(without dropout that is deterministic).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import reference
import tensorflow as tf

import keras_rnnx as rx

B, T, D, U = 3, 6, 4, 5
OPTIONS = {
    "plain": {},
    "sequences_and_state": dict(return_sequences=True, return_state=True),
    "go_backwards": dict(return_sequences=True, go_backwards=True),
    "unroll": dict(return_sequences=True, unroll=True),
    "zero_output_for_mask": dict(return_sequences=True, zero_output_for_mask=True),
}


@pytest.fixture(params=reference.KINDS)
def kind(request):
    return request.param


def pair(kind, cell_kwargs=None, batch=None, **layer_kwargs):
    """The same cell in `rx.RNN` and in `keras.layers.RNN`, sharing random weights."""
    rng = np.random.default_rng(0)
    fast = rx.RNN(rx.CELL_KINDS[kind](U, **(cell_kwargs or {})), **layer_kwargs)
    slow = keras.layers.RNN(rx.CELL_KINDS[kind](U, **(cell_kwargs or {})), **layer_kwargs)
    for layer in (fast, slow):
        layer.build((batch, T, D))
    weights = [rng.uniform(-0.6, 0.6, w.shape).astype("float32") for w in fast.get_weights()]
    fast.set_weights(weights)
    slow.set_weights(weights)
    return fast, slow


def inputs(seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, T, D)).astype("float32")
    mask = np.ones((B, T), bool)
    mask[0, 4:] = False
    mask[2, 1] = False
    return x, mask


def assert_same(a, b, atol=1e-5):
    a, b = keras.tree.flatten(a), keras.tree.flatten(b)
    assert len(a) == len(b)
    for left, right in zip(a, b):
        np.testing.assert_allclose(np.asarray(left), np.asarray(right), atol=atol)


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
def test_fast_path_equals_generic_loop(kind, option, masked):
    fast, slow = pair(kind, **OPTIONS[option])
    x, mask = inputs()
    mask = mask if masked else None
    assert_same(fast(x, mask=mask, training=True), slow(x, mask=mask, training=True))
    initial = [np.full((B, U), 0.3, "float32")] * reference.N_STATES[kind]
    assert_same(fast(x, mask=mask, initial_state=initial, training=True),
                slow(x, mask=mask, initial_state=initial, training=True))


def test_fast_path_gradients_equal_generic_loop(kind):
    fast, slow = pair(kind, return_sequences=True)
    x, mask = inputs()
    weights = tf.constant(np.random.default_rng(2).normal(size=(B, T, U)), tf.float32)

    def gradients(layer):
        xt = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(layer(xt, mask=mask, training=True) * weights)
        return tape.gradient(loss, [xt] + [v.value for v in layer.trainable_variables])

    assert_same(gradients(fast), gradients(slow), atol=1e-5)


def test_fast_path_dropout_equals_generic_loop(kind):
    cell_kwargs = dict(dropout=0.3, recurrent_dropout=0.4, seed=11)
    fast, slow = pair(kind, cell_kwargs=cell_kwargs, return_sequences=True)
    x, _ = inputs()
    assert_same(fast(x, training=True), slow(x, training=True))
    assert_same(fast(x, training=False), slow(x, training=False))


def test_fast_path_stateful(kind):
    fast, slow = pair(kind, return_sequences=True, stateful=True, batch=B)
    x, _ = inputs()
    for _ in range(2):
        assert_same(fast(x, training=True), slow(x, training=True))
    fast.reset_state()
    slow.reset_state()
    assert_same(fast(x, training=True), slow(x, training=True))


@pytest.mark.parametrize("mode", ["tf_function", "xla"])
def test_fast_path_in_graphs(kind, mode):
    fast, slow = pair(kind, return_sequences=True)
    x, mask = inputs()
    run = tf.function(lambda layer, x: layer(x, mask=mask, training=True),
                      jit_compile=mode == "xla")
    assert_same(run(fast, tf.constant(x)), slow(x, mask=mask, training=True))


def test_fast_path_bidirectional_and_fit(kind):
    keras.utils.set_random_seed(0)
    x, _ = inputs()
    y = np.random.default_rng(3).normal(size=(B, 1)).astype("float32")

    def model(layer_cls):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((T, D)),
            keras.layers.Bidirectional(layer_cls(rx.CELL_KINDS[kind](U), return_sequences=True)),
            layer_cls(rx.CELL_KINDS[kind](U)),
            keras.layers.Dense(1),
        ])
        # A small step: at lr 0.1 the CEC's loss rises (1.6, 0.8, 3.0) and amplifies float32
        # rounding (single-step gradients agree to 2e-6) into 1.6e-4 differences of weights.
        model.compile(optimizer=keras.optimizers.SGD(0.02), loss="mse")
        return model

    fast, slow = model(rx.RNN), model(keras.layers.RNN)
    slow.set_weights(fast.get_weights())
    assert type(fast.layers[0].forward_layer) is rx.RNN
    fast_history = fast.fit(x, y, epochs=3, verbose=0).history["loss"]
    slow_history = slow.fit(x, y, epochs=3, verbose=0).history["loss"]
    np.testing.assert_allclose(fast_history, slow_history, rtol=1e-5)
    assert_same(fast.get_weights(), slow.get_weights(), atol=1e-5)


def test_fast_path_mixed_float16(kind):
    fast, slow = pair(kind, return_sequences=True)
    mixed = rx.RNN(rx.CELL_KINDS[kind](U, dtype="mixed_float16"), return_sequences=True,
                   dtype="mixed_float16")
    mixed.build((None, T, D))
    mixed.set_weights(fast.get_weights())
    x, mask = inputs()
    out = mixed(x, mask=mask, training=True)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    np.testing.assert_allclose(np.asarray(out, np.float32), slow(x, mask=mask), atol=2e-2)


def test_generic_cells_fall_back(kind):
    """Keras cells and stacked cells go through the generic loop, unchanged."""
    x, _ = inputs()
    for cell in (keras.layers.LSTMCell(U), [rx.CELL_KINDS[kind](U), rx.VanillaRNNCell(2)]):
        ours = rx.RNN(cell if not isinstance(cell, list) else list(cell))
        ours.build((None, T, D))
        theirs = keras.layers.RNN.from_config(
            {**ours.get_config(), "cell": keras.saving.serialize_keras_object(ours.cell)})
        theirs.build((None, T, D))
        theirs.set_weights(ours.get_weights())
        assert_same(ours(x), theirs(x), atol=1e-6)


def test_cudnn_path_is_declined_on_cpu():
    """On a machine without a GPU the forget-gate cell silently takes the XLA-able path."""
    fast, slow = pair("forget", return_sequences=True)
    x, _ = inputs()
    assert_same(fast(x, training=True), slow(x, training=True))
    if not tf.config.list_physical_devices("GPU"):
        assert fast.supports_jit
