"""The NumPy parts of examples/char_lm.py against hand-written references."""

from __future__ import annotations

import math
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import char_lm  # noqa: E402


def kneser_ney_reference(train: list[int], order: int, vocab: int):
    """Interpolated Kneser-Ney from the textbook definition, with dicts and loops."""
    counts = [None] + [Counter() for _ in range(order)]  # counts[k][gram tuple]
    highest = Counter(tuple(train[t - order + 1: t + 1]) for t in range(order - 1, len(train)))
    counts[order] = highest
    for k in range(order - 1, 0, -1):
        above = {g for g in counts[k + 1]}
        counts[k] = Counter(g[1:] for g in above)
    discount = {}
    for k in range(1, order + 1):
        values = list(counts[k].values())
        n1, n2 = values.count(1), values.count(2)
        discount[k] = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
    totals = [None] + [defaultdict(int) for _ in range(order)]
    followers = [None] + [defaultdict(int) for _ in range(order)]
    for k in range(1, order + 1):
        for gram, c in counts[k].items():
            totals[k][gram[:-1]] += c
            followers[k][gram[:-1]] += 1

    def prob(history: tuple, w: int) -> float:
        p = 1.0 / vocab
        for k in range(1, order + 1):
            h = history[len(history) - (k - 1):] if k > 1 else ()
            total = totals[k].get(h, 0)
            if total:
                c = counts[k].get(h + (w,), 0)
                d = discount[k]
                p = (max(c - d, 0) + d * followers[k][h] * p) / total
        return p

    return prob


def test_kneser_ney_equals_a_dict_reference_and_sums_to_one():
    rng = np.random.default_rng(0)
    vocab = 5
    # a little structure, so that higher orders matter
    train = [0, 1, 2] * 30 + rng.integers(0, vocab, 300).tolist() + [3, 4] * 20
    test = rng.integers(0, vocab, 60).tolist() + [0, 1, 2, 0, 1]
    order = 3
    got = char_lm.kneser_ney_log2probs(np.array(train), np.array(test), order, vocab)
    reference = kneser_ney_reference(train, order, vocab)
    assert np.isnan(got[: order - 1]).all()
    for t in range(order - 1, len(test)):
        expected = reference(tuple(test[t - order + 1: t]), test[t])
        assert got[t] == pytest.approx(math.log2(expected), abs=1e-12), t
    for history in [(0, 1), (4, 4), (2, 3)]:
        assert sum(reference(history, w) for w in range(vocab)) == pytest.approx(1.0)
        total = sum(2.0 ** char_lm.kneser_ney_log2probs(
            np.array(train), np.array([*history, w]), order, vocab)[-1] for w in range(vocab))
        assert total == pytest.approx(1.0, abs=1e-12)


def test_batches_continue_each_stream_from_one_batch_to_the_next():
    ids = np.arange(1000)
    x, y = char_lm.batches(ids, batch=4, steps=10)
    length = (len(ids) - 1) // 4
    for k in range(len(x) // 4 - 1):
        for b in range(4):
            assert x[k * 4 + b, 0] == b * length + k * 10
            assert x[(k + 1) * 4 + b, 0] == x[k * 4 + b, -1] + 1  # the stream goes on
    np.testing.assert_array_equal(y, x + 1)


def test_vocabulary_maps_unseen_characters_to_the_unknown_symbol():
    vocab = char_lm.Vocabulary("abca\n")
    assert vocab.chars == [char_lm.UNKNOWN, "\n", "a", "b", "c"]
    assert vocab.encode("cab\nz€😀").tolist() == [4, 2, 3, 1, 0, 0, 0]
    assert vocab.decode([2, 0, 4]) == "a" + char_lm.UNKNOWN + "c"


def test_the_split_is_by_file_and_deterministic():
    files = char_lm.stdlib_sources()
    paths = [p for p, _ in files]
    assert not any(p.startswith(("test/", "idlelib/")) or "site-packages" in p for p in paths)
    splits = Counter(char_lm.split_of(p) for p in paths)
    assert set(splits) == {"train", "valid", "test"}
    assert 0.7 < splits["train"] / len(paths) < 0.9
    assert [char_lm.split_of(p) for p in paths] == [char_lm.split_of(p) for p in paths]


def test_resets_in_the_test_equal_each_segment_run_from_zero_states():
    import argparse

    args = argparse.Namespace(seed=0, embedding=3, units=4, layers=1)
    vocab, batch, length, every = 7, 2, 50, 20
    ids = np.random.default_rng(1).integers(0, vocab, batch * length)
    model = char_lm.build_model("original", args, vocab, batch, None)
    got = char_lm.stream_log2probs(model, ids, batch, window=7, reset_every=every)
    single = char_lm.build_model("original", args, vocab, 1, None)
    single.set_weights(model.get_weights())
    expected = np.full(len(ids), np.nan)
    for b in range(batch):
        stream = ids[b * length: (b + 1) * length]
        for a in range(0, length - 1, every):
            x = stream[a: a + every][: length - 1 - a]  # the last character predicts nothing
            char_lm.reset_states(single)
            logits = np.asarray(single.predict_on_batch(x[None]), np.float64)[0]
            log_p = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
            target = stream[a + 1: a + 1 + len(x)]
            expected[b * length + a + 1 + np.arange(len(x))] = (
                log_p[np.arange(len(x)), target] / math.log(2))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    np.testing.assert_allclose(got, expected, atol=1e-5, equal_nan=True)
    # ... and the resets matter: without them the later segments differ.
    stream = char_lm.stream_log2probs(model, ids, batch, window=7)
    assert np.nanmax(np.abs(stream[every + 1: length] - got[every + 1: length])) > 1e-4
