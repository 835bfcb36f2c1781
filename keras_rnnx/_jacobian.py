r"""Spectral norms of the lecture cells' step Jacobians, from their closed forms (C or NumPy).

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
steps instead of S×S Jacobians and an eigendecomposition (`closed_form_norms`). It runs on
the arrays the probe fetched anyway, row by row in C (`_native/lanczos.c`, compiled on first
use like the cell kernels and called through ctypes; no TensorFlow), or where no compiler is
found in NumPy, which gives the same values (within the certification tolerance) several
times slower; a TensorFlow graph of the same steps ran two thousand small ops.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import sys
import threading
from pathlib import Path

import numpy as np

KINDS = ("vanilla", "cec", "original", "forget")

# Lanczos steps on JᵀJ per cell from a cold start (fewer when S is smaller: then the Krylov
# space is the whole space and the Ritz values are exact), and the relative residual bound
# that certifies a row's value. Measured on the demo's model (32 units, 8 × 100 steps, after
# 30 training steps): the share of rows certified at 12 / 16 / 24 steps was vanilla 2 / 100 /
# 100 %, CEC 81 / 99.8 / 100 %, original 0 / 1.4 / 73 %, forget 100 % from 12; uncertified
# rows cost an exact solve, certified ones a step each, so each cell gets the fewest steps that
# certify most rows (the original cell's carousel without a forget gate clusters its singular
# values near 1).
LANCZOS_STEPS = {"vanilla": 16, "cec": 16, "original": 24, "forget": 12}
LANCZOS_TOL = 1e-5
# From a warm start (the top Ritz vectors of the previous call on the same probe batch, which
# a few training steps move little) this many steps come first; the rows they do not certify
# go on to the cold start's full run. Measured on the demo's model with 112 training steps
# between calls: 8 warm steps certify 99-100 % of the rows (6 steps 0-97 %, 4 steps 0-51 %).
WARM_STEPS = 8
WARM_MIX = 0.05  # the share of the cold start in a warm start (as `_native/lanczos.c`)
# The uncertified rows' second run, from their top Ritz vector: up to this many times as many
# steps (it stops once certified). At initialisation (orthogonal R, h near 0, so J's singular
# values cluster near 1) the demo's vanilla cell left 783 of 800 rows to the exact solver after
# a restart of 1x (110 ms), none after 2x or 3x (31 ms); CEC 173 / 13 / 0.
RESTART = 3
# Bisection points per round on the tridiagonal matrices' top eigenvalue, and rounds.
_POINTS, _ROUNDS = 15, 6


def closed_form_kind(cell, kind: str) -> str | None:
    """`kind` if `cell` is exactly that lecture cell with tanh/sigmoid in float32, else None."""
    from keras_rnnx.rnn import native_cell_kind

    if (kind not in KINDS or native_cell_kind(cell) != kind
            or cell.compute_dtype != "float32" or cell.variable_dtype != "float32"):
        return None
    return kind


def state_size(kind: str, units: int) -> int:
    """S, the length of the state vector [h] or [h, c] the Jacobian maps."""
    return units if kind == "vanilla" else 2 * units


def step_jacobian(kind: str, recurrent, gates, prev_states, new_states):
    """(jv, jtv, S): v ↦ J v and w ↦ Jᵀ w for (N, S) float32 arrays, one row per (sample,
    step). `recurrent` is R (U, blocks·U); `gates` the block activations in block order (none
    for vanilla), `prev_states` and `new_states` the states [h] or [h, c] before and after the
    step, each (N, U)."""
    recurrent = np.asarray(recurrent, np.float32)
    units = int(recurrent.shape[0])
    gates = [np.asarray(g, np.float32) for g in gates]
    if kind == "vanilla":
        (h,) = (np.asarray(s, np.float32) for s in new_states)
        beta = 1.0 - h * h

        def jv(v):
            return beta * (v @ recurrent)

        def jtv(w):
            return (beta * w) @ recurrent.T

        return jv, jtv, units
    h, c = (np.asarray(s, np.float32) for s in new_states)
    tanh_c = np.tanh(c)
    if kind == "cec":
        (z,) = gates
        gamma_c, gamma_h = [1.0 - z * z], [None]
        phi, beta = None, 1.0 - h * h  # φ = 1
    else:
        if kind == "original":
            (i, z, o), f, order = gates, None, ("i", "z", "o")
        else:
            (i, f, z, o), order = gates, ("i", "f", "z", "o")
        c_prev = np.asarray(prev_states[1], np.float32)
        coeff = {"i": z * i * (1.0 - i), "z": i * (1.0 - z * z),
                 "f": None if f is None else c_prev * f * (1.0 - f)}
        gamma_c = [coeff.get(name) for name in order]
        gamma_h = [tanh_c * o * (1.0 - o) if name == "o" else None for name in order]
        phi, beta = f, o * (1.0 - tanh_c * tanh_c)
    blocks = len(gamma_c)
    n = h.shape[0]
    wide_c = np.zeros((n, blocks, units), np.float32)
    wide_h = np.zeros((n, blocks, units), np.float32)
    for k, (g_c, g_h) in enumerate(zip(gamma_c, gamma_h)):
        if g_c is not None:
            wide_c[:, k] = g_c
        if g_h is not None:
            wide_h[:, k] = g_h
    # Only the output gate's block has an η term: keep its index instead of a sum over zeros.
    h_block = next((k for k, g in enumerate(gamma_h) if g is not None), None)
    eta = None if h_block is None else wide_h[:, h_block]
    recurrent_t = np.ascontiguousarray(recurrent.T)

    def jv(v):
        v_h, v_c = v[:, :units], v[:, units:]
        da = (v_h @ recurrent).reshape(n, blocks, units)
        dc = np.einsum("nku,nku->nu", wide_c, da)
        dc += v_c if phi is None else phi * v_c
        dh = beta * dc
        if eta is not None:
            dh += eta * da[:, h_block]
        return np.concatenate([dh, dc], axis=-1)

    def jtv(w):
        w_h, w_c = w[:, :units], w[:, units:]
        dc = w_c + beta * w_h
        da = wide_c * dc[:, None, :]
        if eta is not None:
            da[:, h_block] += eta * w_h
        v_h = da.reshape(n, blocks * units) @ recurrent_t
        return np.concatenate([v_h, dc if phi is None else phi * dc], axis=-1)

    return jv, jtv, 2 * units


def exact_norms(jac):
    """σ_max of each (S, S) matrix of `jac` (M, S, S), as sqrt(λ_max(J Jᵀ)) in float64; NaN
    where J is not finite."""
    jac = np.asarray(jac, np.float64)
    out = np.full(jac.shape[0], np.nan)
    finite = np.isfinite(jac).all(axis=(1, 2))
    if finite.any():
        # A symmetric eigenvalue problem is ~4x cheaper than an SVD and exact to float
        # precision for the largest singular value.
        gram = jac[finite] @ np.swapaxes(jac[finite], 1, 2)
        out[finite] = np.sqrt(np.maximum(np.linalg.eigvalsh(gram)[:, -1], 0.0))
    return out


def _sturm_below(alpha, beta2, x):
    """How many eigenvalues of each symmetric tridiagonal matrix lie below x: the negative
    pivots of the LDLᵀ factorisation of T − xI. alpha (N, k), beta2 (N, k-1) the squared
    off-diagonal, x (N, P) → (N, P)."""
    tiny = np.finfo(np.float64).tiny
    d = alpha[:, :1] - x
    count = (d < 0).astype(np.int64)
    for j in range(1, alpha.shape[1]):
        d = np.where(d == 0.0, -tiny, d)
        d = (alpha[:, j:j + 1] - x) - beta2[:, j - 1:j] / d
        count += d < 0
    return count


def _top_eigenpair(alpha, beta):
    """(θ, y): the largest eigenvalue of each symmetric tridiagonal matrix (diagonal alpha
    (N, k), off-diagonal beta (N, k-1), float64) and a unit eigenvector of it.

    θ from bisection on Sturm counts inside the Gershgorin interval (`_POINTS` points a round,
    `_ROUNDS` rounds, then the Rayleigh quotient of y), y from two steps of inverse iteration
    shifted just above the bracket (T − σI is negative definite there, so the tridiagonal solve
    needs no pivoting)."""
    n, k = alpha.shape
    pad = np.zeros((n, 1))
    radius = np.abs(np.concatenate([pad, beta], 1)) + np.abs(np.concatenate([beta, pad], 1))
    lo, hi = np.min(alpha - radius, axis=1), np.max(alpha + radius, axis=1)
    beta2 = beta * beta
    frac = np.arange(1, _POINTS + 1) / (_POINTS + 1)
    for _ in range(_ROUNDS):
        x = lo[:, None] + (hi - lo)[:, None] * frac
        above = _sturm_below(alpha, beta2, x) >= k  # x lies above every eigenvalue
        first = np.argmax(above, axis=1)  # the first point above, or 0 if none is
        any_above = above.any(axis=1)
        rows = np.arange(n)
        new_hi = np.where(any_above, x[rows, first], hi)
        new_lo = np.where(any_above & (first > 0), x[rows, np.maximum(first - 1, 0)],
                          np.where(any_above, lo, x[:, -1]))
        lo, hi = new_lo, new_hi
    scale = np.maximum(np.abs(hi), np.abs(lo))
    sigma = hi + 1e-7 * scale + 1e-30
    y = np.ones((n, k)) / np.sqrt(k)
    for _ in range(2):
        y = _solve_shifted(alpha, beta, sigma, y)
        y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-300)
    ty = alpha * y
    ty[:, 1:] += beta * y[:, :-1]
    ty[:, :-1] += beta * y[:, 1:]
    theta = np.sum(y * ty, axis=1)
    return theta, y


def _solve_shifted(alpha, beta, sigma, rhs):
    """x with (T − σI) x = rhs for each row's tridiagonal T (the Thomas algorithm)."""
    n, k = alpha.shape
    diag = alpha - sigma[:, None]
    c = np.zeros((n, k))
    d = np.zeros((n, k))
    denom = diag[:, 0]
    c[:, 0] = np.divide(beta[:, 0], denom) if k > 1 else 0.0
    d[:, 0] = rhs[:, 0] / denom
    for j in range(1, k):
        denom = diag[:, j] - beta[:, j - 1] * c[:, j - 1]
        if j < k - 1:
            c[:, j] = beta[:, j] / denom
        d[:, j] = (rhs[:, j] - beta[:, j - 1] * d[:, j - 1]) / denom
    x = np.empty((n, k))
    x[:, -1] = d[:, -1]
    for j in range(k - 2, -1, -1):
        x[:, j] = d[:, j] - c[:, j] * x[:, j + 1]
    return x


