"""`keras_rnnx.RNN`: `keras.layers.RNN` with clear errors for bad sequences."""

from __future__ import annotations

import keras
from keras import ops

from keras_rnnx import _validation


@keras.saving.register_keras_serializable(package="keras_rnnx")
class RNN(keras.layers.RNN):
    """A drop-in `keras.layers.RNN`: same arguments, weights and configuration.

    It checks its input before the time loop runs, so that a sequence of the wrong rank, of
    zero length or of a non-float dtype is reported by name instead of failing inside the
    backend's loop. It works with any Keras cell, not only the lecture cells.
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
