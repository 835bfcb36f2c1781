"""The probe against a hand-written eager BPTT loop, and the lecture's claim in numbers.

The reference (`reference_trace`) runs each recurrent layer step by step in eager mode, keeps
every h_t as a tensor that feeds both the layer's output and the next step, and takes
`tape.gradient(L, [h_0, …, h_{T-1}])`: the total derivative, upper layers included. Its
Jacobians are `batch_jacobian`s of single steps, its spectral norms `np.linalg.norm(J, 2)`.
"""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

import keras_rnnx as rx  # noqa: E402
from keras_rnnx import diagnostics  # noqa: E402
from keras_rnnx.cells import CELL_KINDS, LectureCell  # noqa: E402

B, T, F, U = 3, 6, 2, 4
KINDS = list(CELL_KINDS)
GATES = {"vanilla": (), "cec": ("z",), "original": ("i", "z", "o"), "forget": ("i", "f", "z", "o")}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(B, T, F)).astype("float32")
    y_last = rng.normal(size=(B, 1)).astype("float32")
    y_seq = rng.normal(size=(B, T, 1)).astype("float32")
    return x, y_last, y_seq


def make_cell(kind, units=U, **kwargs):
    return CELL_KINDS[kind](units, **kwargs)


def compiled(model):
    model.compile(loss="mse", optimizer=keras.optimizers.SGD(0.1))
    return model


# ---------------------------------------------------------------- the independent reference


def _reference_step(cell, x, states):
    if isinstance(cell, LectureCell):
        new, gates = cell.step(x, list(states), training=False)
        return list(new), dict(gates)
    _, new = cell.call(x, list(states), training=False)
    return (list(new) if isinstance(new, (list, tuple)) else [new]), {}


def _reference_rnn(layer, seq, mask, key, rec, tape):
    """Eager step loop of one RNN layer; records per-step tensors under rec[key...]."""
    cell = layer.cell
    stacked = isinstance(cell, keras.layers.StackedRNNCells)
    cells = list(cell.cells) if stacked else [cell]
    keys = [f"{key}/cell_{k}" for k in range(len(cells))] if stacked else [key]
    batch, steps = seq.shape[0], seq.shape[1]
    states = [[tf.zeros((batch, c.units)) for _ in range(len(tf.nest.flatten(c.state_size)))]
              for c in cells]
    for k in keys:
        rec[k] = {"h": [None] * steps, "states": [[None] * steps for _ in range(2)],
                  "gates": {}, "jac": np.zeros((batch, steps)), "cell": None}
    order = range(steps - 1, -1, -1) if layer.go_backwards else range(steps)
    prev_out = tf.zeros((batch, cells[-1].units))
    outputs = []
    for t in order:
        inp = seq[:, t]
        keep = None if mask is None else tf.constant(mask[:, t:t + 1])
        for k, (c, kk) in enumerate(zip(cells, keys)):
            prev = states[k]
            with tape.stop_recording():
                s_prev = tf.concat(prev, axis=-1)
                with tf.GradientTape(persistent=True) as jt:
                    jt.watch(s_prev)
                    parts = tf.split(s_prev, len(prev), axis=-1)
                    new_j, _ = _reference_step(c, inp, parts)
                    s_new = tf.concat(new_j, axis=-1)
                jac = jt.batch_jacobian(s_new, s_prev, experimental_use_pfor=False).numpy()
            norms = np.array([np.linalg.norm(j, 2) for j in jac])
            new, gates = _reference_step(c, inp, prev)
            if keep is not None:
                new = [tf.where(keep, n, p) for n, p in zip(new, prev)]
                gates = {g: tf.where(keep, v, np.nan) for g, v in gates.items()}
                norms = np.where(mask[:, t], norms, 1.0)
            states[k] = new
            entry = rec[kk]
            entry["cell"] = c
            entry["h"][t] = new[0]
            for i, s in enumerate(new):
                entry["states"][i][t] = s.numpy()
            for g, v in gates.items():
                entry["gates"].setdefault(g, [None] * steps)[t] = v.numpy()
            entry["jac"][:, t] = norms
            inp = new[0]
        out = inp if keep is None else tf.where(keep, inp, prev_out)
        outputs.append(out)
        prev_out = out
    return tf.stack(outputs, axis=1) if layer.return_sequences else outputs[-1]


