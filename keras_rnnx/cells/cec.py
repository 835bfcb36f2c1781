"""The constant error carousel cell: the LSTM idea without gates."""

from __future__ import annotations

import keras

from keras_rnnx.cells.base import LectureCell


@keras.saving.register_keras_serializable(package="keras_rnnx")
class CECCell(LectureCell):
    r"""The constant error carousel (CEC): "the LSTM idea" of Hochreiter & Schmidhuber (1997).

    .. math::

        c_t = c_{t-1} + \tanh(x_t W_x + h_{t-1} W_h + b), \qquad h_t = \tanh(c_t)

    States `[h, c]`, each (batch, units). Weights: `kernel` (input_dim, units),
    `recurrent_kernel` (units, units), `bias` (units,) — one block, `z`.

    The cell state is an accumulator: ∂c_t/∂c_{t-1} = I along the carousel, so the error
    flowing back through c neither vanishes nor explodes ("constant error flow"). Without
    gates c grows with every input and tanh(c) saturates on long sequences; the gated cells
    (`OriginalLSTMCell`, `ForgetGateLSTMCell`) are the lecture's answer.

    Args:
        units: positive integer, size of h and c.
        activation: used for both the update and the output (default `"tanh"`).
        Other arguments as in `VanillaRNNCell`.
    """

    block_names = ("z",)
    state_names = ("h", "c")

    def equations(self, a, states):
        c_prev = states[1]
        (z,) = self.split_blocks(a)
        z = self.activation(z)
        c = c_prev + z
        h = self.activation(c)
        return [h, c], {"z": z}
