"""The run log reader under hostile input: mutated, truncated, spliced and foreign files.

Every test here holds the reader to one promise (docs/runlog.md, "Reading and recovery rules"):
whatever bytes it is given, at once or appended piece by piece, it either returns well-formed
records or raises `RunLogError`, and it never reads (so never allocates) more than the file holds.
A truncated copy of an intact log reads exactly its complete records, checked against a model of
what was written, independent of the reader.

Hypothesis runs derandomized (a fixed seed, no example database), so the suite is deterministic.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import re
import shutil
import struct
import tarfile
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_runlog import boundaries, framed

from keras_rnnx import runlog
from keras_rnnx.runlog import (
    DTYPES,
    LOG_FILE_NAME,
    Event,
    NonFinite,
    RunLogError,
    RunReader,
    RunWriter,
)

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

INT64_MAX = (1 << 63) - 1


# ---- the logs under test: written by RunWriter from a list of operations, which also serves as
# ---- the model of what a reader must return ------------------------------------------------


def _frames_ops():
    rng = np.random.default_rng(7)
    h1 = rng.standard_normal((2, 3, 4)).astype("<f4")
    h2 = h1 * 2
    h2[1, 2, 3] = np.nan
    z = np.array([1 + 2j, np.inf], dtype="<c8")
    corpus = np.arange(12, dtype="<f2").reshape(6, 2)
    return [
        ("meta", {"model": "adding", "layers": [{"name": "lstm", "units": 4}]}),
        ("scalars", 1, {"loss": 0.75, "acc": 0.5}, "batch"),
        ("frame", "h", "lstm", 1, h1, ("batch", "time", "unit")),
        ("frame", "c", "lstm", 1, np.array([0.5, -1.0, 65504.0], "<f2"), None),
        ("frame", "grad_norm", "lstm", 1, np.array(2.5, "<f8"), ()),
        ("scalars", 0, {"loss": 0.69, "val_loss": math.nan}, "epoch"),
        ("event", "dropped_frames", {"count": 3}, 2),
        ("frame", "h", "lstm", 2, h2, ("batch", "time", "unit")),
        ("frame", "mask", "gru", 2, np.array([True, False, True, True]), None),
        ("frame", "ids", "gru", 2, np.array([[1, -2], [1 << 40, 0]], "<i8"), None),
        ("frame", "tok", "gru", 2, np.arange(5, dtype="|u1"), None),
        ("frame", "z", "gru", 3, z, None),
        ("frame", "empty", "gru", 3, np.zeros((0, 3), "<f4"), None),
        ("scalars", 2, {"loss": math.inf}, "batch"),
        ("meta", {"tokens": ["a", "b"], "model": "adding-2"}),
        ("event", "note", {}, None),
        ("corpus", "corpus", "f(é)\n#", {"window": 2}),
        ("corpus_frame", "h", "lstm", 2, corpus, "corpus"),
        ("corpus_frame", "f", "lstm", 2, 1 - corpus, "corpus"),
        ("frame", "h", "lstm", 3, h1 - 1, ("batch", "time", "unit")),
        ("corpus_frame", "h", "lstm", 3, corpus.astype("<f4") * np.nan, "corpus"),
        ("scalars", 1, {"loss": 0.6, "val_loss": 0.65}, "epoch"),
        ("end", "ok"),
    ]


def _other_ops():
    return [
        ("meta", {"model": "other"}),
        ("frame", "h", "dense", 100, np.arange(6, dtype="<u2").reshape(2, 3), None),
        ("scalars", 100, {"loss": 1.5}, "batch"),
        ("frame", "h", "dense", 101, np.arange(3, dtype="<i4"), None),
        ("event", "resume", {"truncated_bytes": 0}, None),
    ]


def write_ops(run_dir: Path, ops) -> bytes:
    """Writes `ops` with RunWriter (a magic record first) and returns the file's bytes."""
    writer = RunWriter(run_dir)
    for op in ops:
        if op[0] == "meta":
            writer.write_meta(op[1])
        elif op[0] == "scalars":
            writer.write_scalars(op[1], op[2], phase=op[3])
        elif op[0] == "frame":
            _, kind, layer, step, array, axes = op
            writer.write_frame(kind, layer, step, array, axes=axes)
        elif op[0] == "event":
            writer.write_event(op[1], op[2], step=op[3])
        elif op[0] == "corpus":
            writer.write_corpus(op[2], name=op[1], meta=op[3])
        elif op[0] == "corpus_frame":
            _, kind, layer, step, array, corpus = op
            writer.write_corpus_frame(kind, layer, step, array, corpus=corpus)
        elif op[0] == "end":
            writer.close(op[1])
    if not writer.closed:
        writer.flush()
        writer._file.close()  # a killed writer: no end record
        writer._file = None
    return (run_dir / LOG_FILE_NAME).read_bytes()


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    base = tmp_path_factory.mktemp("logs")
    main_ops, other_ops = _frames_ops(), _other_ops()
    main = write_ops(base / "main", main_ops)
    other = write_ops(base / "other", other_ops)
    assert len(boundaries(main)) == len(main_ops) + 2  # magic + ops, plus the end offset
    whole = RunReader(base / "main")
    return Logs(
        main=main, main_ops=main_ops, other=other, bounds=boundaries(main), whole_state=state(whole)
    )


