"""The vanilla RNN cell."""

from __future__ import annotations

import keras

from keras_rnnx.cells.base import LectureCell


@keras.saving.register_keras_serializable(package="keras_rnnx")
class VanillaRNNCell(LectureCell):
    r"""The vanilla RNN cell (Elman 1990), as in the lecture.

    .. math::

        h_t = \tanh(x_t W_x + h_{t-1} W_h + b)

    States `[h]`, each (batch, units). Weights: `kernel` (input_dim, units), `recurrent_kernel`
    (units, units), `bias` (units,) — one block, `z`. Backpropagated through time, the
    gradient is multiplied at every step by diag(1 - h_t²) W_hᵀ, so it vanishes when
    σ_max(W_h) < 1 and can explode when σ_max(W_h) > 1 (Pascanu et al., 2013).

    Args:
        units: positive integer, size of h.
        activation: the non-linearity (default `"tanh"`).
        use_bias, kernel_initializer, recurrent_initializer (default `"orthogonal"`),
        bias_initializer, *_regularizer, *_constraint: as in `keras.layers.SimpleRNNCell`.
        dropout: fraction of the inputs dropped, one mask per sequence, training only.
        recurrent_dropout: fraction of h_{t-1} dropped, one mask per sequence, training only.
        seed: seed of the dropout masks.
    """

    block_names = ("z",)
    state_names = ("h",)

    def equations(self, a, states):
        (z,) = self.split_blocks(a)
        h = self.activation(z)
        return [h], {}
