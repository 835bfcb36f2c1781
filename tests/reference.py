"""NumPy implementations of the lecture's cell equations, written independently of the cells.

The equations (W·[x; h] = x @ kernel + h @ recurrent_kernel + bias, σ the logistic sigmoid):

    vanilla:   h = tanh(z)
    cec:       c = c_prev + tanh(z);                 h = tanh(c)
    original:  c = c_prev + σ(i)·tanh(z);            h = σ(o)·tanh(c)       blocks [i, z, o]
    forget:    c = σ(f)·c_prev + σ(i)·tanh(z);       h = σ(o)·tanh(c)       blocks [i, f, z, o]
"""

from __future__ import annotations

import numpy as np

KINDS = ("vanilla", "cec", "original", "forget")
N_BLOCKS = {"vanilla": 1, "cec": 1, "original": 3, "forget": 4}
N_STATES = {"vanilla": 1, "cec": 2, "original": 2, "forget": 2}


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def step(kind, x, states, kernel, recurrent_kernel, bias):
    a = x @ kernel + states[0] @ recurrent_kernel + bias
    if kind == "vanilla":
        return [np.tanh(a)]
    c_prev = states[1]
    if kind == "cec":
        c = c_prev + np.tanh(a)
        return [np.tanh(c), c]
    if kind == "original":
        i, z, o = np.split(a, 3, axis=-1)
        c = c_prev + sigmoid(i) * np.tanh(z)
        return [sigmoid(o) * np.tanh(c), c]
    if kind == "forget":
        i, f, z, o = np.split(a, 4, axis=-1)
        c = sigmoid(f) * c_prev + sigmoid(i) * np.tanh(z)
        return [sigmoid(o) * np.tanh(c), c]
    raise ValueError(kind)


def run(kind, xs, weights, initial_state=None, mask=None, go_backwards=False):
    """Runs a cell over xs (B, T, D) like `keras.layers.RNN`.

    Returns (outputs (B, T, U) in processing order, final states). On a masked step the
    states are carried over and the output repeats the previous one (zeros before the first).
    """
    kernel, recurrent_kernel, bias = weights
    batch, steps, _ = xs.shape
    units = recurrent_kernel.shape[0]
    states = (
        [np.zeros((batch, units)) for _ in range(N_STATES[kind])]
        if initial_state is None
        else [np.asarray(s, dtype=np.float64) for s in initial_state]
    )
    order = range(steps - 1, -1, -1) if go_backwards else range(steps)
    output = np.zeros((batch, units))
    outputs = []
    for t in order:
        new_states = step(kind, xs[:, t], states, kernel, recurrent_kernel, bias)
        if mask is None:
            states = new_states
            output = new_states[0]
        else:
            keep = mask[:, t][:, None].astype(bool)
            states = [np.where(keep, new, old) for new, old in zip(new_states, states)]
            output = np.where(keep, new_states[0], output)
        outputs.append(output)
    return np.stack(outputs, axis=1), states
