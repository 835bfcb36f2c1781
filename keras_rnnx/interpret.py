"""Reading units on text: code features, unit-feature correlation, gate saturation, matching.

Karpathy, Johnson & Fei-Fei, "Visualizing and understanding recurrent networks" (2015) found
single LSTM cells in a character model of source code that track whether the text is inside a
quote or a comment, how deep it is inside brackets and how far along the line it is, and
measured how often each gate is saturated. LSTMVis (Strobelt et al., 2018) selects the units
that are "on" over a stretch of text and looks for other stretches where the same units are on.
This module computes those quantities from arrays of states or gates over N characters:

- `code_features(source)`: per-character features of Python source, from Python's `tokenize`;
- `unit_correlations(states, feature)`: Pearson r of every unit with one feature;
- `top_units(states, features, k)`: the k units with the largest |r| per feature;
- `saturation(gates, low, high)`: how often each gate unit is left- or right-saturated;
- `match(states, start, stop, threshold, k)`: LSTMVis's match of on-units by Jaccard index.

Arrays are (N, U): N characters (time steps of one stream), U units. It imports NumPy and the
standard library only (no TensorFlow, Keras or Qt), so the viewer can use it.
"""

from __future__ import annotations

import io
import numbers
import tokenize

import numpy as np

__all__ = ["FEATURES", "code_features", "match", "saturation", "top_units", "unit_correlations"]

FEATURES = ("in_string", "in_comment", "bracket_depth", "column", "indent")

_OPENING = frozenset("([{")
_CLOSING = frozenset(")]}")
_PAIRS = {"(": ")", "[": "]", "{": "}"}
# Python >= 3.12 splits f-strings (3.14 also t-strings) into START, MIDDLE and END tokens, with
# the replacement fields tokenized as code in between; Python <= 3.11 gives one STRING token.
# The whole literal, replacement fields included, counts as string on every version, so the
# features do not depend on the interpreter.
_STRING_STARTS = frozenset(
    getattr(tokenize, name) for name in ("FSTRING_START", "TSTRING_START")
    if hasattr(tokenize, name)
)
_STRING_ENDS = frozenset(
    getattr(tokenize, name) for name in ("FSTRING_END", "TSTRING_END") if hasattr(tokenize, name)
)


