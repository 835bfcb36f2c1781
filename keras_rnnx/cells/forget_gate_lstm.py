"""The forget-gate LSTM cell: "the popular LSTM cell"."""

from __future__ import annotations

import keras

from keras_rnnx.cells.base import GatedCell


@keras.saving.register_keras_serializable(package="keras_rnnx")
class ForgetGateLSTMCell(GatedCell):
    r"""The LSTM cell with a forget gate: Gers, Schmidhuber & Cummins, "Learning to forget", 2000.

    .. math::

        [a_i, a_f, a_z, a_o] &= x_t W_x + h_{t-1} W_h + b \\
        c_t &= \sigma(a_f) \odot c_{t-1} + \sigma(a_i) \odot \tanh(a_z) \\
        h_t &= \sigma(a_o) \odot \tanh(c_t)

    States `[h, c]`, each (batch, units). Weights: `kernel` (input_dim, 4·units),
    `recurrent_kernel` (units, 4·units), `bias` (4·units,), blocks in the order
    `[i, f, z, o]` — exactly the layout of `keras.layers.LSTMCell`, so weights move between
    the two with `get_weights` / `set_weights`.

    The forget gate lets the cell reset its carousel; with σ(a_f) ≈ 1 it is the original
    cell. `unit_forget_bias=True` (default) starts the f block of the bias at 1 so the cell
    remembers by default (Jozefowicz, Zaremba & Sutskever, 2015).

    Args:
        units: positive integer, size of h and c.
        activation: for the cell input z and the output tanh(c) (default `"tanh"`).
        recurrent_activation: for the gates i, f and o (default `"sigmoid"`).
        unit_forget_bias: start the forget-gate bias at 1 (default True).
        Other arguments as in `VanillaRNNCell`.
    """

    block_names = ("i", "f", "z", "o")

    def __init__(self, units: int, unit_forget_bias: bool = True, **kwargs):
        super().__init__(units, **kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)

    def bias_block_values(self):
        return {"f": 1.0} if self.unit_forget_bias else {}

    def equations(self, a, states):
        c_prev = states[1]
        i, f, z, o = self.split_blocks(a)
        sigmoid, tanh = self.recurrent_activation, self.activation
        i, f, z, o = sigmoid(i), sigmoid(f), tanh(z), sigmoid(o)
        c = f * c_prev + i * z
        h = o * tanh(c)
        return [h, c], {"i": i, "f": f, "z": z, "o": o}

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}
