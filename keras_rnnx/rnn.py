"""`keras_rnnx.RNN`: `keras.layers.RNN` with a fast path for the lecture cells and clear errors."""

from __future__ import annotations

import sys

import keras
from keras import ops

# Keras's backend loop (`backend.rnn`) and its cuDNN LSTM (`backend.lstm`) are not exported
# under `keras.ops`; `keras.layers.RNN` and `keras.layers.LSTM` call them the same way.
from keras.src import backend as keras_backend

from keras_rnnx import _native, _validation
from keras_rnnx._native import select as _select
from keras_rnnx.cells.base import LectureCell
from keras_rnnx.cells.cec import CECCell
from keras_rnnx.cells.forget_gate_lstm import ForgetGateLSTMCell
from keras_rnnx.cells.lstm_variants import LSTMVariantCell
from keras_rnnx.cells.original_lstm import OriginalLSTMCell
from keras_rnnx.cells.vanilla import VanillaRNNCell

# The cells that the compiled kernels implement, by exact type (a subclass may change the
# equations), and the kernels' name for each.
_NATIVE_CELLS = {ForgetGateLSTMCell: "forget", OriginalLSTMCell: "original", CECCell: "cec",
                 VanillaRNNCell: "vanilla"}


def native_cell_kind(cell) -> str | None:
    """The compiled kernels' name for `cell` if it is exactly one of the four lecture cells
    with tanh and sigmoid activations, else None (dtypes, backend and device not checked)."""
    kind = _NATIVE_CELLS.get(type(cell))
    if (kind is None or cell.activation is not keras.activations.tanh
            or getattr(cell, "recurrent_activation", keras.activations.sigmoid)
            is not keras.activations.sigmoid):
        return None
    return kind


def _has_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def _in_xla_context() -> bool:
    """Whether the current graph is compiled by XLA.

    Raises ImportError where TensorFlow lacks the module that tells the XLA context.
    """
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def _cpu_outside_xla() -> bool:
    """Whether TensorFlow sees no GPU and the current graph is not compiled by XLA.

    Raises ImportError where TensorFlow lacks the module that tells the XLA context.
    """
    return not _has_gpu() and not _in_xla_context()