def code_features(source: str) -> dict[str, np.ndarray]:
    """Per-character features of Python source code, from Python's `tokenize`.

    Returns a dict of (N,) arrays, N = `len(source)`, indexed like `source`:

    - `"in_string"` (int8): 1 on every character of a string-literal token, prefix and quotes
      included (an f-string's replacement fields too), else 0;
    - `"in_comment"` (int8): 1 on every character of a comment token (from `#` to the end of
      the line, newline excluded), else 0;
    - `"bracket_depth"` (int32): brackets `(`, `[`, `{` opened in `source[:i]` minus those
      closed in `source[:i]`, brackets inside strings and comments not counted (so an opening
      bracket itself is at the depth outside it, the character after it one deeper);
    - `"column"` (int32): the index of character i in its line (lines end at `"\\n"`);
    - `"indent"` (int32): the number of leading blanks (spaces and tabs) of the character's line.

    Raises:
        ValueError: `source` is not a str, or the tokenizer rejects it (an unterminated string
            or bracket, inconsistent dedent, a character Python does not allow); the message
            names the line.
    """
    if not isinstance(source, str):
        raise ValueError(
            f"Invalid value for argument `source`: expected a str of Python source, got "
            f"{type(source).__name__}."
        )
    n = len(source)
    lines = _split_at_newlines(source)
    # tokenize reads lines as `readline` returns them; io.StringIO splits at "\n" only (its
    # default newline="\n" translates nothing), the same split as `starts` below.
    starts = np.zeros(len(lines) + 2, dtype=np.int64)
    np.cumsum([len(line) for line in lines], out=starts[1 : len(lines) + 1])
    starts[len(lines) + 1] = n

    def offset(row: int, col: int) -> int:
        return int(starts[min(row - 1, len(lines))] + col)

    in_string = np.zeros(n, dtype=np.int8)
    in_comment = np.zeros(n, dtype=np.int8)
    steps = np.zeros(n + 1, dtype=np.int32)  # +1 after an opening bracket, -1 after a closing
    open_literals: list[int] = []  # offsets of f-/t-string starts not yet closed
    open_brackets: list[tuple[str, int]] = []  # (bracket, line) of those not yet closed
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            kind = token.type
            if kind in _STRING_STARTS:
                open_literals.append(offset(*token.start))
            elif kind in _STRING_ENDS:
                in_string[open_literals.pop() : offset(*token.end)] = 1
            elif open_literals:
                continue  # inside an f-string's replacement field: part of the literal
            elif kind == tokenize.STRING:
                in_string[offset(*token.start) : offset(*token.end)] = 1
            elif kind == tokenize.COMMENT:
                in_comment[offset(*token.start) : offset(*token.end)] = 1
            elif kind == tokenize.OP and token.string in _OPENING:
                steps[offset(*token.start) + 1] += 1
                open_brackets.append((token.string, token.start[0]))
            elif kind == tokenize.OP and token.string in _CLOSING:
                steps[offset(*token.start) + 1] -= 1
                row = token.start[0]
                if not open_brackets:
                    raise _rejected(lines, row, f"unmatched {token.string!r}")
                bracket, opened = open_brackets.pop()
                if _PAIRS[bracket] != token.string:
                    raise _rejected(lines, row, f"{token.string!r} does not close {bracket!r} "
                                                f"of line {opened}")
            elif kind == tokenize.OP and token.string not in tokenize.EXACT_TOKEN_TYPES:
                # Python >= 3.12 tokenizes a stray character such as "$" as an operator.
                raise _rejected(lines, token.start[0], f"unexpected {token.string!r}")
            elif kind == tokenize.ERRORTOKEN and token.string.strip(" \t\f"):
                # Python <= 3.11 reports a stray character (a non-breaking space too) or an
                # unterminated single-quoted string this way instead of raising (3.12 raises).
                raise _rejected(lines, token.start[0], f"unexpected {token.string!r}")
    except tokenize.TokenError as error:
        message, (row, _) = error.args
        if open_brackets:  # "EOF in multi-line statement": name the bracket left open
            bracket, row = open_brackets[-1]
            message = f"{message}: {bracket!r} is never closed"
        raise _rejected(lines, min(row, max(len(lines), 1)), message) from None
    except SyntaxError as error:  # IndentationError, and Python >= 3.12's tokenizer errors
        raise _rejected(lines, error.lineno or 1, error.msg) from None

    index = np.arange(n, dtype=np.int64)
    line_of = np.searchsorted(starts[1 : len(lines) + 1], index, side="right")
    column = (index - starts[line_of]).astype(np.int32)
    blanks = np.array([len(line) - len(line.lstrip(" \t")) for line in lines] or [0], np.int32)
    return {
        "in_string": in_string,
        "in_comment": in_comment,
        "bracket_depth": np.cumsum(steps[:n], dtype=np.int32),
        "column": column,
        "indent": blanks[line_of] if n else np.zeros(0, np.int32),
    }


def _split_at_newlines(source: str) -> list[str]:
    """`source` cut after every "\\n" only (str.splitlines also cuts at "\\r", "\\f", ...)."""
    lines = source.split("\n")
    out = [line + "\n" for line in lines[:-1]]
    return out + ([lines[-1]] if lines[-1] else [])


def _rejected(lines: list[str], row: int, message: str) -> ValueError:
    text = lines[row - 1].rstrip("\r\n") if 1 <= row <= len(lines) else ""
    return ValueError(
        f"code_features: Python's tokenizer rejects `source` at line {row} ({message}): "
        f"{text[:80]!r}"
    )


