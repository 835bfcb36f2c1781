"""Deployment: TFLite / LiteRT and ONNX files of models with each cell, run against Keras.

One small model holds all four cells side by side, in both forms of the time loop (the
unrolled one, `unroll=True`, and Keras's default while loop), behind a Masking layer, with
go_backwards on two cells and a Dense head each; the heads are concatenated, so that one
conversion covers every cell and form, and each branch's difference is a slice of one output.
The paths, and what runs them:

- `tf.lite.TFLiteConverter` with builtin ops only, fixed batch: both forms. Run in LiteRT's
  interpreter (`ai_edge_litert`) and in the deprecated `tf.lite.Interpreter`.
- The while loop with a dynamic batch needs `SELECT_TF_OPS` (Flex tensor-list ops): it
  converts, but neither interpreter here links the Flex delegate, so it cannot run here.
- `model.export(format="litert")`, Keras's own path (builtins + select ops, builtins used
  where they suffice): the unrolled form with a dynamic batch, in both interpreters.
- ONNX: `model.export(format="onnx")`, which converts with `tf2onnx.convert.from_function`;
  the while-loop form with a dynamic batch, run in onnxruntime.

Every output must equal Keras's within 1e-5 (max abs).
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_rnnx as rx

T, D, U, B = 5, 3, 4, 2
HEAD = 2  # outputs per cell in the concatenated output
TOL = 1e-5
KINDS = tuple(rx.CELL_KINDS)
FLEX_ERROR = "Select TensorFlow op"  # the interpreters' message for a model with Flex ops
FORMS = ("unrolled", "while")  # unroll=True / False


def build_model(*, forms=FORMS, batch: int | None = None) -> keras.Model:
    """(batch, T, D) -> (batch, T, len(forms) * 4 * HEAD): one branch per form and cell."""
    inputs = keras.Input((T, D), batch_size=batch, name="x")
    masked = keras.layers.Masking(0.0)(inputs)
    heads = []
    for form in forms:
        for i, (kind, cell) in enumerate(rx.CELL_KINDS.items()):
            h = rx.RNN(cell(U), return_sequences=True, unroll=form == "unrolled",
                       go_backwards=i % 2 == 1, name=f"rnn_{kind}_{form}")(masked)
            heads.append(keras.layers.Dense(HEAD, name=f"head_{kind}_{form}")(h))
    model = keras.Model(inputs, keras.layers.Concatenate(name="y")(heads))
    # Non-zero biases and gates away from their defaults: every weight matters.
    rng = np.random.default_rng(7)
    model.set_weights([rng.normal(scale=0.5, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    return model


def inputs(batch: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(batch, T, D)).astype("float32")
    x[-1, T - 2:] = 0.0  # a masked tail
    return x


X2, X3 = inputs(2, 0), inputs(3, 1)


def per_branch_diff(got, want, forms) -> dict[str, float]:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    diffs = {}
    for j, form in enumerate(forms):
        for i, kind in enumerate(KINDS):
            cols = slice((j * len(KINDS) + i) * HEAD, (j * len(KINDS) + i + 1) * HEAD)
            diffs[f"{kind}/{form}"] = float(np.abs(got[..., cols] - want[..., cols]).max())
    return diffs


def assert_close(got, want, what: str, forms=FORMS) -> None:
    diffs = per_branch_diff(got, want, forms)
    print(f"{what}: max abs diff {diffs}")
    assert max(diffs.values()) <= TOL, (what, diffs)


# --- interpreters ------------------------------------------------------------------------------


def litert_interpreter():
    module = pytest.importorskip(
        "ai_edge_litert.interpreter",
        reason="ai-edge-litert is not installed (pip install ai-edge-litert): LiteRT's "
               "interpreter is not available",
    )
    return module.Interpreter


def tf_lite_interpreter():
    interpreter = getattr(tf.lite, "Interpreter", None)
    if interpreter is None:
        pytest.skip(f"tf.lite.Interpreter is not in TensorFlow {tf.__version__} (removed "
                    f"in favour of ai-edge-litert)")
    return interpreter


INTERPRETERS = {"litert": litert_interpreter, "tf.lite": tf_lite_interpreter}


def run_tflite(interpreter_cls, content: bytes, x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        # tf.lite.Interpreter warns that it is deprecated in favour of ai-edge-litert.
        warnings.simplefilter("ignore")
        interpreter = interpreter_cls(model_content=content)
    runner = interpreter.get_signature_runner()
    (name,) = runner.get_input_details()
    (output,) = runner(**{name: x}).values()
    return output


def custom_ops(content: bytes) -> set[str]:
    """The custom (non-builtin) operators of a .tflite flatbuffer: Flex ops are named Flex*."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(content, 0)
    codes = (model.OperatorCodes(i) for i in range(model.OperatorCodesLength()))
    return {code.CustomCode().decode() for code in codes if code.CustomCode()}


# --- TFLiteConverter and model.export(format="litert") ----------------------------------------

_FILES: dict = {}