def _lanczos(jv, jtv, steps: int, start):
    """(θ, certified, x) per row: the top Ritz value of JᵀJ after `steps` Lanczos steps with
    full reorthogonalisation, whether it is certified, and its unit Ritz vector x (N, S).

    `start` (N, S): unit rows, the first Lanczos vectors. With A = JᵀJ and the Lanczos basis Q,
    A Q = Q T + β_k q_{k+1} e_kᵀ, so for the top eigenpair (θ, y) of T the Ritz pair (θ, Qy) has
    the residual ‖A Qy − θ Qy‖ ≤ ‖(T − θ) y‖ + β_k |y_k|: a row is certified when that bound
    is ≤ LANCZOS_TOL·θ (an eigenvalue of A lies that close to θ), or when its Krylov space
    is the whole space (`steps` = S, no breakdown needed) and T is finite."""
    q = np.asarray(start, np.float32)
    n, size = q.shape
    basis = np.empty((steps, n, size), np.float32)
    basis[0] = q
    alphas = np.zeros((n, steps))
    betas = np.zeros((n, steps))
    with np.errstate(all="ignore"):
        for j in range(steps):
            w = jtv(jv(basis[j]))
            alpha = np.einsum("ns,ns->n", w, basis[j])
            w -= alpha[:, None] * basis[j]
            if j > 0:
                w -= betas[:, j - 1, None].astype(np.float32) * basis[j - 1]
            done = basis[: j + 1]
            for _ in range(2):  # twice is enough in float32
                w -= np.einsum("kn,kns->ns", np.einsum("kns,ns->kn", done, w), done)
            beta = np.linalg.norm(w, axis=1)
            alphas[:, j], betas[:, j] = alpha, beta
            if j + 1 < steps:
                basis[j + 1] = np.where(beta[:, None] > 0, w / beta[:, None], 0.0)
        finite = np.isfinite(alphas).all(axis=1) & np.isfinite(betas).all(axis=1)
        alphas = np.where(finite[:, None], alphas, 0.0)
        betas = np.where(finite[:, None], betas, 0.0)
        theta, y = _top_eigenpair(alphas, betas[:, :-1])
        ty = alphas * y
        ty[:, 1:] += betas[:, :-1] * y[:, :-1]
        ty[:, :-1] += betas[:, :-1] * y[:, 1:]
        residual = np.linalg.norm(ty - theta[:, None] * y, axis=1)
        bound = residual + betas[:, -1] * np.abs(y[:, -1])
        converged = bound <= LANCZOS_TOL * np.maximum(theta, 0.0)
        certified = finite & (converged | (steps == size))
        ritz = np.einsum("nk,kns->ns", y.astype(np.float32), basis)
    return np.where(finite, theta, np.nan), certified, ritz


