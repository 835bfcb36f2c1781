"""What the Text panel shows, without Qt: a corpus probe's text laid out in cells, its colours,
and the analysis jobs (feature ranking, span matching) that run off the GUI thread.

A corpus probe (`keras_rnnx.corpus_probe`, records `corpus` / `corpus_frame` of the run log)
holds a text of N characters and, per recorded step, layer and kind, an (N, U) array: row i is
the state (or gate) after character i. The panel draws the text in a monospace grid of cells
and paints the background of each character's cells with the selected unit's value there.

- `layout_text(text)` places every character in a cell grid with the text's own line breaks
  (a tab runs to the next multiple of 8; the newline itself is a cell at the end of its line,
  so every step of the stream can be seen and hovered); `layout_tokens(tokens)` places the
  tokens of a word-level run (meta `"tokens"`, one per row) one after the other, wrapped.
- `visible_items(layout, ...)` is the (lines, columns) grid of item indices on screen; with
  `lut_indices` and a 256-entry lookup table it becomes the background image. Only what is on
  screen is coloured, so scrolling and switching units cost the same for any corpus length.
- `feature_ranking` and `span_match` are what the panel's worker thread computes with
  `keras_rnnx.interpret` (NumPy only).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from keras_rnnx import interpret

__all__ = [
    "CorpusView",
    "TAB_WIDTH",
    "TextLayout",
    "context",
    "corpus_view",
    "feature_ranking",
    "layout_for",
    "layout_text",
    "layout_tokens",
    "lut_indices",
    "span_match",
    "text_levels",
    "visible_items",
]

TAB_WIDTH = 8
TOKEN_WRAP = 100  # cells per line of a word-level run's tokens
# unit_correlations works in float64 on (N, U): a block of units at a time keeps the temporary
# arrays of a 50,000-character corpus near 25 MB instead of 200 MB per copy.
_UNIT_BLOCK = 64


@dataclass(frozen=True)
class TextLayout:
    """Where each item (a character, or a token) of a corpus sits in a monospace cell grid.

    Attributes:
        count: N, the number of items (one per row of the corpus frames).
        row, col, width: (N,) int32: the display line of item i, its first cell and how many
            cells it covers.
        lines: the display string of every line, one character per cell.
        cell_start: (L + 1,) int64: the cells of line k are `cell_item[cell_start[k]:
            cell_start[k + 1]]`, left to right.
        cell_col, cell_item: (C,) int32: each cell's column and its item (-1 for a cell that
            belongs to no item, e.g. the blank between two tokens).
        columns: the width of the widest line, in cells.
        tokens: whether the items are tokens (a word-level run) rather than characters.
    """

    count: int
    row: np.ndarray
    col: np.ndarray
    width: np.ndarray
    lines: list[str]
    cell_start: np.ndarray
    cell_col: np.ndarray
    cell_item: np.ndarray
    columns: int
    tokens: bool = False

    @property
    def line_count(self) -> int:
        return len(self.lines)

    def line_span(self, item: int) -> tuple[int, int]:
        """`(line, first column)` of item `item`."""
        return int(self.row[item]), int(self.col[item])


# Control and format characters have no glyph of one cell: a dot stands for each.
_CONTROLS = {code: "·" for code in [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x2028, 0x2029,
                                     *range(0x200B, 0x2010), 0xFEFF] if code not in (9, 10)}


def _shown(char: str) -> str:
    """The glyph drawn for one character: blanks for whitespace, a dot for controls."""
    if char in " \t\n":
        return " "
    if ord(char) in _CONTROLS or unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn"):
        return "·"
    return char


def _finish(count: int, rows, cols, widths, lines: list[str], line_cells: np.ndarray,
            tokens: bool, cell_item: np.ndarray | None = None) -> TextLayout:
    sizes = np.asarray(line_cells, np.int64)
    cell_start = np.zeros(len(sizes) + 1, np.int64)
    np.cumsum(sizes, out=cell_start[1:])
    widths = np.asarray(widths, np.int64)
    if cell_item is None:  # items cover their lines' cells left to right, one after another
        cell_item = np.repeat(np.arange(count, dtype=np.int32), widths)
    cell_col = (np.arange(cell_start[-1], dtype=np.int64)
                - np.repeat(cell_start[:-1], sizes)).astype(np.int32)
    return TextLayout(
        count=count, row=np.asarray(rows, np.int32), col=np.asarray(cols, np.int32),
        width=widths.astype(np.int32), lines=lines, cell_start=cell_start, cell_col=cell_col,
        cell_item=np.asarray(cell_item, np.int32),
        columns=int(sizes.max()) if sizes.size else 0, tokens=tokens,
    )


def layout_text(text: str) -> TextLayout:
    """Cells for every character of `text`, with its own line breaks (no wrapping).

    A tab covers the cells up to the next multiple of `TAB_WIDTH` (at least one); the newline
    ending a line is one blank cell after its last character; control and format characters
    are drawn as `·`. Every character has at least one cell. Vectorized: 50,000 characters
    take milliseconds (only lines holding a tab are walked in Python).
    """
    if not isinstance(text, str):
        raise ValueError(f"Invalid value for argument `text`: expected a str, got "
                         f"{type(text).__name__}.")
    n = len(text)
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), np.uint32)
    newline = codes == 10
    row = np.zeros(n, np.int64)
    np.cumsum(newline[:-1], out=row[1:])
    line_first = np.flatnonzero(np.concatenate([[True], newline[:-1]])) if n else \
        np.zeros(0, np.int64)
    count = int(row[-1]) + 1 if n else 0
    col = np.arange(n, dtype=np.int64) - (line_first[row] if n else 0)
    width = np.ones(n, np.int64)
    tabs = np.flatnonzero(codes == 9)
    for line in np.unique(row[tabs]).tolist():
        begin = int(line_first[line])
        end = int(line_first[line + 1]) if line + 1 < count else n
        column = 0
        for i in range(begin, end):
            col[i] = column
            width[i] = TAB_WIDTH - column % TAB_WIDTH if codes[i] == 9 else 1
            column += int(width[i])
    pieces = text.translate(_CONTROLS).split("\n")[:count]
    # expandtabs pads to the same tab stops as the widths above; the newline is one blank.
    lines = [piece.expandtabs(TAB_WIDTH) + (" " if k < count - 1 or text.endswith("\n") else "")
             for k, piece in enumerate(pieces)]
    line_cells = np.bincount(row, weights=width, minlength=count).astype(np.int64) if n else \
        np.zeros(0, np.int64)
    return _finish(n, row, col, width, lines, line_cells, tokens=False)


def layout_tokens(tokens: Sequence[str], wrap: int = TOKEN_WRAP) -> TextLayout:
    """Cells for the tokens of a word-level run, one blank apart, wrapped at `wrap` cells.

    A token never splits across lines (one longer than `wrap` gets a line of its own); a token
    that is `"\\n"` (or ends with one) ends its line.
    """
    if isinstance(wrap, bool) or not isinstance(wrap, int) or wrap < 1:
        raise ValueError(f"Invalid value for argument `wrap`: expected a positive integer, got "
                         f"{wrap!r}.")
    rows, cols, widths = [], [], []
    lines: list[list[str]] = [[]]
    cell_items: list[list[int]] = [[]]
    for index, token in enumerate(tokens):
        token = str(token)
        breaks = token.endswith("\n")
        glyphs = [_shown(c) for c in token.rstrip("\n")] or ["↵" if breaks else "·"]
        line = lines[-1]
        if line and len(line) + 1 + len(glyphs) > wrap:
            lines.append([])
            cell_items.append([])
        line, items = lines[-1], cell_items[-1]
        if line:
            line.append(" ")
            items.append(-1)
        rows.append(len(lines) - 1)
        cols.append(len(line))
        widths.append(len(glyphs))
        line.extend(glyphs)
        items.extend([index] * len(glyphs))
        if breaks:
            lines.append([])
            cell_items.append([])
    if not lines[-1] and len(lines) > 1:
        lines.pop()
        cell_items.pop()
    cell_item = np.fromiter((i for items in cell_items for i in items), np.int32,
                            sum(map(len, cell_items)))
    return _finish(len(tokens), rows, cols, widths, ["".join(line) for line in lines],
                   np.array([len(items) for items in cell_items], np.int64), tokens=True,
                   cell_item=cell_item)


def layout_for(text: str, meta: dict[str, Any]) -> TextLayout:
    """The layout of a corpus: token by token when its meta has `"tokens"`, one string per
    character of `text` (a word-level run's rows), else character by character."""
    tokens = meta.get("tokens") if isinstance(meta, dict) else None
    if isinstance(tokens, list) and len(tokens) == len(text) and \
            all(isinstance(t, str) for t in tokens):
        return layout_tokens(tokens)
    return layout_text(text)


def visible_items(layout: TextLayout, first_line: int, lines: int, first_col: int,
                  columns: int) -> np.ndarray:
    """The (lines, columns) int32 grid of the items shown from line `first_line` and column
    `first_col`: the item index in each cell, -1 where no item is (past a line's end)."""
    lines, columns = max(int(lines), 0), max(int(columns), 0)
    grid = np.full((lines, columns), -1, np.int32)
    first_line = max(int(first_line), 0)
    last_line = min(first_line + lines, layout.line_count)
    if last_line <= first_line or columns == 0:
        return grid
    begin, end = int(layout.cell_start[first_line]), int(layout.cell_start[last_line])
    cols = layout.cell_col[begin:end]
    keep = (cols >= first_col) & (cols < first_col + columns)
    sizes = np.diff(layout.cell_start[first_line:last_line + 1])
    rows = np.repeat(np.arange(last_line - first_line, dtype=np.int64), sizes)
    grid[rows[keep], cols[keep] - first_col] = layout.cell_item[begin:end][keep]
    return grid


def lut_indices(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Indices into a 256-entry lookup table: `floor((v − low) / (high − low) · 256)` clipped
    to 0..255, so `low` is entry 0, `high` entry 255, and each entry covers 1/256 of the range
    (pyqtgraph's `ImageItem` with `levels=(low, high)` maps the same way). NaN gives 0; the
    panel marks NaN and Inf cells on their own."""
    values = np.asarray(values, dtype=np.float32)
    scale = np.float32(256.0 / (high - low)) if high > low else np.float32(0.0)
    scaled = (values - np.float32(low)) * scale
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def text_levels(kind: str, layer_info: dict[str, Any], array: np.ndarray | None
                ) -> tuple[float, float, bool]:
    """Colour levels `(low, high, squash)` of the corpus frames of `kind`.

    Bounded kinds take their activation's bounds from the run's meta (tanh `[-1, 1]` for h
    and z, sigmoid `[0, 1]` for gates), as the heatmaps do. The cell state c of an LSTM has
    none (one unit counting brackets may reach hundreds while the rest stay within ±2), so, as
    in Karpathy et al. (2015, Fig. 2), the colour shows tanh(c) on `[-1, 1]`: `squash` is
    True. A kind of unknown range gets `±nice_bound(max |value|)` over the whole (N, U) frame.
    """
    from visualizer.model import nice_bound, quantity_levels

    low, high, fixed = quantity_levels(kind, layer_info, None)
    if fixed:
        return low, high, False
    if kind == "c":
        return -1.0, 1.0, True
    peak = 0.0
    if array is not None and array.size:
        finite = np.where(np.isfinite(array), array, 0).astype(np.float32)
        peak = float(np.abs(finite).max())
    bound = nice_bound(peak)
    return -bound, bound, False


# ---- the corpus of a run ------------------------------------------------------------------------


@dataclass
class CorpusView:
    """What a run holds of its corpus probe: the text, its layers and kinds, or why not."""

    name: str | None
    text: str | None
    meta: dict
    layers: list[str]
    message: str | None  # why nothing can be drawn, or None

    def kinds(self, reader, layer: str) -> list[str]:
        try:
            return reader.corpus_kinds(layer, self.name) if self.name else []
        except KeyError:
            return []


def corpus_view(reader, problems: Sequence[str] = ()) -> CorpusView:
    """The corpus probe of a run (`RunReader` or None) and, when it cannot be shown, a message
    naming what is missing or which record was bad (from the reader's `problems`)."""
    bad = [p for p in problems if "corpus" in p]
    if reader is None:
        return CorpusView(None, None, {}, [], "Waiting for the run to start.")
    names = reader.corpora()
    if not names:
        if bad:
            return CorpusView(None, None, {}, [], f"The run's corpus probe could not be read: "
                              f"{bad[-1]}")
        return CorpusView(None, None, {}, [], (
            "This run has no corpus probe. Record one with "
            "RNNMonitor(corpus=CorpusProbe(text, inputs)) (see examples/char_lm.py --monitor) "
            "to see each unit over a long text here."))
    name = "corpus" if "corpus" in names else names[0]
    layers = reader.corpus_layers(name)
    try:
        corpus = reader.corpus(name)
    except KeyError:
        why = f": {bad[-1]}" if bad else ""
        return CorpusView(name, None, {}, layers,
                          f"Corpus {name!r} has frames but no readable text{why}")
    if not layers:
        why = f" (skipped: {bad[-1]})" if bad else ""
        return CorpusView(name, corpus.text, dict(corpus.meta), [], (
            f"Corpus {name!r} ({len(corpus.text):,} characters) has no recording yet: the "
            f"monitor records it at the end of training and every corpus_every steps{why}."))
    return CorpusView(name, corpus.text, dict(corpus.meta), layers, None)


# ---- analysis jobs (the panel's worker thread) --------------------------------------------------


def feature_ranking(states: np.ndarray, features: dict[str, np.ndarray]
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Units ranked by |r| with each feature: `{name: (units, r)}`, every unit, best first.

    r is `interpret.unit_correlations(states, feature)`, computed a block of units at a time
    (each unit's r depends on its own column only); ties keep the lower unit first, as
    `interpret.top_units` orders them.
    """
    states = np.asarray(states)
    out = {}
    for name, feature in features.items():
        r = np.concatenate([
            interpret.unit_correlations(states[:, k:k + _UNIT_BLOCK], feature)
            for k in range(0, states.shape[1], _UNIT_BLOCK)
        ]) if states.shape[1] else np.zeros(0)
        order = np.argsort(-np.abs(r), kind="stable")
        out[name] = (order.astype(np.int64), r[order])
    return out


def span_match(states: np.ndarray, start: int, stop: int, threshold: float, k: int
               ) -> tuple[np.ndarray, list[tuple[int, int, float]]]:
    """LSTMVis's match of the span `[start, stop)`: `(on units, matches)`.

    The on units are those above `threshold` at every step of the span; the matches are
    `interpret.match(states, start, stop, threshold, k)`.
    """
    states = np.asarray(states)
    on = np.flatnonzero((states[start:stop] > threshold).all(axis=0))
    return on, interpret.match(states, start, stop, threshold, k)


def context(text: str, layout: TextLayout, start: int, stop: int, around: int = 20
            ) -> tuple[str, str, str]:
    """`(before, span, after)` of items `[start, stop)` with `around` items either side, as one
    line of text (line breaks shown as ↵), for the list of matches."""
    def piece(a: int, b: int) -> str:
        a, b = max(a, 0), min(b, layout.count)
        if layout.tokens:
            return " ".join(_token_text(layout, i) for i in range(a, b))
        return text[a:b].replace("\n", "↵").replace("\t", "→")

    return piece(start - around, start), piece(start, stop), piece(stop, stop + around)


def _token_text(layout: TextLayout, item: int) -> str:
    row, col = layout.line_span(item)
    return layout.lines[row][col:col + int(layout.width[item])]

