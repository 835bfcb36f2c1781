r"""The probe: states, gates, gradient through time and recurrent Jacobians of an RNN model.

`probe(model, x, y)` runs a Keras model on a small batch and returns, for each recurrent layer
whose cell it can read, what the lecture's argument about vanishing and exploding gradients is
made of: the states and gate activations at every step, the total derivative ∂L/∂h_t of the
loss with respect to every hidden state (backpropagation through time), the spectral norm of
the state-to-state Jacobian ∂s_t/∂s_{t-1}, and the largest singular value of the recurrent
kernel next to Pascanu et al.'s (2013) threshold 1/γ.

How it is computed. While the probe's `tf.function` is traced, each probed RNN layer's `call`
is replaced, on that one instance, by a loop that runs the layer's own cell (same weight
variables, dropout off) and returns, besides the layer's usual output, every state and gate per
step as tensors of the traced graph. A zero perturbation ε_t is added to h_t right after step t,
so that it reaches both the layer's output and the next step; ∂L/∂ε_t is the total derivative
∂L/∂h_t, lower layers included (their ε reaches L through the upper layers). Nothing is
collected from inside `cell.call`, so the numbers are those of graph mode, and the traced
function is kept per model and per input shape: later calls run the graph only.
Where `keras_rnnx.RNN` trains on the compiled CPU kernels (a lecture cell by exact type,
tanh/sigmoid, float32, no mask), the probe runs that layer's loop and its backward pass through
time in those kernels too: ∂L/∂h_t is then what their backward loop carries at step t (the
gradient from above plus ∂L/∂a_{t+1}·R_hᵀ), the same number as ∂L/∂ε_t.

Conventions, for a viewer labelling its axes:

- Time order. Every per-step array is in the **input's time order**: index t is the step that
  reads `x[:, t]`, also for `go_backwards=True` layers (and the backward half of a
  `Bidirectional`), which process t = T-1 first. For them "back in time" is towards larger t
  and "s_{t-1}" is the state the step at t starts from, i.e. the state after step t+1.
  `meta["time_order"]` is `"input"` and `meta["go_backwards"]` says which way the layer ran.
- Masks. On a masked step Keras carries the states over unchanged and repeats the previous
  output. The probe reports that: `states` at a masked step are the carried-over states, gates
  are NaN (they are not used), ε_t is added to the carried-over h (so `grad_h` there is the
  derivative with respect to the state that flows on), and the Jacobian of a masked step is
  the identity (norm 1). `meta["mask"]` is the (B, T) mask, all True without one.
- Stacked cells. A `keras.layers.StackedRNNCells` cell is reported per sub-cell as
  `"<layer>/cell_<k>"`; the Jacobian of sub-cell k is that of its own states, with its input
  (the output of sub-cell k-1) held fixed.
- Bidirectional. The two halves are `"<layer>/forward"` and `"<layer>/backward"`.
- Nested models. A layer of a nested model is `"<model>/<layer>"`.
- L is the model's compiled loss (`model.compile(loss=...)`) on (x, y), reduced over the batch
  as in training; regularization and `add_loss` terms are not part of it. The forward pass runs
  with `training=False` (no dropout). Mixed-precision models run the forward pass in their
  compute dtype; the Jacobians are computed in the variables' dtype (float32).

What is read: the four lecture cells (`keras_rnnx.cells`) and Keras's `SimpleRNNCell`,
`LSTMCell` and `GRUCell` (so `keras.layers.SimpleRNN`, `LSTM` and `GRU`). Gate names:
vanilla and SimpleRNN `()`; CEC `("z",)`; original `("i", "z", "o")`; forget-gate and Keras
LSTM `("i", "f", "z", "o")` (Keras calls the z block "c"); GRU `("u", "r", "n")` for the update
gate σ, the reset gate σ and the candidate tanh (Keras's z, r, hh). The LSTM variants
(`LSTMVariantCell`, kind `"LSTM-<variant>"`): their blocks (NIG `("f", "z", "o")`, NFG
`("i", "z", "o")`, NOG `("i", "f", "z")`, the others `("i", "f", "z", "o")`), except CIFG,
which also reports its derived f = 1 − i: `("i", "f", "z", "o")`; FGR's states are
`("h", "c", "g")`, and its Jacobian is that of the full state [h | c | g]. RNN layers with other
cells are run as usual and left out of the trace.

The probe changes no weight, optimizer slot, metric or RNG state, and reads (does not advance)
the states of stateful layers. It is TensorFlow-only.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from keras_rnnx import _jacobian, _validation
from keras_rnnx.cells import CELL_KINDS, LectureCell
from keras_rnnx.cells.lstm_variants import _PEEPHOLE_NAMES

__all__ = ["Probe", "Trace", "get_probe", "probe", "probed_layers"]

# γ bounds |f'| of a block's activation f: Pascanu et al. (2013) show that σ_max(W_h) < 1/γ is
# sufficient for the gradient to vanish and σ_max(W_h) > 1/γ necessary for it to explode.
_GAMMA = {
    "tanh": 1.0,
    "sigmoid": 0.25,
    "hard_sigmoid": 1.0 / 6.0,
    "relu": 1.0,
    "linear": 1.0,
    "softsign": 1.0,
}

_PATCH_LOCK = threading.RLock()

_PEEPHOLE_GATE_OF = {name: gate for gate, name in _PEEPHOLE_NAMES.items()}


def _activation_name(fn) -> str:
    name = keras.activations.serialize(fn)
    return name if isinstance(name, str) else getattr(fn, "__name__", str(fn))


class _CellReader:
    """Runs one step of a cell and names its states, gates and weight blocks."""

    kind = ""
    state_names: tuple[str, ...] = ("h",)
    block_names: tuple[str, ...] = ()
    gate_names: tuple[str, ...] = ()

    def __init__(self, cell):
        self.cell = cell
        self.units = int(cell.units)

    def block_activations(self) -> dict[str, str]:
        raise NotImplementedError

    def step(self, x, states):
        """(new_states, gates) of one step, dropout off."""
        raise NotImplementedError

    def weights(self) -> dict[str, Any]:
        cell = self.cell
        return {
            "kernel": cell.kernel,
            "recurrent_kernel": cell.recurrent_kernel,
            "bias": cell.bias if getattr(cell, "use_bias", True) else None,
        }

    def gate_activations(self) -> dict[str, str]:
        acts = self.block_activations()
        return {name: acts[name] for name in self.gate_names}

    def weight_blocks(self, name: str) -> tuple[str, ...]:
        """The blocks of weight `name` whose gradient norms are reported: the kernels' and
        the bias's column blocks by default."""
        return self.block_names