def _cold_start(n: int, size: int):
    # A fixed start with no special structure: a unit vector or all-ones could be orthogonal
    # to the top singular vector of a structured J.
    start = np.random.default_rng(0).normal(size=size)
    return np.tile((start / np.linalg.norm(start)).astype(np.float32), (n, 1))


def _warm_start(x):
    """Previous Ritz vectors plus `WARM_MIX` of the cold start, unit rows: the cold part keeps
    every direction in the Krylov space, so that where the eigenvalues changed order since
    (x now lies along λ_2's vector) the steps still find λ_1 rather than certify λ_2."""
    unit = _unit_rows(x)
    return _unit_rows(unit + WARM_MIX * _cold_start(1, x.shape[1]))


def _unit_rows(x):
    """x's rows scaled to unit length; rows that are zero or not finite get the cold start."""
    with np.errstate(all="ignore"):
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        usable = np.isfinite(norm) & (norm > 0)
        unit = np.where(usable, x / np.where(usable, norm, 1.0), 0.0).astype(np.float32)
    if not usable.all():
        unit[~usable[:, 0]] = _cold_start(1, x.shape[1])[0]
    return unit


_SOURCE = Path(__file__).with_name("_native") / "lanczos.c"
_LIBRARY_LOCK = threading.Lock()
_LIBRARY: list = []  # [the ctypes library or None], once tried