class Logs(dict):
    """The reference logs, with a short repr for hypothesis' failure reports."""

    def __repr__(self) -> str:
        return f"<logs of {len(self['main'])} and {len(self['other'])} bytes>"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A run directory reused by every example of a hypothesis test (rewritten each time)."""
    return tmp_path_factory.mktemp("scratch")


def expected_state(ops, complete: int) -> dict:
    """What a reader must return for a log whose first `complete` records are whole.

    Record 0 is the magic record; record i > 0 is `ops[i - 1]`.
    """
    if complete == 0:
        return {
            "meta": {}, "scalars": {}, "frames": {}, "axes": {}, "events": [],
            "end": None, "records": 0, "nonfinite": set(), "corpora": {}, "corpus_frames": {},
        }  # fmt: skip
    meta, scalars, frames, axes, events, end = {"format_version": 1}, {}, {}, {}, [], None
    nonfinite: dict = {}
    corpora, corpus_frames = {}, {}

    def note(key, step, nan, inf):
        first, count, was_nan, was_inf = nonfinite.get(key, (step, 0, False, False))
        nonfinite[key] = (min(first, step), count + 1, was_nan or nan, was_inf or inf)

    for op in ops[: complete - 1]:
        end = None
        if op[0] == "meta":
            meta.update(op[1])
        elif op[0] == "scalars":
            _, step, values, phase = op
            for name, value in values.items():
                steps, vals = scalars.setdefault((phase, name), ([], []))
                steps.append(step)
                vals.append(float(value))
                if not math.isfinite(value):
                    note(("scalars", name, None, phase), step, math.isnan(value), math.isinf(value))
        elif op[0] == "frame":
            _, kind, layer, step, array, ax = op
            frames.setdefault((layer, kind), []).append(
                (step, array.dtype.str, array.shape, array.tobytes())
            )
            if ax is not None:
                axes[layer, kind] = tuple(ax)
            else:
                axes.setdefault((layer, kind), None)
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                note(
                    ("frame", kind, layer, None),
                    step,
                    bool(np.isnan(array).any()),
                    bool(np.isinf(array).any()),
                )
        elif op[0] == "event":
            events.append((op[1], op[3], op[2]))
        elif op[0] == "corpus":
            corpora[op[1]] = (op[2], op[3])
        elif op[0] == "corpus_frame":
            _, kind, layer, step, array, corpus = op
            corpus_frames.setdefault((corpus, layer, kind), []).append(
                (step, array.dtype.str, array.shape, array.tobytes())
            )
        elif op[0] == "end":
            end = op[1]
    return {
        "meta": meta,
        "scalars": {
            key: (steps, np.asarray(vals, np.float64).tobytes())
            for key, (steps, vals) in scalars.items()
        },
        "frames": frames,
        "axes": axes,
        "events": events,
        "end": end,
        "records": complete - 1,
        "nonfinite": {
            NonFinite(record, name, layer, phase, first, count, nan, inf)
            for (record, name, layer, phase), (first, count, nan, inf) in nonfinite.items()
        },
        "corpora": corpora,
        "corpus_frames": corpus_frames,
    }


def scalar_keys(reader: RunReader) -> list[tuple[str, str]]:
    """Every (phase, name) the reader holds.

    The public API lists names per phase, but a reader accepts any phase string, so the phases
    themselves are taken from the reader's table (a private peek, for completeness only).
    """
    keys = list(reader._scalars)
    for phase in runlog.PHASES:
        for name in reader.scalar_names(phase):
            assert (phase, name) in keys
    return keys


def state(reader: RunReader) -> dict:
    """The reader's records in the form of `expected_state` (start time and event times aside)."""
    meta = reader.meta
    meta.pop("start_time", None)
    scalars = {}
    for phase, name in scalar_keys(reader):
        steps, values = reader.scalars(name, phase)
        scalars[phase, name] = (steps.tolist(), values.tobytes())
    frames, axes = {}, {}
    for layer in reader.layers():
        for kind in reader.kinds(layer):
            frames[layer, kind] = [
                (step, array.dtype.str, array.shape, array.tobytes())
                for step, array in reader.frames(kind, layer)
            ]
            axes[layer, kind] = reader.axes(kind, layer)
    return {
        "meta": meta,
        "scalars": scalars,
        "frames": frames,
        "axes": axes,
        "events": [(e.name, e.step, e.data) for e in reader.events()],
        "end": reader.end_status,
        "records": reader.record_count,
        "nonfinite": set(reader.nonfinite()),
        "corpora": {
            name: (reader.corpus(name).text, reader.corpus(name).meta)
            for name in reader.corpora()
            if name in reader._corpora  # a corpus with frames but no (intact) text record
        },
        "corpus_frames": {
            (name, layer, kind): [
                (step, array.dtype.str, array.shape, array.tobytes())
                for step, array in reader.corpus_frames(kind, layer, name)
            ]
            for name in reader.corpora()
            for layer in reader.corpus_layers(name)
            for kind in reader.corpus_kinds(layer, name)
        },
    }