class _LectureReader(_CellReader):
    def __init__(self, cell: LectureCell):
        super().__init__(cell)
        kinds = [k for k, cls in CELL_KINDS.items() if type(cell) is cls]
        kinds += [k for k, cls in CELL_KINDS.items() if isinstance(cell, cls)]
        self.kind = kinds[0] if kinds else type(cell).__name__
        variant = getattr(cell, "variant", None)
        if variant is not None:
            self.kind = f"LSTM-{variant}"
        self.state_names = tuple(cell.state_names)
        self.block_names = tuple(cell.block_names)
        # A cell may report a gate that has no block of its own (CIFG's f = 1 - i).
        self.gate_names = () if len(self.state_names) == 1 else tuple(
            getattr(cell, "gate_names", self.block_names))

    def block_activations(self):
        cell = self.cell
        gate = getattr(cell, "recurrent_activation", None)
        names = dict.fromkeys(self.block_names + self.gate_names)
        acts = {
            name: _activation_name(cell.activation if name == "z" or gate is None else gate)
            for name in names
        }
        if getattr(cell, "variant", None) == "NIAF":
            acts["z"] = "linear"
        return acts

    def weights(self):
        weights = super().weights()
        cell = self.cell
        # The LSTM variants' peephole vectors and full-gate-recurrence matrix G.
        for gate in getattr(cell, "peephole_gates", ()):
            name = _PEEPHOLE_NAMES[gate]
            weights[name] = getattr(cell, name)
        if getattr(cell, "gate_recurrent_kernel", None) is not None:
            weights["gate_recurrent_kernel"] = cell.gate_recurrent_kernel
        return weights

    def weight_blocks(self, name):
        if name.endswith("_gate_peephole_weights"):
            return (_PEEPHOLE_GATE_OF[name],)
        if name == "gate_recurrent_kernel":
            return ("i", "f", "o")  # column blocks: the pre-activations it feeds
        return self.block_names

    def step(self, x, states):
        new_states, gates = self.cell.step(x, list(states), training=False)
        return list(new_states), {name: gates[name] for name in self.gate_names}


class _SimpleRNNReader(_CellReader):
    kind = "keras_simple_rnn"
    block_names = ("z",)

    def block_activations(self):
        return {"z": _activation_name(self.cell.activation)}

    def step(self, x, states):
        h, _ = self.cell.call(x, list(states), training=False)
        return [h], {}


class _LSTMReader(_CellReader):
    kind = "keras_lstm"
    state_names = ("h", "c")
    block_names = ("i", "f", "z", "o")
    gate_names = ("i", "f", "z", "o")

    def block_activations(self):
        sig, tanh = (_activation_name(self.cell.recurrent_activation),
                     _activation_name(self.cell.activation))
        return {"i": sig, "f": sig, "z": tanh, "o": sig}

    def step(self, x, states):
        cell = self.cell
        h, (_, c) = cell.call(x, list(states), training=False)
        a = ops.matmul(x, cell.kernel) + ops.matmul(states[0], cell.recurrent_kernel)
        if cell.use_bias:
            a = a + cell.bias
        i, f, z, o = ops.split(a, 4, axis=-1)
        sig, tanh = cell.recurrent_activation, cell.activation
        return [h, c], {"i": sig(i), "f": sig(f), "z": tanh(z), "o": sig(o)}


class _GRUReader(_CellReader):
    kind = "keras_gru"
    block_names = ("u", "r", "n")
    gate_names = ("u", "r", "n")

    def block_activations(self):
        sig, tanh = (_activation_name(self.cell.recurrent_activation),
                     _activation_name(self.cell.activation))
        return {"u": sig, "r": sig, "n": tanh}

    def step(self, x, states):
        cell = self.cell
        h_prev = states[0]
        h, _ = cell.call(x, [h_prev], training=False)
        units = self.units
        a_x = ops.matmul(x, cell.kernel)
        rec_bias = None
        if cell.use_bias:
            if cell.reset_after:
                a_x = a_x + cell.bias[0]
                rec_bias = cell.bias[1]
            else:
                a_x = a_x + cell.bias
        x_u, x_r, x_n = ops.split(a_x, 3, axis=-1)
        if cell.reset_after:
            a_h = ops.matmul(h_prev, cell.recurrent_kernel)
            if rec_bias is not None:
                a_h = a_h + rec_bias
            h_u, h_r, h_n = ops.split(a_h, 3, axis=-1)
        else:
            h_u, h_r = ops.split(ops.matmul(h_prev, cell.recurrent_kernel[:, : 2 * units]), 2,
                                 axis=-1)
        u = cell.recurrent_activation(x_u + h_u)
        r = cell.recurrent_activation(x_r + h_r)
        if cell.reset_after:
            n = cell.activation(x_n + r * h_n)
        else:
            n = cell.activation(x_n + ops.matmul(r * h_prev, cell.recurrent_kernel[:, 2 * units:]))
        return [h], {"u": u, "r": r, "n": n}


def _reader_for(cell) -> _CellReader | None:
    if isinstance(cell, LectureCell):
        return _LectureReader(cell)
    # Subclasses of Keras's cells may change the equations: read the exact classes only.
    exact = {
        keras.layers.SimpleRNNCell: _SimpleRNNReader,
        keras.layers.LSTMCell: _LSTMReader,
        keras.layers.GRUCell: _GRUReader,
    }
    reader = exact.get(type(cell))
    return reader(cell) if reader is not None else None


