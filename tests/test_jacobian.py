"""The lecture cells' closed-form step Jacobians and their spectral norms (`keras_rnnx._jacobian`)
against an independent reference: the cell equations in NumPy (float64), J by central finite
differences, σ_max by `np.linalg.svd` — including near-degenerate and moderately separated top
singular values (the Lanczos rows that are certified and those recomputed exactly), NaN/Inf
rows and rows that are skipped, warm starts (also one along the wrong singular vector) — for
the compiled C code and for the NumPy path that runs where no compiler is found."""

from __future__ import annotations

import numpy as np
import pytest

from keras_rnnx import _jacobian

UNITS = 28  # S = 28 or 56 > LANCZOS_STEPS: the certification and the exact fallback both run
BLOCKS = {"vanilla": ("z",), "cec": ("z",), "original": ("i", "z", "o"),
          "forget": ("i", "f", "z", "o")}


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def numpy_step(kind, p, recurrent, h_prev, c_prev):
    """One step of the lecture's equations: (gates in block order, new states)."""
    a = p + h_prev @ recurrent
    blocks = dict(zip(BLOCKS[kind], np.split(a, len(BLOCKS[kind]), axis=-1)))
    z = np.tanh(blocks["z"])
    if kind == "vanilla":
        return [], [z]
    if kind == "cec":
        c = c_prev + z
        return [z], [np.tanh(c), c]
    i, o = sigmoid(blocks["i"]), sigmoid(blocks["o"])
    f = sigmoid(blocks["f"]) if kind == "forget" else 1.0
    c = f * c_prev + i * z
    gates = {"i": i, "f": f, "z": z, "o": o}
    return [gates[name] for name in BLOCKS[kind]], [o * np.tanh(c), c]


def finite_difference_norms(kind, p, recurrent, h_prev, c_prev, delta=1e-6):
    """σ_max of ∂[h, c]/∂[h_prev, c_prev] per row, from central differences in float64."""
    jac = exact_jacobians(kind, p, recurrent, h_prev, c_prev, delta)
    return np.array([np.linalg.svd(j, compute_uv=False)[0] for j in jac])


def exact_jacobians(kind, p, recurrent, h_prev, c_prev, delta=1e-6):
    """∂[h, c]/∂[h_prev, c_prev] per row (N, S, S), from central differences in float64."""
    two = kind != "vanilla"
    s_prev = np.concatenate([h_prev, c_prev], axis=-1) if two else h_prev
    size = s_prev.shape[-1]
    columns = []
    for j in range(size):
        out = []
        for sign in (1.0, -1.0):
            s = s_prev.copy()
            s[:, j] += sign * delta
            _, new = numpy_step(kind, p, recurrent, s[:, :UNITS], s[:, UNITS:] if two else None)
            out.append(np.concatenate(new, axis=-1))
        columns.append((out[0] - out[1]) / (2 * delta))
    return np.stack(columns, axis=-1)  # (N, S, S): rows are outputs


def case(kind, rows, rng, scale=1.0):
    width = len(BLOCKS[kind]) * UNITS
    recurrent = rng.normal(scale=scale / np.sqrt(UNITS), size=(UNITS, width))
    p = rng.normal(size=(rows, width))
    h_prev = np.tanh(rng.normal(size=(rows, UNITS)))
    c_prev = rng.normal(size=(rows, UNITS))
    return p, recurrent, h_prev, c_prev


def f32(array):
    return np.asarray(array, np.float32)


@pytest.fixture(params=[True, False], ids=["C", "NumPy"])
def compiled(request):
    if request.param and _jacobian._library() is None:
        pytest.fail("the C code of keras_rnnx/_native/lanczos.c did not build")
    return request.param


def closed_form(kind, p, recurrent, h_prev, c_prev, keep=None, start=None, compiled=True,
                ritz=False):
    gates, new = numpy_step(kind, p, recurrent, h_prev, c_prev)
    prev = [h_prev] if kind == "vanilla" else [h_prev, c_prev]
    norms, vectors = _jacobian.closed_form_norms(
        kind, f32(recurrent), [f32(g) for g in gates], [f32(s) for s in prev],
        [f32(s) for s in new], keep=keep, start=start, compiled=compiled)
    return (norms, vectors) if ritz else norms


