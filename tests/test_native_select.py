"""`keras_rnnx._native.select`: rx.RNN trains on the compiled kernels only where they measured
faster than its TensorFlow loop. Timings are injected where a test needs a given outcome; no
test asserts on how fast anything runs."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_rnnx as rx
from keras_rnnx import _native, rnn
from keras_rnnx._native import select

B, T, D, U = 5, 4, 3, 6
OP = "RnnxCellForward"


def test_kernels_are_chosen_only_when_they_measured_faster():
    assert select.faster({"kernels": [1.0, 1.1, 0.9], "loop": [2.0, 2.2, 1.9]})
    assert not select.faster({"kernels": [2.0, 2.2, 1.9], "loop": [1.0, 1.1, 0.9]})
    # The median decides: one fast outlier does not make the kernels faster.
    assert not select.faster({"kernels": [0.1, 3.0, 3.0], "loop": [2.0, 2.0, 2.0]})
    assert not select.faster({"kernels": [1.0], "loop": [1.0]})  # a tie keeps the loop
    assert not select.faster({"kernels": [], "loop": [1.0]})  # a failed measurement too
    assert not select.faster({"loop": [1.0]})


def test_kernels_are_built_for_the_widest_isa(native):
    avx512 = {"avx512f", "avx512vl", "avx512bw", "avx512dq", "avx2", "fma", "sse4_2"}
    name, flags = _native.isa_for(avx512)
    assert name == "avx512" and {"-mavx512f", "-mavx512bw", "-mfma"} <= set(flags)
    assert _native.isa_for(avx512 - {"avx512bw"}) == ("avx2", ["-mavx2", "-mfma"])
    assert _native.isa_for({"avx2", "sse4_2"}) == ("generic", [])
    assert _native.isa_for(avx512, "AVX2") == ("avx2", ["-mavx2", "-mfma"])
    with pytest.raises(_native._Unavailable, match="KERAS_RNNX_ISA must be one of"):
        _native.isa_for(avx512, "avx1024")
    # The library's file names its ISA, which is this CPU's widest: a cache directory shared
    # with another CPU never hands this one a library built for other instructions.
    assert native.isa == _native._cpu_isa()[0] == _native.isa()
    assert native.path.name.startswith(f"cell_kernels-{native.isa}-")


def test_batch_classes():
    assert [select.batch_class(b) for b in (1, 8, 9, 37, 64, 65)] == [8, 8, 16, 64, 64, 128]
    assert select.batch_class(None) == 64


def test_measured_once_then_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_RNNX_NATIVE", raising=False)
    monkeypatch.setattr(select, "_decisions", {})
    library = tmp_path / "cell_kernels-x.so"
    calls = []

    def measure(batch):
        calls.append(batch)
        return {"kernels": [3.0, 3.0, 3.0], "loop": [1.0, 1.0, 1.0]}

    assert select.use_kernels(library, "forget", U, 37, measure) is False
    assert select.use_kernels(library, "forget", U, 50, measure) is False  # same class
    assert calls == [64]
    cached = json.loads((tmp_path / "selection-cell_kernels-x.json").read_text())
    (key, timings), = cached.items()
    assert key.endswith(select.shape_key("forget", U, 37, select._threads()))
    assert timings == {"kernels": [3.0, 3.0, 3.0], "loop": [1.0, 1.0, 1.0]}
    # A new process reads the file instead of measuring again.
    monkeypatch.setattr(select, "_decisions", {})
    assert select.use_kernels(library, "forget", U, 64, measure) is False
    assert calls == [64]

    def failing(batch):
        raise RuntimeError("no time")

    assert select.use_kernels(library, "cec", U, 8, failing) is False
    assert "no time" in select.decisions()[select.shape_key("cec", U, 8, select._threads())][
        "error"]


def test_policy_from_the_environment(monkeypatch):
    for value, expected in (("0", "off"), ("off", "off"), ("1", "on"), ("True", "on"),
                            ("auto", "auto"), ("", "auto")):
        monkeypatch.setenv("KERAS_RNNX_NATIVE", value)
        assert select.policy() == expected
    monkeypatch.setenv("KERAS_RNNX_NATIVE", "fast")
    with pytest.raises(ValueError, match="KERAS_RNNX_NATIVE must be 0, 1 or auto"):
        select.policy()


def graph_ops(layer):
    spec = tf.TensorSpec((B, T, D), tf.float32)
    graph = tf.function(lambda x: layer(x, training=True)).get_concrete_function(spec).graph
    return {op.type for op in graph.get_operations()}


@pytest.mark.parametrize("kernels_faster", [False, True])
def test_training_graph_follows_the_measurement(native, monkeypatch, kernels_faster):
    """The measured timings are injected as this process's decision for the shape class; the
    layer's training graph holds the kernels exactly when they measured faster, and both paths
    give the NumPy-checked numbers of tests/test_native.py (same outputs here)."""
    monkeypatch.delenv("KERAS_RNNX_NATIVE", raising=False)
    fast, slow = (2.0, 1.0) if not kernels_faster else (1.0, 2.0)
    key = select.shape_key("forget", U, B, select._threads())
    monkeypatch.setitem(select._decisions, key, {
        "kernels": [fast] * 3, "loop": [slow] * 3,
        "use_kernels": select.faster({"kernels": [fast] * 3, "loop": [slow] * 3})})
    layer = rx.RNN(rx.ForgetGateLSTMCell(U))
    assert (OP in graph_ops(layer)) is kernels_faster
    monkeypatch.setenv("KERAS_RNNX_NATIVE", "0")
    assert OP not in graph_ops(layer)
    monkeypatch.setenv("KERAS_RNNX_NATIVE", "1")
    assert OP in graph_ops(layer)


def test_real_measurement_decides(native, monkeypatch):
    """The measurement itself runs both paths (nothing injected) and the decision follows it."""
    monkeypatch.delenv("KERAS_RNNX_NATIVE", raising=False)
    cell = rx.VanillaRNNCell(U)
    rx.RNN(cell).build((None, T, D))
    timings = rnn._measure_paths(native, cell, "vanilla", 8)
    assert len(timings["kernels"]) == len(timings["loop"]) == select.ROUNDS
    assert all(s > 0 for s in timings["kernels"] + timings["loop"])
    key = select.shape_key("vanilla", U, 8, select._threads())
    monkeypatch.setattr(select, "_decisions", {})
    monkeypatch.setattr(select, "_read", lambda path: {})
    monkeypatch.setattr(select, "_write", lambda path, key, timings: None)
    layer = rx.RNN(rx.VanillaRNNCell(U))
    x = np.random.default_rng(0).normal(size=(8, T, D)).astype("float32")
    # Measured while the training graph is traced (the usual case: model.fit's first step).
    graph = tf.function(lambda v: layer(v, training=True)).get_concrete_function(
        tf.TensorSpec((8, T, D), tf.float32)).graph
    decision = select.decisions()[key]
    assert decision["use_kernels"] == select.faster(decision)
    assert len(decision["kernels"]) == len(decision["loop"]) == select.ROUNDS
    assert (OP in {op.type for op in graph.get_operations()}) == decision["use_kernels"]
    np.testing.assert_allclose(layer(x, training=True).numpy(),
                               keras.layers.RNN(layer.cell)(x).numpy(), atol=1e-6)