class _Target:
    """One probed RNN layer: its key prefix and one reader per (sub-)cell."""

    def __init__(self, layer, key: str, direction: str | None):
        self.layer = layer
        self.key = key
        self.direction = direction
        cell = layer.cell
        if isinstance(cell, keras.layers.StackedRNNCells):
            readers = [_reader_for(c) for c in cell.cells]
            self.readers = readers if all(r is not None for r in readers) else []
            self.keys = [f"{key}/cell_{k}" for k in range(len(readers))]
            self.stacked = True
        else:
            reader = _reader_for(cell)
            self.readers = [reader] if reader is not None else []
            self.keys = [key]
            self.stacked = False

    @property
    def readable(self) -> bool:
        return bool(self.readers)


def _walk(layer, prefix: str, out: list[_Target]) -> None:
    if isinstance(layer, keras.layers.Bidirectional):
        for direction, sub in (("forward", layer.forward_layer),
                               ("backward", layer.backward_layer)):
            if isinstance(sub, keras.layers.RNN):
                out.append(_Target(sub, f"{prefix}{layer.name}/{direction}", direction))
    elif isinstance(layer, keras.layers.RNN):
        out.append(_Target(layer, f"{prefix}{layer.name}", None))
    elif isinstance(layer, keras.Model):
        for sub in layer.layers:
            _walk(sub, f"{prefix}{layer.name}/", out)


def _find_targets(model) -> list[_Target]:
    found: list[_Target] = []
    for layer in model.layers:
        _walk(layer, "", found)
    return found


def probed_layers(model) -> list[str]:
    """The trace keys `probe(model, ...)` fills, in model order."""
    return [key for t in _find_targets(model) if t.readable for key in t.keys]


class _Entry:
    """What one probed (sub-)cell recorded during one traced forward pass."""

    def __init__(self, key, reader, index):
        self.key = key
        self.reader = reader
        self.index = index
        self.states = {}
        self.gates = {}
        self.eps = None
        self.mask = None
        self.jacobian_inputs = None
        # The initial states where `_jacobian` has the cell's closed form (None elsewhere).
        self.initial_states = None


class _Recorder:
    def __init__(self, tape):
        self.tape = tape
        self.entries: dict[str, _Entry] = {}
        self.calls: dict[int, int] = {}

    def new_entries(self, target: _Target) -> list[_Entry]:
        n = self.calls.get(id(target.layer), 0)
        self.calls[id(target.layer)] = n + 1
        suffix = "" if n == 0 else f"@{n}"
        entries = [_Entry(key + suffix, reader, k)
                   for k, (key, reader) in enumerate(zip(target.keys, target.readers))]
        for entry in entries:
            self.entries[entry.key] = entry
        return entries


def _time_major(t):
    perm = [1, 0] + list(range(2, len(t.shape)))
    return tf.transpose(t, perm)


def _probing_call(target: _Target, recorder: _Recorder):
    def call(sequences, initial_state=None, mask=None, training=None, **kwargs):
        del training, kwargs  # the probe always runs the inference path (no dropout)
        return _run_layer(target, recorder, sequences, initial_state, mask)

    return call


def _run_layer(target: _Target, recorder: _Recorder, sequences, initial_state, mask):
    layer = target.layer
    readers = target.readers
    _validation.check_sequences_shape(layer.name, tuple(sequences.shape))
    dtype = layer.cell.compute_dtype
    sequences = tf.cast(sequences, dtype)
    batch = tf.shape(sequences)[0]
    steps = sequences.shape[1] if sequences.shape[1] is not None else tf.shape(sequences)[1]

    if initial_state is not None:
        init_structure = list(initial_state) if isinstance(initial_state, (list, tuple)) \
            else [initial_state]
    elif layer.stateful:
        init_structure = tf.nest.map_structure(lambda v: v.value, list(layer.states))
        expected = tf.nest.flatten(init_structure)[0].shape[0]
        if sequences.shape[0] is not None and expected != sequences.shape[0]:
            raise ValueError(
                f"probe: layer '{layer.name}' is stateful with batch size {expected}; probe it "
                f"with a batch of that size, got {sequences.shape[0]}."
            )
    else:
        init_structure = layer.get_initial_state(batch)
        init_structure = list(init_structure) if isinstance(init_structure, (list, tuple)) \
            else [init_structure]
    flat_init = [tf.cast(s, dtype) for s in tf.nest.flatten(init_structure)]
    n_states = sum(len(r.state_names) for r in readers)
    if len(flat_init) != n_states:
        raise ValueError(
            f"probe: layer '{layer.name}' got {len(flat_init)} initial state tensors, its cell "
            f"has {n_states} states."
        )

    if mask is not None:
        mask = tf.cast(mask, tf.bool)
        if len(mask.shape) == 3:
            mask = mask[:, :, 0]
    entries = recorder.new_entries(target)
    eps = []
    for reader in readers:
        e = tf.zeros(tf.stack([batch, steps, reader.units]), dtype=dtype)
        recorder.tape.watch(e)
        eps.append(e)

    backwards = bool(layer.go_backwards)

    def processing(t):
        return None if t is None else (tf.reverse(t, [1]) if backwards else t)

    xs = _time_major(processing(sequences))
    es = tuple(_time_major(processing(e)) for e in eps)
    ms = None if mask is None else tf.transpose(processing(mask))
    zero_output = bool(getattr(layer, "zero_output_for_mask", False))
    gate_counts = [len(r.gate_names) for r in readers]
    out_units = readers[-1].units

    def step(acc, elem):
        states, prev_out, _ = acc
        if ms is None:
            x_t, eps_t = elem
            keep = None
        else:
            x_t, eps_t, m_t = elem
            keep = m_t[:, None]
        new_flat, gates_flat = [], []
        inp, offset = x_t, 0
        for k, reader in enumerate(readers):
            n = len(reader.state_names)
            prev = list(states[offset: offset + n])
            offset += n
            new, gates = reader.step(inp, prev)
            new = [tf.cast(s, dtype) for s in new]
            gates = [tf.cast(gates[name], dtype) for name in reader.gate_names]
            if keep is not None:
                new = [tf.where(keep, s, p) for s, p in zip(new, prev)]
                gates = [tf.where(keep, g, tf.constant(np.nan, dtype)) for g in gates]
            new[0] = new[0] + eps_t[k]
            new_flat.extend(new)
            gates_flat.extend(gates)
            inp = new[0]
        out = inp
        if keep is not None:
            out = tf.where(keep, out, tf.zeros_like(out) if zero_output else prev_out)
        return tuple(new_flat), out, tuple(gates_flat)

    zeros = tf.zeros(tf.stack([batch, out_units]), dtype=dtype)
    gate_init = tuple(
        tf.zeros(tf.stack([batch, r.units]), dtype=dtype) for r in readers for _ in r.gate_names
    )
    native = _native_probe_kind(target, mask, dtype)
    if native is not None:
        states_tm, outs_tm, gates_tm = _native_scan(*native, xs, es[0], flat_init)
    else:
        elems = (xs, es) if ms is None else (xs, es, ms)
        states_tm, outs_tm, gates_tm = tf.scan(step, elems, initializer=(tuple(flat_init),
                                                                          zeros, gate_init))

    def input_order(t_major):
        return processing(_time_major(t_major))

    offset, goffset = 0, 0
    previous_h = None
    for entry, reader, count in zip(entries, readers, gate_counts):
        n = len(reader.state_names)
        seqs = states_tm[offset: offset + n]
        inits = flat_init[offset: offset + n]
        entry.states = {name: input_order(s) for name, s in zip(reader.state_names, seqs)}
        entry.gates = {name: input_order(g) for name, g in
                       zip(reader.gate_names, gates_tm[goffset: goffset + count])}
        entry.eps = eps[entry.index]
        entry.mask = mask
        step_inputs = xs if previous_h is None else previous_h
        prev_states = [tf.concat([s0[None], s[:-1]], axis=0) for s0, s in zip(inits, seqs)]
        entry.jacobian_inputs = (step_inputs, prev_states, ms, backwards)
        if _jacobian.closed_form_kind(reader.cell, reader.kind) is not None:
            # σ_max comes from the states and gates after the graph (`_closed_form_norms`):
            # it needs the initial states besides them.
            entry.initial_states = list(inits)
        previous_h = seqs[0]
        offset += n
        goffset += count

    outputs = tf.cast(_time_major(outs_tm), layer.compute_dtype)
    output = outputs if layer.return_sequences else outputs[:, -1]
    if layer.return_state:
        final = [tf.cast(s[-1], layer.compute_dtype) for s in states_tm]
        return (output, *tf.nest.pack_sequence_as(init_structure, final))
    return output


