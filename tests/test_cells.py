"""The four lecture cells against a NumPy reference, on every Keras path they must work on."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import reference
import tensorflow as tf

import keras_rnnx as rx

CELLS = {
    "vanilla": rx.VanillaRNNCell,
    "cec": rx.CECCell,
    "original": rx.OriginalLSTMCell,
    "forget": rx.ForgetGateLSTMCell,
}
B, T, D, U = 3, 7, 4, 5


@pytest.fixture(params=reference.KINDS)
def kind(request):
    return request.param


def random_weights(kind, rng, input_dim=D, units=U, scale=0.6):
    n = reference.N_BLOCKS[kind]
    return [
        rng.uniform(-scale, scale, (input_dim, n * units)),
        rng.uniform(-scale, scale, (units, n * units)),
        rng.uniform(-scale, scale, (n * units,)),
    ]


def make_layer(kind, rng, layer_cls=keras.layers.RNN, dtype="float32", cell_kwargs=None,
               batch_size=None, **kw):
    """An RNN layer of `kind`, built, with random weights; returns (layer, weights)."""
    cell = CELLS[kind](U, dtype=dtype, **(cell_kwargs or {}))
    layer = layer_cls(cell, dtype=dtype, **kw)
    layer.build((batch_size, None, D))
    weights = random_weights(kind, rng)
    layer.set_weights([w.astype(layer.variable_dtype) for w in weights])
    return layer, weights


def sequences(rng, batch=B, steps=T, dtype="float32"):
    return rng.normal(size=(batch, steps, D)).astype(dtype)


def n_states(kind):
    return reference.N_STATES[kind]


# --- numerics -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["eager", "tf_function", "xla"])
def test_matches_numpy_reference(kind, mode):
    rng = np.random.default_rng(0)
    layer, weights = make_layer(kind, rng, return_sequences=True, return_state=True)
    x = sequences(rng)
    initial = [rng.normal(size=(B, U)).astype("float32") * 0.5 for _ in range(n_states(kind))]

    def run(x, initial):
        return layer(x, initial_state=initial)

    if mode == "tf_function":
        run = tf.function(run)
    elif mode == "xla":
        run = tf.function(run, jit_compile=True)
    outputs, *states = run(tf.constant(x), [tf.constant(s) for s in initial])
    expected_outputs, expected_states = reference.run(kind, x.astype(np.float64), weights, initial)
    np.testing.assert_allclose(outputs, expected_outputs, atol=1e-5)
    assert len(states) == n_states(kind)
    for got, want in zip(states, expected_states):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_golden_values_with_constant_initializers():
    """Hand-computed values for one step of each cell, weights all 0.1, x = 1, states 0."""
    x = np.ones((1, 1, 2), "float32")
    constant = keras.initializers.Constant(0.1)
    args = dict(kernel_initializer=constant, recurrent_initializer=constant,
                bias_initializer="zeros")
    a = 0.2  # x @ kernel: two inputs of 1 times 0.1
    s = 1 / (1 + np.exp(-a))
    s_i = 1 / (1 + np.exp(-(a - 3.0)))  # original cell: input-gate bias starts at -3
    s_o = 1 / (1 + np.exp(-(a - 1.0)))  # ... and output-gate bias at -1
    s_forget = 1 / (1 + np.exp(-(a + 1.0)))  # unit forget bias, unused with c_prev = 0
    assert s_forget > 0
    expected = {
        "vanilla": np.tanh(a),
        "cec": np.tanh(np.tanh(a)),
        "original": s_o * np.tanh(s_i * np.tanh(a)),
        "forget": s * np.tanh(s * np.tanh(a)),
    }
    for kind, cls in CELLS.items():
        h = keras.layers.RNN(cls(1, **args))(x)
        np.testing.assert_allclose(np.asarray(h).item(), expected[kind], rtol=1e-6, err_msg=kind)


def test_forget_gate_cell_equals_keras_lstm_cell_both_ways():
    rng = np.random.default_rng(1)
    x = sequences(rng)
    ours = keras.layers.RNN(rx.ForgetGateLSTMCell(U), return_sequences=True)
    theirs = keras.layers.RNN(keras.layers.LSTMCell(U), return_sequences=True)
    ours.build((None, T, D))
    theirs.build((None, T, D))
    assert [w.shape for w in ours.get_weights()] == [w.shape for w in theirs.get_weights()]
    np.testing.assert_array_equal(ours.cell.bias.numpy()[U:2 * U], 1.0)

    ours.set_weights(theirs.get_weights())
    np.testing.assert_allclose(ours(x), theirs(x), atol=1e-6)
    theirs.set_weights([w * 0.5 + 0.1 for w in theirs.get_weights()])
    ours_weights = [w * 1.5 for w in theirs.get_weights()]
    ours.set_weights(ours_weights)
    theirs.set_weights(ours.get_weights())
    np.testing.assert_allclose(theirs(x), ours(x), atol=1e-6)


def test_gradients_match_central_finite_differences(kind):
    rng = np.random.default_rng(2)
    layer, _ = make_layer(kind, rng, dtype="float64", return_sequences=True)
    x = tf.constant(rng.normal(size=(2, 4, D)))
    probe = tf.constant(rng.normal(size=(2, 4, U)))

    def loss():
        return tf.reduce_sum(layer(x) * probe)

    variables = [layer.cell.kernel, layer.cell.recurrent_kernel, layer.cell.bias]
    with tf.GradientTape() as tape:
        value = loss()
    grads = tape.gradient(value, [v.value for v in variables])
    eps = 1e-6
    for variable, grad in zip(variables, grads):
        base = variable.numpy()
        flat = base.reshape(-1)
        for index in rng.choice(flat.size, size=min(flat.size, 12), replace=False):
            shifted = flat.copy()
            shifted[index] += eps
            variable.assign(shifted.reshape(base.shape))
            plus = float(loss())
            shifted[index] -= 2 * eps
            variable.assign(shifted.reshape(base.shape))
            minus = float(loss())
            variable.assign(base)
            numeric = (plus - minus) / (2 * eps)
            np.testing.assert_allclose(
                np.asarray(grad).reshape(-1)[index], numeric, rtol=1e-6, atol=1e-8,
                err_msg=f"{kind} {variable.path}[{index}]",
            )

    with tf.GradientTape() as tape:
        tape.watch(x)
        value = loss()
    grad_x = tape.gradient(value, x).numpy()
    xv = x.numpy()
    for index in [(0, 0, 0), (1, 3, D - 1), (0, 2, 1)]:
        shifted = xv.copy()
        shifted[index] += eps
        plus = float(tf.reduce_sum(layer(shifted) * probe))
        shifted[index] -= 2 * eps
        minus = float(tf.reduce_sum(layer(shifted) * probe))
        np.testing.assert_allclose(grad_x[index], (plus - minus) / (2 * eps), rtol=1e-6,
                                   atol=1e-8)


# --- keras.layers.RNN options ---------------------------------------------------------------


@pytest.mark.parametrize("layer_cls", [keras.layers.RNN, rx.RNN], ids=["keras_RNN", "rx_RNN"])
def test_return_options_and_go_backwards(kind, layer_cls):
    rng = np.random.default_rng(3)
    x = sequences(rng)
    _, weights = make_layer(kind, rng)
    for go_backwards in (False, True):
        expected, states = reference.run(kind, x.astype(np.float64), weights,
                                         go_backwards=go_backwards)
        last = keras.layers.RNN(CELLS[kind](U), go_backwards=go_backwards)
        last.build((None, T, D))
        last.set_weights(weights)
        np.testing.assert_allclose(last(x), expected[:, -1], atol=1e-5)
        seq = layer_cls(CELLS[kind](U), return_sequences=True, return_state=True,
                        go_backwards=go_backwards)
        seq.build((None, T, D))
        seq.set_weights(weights)
        outputs, *final = seq(x)
        np.testing.assert_allclose(outputs, expected, atol=1e-5)
        for got, want in zip(final, states):
            np.testing.assert_allclose(got, want, atol=1e-5)


def test_unroll(kind):
    rng = np.random.default_rng(4)
    layer, weights = make_layer(kind, rng, return_sequences=True, unroll=True)
    x = sequences(rng)
    expected, _ = reference.run(kind, x.astype(np.float64), weights)
    np.testing.assert_allclose(layer(x), expected, atol=1e-5)
    np.testing.assert_allclose(tf.function(layer)(x), expected, atol=1e-5)


def test_stateful_carries_state_between_calls_and_resets(kind):
    rng = np.random.default_rng(5)
    layer, weights = make_layer(kind, rng, return_sequences=True, stateful=True, batch_size=B)
    x = sequences(rng, steps=2 * T)
    whole, _ = reference.run(kind, x.astype(np.float64), weights)
    first = layer(x[:, :T])
    second = layer(x[:, T:])
    np.testing.assert_allclose(np.concatenate([first, second], axis=1), whole, atol=1e-5)
    layer.reset_state()
    fresh, _ = reference.run(kind, x[:, T:].astype(np.float64), weights)
    np.testing.assert_allclose(layer(x[:, T:]), fresh, atol=1e-5)


@pytest.mark.parametrize("how", ["masking_layer", "mask_argument"])
def test_masks_carry_state_over_masked_steps(kind, how):
    rng = np.random.default_rng(6)
    layer, weights = make_layer(kind, rng, return_sequences=True, return_state=True)
    x = sequences(rng)
    mask = np.ones((B, T), bool)
    mask[0, 4:] = False  # padding at the end
    mask[1, :2] = False  # padding at the start
    mask[2, 3] = False  # a hole
    expected, states = reference.run(kind, x.astype(np.float64), weights, mask=mask)
    if how == "masking_layer":
        x = np.where(mask[..., None], x, 0.0).astype("float32")
        masked = keras.layers.Masking(mask_value=0.0)(x)
        outputs, *final = layer(masked)
    else:
        outputs, *final = layer(x, mask=mask)
    np.testing.assert_allclose(outputs, expected, atol=1e-5)
    for got, want in zip(final, states):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_bidirectional(kind):
    rng = np.random.default_rng(7)
    x = sequences(rng)
    layer = keras.layers.Bidirectional(keras.layers.RNN(CELLS[kind](U), return_sequences=True))
    layer.build((None, T, D))
    forward_weights = random_weights(kind, rng)
    backward_weights = random_weights(kind, rng)
    layer.forward_layer.set_weights(forward_weights)
    layer.backward_layer.set_weights(backward_weights)
    forward, _ = reference.run(kind, x.astype(np.float64), forward_weights)
    backward, _ = reference.run(kind, x.astype(np.float64), backward_weights, go_backwards=True)
    expected = np.concatenate([forward, backward[:, ::-1]], axis=-1)
    np.testing.assert_allclose(layer(x), expected, atol=1e-5)
    clone = keras.layers.Bidirectional.from_config(layer.get_config())
    assert type(clone.forward_layer.cell) is CELLS[kind]


@pytest.mark.parametrize("how", ["list", "StackedRNNCells"])
def test_stacked_cells(kind, how):
    rng = np.random.default_rng(8)
    x = sequences(rng)
    cells = [CELLS[kind](U), rx.VanillaRNNCell(3)]
    stacked = cells if how == "list" else keras.layers.StackedRNNCells(cells)
    layer = keras.layers.RNN(stacked, return_sequences=True)
    layer.build((None, T, D))
    lower = random_weights(kind, rng)
    upper = random_weights("vanilla", rng, input_dim=U, units=3)
    layer.set_weights(lower + upper)
    hidden, _ = reference.run(kind, x.astype(np.float64), lower)
    expected, _ = reference.run("vanilla", hidden, upper)
    np.testing.assert_allclose(layer(x), expected, atol=1e-5)


# --- training -------------------------------------------------------------------------------


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_model_fit_learns(kind, jit_compile):
    rng = np.random.default_rng(9)
    x = rng.uniform(-1, 1, size=(64, 6, 2)).astype("float32")
    y = x[:, :, 0].sum(axis=1, keepdims=True) * 0.3
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6, 2)), keras.layers.RNN(CELLS[kind](8)),
                              keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="mse", jit_compile=jit_compile)
    before = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, epochs=25, batch_size=32, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert model.evaluate(x, y, verbose=0) < 0.5 * before
    np.testing.assert_allclose(model.predict(x, verbose=0), model(x), atol=1e-5)


def test_mixed_float16(kind):
    rng = np.random.default_rng(10)
    layer, weights = make_layer(kind, rng, dtype="mixed_float16", return_sequences=True)
    assert layer.cell.kernel.dtype == "float32"
    x = sequences(rng)
    outputs = layer(x)
    assert keras.backend.standardize_dtype(outputs.dtype) == "float16"
    expected, _ = reference.run(kind, x.astype(np.float64), weights)
    np.testing.assert_allclose(np.asarray(outputs, np.float32), expected, atol=2e-2)

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((T, D)),
        keras.layers.RNN(CELLS[kind](U, dtype="mixed_float16"), dtype="mixed_float16"),
        keras.layers.Dense(1, dtype="float32"),
    ])
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(x, rng.normal(size=(B, 1)), epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


# --- dropout --------------------------------------------------------------------------------


def test_dropout_only_in_training(kind):
    rng = np.random.default_rng(13)
    layer, weights = make_layer(kind, rng, return_sequences=True,
                                cell_kwargs=dict(dropout=0.4, recurrent_dropout=0.4, seed=1))
    x = sequences(rng)
    expected, _ = reference.run(kind, x.astype(np.float64), weights)
    np.testing.assert_allclose(layer(x), expected, atol=1e-5)
    np.testing.assert_allclose(layer(x, training=False), expected, atol=1e-5)
    assert not np.allclose(layer(x, training=True), expected, atol=1e-3)


def z_block_weights(kind, units, input_dim, kernel_eye, recurrent_eye):
    """Weights that make each unit evolve on its own: identities in the z block only."""
    n = reference.N_BLOCKS[kind]
    z = {"vanilla": 0, "cec": 0, "original": 1, "forget": 2}[kind]
    block = slice(z * units, (z + 1) * units)
    kernel = np.zeros((input_dim, n * units), "float32")
    recurrent = np.zeros((units, n * units), "float32")
    bias = np.zeros((n * units,), "float32")
    if kernel_eye:
        kernel[:, block] = np.eye(input_dim, units)
    if recurrent_eye:
        recurrent[:, block] = np.eye(units)
    bias[block] = 0.5
    return [kernel, recurrent, bias]


@pytest.mark.parametrize("which", ["dropout", "recurrent_dropout"])
def test_one_dropout_mask_per_sequence(kind, which):
    """A dropped unit stays dropped for the whole sequence.

    With identities in the z block only, unit u depends only on input feature u (dropout) or
    on its own h_{t-1} (recurrent dropout). Dropping that connection makes the unit follow
    the trajectory it has when the connection is absent, so "dropped" can be read off the
    outputs, and it must be the same set of units at every step.
    """
    units, steps, batch = 16, 6, 4
    recurrent = which == "recurrent_dropout"
    layer = keras.layers.RNN(CELLS[kind](units, seed=2, **{which: 0.5}), return_sequences=True)
    layer.build((batch, steps, units))
    layer.set_weights(z_block_weights(kind, units, units, not recurrent, recurrent))
    without = keras.layers.RNN(CELLS[kind](units), return_sequences=True)
    without.build((batch, steps, units))
    without.set_weights(z_block_weights(kind, units, units, False, False))
    x = np.ones((batch, steps, units), "float32")

    dropped = np.isclose(layer(x, training=True), without(x), atol=1e-6)[:, 1:]
    assert dropped.any() and (~dropped).any()
    for t in range(1, dropped.shape[1]):
        np.testing.assert_array_equal(dropped[:, t], dropped[:, 0], err_msg=f"step {t + 1}")


def test_dropout_reproducible_with_seed(kind):
    x = np.random.default_rng(11).normal(size=(B, T, D)).astype("float32")

    def outputs(seed):
        layer = keras.layers.RNN(CELLS[kind](U, dropout=0.3, recurrent_dropout=0.3, seed=seed,
                                             kernel_initializer="ones",
                                             recurrent_initializer="identity"))
        return np.asarray(layer(x, training=True))

    np.testing.assert_array_equal(outputs(5), outputs(5))
    assert not np.allclose(outputs(5), outputs(6))


# --- configuration --------------------------------------------------------------------------


def test_get_config_round_trips_every_argument(kind):
    arguments = dict(
        units=6, activation="relu", use_bias=False, kernel_initializer="he_normal",
        recurrent_initializer="glorot_normal", bias_initializer="ones",
        kernel_regularizer="l2", recurrent_regularizer="l1",
        bias_regularizer=keras.regularizers.L1L2(0.01, 0.02),
        kernel_constraint="non_neg", recurrent_constraint="unit_norm",
        bias_constraint="max_norm", dropout=0.25, recurrent_dropout=0.125, seed=7,
        name="my_cell",
    )
    if kind in ("original", "forget"):
        arguments["recurrent_activation"] = "hard_sigmoid"
    if kind == "original":
        arguments.update(input_gate_bias=-2.5, output_gate_bias=None)
    if kind == "forget":
        arguments["unit_forget_bias"] = False
    cell = CELLS[kind](**arguments)
    config = cell.get_config()
    clone = CELLS[kind].from_config(config)
    assert clone.get_config() == config
    for name, value in arguments.items():
        if isinstance(value, (int, float, bool, type(None))) or name == "name":
            assert config[name] == value, name
    assert config["activation"] == "relu"
    serialized = keras.saving.serialize_keras_object(cell)
    assert serialized["registered_name"] == f"keras_rnnx>{CELLS[kind].__name__}"
    assert type(keras.saving.deserialize_keras_object(serialized)) is CELLS[kind]


def test_original_cell_default_gate_biases():
    cell = rx.OriginalLSTMCell(4)
    cell.build((None, 2))
    i, z, o = np.split(cell.bias.numpy(), 3)
    np.testing.assert_array_equal(i, cell.input_gate_bias)
    np.testing.assert_array_equal(z, 0.0)
    np.testing.assert_array_equal(o, cell.output_gate_bias)
    assert (cell.input_gate_bias, cell.output_gate_bias) == (-3.0, -1.0)
    plain = rx.OriginalLSTMCell(4, input_gate_bias=None, output_gate_bias=None)
    plain.build((None, 2))
    np.testing.assert_array_equal(plain.bias.numpy(), 0.0)


def test_forget_bias_toggle():
    cell = rx.ForgetGateLSTMCell(3, unit_forget_bias=False, bias_initializer="ones")
    cell.build((None, 2))
    np.testing.assert_array_equal(cell.bias.numpy(), 1.0)
    cell = rx.ForgetGateLSTMCell(3, bias_initializer="zeros")
    cell.build((None, 2))
    np.testing.assert_array_equal(cell.bias.numpy(), [0] * 3 + [1] * 3 + [0] * 6)


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("units", [0, -3, 2.5, 4.0, "8", True, None])
def test_invalid_units(kind, units):
    with pytest.raises(ValueError, match=r"argument `units`.*expected a positive integer"):
        CELLS[kind](units)


@pytest.mark.parametrize("name", ["dropout", "recurrent_dropout"])
@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan"), "0.2"])
def test_invalid_dropout(kind, name, rate):
    with pytest.raises(ValueError, match=rf"argument `{name}`.*\[0, 1\)"):
        CELLS[kind](4, **{name: rate})


def test_invalid_seed_and_gate_bias():
    with pytest.raises(ValueError, match="argument `seed`"):
        rx.VanillaRNNCell(4, seed="abc")
    with pytest.raises(ValueError, match="argument `input_gate_bias`"):
        rx.OriginalLSTMCell(4, input_gate_bias=float("inf"))


@pytest.mark.parametrize("layer_cls", [keras.layers.RNN, rx.RNN], ids=["keras_RNN", "rx_RNN"])
@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4, 5)])
def test_wrong_input_rank(kind, layer_cls, shape):
    with pytest.raises(ValueError, match=r"\(batch, timesteps, features\).*rank"):
        layer_cls(CELLS[kind](4))(np.zeros(shape, "float32"))


@pytest.mark.parametrize("layer_cls", [keras.layers.RNN, rx.RNN], ids=["keras_RNN", "rx_RNN"])
def test_zero_length_sequence(kind, layer_cls):
    with pytest.raises(ValueError, match="zero-length sequence.*0 timesteps"):
        layer_cls(CELLS[kind](4))(np.zeros((2, 0, 3), "float32"))
    with pytest.raises(ValueError, match="zero-length sequence"):
        keras.Sequential([keras.Input((0, 3)), layer_cls(CELLS[kind](4))])


@pytest.mark.parametrize("layer_cls", [keras.layers.RNN, rx.RNN], ids=["keras_RNN", "rx_RNN"])
@pytest.mark.parametrize("dtype", ["int32", "bool"])
def test_non_float_input(kind, layer_cls, dtype):
    with pytest.raises(TypeError, match=f"floating-point inputs, got dtype {dtype}"):
        layer_cls(CELLS[kind](4))(np.zeros((2, 3, 2), dtype))


def test_rx_rnn_checks_initial_state(kind):
    layer = rx.RNN(CELLS[kind](4))
    with pytest.raises(ValueError, match="initial_state"):
        layer(np.zeros((2, 3, 2), "float32"), initial_state=[np.zeros((2, 4), "float32")] * 3)
    with pytest.raises(ValueError, match=r"initial_state\[0\]. must have shape \(batch, 4\)"):
        layer(np.zeros((2, 3, 2), "float32"),
              initial_state=[np.zeros((2, 5), "float32")] * reference.N_STATES[kind])


def test_rx_rnn_is_a_drop_in_keras_rnn(kind):
    rng = np.random.default_rng(12)
    ours, weights = make_layer(kind, rng, layer_cls=rx.RNN, return_sequences=True)
    theirs, _ = make_layer(kind, rng, return_sequences=True)
    theirs.set_weights(weights)
    x = sequences(rng)
    np.testing.assert_allclose(ours(x), theirs(x), atol=1e-6)
    config = ours.get_config()

    def without_names(config):
        config = {k: v for k, v in config.items() if k != "name"}
        config["cell"] = {**config["cell"], "config": {
            k: v for k, v in config["cell"]["config"].items() if k != "name"}}
        return config

    assert without_names(config) == without_names(theirs.get_config())
    assert type(rx.RNN.from_config(config)) is rx.RNN