def _check_finite(array: np.ndarray, name: str) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise ValueError(f"Invalid value for argument `{name}`: it holds NaN or Inf.")


def _states(states, name: str = "states") -> np.ndarray:
    array = np.asarray(states)
    if array.ndim != 2 or array.dtype.kind not in "fiub":
        raise ValueError(
            f"Invalid value for argument `{name}`: expected a 2-D numeric array (N steps, "
            f"U units), got dtype {array.dtype} and shape {array.shape}."
        )
    _check_finite(array, name)
    return array


def _feature(feature, n: int, name: str = "feature") -> np.ndarray:
    array = np.asarray(feature)
    if array.shape != (n,) or array.dtype.kind not in "fiub":
        raise ValueError(
            f"Invalid value for argument `{name}`: expected a numeric array of shape ({n},), "
            f"one value per step of `states`, got dtype {array.dtype} and shape {array.shape}."
        )
    _check_finite(array, name)
    return array


def unit_correlations(states, feature) -> np.ndarray:
    """Pearson's r of every unit with a feature: (U,) float64.

    r_u = Σ_t (s_tu − s̄_u)(f_t − f̄) / sqrt(Σ_t (s_tu − s̄_u)² · Σ_t (f_t − f̄)²)

    for `states` (N, U) and `feature` (N,), computed in float64. r_u is 0 where unit u or the
    feature is constant over the N steps (where r is undefined).
    """
    x = _states(states).astype(np.float64)
    y = _feature(feature, x.shape[0]).astype(np.float64)
    return _pearson(x, y)


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """`unit_correlations` of (N, U) `x` and (N,) `y`, both float64 and already checked."""
    r = np.zeros(x.shape[1], dtype=np.float64)
    if x.shape[0] == 0 or y.max() == y.min():
        return r
    # Constancy is tested exactly (max == min): a centred constant column is not exactly 0 in
    # floating point, and dividing its rounding noise by itself would give a spurious r.
    varying = x.max(axis=0) != x.min(axis=0)
    # r does not change when a column is scaled: scaling each to a largest |value| of 1
    # keeps the products below from overflowing (1e200) or underflowing (1e-200).
    x = x[:, varying] / np.abs(x[:, varying]).max(axis=0)
    y = y / np.abs(y).max()
    xc = x - x.mean(axis=0)
    yc = y - y.mean()
    denominator = np.sqrt((xc * xc).sum(axis=0) * (yc @ yc))
    r[varying] = np.clip((yc @ xc) / denominator, -1.0, 1.0)
    return r