def _native_probe_kind(target: _Target, mask, dtype):
    """(op module, kernel name, reader) where the probe can run a layer's forward pass and
    its backward pass through time in the compiled kernels of `keras_rnnx._native`, else None.

    That is where `keras_rnnx.RNN` trains with them: one of the four lecture cells by exact
    type, tanh/sigmoid, float32, no mask, on the CPU outside XLA.
    """
    from keras_rnnx import _native, rnn

    if target.stacked or mask is not None or dtype != "float32":
        return None
    reader = target.readers[0]
    cell = reader.cell
    kind = rnn.native_cell_kind(cell)
    if (kind is None or cell.recurrent_kernel.dtype != "float32"
            or not rnn._cpu_outside_xla()):
        return None
    module = _native.load()
    return None if module is None else (module, kind, reader)


def _native_scan(module, kind: str, reader: _CellReader, xs, eps, flat_init):
    """What `tf.scan` over the cell's steps returns, from the compiled kernels.

    xs (T, B, D) and eps (T, B, U) are time-major in processing order. The states are those
    of `reader.step`; ε_t is zero, so it changes no value, and its gradient, the total
    derivative ∂L/∂h_t, is what the kernels' backward loop carries at step t: the gradient
    arriving from above (the layer's output at t) plus the one through the next step,
    ∂L/∂a_{t+1} · R_hᵀ (h_t enters a_{t+1} = p_{t+1} + h_t R_h only).
    """
    cell = reader.cell
    kernel = tf.convert_to_tensor(cell.kernel)
    recurrent = tf.convert_to_tensor(cell.recurrent_kernel)
    width = int(kernel.shape[-1])
    two_states = len(reader.state_names) == 2
    shape = tf.shape(xs)
    projected = tf.matmul(tf.reshape(xs, tf.stack([-1, shape[2]])), kernel)
    if cell.use_bias:
        projected = projected + tf.convert_to_tensor(cell.bias)
    projected = tf.reshape(projected, tf.stack([shape[0], shape[1], width]))
    h0 = flat_init[0]
    c0 = flat_init[1] if two_states else tf.zeros_like(h0)

    @tf.custom_gradient
    def run(projected, recurrent, h0, c0, eps):
        h, c, gates = module.rnnx_cell_forward(projected, recurrent, h0, c0, cell=kind)

        def grad(dh, dc, dgates):
            del dgates  # the gates reach the loss through h and c only
            dh = tf.zeros_like(h) if dh is None else dh
            # Only c_T reaches the loss (through `return_state`); c_t for t < T is reported.
            dc_last = tf.zeros_like(c0) if dc is None else dc[-1]
            dp, d_recurrent, dh0, dc0 = module.rnnx_cell_backward(
                recurrent, h0, c0, h, c, gates, dh, tf.zeros_like(h0), dc_last, cell=kind)
            through_next = tf.matmul(tf.reshape(dp[1:], [-1, width]), recurrent,
                                     transpose_b=True)
            d_eps = dh + tf.concat([tf.reshape(through_next, tf.shape(dh[1:])),
                                    tf.zeros_like(dh[:1])], axis=0)
            return dp, d_recurrent, dh0, dc0, d_eps

        return (h, c, gates), grad

    h, c, gates = run(projected, recurrent, h0, c0, eps)
    states = (h, c) if two_states else (h,)
    names = reader.gate_names
    blocks = tf.split(gates, len(reader.block_names), axis=-1) if names else []
    return states, h, tuple(blocks)