# ---- what "well-formed" means -----------------------------------------------------------------


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_step(value) -> bool:
    return _is_int(value) and 0 <= value <= INT64_MAX


def _is_time(value) -> bool:
    return value is None or (isinstance(value, float))


def check_well_formed(reader: RunReader, size: int) -> None:
    """Calls every accessor of `reader`, asking only for names it lists, and checks the answers.

    Raises nothing but AssertionError (a broken promise) or RunLogError (allowed): a KeyError or
    any other exception from an accessor fails the test.
    """
    meta = reader.meta
    assert isinstance(meta, dict)
    if meta:
        assert reader.format_version == meta["format_version"] == runlog.FORMAT_VERSION
        start = meta["start_time"]
        assert start is None or (isinstance(start, (int, float)) and not isinstance(start, bool))
    else:
        assert reader.format_version is None
    assert isinstance(reader.problems, list)
    assert all(isinstance(p, str) and p for p in reader.problems)
    assert _is_int(reader.record_count) and reader.record_count >= 0
    assert _is_int(reader.bytes_read) and 0 <= reader.bytes_read <= size
    assert isinstance(reader.finished, bool)
    assert reader.finished == (reader.end_status is not None)
    assert reader.end_status is None or isinstance(reader.end_status, str)

    for phase, name in scalar_keys(reader):
        assert isinstance(phase, str) and phase and isinstance(name, str) and name
        steps, values = reader.scalars(name, phase)
        assert steps.dtype == np.int64 and values.dtype == np.float64
        assert steps.ndim == values.ndim == 1 and steps.shape == values.shape
        assert (steps >= 0).all()
    for phase in (None, *runlog.PHASES):
        assert all(isinstance(n, str) and n for n in reader.scalar_names(phase))

    layers = reader.layers()
    assert all(isinstance(layer, str) and layer for layer in layers)
    all_kinds = reader.kinds()
    for layer in layers:
        kinds = reader.kinds(layer)
        assert kinds and all(isinstance(k, str) and k and k in all_kinds for k in kinds)
        for kind in kinds:
            frames = reader.frames(kind, layer)
            count = reader.frame_count(kind, layer)
            assert _is_int(count) and 1 <= count and len(frames) <= count
            assert frames, "a series that exists keeps its newest frame"
            if reader.max_frames is not None:
                assert len(frames) <= reader.max_frames
            for step, array in frames:
                assert _is_step(step)
                assert isinstance(array, np.ndarray) and array.dtype.str in DTYPES
                assert not array.flags.writeable
                assert array.nbytes == math.prod(array.shape) * array.dtype.itemsize
            newest = reader.frame_at(kind, layer)
            assert newest is not None and newest[0] == frames[-1][0]
            assert newest[1] is frames[-1][1]
            first = reader.frame_at(kind, layer, step=frames[0][0])
            assert first is not None and first[0] == frames[0][0]
            axes = reader.axes(kind, layer)
            assert axes is None or (
                isinstance(axes, tuple) and all(isinstance(a, str) for a in axes)
            )
            if axes is not None and reader.max_frames is None:
                assert len(axes) in {array.ndim for _, array in frames}, "one name per axis"
            steps = reader.steps(kind, layer)
            assert steps.dtype == np.int64
            assert steps.tolist() == sorted({step for step, _ in frames})
    steps = reader.steps()
    assert steps.dtype == np.int64 and steps.ndim == 1
    assert (np.diff(steps) > 0).all()

    for name in reader.corpora():
        assert isinstance(name, str) and name
        try:
            corpus = reader.corpus(name)
        except KeyError:
            corpus = None  # frames whose text record was lost
        if corpus is not None:
            assert corpus.name == name and isinstance(corpus.text, str)
            assert 1 <= len(corpus.text) <= runlog.MAX_CORPUS_CHARACTERS
            assert isinstance(corpus.meta, dict) and _is_time(corpus.time)
        for layer in reader.corpus_layers(name):
            assert isinstance(layer, str) and layer
            for kind in reader.corpus_kinds(layer, name):
                frames = reader.corpus_frames(kind, layer, name)
                assert frames and len(frames) <= reader.corpus_frame_count(kind, layer, name)
                if reader.max_corpus_frames is not None:
                    assert len(frames) <= reader.max_corpus_frames
                for step, array in frames:
                    assert _is_step(step) and array.ndim == 2 and array.dtype.kind == "f"
                    assert not array.flags.writeable
                newest = reader.corpus_frame_at(kind, layer, corpus=name)
                assert newest is not None and newest[1] is frames[-1][1]
        steps = reader.corpus_steps(name)
        assert steps.dtype == np.int64 and (np.diff(steps) > 0).all()

    for event in reader.events():
        assert isinstance(event, Event)
        assert isinstance(event.name, str) and event.name
        assert event.step is None or _is_step(event.step)
        assert _is_time(event.time), event.time
        assert isinstance(event.data, dict)
        assert event in reader.events(event.name)

    found = reader.nonfinite()
    assert [n.first_step for n in found] == sorted(n.first_step for n in found)
    for item in found:
        assert isinstance(item, NonFinite) and item.record in ("frame", "scalars")
        assert _is_step(item.first_step) and item.count >= 1 and (item.nan or item.inf)
        assert isinstance(str(item), str)
    repr(reader)