def reference_trace(model, x, y):
    """Hand-written forward pass of a Sequential model and its BPTT gradients."""
    rec = {}
    x = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        out, mask = x, None
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if isinstance(layer, keras.layers.Masking):
                mask = np.any(x.numpy() != layer.mask_value, axis=-1)
                out = out * tf.cast(mask[..., None], out.dtype)
            elif isinstance(layer, keras.layers.Bidirectional):
                fwd = _reference_rnn(layer.forward_layer, out, mask, f"{layer.name}/forward",
                                     rec, tape)
                bwd = _reference_rnn(layer.backward_layer, out, mask, f"{layer.name}/backward",
                                     rec, tape)
                if layer.return_sequences:
                    bwd = tf.reverse(bwd, [1])
                out = tf.concat([fwd, bwd], axis=-1)
                mask = mask if layer.return_sequences else None
            elif isinstance(layer, keras.layers.RNN):
                out = _reference_rnn(layer, out, mask, layer.name, rec, tape)
                mask = None
            else:
                out = layer(out)
        loss = tf.reduce_mean(tf.square(tf.constant(y) - out))
    result = {"loss": float(loss)}
    for key, entry in rec.items():
        cell = entry["cell"]
        grads = tape.gradient(loss, entry["h"],
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
        weights = {"kernel": cell.kernel, "recurrent_kernel": cell.recurrent_kernel,
                   "bias": cell.bias}
        wgrads = tape.gradient(loss, list(weights.values()))
        n_blocks = cell.kernel.shape[-1] // cell.units
        result[key] = {
            "grad_h": np.stack([g.numpy() for g in grads], axis=1),
            "states": [np.stack(s, axis=1) for s in entry["states"] if s[0] is not None],
            "gates": {g: np.stack(v, axis=1) for g, v in entry["gates"].items()},
            "jacobian_norm": entry["jac"],
            "weight_grad_norm": {
                name: np.linalg.norm(
                    np.reshape(g.numpy(), (-1, n_blocks, cell.units)), axis=(0, 2))
                for name, g in zip(weights, wgrads)
            },
        }
    del tape
    return result


def numpy_forward(kind, cell, x):
    """The lecture's equations in NumPy: h, c and the gates of one layer, (B, T, U) each."""
    kernel, recurrent, bias = (np.asarray(w) for w in (cell.kernel, cell.recurrent_kernel,
                                                        cell.bias))
    sigmoid = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    h = np.zeros((x.shape[0], cell.units))
    c = np.zeros_like(h)
    hs, cs, gates = [], [], {name: [] for name in GATES[kind]}
    for t in range(x.shape[1]):
        a = x[:, t] @ kernel + h @ recurrent + bias
        blocks = dict(zip(cell.block_names, np.split(a, len(cell.block_names), axis=-1)))
        z = np.tanh(blocks["z"])
        if kind == "vanilla":
            h = z
        elif kind == "cec":
            c = c + z
            h = np.tanh(c)
        else:
            i, o = sigmoid(blocks["i"]), sigmoid(blocks["o"])
            f = sigmoid(blocks["f"]) if kind == "forget" else 1.0
            c = f * c + i * z
            h = o * np.tanh(c)
            blocks = {"i": i, "f": f, "o": o}
        for name in gates:
            gates[name].append(z if name == "z" else blocks[name])
        hs.append(h)
        cs.append(c)
    return (np.stack(hs, axis=1), np.stack(cs, axis=1),
            {name: np.stack(v, axis=1) for name, v in gates.items()})


def assert_matches_reference(trace, ref, keys, check_gates=True):
    np.testing.assert_allclose(trace.loss, ref["loss"], rtol=1e-5)
    for key in keys:
        got, want = trace[key], ref[key]
        meta = got["meta"]
        for name, expected in zip(meta["state_names"], want["states"]):
            np.testing.assert_allclose(got["states"][name], expected, atol=1e-5,
                                       err_msg=f"{key} state {name}")
        if check_gates:
            assert set(got["gates"]) == set(want["gates"])
            for name, expected in want["gates"].items():
                np.testing.assert_allclose(got["gates"][name], expected, atol=1e-5,
                                           err_msg=f"{key} gate {name}")
        np.testing.assert_allclose(got["grad_h"], want["grad_h"], rtol=1e-4, atol=1e-7,
                                   err_msg=f"{key} grad_h")
        np.testing.assert_allclose(
            got["grad_norm"], np.linalg.norm(want["grad_h"], axis=(0, 2)), rtol=1e-4,
            atol=1e-7)
        np.testing.assert_allclose(got["jacobian_norm"], want["jacobian_norm"], rtol=1e-4,
                                   atol=1e-6, err_msg=f"{key} jacobian_norm")
        for name, norms in want["weight_grad_norm"].items():
            blocks = meta["block_names"]
            np.testing.assert_allclose([got["weight_grad_norm"][name][b] for b in blocks],
                                       norms, rtol=1e-4, atol=1e-7,
                                       err_msg=f"{key} weight grad {name}")


# ------------------------------------------------------------------- every field, every cell


@pytest.mark.parametrize("kind", KINDS)
def test_stacked_layers_match_the_hand_written_loop(kind, data):
    x, y_last, _ = data
    keras.utils.set_random_seed(1)
    model = compiled(keras.Sequential([
        keras.Input((T, F)),
        rx.RNN(make_cell(kind), return_sequences=True, name="lower"),
        rx.RNN(make_cell(kind, units=3), name="upper"),
        keras.layers.Dense(1),
    ]))
    trace = diagnostics.probe(model, x, y_last)
    assert list(trace) == ["lower", "upper"]
    assert_matches_reference(trace, reference_trace(model, x, y_last), ["lower", "upper"])

    lower = trace["lower"]
    h, c, gates = numpy_forward(kind, model.get_layer("lower").cell, x)
    np.testing.assert_allclose(lower["states"]["h"], h, atol=1e-5)
    if kind != "vanilla":
        np.testing.assert_allclose(lower["states"]["c"], c, atol=1e-5)
    for name, gate in gates.items():
        np.testing.assert_allclose(lower["gates"][name], gate, atol=1e-5)
    assert lower["states"]["h"].shape == (B, T, U)
    assert tuple(lower["states"]) == tuple(make_cell(kind).state_names)
    assert tuple(lower["gates"]) == GATES[kind]
    for name, gate in lower["gates"].items():
        low, high = (-1.0, 1.0) if name == "z" else (0.0, 1.0)
        assert gate.shape == (B, T, U) and np.all((gate >= low) & (gate <= high))
    assert lower["grad_norm"].shape == (T,)
    assert lower["jacobian_norm"].shape == (B, T)
    meta = lower["meta"]
    assert meta["kind"] == kind and meta["units"] == U and meta["timesteps"] == T
    assert meta["gate_names"] == GATES[kind] and meta["time_order"] == "input"
    assert meta["mask"].shape == (B, T) and meta["mask"].all()
    assert trace["upper"]["meta"]["return_sequences"] is False

    kernel = model.get_layer("lower").cell.recurrent_kernel.numpy()
    for k, block in enumerate(meta["block_names"]):
        sigma = np.linalg.svd(kernel[:, k * U:(k + 1) * U], compute_uv=False)[0]
        np.testing.assert_allclose(lower["recurrent_sigma_max"][block], sigma, rtol=1e-5)
        expected = 1.0 if meta["block_activations"][block] == "tanh" else 4.0
        assert lower["recurrent_sigma_threshold"][block] == expected


def test_probe_forward_pass_equals_the_model(data):
    x, _, y_seq = data
    keras.utils.set_random_seed(2)
    inputs = keras.Input((T, F))
    seq = rx.RNN(make_cell("forget"), return_sequences=True, name="rnn")(inputs)
    model = compiled(keras.Model(inputs, keras.layers.Dense(1)(seq)))
    trace = diagnostics.probe(model, x, y_seq)
    np.testing.assert_allclose(trace["rnn"]["states"]["h"],
                               keras.Model(inputs, seq)(x).numpy(), atol=1e-6)
    np.testing.assert_allclose(trace.loss, float(model.compute_loss(x, y_seq, model(x))),
                               rtol=1e-6)
    assert_matches_reference(trace, reference_trace(model, x, y_seq), ["rnn"])


def test_go_backwards_is_reported_in_input_order(data):
    kind = "forget"
    x, y_last, _ = data
    keras.utils.set_random_seed(3)
    model = compiled(keras.Sequential([
        keras.Input((T, F)),
        rx.RNN(make_cell(kind), return_sequences=True, go_backwards=True, name="back"),
        rx.RNN(make_cell(kind), name="top"),
        keras.layers.Dense(1),
    ]))
    trace = diagnostics.probe(model, x, y_last)
    assert_matches_reference(trace, reference_trace(model, x, y_last), ["back", "top"])
    back = trace["back"]
    assert back["meta"]["go_backwards"] is True
    sub = keras.Model(model.inputs[0], model.get_layer("back").output)
    # Keras returns the sequence in processing order: reversed with respect to the input.
    np.testing.assert_allclose(back["states"]["h"][:, ::-1], sub(x).numpy(), atol=1e-6)


@pytest.mark.filterwarnings("ignore:Layer 'lambda.*does not support masking:UserWarning")
def test_masked_steps_carry_the_state(data):
    kind = "forget"
    x, y_last, _ = data
    x = x.copy()
    x[0, 4:] = 0.0  # post-padded
    x[1, :2] = 0.0  # pre-padded
    keras.utils.set_random_seed(4)
    model = compiled(keras.Sequential([
        keras.Input((T, F)),
        keras.layers.Masking(0.0),
        rx.RNN(make_cell(kind), return_sequences=True, name="rnn"),
        keras.layers.Lambda(lambda s: s[:, -1]),
        keras.layers.Dense(1),
    ]))
    trace = diagnostics.probe(model, x, y_last)
    entry = trace["rnn"]
    mask = np.any(x != 0.0, axis=-1)
    np.testing.assert_array_equal(entry["meta"]["mask"], mask)
    assert_matches_reference(trace, reference_trace(model, x, y_last), ["rnn"])
    h = entry["states"]["h"]
    np.testing.assert_array_equal(h[0, 4:], np.broadcast_to(h[0, 3], (2, U)))
    np.testing.assert_array_equal(h[1, :2], 0.0)
    if entry["gates"]:
        gate = next(iter(entry["gates"].values()))
        assert np.isnan(gate[~mask]).all() and not np.isnan(gate[mask]).any()
    np.testing.assert_array_equal(entry["jacobian_norm"][~mask], 1.0)
    np.testing.assert_allclose(
        h, keras.Model(model.inputs[0], model.get_layer("rnn").output)(x).numpy(), atol=1e-6)


def test_bidirectional_halves(data):
    x, y_last, _ = data
    keras.utils.set_random_seed(5)
    model = compiled(keras.Sequential([
        keras.Input((T, F)),
        keras.layers.Bidirectional(rx.RNN(make_cell("original")), name="bi"),
        keras.layers.Dense(1),
    ]))
    trace = diagnostics.probe(model, x, y_last)
    assert list(trace) == ["bi/forward", "bi/backward"]
    assert diagnostics.get_probe(model, layers="bi").layer_keys == list(trace)
    assert trace["bi/backward"]["meta"]["direction"] == "backward"
    assert trace["bi/backward"]["meta"]["go_backwards"] is True
    assert_matches_reference(trace, reference_trace(model, x, y_last),
                             ["bi/forward", "bi/backward"])
    # The backward half reads x[:, 0] last: its gradient is largest there.
    grad = trace["bi/backward"]["grad_norm"]
    assert grad[0] == grad.max()


def test_stacked_rnn_cells_are_reported_per_sub_cell(data):
    x, y_last, _ = data
    keras.utils.set_random_seed(6)
    cell = keras.layers.StackedRNNCells([make_cell("vanilla"), make_cell("forget", units=3)])
    model = compiled(keras.Sequential([
        keras.Input((T, F)), rx.RNN(cell, name="stack"), keras.layers.Dense(1),
    ]))
    trace = diagnostics.probe(model, x, y_last)
    assert list(trace) == ["stack/cell_0", "stack/cell_1"]
    assert trace["stack/cell_1"]["meta"]["stack_index"] == 1
    assert_matches_reference(trace, reference_trace(model, x, y_last),
                             ["stack/cell_0", "stack/cell_1"])


def test_return_state_in_a_functional_model(data):
    x, y_last, _ = data
    keras.utils.set_random_seed(16)
    inputs = keras.Input((T, F))
    _, h, c = rx.RNN(make_cell("original"), return_state=True, name="rnn")(inputs)
    final = keras.Model(inputs, [h, c])
    model = compiled(keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Concatenate()([h, c]))))
    trace = diagnostics.probe(model, x, y_last)
    np.testing.assert_allclose(trace.loss, float(model.compute_loss(x, y_last, model(x))),
                               rtol=1e-6)
    h_keras, c_keras = final(x)
    np.testing.assert_allclose(trace["rnn"]["states"]["h"][:, -1], h_keras, atol=1e-6)
    np.testing.assert_allclose(trace["rnn"]["states"]["c"][:, -1], c_keras, atol=1e-6)
    assert np.all(trace["rnn"]["grad_norm"] > 0)


