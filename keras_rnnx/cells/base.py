"""What the four lecture cells share: weights, dropout, configuration and input checks.

A cell computes one fused pre-activation for all of its blocks,

    a = x_t @ kernel + h_{t-1} @ recurrent_kernel + bias,      a: (batch, n_blocks * units)

which is the lecture's W·[x_t; h_{t-1}] with W split into an input and a recurrent part. Each
subclass names its blocks in `block_names` (kernel column order) and writes its equations in
`equations(a, states)`, which also returns the gate activations for the probe.
"""

from __future__ import annotations

import sys

import keras
from keras import ops

# Keras's `RNN` layer draws one dropout mask per sequence, before its time loop, only for
# cells that are instances of this mixin; a mask drawn inside the loop would change at every
# step under `tf.function`. The mixin is private, so `tests/test_cells.py` checks that the
# masks stay constant over time and would catch a change in Keras.
from keras.src.layers.rnn.dropout_rnn_cell import DropoutRNNCell

from keras_rnnx import _validation


def _sequences_shape_of_building_rnn():
    """The full input shape of the `keras.layers.RNN` that is building this cell, if any.

    A cell is built with the shape of one step only, so it cannot see a zero-length sequence
    for which `keras.layers.RNN` would fail later with an obscure slice error. The RNN layer's
    `build` holds the full shape in a local variable a few frames up (more inside
    `StackedRNNCells`); reading it lets the cell name the problem. Purely diagnostic: when
    the frame is not there, nothing is checked.
    """
    frame = sys._getframe(2)
    for _ in range(6):
        if frame is None:
            return None
        shape = frame.f_locals.get("sequences_shape")
        if isinstance(frame.f_locals.get("self"), keras.layers.RNN) and shape is not None:
            return shape
        frame = frame.f_back
    return None


class LectureCell(DropoutRNNCell, keras.layers.Layer):
    """Base class of the lecture cells. Not registered: use one of the four subclasses."""

    block_names: tuple[str, ...] = ()
    state_names: tuple[str, ...] = ("h",)

    def __init__(
        self,
        units: int,
        activation="tanh",
        use_bias: bool = True,
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        kernel_regularizer=None,
        recurrent_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        recurrent_constraint=None,
        bias_constraint=None,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = _validation.check_units(units)
        self.activation = keras.activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = keras.regularizers.get(recurrent_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.recurrent_constraint = keras.constraints.get(recurrent_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.dropout = _validation.check_rate("dropout", dropout)
        self.recurrent_dropout = _validation.check_rate("recurrent_dropout", recurrent_dropout)
        self.seed = _validation.check_seed(seed)
        self.seed_generator = keras.random.SeedGenerator(seed=self.seed)
        self.state_size = [self.units] * len(self.state_names)
        self.output_size = self.units

    @property
    def n_blocks(self) -> int:
        return len(self.block_names)

    def bias_block_values(self) -> dict[str, float]:
        """Blocks of the bias that start at a constant instead of `bias_initializer`."""
        return {}

    def build(self, input_shape):
        input_dim = _validation.check_step_input_shape(type(self).__name__, input_shape)
        sequences_shape = _sequences_shape_of_building_rnn()
        if sequences_shape is not None:
            _validation.check_sequences_shape(type(self).__name__, sequences_shape)
        width = self.n_blocks * self.units
        self.kernel = self.add_weight(
            shape=(input_dim, width),
            name="kernel",
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.units, width),
            name="recurrent_kernel",
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
            constraint=self.recurrent_constraint,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                shape=(width,),
                name="bias",
                initializer=self._block_bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        else:
            self.bias = None
        self.built = True

    def _block_bias_initializer(self, shape, dtype=None):
        constants = self.bias_block_values()
        blocks = [
            ops.full((self.units,), constants[name], dtype=dtype)
            if name in constants
            else self.bias_initializer((self.units,), dtype=dtype)
            for name in self.block_names
        ]
        return ops.concatenate(blocks, axis=0)

    def preactivation(self, x, h_prev, training):
        """The fused a = x @ kernel + h_prev @ recurrent_kernel + bias, with dropout applied."""
        dtype = keras.backend.standardize_dtype(x.dtype)
        _validation.check_float_dtype(f"{type(self).__name__} (`inputs`)", dtype)
        if training and self.dropout > 0.0:
            x = x * self.get_dropout_mask(x)
        if training and self.recurrent_dropout > 0.0:
            h_prev = h_prev * self.get_recurrent_dropout_mask(h_prev)
        a = ops.matmul(x, self.kernel) + ops.matmul(h_prev, self.recurrent_kernel)
        if self.use_bias:
            a = a + self.bias
        return a

    def split_blocks(self, a):
        return ops.split(a, self.n_blocks, axis=-1) if self.n_blocks > 1 else [a]

    def equations(self, a, states):
        """The cell's equations from the fused pre-activation `a`: returns (new_states, gates).

        `new_states` follows `state_names`; `gates` maps each block name to its activation
        (σ(·) for gates, tanh(·) for z), each (batch, units).
        """
        raise NotImplementedError

    def step(self, inputs, states, training=False):
        """One step: `equations(preactivation(inputs, h_prev))`, returns (new_states, gates).

        `call` returns h and the states; the probe in `keras_rnnx.diagnostics` also reads the
        gates. `keras_rnnx.RNN` computes x @ kernel for all steps at once and calls
        `equations` in its loop.
        """
        return self.equations(self.preactivation(inputs, states[0], training), states)

    def call(self, inputs, states, training=False):
        new_states, _ = self.step(inputs, states, training=training)
        return new_states[0], new_states

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, size), dtype=self.compute_dtype)
                for size in self.state_size]

    def get_config(self):
        config = {
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "use_bias": self.use_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "recurrent_initializer": keras.initializers.serialize(self.recurrent_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "recurrent_regularizer": keras.regularizers.serialize(self.recurrent_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
            "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
            "recurrent_constraint": keras.constraints.serialize(self.recurrent_constraint),
            "bias_constraint": keras.constraints.serialize(self.bias_constraint),
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "seed": self.seed,
        }
        return {**super().get_config(), **config}


class GatedCell(LectureCell):
    """A lecture cell with sigmoid gates: adds `recurrent_activation`."""

    state_names = ("h", "c")

    def __init__(self, units: int, activation="tanh", recurrent_activation="sigmoid", **kwargs):
        super().__init__(units, activation=activation, **kwargs)
        self.recurrent_activation = keras.activations.get(recurrent_activation)

    def get_config(self):
        config = {
            "recurrent_activation": keras.activations.serialize(self.recurrent_activation)
        }
        return {**super().get_config(), **config}
