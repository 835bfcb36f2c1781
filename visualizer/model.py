"""What the viewer shows, without Qt: the open runs, their bounded history, and the selection.

`RunModel` wraps one `keras_rnnx.runlog.RunReader`; `RunCollection` holds the runs found under
one or more paths (a run directory, or a directory of runs like `tensorboard --logdir`) and what
the user looks at: the training step (or "follow the newest"), the layer, the probe sample, the
runs compared. A reader thread (`visualizer.follower`) calls `RunCollection.poll`; the window's
timer only reads. Every change bumps a `version` counter, which is how the window knows what to
redraw.

Memory stays bounded on long runs: a run is first read with `max_frames=1` (newest frame of each
series only), which tells how many bytes one probe step takes; it is then reopened with as many
kept frames per series as fit `memory_budget`, at most `history`. The reader thins older frames
evenly (see `docs/runlog.md`, "Memory"), so scrubbing still reaches the whole run. The recordings
of a corpus probe (tens of thousands of characters × units each) are bounded the same way, by
half the budget, once the first one tells their size.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from keras_rnnx.runlog import LOG_FILE_NAME, NonFinite, RunLogError, RunReader

__all__ = [
    "DEFAULT_HISTORY",
    "DEFAULT_MEMORY_BUDGET",
    "DEFAULT_STALE_SECONDS",
    "LogValues",
    "RunCollection",
    "RunModel",
    "find_runs",
    "grid_shape",
    "heatmap_image",
    "log_floor",
    "log_values",
    "nice_bound",
    "quantity_levels",
    "uniform_rows",
]

DEFAULT_HISTORY = 256
DEFAULT_MEMORY_BUDGET = 512 << 20
# A run log without an end record that has not grown for this long is taken as crashed. The
# monitor hands batch losses to its writer every 0.05 s and flushes every 0.1 s while training;
# only a long validation pass or a first trace of a large model is quiet for a minute.
DEFAULT_STALE_SECONDS = 120.0
_SCAN_DEPTH = 4
_RESCAN_SECONDS = 2.0

GATE_NAMES = ("i", "f", "z", "o", "r", "u")
STATE_KINDS = ("h", "c")
HEATMAP_KINDS = ("h", "c", "i", "f", "z", "o", "grad_h")
WEIGHT_GRAD_KINDS = ("kernel_grad_norm", "recurrent_kernel_grad_norm", "bias_grad_norm")
# The LSTM variants' weight-gradient frames (the probe's `weight_grad_norm`): one norm per
# peephole vector (an array of one value, keyed by its gate), and FGR's G per column block.
PEEPHOLE_GRAD_KINDS = {
    "i": "input_gate_peephole_weights_grad_norm",
    "f": "forget_gate_peephole_weights_grad_norm",
    "o": "output_gate_peephole_weights_grad_norm",
}
GATE_RECURRENT_GRAD_KIND = "gate_recurrent_kernel_grad_norm"
GATE_RECURRENT_BLOCKS = ("i", "f", "o")


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Run directories at or under `root` (those holding an `events.rnnx`), sorted by path.

    `root` may be a run directory, a directory of runs (searched a few levels deep) or an
    `events.rnnx` file itself.
    """
    root = Path(root)
    if root.is_file():
        return [root.parent]
    if not root.is_dir():
        return []
    found = []
    base_depth = len(root.parts)
    for directory, subdirs, files in os.walk(root):
        if LOG_FILE_NAME in files:
            found.append(Path(directory))
        if len(Path(directory).parts) - base_depth >= _SCAN_DEPTH:
            subdirs.clear()
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    return sorted(found)