def test_nested_model_and_layer_selection(data):
    x, y_last, _ = data
    keras.utils.set_random_seed(7)
    inner = keras.Sequential([keras.Input((T, F)), rx.RNN(make_cell("cec"), name="rnn")],
                             name="inner")
    inputs = keras.Input((T, F))
    other = rx.RNN(make_cell("vanilla"), name="side")(inputs)
    out = keras.layers.Dense(1)(keras.layers.Concatenate()([inner(inputs), other]))
    model = compiled(keras.Model(inputs, out))
    assert diagnostics.probed_layers(model) == ["inner/rnn", "side"]
    trace = diagnostics.probe(model, x, y_last, layers=["inner/rnn"], jacobian=False)
    assert list(trace) == ["inner/rnn"]
    assert trace["inner/rnn"]["jacobian_norm"] is None
    assert trace["inner/rnn"]["grad_h"].shape == (B, T, U)


# ------------------------------------------------------------------ Keras's own layers


@pytest.mark.parametrize("layer_cls", ["SimpleRNN", "LSTM", "GRU"])
def test_keras_layers(layer_cls, data):
    x, y_last, _ = data
    keras.utils.set_random_seed(8)
    layer = getattr(keras.layers, layer_cls)(U, return_sequences=True, name="rnn")
    model = compiled(keras.Sequential([
        keras.Input((T, F)), layer, keras.layers.Lambda(lambda s: s[:, -1]),
        keras.layers.Dense(1),
    ]))
    trace = diagnostics.probe(model, x, y_last)
    entry = trace["rnn"]
    assert_matches_reference(trace, reference_trace(model, x, y_last), ["rnn"],
                             check_gates=False)
    np.testing.assert_allclose(entry["states"]["h"],
                               keras.Model(model.inputs[0], layer.output)(x).numpy(), atol=1e-6)
    gates = entry["gates"]
    h = entry["states"]["h"]
    h_prev = np.concatenate([np.zeros((B, 1, U)), h[:, :-1]], axis=1)
    if layer_cls == "SimpleRNN":
        assert gates == {} and entry["meta"]["block_names"] == ("z",)
    elif layer_cls == "LSTM":
        c = entry["states"]["c"]
        c_prev = np.concatenate([np.zeros((B, 1, U)), c[:, :-1]], axis=1)
        np.testing.assert_allclose(c, gates["f"] * c_prev + gates["i"] * gates["z"], atol=1e-5)
        np.testing.assert_allclose(h, gates["o"] * np.tanh(c), atol=1e-5)
    else:
        assert tuple(gates) == ("u", "r", "n")
        np.testing.assert_allclose(h, gates["u"] * h_prev + (1 - gates["u"]) * gates["n"],
                                   atol=1e-5)
    assert set(entry["weight_grad_norm"]["kernel"]) == set(entry["meta"]["block_names"])