@contextlib.contextmanager
def reads_stay_within_the_file(path: Path):
    """Fails if the reader asks for more bytes at once than the file holds (no giant reads)."""
    original = runlog._read_at

    def checked(file, offset, size):
        limit = os.fstat(file.fileno()).st_size
        assert 0 <= size <= limit, f"asked to read {size} bytes of a {limit}-byte file"
        assert offset >= 0
        return original(file, offset, size)

    runlog._read_at = checked
    try:
        yield
    finally:
        runlog._read_at = original


def read_whole(run_dir: Path, data: bytes, max_frames=None):
    """Writes `data` as the run's log and reads it: the reader, or None after RunLogError."""
    path = run_dir / LOG_FILE_NAME
    path.write_bytes(data)
    try:
        with reads_stay_within_the_file(path):
            reader = RunReader(run_dir, max_frames=max_frames, max_corpus_frames=max_frames)
            reader.refresh()
            check_well_formed(reader, len(data))
            assert reader.refresh() == 0  # nothing new: nothing read twice
            check_well_formed(reader, len(data))
    except RunLogError as error:
        assert str(path) in str(error)
        return None
    return reader


def read_in_chunks(run_dir: Path, data: bytes, cuts, max_frames=None, on_refresh=None):
    """Appends `data` to an empty log piece by piece, refreshing (and checking) after each."""
    path = run_dir / LOG_FILE_NAME
    path.write_bytes(b"")
    try:
        with reads_stay_within_the_file(path):
            reader = RunReader(run_dir, max_frames=max_frames, max_corpus_frames=max_frames)
            check_well_formed(reader, 0)
            done, sizes = 0, iter(cuts)
            while done < len(data):
                size = next(sizes, None) or len(data) - done
                with open(path, "ab") as file:
                    file.write(data[done : done + size])
                done = min(len(data), done + size)
                reader.refresh()
                check_well_formed(reader, done)
                if on_refresh is not None:
                    on_refresh(reader, done)
            reader.refresh()
            check_well_formed(reader, len(data))
    except RunLogError as error:
        assert str(path) in str(error)
        return None
    return reader


# ---- mutations ------------------------------------------------------------------------------

HUGE_LENGTHS = [
    0, 1, 5, 6, 7, 1 << 16, (1 << 30) - 1, 1 << 30, (1 << 30) + 1, 1 << 31, 1 << 32,
    1 << 40, 1 << 62, 1 << 63, (1 << 64) - 1,
]  # fmt: skip

positions = st.integers(0, 1 << 20)
garbage = st.one_of(
    st.binary(min_size=1, max_size=64),
    st.integers(1, 300).map(bytes),  # zeros, as a crash leaves them
    st.binary(min_size=1, max_size=4).map(lambda b: b * 40),
)

mutations = st.one_of(
    st.tuples(st.just("flip"), positions, st.integers(1, 255)),
    st.tuples(st.just("truncate"), positions),
    st.tuples(st.just("insert"), positions, garbage),
    st.tuples(st.just("delete"), positions, st.integers(1, 80)),
    st.tuples(st.just("duplicate"), positions, st.integers(1, 400), positions),
    st.tuples(
        st.just("length"),
        st.integers(0, 40),
        st.one_of(st.sampled_from(HUGE_LENGTHS), st.integers(0, (1 << 64) - 1)),
        st.booleans(),
    ),
    st.tuples(st.just("length-near-end"), st.integers(0, 40), st.integers(-20, 20), st.booleans()),
    st.tuples(st.just("payload"), st.integers(0, 40), positions, st.integers(1, 255)),
    st.tuples(st.just("splice"), positions, positions, st.booleans()),
    st.tuples(st.just("prepend"), garbage),
    st.tuples(st.just("replace"), st.binary(max_size=200)),
    st.tuples(st.just("replace-zero-led"), st.binary(max_size=200)),
)


def _set_length(data: bytes, at: int, length: int, fix_crc: bool) -> bytes:
    if at + 12 > len(data):
        return data
    field = struct.pack("<Q", length)
    crc = struct.pack("<I", zlib.crc32(field)) if fix_crc else data[at + 8 : at + 12]
    return data[:at] + field + crc + data[at + 12 :]