@keras.saving.register_keras_serializable(package="keras_rnnx")
class RNN(keras.layers.RNN):
    """A drop-in `keras.layers.RNN`: same arguments, weights, configuration and outputs.

    For the four lecture cells it trains on a faster path than the generic step loop: the
    input projection x_t @ kernel + bias is computed for all t as one large matrix product
    before the recurrence, so each step does a single fused h_{t-1} @ recurrent_kernel and the
    cell's equations. In inference on the CPU (eager, `tf.function`, `predict`, and under XLA
    as a custom call) the same cells in float32 with their default activations, without a mask
    or `unroll`, run a compiled forward-only kernel wherever it measured faster than the
    generic loop for that shape class (as for training, below); graphs traced by
    `model.export`, `tf.saved_model.save`, TensorFlow Lite's converter or tf2onnx keep the
    generic loop, so that what they produce runs without keras-rnnx (a `tf.function` you
    trace yourself and then convert or save holds the kernel: trace it with
    `KERAS_RNNX_NATIVE=0`). On the CPU,
    without XLA, the four cells with their default tanh/sigmoid activations in float32, without
    a mask or recurrent dropout, train with compiled kernels for the recurrence and its
    backward pass (`keras_rnnx._native`, built on first use; `keras_rnnx._native.status()`
    says whether they are loaded) wherever they measured faster than the TensorFlow loop on
    this machine, for this cell, width and batch size (`keras_rnnx._native.select`: measured
    once, when the first training graph of that shape class is traced, and cached; the
    environment variable `KERAS_RNNX_NATIVE` = 0 / 1 / auto turns them off, on, or leaves the
    choice to the measurement, the default). Dropout,
    recurrent dropout, masks, `go_backwards`, `stateful`, `unroll` and `initial_state` behave
    exactly as in `keras.layers.RNN`. In training on a GPU, a `ForgetGateLSTMCell` with
    tanh/sigmoid activations, a bias and no recurrent dropout runs on Keras's cuDNN kernel,
    as `keras.layers.LSTM` does. The LSTM variants (`LSTMVariantCell`), Keras's own cells and
    stacked cells take the generic loop: there are no compiled kernels for the variants, and
    the hoisted-projection loop measured slower than the generic one for them
    (`benchmarks/variants.py`; see the cell's docstring).

    It also checks its input before the loop runs, so that a sequence of the wrong rank, of
    zero length or of a non-float dtype is reported by name instead of failing inside the
    backend.
    """

    def build(self, sequences_shape, initial_state_shape=None):
        _validation.check_sequences_shape(f"{self.name}", sequences_shape)
        super().build(sequences_shape, initial_state_shape)

    def call(self, sequences, initial_state=None, mask=None, training=False):
        _validation.check_sequences_shape(f"{self.name}", sequences.shape)
        _validation.check_float_dtype(
            f"{self.name} (`sequences`)", keras.backend.standardize_dtype(sequences.dtype)
        )
        if initial_state is not None and not self.stateful:
            states = initial_state if isinstance(initial_state, (list, tuple)) else [initial_state]
            if len(states) != len(self.state_size):
                raise ValueError(
                    f"{self.name} expects `initial_state` to be a list of "
                    f"{len(self.state_size)} tensors (one per cell state), got {len(states)}."
                )
            for k, (state, size) in enumerate(zip(states, self.state_size)):
                if isinstance(size, int) and tuple(ops.shape(state))[-1:] != (size,):
                    raise ValueError(
                        f"{self.name}: `initial_state[{k}]` must have shape (batch, {size}), "
                        f"got {tuple(ops.shape(state))}."
                    )
        return super().call(sequences, initial_state=initial_state, mask=mask, training=training)

    def inner_loop(self, sequences, initial_state, mask, training=False):
        cell = self.cell
        # Measured in benchmarks/cells.py: the hoisted projection speeds up training on long
        # sequences (T = 1000: 0.84x the generic loop) but slows the forward-only pass under
        # XLA, where the loop reads a 4-8x wider per-step input (without XLA it gains nothing
        # in inference either: 24.4 against 23.0 ms at batch 64, T = 100, units 128).
        # Inference takes the compiled inference kernel where it measured faster than the
        # generic loop (`_inference_loop`), except in graphs traced for export or conversion
        # (`_tracing_for_export`): what those write must run without keras-rnnx.
        if not training:
            fast = self._inference_loop(sequences, initial_state, mask)
            if fast is not None:
                return fast
            return super().inner_loop(sequences, initial_state, mask, training=training)
        if not self._hoists_projection():
            return super().inner_loop(sequences, initial_state, mask, training=training)
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        # As the cell's own call would (Keras autocasts a layer's inputs to its compute
        # dtype): the RNN layer and its cell may have different dtype policies.
        x = ops.cast(sequences, cell.compute_dtype)
        initial_state = [ops.cast(s, cell.compute_dtype) for s in initial_state]
        if training and cell.dropout > 0.0:
            x = x * ops.expand_dims(cell.get_dropout_mask(x[:, 0, :]), axis=1)
        recurrent_mask = None
        if training and cell.recurrent_dropout > 0.0:
            recurrent_mask = cell.get_recurrent_dropout_mask(initial_state[0])

        if recurrent_mask is None and isinstance(cell, ForgetGateLSTMCell):
            try:
                return self._cudnn_loop(x, initial_state, mask)
            except NotImplementedError:
                pass

        projected = _project(cell, x)
        recurrent_kernel = ops.cast(cell.recurrent_kernel, x.dtype)
        kind = self._native_kind() if mask is None and recurrent_mask is None else None
        if kind is not None:
            module = _native.load()
            if module is not None and _kernels_measured_faster(module, cell, kind, projected):
                return self._native_loop(module, kind, projected, recurrent_kernel,
                                         initial_state)
        return _tf_loop(cell, projected, recurrent_kernel, initial_state, recurrent_mask,
                        mask, go_backwards=self.go_backwards, unroll=self.unroll,
                        zero_output_for_mask=self.zero_output_for_mask,
                        return_sequences=self.return_sequences)

    def _inference_loop(self, sequences, initial_state, mask):
        """The forward pass in the compiled inference kernel (a TensorFlow op, or under XLA
        the custom call "rnnx_cell_infer"), as `inner_loop` returns it; None where it does not
        apply: not one of the four cells with their activations in float32, a mask, `unroll`,
        a GPU, kernels off or measured slower for this shape class, a graph traced for
        export, a gradient tape watching, or under XLA a shape not known when the graph is
        traced."""
        cell = self.cell
        kind = native_cell_kind(cell)
        if (kind is None or mask is not None or self.unroll
                or keras.backend.backend() != "tensorflow" or cell.compute_dtype != "float32"
                or cell.kernel.dtype != "float32" or cell.recurrent_kernel.dtype != "float32"):
            return None
        import tensorflow as tf

        if _has_gpu():
            return None
        try:
            xla = _in_xla_context()
        except ImportError:  # cannot tell whether XLA compiles this graph: Keras's loop
            return None
        if not tf.executing_eagerly() and _tracing_for_export():
            return None
        from tensorflow.python.eager import record

        if record.could_possibly_record():
            # A gradient tape is watching (saliency, the probe, adversarial inputs): the
            # inference kernel has no gradient, Keras's loop has.
            return None
        module = _native.load()
        if module is None or (xla and not module.xla):
            return None
        x = tf.convert_to_tensor(sequences, tf.float32)
        batch, steps, features = x.shape
        if xla and None in (batch, steps, features):
            return None
        if not _select.use_kernels(module.path, f"{kind}-inference{'-xla' if xla else ''}",
                                   cell.units, batch,
                                   lambda b: _measure_inference(self, module, kind, b, xla)):
            return None
        h0 = tf.convert_to_tensor(initial_state[0], tf.float32)
        c0 = (tf.convert_to_tensor(initial_state[1], tf.float32) if len(initial_state) > 1
              else tf.zeros_like(h0))
        h_seq, h_last, c_last = _native_infer(
            module, kind, x, cell, h0, c0, sequences=self.return_sequences,
            backwards=self.go_backwards, xla=xla)
        outputs = h_seq if self.return_sequences else h_last[:, None, :]
        return h_last, outputs, [h_last, c_last][: len(initial_state)]

    def _hoists_projection(self) -> bool:
        """Whether training takes the hoisted-projection loop (the lecture cells only)."""
        return isinstance(self.cell, LectureCell) and not isinstance(self.cell, LSTMVariantCell)

    def _native_kind(self) -> str | None:
        """The compiled kernels' name for this layer's cell, or None where they cannot train it
        (inputs and states are in the cell's compute dtype by now; graph or eager, not XLA)."""
        cell = self.cell
        kind = native_cell_kind(cell)
        if (kind is None or keras.backend.backend() != "tensorflow" or self.unroll
                or cell.compute_dtype != "float32" or cell.recurrent_kernel.dtype != "float32"):
            return None
        try:
            outside = _cpu_outside_xla()
        except ImportError:  # cannot tell whether XLA compiles this graph: stay on the safe side
            return None
        return kind if outside else None

    def _native_loop(self, module, kind, projected, recurrent_kernel, initial_state):
        import tensorflow as tf

        if self.go_backwards:
            projected = tf.reverse(projected, [0])
        h0 = initial_state[0]
        # The vanilla cell has one state; the kernels carry a second one that it ignores.
        c0 = initial_state[1] if len(initial_state) > 1 else tf.zeros_like(h0)
        h_seq, h_last, c_last = _native_cell(module, kind, projected, recurrent_kernel, h0, c0)
        outputs = (tf.transpose(h_seq, (1, 0, 2)) if self.return_sequences
                   else h_last[:, None, :])
        return h_last, outputs, [h_last, c_last][: len(initial_state)]

    def _cudnn_loop(self, x, initial_state, mask):
        """Keras's fused LSTM kernel; raises NotImplementedError where it cannot run."""
        cell = self.cell
        if (keras.backend.backend() != "tensorflow" or not cell.use_bias
                or self.zero_output_for_mask):
            raise NotImplementedError
        out = keras_backend.lstm(
            x,
            initial_state[0],
            initial_state[1],
            mask,
            kernel=cell.kernel,
            recurrent_kernel=cell.recurrent_kernel,
            bias=cell.bias,
            activation=cell.activation,
            recurrent_activation=cell.recurrent_activation,
            return_sequences=self.return_sequences,
            go_backwards=self.go_backwards,
            unroll=self.unroll,
        )
        # cuDNN ops are not XLA-compatible, as for keras.layers.LSTM.
        self.supports_jit = False
        return out