# ------------------------------------------------------------------ the lecture's claim


def test_vanilla_gradient_vanishes_and_the_cec_keeps_it():
    steps, units = 16, 8
    rng = np.random.default_rng(0)
    x = rng.normal(scale=0.5, size=(4, steps, 3)).astype("float32")
    y = rng.normal(size=(4, 1)).astype("float32")
    recurrent = keras.initializers.Orthogonal(gain=0.5, seed=0)  # σ_max = 0.5 < 1/γ = 1
    traces = {}
    for kind in ("vanilla", "cec"):
        keras.utils.set_random_seed(0)
        model = compiled(keras.Sequential([
            keras.Input((steps, 3)),
            rx.RNN(make_cell(kind, units, recurrent_initializer=recurrent), name="rnn"),
            keras.layers.Dense(1),
        ]))
        traces[kind] = diagnostics.probe(model, x, y)["rnn"]

    vanilla = traces["vanilla"]
    np.testing.assert_allclose(vanilla["recurrent_sigma_max"]["z"], 0.5, rtol=1e-5)
    assert vanilla["recurrent_sigma_threshold"]["z"] == 1.0
    g = vanilla["grad_norm"]
    # Each step back multiplies by diag(1 - h²) W_hᵀ, of norm at most σ_max = 0.5.
    assert np.all(g[:-1] <= 0.5 * g[1:] * (1 + 1e-5))
    slope = np.polyfit(np.arange(steps), np.log(g), 1)[0]
    assert slope >= np.log(2.0)  # log g grows by ≥ log 2 per step forward: geometric decay
    assert g[0] / g[-1] < 0.5 ** (steps - 1) * 1.001
    assert np.all(vanilla["jacobian_norm"] <= 0.5 + 1e-5)

    cec = traces["cec"]
    c = cec["grad_norm"]
    # The carousel ∂c_t/∂c_{t-1} = I carries the error back undiminished.
    assert np.all(cec["jacobian_norm"] >= 1.0 - 1e-5)
    assert c[0] / c[-2] > 0.5
    assert c[0] / c[-1] > 1e3 * (g[0] / g[-1])


