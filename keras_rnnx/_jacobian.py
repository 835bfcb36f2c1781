r"""Spectral norms of the lecture cells' step Jacobians, from their closed forms.

The probe reports σ_max(∂s_t/∂s_{t-1}) for every sample and step. For the four lecture cells
(by exact type, tanh/sigmoid, float32) the step Jacobian has a closed form in terms of
quantities the forward pass already has — the block activations, c_{t-1}, c_t, h_t — and the
recurrent kernel R = [R_k] (blocks in kernel column order). With a_t = p_t + h_{t-1} R:

.. math::

    dc_t &= \textstyle\sum_k \gamma_k \odot (dh_{t-1} R_k) + \varphi \odot dc_{t-1} \\
    dh_t &= \eta \odot (dh_{t-1} R_o) + \beta \odot dc_t

    \text{vanilla}  &: dh_t = \beta \odot (dh_{t-1} R),\ \beta = 1 - h_t^2 \\
    \text{CEC}      &: \gamma_z = 1 - z^2,\ \varphi = 1,\ \beta = 1 - h_t^2 \\
    \text{original} &: \gamma_i = z\, i(1-i),\ \gamma_z = i(1 - z^2),\ \varphi = 1,\
                        \eta = \tanh(c_t)\, o(1-o),\ \beta = o(1 - \tanh^2 c_t) \\
    \text{forget}   &: \text{as original, plus } \gamma_f = c_{t-1} f(1-f),\ \varphi = f

(vanilla's is diag(1 - h_t²)·R_hᵀ, the lecture's). So J v and Jᵀ w cost two small matrix
products for all B·T rows at once, and σ_max(J)² = λ_max(JᵀJ) comes from a few Lanczos
steps instead of S×S Jacobians and an eigendecomposition (`closed_form_norms`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

KINDS = ("vanilla", "cec", "original", "forget")

# Lanczos steps on JᵀJ per cell (fewer when S is smaller: then the Krylov space is the whole
# space and the Ritz values are exact), and the relative residual bound that certifies a row's
# value. Measured on the demo's model (32 units, 8 × 100 steps, after 30 training steps): the
# share of rows certified at 12 / 16 / 24 steps was vanilla 2 / 100 / 100 %, CEC 81 / 99.8 /
# 100 %, original 0 / 1.4 / 73 %, forget 100 % from 12; uncertified rows cost an exact solve,
# certified ones a step each, so each cell gets the fewest steps that certify most rows (the
# original cell's carousel without a forget gate clusters its singular values near 1).
LANCZOS_STEPS = {"vanilla": 16, "cec": 16, "original": 24, "forget": 12}
LANCZOS_TOL = 1e-5
# The uncertified rows' second run, from their top Ritz vector: this many times as many steps.
RESTART = 1


def closed_form_kind(cell, kind: str) -> str | None:
    """`kind` if `cell` is exactly that lecture cell with tanh/sigmoid in float32, else None."""
    from keras_rnnx.rnn import native_cell_kind

    if (kind not in KINDS or native_cell_kind(cell) != kind
            or cell.compute_dtype != "float32" or cell.variable_dtype != "float32"):
        return None
    return kind


def step_jacobian(kind: str, recurrent, gates, prev_states, new_states):
    """(jv, jtv, S): v ↦ J v and w ↦ Jᵀ w for (N, S) arrays, one row per (sample, step).

    `gates` are the block activations in block order (none for vanilla), `prev_states` and
    `new_states` the states [h] or [h, c] before and after the step, each (N, U).
    """
    if kind == "vanilla":
        (h,) = new_states
        beta = 1.0 - h * h

        def jv(v):
            return beta * tf.matmul(v, recurrent)

        def jtv(w):
            return tf.matmul(beta * w, recurrent, transpose_b=True)

        return jv, jtv, int(recurrent.shape[0])
    h, c = new_states
    units = int(recurrent.shape[0])
    tanh_c = tf.tanh(c)
    if kind == "cec":
        (z,) = gates
        gamma_c, gamma_h = [1.0 - z * z], [None]
        phi, beta = None, 1.0 - h * h  # φ = 1
    else:
        if kind == "original":
            (i, z, o), f, order = gates, None, ("i", "z", "o")
        else:
            (i, f, z, o), order = gates, ("i", "f", "z", "o")
        coeff = {"i": z * i * (1.0 - i), "z": i * (1.0 - z * z),
                 "f": None if f is None else prev_states[1] * f * (1.0 - f)}
        gamma_c = [coeff.get(name) for name in order]
        gamma_h = [tanh_c * o * (1.0 - o) if name == "o" else None for name in order]
        phi, beta = f, o * (1.0 - tanh_c * tanh_c)
    zero = tf.zeros_like(h)
    wide_c = tf.concat([zero if g is None else g for g in gamma_c], axis=-1)
    wide_h = tf.concat([zero if g is None else g for g in gamma_h], axis=-1)
    blocks = len(gamma_c)

    def block_sum(a):
        return tf.reduce_sum(tf.reshape(a, [-1, blocks, units]), axis=1)

    def jv(v):
        v_h, v_c = v[:, :units], v[:, units:]
        da = tf.matmul(v_h, recurrent)
        dc = block_sum(wide_c * da) + (v_c if phi is None else phi * v_c)
        return tf.concat([block_sum(wide_h * da) + beta * dc, dc], axis=-1)

    def jtv(w):
        w_h, w_c = w[:, :units], w[:, units:]
        dc = w_c + beta * w_h
        da = wide_c * tf.tile(dc, [1, blocks]) + wide_h * tf.tile(w_h, [1, blocks])
        v_h = tf.matmul(da, recurrent, transpose_b=True)
        return tf.concat([v_h, dc if phi is None else phi * dc], axis=-1)

    return jv, jtv, 2 * units


def exact_norms(jac):
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


def _lanczos(kind: str, steps: int, recurrent, gates, prev_states, new_states, start=None):
    """(θ, certified, x) per row: the top Ritz value of JᵀJ after `steps` Lanczos steps with
    full reorthogonalisation, whether its residual bound β_k |y_k| ≤ LANCZOS_TOL·θ (or the
    Krylov space is the whole space), and its Ritz vector x (N, S). `start` (N, S), unit
    rows: the first Lanczos vectors (default: one fixed random vector for every row)."""
    jv, jtv, size = step_jacobian(kind, recurrent, gates, prev_states, new_states)
    n = tf.shape(new_states[0])[0]
    if start is None:
        # A fixed start with no special structure: a unit vector or all-ones could be
        # orthogonal to the top singular vector of a structured J.
        start = np.random.default_rng(0).normal(size=size)
        q = tf.tile(tf.constant((start / np.linalg.norm(start))[None], tf.float32), [n, 1])
    else:
        q = start
    basis, alphas, betas = [q], [], []
    q_prev = beta = None
    for j in range(steps):
        w = jtv(jv(q))
        alpha = tf.reduce_sum(w * q, axis=-1)
        w = w - alpha[:, None] * q
        if beta is not None:
            w = w - beta[:, None] * q_prev
        stacked = tf.stack(basis)  # (j+1, N, S); twice is enough in float32
        for _ in range(2):
            w = w - tf.reduce_sum(tf.reduce_sum(stacked * w, axis=-1)[..., None] * stacked, 0)
        alphas.append(alpha)
        beta = tf.norm(w, axis=-1)
        betas.append(beta)
        if j + 1 < steps:
            q_prev, q = q, tf.math.divide_no_nan(w, beta[:, None])
            basis.append(q)
    tri = tf.linalg.diag(tf.stack(alphas, axis=-1))
    if steps > 1:
        off = tf.stack(betas[:-1], axis=-1)
        tri = tri + tf.linalg.diag(off, k=1) + tf.linalg.diag(off, k=-1)
    finite = tf.reduce_all(tf.math.is_finite(tri), axis=[1, 2])
    values, vectors = tf.linalg.eigh(tf.where(finite[:, None, None], tri, tf.zeros_like(tri)))
    theta = values[:, -1]
    bound = betas[-1] * tf.abs(vectors[:, -1, -1])
    converged = bound <= LANCZOS_TOL * tf.maximum(theta, 0.0)
    certified = finite if steps == size else finite & converged
    ritz = tf.einsum("nk,kns->ns", vectors[:, :, -1], tf.stack(basis))
    return theta, certified, ritz


def closed_form_norms(kind: str, recurrent, gates, prev_states, new_states, keep=None):
    """σ_max(∂s_t/∂s_{t-1}) per row (N,), from the closed form; NaN where J is not finite.

    σ_max² is the top Ritz value of `LANCZOS_STEPS[kind]` Lanczos steps on JᵀJ (`_lanczos`).
    Rows whose value those steps cannot certify get `RESTART` times as many steps, restarted
    from their top Ritz vector (which by then points nearly along the top singular vector, so
    that the residual bound usually certifies the value within these steps). Rows still
    uncertified — a top singular value whose gap to the next is neither large nor tiny, or
    NaN/Inf — are recomputed exactly: their J is built column by column from the same J v
    products and solved with `exact_norms`, as the full-Jacobian path does. `keep` (N,) bool
    marks the rows whose value matters (False rows, e.g. masked steps, are never recomputed).
    """
    recurrent = tf.cast(recurrent, tf.float32)
    size = int(recurrent.shape[0]) * (1 if kind == "vanilla" else 2)
    steps = min(size, LANCZOS_STEPS[kind])
    theta, certified, ritz = _lanczos(kind, steps, recurrent, gates, prev_states, new_states)
    if keep is not None:
        certified = certified | ~keep
    if steps < size:
        again = tf.where(~certified)[:, 0]

        def take(t):
            return tf.gather(t, again)

        start = tf.math.l2_normalize(take(ritz), axis=-1)
        theta2, certified2, _ = _lanczos(
            kind, min(size, RESTART * steps), recurrent, [take(g) for g in gates],
            [take(s) for s in prev_states], [take(s) for s in new_states], start=start)
        # Ritz values are lower bounds of λ_max: keep the larger one.
        theta = tf.tensor_scatter_nd_update(theta, again[:, None],
                                            tf.maximum(take(theta), theta2))
        certified = tf.tensor_scatter_nd_update(certified, again[:, None], certified2)
    norms = tf.sqrt(tf.maximum(theta, 0.0))
    redo = tf.where(~certified)[:, 0]
    m = tf.shape(redo)[0]

    def pick(t):
        return tf.repeat(tf.gather(t, redo), size, axis=0)

    jv, _, _ = step_jacobian(kind, recurrent, [pick(g) for g in gates],
                             [pick(s) for s in prev_states], [pick(s) for s in new_states])
    columns = jv(tf.tile(tf.eye(size, dtype=tf.float32), tf.stack([m, 1])))  # J e_j per row
    jac = tf.transpose(tf.reshape(columns, tf.stack([m, size, size])), [0, 2, 1])
    return tf.tensor_scatter_nd_update(norms, redo[:, None], exact_norms(jac))