def _tf_loop(cell, projected, recurrent_kernel, initial_state, recurrent_mask=None, mask=None,
             go_backwards=False, unroll=False, zero_output_for_mask=False,
             return_sequences=True):
    """The hoisted-projection loop in TensorFlow: a_t = projected_t + h_{t-1} @ R, then the
    cell's equations. `projected`: (T, batch, n_blocks · units), time-major; returns
    (last output, outputs batch-major, final states), as `keras.layers.RNN.inner_loop`."""

    def step(projected_t, states):
        h_prev = states[0] if recurrent_mask is None else states[0] * recurrent_mask
        a = projected_t + ops.matmul(h_prev, recurrent_kernel)
        new_states, _ = cell.equations(a, states)
        return new_states[0], new_states

    last_output, outputs, states = keras_backend.rnn(
        step,
        projected,
        list(initial_state),
        go_backwards=go_backwards,
        mask=None if mask is None else ops.transpose(mask, (1, 0)),
        unroll=unroll,
        input_length=projected.shape[0],
        time_major=True,
        zero_output_for_mask=zero_output_for_mask,
        return_all_outputs=return_sequences,
    )
    return last_output, ops.transpose(outputs, (1, 0, 2)), states


def _kernels_measured_faster(module, cell, kind, projected) -> bool:
    """Whether this cell's shape class trains faster on the compiled kernels than on
    `_tf_loop` on this machine (`keras_rnnx._native.select`; measured on first use)."""
    return _select.use_kernels(
        module.path, kind, cell.units, projected.shape[1],
        lambda batch: _measure_paths(module, cell, kind, batch))