# ------------------------------------------------------------------ graph mode and side effects


def test_traced_once_and_sees_new_weights(data):
    x, y_last, _ = data
    keras.utils.set_random_seed(9)
    model = compiled(keras.Sequential([
        keras.Input((T, F)), rx.RNN(make_cell("forget"), name="rnn"), keras.layers.Dense(1),
    ]))
    probe = diagnostics.get_probe(model)
    assert diagnostics.get_probe(model) is probe
    first = diagnostics.probe(model, x, y_last)
    for _ in range(3):
        again = diagnostics.probe(model, x, y_last)
    assert probe.trace_count == 1
    np.testing.assert_array_equal(first["rnn"]["grad_h"], again["rnn"]["grad_h"])
    model.fit(x, y_last, epochs=1, batch_size=B, verbose=0)
    after = diagnostics.probe(model, x, y_last)
    assert probe.trace_count == 1
    assert not np.allclose(after["rnn"]["grad_h"], first["rnn"]["grad_h"])
    assert_matches_reference(after, reference_trace(model, x, y_last), ["rnn"])


def test_probe_leaves_a_fitted_model_untouched(data):
    x, y_last, _ = data
    keras.utils.set_random_seed(10)
    model = keras.Sequential([
        keras.Input((T, F)),
        rx.RNN(make_cell("forget", dropout=0.3, recurrent_dropout=0.3, seed=1),
               return_sequences=True, name="rnn"),
        keras.layers.Dropout(0.5, seed=2),
        rx.RNN(make_cell("vanilla"), stateful=False, name="top"),
        keras.layers.Dense(1),
    ])
    model.compile(loss="mse", optimizer="adam", metrics=["mae"])
    model.fit(x, y_last, epochs=1, batch_size=1, verbose=0)

    def snapshot():
        tracked = model.variables + model.optimizer.variables + model.metrics_variables
        return [np.array(v.numpy()) for v in tracked] + [
            tf.random.get_global_generator().state.numpy()]

    before = snapshot()
    one = diagnostics.probe(model, x, y_last)
    for b, a in zip(before, snapshot()):
        np.testing.assert_array_equal(a, b)
    # The probe is inference-only: dropout is off, so two probes agree exactly.
    two = diagnostics.probe(model, x, y_last)
    np.testing.assert_array_equal(one["rnn"]["grad_h"], two["rnn"]["grad_h"])