def mutate(data: bytes, op, bounds: list[int], other: bytes) -> bytes:
    """Applies one mutation; positions are taken modulo the current size."""
    kind, args = op[0], op[1:]
    n = len(data)
    if kind == "flip":
        if n:
            at = args[0] % n
            data = data[:at] + bytes([data[at] ^ args[1]]) + data[at + 1 :]
    elif kind == "truncate":
        data = data[: args[0] % (n + 1)]
    elif kind == "insert":
        at = args[0] % (n + 1)
        data = data[:at] + args[1] + data[at:]
    elif kind == "delete":
        at = args[0] % (n + 1)
        data = data[:at] + data[at + args[1] :]
    elif kind == "duplicate":
        start = args[0] % (n + 1)
        chunk = data[start : start + args[1]]
        at = args[2] % (n + 1)
        data = data[:at] + chunk + data[at:]
    elif kind == "length":  # a record's length field, with or without a matching checksum
        at = bounds[args[0] % (len(bounds) - 1)]
        data = _set_length(data, at, args[1], args[2])
    elif kind == "length-near-end":  # a length that ends just before, at or past the end
        at = bounds[args[0] % (len(bounds) - 1)]
        data = _set_length(data, at, max(0, n - at - 16 + args[1]), args[2])
    elif kind == "payload":  # content damage behind valid checksums: exercises rule 5
        at = bounds[args[0] % (len(bounds) - 1)]
        if at + 12 <= n:
            (length,) = struct.unpack_from("<Q", data, at)
            if 6 <= length and at + 16 + length <= n:
                i = at + 12 + args[1] % length
                payload = bytearray(data[at + 12 : at + 12 + length])
                payload[i - at - 12] ^= args[2]
                crc = struct.pack("<I", zlib.crc32(payload))
                data = data[: at + 12] + bytes(payload) + crc + data[at + 16 + length :]
    elif kind == "splice":  # the start of one log with the end of another
        i, j = args[0] % (n + 1), args[1] % (len(other) + 1)
        data = data[:i] + other[j:] if args[2] else other[:j] + data[i:]
    elif kind == "prepend":
        data = args[0] + data
    elif kind == "replace":
        data = args[0]
    elif kind == "replace-zero-led":  # random bytes that pass the first-bytes test
        data = args[0][:2] + bytes(6) + args[0][2:]
    return data


# ---- 1. fuzzing ------------------------------------------------------------------------------


@FUZZ
@given(
    ops=st.lists(mutations, min_size=1, max_size=4),
    max_frames=st.sampled_from([None, None, 1, 3]),
)
def test_a_mutated_log_reads_as_records_or_raises_run_log_error(logs, scratch, ops, max_frames):
    data = logs["main"]
    for op in ops:
        data = mutate(data, op, logs["bounds"], logs["other"])
    read_whole(scratch, data, max_frames)


@FUZZ
@given(
    ops=st.lists(mutations, min_size=0, max_size=3),
    cuts=st.lists(st.integers(1, 700), min_size=1, max_size=12),
    max_frames=st.sampled_from([None, 2]),
)
def test_a_mutated_log_appended_in_pieces_reads_as_records_or_raises(
    logs, scratch, ops, cuts, max_frames
):
    data = logs["main"]
    for op in ops:
        data = mutate(data, op, logs["bounds"], logs["other"])
    read_in_chunks(scratch, data, cuts, max_frames)


def test_an_intact_log_reads_as_written(logs, tmp_path):
    whole = read_whole(tmp_path, logs["main"])
    assert state(whole) == expected_state(logs["main_ops"], len(logs["bounds"]) - 1)
    assert whole.problems == [] and whole.bytes_read == len(logs["main"])
    assert whole.finished and whole.end_status == "ok"


@settings(FUZZ, max_examples=50)
@given(cuts=st.lists(st.integers(1, 900), min_size=1, max_size=15))
def test_an_intact_log_appended_in_pieces_ends_as_if_read_at_once(logs, scratch, cuts):
    bounds = logs["bounds"]

    def torn_tail_is_silent(reader, size):
        assert reader.problems == []
        assert reader.bytes_read == max(b for b in bounds if b <= size)
        assert reader.record_count == max(0, sum(1 for b in bounds[1:] if b <= size) - 1)

    pieces = read_in_chunks(scratch, logs["main"], cuts, on_refresh=torn_tail_is_silent)
    assert pieces is not None
    assert state(pieces) == logs["whole_state"]  # as if read at once (the test above)
    assert pieces.problems == [] and pieces.bytes_read == len(logs["main"])
    assert pieces.finished and pieces.end_status == "ok"


# Records with valid checksums and damaged content. Byte flips rarely get past the checksums, so
# the content checks (rule 5) are fuzzed here with records that are valid except for a few
# faults: a field given a hostile value or removed, a bad dtype or shape, data of the wrong size,
# a header that is not JSON or whose declared length is wrong, a payload too short to be one.

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 70), 1 << 70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)
# values a field of the wrong type or range may hold (NaN included: json.loads accepts it)
HOSTILE = [INT64_MAX + 1, 1 << 64, 10**400, -1, True, None, 1.5, math.nan, "x", "", [], {}, ["a"]]
# shapes that hold no data but cannot be arrays, or that have more axes than NumPy allows
HOSTILE_SHAPES = [[0, 1 << 63], [1 << 64, 0], [0, 10**30, 10**30], [1] * 65, [0] * 80, [-1], [True]]
HOSTILE_DTYPES = [">f4", "|O", "<U3", "<f16", "float32", 4]
TIME = 1.5e9
BROKEN_ARRAYS = (
    [("data", 1)]
    + [("set", "dtype", value) for value in HOSTILE_DTYPES]
    + [(fault, shape) for fault in ("shape", "empty-shape") for shape in HOSTILE_SHAPES]
)

