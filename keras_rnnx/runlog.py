"""The run log: an append-only, checksummed record file that a training run writes and viewers tail.

A run is a directory holding one file, `events.rnnx`. `RunWriter` appends records to it (meta,
scalars, array frames, events, and a corpus probe's text and its (characters, units) frames);
`RunReader` reads them, also while the writer is still writing,
and any number of readers may do so at once. The byte layout, the recovery rules and an
independent 20-line reader are in `docs/runlog.md`.

Each record is framed as

    u64 length | u32 crc32(length bytes) | payload (length bytes) | u32 crc32(payload)

(little-endian), and a payload is `u32 header length | JSON header | raw array bytes`. Arrays are
stored as raw little-endian C-order bytes with `dtype` and `shape` in the header; only the
numeric dtypes in `DTYPES` are accepted, so opening someone else's run never unpickles anything.
Sizes are checked against `MAX_RECORD_BYTES` and `MAX_HEADER_BYTES` and against the file size
before anything is allocated.

This module imports NumPy and the standard library only, never TensorFlow, Keras or Qt.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Mapping, NamedTuple, Sequence

import numpy as np

__all__ = [
    "Corpus",
    "DTYPES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LOG_FILE_NAME",
    "MAX_CORPUS_CHARACTERS",
    "MAX_HEADER_BYTES",
    "MAX_RECORD_BYTES",
    "PHASES",
    "Event",
    "NonFinite",
    "RunLogError",
    "RunReader",
    "RunWriter",
]

LOG_FILE_NAME = "events.rnnx"
FORMAT_NAME = "keras-rnnx-runlog"
FORMAT_VERSION = 1

MAX_RECORD_BYTES = 1 << 30
MAX_HEADER_BYTES = 1 << 20
# A corpus probe runs tens of thousands of characters; its frames are (characters, units).
MAX_CORPUS_CHARACTERS = 1 << 20
# The first record (format name, version, start time) is tiny; a larger one is not ours.
_MAX_FIRST_RECORD_BYTES = 1 << 16

PHASES = ("batch", "epoch")
# Steps per `scalar_rows` record (its steps are a JSON list in the header).
_ROWS_PER_RECORD = 4096

# Little-endian (or byte-order-free) numeric dtypes, spelled as numpy's `dtype.str`.
DTYPES = (
    "|b1",
    "|i1",
    "<i2",
    "<i4",
    "<i8",
    "|u1",
    "<u2",
    "<u4",
    "<u8",
    "<f2",
    "<f4",
    "<f8",
    "<c8",
    "<c16",
)

_LENGTH = struct.Struct("<QI")
_CRC = struct.Struct("<I")
_HEADER_LENGTH = struct.Struct("<I")
_FRAMING_BYTES = _LENGTH.size + _CRC.size
_MIN_PAYLOAD_BYTES = _HEADER_LENGTH.size + 2  # header length + "{}"
_MAX_DIMS = 64  # NumPy's limit (numpy >= 2; a reader on an older NumPy skips 33..64 as corrupt)
_MAX_STEP = (1 << 63) - 1  # steps are int64

_SCAN_CHUNK_BYTES = 1 << 20
_READ_BUFFER_BYTES = 1 << 20
_WRITE_BUFFER_BYTES = 1 << 20


class RunLogError(Exception):
    """A path that cannot be read (or written) as a run log; the message names it and says why."""


class Corpus(NamedTuple):
    """The text a corpus probe runs, e.g. `Corpus("corpus", "import os\\n...", {...}, 1714.2)`.

    Its frames (`RunReader.corpus_frames`) have one row per character of `text`.
    """

    name: str
    text: str
    meta: dict
    time: float | None


class Event(NamedTuple):
    """A logged event, e.g. `Event("dropped_frames", 1200, 1714.2, {"count": 3})`."""

    name: str
    step: int | None
    time: float | None
    data: dict


@dataclass(frozen=True)
class NonFinite:
    """Where NaN or ±Inf first appeared in one series of a run.

    `record` is `"frame"` (then `name` is the frame kind and `layer` is set) or `"scalars"`
    (then `name` is the scalar name and `phase` is set). `count` is how many frames, or scalar
    values, held at least one non-finite number; `nan` / `inf` say which kinds were seen.
    """

    record: str
    name: str
    layer: str | None
    phase: str | None
    first_step: int
    count: int
    nan: bool
    inf: bool

    def __str__(self) -> str:
        what = " and ".join(w for w, seen in (("NaN", self.nan), ("Inf", self.inf)) if seen)
        if self.record == "frame":
            where = f"{self.name} of layer {self.layer!r}"
            unit = "frame" if self.count == 1 else "frames"
        else:
            where = f"{self.phase} scalar {self.name!r}"
            unit = "value" if self.count == 1 else "values"
        return f"{what} in {where} from step {self.first_step} ({self.count} {unit})"


# --------------------------------------------------------------------------------------------
# Encoding and decoding: the one place the format is defined.


class _BadRecord(Exception):
    """A record whose checksums are fine but whose content is not a valid record."""


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"object of type {type(value).__name__} is not JSON serializable")


def _storable(array: Any, what: str) -> np.ndarray:
    """`array` as a C-contiguous little-endian array of an allowed dtype (no copy if it is one)."""
    array = np.asarray(array)
    dtype = array.dtype.newbyteorder("<")
    if dtype.str not in DTYPES:
        raise ValueError(
            f"Invalid dtype for {what}: {array.dtype} cannot be stored in a run log; allowed are "
            f"bool, int8-64, uint8-64, float16/32/64 and complex64/128 (cast it first)."
        )
    return np.asarray(array, dtype=dtype, order="C")


def _encode(header: dict, array: np.ndarray | None = None) -> list:
    """The pieces (bytes, and the array's own buffer) of one framed record, ready to write."""
    if array is not None:
        header = {**header, "dtype": array.dtype.str, "shape": list(array.shape)}
        raw = array.reshape(-1).view(np.uint8)
    else:
        raw = b""
    try:
        text = json.dumps(header, separators=(",", ":"), allow_nan=False, default=_json_default)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"Cannot store a {header.get('type')!r} record: its fields must be JSON values "
            f"without NaN or Inf ({error}). Log numbers that may be NaN with write_scalars or "
            f"write_frame."
        ) from None
    head = text.encode("utf-8")
    if len(head) > MAX_HEADER_BYTES:
        raise ValueError(
            f"Cannot store a {header['type']!r} record: its JSON header is {len(head)} bytes, "
            f"more than the {MAX_HEADER_BYTES} a run log allows."
        )
    prefix = _HEADER_LENGTH.pack(len(head)) + head
    length = len(prefix) + len(raw)
    if length > MAX_RECORD_BYTES:
        raise ValueError(
            f"Cannot store a {header['type']!r} record of {length} bytes: a run log record is "
            f"at most {MAX_RECORD_BYTES} bytes."
        )
    length_bytes = struct.pack("<Q", length)
    payload_crc = zlib.crc32(raw, zlib.crc32(prefix))
    return [
        length_bytes + _CRC.pack(zlib.crc32(length_bytes)) + prefix,
        raw,
        _CRC.pack(payload_crc),
    ]