def lanczos(kind, steps, recurrent, gates, prev, new, start=None):
    jv, jtv, size = _jacobian.step_jacobian(kind, recurrent, gates, prev, new)
    if start is None:
        start = _jacobian._cold_start(len(new[0]), size)
    return _jacobian._lanczos(jv, jtv, steps, start)


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_closed_form_norms_match_finite_differences_and_svd(kind, compiled):
    rng = np.random.default_rng(7)
    args = case(kind, 40, rng, scale=1.5)
    want = finite_difference_norms(kind, *args)
    got = closed_form(kind, *args, compiled=compiled)
    np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_warm_starts_give_the_same_norms(kind, compiled):
    """From the Ritz vectors of a call on nearby rows (a training step later), from rows'
    own top singular vectors, and from their second singular vectors (the order of the top
    two changed since the start was computed): the values stay those of the SVD."""
    rng = np.random.default_rng(13)
    p, recurrent, h_prev, c_prev = case(kind, 30, rng, scale=1.5)
    want = finite_difference_norms(kind, p, recurrent, h_prev, c_prev)
    _, ritz = closed_form(kind, p, recurrent, h_prev, c_prev, compiled=compiled, ritz=True)
    moved = (p + 0.05 * rng.normal(size=p.shape), recurrent, h_prev, c_prev)
    got = closed_form(kind, *moved, start=ritz, compiled=compiled)
    np.testing.assert_allclose(got, finite_difference_norms(kind, *moved), rtol=1e-4)
    jac = exact_jacobians(kind, p, recurrent, h_prev, c_prev)
    _, _, vt = np.linalg.svd(jac)
    for which in (0, 1):
        got = closed_form(kind, p, recurrent, h_prev, c_prev, start=vt[:, which, :],
                          compiled=compiled)
        np.testing.assert_allclose(got, want, rtol=1e-4)


def test_the_compiled_code_and_numpy_agree():
    rng = np.random.default_rng(17)
    for kind in BLOCKS:
        args = case(kind, 50, rng, scale=1.5)
        np.testing.assert_allclose(closed_form(kind, *args, compiled=True),
                                   closed_form(kind, *args, compiled=False), rtol=2e-5)


def test_near_degenerate_and_moderately_separated_top_singular_values(compiled):
    """Vanilla with an orthogonal R: J = diag(1 - h_t²) Rᵀ has exactly the singular values
    1 - h_t², which the rows set: all equal, top two 1e-6 apart, evenly spread (a moderate
    gap the Lanczos steps cannot certify: those rows take the exact path)."""
    rng = np.random.default_rng(3)
    recurrent, _ = np.linalg.qr(rng.normal(size=(UNITS, UNITS)))
    d = np.stack([
        np.full(UNITS, 0.9),
        np.concatenate([[0.9, 0.9 - 1e-6], rng.uniform(0.1, 0.5, UNITS - 2)]),
        np.linspace(0.2, 0.9, UNITS),
        np.concatenate([[0.9, 0.88], np.linspace(0.1, 0.87, UNITS - 2)]),
    ])
    h = np.sqrt(1.0 - d)
    args = (f32(recurrent), [], [f32(np.zeros_like(h))], [f32(h)])
    got, _ = _jacobian.closed_form_norms("vanilla", *args, compiled=compiled)
    want = [np.linalg.svd(np.diag(1.0 - row ** 2) @ recurrent.T, compute_uv=False)[0]
            for row in h.astype(np.float32).astype(np.float64)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(got, d.max(axis=1), rtol=1e-5)
    _, certified, _ = lanczos("vanilla", _jacobian.LANCZOS_STEPS["vanilla"], *args)
    # The test covers both paths: some rows certified by Lanczos, some recomputed exactly.
    assert certified.any() and not certified.all()


@pytest.mark.parametrize("kind", ["cec", "original"])
def test_restart_from_the_ritz_vector_certifies_rows_the_first_run_could_not(kind):
    """Lanczos restarted from the first run's top Ritz vector: its value is never below the
    first run's (Ritz values are lower bounds), rows it certifies match the SVD, and together
    the two runs leave fewer rows to the exact path than the first alone."""
    rng = np.random.default_rng(2)
    p, recurrent, h_prev, c_prev = case(kind, 60, rng, scale=1.5)
    gates, new = numpy_step(kind, p, recurrent, h_prev, c_prev)
    args = (f32(recurrent), [f32(g) for g in gates], [f32(h_prev), f32(c_prev)],
            [f32(s) for s in new])
    steps = _jacobian.LANCZOS_STEPS[kind] // 2  # few enough that the first run leaves rows
    theta, first, ritz = lanczos(kind, steps, *args)
    theta2, second, _ = lanczos(kind, steps, *args, start=_jacobian._unit_rows(ritz))
    want = finite_difference_norms(kind, p, recurrent, h_prev, c_prev) ** 2
    assert not first.all() and (first | second).sum() > first.sum()
    assert np.all(theta2 >= theta * (1 - 1e-5))  # up to float32 rounding
    np.testing.assert_allclose(theta2[second], want[second], rtol=1e-4)
    np.testing.assert_allclose(closed_form(kind, p, recurrent, h_prev, c_prev), np.sqrt(want),
                               rtol=1e-4)


@pytest.mark.parametrize("kind", ["vanilla", "forget"])
def test_nan_and_inf_rows_are_nan_and_leave_the_others_alone(kind, compiled):
    rng = np.random.default_rng(11)
    p, recurrent, h_prev, c_prev = case(kind, 6, rng)
    want = finite_difference_norms(kind, p, recurrent, h_prev, c_prev)
    p[1, 0] = np.nan
    if kind == "forget":
        c_prev[3, 2] = np.inf  # c_t = inf: J holds c_{t-1}·f(1-f) = inf
    else:
        h_prev[3, 2] = np.nan
    got = closed_form(kind, p, recurrent, h_prev, c_prev, compiled=compiled)
    assert np.isnan(got[1]) and np.isnan(got[3])
    ok = [0, 2, 4, 5]
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-4)


