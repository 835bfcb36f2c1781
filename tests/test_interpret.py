"""`keras_rnnx.interpret` against independent references.

`code_features` is checked on real standard-library files against a hand-written
character scanner (quotes, triple quotes, escapes, prefixes, comments, brackets) that shares no
code with it and does not use `tokenize`, and against the tokens Python's `tokenize` gives;
`unit_correlations` against `np.corrcoef`; `saturation` against counted fractions; `match`
against a brute-force loop over spans and sets.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import sysconfig
import tokenize
from pathlib import Path

import numpy as np
import pytest

from keras_rnnx import interpret
from keras_rnnx.interpret import code_features, match, saturation, top_units, unit_correlations

STDLIB = Path(sysconfig.get_paths()["stdlib"])
PREFIXES = {"r", "u", "b", "br", "rb", "f", "fr", "rf"}


def scanned_features(source: str) -> dict[str, np.ndarray]:
    """The five features by a character scanner written from the language reference."""
    n = len(source)
    in_string = np.zeros(n, np.int8)
    in_comment = np.zeros(n, np.int8)
    depth = np.zeros(n, np.int32)
    level = 0
    i = 0
    while i < n:
        ch = source[i]
        depth[i] = level
        if ch == "#":
            end = source.find("\n", i)
            end = n if end < 0 else end
            in_comment[i:end] = 1
            depth[i:end] = level
            i = end
            continue
        if ch in "'\"":
            begin = i
            while begin > 0 and (source[begin - 1].isalnum() or source[begin - 1] == "_"):
                begin -= 1
            if source[begin:i].lower() not in PREFIXES:
                begin = i
            quote = source[i : i + 3] if source[i : i + 3] == ch * 3 else ch
            j = i + len(quote)
            while not source.startswith(quote, j):
                j += 2 if source[j] == "\\" else 1
            j += len(quote)
            in_string[begin:j] = 1
            depth[i:j] = level
            i = j
            continue
        if ch in "([{":
            level += 1
        elif ch in ")]}":
            level -= 1
        i += 1
    column = np.zeros(n, np.int32)
    indent = np.zeros(n, np.int32)
    i = 0
    for line in source.split("\n"):
        blanks = len(line) - len(line.lstrip(" \t"))
        for col in range(len(line) + 1):
            if i + col < n:
                column[i + col] = col
                indent[i + col] = blanks
        i += len(line) + 1
    return {"in_string": in_string, "in_comment": in_comment, "bracket_depth": depth,
            "column": column, "indent": indent}


def stdlib_files(count: int) -> list[Path]:
    """`count` standard-library files spread over the sorted list, plus some with tricky text."""
    files = sorted(p for p in STDLIB.glob("*.py"))
    step = max(1, len(files) // count)
    chosen = files[::step][:count]
    tricky = ["tokenize.py", "string.py", "textwrap.py", "shlex.py", "json/decoder.py",
              "re/_parser.py", "email/_header_value_parser.py"]
    return chosen + [STDLIB / name for name in tricky if (STDLIB / name).exists()]


@pytest.mark.parametrize("path", stdlib_files(24), ids=lambda p: str(p.relative_to(STDLIB)))
def test_code_features_agree_with_a_scanner_and_tokenize_on_stdlib_files(path):
    source = path.read_text(encoding="utf-8")
    features = code_features(source)
    expected = scanned_features(source)
    assert set(features) == set(interpret.FEATURES)
    for name in interpret.FEATURES:
        assert features[name].shape == (len(source),), name
        mismatch = np.flatnonzero(features[name] != expected[name])
        assert mismatch.size == 0, (name, mismatch[:5], source[mismatch[0] - 20: mismatch[0] + 20])

    # Tokenize's own view: each string and comment token is exactly a run of 1s (or part of
    # one, for adjacent tokens such as 'a''b'), and nothing else is.
    lines = source.splitlines(keepends=True)
    starts = np.concatenate([[0], np.cumsum([len(line) for line in lines])])
    marked = {"in_string": np.zeros(len(source), bool), "in_comment": np.zeros(len(source), bool)}
    # Python >= 3.12 gives an f-string as FSTRING_START ... FSTRING_END: the whole literal is
    # one string, replacement fields included.
    starts_of = {getattr(tokenize, n) for n in ("FSTRING_START", "TSTRING_START")
                 if hasattr(tokenize, n)}
    ends_of = {getattr(tokenize, n) for n in ("FSTRING_END", "TSTRING_END")
               if hasattr(tokenize, n)}
    literal_starts: list[int] = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        a = starts[token.start[0] - 1] + token.start[1]
        b = starts[token.end[0] - 1] + token.end[1]
        if token.type in starts_of:
            literal_starts.append(a)
            continue
        if token.type in ends_of:
            marked["in_string"][literal_starts.pop():b] = True
            continue
        if literal_starts:
            continue
        name = {tokenize.STRING: "in_string", tokenize.COMMENT: "in_comment"}.get(token.type)
        if name is not None:
            assert source[a:b] == token.string
            marked[name][a:b] = True
    for name, mask in marked.items():
        np.testing.assert_array_equal(features[name].astype(bool), mask)


def test_code_features_of_a_hand_checked_snippet():
    source = 'x = f(a, "b(")  # c(\nif [1,\n    {2: 3}]:\n\tpass\n'
    f = code_features(source)
    # x, space, =, space, f, (, a, comma, space, "b(", ), 2 spaces, "# c(", newline: 21 characters
    string = [0] * 9 + [1] * 4 + [0] * 8
    comment = [0] * 16 + [1] * 4 + [0]
    depth = [0] * 6 + [1] * 8 + [0] * 7  # the "(" inside the string does not count
    assert f["in_string"][:21].tolist() == string
    assert f["in_comment"][:21].tolist() == comment
    assert f["bracket_depth"][:21].tolist() == depth
    second = source.index("if")
    # i f _ [ 1 , newline
    assert f["bracket_depth"][second:second + 7].tolist() == [0, 0, 0, 0, 1, 1, 1]
    third = source.index("    {")
    # 4 blanks, {, 2, :, space, 3, }, ], :, newline
    assert f["bracket_depth"][third:third + 13].tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 1, 0, 0]
    assert f["column"][third:third + 5].tolist() == [0, 1, 2, 3, 4]
    assert set(f["indent"][third:third + 12].tolist()) == {4}
    fourth = source.index("\tpass")
    assert f["indent"][fourth] == 1 and f["column"][fourth + 1] == 1
    assert f["indent"][:21].tolist() == [0] * 21


def test_code_features_mark_prefixes_triple_quotes_and_escapes():
    source = 'a = rb"\\"(" + """x\n)"""\nb = 1\n'
    f = code_features(source)
    first = source.index('rb"')
    end = source.index(' +')
    assert f["in_string"][first:end].all() and not f["in_string"][:first].any()
    triple = source.index('"""')
    close = source.index('"""', triple + 3) + 3
    assert f["in_string"][triple:close].all() and f["in_string"][close] == 0
    assert f["bracket_depth"].max() == 0  # every bracket here is inside a string
    assert f["column"][source.index(")")] == 0