def _measure_paths(module, cell, kind, batch) -> dict[str, list[float]]:
    """Seconds per forward + backward pass through `MEASURE_STEPS` steps of the kernels and of
    `_tf_loop` for this cell at this batch size, on random inputs (interleaved rounds)."""
    import tensorflow as tf

    steps, units = _select.MEASURE_STEPS, cell.units
    width = _native_width(kind, units)
    with tf.init_scope():  # run eagerly even while a training graph is being traced
        projected = tf.random.stateless_normal((steps, batch, width), seed=(1, 2))
        recurrent_kernel = tf.random.stateless_normal((units, width), seed=(3, 4)) * 0.1
        h0 = tf.zeros((batch, units))
        initial_state = [h0, h0][: len(keras.tree.flatten(cell.state_size))]

        def gradients(run):
            # tf.gradients, not a GradientTape: init_scope pauses tapes, also inside the graph.
            @tf.function(jit_compile=False, autograph=False)
            def fn(projected, recurrent_kernel):
                loss = tf.reduce_sum(run(projected, recurrent_kernel))
                return tf.gradients(loss, [projected, recurrent_kernel])
            return lambda: [g.numpy() for g in fn(projected, recurrent_kernel)]

        return _select.time_interleaved({
            "kernels": gradients(lambda p, r: _native_cell(module, kind, p, r, h0, h0)[1]),
            "loop": gradients(lambda p, r: _tf_loop(cell, p, r, initial_state,
                                                    return_sequences=False)[0]),
        })


def _native_width(kind: str, units: int) -> int:
    return {"forget": 4, "original": 3}.get(kind, 1) * units


def _project(cell, x):
    """x @ kernel + bias for all steps, time-major: (T, batch, n_blocks · units).

    One 2-D product (batch·T, features) @ kernel: a 3-D matmul would be a batched product
    with the kernel broadcast over the batch, several times slower.
    """
    kernel = ops.cast(cell.kernel, x.dtype)
    steps = ops.shape(x)[1]
    flat = ops.reshape(ops.transpose(x, (1, 0, 2)), (-1, ops.shape(x)[2]))
    projected = ops.matmul(flat, kernel)
    if cell.use_bias:
        projected = projected + ops.cast(cell.bias, x.dtype)
    return ops.reshape(projected, (steps, -1, ops.shape(kernel)[1]))


def _native_cell(module, kind, projected, recurrent_kernel, h0, c0):
    """A lecture cell's loop in the compiled kernels, with their backward pass.

    Returns (h for every step, time-major; h_T; c_T).
    """
    import tensorflow as tf

    @tf.custom_gradient
    def run(projected, recurrent_kernel, h0, c0):
        h, c, gates = module.rnnx_cell_forward(projected, recurrent_kernel, h0, c0, cell=kind)

        def grad(dh_seq, dh_last, dc_last):
            dh_seq = tf.zeros_like(h) if dh_seq is None else dh_seq
            dh_last = tf.zeros_like(h0) if dh_last is None else dh_last
            dc_last = tf.zeros_like(c0) if dc_last is None else dc_last
            dp, _, dh0, dc0 = module.rnnx_cell_backward(
                recurrent_kernel, h0, c0, h, c, gates, dh_seq, dh_last, dc_last, cell=kind,
                with_d_recurrent_kernel=False)
            # dR = Σ_t h_{t-1}ᵀ da_t as one (T·batch)-deep product in TensorFlow's MatMul
            # (oneDNN): measured 0.75x the backward op's time with Eigen's contraction at
            # W1's shape on a 2-core AMD EPYC with AVX-512, on par at T = 1000, units 256.
            units, width = tf.shape(recurrent_kernel)[0], tf.shape(recurrent_kernel)[1]
            h_prev = tf.concat([h0[None], h], axis=0)[:-1]  # h_{t-1} for t = 0 .. T-1
            d_recurrent = tf.matmul(tf.reshape(h_prev, (-1, units)), tf.reshape(dp, (-1, width)),
                                    transpose_a=True)
            return dp, d_recurrent, dh0, dc0

        return (h, h[-1], c[-1]), grad

    return run(projected, recurrent_kernel, h0, c0)