def test_stateful_layer_is_read_not_advanced(data):
    x, y_last, _ = data
    keras.utils.set_random_seed(11)
    model = compiled(keras.Sequential([
        keras.Input((T, F), batch_size=B),
        rx.RNN(make_cell("cec"), stateful=True, name="rnn"),
        keras.layers.Dense(1),
    ]))
    model(x)  # advances the state once
    states = [s.numpy().copy() for s in model.get_layer("rnn").states]
    trace = diagnostics.probe(model, x, y_last)
    for s, before in zip(model.get_layer("rnn").states, states):
        np.testing.assert_array_equal(s.numpy(), before)
    # The first step starts from the carried state, not from zeros.
    assert np.abs(trace["rnn"]["states"]["c"][:, 0] - states[1]).max() < 2.0
    assert not np.allclose(states[1], 0.0)


def test_without_targets_only_the_forward_fields(data):
    x, _, _ = data
    keras.utils.set_random_seed(12)
    model = keras.Sequential([keras.Input((T, F)), rx.RNN(make_cell("vanilla"), name="rnn")])
    trace = diagnostics.probe(model, x)
    entry = trace["rnn"]
    assert trace.loss is None
    assert entry["grad_h"] is None and entry["grad_norm"] is None
    assert entry["weight_grad_norm"] is None
    assert entry["jacobian_norm"].shape == (B, T)