def test_code_features_of_empty_text_and_text_without_a_final_newline():
    empty = code_features("")
    assert all(a.shape == (0,) for a in empty.values())
    f = code_features("(a)")
    assert f["bracket_depth"].tolist() == [0, 1, 1] and f["column"].tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "source, line",
    [
        ('x = 1\ny = """open\n', 2),
        ("x = 1\nf(a,\n", 2),
        ("x = [1,\n  2\n", 1),
        ("x = 1\ny = 2)\n", 2),
        ("x = (1,\n  2]\n", 2),
        ("x = 1\ny = \xa0 1\n", 2),
        ("if x:\n        a\n    b\n", 3),
        ("x = 1\ny = $\n", 2),
        ("x = 1\ny = 'open\n", 2),
    ],
)
def test_code_features_name_the_line_the_tokenizer_rejects(source, line):
    with pytest.raises(ValueError, match=rf"line {line}\b"):
        code_features(source)


def test_code_features_refuse_bytes():
    with pytest.raises(ValueError, match="`source`"):
        code_features(b"x = 1\n")


# ---- correlations ----------------------------------------------------------------------------


def test_unit_correlations_equal_np_corrcoef_and_are_zero_for_constants():
    rng = np.random.default_rng(0)
    feature = rng.integers(0, 5, size=400).astype(np.int32)
    states = np.tanh(rng.standard_normal((400, 6)) + 0.5 * feature[:, None] * np.arange(6))
    states[:, 4] = 0.25  # a constant unit
    states = states.astype(np.float32)
    r = unit_correlations(states, feature)
    for u in (0, 1, 2, 3, 5):
        assert r[u] == pytest.approx(np.corrcoef(states[:, u].astype(np.float64), feature)[0, 1],
                                     abs=1e-12)
    assert r[4] == 0.0 and r.shape == (6,) and r.dtype == np.float64
    assert np.all(unit_correlations(states, np.full(400, 3)) == 0.0)