# Modules whose tracing of a model makes a graph to run elsewhere.
_PORTABLE_TRACERS = ("keras.src.export", "tensorflow.python.saved_model", "tensorflow.lite",
                     "tf2onnx")


def _tracing_for_export() -> bool:
    """Whether the graph being traced is meant to run without keras-rnnx: inside
    `tf.saved_model.save`, or called from Keras's export code (`model.export` in every format,
    `ExportArchive`, which trace their endpoints before they save), from TensorFlow Lite's
    converter (`TFLiteConverter.from_keras_model`) or from tf2onnx."""
    from tensorflow.python.saved_model import save_context

    if save_context.in_save_context():
        return True
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith(_PORTABLE_TRACERS):
            return True
        frame = frame.f_back
    return False


def _native_infer(module, kind, x, cell, h0, c0, *, sequences, backwards, xla):
    """(h for every step batch-major, in the order the steps run, or None; h_T; c_T) of a
    lecture cell on x (batch, T, features), in the compiled inference kernel."""
    import tensorflow as tf

    width = _native_width(kind, cell.units)
    kernel = tf.convert_to_tensor(cell.kernel, tf.float32)
    recurrent_kernel = tf.convert_to_tensor(cell.recurrent_kernel, tf.float32)
    bias = (tf.convert_to_tensor(cell.bias, tf.float32) if cell.use_bias
            else tf.zeros((width,), tf.float32))
    if not xla:
        h_seq, h_last, c_last = module.rnnx_cell_infer(
            x, kernel, bias, recurrent_kernel, h0, c0, cell=kind, sequences=sequences,
            backwards=backwards)
        return (h_seq if sequences else None), h_last, c_last
    from tensorflow.compiler.tf2xla.ops import gen_xla_ops

    batch, steps, features = x.shape
    units = cell.units
    shapes = [(batch, steps, units)] * sequences + [(batch, units), (batch, units)]
    results = gen_xla_ops.xla_custom_call_v2(
        operands=[x, kernel, bias, recurrent_kernel, h0, c0],
        call_target_name="rnnx_cell_infer",
        backend_config=f"{kind} {steps} {batch} {features} {units} {int(sequences)} "
                       f"{int(backwards)}",
        has_side_effect=False, result_dtypes=[tf.float32] * len(shapes), result_shapes=shapes)
    if sequences:
        return results[0], results[1], results[2]
    return None, results[0], results[1]


def _measure_inference(layer, module, kind, batch, xla) -> dict[str, list[float]]:
    """Seconds per forward pass through `MEASURE_STEPS` steps of the inference kernel and of
    the generic loop (`keras.layers.RNN.inner_loop`) for this layer's cell at this batch size,
    on random inputs, both compiled by XLA where `xla` (interleaved rounds)."""
    import tensorflow as tf

    cell = layer.cell
    steps = _select.MEASURE_STEPS
    with tf.init_scope():
        features = int(cell.kernel.shape[0])
        x = tf.random.stateless_normal((batch, steps, features), seed=(5, 6))
        h0 = tf.zeros((batch, cell.units))
        states = [h0, h0][: len(keras.tree.flatten(cell.state_size))]

        def kernels():
            return _native_infer(module, kind, x, cell, h0, h0, sequences=False,
                                 backwards=False, xla=xla)[1]

        def loop():
            return keras.layers.RNN.inner_loop(layer, x, states, None, training=False)[0]

        def compiled(fn):
            function = tf.function(fn, jit_compile=xla, autograph=False)
            return lambda: function().numpy()

        return _select.time_interleaved({"kernels": compiled(kernels), "loop": compiled(loop)})