def _library():
    """The compiled `lanczos.c` (ctypes), or None where it cannot be built or loaded (then
    NumPy runs the same algorithm); built once per machine into keras_rnnx's kernel cache,
    named by a hash of the source, the flags (the CPU's vector ISA) and the compiler."""
    with _LIBRARY_LOCK:
        if not _LIBRARY:
            _LIBRARY.append(_build())
        return _LIBRARY[0]


def _build():
    from keras_rnnx import _native
    from keras_rnnx._native import select

    if os.environ.get("KERAS_RNNX_NATIVE", "").strip().lower() in select._OFF:
        return None
    if sys.platform != "linux":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None
    try:
        isa, isa_flags = _native._cpu_isa()  # the kernels' choice; its name is in the file name
    except _native._Unavailable:
        isa, isa_flags = "generic", []
    flags = ["-O3", "-shared", "-fPIC", "-std=c99", "-fopenmp-simd", *isa_flags]
    key = hashlib.sha256(b"\0".join([_SOURCE.read_bytes(), " ".join(flags).encode(),
                                      compiler.encode()])).hexdigest()[:16]
    cache = _native._cache_dir()
    target = cache / f"lanczos-{isa}-{key}.so"
    try:
        if not target.exists():
            _native._compile(compiler, flags, ["-lm"], cache, target, source=_SOURCE,
                             what="the probe's Jacobian norms (once; a few seconds)")
        library = ctypes.CDLL(str(target))
    except (OSError, _native._Unavailable):
        return None
    function = library.rnnx_jacobian_norms
    pointer = ctypes.c_void_p
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, pointer, pointer, pointer,
                         pointer, pointer, pointer, pointer, pointer, ctypes.c_int,
                         ctypes.c_int, ctypes.c_int, ctypes.c_double, pointer, pointer,
                         pointer]
    function.restype = ctypes.c_int
    return function


def _address(array):
    return None if array is None else array.ctypes.data_as(ctypes.c_void_p)


def _compiled_norms(function, kind, recurrent, gates, prev_states, new_states, keep, start):
    """(θ, certified, ritz) of every row from the C code (kept rows only; θ NaN elsewhere)."""
    n = new_states[0].shape[0]
    units = int(recurrent.shape[0])
    size = state_size(kind, units)

    def c32(array):
        return np.ascontiguousarray(array, np.float32)

    gates_wide = c32(np.concatenate(gates, axis=-1)) if gates else None
    h = c32(new_states[0])
    c = c32(new_states[1]) if len(new_states) > 1 else None
    c_prev = c32(prev_states[1]) if len(prev_states) > 1 else None
    keep8 = np.ascontiguousarray(keep, np.uint8)
    if start is not None and np.shape(start) == (n, size):
        start = c32(start)
    else:
        start = None
    cold = np.ascontiguousarray(_cold_start(1, size)[0], np.float32)
    theta = np.empty(n, np.float64)
    certified = np.empty(n, np.uint8)
    ritz = np.empty((n, size), np.float32)
    status = function(KINDS.index(kind), n, units,
                      _address(c32(recurrent)),
                      _address(gates_wide), _address(c_prev), _address(h), _address(c),
                      _address(keep8), _address(start), _address(cold),
                      WARM_STEPS if start is not None else 0, LANCZOS_STEPS[kind],
                      RESTART * LANCZOS_STEPS[kind], LANCZOS_TOL, _address(theta),
                      _address(certified), _address(ritz))
    if status != 0:
        raise MemoryError("keras_rnnx: out of memory in the Jacobian norms")
    return theta, certified.astype(bool), ritz


