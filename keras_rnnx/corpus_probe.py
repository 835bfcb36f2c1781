"""The corpus probe: a model's states and gates at every character of a long held-out text.

The probe of `keras_rnnx.diagnostics` looks at a small batch of short sequences, with gradients.
Reading what single units have learned (Karpathy et al. 2015's quote, bracket and line-position
cells; LSTMVis) needs the opposite: one long text — tens of thousands of characters — run as
one stream, forward only. `CorpusProbe(text, inputs)` does that:

- the model is rebuilt from its config as a *stream twin*: batch size 1, every RNN layer
  stateful, the time axis of any length; before each run the twin gets the model's current
  weights and zero states, so training is never touched (no weight, optimizer, RNG or state
  of the model changes);
- the stream is run in windows of `window` steps through `diagnostics.probe` (no targets, no
  Jacobians: states and gates only); after each window the states of the recorded layers are
  set to their value after its last step, so the result is exactly that of one pass over the
  whole text (the tests check it against a NumPy loop over the cell's equations);
- `run(model)` returns `{layer key: {"h": (N, U), "c": ..., gate name: (N, U)}}` as float32;
  `record(...)` is what `RNNMonitor(corpus=...)` calls at the end of training and every
  `corpus_every` steps: it stores the arrays (float16) in the run log, within a size bound.

Layers that run backwards (`go_backwards`, the backward half of a `Bidirectional`) cannot read a
stream one window after the other, so a model with one is refused. TensorFlow-only, like the
probe.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any, Callable

import numpy as np

__all__ = ["CorpusProbe"]

# Keys of a model config that hold a shape whose first axis is the batch.
_SHAPE_KEYS = ("batch_shape", "batch_input_shape", "input_shape")


class CorpusProbe:
    """States and gates of a model's recurrent layers over one long text, run as one stream.

    Args:
        text: the text; character i is step i of the stream (N = `len(text)` characters,
            at most `runlog.MAX_CORPUS_CHARACTERS`).
        inputs: the model's input for each character, (N, ...) — e.g. int ids (N,) for a model
            that starts with an `Embedding`, or one-hot rows (N, D).
        window: steps per call of the probe (memory grows with it, not with N).
        layers: probe layer keys to record (see `diagnostics.probed_layers`); default all.
        name: the corpus's name in the run log.
        meta: a JSON-serializable dict stored with the text (e.g. where it comes from).
        max_mb: the most megabytes of corpus frames `record` stores in one run. A recording
            every N steps is skipped when it would leave no room for the one at the end of
            training; that one is skipped only when it does not fit at all.
        dtype: the dtype the frames are stored in (float16 by default: states and gates of
            tanh/sigmoid cells lie in [-1, 1], and float16 halves the log).
        reset_every: zero the states before every character whose index is a multiple of
            this (None: one stream from zero states, never reset).
    """

    def __init__(
        self,
        text: str,
        inputs,
        *,
        window: int = 500,
        layers=None,
        name: str = "corpus",
        meta: dict | None = None,
        max_mb: float = 256.0,
        dtype: str = "float16",
        reset_every: int | None = None,
    ) -> None:
        from keras_rnnx import runlog

        if not isinstance(text, str) or not text:
            raise ValueError("Invalid value for argument `text`: expected a non-empty str.")
        if len(text) > runlog.MAX_CORPUS_CHARACTERS:
            raise ValueError(
                f"Invalid value for argument `text`: {len(text)} characters, more than the "
                f"{runlog.MAX_CORPUS_CHARACTERS} a run log's corpus holds."
            )
        inputs = np.asarray(inputs)
        if inputs.ndim < 1 or inputs.shape[0] != len(text):
            raise ValueError(
                f"Invalid value for argument `inputs`: expected one row per character of "
                f"`text` ({len(text)}), got shape {inputs.shape}."
            )
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(
                f"Invalid value for argument `window`: expected a positive integer, got "
                f"{window!r}."
            )
        if reset_every is not None and (isinstance(reset_every, bool)
                                        or not isinstance(reset_every, int) or reset_every < 1):
            raise ValueError(
                f"Invalid value for argument `reset_every`: expected a positive integer or "
                f"None, got {reset_every!r}."
            )
        if not float(max_mb) > 0:
            raise ValueError(
                f"Invalid value for argument `max_mb`: expected a positive number, got "
                f"{max_mb!r}."
            )
        if np.dtype(dtype).kind != "f":
            raise ValueError(
                f"Invalid value for argument `dtype`: expected a float dtype, got {dtype!r}."
            )
        self.text = text
        self.inputs = inputs
        self.window = window
        self.reset_every = reset_every
        self.layers = layers
        self.name = str(name)
        self.meta = dict(meta or {})
        self.max_bytes = int(float(max_mb) * 2**20)
        self.dtype = np.dtype(dtype)
        self.stored_bytes = 0
        self.recordings = 0
        self.skipped = 0
        self._twins: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # --- running ----------------------------------------------------------------------------

    def run(self, model) -> dict[str, dict[str, np.ndarray]]:
        """The recorded layers' states and gates at every character: `{key: {name: (N, U)}}`.

        Names are the probe's: `"h"` (and `"c"` for two-state cells) and the gate names.
        The model itself is not changed.
        """
        from keras_rnnx import diagnostics

        twin, targets = self._twin(model)
        twin.set_weights(model.get_weights())
        for target in targets:
            target.layer.reset_state()
        probe = diagnostics.get_probe(twin, layers=self.layers, jacobian=False)
        keys = list(probe.layer_keys)  # model order
        n = len(self.text)
        every = self.reset_every or n
        pieces: dict[str, dict[str, list[np.ndarray]]] = {}
        begin = 0
        while begin < n:
            if begin and begin % every == 0:
                for target in targets:
                    target.layer.reset_state()
            # A window never crosses a reset.
            stop = min(n, begin + self.window, (begin // every + 1) * every)
            x = self.inputs[begin:stop]
            if stop - begin < self.window:
                # Pad the last window to the same length (the steps after `stop` come later
                # in time and cannot change the earlier ones): one traced graph for all.
                pad = np.repeat(x[-1:], self.window - (stop - begin), axis=0)
                x = np.concatenate([x, pad], axis=0)
            trace = probe(x[None])
            valid = stop - begin
            for key in keys:
                fields = trace[key]
                out = pieces.setdefault(key, {})
                for name, array in {**fields["states"], **fields["gates"]}.items():
                    out.setdefault(name, []).append(array[0, :valid])
            # The probe reads the states of stateful layers but does not advance them.
            for target in targets:
                values = [trace[key]["states"][name][0, valid - 1]
                          for key, reader in zip(target.keys, target.readers)
                          for name in reader.state_names]
                for variable, value in zip(target.layer.states, values):
                    variable.assign(value[None])
            begin = stop
        return {key: {name: np.concatenate(parts, axis=0) for name, parts in fields.items()}
                for key, fields in pieces.items()}

    def _twin(self, model):
        """(the stream twin of `model`, its probe targets), built once per model."""
        entry = self._twins.get(model)
        if entry is not None:
            return entry
        from keras_rnnx import diagnostics

        for target in diagnostics._find_targets(model):
            if target.direction is not None or target.layer.go_backwards:
                raise ValueError(
                    f"corpus probe: layer {target.key!r} of model '{model.name}' runs backwards "
                    f"in time; a corpus probe runs the text forward as one stream."
                )
        try:
            config = _stream_config(model.get_config())
            twin = type(model).from_config(config)
        except Exception as error:  # noqa: BLE001 - say why in terms of the model
            raise ValueError(
                f"corpus probe: cannot rebuild model '{model.name}' from its config as a "
                f"batch-1 stream ({type(error).__name__}: {error}); the corpus probe needs a "
                f"Sequential or functional model whose layers have a complete get_config."
            ) from None
        if not twin.built:
            twin.build((1, None) + tuple(self.inputs.shape[1:]))
        if len(twin.weights) != len(model.weights):
            raise ValueError(
                f"corpus probe: the rebuilt model has {len(twin.weights)} weights, model "
                f"'{model.name}' {len(model.weights)}."
            )
        targets = [t for t in diagnostics._find_targets(twin) if t.readable]
        self._twins[model] = entry = (twin, targets)
        return entry

    # --- recording into a run log ------------------------------------------------------------

    def write_text(self, put: Callable[..., Any]) -> None:
        """Queues the text through `put` (the monitor's writer), once per run."""
        meta = {**self.meta, "window": self.window, "dtype": self.dtype.name,
                "characters": len(self.text), "reset_every": self.reset_every}
        put("write_corpus", self.text, name=self.name, meta=meta)

    def record(self, model, put: Callable[..., Any], step: int, *, final: bool) -> bool:
        """Runs the model over the text and queues its arrays through `put`, within `max_mb`.

        `put(method, *args, bulky_bytes=n, **kwargs)` is the monitor's writer queue: arrays
        travel as bulky items, which it drops (and counts) when the disk falls behind. Returns
        whether the recording was made; a skipped one is logged as a `corpus_skipped` event.
        """
        size = self._recording_bytes(model)
        room = self.max_bytes - self.stored_bytes
        # Recordings every N steps keep room for the one at the end of training.
        needed = size if final else 2 * size
        if needed > room:
            self.skipped += 1
            put("write_event", "corpus_skipped", {
                "corpus": self.name, "bytes": size, "stored_bytes": self.stored_bytes,
                "max_bytes": self.max_bytes, "final": final}, step=step)
            return False
        arrays = self.run(model)
        for key, fields in arrays.items():
            for kind, array in fields.items():
                array = array.astype(self.dtype)
                self.stored_bytes += array.nbytes
                put("write_corpus_frame", kind, key, step, array, corpus=self.name,
                    bulky_bytes=array.nbytes)
        self.recordings += 1
        return True

    def _recording_bytes(self, model) -> int:
        """Bytes of one recording: N × Σ units × (states + gates) × itemsize."""
        from keras_rnnx import diagnostics

        twin, _ = self._twin(model)
        probe = diagnostics.get_probe(twin, layers=self.layers, jacobian=False)
        total = 0
        for target in probe._targets:
            for key, reader in zip(target.keys, target.readers):
                if key in probe.layer_keys:
                    count = len(reader.state_names) + len(reader.gate_names)
                    total += count * reader.units
        return total * len(self.text) * self.dtype.itemsize


def _stream_config(config):
    """`config` with batch size 1, a time axis of any length and every RNN layer stateful."""
    config = copy.deepcopy(config)

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _SHAPE_KEYS and isinstance(value, (list, tuple)) and len(value) >= 2 \
                        and all(v is None or isinstance(v, int) for v in value):
                    # Every shape gets batch 1; an input's time axis becomes free (the shapes
                    # layers were built with keep theirs: a cell's is (batch, features)).
                    time = None if key != "input_shape" else value[1]
                    node[key] = [1, time, *value[2:]]
                elif key == "stateful" and isinstance(value, bool):
                    node[key] = True
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return config