def tflite_file(path: str, *, forms, batch: int | None):
    """(model, .tflite bytes), made once per variant.

    path "builtins" / "select": `TFLiteConverter.from_keras_model` with TFLITE_BUILTINS, or
    TFLITE_BUILTINS + SELECT_TF_OPS; "export": `model.export(format="litert")`.
    """
    key = (path, forms, batch)
    if key not in _FILES:
        if path == "export":
            model = build_model(forms=forms)
            signature = [tf.TensorSpec((batch, T, D), tf.float32, name="x")]
            with tempfile.TemporaryDirectory() as tmp:
                file = Path(tmp) / "model.tflite"
                model.export(str(file), format="litert", input_signature=signature,
                             verbose=False)
                content = file.read_bytes()
        else:
            model = build_model(forms=forms, batch=batch)
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS] + (
                [tf.lite.OpsSet.SELECT_TF_OPS] if path == "select" else [])
            content = converter.convert()
        _FILES[key] = (model, content)
    return _FILES[key]


@pytest.mark.parametrize("interpreter", sorted(INTERPRETERS))
def test_tflite_converter_builtins_only_with_fixed_batch(interpreter):
    """With a fixed batch both forms convert to builtin ops only: the unrolled one, and the
    while loop (a TFL WHILE; its tensor lists are lowered because their shapes are static)."""
    interpreter_cls = INTERPRETERS[interpreter]()
    model, content = tflite_file("builtins", forms=FORMS, batch=B)
    assert custom_ops(content) == set()
    assert_close(run_tflite(interpreter_cls, content, X2), model(X2),
                 f"TFLiteConverter builtins, batch fixed at {B}, in {interpreter}")


@pytest.mark.parametrize("interpreter", sorted(INTERPRETERS))
def test_tflite_converter_while_loop_with_dynamic_batch_needs_flex(interpreter):
    """The while loop with a dynamic batch keeps its TensorList ops (their element shape holds
    the unknown batch size; with builtins only the converter fails with "Lowering tensor list
    ops is failed"), so it converts only with SELECT_TF_OPS, into Flex ops. Running those needs
    the Flex delegate, which neither ai-edge-litert nor TensorFlow's pip wheel links (the
    interpreter looks up `TF_AcquireFlexDelegate`, which no library shipped here defines): the
    interpreter refuses the model. Should an interpreter run it, it must match Keras."""
    interpreter_cls = INTERPRETERS[interpreter]()
    model, content = tflite_file("select", forms=("while",), batch=None)
    assert {"FlexTensorListReserve", "FlexTensorListSetItem",
            "FlexTensorListStack"} <= custom_ops(content)
    try:
        got = run_tflite(interpreter_cls, content, X3)
    except RuntimeError as error:
        assert FLEX_ERROR in str(error), error
        print(f"{interpreter}: refuses the Flex model ({FLEX_ERROR}(s) ... not supported)")
        return
    assert_close(got, model(X3), f"TFLiteConverter select ops, dynamic batch, in {interpreter}",
                 forms=("while",))


@pytest.mark.parametrize("interpreter", sorted(INTERPRETERS))
def test_keras_export_litert_unrolled_with_dynamic_batch(interpreter):
    interpreter_cls = INTERPRETERS[interpreter]()
    model, content = tflite_file("export", forms=("unrolled",), batch=None)
    # Keras allows select ops, but the converter uses builtins wherever they suffice.
    assert custom_ops(content) == set()
    for x in (X2, X3):
        assert_close(run_tflite(interpreter_cls, content, x), model(x),
                     f"export(format='litert'), dynamic batch, B={len(x)} in {interpreter}",
                     forms=("unrolled",))


# --- ONNX --------------------------------------------------------------------------------------


def onnx_runtime():
    pytest.importorskip(
        "tf2onnx", reason="tf2onnx is not installed (pip install tf2onnx onnx): Keras's ONNX "
                          "export with the TensorFlow backend needs it")
    return pytest.importorskip(
        "onnxruntime",
        reason="onnxruntime is not installed (pip install onnxruntime): no ONNX runtime")


def run_onnx(ort, model, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    return session.run(None, {name: x})[0]


def test_keras_export_onnx_while_loop_with_dynamic_batch(tmp_path):
    """`model.export(format="onnx")` converts with `tf2onnx.convert.from_function`; Keras's
    while loop becomes an ONNX Loop and the batch stays dynamic. (The unrolled form converts
    too; it is left out here to keep the suite fast: tf2onnx is the slowest converter.)"""
    ort = onnx_runtime()
    model = build_model(forms=("while",))
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # from Keras's numpy-2 patch of tf2onnx
        model.export(str(path), format="onnx", verbose=False,
                     input_signature=[tf.TensorSpec((None, T, D), tf.float32, name="x")])
    for x in (X2, X3):
        assert_close(run_onnx(ort, str(path), x), model(x),
                     f"export(format='onnx'), dynamic batch, B={len(x)} in onnxruntime",
                     forms=("while",))