def _crc32_table() -> np.ndarray:
    """The lookup table of zlib's CRC-32 (reflected polynomial 0xEDB88320)."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0xEDB88320), table >> 1)
    return table.astype(np.uint32)


_CRC32_TABLE = _crc32_table()


def _header_offsets(chunk: bytes) -> np.ndarray:
    """Offsets in `chunk` where a record header with an in-range length and its checksum starts.

    Vectorized over every offset, so that scanning megabytes of garbage (a crash's zero-filled
    tail, or array data after a corrupt length) costs milliseconds, not a Python loop per byte.
    """
    n = len(chunk) - _LENGTH.size + 1
    if n <= 0:
        return np.empty(0, np.int64)
    lengths = np.ndarray((n,), "<u8", chunk, 0, (1,))
    offsets = np.flatnonzero((lengths >= _MIN_PAYLOAD_BYTES) & (lengths <= MAX_RECORD_BYTES))
    if offsets.size == 0:
        return offsets
    data = np.frombuffer(chunk, np.uint8)
    crc = np.full(offsets.size, 0xFFFFFFFF, np.uint32)
    for k in range(8):
        crc = _CRC32_TABLE[(crc ^ data[offsets + k]) & 0xFF] ^ (crc >> 8)
    stored = np.ndarray((n,), "<u4", chunk, 8, (1,))[offsets]
    return offsets[(crc ^ np.uint32(0xFFFFFFFF)) == stored]


def _decode(payload: bytes) -> tuple[dict, np.ndarray | None]:
    """The JSON header and the read-only array (or None) of one checksummed payload."""
    if len(payload) < _MIN_PAYLOAD_BYTES:
        raise _BadRecord(f"payload of {len(payload)} bytes is too short")
    (header_length,) = _HEADER_LENGTH.unpack_from(payload)
    data_start = _HEADER_LENGTH.size + header_length
    if header_length > MAX_HEADER_BYTES or data_start > len(payload):
        raise _BadRecord(f"declared header length {header_length} does not fit the payload")
    try:
        header = json.loads(payload[_HEADER_LENGTH.size : data_start])
    except (ValueError, RecursionError) as error:
        raise _BadRecord(f"header is not JSON ({error})") from None
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise _BadRecord("header is not a JSON object with a string 'type'")
    data_bytes = len(payload) - data_start
    if "dtype" not in header and "shape" not in header:
        if data_bytes:
            raise _BadRecord(f"{data_bytes} bytes of data but no 'dtype' and 'shape'")
        return header, None
    dtype, shape = header.get("dtype"), header.get("shape")
    if dtype not in DTYPES:
        raise _BadRecord(f"dtype {dtype!r} is not one of the allowed {', '.join(DTYPES)}")
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise _BadRecord(f"shape {shape!r} is not a list of non-negative integers")
    if len(shape) > _MAX_DIMS:
        # Fuzzing fix: NumPy's reshape raised ValueError for more dimensions than it supports;
        # checked first also so that `math.prod` never multiplies a huge list of huge ints.
        raise _BadRecord(f"shape of {len(shape)} dimensions has more than {_MAX_DIMS}")
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    if count * dtype.itemsize != data_bytes:
        raise _BadRecord(
            f"shape {shape} of {dtype.str} needs {count * dtype.itemsize} bytes, "
            f"the record holds {data_bytes}"
        )
    try:
        array = np.frombuffer(payload, dtype, count, offset=data_start).reshape(shape)
    except (ValueError, OverflowError):
        # Fuzzing fix: an empty array may declare a dimension NumPy cannot index (e.g.
        # `[0, 2**63]`: 0 bytes of data, so the size check passes); reshape raised ValueError.
        raise _BadRecord(f"shape {shape} cannot be an array") from None
    return header, array


def _is_step(value: Any) -> bool:
    # Fuzzing fix: steps are returned as int64 arrays; a larger step used to pass here and then
    # raise OverflowError while being stored (or in `steps()`).
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_STEP


def _wall_time(value: Any) -> float | None:
    """A header's `time` as a float, or None if it is not a number a float can hold."""
    # Fuzzing fix: `float(10**400)` raised OverflowError out of `refresh()`, and `true` was
    # taken for 1.0.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _check_names(**values: Any) -> None:
    """Raises for the first of `values` (argument name -> value) that is not a name."""
    for argument, value in values.items():
        if not _is_name(value):
            raise ValueError(
                f"Invalid value for argument `{argument}`: expected a non-empty string, "
                f"got {value!r}."
            )


# --------------------------------------------------------------------------------------------
# Writer