def top_units(states, features, k: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The `k` units with the largest |r| for each feature, best first.

    Args:
        states: (N, U) states (or gates) over N steps.
        features: a dict of name -> (N,) feature, e.g. from `code_features`.
        k: how many units per feature (at most U are returned).

    Returns:
        `{name: (units, r)}`: `units` (min(k, U),) int64 unit indices sorted by |r| descending
        (ties: lower index first) and `r` (min(k, U),) float64 their signed Pearson r (see
        `unit_correlations`).
    """
    x = _states(states)
    k = _positive_int(k, "k")
    if not isinstance(features, dict) or not features:
        raise ValueError(
            f"Invalid value for argument `features`: expected a non-empty dict of name to (N,) "
            f"array, got {type(features).__name__}."
        )
    x64 = x.astype(np.float64)
    out = {}
    for name, feature in features.items():
        y = _feature(feature, x.shape[0], f"features[{name!r}]").astype(np.float64)
        r = _pearson(x64, y)
        order = np.argsort(-np.abs(r), kind="stable")[:k]
        out[name] = (order.astype(np.int64), r[order])
    return out


def saturation(gates, low: float = 0.1, high: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """How often each gate unit is saturated: `(left, right)`, each (U,) float64.

    `left[u]` is the fraction of the entries of unit u (the last axis of `gates`, all others
    pooled) below `low`, `right[u]` the fraction above `high`: Karpathy et al.'s (2015)
    left- and right-saturation of a sigmoid gate (a forget gate right-saturated most of the
    time keeps its cell for long; left-saturated, it forgets at once).
    """
    array = np.asarray(gates)
    if array.ndim < 1 or array.size == 0 or array.dtype.kind not in "fiub":
        raise ValueError(
            f"Invalid value for argument `gates`: expected a non-empty numeric array whose last "
            f"axis is the units, got dtype {array.dtype} and shape {array.shape}."
        )
    _check_finite(array, "gates")
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or np.isnan(value):
            raise ValueError(f"Invalid value for argument `{name}`: expected a number, got "
                             f"{value!r}.")
    if not low < high:
        raise ValueError(
            f"Invalid values for arguments `low` and `high`: expected low < high, got "
            f"low={low!r}, high={high!r}."
        )
    flat = array.reshape(-1, array.shape[-1])
    return (flat < low).mean(axis=0), (flat > high).mean(axis=0)


def match(states, start: int, stop: int, threshold: float, k: int) -> list[tuple[int, int, float]]:
    """LSTMVis's match: the `k` spans whose on-units are most like those of `[start, stop)`.

    The query's *on units* are the units u with `states[t, u] > threshold` at every step t of
    `[start, stop)`. Every other span `[s, s + L)` of the same length L scores the Jaccard
    index |A ∩ Q| / |A ∪ Q| of its on units A with the query's Q. The result holds the best
    spans (highest score first; ties: earlier first) chosen greedily so that none overlaps
    the query or another chosen span, at most `k` of them, as `(start, stop, score)` tuples.
    Spans that share no on unit with the query (score 0) are not matches; a query without
    on units matches nothing (an empty list).
    """
    x = _states(states)
    n = x.shape[0]
    start, stop, k = _index(start, "start"), _index(stop, "stop"), _positive_int(k, "k")
    if not 0 <= start < stop <= n:
        raise ValueError(
            f"Invalid values for arguments `start` and `stop`: expected 0 <= start < stop <= "
            f"{n} (the number of steps), got start={start}, stop={stop}."
        )
    if (isinstance(threshold, bool) or not isinstance(threshold, numbers.Real)
            or not np.isfinite(threshold)):
        raise ValueError(f"Invalid value for argument `threshold`: expected a finite number, "
                         f"got {threshold!r}.")
    length = stop - start
    on = x > threshold
    query = on[start:stop].all(axis=0)
    if not query.any():
        return []
    # on[t] summed over every window of `length` steps: a unit is on in a span when it is on
    # at all `length` of its steps.
    counts = np.zeros((n + 1, x.shape[1]), dtype=np.int64)
    np.cumsum(on, axis=0, out=counts[1:])
    spans = (counts[length:] - counts[:-length]) == length  # (n - length + 1, U)
    both = (spans & query).sum(axis=1)
    union = (spans | query).sum(axis=1)
    score = both / union  # union >= |Q| > 0
    candidates = np.argsort(-score, kind="stable")
    chosen: list[tuple[int, int, float]] = []
    taken = np.zeros(n, dtype=bool)
    taken[start:stop] = True
    for s in candidates.tolist():
        if len(chosen) == k or score[s] <= 0.0:
            break
        if taken[s : s + length].any():
            continue
        taken[s : s + length] = True
        chosen.append((s, s + length, float(score[s])))
    return chosen


def _index(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"Invalid value for argument `{name}`: expected an integer, got "
                         f"{value!r}.")
    return int(value)


def _positive_int(value, name: str) -> int:
    value = _index(value, name)
    if value < 1:
        raise ValueError(f"Invalid value for argument `{name}`: expected a positive integer, "
                         f"got {value}.")
    return value
