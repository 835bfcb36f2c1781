"""keras-rnnx: the recurrent cells of the RNN & LSTM lecture for Keras 3, and tools to watch them.

`import keras_rnnx as rx` gives the cells (`rx.VanillaRNNCell`, `rx.CECCell`,
`rx.OriginalLSTMCell`, `rx.ForgetGateLSTMCell`), the LSTM variants (`rx.PeepholeLSTMCell`,
`rx.LSTMVariantCell(units, variant=...)`) and `rx.RNN`. This module itself imports
neither Keras nor TensorFlow, so that NumPy-only parts of the package load without them: the
names above are resolved on first access. The cells still register with Keras's serializer
as soon as Keras is imported, before or after this package, so a `.keras` file that uses
them loads after a plain `import keras_rnnx`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_LAZY = {
    "VanillaRNNCell": "keras_rnnx.cells",
    "CECCell": "keras_rnnx.cells",
    "OriginalLSTMCell": "keras_rnnx.cells",
    "ForgetGateLSTMCell": "keras_rnnx.cells",
    "LSTMVariantCell": "keras_rnnx.cells",
    "PeepholeLSTMCell": "keras_rnnx.cells",
    "VARIANTS": "keras_rnnx.cells",
    "CELL_KINDS": "keras_rnnx.cells",
    "RNN": "keras_rnnx.rnn",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'keras_rnnx' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def _register_with_keras() -> None:
    importlib.import_module("keras_rnnx.cells")
    importlib.import_module("keras_rnnx.rnn")


class _RegisterAfterKerasImport(importlib.abc.MetaPathFinder):
    """Registers the layers right after `keras` finishes importing.

    The standard library has no post-import hook, so this finder steps in once, for the
    top-level `keras` module only, lets the normal finders locate it, and wraps that one
    loader's `exec_module`. It removes itself on first use.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec("keras")
        loader = getattr(spec, "loader", None)
        exec_module = getattr(loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_then_register(module):
            exec_module(module)
            _register_with_keras()

        loader.exec_module = exec_then_register
        return spec


if "keras" in sys.modules:
    _register_with_keras()
elif not any(isinstance(f, _RegisterAfterKerasImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterKerasImport())