class RunWriter:
    """Appends records to the run log of `run_dir` (created if needed).

    Records are buffered in memory and reach the file on `flush()`. After `flush()` readers see
    them and a `kill -9` of the process loses none of them; after `flush(fsync=True)` they also
    survive an operating-system crash or power loss. How often to flush and fsync is the
    caller's policy (RNNMonitor's writer thread owns it). `close()` (or leaving a `with` block)
    writes an end record, flushes and fsyncs.

    Not thread-safe: call a writer from one thread only. One writer per run: two writers
    appending to the same file interleave their records unpredictably.

    Args:
        run_dir: the run directory.
        meta: a JSON-serializable dict to store as the first meta record (see `write_meta`).
        resume: if the directory already holds a run log, append to it instead of refusing.
            A torn or corrupt tail left by a killed writer is cut off first (it holds no
            complete record), and a `"resume"` event records how many bytes were cut.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        meta: Mapping[str, Any] | None = None,
        *,
        resume: bool = False,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOG_FILE_NAME
        self._file: BinaryIO | None = None
        self._corpus_characters: dict[str, int] = {}
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            size = self.path.stat().st_size if self.path.exists() else 0
        except OSError as error:
            raise RunLogError(f"{self.run_dir}: cannot create a run here ({error})") from None
        if size and not resume:
            raise RunLogError(
                f"{self.path}: already holds a run log; pass resume=True to append to it, "
                f"or write the new run to another directory."
            )
        if meta is not None:
            if not isinstance(meta, Mapping):
                raise ValueError(
                    f"Invalid value for argument `meta`: expected a dict, got {meta!r}."
                )
            _encode({"type": "meta", "meta": dict(meta)})  # refuse bad meta before touching disk
        keep = 0
        if size:
            reader = RunReader(self.run_dir, max_frames=1, max_corpus_frames=1)
            if reader.format_version not in (None, FORMAT_VERSION):
                raise RunLogError(
                    f"{self.path}: is run-log format version {reader.format_version}; this "
                    f"writer appends version {FORMAT_VERSION} records only."
                )
            keep = reader.bytes_read
        try:
            if size:
                os.truncate(self.path, keep)
            self._file = open(self.path, "ab", buffering=_WRITE_BUFFER_BYTES)
        except OSError as error:
            raise RunLogError(f"{self.path}: cannot open for writing ({error})") from None
        if keep == 0:
            self._write({"type": "magic", "format": FORMAT_NAME, "version": FORMAT_VERSION}, None)
        if size:
            self.write_event("resume", {"truncated_bytes": size - keep})
        if meta is not None:
            self.write_meta(meta)
        self.flush(fsync=True)
        _fsync_directory(self.run_dir)

    def write_meta(self, meta: Mapping[str, Any]) -> None:
        """Stores `meta`; readers merge successive meta records key by key (later wins).

        RNNMonitor stores the model summary, each layer with its cell kind, units and gate names,
        the probe batch shape, optional token labels for the time axis and the Keras and
        TensorFlow versions; the log itself adds the format version and start time.
        """
        if not isinstance(meta, Mapping):
            raise ValueError(f"Invalid value for argument `meta`: expected a dict, got {meta!r}.")
        self._write({"type": "meta", "meta": dict(meta)}, None)

    def write_scalars(self, step: int, values: Mapping[str, float], *, phase: str) -> None:
        """Stores named scalars (Keras log names: `loss`, `val_loss`, metrics) at `step`.

        `phase` is `"epoch"` (then `step` is the 0-based epoch, as Keras passes it to
        `on_epoch_end`) or `"batch"` (then `step` is the global training step). NaN and Inf are
        stored as they are.
        """
        step = _check_step(step)
        _check_phase(phase)
        if not isinstance(values, Mapping):
            raise ValueError(
                f"Invalid value for argument `values`: expected a dict of name to number, "
                f"got {values!r}."
            )
        if not values:
            return
        names, numbers_ = [], []
        for name, value in values.items():
            if not _is_name(name):
                raise ValueError(f"Invalid scalar name {name!r}: expected a non-empty string.")
            try:
                numbers_.append(float(value))
            except (TypeError, ValueError):
                raise ValueError(
                    f"Invalid value for scalar {name!r}: expected a number, got {value!r}."
                ) from None
            names.append(name)
        header = {"type": "scalars", "step": step, "phase": phase, "names": names}
        self._write(header, np.asarray(numbers_, dtype="<f8"))

    def write_scalar_rows(self, steps: Sequence[int], names: Sequence[str], values: Any, *,
                          phase: str) -> None:
        """Stores the same named scalars at several steps in one record (`scalar_rows`), e.g.
        the batch logs of many training steps: `values[k, j]` is `names[j]` at `steps[k]`.

        Readers merge them with `write_scalars`'s records: `scalars(name, phase=...)` is the
        same either way. One record instead of one per step: a monitor writes batch logs this
        way, at a fraction of the cost. NaN and Inf are stored as they are.
        """
        _check_phase(phase)
        steps = _check_steps(steps)
        names = list(names)
        if not all(_is_name(name) for name in names):
            raise ValueError(f"Invalid value for argument `names`: expected non-empty strings, "
                             f"got {names!r}.")
        try:
            array = np.asarray(values, dtype="<f8")
        except (TypeError, ValueError):
            raise ValueError(
                f"Invalid value for argument `values`: expected numbers, got {values!r}."
            ) from None
        if array.shape != (len(steps), len(names)):
            raise ValueError(
                f"Invalid value for argument `values`: expected shape ({len(steps)}, "
                f"{len(names)}) for {len(steps)} steps and {len(names)} names, got "
                f"{array.shape}."
            )
        if not steps or not names:
            return
        for first in range(0, len(steps), _ROWS_PER_RECORD):
            rows = slice(first, first + _ROWS_PER_RECORD)
            header = {"type": "scalar_rows", "steps": steps[rows], "phase": phase,
                      "names": names}
            self._write(header, np.ascontiguousarray(array[rows]))

    def write_frame(
        self,
        kind: str,
        layer: str,
        step: int,
        array: np.ndarray,
        *,
        axes: Sequence[str] | None = None,
    ) -> None:
        """Stores one probe array, e.g. `write_frame("h", "lstm", 1200, h)`.

        `kind` is the probe field (`"h"`, `"c"`, a gate name, `"grad_h"`, `"grad_norm"`,
        `"jacobian_norm"`, ...), `step` the global training step, `axes` optional names of the
        array's axes (e.g. `("batch", "time", "unit")`). The array is stored as little-endian
        C-order bytes; NaN and Inf are stored as they are.
        """
        _check_names(kind=kind, layer=layer)
        step = _check_step(step)
        array = _storable(array, f"frame {kind!r} of layer {layer!r}")
        header: dict[str, Any] = {"type": "frame", "kind": kind, "layer": layer, "step": step}
        if axes is not None:
            axes = list(axes)
            if len(axes) != array.ndim or not all(isinstance(a, str) for a in axes):
                raise ValueError(
                    f"Invalid value for argument `axes`: expected {array.ndim} axis names for "
                    f"an array of shape {array.shape}, got {axes!r}."
                )
            header["axes"] = axes
        self._write(header, array)

    def write_corpus(
        self, text: str, *, name: str = "corpus", meta: Mapping[str, Any] | None = None
    ) -> None:
        """Stores the text a corpus probe runs, once per run (a later one of the same name
        replaces it for readers).

        `text` holds one character per step of the probe's stream (at most
        `MAX_CORPUS_CHARACTERS`); it is stored as UTF-8. `meta` (a JSON-serializable dict)
        describes it, e.g. where it comes from and the window length.
        """
        _check_names(name=name)
        if not isinstance(text, str) or not text:
            raise ValueError(
                f"Invalid value for argument `text`: expected a non-empty str, got "
                f"{type(text).__name__ if not isinstance(text, str) else 'an empty str'}."
            )
        if len(text) > MAX_CORPUS_CHARACTERS:
            raise ValueError(
                f"Invalid value for argument `text`: {len(text)} characters, more than the "
                f"{MAX_CORPUS_CHARACTERS} a run log's corpus allows."
            )
        meta = {} if meta is None else meta
        if not isinstance(meta, Mapping):
            raise ValueError(f"Invalid value for argument `meta`: expected a dict, got {meta!r}.")
        try:
            data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        except UnicodeEncodeError as error:  # lone surrogates
            raise ValueError(
                f"Invalid value for argument `text`: not valid Unicode ({error})."
            ) from None
        header = {"type": "corpus", "name": name, "characters": len(text), "meta": dict(meta)}
        self._write(header, data)
        self._corpus_characters[name] = len(text)

    def write_corpus_frame(
        self, kind: str, layer: str, step: int, array: np.ndarray, *, corpus: str = "corpus"
    ) -> None:
        """Stores one array of a corpus probe, e.g. `write_corpus_frame("c", "lstm", 1200, c)`.

        `array` is (N, U): one row per character of the corpus `corpus`, one column per unit,
        of a float dtype; `kind` is a state or gate name. When this writer stored the corpus,
        N must be its length.
        """
        _check_names(kind=kind, layer=layer, corpus=corpus)
        step = _check_step(step)
        array = _storable(array, f"corpus frame {kind!r} of layer {layer!r}")
        if array.ndim != 2 or array.dtype.kind != "f":
            raise ValueError(
                f"Invalid value for argument `array`: expected a 2-D float array (characters, "
                f"units), got {array.dtype} of shape {array.shape}."
            )
        characters = self._corpus_characters.get(corpus)
        if characters is not None and array.shape[0] != characters:
            raise ValueError(
                f"Invalid value for argument `array`: {array.shape[0]} rows, but corpus "
                f"{corpus!r} has {characters} characters (one row per character)."
            )
        header = {"type": "corpus_frame", "corpus": corpus, "kind": kind, "layer": layer,
                  "step": step, "axes": ["char", "unit"]}
        self._write(header, array)

    def write_event(
        self, name: str, data: Mapping[str, Any] | None = None, *, step: int | None = None
    ) -> None:
        """Stores an event, e.g. `write_event("dropped_frames", {"count": 3}, step=1200)`."""
        _check_names(name=name)
        if step is not None:
            step = _check_step(step)
        data = {} if data is None else data
        if not isinstance(data, Mapping):
            raise ValueError(f"Invalid value for argument `data`: expected a dict, got {data!r}.")
        self._write({"type": "event", "name": name, "step": step, "data": dict(data)}, None)

    def flush(self, fsync: bool = False) -> None:
        """Hands buffered records to the OS; with `fsync=True` also waits until they are on disk."""
        file = self._open_file()
        file.flush()
        if fsync:
            os.fsync(file.fileno())

    def close(self, status: str = "ok") -> None:
        """Writes the end record (`status` says how the run ended), flushes, fsyncs, closes.

        Calling it again does nothing.
        """
        if self._file is None:
            return
        try:
            self._write({"type": "end", "status": str(status)}, None)
            self.flush(fsync=True)
        finally:
            self._file.close()
            self._file = None

    @property
    def closed(self) -> bool:
        return self._file is None

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.close("ok" if exc_type is None else f"error: {exc_type.__name__}")

    def __repr__(self) -> str:
        return f"RunWriter({str(self.run_dir)!r}{', closed' if self.closed else ''})"

    def _open_file(self) -> BinaryIO:
        if self._file is None:
            raise ValueError(f"{self.path}: the RunWriter is closed.")
        return self._file

    def _write(self, header: dict, array: np.ndarray | None) -> None:
        file = self._open_file()
        pieces = _encode({**header, "time": time.time()}, array)
        for piece in pieces:
            file.write(piece)


def _check_phase(phase: Any) -> None:
    if phase not in PHASES:
        raise ValueError(
            f"Invalid value for argument `phase`: expected one of {PHASES}, got {phase!r}."
        )


def _check_step(step: Any) -> int:
    # Fuzzing fix: steps above int64 were written, and readers (which keep steps as int64)
    # then skip those records; refuse them here instead.
    if (
        isinstance(step, bool)
        or not isinstance(step, numbers.Integral)
        or not 0 <= step <= _MAX_STEP
    ):
        raise ValueError(
            f"Invalid value for argument `step`: expected a non-negative integer below 2**63, "
            f"got {step!r}."
        )
    return int(step)


def _check_steps(steps: Sequence[Any]) -> list[int]:
    """`_check_step` of every step; plain ints (what a monitor hands over, thousands per
    record) are checked as a whole, without an isinstance check against `numbers.Integral`
    per step, the writer's largest cost per training step."""
    steps = list(steps)
    if all(type(step) is int for step in steps):
        if steps and not (0 <= min(steps) and max(steps) <= _MAX_STEP):
            for step in steps:
                _check_step(step)  # names the first bad one
        return steps
    return [_check_step(step) for step in steps]