TEMPLATES = {
    "frame": (
        {"type": "frame", "kind": "h", "layer": "lstm", "step": 3, "axes": ["batch", "unit"]},
        np.arange(6, dtype="<f4").reshape(2, 3),
    ),
    "scalars": (
        {"type": "scalars", "step": 3, "phase": "epoch", "names": ["loss", "acc"]},
        np.array([0.5, np.nan]),
    ),
    "meta": ({"type": "meta", "meta": {"a": 1}}, None),
    "event": ({"type": "event", "name": "dropped_frames", "step": 3, "data": {"count": 1}}, None),
    "end": ({"type": "end", "status": "ok"}, None),
    "magic": ({"type": "magic", "format": "keras-rnnx-runlog", "version": 1}, None),
    "other": ({"type": "histogram", "bins": [1, 2]}, None),
    "corpus": (
        {"type": "corpus", "name": "corpus", "characters": 3, "meta": {"window": 2}},
        np.frombuffer("a(é".encode(), "|u1"),
    ),
    "corpus_frame": (
        {"type": "corpus_frame", "corpus": "c", "kind": "h", "layer": "lstm", "step": 3,
         "axes": ["char", "unit"]},
        np.arange(6, dtype="<f4").reshape(3, 2),
    ),
}


def single_faults(kind: str) -> list:
    """Every single fault of a record of `kind`: the exhaustive sweep below reads each one."""
    header, array = TEMPLATES[kind]
    keys = ["time", *header] + (["dtype", "shape"] if array is not None else [])
    faults = [("none",)]
    faults += [("set", key, value) for key in keys for value in HOSTILE]
    faults += [("delete", key) for key in keys]
    faults += [("set", "axes", axes) for axes in ([], ["batch"], ["a", "b", "c"], [1, 2])]
    faults += [("set", "dtype", dtype) for dtype in HOSTILE_DTYPES]
    # a hostile shape with the data unchanged, or with no data (then the size check passes)
    faults += [(fault, shape) for fault in ("shape", "empty-shape") for shape in HOSTILE_SHAPES]
    faults += [("empty-shape", [0, 3]), ("empty-shape", [3, 0, 5])]  # valid empty arrays
    faults += [("set", "dtype", "<f4"), ("set", "shape", [2])]  # an array where none belongs
    faults += [("data", -1), ("data", 1), ("not-json", 0), ("not-json", 9)]
    faults += [("header-length", n) for n in (0, 1, -1, 1 << 20, (1 << 20) + 1, (1 << 32) - 1)]
    faults += [("short", n) for n in range(6)]
    return faults


def crafted_payload(kind: str, faults) -> bytes:
    """The payload of the `kind` template with `faults` applied (see `single_faults`)."""
    header, array = TEMPLATES[kind]
    header = {**header, "time": TIME}
    data = b""
    if array is not None:
        header.update(dtype=array.dtype.str, shape=list(array.shape))
        data = array.tobytes()
    framing = []
    for fault in faults:
        if fault[0] == "set":
            header[fault[1]] = fault[2]
        elif fault[0] == "delete":
            header.pop(fault[1], None)
        elif fault[0] == "shape":
            header["shape"] = fault[1]
        elif fault[0] == "empty-shape":
            header.update(shape=fault[1], dtype=header.get("dtype", "<f4"))
            data = b""
        elif fault[0] == "data":
            data = data[: len(data) + fault[1]] if fault[1] < 0 else data + bytes(fault[1])
        elif fault[0] != "none":
            framing.append(fault)
    text = json.dumps(header).encode()  # NaN is written as NaN, which json.loads accepts
    header_length = len(text)
    payload = None
    for fault, n in framing:
        if fault == "not-json":
            text = text[: n % max(1, len(text))]
            header_length = len(text)
        elif fault == "header-length":
            header_length = (len(text) + len(data) + 1 if n == -1 else n) % (1 << 32)
        elif fault == "short":
            payload = n
    out = struct.pack("<I", header_length) + text + data
    return out if payload is None else out[:payload]


@st.composite
def crafted_records(draw):
    """The payload of a record with up to three faults, drawn from those of `single_faults`."""
    kind = draw(st.sampled_from(sorted(TEMPLATES)))
    options = single_faults(kind)
    faults = draw(st.lists(st.sampled_from(options), max_size=3))
    if draw(st.integers(0, 3)) == 0:  # a field holding any JSON value at all
        key = draw(st.sampled_from(["time", *TEMPLATES[kind][0], "dtype", "shape"]))
        faults.append(("set", key, draw(json_values)))
    return crafted_payload(kind, faults)


def sentinel() -> bytes:
    array = np.array([42], "<i4")
    header = {"type": "frame", "kind": "h", "layer": "sentinel", "step": 7, "time": 1.0}
    header.update(dtype="<i4", shape=[1])
    head = json.dumps(header).encode()
    return framed(struct.pack("<I", len(head)) + head + array.tobytes())