def test_top_units_rank_by_absolute_r():
    rng = np.random.default_rng(1)
    feature = rng.standard_normal(300)
    noise = rng.standard_normal((300, 5))
    states = np.stack([noise[:, 0], -feature + 0.1 * noise[:, 1], noise[:, 2],
                       feature + 0.5 * noise[:, 3], noise[:, 4]], axis=1)
    ranked = top_units(states, {"f": feature, "g": noise[:, 2]}, 2)
    units, r = ranked["f"]
    assert units.tolist() == [1, 3]
    expected = [np.corrcoef(states[:, u], feature)[0, 1] for u in (1, 3)]
    np.testing.assert_allclose(r, expected, atol=1e-12)
    assert ranked["g"][0][0] == 2 and ranked["g"][1][0] == pytest.approx(1.0)
    assert len(top_units(states, {"f": feature}, 50)["f"][0]) == 5


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: unit_correlations(np.zeros(5), np.zeros(5)), "`states`"),
        (lambda: unit_correlations(np.zeros((5, 2)), np.zeros(4)), "`feature`"),
        (lambda: unit_correlations(np.full((5, 2), np.nan), np.zeros(5)), "NaN"),
        (lambda: top_units(np.zeros((5, 2)), {"a": np.zeros(5)}, 0), "`k`"),
        (lambda: top_units(np.zeros((5, 2)), {"a": np.zeros(3)}, 1), "features['a']"),
        (lambda: top_units(np.zeros((5, 2)), [np.zeros(5)], 1), "`features`"),
        (lambda: saturation(np.zeros((5, 2)), low=0.9, high=0.1), "low < high"),
        (lambda: saturation(np.array([]), 0.1, 0.9), "`gates`"),
        (lambda: match(np.zeros((5, 2)), 3, 3, 0.5, 1), "`start` and `stop`"),
        (lambda: match(np.zeros((5, 2)), 0, 6, 0.5, 1), "`start` and `stop`"),
        (lambda: match(np.zeros((5, 2)), 0.5, 2, 0.5, 1), "`start`"),
        (lambda: match(np.zeros((5, 2)), 0, 2, "high", 1), "`threshold`"),
    ],
)
def test_bad_arguments_are_named(call, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        call()


# ---- saturation ------------------------------------------------------------------------------


def test_saturation_equals_counted_fractions():
    rng = np.random.default_rng(2)
    gates = rng.random((3, 50, 4)) ** np.array([0.1, 1.0, 5.0, 1.0])
    gates[0, 0, 3] = 0.1  # on the threshold: neither side
    left, right = saturation(gates, low=0.1, high=0.9)
    for u in range(4):
        values = gates[..., u].ravel().tolist()
        assert left[u] == sum(v < 0.1 for v in values) / len(values)
        assert right[u] == sum(v > 0.9 for v in values) / len(values)
    assert right[0] > 0.5 and left[2] > 0.5


# ---- match -----------------------------------------------------------------------------------


def brute_force_match(states, start, stop, threshold, k):
    length = stop - start
    on = [{u for u in range(states.shape[1]) if (states[s:s + length, u] > threshold).all()}
          for s in range(len(states) - length + 1)]
    query = on[start]
    if not query:
        return []
    scores = [len(a & query) / len(a | query) for a in on]
    chosen, busy = [], set(range(start, stop))
    for s in sorted(range(len(scores)), key=lambda s: (-scores[s], s)):
        if len(chosen) == k or scores[s] == 0:
            break
        if busy & set(range(s, s + length)):
            continue
        busy |= set(range(s, s + length))
        chosen.append((s, s + length, scores[s]))
    return chosen


@pytest.mark.parametrize("seed", range(6))
def test_match_equals_a_brute_force_search(seed):
    rng = np.random.default_rng(seed)
    states = np.tanh(rng.standard_normal((120, 7)) + np.sin(np.arange(120) / 6)[:, None] * 2)
    start = int(rng.integers(0, 110))
    stop = start + int(rng.integers(1, 6))
    got = match(states, start, stop, 0.2, 5)
    expected = brute_force_match(states, start, stop, 0.2, 5)
    assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in expected]
    np.testing.assert_allclose([s for *_, s in got], [s for *_, s in expected])


def test_match_finds_the_planted_pattern():
    states = np.full((60, 5), -1.0)
    states[10:14, [0, 2]] = 1.0
    states[40:44, [0, 2]] = 1.0
    states[25:29, [0, 2, 4]] = 1.0
    got = match(states, 10, 14, 0.5, 3)
    assert got[0] == (40, 44, 1.0)
    assert got[1] == (25, 29, pytest.approx(2 / 3))
    assert match(np.full((10, 3), -1.0), 0, 2, 0.5, 3) == []


def test_importing_interpret_imports_no_tensorflow_keras_or_qt():
    code = ("import keras_rnnx.interpret, sys; "
            "bad = [m for m in ('tensorflow', 'keras', 'PyQt6', 'pyqtgraph') if m in sys.modules]; "
            "assert not bad, bad")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