def _fsync_directory(directory: Path) -> None:
    """Makes a newly created log file's directory entry durable, where the OS allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# Reader


class _ScalarSeries:
    """Steps and values of one scalar, in growable NumPy buffers."""

    __slots__ = ("steps", "values", "size")

    def __init__(self) -> None:
        self.steps = np.empty(64, np.int64)
        self.values = np.empty(64, np.float64)
        self.size = 0

    def append(self, step: int, value: float) -> None:
        if self.size == len(self.steps):
            self.steps = np.concatenate([self.steps, np.empty_like(self.steps)])
            self.values = np.concatenate([self.values, np.empty_like(self.values)])
        self.steps[self.size] = step
        self.values[self.size] = value
        self.size += 1


class _FrameSeries:
    """Frames of one (kind, layer), thinned to at most `cap` frames.

    Frames whose arrival index is a multiple of `stride` are kept; when they would exceed
    `cap - 1`, every other kept frame is dropped and `stride` doubles, so the kept frames stay
    evenly spread over the whole run. The newest frame is always kept in the last slot.
    """

    __slots__ = ("cap", "stride", "kept", "latest", "seen", "axes")

    def __init__(self, cap: int | None) -> None:
        self.cap = cap
        self.stride = 1
        self.kept: list[tuple[int, np.ndarray]] = []
        self.latest: tuple[int, np.ndarray] | None = None
        self.seen = 0
        self.axes: tuple[str, ...] | None = None

    def append(self, step: int, array: np.ndarray) -> None:
        index = self.seen
        self.seen += 1
        if self.cap == 1:
            self.latest = (step, array)
            return
        if index % self.stride:
            self.latest = (step, array)
            return
        item = (step, array)
        self.kept.append(item)
        self.latest = None
        if self.cap is not None and len(self.kept) > self.cap - 1:
            self.kept = self.kept[::2]
            self.stride *= 2
            if self.kept[-1] is not item:
                self.latest = item

    def items(self) -> list[tuple[int, np.ndarray]]:
        return self.kept + ([self.latest] if self.latest is not None else [])


class _NonFiniteCount:
    __slots__ = ("first_step", "count", "nan", "inf")

    def __init__(self, step: int) -> None:
        self.first_step = step
        self.count = 0
        self.nan = False
        self.inf = False

    def add(self, step: int, nan: bool, inf: bool) -> None:
        self.first_step = min(self.first_step, step)
        self.count += 1
        self.nan |= nan
        self.inf |= inf


def _nonfinite(array: np.ndarray) -> tuple[bool, bool] | None:
    """(has NaN, has Inf) if `array` holds a non-finite number, else None."""
    if array.dtype.kind not in "fc" or array.size == 0 or np.isfinite(array).all():
        return None
    return bool(np.isnan(array).any()), bool(np.isinf(array).any())


class _Incomplete(Exception):
    """The file ended (or shrank) before the bytes asked for."""


class RunReader:
    """Reads a run log, also while it is being written; `refresh()` picks up what was appended.

    The constructor reads everything already in the log. A directory without a log file, or an
    empty log, is a run that has not started: no error, no records, and a later `refresh()`
    picks it up. `run_dir` may also be the log file itself.

    Args:
        run_dir: the run directory (or its `events.rnnx`).
        max_frames: keep at most this many frames per (kind, layer). Older frames are decimated,
            not dropped from one end: the kept frames stay evenly spread over the run (every
            `stride`-th frame, `stride` doubling as needed) and the newest frame is always kept.
            `max_frames=1` keeps only the newest frame. None (the default) keeps every frame.
            Scalars and events are always kept in full.
        max_corpus_frames: the same bound for the frames of a corpus probe, per (corpus,
            kind, layer); each is (characters, units), so a viewer may want fewer of them.

    Raises:
        RunLogError: the directory is missing or unreadable, the file is not a run log, or it
            was written in a newer format version.

    Thread safety: one thread at a time may `refresh()`; the accessors may be called from other
    threads meanwhile and return copies (the arrays themselves are read-only and shared).
    Records with bad checksums or bad content are skipped and described in `problems`.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        max_frames: int | None = None,
        max_corpus_frames: int | None = None,
    ) -> None:
        for argument, value in (("max_frames", max_frames),
                                ("max_corpus_frames", max_corpus_frames)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1
            ):
                raise ValueError(
                    f"Invalid value for argument `{argument}`: expected a positive integer or "
                    f"None, got {value!r}."
                )
        path = Path(run_dir)
        if path.is_file():
            self.run_dir, self.path = path.parent, path
        else:
            self.run_dir, self.path = path, path / LOG_FILE_NAME
            if not path.is_dir():
                raise RunLogError(
                    f"{path}: no such run directory"
                    + (" (it exists but is not a directory)" if os.path.lexists(path) else "")
                )
        self.max_frames = None if max_frames is None else int(max_frames)
        self.max_corpus_frames = None if max_corpus_frames is None else int(max_corpus_frames)
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._offset = 0
        self._version: int | None = None
        self._start_time: float | None = None
        self._meta: dict[str, Any] = {}
        self._scalars: dict[tuple[str, str], _ScalarSeries] = {}
        self._frames: dict[str, dict[str, _FrameSeries]] = {}
        self._events: list[Event] = []
        self._corpora: dict[str, Corpus] = {}
        # corpus name -> layer -> kind -> frames
        self._corpus_frames: dict[str, dict[str, dict[str, _FrameSeries]]] = {}
        self._nonfinite: dict[tuple, _NonFiniteCount] = {}
        self._problems: list[str] = []
        self._tail_problem: str | None = None
        # (bad offset, first offset not yet scanned) while a garbage tail waits for valid records
        self._scan: tuple[int, int] | None = None
        self._records = 0
        self._end_status: str | None = None
        self.refresh()

    # ---- reading -------------------------------------------------------------------------

    def refresh(self, max_records: int | None = None) -> int:
        """Reads the records appended since the last call; returns how many were read.

        A torn last record (a writer killed mid-write, or a copy in progress) is left for a
        later call, which reads it once it is complete. `max_records` bounds the work of one
        call. The format record at the start of the file is not counted.
        """
        with self._refresh_lock:
            if not self.run_dir.is_dir():
                raise RunLogError(f"{self.run_dir}: no such run directory")
            try:
                file = open(self.path, "rb", buffering=_READ_BUFFER_BYTES)
            except FileNotFoundError:
                if self._offset:
                    raise RunLogError(f"{self.path}: the run log has disappeared") from None
                return 0
            except OSError as error:
                raise RunLogError(f"{self.path}: cannot be read ({error})") from None
            with file:
                end = os.fstat(file.fileno()).st_size
                if end < self._offset:
                    self._tail_problem = (
                        f"{self.path}: the file shrank from {self._offset} to {end} bytes; it was "
                        f"truncated or replaced, reopen the run to read it again"
                    )
                    return 0
                try:
                    if self._version is None and not self._read_first_record(file, end):
                        return 0
                except _Incomplete:
                    return 0
                return self._read_records(file, end, max_records)

    def _read_first_record(self, file: BinaryIO, end: int) -> bool:
        head = _read_at(file, 0, min(end, _LENGTH.size))
        if any(head[2 : _LENGTH.size - _CRC.size]):
            raise RunLogError(f"{self.path}: not a keras-rnnx run log (unexpected first bytes)")
        if len(head) < _LENGTH.size:
            return False
        length, length_crc = _LENGTH.unpack(head)
        if zlib.crc32(head[:8]) != length_crc or length < _MIN_PAYLOAD_BYTES:
            raise RunLogError(
                f"{self.path}: not a keras-rnnx run log (the first record's length checksum "
                f"does not match)"
            )
        if length > _MAX_FIRST_RECORD_BYTES:
            raise RunLogError(f"{self.path}: not a keras-rnnx run log (first record too long)")
        if _FRAMING_BYTES + length > end:
            return False
        payload = _read_at(file, _LENGTH.size, length)
        (payload_crc,) = _CRC.unpack(_read_at(file, _LENGTH.size + length, _CRC.size))
        if zlib.crc32(payload) != payload_crc:
            raise RunLogError(
                f"{self.path}: the first record is corrupt (payload checksum mismatch), so its "
                f"format version is unknown"
            )
        try:
            header, _ = _decode(payload)
        except _BadRecord as error:
            raise RunLogError(f"{self.path}: the first record is not valid: {error}") from None
        if header.get("type") != "magic" or header.get("format") != FORMAT_NAME:
            raise RunLogError(
                f"{self.path}: not a keras-rnnx run log (the first record is not a "
                f"{FORMAT_NAME!r} format record)"
            )
        version = header.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise RunLogError(f"{self.path}: invalid run-log format version {version!r}")
        if version > FORMAT_VERSION:
            raise RunLogError(
                f"{self.path}: written in run-log format version {version}, but this keras_rnnx "
                f"reads versions up to {FORMAT_VERSION}; upgrade keras-rnnx to read it."
            )
        with self._lock:
            self._version = version
            self._start_time = _wall_time(header.get("time"))
            self._offset = _FRAMING_BYTES + length
        return True

    def _read_records(self, file: BinaryIO, end: int, max_records: int | None) -> int:
        pos = self._offset
        count = 0
        tail_problem = None
        try:
            while (max_records is None or count < max_records) and end - pos >= _LENGTH.size:
                head = _read_at(file, pos, _LENGTH.size)
                length, length_crc = _LENGTH.unpack(head)
                length_ok = zlib.crc32(head[:8]) == length_crc
                if not length_ok or not _MIN_PAYLOAD_BYTES <= length <= MAX_RECORD_BYTES:
                    why = (
                        "length checksum mismatch"
                        if not length_ok
                        else f"declared length {length} outside {_MIN_PAYLOAD_BYTES}.."
                        f"{MAX_RECORD_BYTES}"
                    )
                    scan_from = pos + 1
                    if self._scan is not None and self._scan[0] == pos:
                        scan_from = self._scan[1]
                    resume_at, scanned_to = self._resync(file, scan_from, end)
                    self._scan = None if resume_at is not None else (pos, scanned_to)
                    if resume_at is None:
                        tail_problem = (
                            f"{self.path}: bytes {pos}..{end} are not a valid record ({why}); "
                            f"records written after them will be read once one is complete"
                        )
                        break
                    self._skip(
                        resume_at,
                        f"{self.path}: skipped bytes {pos}..{resume_at} ({why}); reading resumed "
                        f"at the next valid record",
                    )
                    pos = resume_at
                    continue
                record_end = pos + _FRAMING_BYTES + length
                if record_end > end:
                    break  # torn or still being written: read it once it is complete
                payload = _read_at(file, pos + _LENGTH.size, length)
                (payload_crc,) = _CRC.unpack(_read_at(file, record_end - _CRC.size, _CRC.size))
                if zlib.crc32(payload) != payload_crc:
                    if record_end == end:
                        tail_problem = (
                            f"{self.path}: the last record (byte {pos}, {length} bytes) fails its "
                            f"payload checksum; it is skipped once more records follow it"
                        )
                        break
                    self._skip(
                        record_end,
                        f"{self.path}: record at byte {pos} ({length} bytes) fails its payload "
                        f"checksum; skipped",
                    )
                    pos = record_end
                    continue
                try:
                    item = self._interpret(*_decode(payload))
                except _BadRecord as error:
                    self._skip(record_end, f"{self.path}: record at byte {pos}: {error}; skipped")
                    pos = record_end
                    continue
                with self._lock:
                    self._apply(item)
                    self._records += 1
                    self._offset = pos = record_end
                count += 1
        except _Incomplete:
            pass
        self._tail_problem = tail_problem
        return count

    def _resync(self, file: BinaryIO, start: int, end: int) -> tuple[int | None, int]:
        """Offset of the first valid record at or after `start` (or None), and where to go on.

        A record counts as valid when its length checksum matches and either the record is
        complete with a matching payload checksum, or it runs past the end of the file (a record
        still being written: reading waits there). When none is found, the second value is the
        first offset not yet tested (the file is append-only, so tested bytes stay bad).
        """
        chunk_start = start
        while end - chunk_start >= _LENGTH.size:
            chunk = _read_at(
                file, chunk_start, min(_SCAN_CHUNK_BYTES + _LENGTH.size - 1, end - chunk_start)
            )
            for q in _header_offsets(chunk).tolist():
                if q >= _SCAN_CHUNK_BYTES:
                    break
                at = chunk_start + q
                (length,) = struct.unpack_from("<Q", chunk, q)
                if at + _FRAMING_BYTES + length > end:
                    return at, at
                payload = _read_at(file, at + _LENGTH.size, length)
                (crc,) = _CRC.unpack(_read_at(file, at + _LENGTH.size + length, _CRC.size))
                if zlib.crc32(payload) == crc:
                    return at, at
            chunk_start += _SCAN_CHUNK_BYTES
        return None, max(start, end - _LENGTH.size + 1)

    def _skip(self, offset: int, problem: str) -> None:
        with self._lock:
            self._problems.append(problem)
            self._offset = offset

    def _interpret(self, header: dict, array: np.ndarray | None) -> tuple:
        """Validates a decoded record; returns a tuple for `_apply` (decoding stays unlocked)."""
        kind = header["type"]
        wall_time = _wall_time(header.get("time"))
        if kind == "frame":
            step, frame_kind, layer = header.get("step"), header.get("kind"), header.get("layer")
            if not (_is_step(step) and _is_name(frame_kind) and _is_name(layer)):
                raise _BadRecord("frame record without a valid 'step', 'kind' and 'layer'")
            if array is None:
                raise _BadRecord("frame record without an array")
            axes = header.get("axes")
            # Fuzzing fix: axes of the wrong count (one name per array axis) are ignored too,
            # so `axes()` never names more or fewer axes than the frames have.
            if not (
                isinstance(axes, list)
                and len(axes) == array.ndim
                and all(isinstance(a, str) for a in axes)
            ):
                axes = None
            return ("frame", frame_kind, layer, step, array, axes, _nonfinite(array))
        if kind == "scalars":
            step, phase, names = header.get("step"), header.get("phase"), header.get("names")
            if not (_is_step(step) and _is_name(phase) and isinstance(names, list)):
                raise _BadRecord("scalars record without a valid 'step', 'phase' and 'names'")
            if not all(_is_name(n) for n in names):
                raise _BadRecord("scalars record with a name that is not a non-empty string")
            if array is None or array.shape != (len(names),) or array.dtype.kind not in "fiub":
                raise _BadRecord(f"scalars record whose array does not hold {len(names)} numbers")
            return ("scalars", step, phase, names, array.astype(np.float64))
        if kind == "scalar_rows":
            steps, phase, names = header.get("steps"), header.get("phase"), header.get("names")
            if not (isinstance(steps, list) and steps and all(_is_step(s) for s in steps)
                    and _is_name(phase) and isinstance(names, list)):
                raise _BadRecord(
                    "scalar_rows record without valid 'steps', 'phase' and 'names'")
            if not all(_is_name(n) for n in names):
                raise _BadRecord("scalar_rows record with a name that is not a non-empty string")
            if (array is None or array.shape != (len(steps), len(names))
                    or array.dtype.kind not in "fiub"):
                raise _BadRecord(f"scalar_rows record whose array is not {len(steps)} x "
                                 f"{len(names)} numbers")
            return ("scalar_rows", steps, phase, names, array.astype(np.float64))
        if kind == "meta":
            meta = header.get("meta")
            if not isinstance(meta, dict):
                raise _BadRecord("meta record whose 'meta' is not a JSON object")
            return ("meta", meta)
        if kind == "event":
            name, step, data = header.get("name"), header.get("step"), header.get("data", {})
            if not _is_name(name) or not (step is None or _is_step(step)):
                raise _BadRecord("event record without a valid 'name' and 'step'")
            if not isinstance(data, dict):
                raise _BadRecord("event record whose 'data' is not a JSON object")
            return ("event", Event(name, step, wall_time, data))
        if kind == "corpus":
            return self._interpret_corpus(header, array, wall_time)
        if kind == "corpus_frame":
            corpus, step = header.get("corpus"), header.get("step")
            frame_kind, layer = header.get("kind"), header.get("layer")
            if not (_is_name(corpus) and _is_step(step) and _is_name(frame_kind)
                    and _is_name(layer)):
                raise _BadRecord(
                    "corpus_frame record without a valid 'corpus', 'step', 'kind' and 'layer'"
                )
            if array is None or array.ndim != 2 or array.dtype.kind != "f":
                raise _BadRecord("corpus_frame record without a 2-D float array")
            known = self._corpora.get(corpus)  # only the refreshing thread changes it
            if known is not None and array.shape[0] != len(known.text):
                raise _BadRecord(
                    f"corpus_frame of {array.shape[0]} rows for corpus {corpus!r} of "
                    f"{len(known.text)} characters"
                )
            return ("corpus_frame", corpus, frame_kind, layer, step, array)
        if kind == "end":
            status = header.get("status")
            return ("end", status if isinstance(status, str) else "ok")
        if kind == "magic":
            version = header.get("version")
            if isinstance(version, int) and version > FORMAT_VERSION:
                raise _BadRecord(f"format record of newer version {version} in mid-file")
        # Unknown types come from newer writers of the same version: readers skip them.
        return ("other",)

    def _interpret_corpus(self, header: dict, array: np.ndarray | None,
                          wall_time: float | None) -> tuple:
        name, characters, meta = header.get("name"), header.get("characters"), header.get("meta")
        meta = {} if meta is None else meta
        if not (_is_name(name) and isinstance(meta, dict) and isinstance(characters, int)
                and not isinstance(characters, bool)):
            raise _BadRecord("corpus record without a valid 'name', 'characters' and 'meta'")
        if not 1 <= characters <= MAX_CORPUS_CHARACTERS:
            raise _BadRecord(
                f"corpus record of {characters} characters, outside 1..{MAX_CORPUS_CHARACTERS}"
            )
        if array is None or array.dtype != np.uint8 or array.ndim != 1:
            raise _BadRecord("corpus record whose data is not 1-D UTF-8 bytes ('|u1')")
        # UTF-8 takes 1 to 4 bytes a character: checked before decoding anything.
        if not characters <= array.size <= 4 * characters:
            raise _BadRecord(f"corpus record of {array.size} bytes for {characters} characters")
        try:
            text = array.tobytes().decode("utf-8")
        except UnicodeDecodeError as error:
            raise _BadRecord(f"corpus record whose text is not UTF-8 ({error})") from None
        if len(text) != characters:
            raise _BadRecord(f"corpus record of {len(text)} characters, its header says "
                             f"{characters}")
        return ("corpus", Corpus(name, text, meta, wall_time))

    def _apply(self, item: tuple) -> None:
        what = item[0]
        if what != "end":
            self._end_status = None
        if what == "frame":
            _, kind, layer, step, array, axes, nonfinite = item
            series = self._frames.setdefault(layer, {}).get(kind)
            if series is None:
                series = self._frames[layer][kind] = _FrameSeries(self.max_frames)
            series.append(step, array)
            if axes is not None:
                series.axes = tuple(axes)
            if nonfinite is not None:
                self._count_nonfinite(("frame", kind, layer, None), step, *nonfinite)
        elif what == "scalars":
            _, step, phase, names, values = item
            self._append_scalars(step, phase, names, values.tolist())
        elif what == "scalar_rows":
            _, steps, phase, names, values = item
            for step, row in zip(steps, values.tolist()):
                self._append_scalars(step, phase, names, row)
        elif what == "meta":
            self._meta.update(item[1])
        elif what == "event":
            self._events.append(item[1])
        elif what == "corpus":
            corpus = item[1]
            self._corpora[corpus.name] = corpus
            self._corpus_frames.setdefault(corpus.name, {})
        elif what == "corpus_frame":
            _, corpus, kind, layer, step, array = item
            by_kind = self._corpus_frames.setdefault(corpus, {}).setdefault(layer, {})
            series = by_kind.get(kind)
            if series is None:
                series = by_kind[kind] = _FrameSeries(self.max_corpus_frames)
            series.append(step, array)
        elif what == "end":
            self._end_status = item[1]

    def _append_scalars(self, step: int, phase: str, names: list, values: list) -> None:
        for name, value in zip(names, values):
            series = self._scalars.get((phase, name))
            if series is None:
                series = self._scalars[phase, name] = _ScalarSeries()
            series.append(step, value)
            if not math.isfinite(value):
                self._count_nonfinite(
                    ("scalars", name, None, phase), step, math.isnan(value), math.isinf(value)
                )

    def _count_nonfinite(self, key: tuple, step: int, nan: bool, inf: bool) -> None:
        counter = self._nonfinite.get(key)
        if counter is None:
            counter = self._nonfinite[key] = _NonFiniteCount(step)
        counter.add(step, nan, inf)

    # ---- what a viewer asks ----------------------------------------------------------------

    @property
    def meta(self) -> dict[str, Any]:
        """The merged meta records plus `format_version` and `start_time` (Unix seconds).

        Empty while the run has not started.
        """
        with self._lock:
            if self._version is None:
                return {}
            return {
                **self._meta,
                "format_version": self._version,
                "start_time": self._start_time,
            }

    @property
    def format_version(self) -> int | None:
        """The file's format version; None while the run has not started."""
        return self._version

    @property
    def problems(self) -> list[str]:
        """Human-readable messages about skipped corrupt records and a bad tail, oldest first."""
        with self._lock:
            tail = [self._tail_problem] if self._tail_problem else []
            return self._problems + tail

    @property
    def record_count(self) -> int:
        """Records read so far (all `refresh()` results together)."""
        return self._records

    @property
    def bytes_read(self) -> int:
        """File offset just past the last complete record read or skipped."""
        return self._offset

    @property
    def finished(self) -> bool:
        """Whether the log ends with an end record (the writer was closed)."""
        return self._end_status is not None

    @property
    def end_status(self) -> str | None:
        """The end record's status (`"ok"`, `"error: ValueError"`, ...), None if not finished."""
        return self._end_status

    def scalar_names(self, phase: str | None = None) -> list[str]:
        """Names of the scalars logged in `phase` (all phases if None), first-logged first."""
        with self._lock:
            names = [n for (p, n) in self._scalars if phase is None or p == phase]
        return list(dict.fromkeys(names))

    def scalars(self, name: str, phase: str = "epoch") -> tuple[np.ndarray, np.ndarray]:
        """`(steps, values)` of one scalar as int64 / float64 arrays, in the order logged.

        `phase="epoch"` gives epoch logs (steps are epochs), `phase="batch"` batch-level values
        (steps are global training steps).

        Raises:
            KeyError: nothing by that name was logged in that phase.
        """
        with self._lock:
            series = self._scalars.get((phase, name))
            if series is None:
                known = [n for (p, n) in self._scalars if p == phase]
                raise KeyError(f"no {phase} scalar {name!r} in {self.path}; it has {known}")
            return series.steps[: series.size].copy(), series.values[: series.size].copy()

    def layers(self) -> list[str]:
        """Layers that have frames, first-logged first."""
        with self._lock:
            return list(self._frames)

    def kinds(self, layer: str | None = None) -> list[str]:
        """Frame kinds logged for `layer` (for any layer if None), first-logged first."""
        with self._lock:
            if layer is not None:
                return list(self._frames.get(layer, ()))
            return list(dict.fromkeys(k for kinds in self._frames.values() for k in kinds))

    def frames(self, kind: str, layer: str) -> list[tuple[int, np.ndarray]]:
        """The kept `(step, array)` frames of one kind and layer, oldest first.

        The arrays are read-only. With `max_frames` set, this is the decimated history.

        Raises:
            KeyError: no frame of that kind and layer was logged.
        """
        with self._lock:
            return self._series(kind, layer).items()

    def frame_count(self, kind: str, layer: str) -> int:
        """How many frames of one kind and layer were read, kept or not."""
        with self._lock:
            return self._series(kind, layer).seen

    def frame_at(
        self, kind: str, layer: str, step: int | None = None
    ) -> tuple[int, np.ndarray] | None:
        """The newest kept frame at or before `step` (the newest of all if None), or None."""
        with self._lock:
            items = self._series(kind, layer).items()
        return _newest_at(items, step)

    def axes(self, kind: str, layer: str) -> tuple[str, ...] | None:
        """The axis names the writer gave for this kind and layer, if any."""
        with self._lock:
            return self._series(kind, layer).axes

    def steps(self, kind: str | None = None, layer: str | None = None) -> np.ndarray:
        """Sorted distinct steps of the kept frames, optionally of one kind and/or layer."""
        with self._lock:
            found = [
                step
                for layer_name, by_kind in self._frames.items()
                if layer is None or layer_name == layer
                for kind_name, series in by_kind.items()
                if kind is None or kind_name == kind
                for step, _ in series.items()
            ]
        return np.unique(np.asarray(found, dtype=np.int64))

    def events(self, name: str | None = None) -> list[Event]:
        """Logged events (only those called `name` if given), in the order logged."""
        with self._lock:
            return [e for e in self._events if name is None or e.name == name]

    def nonfinite(self) -> list[NonFinite]:
        """Every frame series and scalar that held NaN or Inf, earliest first step first."""
        with self._lock:
            found = [
                NonFinite(record, name, layer, phase, c.first_step, c.count, c.nan, c.inf)
                for (record, name, layer, phase), c in self._nonfinite.items()
            ]
        return sorted(found, key=lambda n: n.first_step)

    # ---- corpus probe --------------------------------------------------------------------

    def corpora(self) -> list[str]:
        """Names of the corpora that have a text or frames, first-logged first."""
        with self._lock:
            return list(dict.fromkeys([*self._corpora, *self._corpus_frames]))

    def corpus(self, name: str = "corpus") -> Corpus:
        """The text (and meta) of a corpus probe: one character per row of its frames.

        Raises:
            KeyError: no corpus text of that name was logged.
        """
        with self._lock:
            corpus = self._corpora.get(name)
            if corpus is None:
                raise KeyError(
                    f"no corpus {name!r} in {self.path}; it has {list(self._corpora)}"
                )
            return corpus

    def corpus_layers(self, corpus: str = "corpus") -> list[str]:
        """Layers that have frames of `corpus`, first-logged first."""
        with self._lock:
            return list(self._corpus_frames.get(corpus, {}))

    def corpus_kinds(self, layer: str, corpus: str = "corpus") -> list[str]:
        """Kinds (states and gates) of `corpus` frames logged for `layer`."""
        with self._lock:
            return list(self._corpus_frames.get(corpus, {}).get(layer, {}))

    def corpus_frames(self, kind: str, layer: str, corpus: str = "corpus"
                      ) -> list[tuple[int, np.ndarray]]:
        """The kept `(step, array)` frames of a corpus probe, oldest first; arrays are
        (characters, units) and read-only, decimated as `max_corpus_frames` says.

        Raises:
            KeyError: no such frames were logged.
        """
        with self._lock:
            return self._corpus_series(kind, layer, corpus).items()

    def corpus_frame_count(self, kind: str, layer: str, corpus: str = "corpus") -> int:
        """How many corpus frames of one kind and layer were read, kept or not."""
        with self._lock:
            return self._corpus_series(kind, layer, corpus).seen

    def corpus_frame_at(self, kind: str, layer: str, step: int | None = None,
                        corpus: str = "corpus") -> tuple[int, np.ndarray] | None:
        """The newest kept corpus frame at or before `step` (the newest if None), or None."""
        with self._lock:
            items = self._corpus_series(kind, layer, corpus).items()
        return _newest_at(items, step)

    def corpus_steps(self, corpus: str = "corpus") -> np.ndarray:
        """Sorted distinct steps at which `corpus` frames were kept."""
        with self._lock:
            found = [step for by_kind in self._corpus_frames.get(corpus, {}).values()
                     for series in by_kind.values() for step, _ in series.items()]
        return np.unique(np.asarray(found, dtype=np.int64))

    def _corpus_series(self, kind: str, layer: str, corpus: str) -> _FrameSeries:
        series = self._corpus_frames.get(corpus, {}).get(layer, {}).get(kind)
        if series is None:
            have = {name: {lay: list(kinds) for lay, kinds in layers.items()}
                    for name, layers in self._corpus_frames.items()}
            raise KeyError(
                f"no {kind!r} corpus frames of layer {layer!r} for corpus {corpus!r} in "
                f"{self.path}; it has {have}"
            )
        return series

    def _series(self, kind: str, layer: str) -> _FrameSeries:
        series = self._frames.get(layer, {}).get(kind)
        if series is None:
            raise KeyError(
                f"no {kind!r} frames of layer {layer!r} in {self.path}; it has "
                f"{ {name: list(kinds) for name, kinds in self._frames.items()} }"
            )
        return series

    def __repr__(self) -> str:
        return f"RunReader({str(self.run_dir)!r}, records={self._records})"


def _newest_at(items: list, step: int | None):
    """The last-read item at or before `step` (the last read of all if None), or None."""
    if step is None:
        return items[-1] if items else None
    best = None
    for item in items:
        if item[0] <= step and (best is None or item[0] >= best[0]):
            best = item
    return best


def _read_at(file: BinaryIO, offset: int, size: int) -> bytes:
    file.seek(offset)
    data = file.read(size)
    if len(data) != size:
        raise _Incomplete
    return data
