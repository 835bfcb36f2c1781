"""`.keras` files and SavedModel export, each loaded in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import reference

import keras_rnnx as rx

CELLS = {
    "vanilla": rx.VanillaRNNCell,
    "cec": rx.CECCell,
    "original": rx.OriginalLSTMCell,
    "forget": rx.ForgetGateLSTMCell,
}


def run_python(code: str, cwd) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd, capture_output=True, text=True, timeout=240,
        env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def build_model(kind: str, seed: int) -> keras.Model:
    """Masking, a stateful-free stack of two layers of `kind` (one Bidirectional), a head."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 3))
    x = keras.layers.Masking(0.0)(inputs)
    x = keras.layers.Bidirectional(
        rx.RNN(CELLS[kind](4, dropout=0.1, recurrent_dropout=0.1, seed=1), return_sequences=True)
    )(x)
    x = keras.layers.RNN([CELLS[kind](5), CELLS[kind](3)], go_backwards=True)(x)
    outputs = keras.layers.Dense(2)(x)
    model = keras.Model(inputs, outputs, name=f"model_{kind}")
    model.compile(optimizer="adam", loss="mse")
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Each cell's model, fitted one step, saved as .keras and exported; with its outputs."""
    root = tmp_path_factory.mktemp("saved")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 3)).astype("float32")
    x[1, 4:] = 0.0  # masked tail
    np.save(root / "x.npy", x)
    expected = {}
    for seed, kind in enumerate(reference.KINDS):
        model = build_model(kind, seed)
        model.fit(x, rng.normal(size=(4, 2)), epochs=1, verbose=0)
        expected[kind] = model.predict(x, verbose=0)
        np.save(root / f"{kind}.npy", expected[kind])
        model.save(root / f"{kind}.keras")
        model.export(str(root / f"{kind}_savedmodel"), verbose=False)
    return root, x, expected


@pytest.mark.parametrize("order", ["rx_first", "keras_first"])
def test_keras_file_loads_in_fresh_process_with_safe_mode(saved, order):
    root, _, _ = saved
    imports = "import keras_rnnx; import keras" if order == "rx_first" else (
        "import keras; import keras_rnnx")
    out = run_python(
        f"""
        import json
        import numpy as np
        {imports}
        x = np.load("x.npy")
        report = {{}}
        for kind in {list(reference.KINDS)!r}:
            model = keras.saving.load_model(kind + ".keras", safe_mode=True)
            got = model.predict(x, verbose=0)
            cells = sorted({{type(layer.cell).__name__ for layer in model._flatten_layers()
                            if hasattr(layer, "cell") and not hasattr(layer.cell, "cells")}})
            report[kind] = dict(diff=float(np.abs(got - np.load(kind + ".npy")).max()),
                                cells=cells, optimizer=model.optimizer.iterations.numpy().item())
        print(json.dumps(report))
        """,
        cwd=root,
    )
    report = json.loads(out.strip().splitlines()[-1])
    for kind in reference.KINDS:
        assert report[kind]["diff"] < 1e-6, (kind, report[kind])
        assert CELLS[kind].__name__ in report[kind]["cells"]
        assert report[kind]["optimizer"] == 1


def test_savedmodel_serves_without_the_package(saved):
    root, _, _ = saved
    out = run_python(
        f"""
        import json, sys
        sys.modules["keras_rnnx"] = None  # any import of the package now fails
        try:
            import keras_rnnx
            raise SystemExit("keras_rnnx should not be importable here")
        except ImportError:
            pass
        import numpy as np
        import tensorflow as tf
        x = np.load("x.npy")
        report = {{}}
        for kind in {list(reference.KINDS)!r}:
            served = tf.saved_model.load(kind + "_savedmodel")
            got = served.serve(tf.constant(x)).numpy()
            report[kind] = float(np.abs(got - np.load(kind + ".npy")).max())
        print(json.dumps(report))
        """,
        cwd=root,
    )
    report = json.loads(out.strip().splitlines()[-1])
    for kind in reference.KINDS:
        assert report[kind] < 1e-6, (kind, report[kind])


def test_keras_file_refuses_unsafe_lambda_with_safe_mode(tmp_path):
    """safe_mode stays on: our cells load, arbitrary code in a Lambda does not."""
    model = keras.Sequential([keras.Input((3, 2)), keras.layers.RNN(rx.CECCell(2)),
                              keras.layers.Lambda(lambda t: t * 2)])
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="safe_mode"):
        keras.saving.load_model(tmp_path / "lambda.keras", safe_mode=True)


def test_import_hygiene_and_registration(tmp_path):
    out = run_python(
        """
        import json, sys
        import keras_rnnx
        report = {"qt": sorted(m for m in ("PyQt6", "pyqtgraph") if m in sys.modules),
                  "keras_before": "keras" in sys.modules or "tensorflow" in sys.modules}
        import keras
        report["registered"] = keras.saving.get_registered_object(
            "keras_rnnx>OriginalLSTMCell") is keras_rnnx.OriginalLSTMCell
        report["rnn"] = keras.saving.get_registered_object("keras_rnnx>RNN") is keras_rnnx.RNN
        report["qt_after"] = sorted(m for m in ("PyQt6", "pyqtgraph") if m in sys.modules)
        print(json.dumps(report))
        """,
        cwd=tmp_path,
    )
    report = json.loads(out.strip().splitlines()[-1])
    assert report == {"qt": [], "keras_before": False, "registered": True, "rnn": True,
                      "qt_after": []}