def nice_bound(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is >= `value` (1 for 0 or NaN)."""
    if not math.isfinite(value) or value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if value <= step * power * (1 + 1e-9):
            return step * power
    return 10.0 * power


def quantity_levels(
    kind: str, layer_info: dict[str, Any], array: np.ndarray | None = None
) -> tuple[float, float, bool]:
    """Colour levels `(low, high, fixed)` for a heatmap of `kind`.

    Bounded quantities get the bounds of their activation from the run's meta (tanh `[-1, 1]`,
    sigmoid `[0, 1]`), so a colour means the same value at every step; `fixed` is then True.
    Unbounded ones (the cell state `c` of an LSTM, `grad_h`) get a symmetric range rounded up to
    a nice number from the data shown.
    """
    bounds = (layer_info.get("activation_bounds") or {}).get(kind, "unknown")
    if bounds == "unknown":
        if kind == "h":
            bounds = [-1.0, 1.0]
        elif kind in layer_info.get("gates", GATE_NAMES) and kind != "z":
            bounds = [0.0, 1.0]
        elif kind == "z":
            bounds = [-1.0, 1.0]
        else:
            bounds = None
    if isinstance(bounds, (list, tuple)) and len(bounds) == 2:
        low, high = float(bounds[0]), float(bounds[1])
        if math.isfinite(low) and math.isfinite(high) and low < high:
            return low, high, True
    peak = 0.0
    if array is not None and array.size:
        finite = np.abs(array[np.isfinite(array)])
        peak = float(finite.max()) if finite.size else 0.0
    bound = nice_bound(peak)
    return -bound, bound, False


def heatmap_image(frame: np.ndarray, sample: int) -> np.ndarray:
    """The `(units, time)` float32 C-contiguous image of one probe sample of a `(B, T, U)` frame.

    A `(T, U)` frame (no batch axis) is taken as it is; `sample` is clamped to the batch.
    """
    array = np.asarray(frame)
    if array.ndim == 3:
        array = array[min(max(sample, 0), array.shape[0] - 1)]
    elif array.ndim != 2:
        raise ValueError(f"expected a (batch, time, unit) or (time, unit) array, got {array.shape}")
    return np.ascontiguousarray(array.T, dtype=np.float32)


def uniform_rows(
    steps: np.ndarray, rows: np.ndarray, max_rows: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Resamples `rows` (one per training step in `steps`) onto evenly spaced steps.

    Row k of the result is the newest row at or before `grid[k]`, as `frame_at` would give, so
    an image of it can be drawn with a linear step axis although the kept steps are uneven.
    Returns `(grid, resampled)` with at most `max_rows` rows (exact steps when they fit).
    """
    steps = np.asarray(steps, dtype=np.int64)
    rows = np.asarray(rows)
    if steps.size == 0:
        return steps, rows
    first, last = int(steps[0]), int(steps[-1])
    count = min(max_rows, last - first + 1)
    grid = np.unique(np.linspace(first, last, count).round().astype(np.int64))
    index = np.searchsorted(steps, grid, side="right") - 1
    return grid, rows[np.clip(index, 0, len(steps) - 1)]