@settings(FUZZ, max_examples=150)
@given(payloads=st.lists(crafted_records(), min_size=1, max_size=4))
def test_records_with_valid_checksums_and_arbitrary_content_are_read_or_skipped(
    logs, scratch, payloads
):
    head = logs["main"][: logs["bounds"][2]]  # magic and meta
    data = head + b"".join(framed(p) for p in payloads) + sentinel()
    reader = read_whole(scratch, data)
    assert reader is not None, "a bad record after an intact magic record is skipped, not fatal"
    # each bad record is skipped, so the one after them is read
    assert reader.frames("h", "sentinel")[-1][0] == 7
    assert reader.frames("h", "sentinel")[-1][1].tolist() == [42]
    assert reader.bytes_read == len(data)
    # every record is read or reported; a run of records too short to have a valid length is
    # skipped as one byte range (rule 4 scans past all of it)
    runs = sum(
        1 for i, p in enumerate(payloads) if len(p) < 6 and (i == 0 or len(payloads[i - 1]) >= 6)
    )
    assert (
        reader.record_count + len(reader.problems) == sum(len(p) >= 6 for p in payloads) + runs + 2
    )
    chunks = read_in_chunks(scratch, data, [len(head), 9, 5, 100])
    assert chunks is not None and state(chunks) == state(reader)
    assert chunks.problems == reader.problems


@settings(FUZZ, max_examples=100)
@given(payload=crafted_records())
def test_an_arbitrary_first_record_reads_or_raises_run_log_error(scratch, payload):
    data = framed(payload) + sentinel()
    reader = read_whole(scratch, data)
    if reader is not None:
        assert reader.format_version == 1 and reader.frames("h", "sentinel")[0][0] == 7


def read_single_fault(run_dir: Path, head: bytes, kind: str, fault) -> RunReader | None:
    payload = crafted_payload(kind, [fault])
    data = head + framed(payload) + sentinel()
    try:
        reader = read_whole(run_dir, data)
    except BaseException as error:
        raise AssertionError(f"{kind} record with fault {fault!r}: {error!r}") from error
    return reader


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_every_single_fault_in_a_record_is_read_or_skipped(logs, tmp_path, kind):
    """Exhaustive where the fuzzing above samples: each fault of `single_faults`, on its own."""
    head = logs["main"][: logs["bounds"][2]]  # magic and meta
    for fault in single_faults(kind):
        reader = read_single_fault(tmp_path, head, kind, fault)
        assert reader is not None, fault
        assert reader.frames("h", "sentinel")[-1][0] == 7, fault
        assert reader.record_count + len(reader.problems) == 3, (fault, reader.problems)
        if fault == ("none",):
            assert reader.problems == [] and reader.record_count == 3
        if fault[0] in ("not-json", "header-length", "short") or fault in BROKEN_ARRAYS:
            assert len(reader.problems) == 1, (fault, reader.problems)  # skipped, and said so


def test_every_single_fault_in_the_first_record_is_read_or_raises(logs, tmp_path):
    for fault in single_faults("magic"):
        reader = read_single_fault(tmp_path, b"", "magic", fault)
        if reader is not None:
            assert reader.format_version == 1 and reader.problems == [], fault


# ---- 1b. memory stays bounded by the file ----------------------------------------------------


@pytest.mark.parametrize(
    "length", [1 << 29, (1 << 30) - 1, 1 << 30, (1 << 30) + 1, 1 << 40, (1 << 64) - 1]
)
@pytest.mark.parametrize("fix_crc", [True, False])
def test_a_huge_declared_length_never_allocates_it(logs, tmp_path, length, fix_crc):
    bounds = logs["bounds"]
    size = len(logs["main"])
    for index, at in enumerate(bounds[1:-1], start=1):  # every record but the magic one
        data = _set_length(logs["main"], at, length, fix_crc)
        run = tmp_path / str(index)
        run.mkdir()
        (run / LOG_FILE_NAME).write_bytes(data)
        tracemalloc.start()
        try:
            with reads_stay_within_the_file(run / LOG_FILE_NAME):
                reader = RunReader(run)
                reader.refresh()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # the read buffer (1 MiB) and a scan chunk at most the file's size, never `length`
        assert peak < (2 << 20) + 64 * size, (index, peak)
        check_well_formed(reader, size)
        # the records before the damaged one are all there
        assert reader.record_count >= index - 1