def _jacobian_norm(entry: _Entry):
    """‖∂s_t/∂s_{t-1}‖₂ per sample and step, (B, T), in input order, for cells without a
    closed form (the lecture cells' come from `_closed_form_norms`).

    The step is independent across the batch, so the B·T steps are run as one batch, and the
    S rows of each S×S Jacobian come from one backward pass over S stacked copies of that
    batch, copy j seeded with e_j (what `batch_jacobian` does, without its `pfor` tracing
    cost).
    """
    step_inputs, prev_states, ms, backwards = entry.jacobian_inputs
    reader = entry.reader
    steps, batch = tf.shape(step_inputs)[0], tf.shape(step_inputs)[1]
    dtype = reader.cell.variable_dtype
    n = steps * batch
    x = tf.reshape(tf.cast(step_inputs, dtype), tf.stack([n, -1]))
    s_prev = tf.concat([tf.cast(s, dtype) for s in prev_states], axis=-1)
    sizes = [int(s.shape[-1]) for s in prev_states]
    size = int(s_prev.shape[-1])
    s_prev = tf.reshape(s_prev, tf.stack([n, size]))
    x_rep, s_rep = tf.tile(x, [size, 1]), tf.tile(s_prev, [size, 1])
    with tf.GradientTape() as tape:
        tape.watch(s_rep)
        parts = tf.split(s_rep, sizes, axis=-1)
        new_states, _ = reader.step(x_rep, parts)
        s_new = tf.concat([tf.cast(s, dtype) for s in new_states], axis=-1)
        seed = tf.repeat(tf.eye(size, dtype=dtype), n, axis=0)
        picked = tf.reduce_sum(s_new * seed)
    rows = tape.gradient(picked, s_rep)
    jac = tf.transpose(tf.reshape(rows, tf.stack([size, n, size])), [1, 0, 2])
    return _input_order(tf.reshape(_exact_norms(jac), tf.stack([steps, batch])), ms, backwards)


def _exact_norms(jac):
    """σ_max of each (S, S) matrix of `jac` (M, S, S), as sqrt(λ_max(J Jᵀ)); NaN where J or
    J Jᵀ is not finite."""
    # σ_max(J) = sqrt(λ_max(J Jᵀ)): a symmetric eigenvalue problem is ~4x cheaper than an SVD
    # and exact to float precision for the largest singular value.
    gram = tf.matmul(jac, jac, transpose_b=True)
    # The eigensolver fails on NaN/Inf (a diverged run): solve a zero matrix there, report NaN.
    finite = tf.reduce_all(tf.math.is_finite(gram), axis=[1, 2])
    gram = tf.where(finite[:, None, None], gram, tf.zeros_like(gram))
    norms = tf.sqrt(tf.maximum(tf.linalg.eigvalsh(gram)[:, -1], 0.0))
    return tf.where(finite, norms, tf.fill(tf.shape(norms), tf.constant(np.nan, jac.dtype)))


def _input_order(norms, ms, backwards):
    """(T, B) norms in processing order → (B, T) in input order, masked steps 1."""
    if ms is not None:
        norms = tf.where(ms, norms, tf.ones_like(norms))
    norms = tf.transpose(norms)
    return tf.reverse(norms, [1]) if backwards else norms


def _block_norms(grad, n_blocks: int, units: int):
    if grad is None:
        return None
    g = tf.reshape(tf.cast(grad, tf.float32), [-1, n_blocks, units])
    return tf.sqrt(tf.reduce_sum(tf.square(g), axis=[0, 2]))


@contextlib.contextmanager
def _intercepted(targets: list[_Target], recorder: _Recorder, model):
    """Swaps the probing loop in for the targets' `call`, on these instances, for one trace."""
    patched = []

    def patch(obj, name, value):
        had = name in obj.__dict__
        patched.append((obj, name, had, obj.__dict__.get(name)))
        object.__setattr__(obj, name, value)

    with _PATCH_LOCK:
        try:
            for target in targets:
                patch(target.layer, "call", _probing_call(target, recorder))
            for layer in _bidirectional_layers(model):
                # The fused (cuDNN) paths would bypass the sub-layers' `call`.
                for name in ("_can_attempt_fused_lstm", "_can_attempt_fused_gru"):
                    patch(layer, name, lambda *args, **kwargs: False)
            yield
        finally:
            for obj, name, had, old in reversed(patched):
                if had:
                    object.__setattr__(obj, name, old)
                else:
                    object.__delattr__(obj, name)


def _bidirectional_layers(model):
    stack, found = list(model.layers), []
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.layers.Bidirectional):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            stack.extend(layer.layers)
    return found


def _compiled_loss(model, y, y_pred, sample_weight):
    compile_loss = model._compile_loss
    # A multi-output CompileLoss updates one Mean metric per output: put them back.
    variables = [v for m in compile_loss.metrics for v in m.variables]
    saved = [tf.identity(v.value) for v in variables]
    loss = compile_loss(y, y_pred, sample_weight)
    for v, value in zip(variables, saved):
        v.assign(value)
    return tf.cast(loss, tf.float32)


def _to_tensors(structure, name):
    def convert(a):
        if a is None:
            return None
        t = tf.convert_to_tensor(a)
        if t.dtype == tf.float64:
            t = tf.cast(t, keras.backend.floatx())
        return t

    try:
        return tf.nest.map_structure(convert, structure)
    except (TypeError, ValueError) as err:
        raise TypeError(f"probe: could not convert `{name}` to tensors: {err}") from err


def _signature(structure) -> tuple:
    """A hashable key of a nest of tensors: its structure, shapes and dtypes."""
    flat = tf.nest.flatten(structure)
    return (str(tf.nest.map_structure(lambda _: 0, structure)),
            tuple(None if t is None else (tuple(t.shape), t.dtype.name) for t in flat))