def grid_shape(count: int, width: float, height: float, aspect: float = 2.0,
               margin: tuple[float, float] = (0.0, 0.0)) -> tuple[int, int]:
    """`(rows, columns)` of a grid of `count` small multiples in a `width` × `height` area.

    Picks the column count that makes the cells' data areas largest when each wants to be
    `aspect` times as wide as it is tall (a heatmap of time × units is wide); `margin` is the
    `(width, height)` each cell spends on its axes and title. Ties go to fewer rows.
    """
    if count <= 0:
        return 0, 0
    width, height = max(float(width), 1.0), max(float(height), 1.0)
    best = None
    for columns in range(1, count + 1):
        rows = -(-count // columns)
        cell_w = max(width / columns - margin[0], 1.0)
        cell_h = max(height / rows - margin[1], 1.0)
        scale = min(cell_w / aspect, cell_h)  # the height a cell of the wanted aspect gets
        key = (round(scale, 6), -rows)
        if best is None or key > best[0]:
            best = (key, (rows, columns))
    return best[1]


def log_floor(arrays: Sequence[np.ndarray], decades_below: int = 1) -> float:
    """Where a log axis draws values of exactly 0: a power of ten `decades_below` decades under
    the smallest positive finite value of `arrays` (1e-30 if none is positive)."""
    smallest = math.inf
    for array in arrays:
        array = np.asarray(array, dtype=np.float64)
        positive = array[np.isfinite(array) & (array > 0)]
        if positive.size:
            smallest = min(smallest, float(positive.min()))
    if not math.isfinite(smallest):
        return 1e-30
    return 10.0 ** (math.floor(math.log10(smallest)) - decades_below)


class LogValues:
    """One series prepared for a log axis: what is drawn, and where the values it cannot draw are.

    Attributes:
        values: the series as given (float64).
        shown: positive finite values, NaN elsewhere (the line is broken there).
        zeros: indices of values exactly 0 (drawn at `floor` with their own marker).
        negative: indices of finite values below 0 (not representable on a log axis).
        nan, posinf, neginf: indices of NaN, +Inf and -Inf values.
        floor: where the zeros are drawn.
    """

    def __init__(self, values: np.ndarray, floor: float) -> None:
        self.values = np.asarray(values, dtype=np.float64).reshape(-1)
        self.floor = float(floor)
        finite = np.isfinite(self.values)
        good = finite & (self.values > 0)
        self.shown = np.where(good, self.values, np.nan)
        self.zeros = np.flatnonzero(self.values == 0)
        self.negative = np.flatnonzero(finite & (self.values < 0))
        self.nan = np.flatnonzero(np.isnan(self.values))
        self.posinf = np.flatnonzero(self.values == np.inf)
        self.neginf = np.flatnonzero(self.values == -np.inf)

    def zeros_text(self) -> str:
        """Where the zeros are, e.g. `"t 0–98"` (empty if none)."""
        return _index_range(self.zeros, "t ")

    def bad_text(self) -> str:
        """What cannot be drawn besides zeros, e.g. `"1 NaN at t 10, 1 +Inf at t 20"`."""
        return ", ".join(f"{found.size} {name}{_index_range(found, ' at t ')}"
                         for name, found in (("NaN", self.nan), ("+Inf", self.posinf),
                                             ("-Inf", self.neginf), ("< 0", self.negative))
                         if found.size)

    @property
    def nonfinite(self) -> np.ndarray:
        """Indices of NaN and ±Inf values, sorted."""
        return np.sort(np.concatenate([self.nan, self.posinf, self.neginf]))


def _index_range(indices: np.ndarray, prefix: str = " at ") -> str:
    if not indices.size:
        return ""
    first, last = int(indices[0]), int(indices[-1])
    if first == last:
        return f"{prefix}{first}"
    contiguous = last - first + 1 == indices.size
    return f"{prefix}{first}–{last}" if contiguous else f"{prefix}{first} … {last}"


def log_values(arrays: Sequence[np.ndarray], decades_below: int = 1) -> list[LogValues]:
    """`LogValues` of each of `arrays` with one floor shared by all of them (see `log_floor`)."""
    floor = log_floor(arrays, decades_below)
    return [LogValues(a, floor) for a in arrays]


class RunModel:
    """One run as the viewer sees it: a `RunReader` with a bounded history, and its status.

    `poll()` reads what was appended (the reader thread calls it); everything else reads, from
    any thread. A run that cannot be read (not a run log, a newer format, deleted while open)
    keeps what was read and says why in `error`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        name: str | None = None,
        history: int = DEFAULT_HISTORY,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        stale_seconds: float = DEFAULT_STALE_SECONDS,
    ) -> None:
        if history < 2:
            raise ValueError(f"Invalid value for argument `history`: expected >= 2, got {history}.")
        self.path = Path(path)
        self.name = name or self.path.name or str(self.path)
        self.history = int(history)
        self.memory_budget = int(memory_budget)
        self.version = 0
        self.error: str | None = None
        self.deleted = False
        self.max_frames: int | None = None
        self.max_corpus_frames: int | None = None
        self.stale_seconds = float(stale_seconds)
        self._reader: RunReader | None = None
        self._lock = threading.Lock()
        self._modified: float | None = None  # the log's mtime when last polled (Unix seconds)
        self._has_data = False
        self._steps_cache: tuple[int, np.ndarray] | None = None  # (version, steps())

    def __repr__(self) -> str:
        return f"RunModel({str(self.path)!r}, status={self.status!r})"

    # ---- reading (reader thread) ----------------------------------------------------------------

    def poll(self, max_records: int | None = 256) -> int:
        """Reads at most `max_records` new records; returns how many. Never raises."""
        if self.error is not None:
            return 0
        with self._lock:
            try:
                self._modified = _mtime(self.path)
                return self._poll(max_records)
            except RunLogError as error:
                self._fail(str(error))
            except (OSError, ValueError, MemoryError) as error:
                self._fail(f"{self.path}: cannot be read ({type(error).__name__}: {error})")
            return 0

    def _poll(self, max_records: int | None) -> int:
        if self._reader is None:
            self._reader = RunReader(self.path, max_frames=1, max_corpus_frames=1)
            self.version += 1
            return max(self._reader.record_count, 1)
        if self.max_frames is None:
            cap = self._history_cap(self._reader)
            if cap is not None:
                corpus_cap = self.max_corpus_frames or _corpus_cap(
                    self._reader, self.history, self.memory_budget)
                reader = RunReader(self.path, max_frames=cap,
                                   max_corpus_frames=corpus_cap or 1)
                self._reader, self.max_frames = reader, cap
                self.max_corpus_frames = corpus_cap
                self.version += 1
                return max(reader.record_count, 1)
        if self.max_corpus_frames is None:
            # Until a corpus frame tells how large a recording is, only the newest is kept;
            # then the run is read again with as many as fit (once).
            corpus_cap = _corpus_cap(self._reader, self.history, self.memory_budget)
            if corpus_cap is not None:
                self.max_corpus_frames = corpus_cap
                if corpus_cap > 1:
                    reader = RunReader(self.path, max_frames=self.max_frames or 1,
                                       max_corpus_frames=corpus_cap)
                    self._reader = reader
                    self.version += 1
                    return max(reader.record_count, 1)
        count = self._reader.refresh(max_records)
        if count:
            self.version += 1
        return count

    def _history_cap(self, scout: RunReader) -> int | None:
        """Frames to keep per series so that the history fits the memory budget, or None while
        nothing (frames, or meta describing them) tells how large a probe step is."""
        per_step = 0
        for layer in scout.layers():
            for kind in scout.kinds(layer):
                newest = scout.frame_at(kind, layer)
                if newest is not None:
                    per_step += newest[1].nbytes
        per_step = max(per_step, _meta_step_bytes(scout.meta))
        if per_step == 0:
            return None  # the scout keeps every scalar and the newest frames meanwhile
        return int(min(self.history, max(2, self.memory_budget // per_step)))

    def _fail(self, message: str) -> None:
        if self._reader is not None and not self._reader.path.exists():
            self.deleted = True
            message = f"{self.path}: the run was deleted or moved while open; showing what was read"
        self.error = message
        self.version += 1

    # ---- status ---------------------------------------------------------------------------------

    @property
    def reader(self) -> RunReader | None:
        return self._reader

    @property
    def status(self) -> str:
        """`"error"`, `"deleted"`, `"waiting"` (no record yet), `"live"`, `"finished"` or
        `"crashed"`.

        A run is finished when its log ends with an end record of status `"ok"` (RNNMonitor
        writes it at `on_train_end`), crashed when the end record says anything else (an
        exception in `fit`, "closed at exit") or when there is no end record and the log has not
        grown for `stale_seconds` (the writing process was killed or hangs), and live otherwise.
        """
        if self.deleted:
            return "deleted"
        if self.error is not None:
            return "error"
        reader = self._reader
        if reader is None or reader.format_version is None:
            return "waiting"
        if reader.finished:
            return "finished" if reader.end_status == "ok" else "crashed"
        if self._modified is not None and time.time() - self._modified > self.stale_seconds:
            return "crashed"
        return "live"

    def status_detail(self) -> str:
        """One sentence on the status, for the run list's tool tip."""
        status = self.status
        reader = self._reader
        if status == "finished":
            return f"{self.name}: finished (the log ends with its end record)"
        if status == "crashed" and reader is not None and reader.finished:
            return f"{self.name}: ended abnormally (end record: {reader.end_status})"
        if status == "crashed":
            quiet = time.time() - (self._modified or time.time())
            return (f"{self.name}: no end record and nothing written for {quiet:.0f} s (more than "
                    f"{self.stale_seconds:g} s): the training process was killed or hangs")
        if status == "live":
            return f"{self.name}: live (being written)"
        message = self.message()
        return message[1] if message else f"{self.name}: {status}"

    def has_data(self) -> bool:
        """Whether the run has logged a frame or a scalar (not only its meta) yet."""
        if not self._has_data:
            reader = self._reader
            self._has_data = reader is not None and bool(reader.layers() or
                                                         reader.scalar_names())
        return self._has_data

    @property
    def start_time(self) -> float | None:
        """When the run log was started (Unix seconds, from its first record), None before."""
        reader = self._reader
        if reader is None or reader.format_version is None:
            return None
        start = reader.meta.get("start_time")
        return float(start) if isinstance(start, (int, float)) else self._modified

    @property
    def meta(self) -> dict[str, Any]:
        reader = self._reader
        return reader.meta if reader is not None else {}

    @property
    def problems(self) -> list[str]:
        reader = self._reader
        return reader.problems if reader is not None else []

    @property
    def record_count(self) -> int:
        reader = self._reader
        return reader.record_count if reader is not None else 0

    def message(self) -> tuple[str, str] | None:
        """`(severity, text)` for the window's message bar, or None when all is well."""
        if self.error is not None:
            return ("error" if not self.deleted else "warning", self.error)
        if self.status == "waiting":
            return (
                "info",
                f"{self.name}: waiting for the run to start ({self.path} has no records yet)",
            )
        problems = self.problems
        if problems:
            plural = "problem" if len(problems) == 1 else "problems"
            return ("warning", f"{self.name}: {len(problems)} {plural} reading the log: "
                    f"{problems[-1]}")
        return None

    # ---- what the panels ask --------------------------------------------------------------------

    def layers(self) -> list[str]:
        """Layers with frames or described in meta, in the monitor's order."""
        described = list((self.meta.get("layers") or {}).keys())
        reader = self._reader
        logged = reader.layers() if reader is not None else []
        return list(dict.fromkeys(described + logged))

    def layer_info(self, layer: str) -> dict[str, Any]:
        info = (self.meta.get("layers") or {}).get(layer)
        return info if isinstance(info, dict) else {}

    def kinds(self, layer: str) -> list[str]:
        reader = self._reader
        return reader.kinds(layer) if reader is not None else []

    def units(self, layer: str) -> int | None:
        units = self.layer_info(layer).get("units")
        if isinstance(units, int):
            return units
        for kind in ("h", "grad_h", "c"):
            frame = self.frame(kind, layer)
            if frame is not None and frame[1].ndim >= 2:
                return int(frame[1].shape[-1])
        return None

    def batch_size(self) -> int:
        shape = (self.meta.get("probe") or {}).get("batch_shape")
        if isinstance(shape, list) and shape and isinstance(shape[0], int):
            return shape[0]
        if isinstance(shape, list) and shape and isinstance(shape[0], list) and shape[0]:
            return int(shape[0][0])
        for layer in self.layers():
            frame = self.frame("h", layer)
            if frame is not None and frame[1].ndim == 3:
                return int(frame[1].shape[0])
        return 1

    def tokens(self, sample: int) -> list[str] | None:
        """Labels of the time axis for probe sample `sample`, if the run has them."""
        tokens = (self.meta.get("probe") or {}).get("tokens")
        if not isinstance(tokens, list) or not tokens:
            return None
        if all(isinstance(t, str) for t in tokens):
            return tokens
        row = tokens[min(max(sample, 0), len(tokens) - 1)]
        return [str(t) for t in row] if isinstance(row, list) else None

    def steps(self) -> np.ndarray:
        """Training steps that have frames (kept ones, corpus-probe frames too), sorted.

        Cached per `version` (which every change of the reader's data bumps); read-only.
        """
        version = self.version  # read first: a refresh racing this call bumps it afterwards
        cached = self._steps_cache
        if cached is not None and cached[0] == version:
            return cached[1]
        reader = self._reader
        if reader is None:
            return np.empty(0, np.int64)
        corpus = [reader.corpus_steps(name) for name in reader.corpora()]
        steps = (np.unique(np.concatenate([reader.steps(), *corpus])) if corpus
                 else reader.steps())
        steps.flags.writeable = False
        self._steps_cache = (version, steps)
        return steps

    def frame(
        self, kind: str, layer: str, step: int | None = None
    ) -> tuple[int, np.ndarray] | None:
        """The newest kept frame at or before `step` (newest of all if None), or None."""
        reader = self._reader
        if reader is None:
            return None
        try:
            return reader.frame_at(kind, layer, step)
        except KeyError:
            return None

    def series(self, kind: str, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """`(steps, stacked frames)` of one small per-step series (e.g. `sigma_max`).

        Frames whose shape differs from the newest one are left out. Empty arrays if none.
        """
        reader = self._reader
        try:
            frames = reader.frames(kind, layer) if reader is not None else []
        except KeyError:
            frames = []
        if not frames:
            return np.empty(0, np.int64), np.empty((0,))
        shape = frames[-1][1].shape
        kept = [(s, a) for s, a in frames if a.shape == shape]
        steps = np.fromiter((s for s, _ in kept), np.int64, len(kept))
        values = np.stack([np.asarray(a, dtype=np.float64) for _, a in kept])
        return steps, values

    def grad_norm(self, layer: str, step: int | None = None) -> tuple[int, np.ndarray] | None:
        """`(step, ‖∂L/∂h_t‖ per t)`: the `grad_norm` frame, or computed from `grad_h`."""
        frame = self.frame("grad_norm", layer, step)
        if frame is not None:
            return frame[0], np.asarray(frame[1], dtype=np.float64).reshape(-1)
        frame = self.frame("grad_h", layer, step)
        if frame is None or frame[1].ndim < 2:
            return None
        grad = np.asarray(frame[1], dtype=np.float64)
        axes = (0, 2) if grad.ndim == 3 else (1,)
        return frame[0], np.sqrt(np.sum(grad * grad, axis=axes))

    def grad_norm_history(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """`(steps, matrix (step, t))` of ‖∂L/∂h_t‖ over training (kept frames)."""
        steps, values = self.series("grad_norm", layer)
        if steps.size or self.frame("grad_h", layer) is None:
            return steps, values.reshape(len(steps), -1) if steps.size else values
        reader = self._reader
        frames = reader.frames("grad_h", layer) if reader is not None else []
        rows = [self.grad_norm(layer, s) for s, _ in frames]
        rows = [r for r in rows if r is not None]
        if not rows:
            return np.empty(0, np.int64), np.empty((0,))
        width = rows[-1][1].shape
        rows = [r for r in rows if r[1].shape == width]
        return np.array([s for s, _ in rows], np.int64), np.stack([v for _, v in rows])

    def block_names(self, layer: str, count: int) -> list[str]:
        """Names of the `count` gate blocks of `layer`'s kernels (`i, f, z, o`; `W` for one)."""
        info = self.layer_info(layer)
        for key in ("blocks", "gates"):
            names = info.get(key)
            if isinstance(names, list) and len(names) == count:
                return [str(n) for n in names]
        if count == 1:
            return ["W"]
        return [f"block {k}" for k in range(count)]

    def sigma_thresholds(self, layer: str, count: int) -> list[float | None]:
        """1/γ per gate block (1 for tanh, 4 for sigmoid blocks), None where unknown."""
        values = self.layer_info(layer).get("sigma_threshold")
        if isinstance(values, list) and len(values) == count:
            return [float(v) if isinstance(v, (int, float)) else None for v in values]
        return [None] * count

    def scalar_names(self, phase: str | None = None) -> list[str]:
        reader = self._reader
        return reader.scalar_names(phase) if reader is not None else []

    def scalars(self, name: str, phase: str) -> tuple[np.ndarray, np.ndarray]:
        reader = self._reader
        try:
            if reader is not None:
                return reader.scalars(name, phase)
        except KeyError:
            pass
        return np.empty(0, np.int64), np.empty(0)

    def dropped_frames(self) -> int:
        """Frames the monitor dropped because its writer fell behind (the latest count)."""
        reader = self._reader
        events = reader.events("dropped_frames") if reader is not None else []
        counts = [e.data.get("count") for e in events]
        counts = [c for c in counts if isinstance(c, (int, float))]
        return int(max(counts)) if counts else 0

    def nonfinite(self) -> list[NonFinite]:
        reader = self._reader
        return reader.nonfinite() if reader is not None else []

    def frame_counts(self) -> tuple[int, int]:
        """`(kept, read)` frames over all series."""
        reader = self._reader
        if reader is None:
            return 0, 0
        kept = read = 0
        for layer in reader.layers():
            for kind in reader.kinds(layer):
                try:
                    kept += len(reader.frames(kind, layer))
                    read += reader.frame_count(kind, layer)
                except KeyError:
                    continue
        return kept, read


def _mtime(path: Path) -> float | None:
    try:
        return (path / LOG_FILE_NAME if path.is_dir() else path).stat().st_mtime
    except OSError:
        return None


def _corpus_cap(reader: RunReader, history: int, budget: int) -> int | None:
    """Corpus-probe recordings to keep per series so that they fit half of `budget` (the
    other half is the probe frames'), or None while no corpus frame has been read."""
    per_step = 0
    for corpus in reader.corpora():
        for layer in reader.corpus_layers(corpus):
            for kind in reader.corpus_kinds(layer, corpus):
                newest = reader.corpus_frame_at(kind, layer, corpus=corpus)
                if newest is not None:
                    per_step += newest[1].nbytes
    if per_step == 0:
        return None
    return int(min(history, max(1, (budget // 2) // per_step)))


def _meta_step_bytes(meta: dict[str, Any]) -> int:
    """Bytes of the bulky frames of one probe step, as far as the meta describes them."""
    layers = meta.get("layers")
    shape = (meta.get("probe") or {}).get("batch_shape")
    if not isinstance(layers, dict) or not isinstance(shape, list) or len(shape) < 2:
        return 0
    if isinstance(shape[0], list):
        shape = shape[0]
    if not all(isinstance(n, int) for n in shape[:2]):
        return 0
    batch, time_steps = shape[0], shape[1]
    total = 0
    for info in layers.values():
        if not isinstance(info, dict) or not isinstance(info.get("units"), int):
            continue
        steps = info.get("timesteps") if isinstance(info.get("timesteps"), int) else time_steps
        fields = len(info.get("states") or ["h"]) + len(info.get("gates") or []) + 1
        total += fields * batch * steps * info["units"] * 4
    return total


class RunCollection:
    """The runs found under `paths`, and the selection: step, layer, sample, compared runs.

    New runs appearing under a directory of runs are picked up by `poll()` (every couple of
    seconds). The primary run's layers, samples and steps drive the selectors; the compared runs
    are drawn beside it (the same layer name, or the same layer position when the names differ).

    While `follow_newest` is on (the default), `follow_newest_run()` makes the newest live run
    the primary one, so a viewer opened on a directory of runs shows the run being trained and
    moves on to the next one when it starts. Choosing a run (`choose`) turns it off.

    Each run keeps one colour index (`color_index`) however it is shown.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        history: int = DEFAULT_HISTORY,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        stale_seconds: float = DEFAULT_STALE_SECONDS,
    ) -> None:
        self.roots = [Path(p) for p in paths]
        if not self.roots:
            raise ValueError("Invalid value for argument `paths`: expected at least one path.")
        self.history = history
        self.memory_budget = memory_budget
        self.stale_seconds = float(stale_seconds)
        self.follow_newest = True
        self.runs: list[RunModel] = []
        self.version = 0  # bumps when runs appear or the selection changes
        self.primary_index = 0
        self.compared: list[int] = []
        self.layer: str | None = None
        self.sample = 0
        self.step: int | None = None  # None: follow the newest step
        self._last_scan = -math.inf
        self._poll_cursor = 0
        self.rescan()

    # ---- runs -----------------------------------------------------------------------------------

    def rescan(self) -> bool:
        """Adds runs that appeared under the roots; returns whether any did."""
        self._last_scan = time.monotonic()
        known = {run.path.resolve() for run in self.runs}
        added = False
        for root in self.roots:
            for path in find_runs(root):
                if path.resolve() in known:
                    continue
                known.add(path.resolve())
                self.runs.append(
                    RunModel(path, name=self._name_for(root, path), history=self.history,
                             memory_budget=self.memory_budget, stale_seconds=self.stale_seconds)
                )
                added = True
        if added:
            self.version += 1
        return added

    def _name_for(self, root: Path, path: Path) -> str:
        base = root.parent if root.is_file() else root
        try:
            relative = path.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            relative = ""
        name = relative if relative not in ("", ".") else (path.name or str(path))
        if len(self.roots) > 1 and relative not in ("", "."):
            name = f"{base.name}/{relative}"
        taken = {run.name for run in self.runs}
        candidate, k = name, 2
        while candidate in taken:
            candidate, k = f"{name} ({k})", k + 1
        return candidate

    def message(self) -> tuple[str, str] | None:
        """A message about the roots themselves (missing, or no run in them yet)."""
        if self.runs:
            return None
        missing = [str(r) for r in self.roots if not r.exists()]
        if missing:
            return ("error", f"{', '.join(missing)}: no such file or directory (checking again "
                    f"every {_RESCAN_SECONDS:g} s)")
        return ("info", f"No run in {', '.join(map(str, self.roots))} yet: waiting for an "
                f"{LOG_FILE_NAME} to appear")

    def poll(self, max_records: int | None = 256) -> int:
        """Reads new records of every run (at most `max_records` each); rescans now and then."""
        if time.monotonic() - self._last_scan > _RESCAN_SECONDS:
            self.rescan()
        total = 0
        runs = list(self.runs)
        # The runs on screen first, so that a large logdir does not delay them.
        shown = self.shown_runs()
        for run in shown + [r for r in runs if r not in shown]:
            total += run.poll(max_records)
        return total

    def load(self, max_records: int | None = None) -> int:
        """Reads everything there is now (synchronously: screenshots and tests)."""
        total = 0
        while True:
            count = self.poll(max_records)
            total += count
            if count == 0:
                return total

    # ---- selection ------------------------------------------------------------------------------

    @property
    def primary(self) -> RunModel | None:
        if not self.runs:
            return None
        return self.runs[min(self.primary_index, len(self.runs) - 1)]

    def shown_runs(self) -> list[RunModel]:
        """The primary run first, then the compared ones."""
        primary = self.primary
        if primary is None:
            return []
        extra = [self.runs[k] for k in self.compared if 0 <= k < len(self.runs)]
        return [primary] + [r for r in extra if r is not primary]

    def set_primary(self, index: int) -> None:
        if not 0 <= index < len(self.runs):
            raise IndexError(f"no run {index}: there are {len(self.runs)}")
        if index != self.primary_index:
            self.primary_index = index
            self.layer = None
            self.version += 1

    def choose(self, index: int) -> None:
        """The user's choice of primary run: it stays until they choose again or follow."""
        self.set_follow_newest(False)
        self.set_primary(index)

    def set_follow_newest(self, on: bool) -> None:
        """Turns following the newest live run on or off.

        Turning it on switches to the newest live run now, or, when no run is live, to the run
        that started last (the one trained last, once a series of runs has finished).
        """
        if bool(on) != self.follow_newest:
            self.follow_newest = bool(on)
            self.version += 1
        if on and not self.follow_newest_run() and self.newest_live_index() is None:
            started = [(run.start_time or 0.0, k) for k, run in enumerate(self.runs)
                       if run.start_time is not None]
            if started:
                self.set_primary(max(started)[1])
                self.follow()

    def newest_live_index(self) -> int | None:
        """The index of the live run that started last, or None if no run is live.

        A run counts once it has logged a frame or a scalar: a run still building its model
        would show empty panels in place of the one that has just finished.
        """
        best = None
        for index, run in enumerate(self.runs):
            if run.status != "live" or not run.has_data():
                continue
            key = (run.start_time or 0.0, index)
            if best is None or key > best[0]:
                best = (key, index)
        return None if best is None else best[1]

    def follow_newest_run(self) -> bool:
        """With `follow_newest` on, makes the newest live run primary (at its newest step).

        Returns whether the primary run changed. While runs are compared, the run shown before
        joins them (nothing disappears from a comparison); otherwise it is simply replaced.
        """
        if not self.follow_newest:
            return False
        index = self.newest_live_index()
        if index is None or index == self.primary_index:
            return False
        before, comparing = self.primary_index, bool(self.compared)
        self.set_primary(index)
        self.set_compared([k for k in self.compared if k != index] +
                          ([before] if comparing else []))
        self.follow()
        return True

    def color_index(self, run: RunModel) -> int:
        """The run's colour: its position among the open runs, whichever runs are shown."""
        for index, candidate in enumerate(self.runs):
            if candidate is run:
                return index
        return 0

    def statuses(self) -> tuple[str, ...]:
        """The status of every open run (the run list redraws when this changes)."""
        return tuple(run.status for run in self.runs)

    def set_compared(self, indices: Sequence[int]) -> None:
        indices = sorted({int(k) for k in indices if 0 <= int(k) < len(self.runs)})
        if indices != self.compared:
            self.compared = indices
            self.version += 1

    def current_layer(self) -> str | None:
        """The selected layer of the primary run (its first layer until one is chosen)."""
        primary = self.primary
        layers = primary.layers() if primary is not None else []
        if self.layer in layers:
            return self.layer
        return layers[0] if layers else None

    def layer_for(self, run: RunModel) -> str | None:
        """The layer of `run` shown beside the selected one: same name, else same position."""
        layer = self.current_layer()
        layers = run.layers()
        if not layers:
            return None
        if layer in layers:
            return layer
        primary = self.primary
        position = primary.layers().index(layer) if primary and layer in primary.layers() else 0
        return layers[min(position, len(layers) - 1)]

    def select_layer(self, layer: str) -> None:
        if layer != self.layer:
            self.layer = layer
            self.version += 1

    def select_sample(self, sample: int) -> None:
        primary = self.primary
        top = primary.batch_size() - 1 if primary is not None else 0
        sample = min(max(int(sample), 0), max(top, 0))
        if sample != self.sample:
            self.sample = sample
            self.version += 1

    @property
    def following(self) -> bool:
        return self.step is None

    def follow(self) -> None:
        """Follows the newest step as the run grows."""
        if self.step is not None:
            self.step = None
            self.version += 1

    def scrub(self, step: int) -> None:
        """Shows `step` (the newest frame at or before it) and stops following."""
        if step != self.step:
            self.step = int(step)
            self.version += 1

    def steps(self) -> np.ndarray:
        primary = self.primary
        return primary.steps() if primary is not None else np.empty(0, np.int64)

    def current_step(self) -> int | None:
        """The step on screen: the scrubbed one, or the newest frame's while following."""
        if self.step is not None:
            return self.step
        steps = self.steps()
        return int(steps[-1]) if steps.size else None

    def data_version(self) -> tuple:
        """Changes whenever anything on screen may have to change."""
        return (self.version, self.runs_version())

    def runs_version(self) -> tuple:
        """Changes when the runs shown, their layers or their data change (not the step)."""
        runs = self.shown_runs()
        return (tuple((id(r), r.version) for r in runs), tuple(self.layer_for(r) for r in runs))