def test_mixed_precision_does_not_crash(data):
    x, y_last, _ = data
    keras.utils.set_random_seed(13)
    model = compiled(keras.Sequential([
        keras.Input((T, F)),
        rx.RNN(make_cell("forget", dtype="mixed_float16"), dtype="mixed_float16", name="rnn"),
        keras.layers.Dense(1),
    ]))
    entry = diagnostics.probe(model, x, y_last)["rnn"]
    assert np.isfinite(entry["grad_norm"]).all() and entry["grad_norm"].max() > 0
    assert entry["states"]["h"].dtype == np.float32
    assert np.isfinite(entry["jacobian_norm"]).all()


# ------------------------------------------------------------------ bad input


@pytest.fixture(scope="module")
def small_model():
    keras.utils.set_random_seed(14)
    return compiled(keras.Sequential([
        keras.Input((T, F)), rx.RNN(make_cell("vanilla"), name="rnn"), keras.layers.Dense(1),
    ]))


def test_wrong_input_shape(small_model, data):
    x, y_last, _ = data
    with pytest.raises(ValueError, match=r"`x` has shape \(3, 6, 5\).*expects"):
        diagnostics.probe(small_model, np.zeros((B, T, 5), "float32"), y_last)
    with pytest.raises(ValueError, match="batch size 3 but `y` has 2"):
        diagnostics.probe(small_model, x, y_last[:2])
    with pytest.raises(ValueError, match="empty batch"):
        diagnostics.probe(small_model, x[:0], y_last[:0])


def test_zero_length_sequence_is_named():
    keras.utils.set_random_seed(15)
    model = keras.Sequential([rx.RNN(make_cell("vanilla"), name="rnn")])
    model.build((None, None, F))
    with pytest.raises(ValueError, match="zero-length"):
        diagnostics.probe(model, np.zeros((B, 0, F), "float32"))


def test_y_without_a_compiled_loss(data):
    x, y_last, _ = data
    model = keras.Sequential([keras.Input((T, F)), rx.RNN(make_cell("cec"), name="rnn")])
    with pytest.raises(ValueError, match="no compiled loss"):
        diagnostics.probe(model, x, y_last)


def test_y_that_does_not_fit_the_loss(small_model, data):
    x, _, _ = data
    with pytest.raises(ValueError, match="probe"):
        diagnostics.probe(small_model, x, {"a": np.zeros((B, 1)), "b": np.zeros((B, 1))})


def test_model_without_a_readable_rnn(data):
    plain = keras.Sequential([keras.Input((T, F)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no recurrent layer the probe can read.*no RNN"):
        diagnostics.probe(plain, data[0])

    class PlainCell(keras.layers.Layer):
        state_size = U

        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], U))

        def call(self, x, states):
            h = ops_tanh(x @ self.w + states[0])
            return h, [h]

    ops_tanh = keras.ops.tanh
    other = keras.Sequential([keras.Input((T, F)), keras.layers.RNN(PlainCell(), name="odd")])
    with pytest.raises(ValueError, match=r"odd \(PlainCell\)"):
        diagnostics.probe(other, data[0])
    with pytest.raises(TypeError, match="keras.Model"):
        diagnostics.probe(keras.layers.Dense(2), data[0])