def _batch_size(structure, name) -> int:
    sizes = set()
    for t in tf.nest.flatten(structure):
        if t is None:
            continue
        if len(t.shape) == 0:
            raise ValueError(f"probe: `{name}` must have a batch axis, got a scalar.")
        sizes.add(int(t.shape[0]))
    if len(sizes) > 1:
        raise ValueError(
            f"probe: the arrays in `{name}` have different batch sizes {sorted(sizes)}."
        )
    if not sizes:
        raise ValueError(f"probe: `{name}` holds no array.")
    (size,) = sizes
    if size == 0:
        raise ValueError(f"probe: `{name}` is an empty batch (batch size 0).")
    return size


def _check_x(model, x) -> None:
    try:
        specs = list(model.inputs)
    except (AttributeError, ValueError):
        return
    arrays = tf.nest.flatten(x)
    if len(arrays) != len(specs):
        raise ValueError(
            f"probe: model '{model.name}' has {len(specs)} inputs, `x` holds {len(arrays)} arrays."
        )
    for spec, arr in zip(specs, arrays):
        expected, got = tuple(spec.shape), tuple(arr.shape)
        if len(expected) != len(got) or any(
            e is not None and e != g for e, g in zip(expected[1:], got[1:])
        ):
            which = "" if len(specs) == 1 else f" {specs.index(spec)}"
            raise ValueError(
                f"probe: `x` has shape {got} but model '{model.name}' expects input{which} "
                f"of shape {expected} (None: any size)."
            )


class Trace(dict):
    """`probe`'s result: a dict from layer key to that layer's arrays, plus `loss`.

    Each value is a dict with keys `states`, `gates`, `grad_h`, `grad_norm`, `jacobian_norm`,
    `recurrent_sigma_max`, `recurrent_sigma_threshold`, `weight_grad_norm` and `meta`; see
    `probe`. `loss` is L as a float, or None when no targets were given.
    """

    loss: float | None = None