def test_a_huge_first_record_length_never_allocates_it(tmp_path):
    for length in (1 << 16, 1 << 30, 1 << 40, (1 << 64) - 1):
        data = _set_length(bytes(64), 0, length, True)
        (tmp_path / LOG_FILE_NAME).write_bytes(data)
        tracemalloc.start()
        try:
            with pytest.raises(RunLogError, match="not a keras-rnnx run log"):
                RunReader(tmp_path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 2 << 20


# ---- 2. foreign files ------------------------------------------------------------------------


def png_bytes() -> bytes:
    """A real 2x2 RGB PNG, encoded by hand."""

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    rows = b"\x00" + b"\xff\x00\x00" * 2 + b"\x00" + b"\x00\x00\xff" * 2
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def zip_bytes(log: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(LOG_FILE_NAME, log)
    return buffer.getvalue()


def tar_bytes(log: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(LOG_FILE_NAME)
        info.size = len(log)
        archive.addfile(info, io.BytesIO(log))
    return buffer.getvalue()


def npy_bytes() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.arange(12, dtype="<f4").reshape(3, 4))
    return buffer.getvalue()


FOREIGN = {
    "png": lambda log: png_bytes(),
    "png-head": lambda log: png_bytes()[:64],
    "json": lambda log: json.dumps({"type": "magic", "format": "keras-rnnx-runlog"}).encode(),
    "zip": zip_bytes,
    "gzip": lambda log: gzip.compress(log, mtime=0),
    "tar": tar_bytes,
    "npy": lambda log: npy_bytes(),
    "random": lambda log: np.random.default_rng(11).bytes(3000),
    "utf16-text": lambda log: "loss,val_loss\n".encode("utf-16"),
}


@pytest.mark.parametrize("name", list(FOREIGN))
def test_a_foreign_file_raises_run_log_error_naming_it(logs, tmp_path, name):
    content = FOREIGN[name](logs["main"])
    if name == "png":
        assert content.startswith(b"\x89PNG\r\n\x1a\n") and content.endswith(b"IEND\xaeB`\x82")
    path = tmp_path / LOG_FILE_NAME
    path.write_bytes(content)
    for target in (tmp_path, path):
        with pytest.raises(RunLogError, match=re.escape(str(path))):
            RunReader(target)
    with pytest.raises(RunLogError, match=re.escape(str(path))):
        RunWriter(tmp_path, resume=True)
    assert path.read_bytes() == content  # a writer never touches what it cannot read

    # a foreign file being copied into place is recognised as soon as its first bytes arrive
    path.write_bytes(b"")
    reader = RunReader(tmp_path)
    with pytest.raises(RunLogError, match=re.escape(str(path))):
        for size in range(1, len(content) + 1):
            with open(path, "ab") as file:
                file.write(content[size - 1 : size])
            reader.refresh()
    assert size <= 8


# ---- 3. truncated copies ---------------------------------------------------------------------


def test_a_truncated_copy_reads_exactly_the_complete_records(logs, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / LOG_FILE_NAME).write_bytes(logs["main"])
    bounds = logs["bounds"]
    size = bounds[-1]
    cuts = set(bounds)
    for start, end in zip(bounds, bounds[1:]):
        length = end - start - 16
        cuts.update(start + d for d in (1, 2, 7, 8, 11, 12, 13, 16, 12 + length // 2))
        cuts.update(end - d for d in (1, 3, 4, 5))
    copy = tmp_path / "copy"
    copy.mkdir()
    full = None
    for cut in sorted(c for c in cuts if 0 <= c <= size):
        shutil.copyfile(source / LOG_FILE_NAME, copy / LOG_FILE_NAME)
        os.truncate(copy / LOG_FILE_NAME, cut)
        complete = sum(1 for end in bounds[1:] if end <= cut)
        with reads_stay_within_the_file(copy / LOG_FILE_NAME):
            reader = RunReader(copy)
        check_well_formed(reader, cut)
        assert state(reader) == expected_state(logs["main_ops"], complete), cut
        assert reader.problems == [], cut
        assert reader.bytes_read == (bounds[complete] if complete else 0), cut
        assert reader.finished == (cut == size)
        # the rest arrives (rsync goes on): the copy then reads as the original
        with open(copy / LOG_FILE_NAME, "ab") as file:
            file.write(logs["main"][cut:])
        assert reader.refresh() == len(bounds) - 2 - max(0, complete - 1)
        full = full or state(RunReader(source))
        assert state(reader) == full and reader.problems == []
    assert full == expected_state(logs["main_ops"], len(bounds) - 1)


def test_a_copy_of_a_killed_run_reads_all_its_records(tmp_path):
    """A run without an end record, copied mid-record: everything complete, not finished."""
    ops = _frames_ops()[:-1]
    data = write_ops(tmp_path / "run", ops)
    bounds = boundaries(data)
    for cut in (bounds[-1], bounds[-2] + 20, bounds[-2] + 5):
        copy = tmp_path / f"copy{cut}"
        shutil.copytree(tmp_path / "run", copy)
        os.truncate(copy / LOG_FILE_NAME, cut)
        reader = RunReader(copy)
        complete = sum(1 for end in bounds[1:] if end <= cut)
        assert state(reader) == expected_state(ops, complete)
        assert not reader.finished and reader.problems == []


# ---- regressions found by the fuzzing above ---------------------------------------------------


def test_the_writer_refuses_steps_a_reader_cannot_keep(tmp_path):
    with RunWriter(tmp_path) as writer:
        writer.write_scalars(INT64_MAX, {"loss": 1.0}, phase="batch")
        for call in (
            lambda: writer.write_scalars(INT64_MAX + 1, {"loss": 1.0}, phase="batch"),
            lambda: writer.write_frame("h", "lstm", 1 << 64, np.zeros(2)),
            lambda: writer.write_event("note", step=1 << 63),
        ):
            with pytest.raises(ValueError, match="`step`.*below 2\\*\\*63"):
                call()
    np.testing.assert_array_equal(RunReader(tmp_path).scalars("loss", "batch")[0], [INT64_MAX])