def test_unknown_layer_name(small_model, data):
    with pytest.raises(ValueError, match=r"no probed layer named 'nope'.*\['rnn'\]"):
        diagnostics.probe(small_model, data[0], layers="nope")


@pytest.mark.parametrize("kind", KINDS)
def test_compiled_kernel_path_gives_the_total_derivative(kind, data):
    """Lecture layers without a mask run in `keras_rnnx._native`'s kernels inside the probe;
    ∂L/∂h_t must still be the total derivative, with the output sequence and c_T (through
    `return_state`) both reaching the loss. Reference: an eager step loop with a watched zero
    ε_t added to every h_t."""
    from keras_rnnx import _native

    if _native.load() is None:
        pytest.skip(f"compiled kernels unavailable: {_native.status()}")
    x, y_last, _ = data
    keras.utils.set_random_seed(21)
    inputs = keras.Input((T, F))
    layer = rx.RNN(make_cell(kind), return_sequences=True, return_state=True, name="rnn")
    seq, *final = layer(inputs)
    dense = keras.layers.Dense(1)
    model = compiled(keras.Model(inputs, dense(keras.layers.Concatenate()(
        [keras.layers.Flatten()(seq), final[-1]]))))
    trace = diagnostics.probe(model, x, y_last)
    graph = diagnostics.get_probe(model)._function.get_concrete_function(
        tf.constant(x), tf.constant(y_last), None).graph
    assert any(op.type == "RnnxCellForward" for op in graph.get_operations())

    cell = layer.cell
    eps = [tf.zeros((B, U)) for _ in range(T)]
    with tf.GradientTape() as tape:
        tape.watch(eps)
        states = [tf.zeros((B, U)) for _ in cell.state_names]
        hs = []
        for t in range(T):
            states, _ = cell.step(tf.constant(x[:, t]), states, training=False)
            states = [states[0] + eps[t], *states[1:]]
            hs.append(states[0])
        flat = tf.concat([tf.reshape(tf.stack(hs, axis=1), (B, -1)), states[-1]], axis=-1)
        loss = tf.reduce_mean(tf.square(y_last - dense(flat)))
    want = np.stack([g.numpy() for g in tape.gradient(loss, eps)], axis=1)
    np.testing.assert_allclose(trace.loss, float(loss), rtol=1e-5)
    np.testing.assert_allclose(trace["rnn"]["grad_h"], want, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(trace["rnn"]["states"]["h"], np.stack(hs, axis=1), atol=1e-5)


@pytest.mark.parametrize("kinds", [("forget", "cec"), ("original", "vanilla")])
def test_lanczos_jacobian_norms_with_mask_go_backwards_and_stacked_cells(kinds, data):
    """States of 2·28 or 28 units: more than `_jacobian.LANCZOS_STEPS`, so the Jacobian
    norms come from certified Lanczos steps or the exact fallback, not a full Krylov space.
    Reference: per-step `batch_jacobian`s and `np.linalg.norm(J, 2)` in an eager loop."""
    x, y_last, _ = data
    x = x.copy()
    x[0, 4:] = 0.0
    x[2, :1] = 0.0
    units = 28
    keras.utils.set_random_seed(31)
    masked = compiled(keras.Sequential([
        keras.Input((T, F)),
        keras.layers.Masking(0.0),
        rx.RNN(make_cell(kinds[0], units=units, recurrent_initializer="glorot_uniform"),
               go_backwards=True, name="back"),
        keras.layers.Dense(1),
    ]))
    trace = diagnostics.probe(masked, x, y_last)
    assert_matches_reference(trace, reference_trace(masked, x, y_last), ["back"])
    mask = np.any(x != 0.0, axis=-1)
    np.testing.assert_array_equal(trace["back"]["jacobian_norm"][~mask], 1.0)
    stacked = compiled(keras.Sequential([
        keras.Input((T, F)),
        keras.layers.RNN(keras.layers.StackedRNNCells(
            [make_cell(kinds[1], units=units), make_cell(kinds[0], units=units)]), name="stack"),
        keras.layers.Dense(1),
    ]))
    trace = diagnostics.probe(stacked, x, y_last)
    keys = ["stack/cell_0", "stack/cell_1"]
    assert_matches_reference(trace, reference_trace(stacked, x, y_last), keys)