class Probe:
    """A probe bound to one model: traced on first use, then rerun as a graph.

    `Probe(model)(x, y)` returns a `Trace` (see `probe`). The traced function is kept for the
    probe's lifetime and retraced only for new input shapes or dtypes, a change between `y`
    given and not given, or a recompiled loss; `trace_count` counts the traces. The probe
    holds the model weakly.
    """

    def __init__(self, model, *, layers=None, jacobian: bool = True):
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"probe expects a `keras.Model`, got {model!r} (type {type(model).__name__})."
            )
        if keras.backend.backend() != "tensorflow":
            raise RuntimeError(
                f"The probe needs the TensorFlow backend; Keras runs on "
                f"'{keras.backend.backend()}'."
            )
        targets = _find_targets(model)
        readable = [t for t in targets if t.readable]
        if not readable:
            found = [f"{t.key} ({type(t.layer.cell).__name__})" for t in targets]
            raise ValueError(
                f"probe: model '{model.name}' has no recurrent layer the probe can read. It "
                f"reads `keras.layers.RNN` layers (also inside `Bidirectional` and nested "
                f"models) whose cell is one of keras_rnnx's four cells or Keras's "
                f"SimpleRNNCell, LSTMCell or GRUCell; found "
                f"{', '.join(found) if found else 'no RNN layer'}."
            )
        if layers is not None:
            names = [layers] if isinstance(layers, str) else list(layers)
            available = [key for t in readable for key in t.keys]
            for name in names:
                if not any(k == name or k.startswith(name + "/") for k in available):
                    raise ValueError(
                        f"probe: no probed layer named {name!r} in model '{model.name}'; "
                        f"available: {available}."
                    )
            readable = [t for t in readable
                        if any(k == n or k.startswith(n + "/") for k in t.keys for n in names)]
        self._model_ref = weakref.ref(model)
        self._targets = readable
        self.jacobian = bool(jacobian)
        self.layer_keys = [key for t in readable for key in t.keys]
        self.trace_count = 0
        self._function = None
        self._concrete: dict = {}  # input signature -> the traced graph, called directly
        self._compile_loss = None
        self._statics: dict = {}  # layer key -> (block activations, thresholds)
        self._ritz: dict = {}  # layer key -> the last Jacobian Ritz vectors (B·T, S)

    @property
    def model(self):
        model = self._model_ref()
        if model is None:
            raise ReferenceError("probe: the model this probe was made for no longer exists.")
        return model

    def __call__(self, x, y=None, sample_weight=None) -> Trace:
        model = self.model
        if x is None:
            raise ValueError("probe: `x` is None; pass a batch of input sequences.")
        x = _to_tensors(x, "x")
        batch = _batch_size(x, "x")
        _check_x(model, x)
        if y is None and sample_weight is not None:
            raise ValueError("probe: `sample_weight` was given without `y`.")
        if y is not None:
            if getattr(model, "_compile_loss", None) is None:
                raise ValueError(
                    f"probe: `y` was given but model '{model.name}' has no compiled loss to "
                    f"differentiate; call `model.compile(loss=...)` first, or pass y=None to "
                    f"get states, gates and Jacobians only."
                )
            y = _to_tensors(y, "y")
            y_batch = _batch_size(y, "y")
            if y_batch != batch:
                raise ValueError(f"probe: `x` has batch size {batch} but `y` has {y_batch}.")
            if sample_weight is not None:
                sample_weight = _to_tensors(sample_weight, "sample_weight")
            self._ensure_loss_built(model, x, y, sample_weight)
        if self._function is None or self._compile_loss is not getattr(model, "_compile_loss",
                                                                         None):
            self._compile_loss = getattr(model, "_compile_loss", None)
            self._function = tf.function(self._traced, autograph=False)
            self._concrete = {}
        try:
            # Calling the concrete function skips tf.function's signature matching, about a
            # millisecond a call: a good part of a cheap probe.
            key = _signature((x, y, sample_weight))
            concrete = self._concrete.get(key)
            if concrete is None:
                concrete = self._concrete[key] = self._function.get_concrete_function(
                    x, y, sample_weight)
            raw = concrete(x, y, sample_weight)
        except (ValueError, TypeError) as err:
            if y is not None and "structure" in str(err):
                raise ValueError(
                    f"probe: `y` does not match the outputs of model '{model.name}': {err}"
                ) from err
            raise
        return self._assemble(raw)

    def _ensure_loss_built(self, model, x, y, sample_weight):
        """Builds the compiled loss eagerly, so that its per-output metrics (variables) are
        not created inside the traced function; resets those new metrics afterwards."""
        compile_loss = model._compile_loss
        if compile_loss.built:
            return
        try:
            spec = model.compute_output_spec(x)
            y_pred = tf.nest.map_structure(
                lambda s: tf.zeros([1 if d is None else d for d in s.shape], s.dtype), spec)
        except Exception:  # a model whose output spec cannot be inferred: run it once
            with tf.GradientTape() as tape:
                recorder = _Recorder(tape)
                with _intercepted(self._targets, recorder, model):
                    y_pred = model(x, training=False)
        try:
            compile_loss(y, y_pred, sample_weight)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"probe: could not evaluate the compiled loss of model '{model.name}' on `y`: "
                f"{err}"
            ) from err
        for metric in compile_loss.metrics:
            metric.reset_state()

    def _traced(self, x, y, sample_weight):
        self.trace_count += 1
        model = self.model
        with tf.GradientTape() as tape:
            recorder = _Recorder(tape)
            with _intercepted(self._targets, recorder, model):
                y_pred = model(x, training=False)
            loss = None if y is None else _compiled_loss(model, y, y_pred, sample_weight)
        clear = getattr(model, "_clear_losses", None)
        if clear is not None:
            # Activity-regularizer losses of this trace are graph tensors: leave none behind.
            clear()
        entries = list(recorder.entries.values())
        weight_lists = [entry.reader.weights() for entry in entries]
        grads = None
        if loss is not None:
            sources = [entry.eps for entry in entries]
            for weights in weight_lists:
                sources.extend(w for w in weights.values() if w is not None)
            grads = tape.gradient(loss, sources,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
        out = {}
        cursor = len(entries)
        for i, (entry, weights) in enumerate(zip(entries, weight_lists)):
            reader = entry.reader
            item = {
                "states": dict(entry.states),
                "gates": dict(entry.gates),
                "mask": entry.mask,
                "grad_h": None,
                "weight_grad_norm": None,
                "jacobian_norm": (_jacobian_norm(entry) if self.jacobian
                                  and entry.initial_states is None else None),
                "recurrent_kernel": tf.convert_to_tensor(reader.cell.recurrent_kernel),
            }
            if self.jacobian and entry.initial_states is not None:
                item["initial_states"] = entry.initial_states
            if grads is not None:
                item["grad_h"] = grads[i]
                norms = {}
                for name, w in weights.items():
                    if w is None:
                        continue
                    norms[name] = _block_norms(grads[cursor], len(reader.weight_blocks(name)),
                                               reader.units)
                    cursor += 1
                item["weight_grad_norm"] = norms
            out[entry.key] = item
        return {"loss": loss, "layers": out}

    def _static(self, key: str, reader: _CellReader):
        """(block activations, 1/γ thresholds) of a probed cell: fixed for its lifetime."""
        static = self._statics.get(key)
        if static is None:
            activations = reader.block_activations()
            thresholds = {}
            for name in reader.block_names:
                gamma = _GAMMA.get(activations[name])
                thresholds[name] = None if gamma is None else 1.0 / gamma
            static = self._statics[key] = (activations, thresholds)
        return static

    def _closed_form_norms(self, key, reader, recurrent, states, gates, initial, mask,
                           backwards):
        """σ_max(∂s_t/∂s_{t-1}) (B, T) in input order from the closed form (`_jacobian`) on
        the fetched states and gates; masked steps 1, as the exact path reports them.

        Each call starts its Lanczos steps from the previous call's Ritz vectors of the same
        layer (the probe batch stays; a few training steps move them little)."""
        names = reader.state_names
        new = [states[name] for name in names]
        batch, steps = new[0].shape[:2]
        if backwards:  # the step order the cell ran in
            new = [s[:, ::-1] for s in new]
            gates = {k: g[:, ::-1] for k, g in gates.items()}
            mask = mask[:, ::-1]
        prev = [np.concatenate([s0[:, None], s[:, :-1]], axis=1) for s0, s in zip(initial, new)]

        def rows(a):
            return a.reshape(batch * steps, a.shape[-1])

        norms, ritz = _jacobian.closed_form_norms(
            reader.kind, recurrent, [rows(gates[name]) for name in reader.gate_names],
            [rows(s) for s in prev], [rows(s) for s in new], keep=mask.reshape(-1),
            start=self._ritz.get(key))
        self._ritz[key] = ritz
        norms = np.where(mask, norms.reshape(batch, steps), 1.0)
        return norms[:, ::-1] if backwards else norms

    def _assemble(self, raw) -> Trace:
        trace = Trace()
        trace.loss = None if raw["loss"] is None else float(raw["loss"])
        entries = {}
        for target in self._targets:
            for key, reader in zip(target.keys, target.readers):
                entries[key] = (target, reader)
        for key, item in raw["layers"].items():
            base = key.split("@")[0]
            target, reader = entries[base]
            states = {k: np.asarray(v, dtype=np.float32) for k, v in item["states"].items()}
            h = states["h"]
            batch, steps = h.shape[0], h.shape[1]
            mask = (np.ones((batch, steps), dtype=bool) if item["mask"] is None
                    else np.asarray(item["mask"], dtype=bool))
            grad_h = grad_norm = None
            if item["grad_h"] is not None:
                grad_h = np.asarray(item["grad_h"], dtype=np.float32)
                grad_norm = np.sqrt(np.sum(np.square(grad_h, dtype=np.float64), axis=(0, 2)))
            weight_grad_norm = None
            if item["weight_grad_norm"] is not None:
                weight_grad_norm = {
                    name: dict(zip(reader.weight_blocks(name),
                                   np.asarray(v, dtype=np.float64).tolist()))
                    for name, v in item["weight_grad_norm"].items()
                }
            activations, thresholds = self._static(key, reader)
            recurrent = np.asarray(item["recurrent_kernel"])
            sigma = _recurrent_sigma(reader, recurrent)
            layer = target.layer
            gates = {k: np.asarray(v, dtype=np.float32) for k, v in item["gates"].items()}
            jacobian = item["jacobian_norm"]
            if "initial_states" in item:
                jacobian = self._closed_form_norms(
                    key, reader, recurrent, states, gates,
                    [np.asarray(s, np.float32) for s in item["initial_states"]], mask,
                    bool(layer.go_backwards))
            trace[key] = {
                "states": states,
                "gates": gates,
                "grad_h": grad_h,
                "grad_norm": grad_norm,
                "jacobian_norm": (None if jacobian is None
                                  else np.asarray(jacobian, dtype=np.float32)),
                "recurrent_sigma_max": sigma,
                "recurrent_sigma_threshold": dict(thresholds),
                "weight_grad_norm": weight_grad_norm,
                "meta": {
                    "key": key,
                    "layer": layer.name,
                    "kind": reader.kind,
                    "cell_class": type(reader.cell).__name__,
                    "units": reader.units,
                    "timesteps": int(steps),
                    "batch_size": int(batch),
                    "state_names": tuple(reader.state_names),
                    "gate_names": tuple(reader.gate_names),
                    "block_names": tuple(reader.block_names),
                    "block_activations": dict(activations),
                    "mask": mask,
                    "go_backwards": bool(layer.go_backwards),
                    "time_order": "input",
                    "return_sequences": bool(layer.return_sequences),
                    "direction": target.direction,
                    "stack_index": target.keys.index(base) if target.stacked else None,
                },
            }
        return trace


def _recurrent_sigma(reader: _CellReader, kernel: np.ndarray) -> dict[str, float]:
    """σ_max of each block R_k of the recurrent kernel (U, blocks·U); NaN for a block that is
    not finite (a diverged run has no SVD)."""
    units = reader.units
    names = reader.block_names
    blocks = np.asarray(kernel, np.float64).reshape(units, len(names), units).transpose(1, 0, 2)
    finite = np.isfinite(blocks).all(axis=(1, 2))
    sigma = np.full(len(names), np.nan)
    if finite.any():
        # sqrt(λ_max(R_kᵀ R_k)) in float64: the largest singular value to float64 precision,
        # several times cheaper than an SVD of each block.
        kept = blocks[finite]
        gram = np.swapaxes(kept, 1, 2) @ kept
        sigma[finite] = np.sqrt(np.maximum(np.linalg.eigvalsh(gram)[:, -1], 0.0))
    return dict(zip(names, sigma.tolist()))


_PROBES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def get_probe(model, *, layers=None, jacobian: bool = True) -> Probe:
    """The `Probe` that `probe(model, ..., layers=layers, jacobian=jacobian)` uses (cached)."""
    key = (None if layers is None else tuple([layers] if isinstance(layers, str) else layers),
           bool(jacobian))
    try:
        probes = _PROBES.setdefault(model, {})
    except TypeError:
        return Probe(model, layers=layers, jacobian=jacobian)
    if key not in probes:
        probes[key] = Probe(model, layers=layers, jacobian=jacobian)
    return probes[key]


def probe(model, x, y=None, *, layers=None, jacobian: bool = True,
          sample_weight=None) -> Trace:
    """Run `model` on the probe batch `x` (and targets `y`) and trace its recurrent layers.

    Args:
        model: a built `keras.Model` (Sequential, Functional or subclassed) with at least one
            `keras.layers.RNN` whose cell the probe reads (see the module docstring).
        x: the inputs, as for `model(x)`; a small batch (B sequences of T steps).
        y: the targets for the compiled loss, or None to skip the gradient fields.
        layers: a key or list of keys to probe (a Keras layer name also selects its
            `/forward`, `/backward` or `/cell_k` parts); default all.
        jacobian: compute `jacobian_norm` (the expensive part); False leaves it None.
        sample_weight: passed to the compiled loss with `y`.

    Returns:
        A `Trace`: `trace.loss` (float or None) and, per layer key, a dict of NumPy arrays:

        - `states`: `{"h": (B, T, U)}`, plus `"c"` for two-state cells: the state after step t.
        - `gates`: `{name: (B, T, U)}`, σ(·) for i, f, o (and u, r) and tanh(·) for z (and
          n); `{}` for vanilla and SimpleRNN cells.
        - `grad_h`: (B, T, U), the total derivative ∂L/∂h_t (all paths, upper layers
          included), or None without `y`.
        - `grad_norm`: (T,), the L2 norm of `grad_h[:, t, :]`, or None without `y`.
        - `jacobian_norm`: (B, T), the largest singular value of ∂s_t/∂s_{t-1} with s the
          states concatenated in state order (s_{-1} the initial state), or None.
        - `recurrent_sigma_max`: `{block: σ_max}` of the recurrent kernel's column block
          (h_{t-1} → block; for the LSTM variant FGR the gate recurrence G is not in it, while
          `jacobian_norm` covers the full state [h, c, g]).
        - `recurrent_sigma_threshold`: `{block: 1/γ}` for the block's activation (1 for tanh,
          4 for sigmoid), None where γ is not known.
        - `weight_grad_norm`: `{"kernel" | "recurrent_kernel" | "bias": {block: norm}}`, or
          None without `y`. The LSTM variants add their peephole vectors
          (`"input_gate_peephole_weights": {"i": norm}`, likewise f and o) and FGR's
          `"gate_recurrent_kernel": {"i" | "f" | "o": norm}` (its column blocks).
        - `meta`: key, layer, kind, cell_class, units, timesteps, batch_size, state_names,
          gate_names, block_names, block_activations, mask (B, T), go_backwards,
          time_order ("input"), return_sequences, direction, stack_index.

    The traced function is cached per model (and per `layers`/`jacobian`), so calling this
    every few dozen training steps costs one forward and one backward pass of the probe batch.
    """
    return get_probe(model, layers=layers, jacobian=jacobian)(x, y, sample_weight=sample_weight)
