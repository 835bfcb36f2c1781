"""The corpus probe: one long stream, in windows, equals a NumPy loop; RNNMonitor records it."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import reference

import keras_rnnx as rx
from keras_rnnx import runlog
from keras_rnnx.corpus_probe import CorpusProbe
from keras_rnnx.monitor import RNNMonitor

VOCAB = 11
TEXT = "def f(x):\n    return (x + 1)  # one\n" * 2  # 74 characters


def char_model(kinds=("forget", "vanilla"), batch=4, steps=9, seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input(batch_shape=(batch, steps), dtype="int32"),
              keras.layers.Embedding(VOCAB, 3, name="embed")]
    for k, kind in enumerate(kinds):
        layers.append(rx.RNN(rx.CELL_KINDS[kind](5 - k), return_sequences=True, stateful=True,
                             name=f"rnn{k}"))
    layers.append(keras.layers.Dense(VOCAB))
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def ids(text=TEXT):
    return np.array([ord(ch) % VOCAB for ch in text])


def numpy_stream(model, kinds, x):
    """States and gates of the stacked cells over the stream `x` (N,), by the reference loop."""
    inputs = model.get_layer("embed").get_weights()[0][x][None].astype(np.float64)
    out = {}
    for k, kind in enumerate(kinds):
        weights = [w.astype(np.float64) for w in model.get_layer(f"rnn{k}").get_weights()]
        h, states = reference.run(kind, inputs, weights)
        c = None
        if kind != "vanilla":
            # Replay the steps for the cell state and the gates (reference.run returns h only).
            kernel, recurrent, bias = weights
            units = recurrent.shape[0]
            hs, cs = np.zeros(units), np.zeros(units)
            cells, gates = [], {name: [] for name in "ifzo"}
            for t in range(inputs.shape[1]):
                a = inputs[0, t] @ kernel + hs @ recurrent + bias
                i, f, z, o = np.split(a, 4)
                gates["i"].append(reference.sigmoid(i))
                gates["f"].append(reference.sigmoid(f))
                gates["z"].append(np.tanh(z))
                gates["o"].append(reference.sigmoid(o))
                hs, cs = reference.step(kind, inputs[0, t][None], [hs[None], cs[None]],
                                        kernel, recurrent, bias)
                hs, cs = hs[0], cs[0]
                cells.append(cs)
            c = np.stack(cells)
            out[f"rnn{k}"] = {"h": h[0], "c": c, **{n: np.stack(g) for n, g in gates.items()}}
        else:
            out[f"rnn{k}"] = {"h": h[0]}
        inputs = h
    return out


@pytest.mark.parametrize("window", [7, 74, 500])
def test_the_stream_in_windows_equals_one_numpy_pass(window):
    kinds = ("forget", "vanilla")
    model = char_model(kinds)
    model.fit(np.zeros((8, 9), "int32"), np.zeros((8, 9), "int32"), batch_size=4, verbose=0)
    got = CorpusProbe(TEXT, ids(), window=window).run(model)
    expected = numpy_stream(model, kinds, ids())
    assert set(got) == {"rnn0", "rnn1"}
    for key, fields in expected.items():
        assert set(got[key]) == set(fields), key
        for name, array in fields.items():
            assert got[key][name].shape == (len(TEXT), array.shape[1])
            np.testing.assert_allclose(got[key][name], array, atol=2e-5, err_msg=f"{key} {name}")


@pytest.mark.parametrize("window", [7, 20, 500])
def test_reset_every_zeroes_the_states_before_each_segment(window):
    kinds = ("forget", "vanilla")
    model = char_model(kinds)
    model.fit(np.zeros((8, 9), "int32"), np.zeros((8, 9), "int32"), batch_size=4, verbose=0)
    got = CorpusProbe(TEXT, ids(), window=window, reset_every=20).run(model)
    # The reference: each 20-character segment run from zero states by the NumPy loop.
    segments = [numpy_stream(model, kinds, ids()[a: a + 20]) for a in range(0, len(TEXT), 20)]
    for key in segments[0]:
        for name in segments[0][key]:
            expected = np.concatenate([s[key][name] for s in segments])
            np.testing.assert_allclose(got[key][name], expected, atol=2e-5,
                                       err_msg=f"{key} {name}")
    # ... and differs from the unreset stream after the first reset.
    stream = CorpusProbe(TEXT, ids(), window=window).run(model)
    assert np.abs(stream["rnn0"]["c"][20:] - got["rnn0"]["c"][20:]).max() > 1e-3
    np.testing.assert_allclose(stream["rnn0"]["c"][:20], got["rnn0"]["c"][:20], atol=1e-6)


def test_running_leaves_the_model_and_its_states_untouched():
    model = char_model()
    x = np.arange(36).reshape(4, 9) % VOCAB
    model.predict(x, batch_size=4, verbose=0)  # non-zero training states
    states = [v.numpy().copy() for layer in model.layers[1:3] for v in layer.states]
    weights = [w.copy() for w in model.get_weights()]
    CorpusProbe(TEXT, ids(), window=10).run(model)
    after = [v.numpy() for layer in model.layers[1:3] for v in layer.states]
    for a, b in zip(states, after):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert np.abs(states[0]).max() > 0


def test_backward_layers_and_bad_arguments_are_refused():
    model = keras.Sequential([keras.Input((None, 2)),
                              keras.layers.Bidirectional(rx.RNN(rx.VanillaRNNCell(3))),
                              keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="runs backwards"):
        CorpusProbe("ab", np.zeros((2, 2))).run(model)
    with pytest.raises(ValueError, match="`inputs`"):
        CorpusProbe("abc", np.zeros(2))
    with pytest.raises(ValueError, match="`window`"):
        CorpusProbe("ab", np.zeros(2), window=0)
    with pytest.raises(ValueError, match="`reset_every`"):
        CorpusProbe("ab", np.zeros(2), reset_every=0)
    with pytest.raises(ValueError, match="`text`"):
        CorpusProbe("", np.zeros(0))
    with pytest.raises(ValueError, match="`corpus`"):
        RNNMonitor("unused", np.zeros((1, 2, 2)), corpus="text")
    with pytest.raises(ValueError, match="`corpus_every`"):
        RNNMonitor("unused", np.zeros((1, 2, 2)), corpus_every=0)


def train_with_monitor(tmp_path, corpus, corpus_every, steps=6):
    model = char_model()
    rng = np.random.default_rng(0)
    x = rng.integers(0, VOCAB, (4 * steps, 9))
    monitor = RNNMonitor(tmp_path / "run", x[:4], every=2, jacobian=False, corpus=corpus,
                         corpus_every=corpus_every)
    model.fit(x, np.roll(x, -1, axis=1), batch_size=4, shuffle=False, verbose=0,
              callbacks=[monitor])
    return model, monitor, runlog.RunReader(tmp_path / "run")


def test_monitor_records_the_corpus_at_the_end_and_every_n_steps(tmp_path):
    corpus = CorpusProbe(TEXT, ids(), window=16, meta={"source": "test"})
    model, monitor, reader = train_with_monitor(tmp_path, corpus, corpus_every=4)
    assert reader.finished and reader.problems == []
    stored = reader.corpus()
    assert stored.text == TEXT and stored.meta["source"] == "test"
    assert stored.meta["window"] == 16 and stored.meta["dtype"] == "float16"
    assert stored.meta["reset_every"] is None
    assert reader.corpus_layers() == ["rnn0", "rnn1"]
    assert reader.corpus_kinds("rnn0") == ["h", "c", "i", "f", "z", "o"]
    assert reader.corpus_kinds("rnn1") == ["h"]
    assert reader.corpus_steps().tolist() == [4, 6]  # every 4 steps, and the end (step 6)
    step, h = reader.corpus_frame_at("h", "rnn0")
    assert step == 6 and h.shape == (len(TEXT), 5) and h.dtype == np.float16
    # The last recording is the trained model's states over the text (float16 precision).
    expected = numpy_stream(model, ("forget", "vanilla"), ids())
    np.testing.assert_allclose(h.astype(np.float64), expected["rnn0"]["h"], atol=2e-3)
    np.testing.assert_allclose(reader.corpus_frames("f", "rnn0")[-1][1].astype(np.float64),
                               expected["rnn0"]["f"], atol=2e-3)
    end = reader.events("train_end")[-1].data
    assert end["corpus_recordings"] == 2 and end["corpus_seconds"] > 0
    assert monitor.corpus_seconds > 0 and corpus.recordings == 2


def test_the_size_bound_keeps_room_for_the_final_recording(tmp_path):
    one = len(TEXT) * (6 * 5 + 1 * 4) * 2  # characters × (states + gates) × units × float16
    corpus = CorpusProbe(TEXT, ids(), window=32, max_mb=2.5 * one / 2**20)
    _, _, reader = train_with_monitor(tmp_path, corpus, corpus_every=1)
    # Room for 2.5 recordings: after the first, an every-N one (which needs room for itself
    # and the final one) no longer fits, and the final one still does.
    assert reader.corpus_steps().tolist() == [1, 6]
    skipped = reader.events("corpus_skipped")
    assert [e.step for e in skipped] == [2, 3, 4, 5, 6]
    assert all(e.data["bytes"] == one and not e.data["final"] for e in skipped)
    assert corpus.stored_bytes == 2 * one


def test_a_failing_corpus_probe_does_not_stop_training(tmp_path):
    corpus = CorpusProbe(TEXT, np.zeros((len(TEXT), 3), int), window=16)  # a 4-D RNN input
    with pytest.warns(RuntimeWarning, match="corpus probe failed"):
        _, monitor, reader = train_with_monitor(tmp_path, corpus, corpus_every=2)
    assert reader.finished and len(reader.scalars("loss", phase="batch")[0]) == 6
    assert len(reader.events("corpus_probe_error")) == 1