def test_rows_not_kept_are_not_recomputed_but_the_others_are_exact(compiled):
    rng = np.random.default_rng(5)
    args = case("original", 12, rng)
    keep = np.arange(12) % 3 != 0
    got = closed_form("original", *args, keep=keep, compiled=compiled)
    want = finite_difference_norms("original", *args)
    np.testing.assert_allclose(got[keep], want[keep], rtol=1e-4)


def test_only_the_exact_lecture_cells_get_the_closed_form():
    import keras

    import keras_rnnx as rx

    assert _jacobian.closed_form_kind(rx.ForgetGateLSTMCell(4), "forget") == "forget"
    assert _jacobian.closed_form_kind(rx.VanillaRNNCell(4, activation="relu"), "vanilla") is None

    class Sub(rx.CECCell):
        pass

    assert _jacobian.closed_form_kind(Sub(4), "cec") is None
    assert _jacobian.closed_form_kind(keras.layers.LSTMCell(4), "keras_lstm") is None


@pytest.mark.parametrize("kind", ["vanilla", "forget"])
def test_rows_left_uncertified_are_solved_exactly(kind, compiled, monkeypatch):
    """Too few steps and no restart: the rows the Lanczos steps cannot certify go to the exact
    solver (J column by column, λ_max(J Jᵀ)), whose values equal the SVD's."""
    monkeypatch.setattr(_jacobian, "RESTART", 0)
    monkeypatch.setattr(_jacobian, "LANCZOS_STEPS", {**_jacobian.LANCZOS_STEPS, kind: 2})
    rng = np.random.default_rng(19)
    args = case(kind, 25, rng, scale=1.5)
    p, recurrent, h_prev, c_prev = args
    gates, new = numpy_step(kind, *args)
    prev = [h_prev] if kind == "vanilla" else [h_prev, c_prev]
    jv, jtv, size = _jacobian.step_jacobian(kind, f32(recurrent), [f32(g) for g in gates],
                                            [f32(s) for s in prev], [f32(s) for s in new])
    _, certified, _ = _jacobian._lanczos(jv, jtv, 2, _jacobian._cold_start(25, size))
    assert not certified.any()  # every row takes the exact path
    np.testing.assert_allclose(closed_form(kind, *args, compiled=compiled),
                               finite_difference_norms(kind, *args), rtol=1e-4)