def closed_form_norms(kind: str, recurrent, gates, prev_states, new_states, keep=None,
                      start=None, *, compiled: bool = True):
    """(norms, ritz): σ_max(∂s_t/∂s_{t-1}) per row (N,) float64, from the closed form (NaN
    where J is not finite), and each row's top right singular vector estimate (N, S) float32,
    the `start` of the next call on similar rows.

    σ_max² is the top Ritz value of Lanczos steps on JᵀJ (`_lanczos`). From a `start` (the
    previous call's Ritz vectors, same rows) `WARM_STEPS` steps come first; the rows they
    do not certify, or all rows without a start, get `LANCZOS_STEPS[kind]` steps from a fixed
    cold start. Rows still uncertified get `RESTART` times as many steps again, restarted from
    their top Ritz vector (which by then points nearly along the top singular vector). Rows
    still uncertified — a top singular value whose gap to the next is neither large nor tiny,
    or NaN/Inf — are solved exactly: J built column by column from the same J v products and
    `exact_norms`. `keep` (N,) bool marks the rows whose value matters (False rows, e.g.
    masked steps, are never recomputed and come back NaN). `compiled=False` runs NumPy even
    where the C code is available."""
    recurrent = np.asarray(recurrent, np.float32)
    gates = [np.asarray(g, np.float32) for g in gates]
    prev_states = [np.asarray(s, np.float32) for s in prev_states]
    new_states = [np.asarray(s, np.float32) for s in new_states]
    n = new_states[0].shape[0]
    size = state_size(kind, int(recurrent.shape[0]))
    keep = np.ones(n, bool) if keep is None else np.asarray(keep, bool)
    function = _library() if compiled else None
    if function is not None:
        theta, certified, ritz = _compiled_norms(function, kind, recurrent, gates, prev_states,
                                                 new_states, keep, start)
        return _finish(kind, recurrent, gates, prev_states, new_states, keep, theta,
                       np.flatnonzero(keep & ~certified)), ritz
    theta = np.full(n, np.nan)
    ritz = np.zeros((n, size), np.float32)
    todo = np.flatnonzero(keep)

    def run(rows, steps, first):
        if not rows.size:
            return rows
        jv, jtv, _ = step_jacobian(kind, recurrent, [g[rows] for g in gates],
                                   [s[rows] for s in prev_states],
                                   [s[rows] for s in new_states])
        value, certified, vector = _lanczos(jv, jtv, min(size, steps), first)
        # Ritz values are lower bounds of λ_max: keep the larger one.
        better = ~(theta[rows] >= value)
        theta[rows[better]] = value[better]
        ritz[rows[better]] = vector[better]
        return rows[~certified]

    if start is not None and np.shape(start) == (n, size) and size > WARM_STEPS:
        todo = run(todo, WARM_STEPS, _warm_start(np.asarray(start, np.float32)[todo]))
    if todo.size:
        todo = run(todo, LANCZOS_STEPS[kind], _cold_start(todo.size, size))
    if todo.size and RESTART > 0 and LANCZOS_STEPS[kind] < size:
        todo = run(todo, RESTART * LANCZOS_STEPS[kind], _unit_rows(ritz[todo]))
    return _finish(kind, recurrent, gates, prev_states, new_states, keep, theta, todo), ritz


def _finish(kind, recurrent, gates, prev_states, new_states, keep, theta, todo):
    """σ_max = sqrt(θ), the rows `todo` solved exactly, rows not kept NaN."""
    size = state_size(kind, int(recurrent.shape[0]))
    norms = np.sqrt(np.maximum(theta, 0.0))
    norms[np.isnan(theta)] = np.nan
    if todo.size:
        jv, _, _ = step_jacobian(kind, recurrent, [np.repeat(g[todo], size, 0) for g in gates],
                                 [np.repeat(s[todo], size, 0) for s in prev_states],
                                 [np.repeat(s[todo], size, 0) for s in new_states])
        with np.errstate(all="ignore"):
            columns = jv(np.tile(np.eye(size, dtype=np.float32), (todo.size, 1)))
        jac = np.swapaxes(columns.reshape(todo.size, size, size), 1, 2)  # J e_j per column
        norms[todo] = exact_norms(jac)
    norms[~keep] = np.nan
    return norms
