"""The run log: round trips, tailing, torn and corrupt records, foreign files, memory bounds.

Records crafted by hand here follow docs/runlog.md, not the module's encoder, so these tests also
check that the module writes and reads the documented layout.
"""

import json
import os
import re
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from keras_rnnx import runlog
from keras_rnnx.runlog import LOG_FILE_NAME, RunLogError, RunReader, RunWriter

DOCS = Path(__file__).resolve().parents[1] / "docs" / "runlog.md"


def framed(payload: bytes) -> bytes:
    """A payload framed as the documented byte layout says: length, crc, payload, crc."""
    length = struct.pack("<Q", len(payload))
    return (
        length
        + struct.pack("<I", zlib.crc32(length))
        + payload
        + struct.pack("<I", zlib.crc32(payload))
    )


def record(header: dict, data: bytes = b"") -> bytes:
    """One framed record, built from the documented byte layout."""
    head = json.dumps(header).encode()
    return framed(struct.pack("<I", len(head)) + head + data)


def magic(version: int = 1) -> bytes:
    return record({"type": "magic", "format": "keras-rnnx-runlog", "version": version, "time": 1.0})


def frame_record(step: int, value: float, layer: str = "lstm") -> bytes:
    array = np.full((2, 3), value, dtype="<f4")
    header = {"type": "frame", "kind": "h", "layer": layer, "step": step}
    return record({**header, "dtype": "<f4", "shape": [2, 3]}, array.tobytes())


def boundaries(data: bytes) -> list[int]:
    """Start offsets of the records of an intact log, plus its end."""
    starts, pos = [], 0
    while pos < len(data):
        starts.append(pos)
        pos += 16 + struct.unpack_from("<Q", data, pos)[0]
    assert pos == len(data)
    return starts + [pos]


def write_log(run_dir: Path, data: bytes) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOG_FILE_NAME
    path.write_bytes(data)
    return path


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as file:
        file.write(data)


def frame_steps_and_values(reader: RunReader, kind="h", layer="lstm"):
    frames = reader.frames(kind, layer)
    return [step for step, _ in frames], [float(array.flat[0]) for _, array in frames]


# ---- round trips -----------------------------------------------------------------------------


def test_round_trip_of_meta_scalars_frames_and_events(tmp_path):
    meta = {
        "model": "Sequential",
        "layers": [
            {
                "name": "lstm",
                "cell": "ForgetGateLSTMCell",
                "units": 3,
                "gates": ["i", "f", "z", "o"],
            }
        ],
        "probe_batch_shape": [2, 5, 1],
    }
    rng = np.random.default_rng(0)
    h = rng.standard_normal((2, 5, 3)).astype(np.float32)
    gate = rng.random((2, 5, 3))
    with RunWriter(tmp_path, meta=meta) as writer:
        writer.write_meta({"tokens": ["a", "b", "c", "d", "e"], "keras": "3.15.1"})
        writer.write_scalars(0, {"loss": 0.75, "val_loss": 0.8}, phase="epoch")
        writer.write_scalars(1, {"loss": 0.5, "val_loss": 0.625}, phase="epoch")
        writer.write_scalars(10, {"loss": 0.7}, phase="batch")
        writer.write_scalars(20, {"loss": 0.6}, phase="batch")
        writer.write_frame("h", "lstm", 10, h, axes=("batch", "time", "unit"))
        writer.write_frame("f", "lstm", 10, gate)
        writer.write_frame("grad_norm", "dense", 20, np.float32(2.5))
        writer.write_event("dropped_frames", {"count": 3}, step=20)

    reader = RunReader(tmp_path)
    assert reader.meta["layers"] == meta["layers"]
    assert reader.meta["probe_batch_shape"] == [2, 5, 1]
    assert reader.meta["tokens"] == ["a", "b", "c", "d", "e"]
    assert reader.meta["format_version"] == 1
    assert abs(reader.meta["start_time"] - os.path.getmtime(reader.path)) < 60

    steps, values = reader.scalars("loss", phase="epoch")
    np.testing.assert_array_equal(steps, [0, 1])
    np.testing.assert_array_equal(values, [0.75, 0.5])
    assert steps.dtype == np.int64 and values.dtype == np.float64
    np.testing.assert_array_equal(reader.scalars("val_loss")[1], [0.8, 0.625])
    np.testing.assert_array_equal(reader.scalars("loss", phase="batch")[0], [10, 20])
    np.testing.assert_array_equal(reader.scalars("loss", phase="batch")[1], [0.7, 0.6])
    assert reader.scalar_names("epoch") == ["loss", "val_loss"]
    assert reader.scalar_names("batch") == ["loss"]
    with pytest.raises(KeyError, match="val_loss"):
        reader.scalars("val_loss", phase="batch")

    assert reader.layers() == ["lstm", "dense"]
    assert reader.kinds("lstm") == ["h", "f"]
    assert reader.kinds() == ["h", "f", "grad_norm"]
    [(step, got)] = reader.frames("h", "lstm")
    assert step == 10 and got.dtype == np.float32
    np.testing.assert_array_equal(got, h)
    assert reader.axes("h", "lstm") == ("batch", "time", "unit")
    assert reader.axes("f", "lstm") is None
    np.testing.assert_array_equal(reader.frames("f", "lstm")[0][1], gate)
    [(step, norm)] = reader.frames("grad_norm", "dense")
    assert step == 20 and norm.shape == () and norm == np.float32(2.5)
    np.testing.assert_array_equal(reader.steps(), [10, 20])
    np.testing.assert_array_equal(reader.steps(layer="lstm"), [10])

    [event] = reader.events()
    assert (event.name, event.step, event.data) == ("dropped_frames", 20, {"count": 3})
    assert reader.events("other") == []
    assert reader.problems == []
    assert reader.finished and reader.end_status == "ok"
    assert reader.record_count == 11  # 2 meta, 4 scalars, 3 frames, 1 event, 1 end


def test_frames_of_every_allowed_dtype_and_several_shapes_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    shapes = [(), (0,), (7,), (2, 3, 4), (1, 0, 5)]
    written = {}
    with RunWriter(tmp_path) as writer:
        for dtype in runlog.DTYPES:
            for shape in shapes:
                values = rng.standard_normal(shape) * 100
                if np.dtype(dtype).kind == "c":
                    values = values + 1j * rng.standard_normal(shape)
                array = values.astype(np.dtype(dtype))
                kind = f"{np.dtype(dtype).name}{list(shape)}"
                writer.write_frame(kind, "layer", 3, array)
                written[kind] = array
    reader = RunReader(tmp_path)
    assert reader.kinds("layer") == list(written)
    for kind, array in written.items():
        [(step, got)] = reader.frames(kind, "layer")
        assert step == 3
        assert got.dtype == array.dtype and got.shape == array.shape, kind
        np.testing.assert_array_equal(got, array)
        assert not got.flags.writeable


def test_big_endian_and_strided_arrays_are_stored_little_endian_in_c_order(tmp_path):
    big = np.arange(6, dtype=">i4").reshape(2, 3)
    strided = np.arange(24, dtype=np.float64).reshape(4, 6)[::2, ::3].T
    with RunWriter(tmp_path) as writer:
        writer.write_frame("big", "l", 0, big)
        writer.write_frame("strided", "l", 0, strided)
    reader = RunReader(tmp_path)
    got_big = reader.frames("big", "l")[0][1]
    assert got_big.dtype.str == "<i4"
    np.testing.assert_array_equal(got_big, [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(reader.frames("strided", "l")[0][1], [[0, 12], [3, 15]])
    # the bytes on disk: the big-endian 5 is little-endian now
    assert struct.pack("<6i", 0, 1, 2, 3, 4, 5) in reader.path.read_bytes()


def test_file_starts_with_the_documented_magic_record(tmp_path):
    RunWriter(tmp_path).close()
    data = (tmp_path / LOG_FILE_NAME).read_bytes()
    starts = boundaries(data)
    (length,) = struct.unpack_from("<Q", data)
    header_length = struct.unpack_from("<I", data, 12)[0]
    header = json.loads(data[16 : 16 + header_length])
    assert header["type"] == "magic" and header["format"] == "keras-rnnx-runlog"
    assert header["version"] == runlog.FORMAT_VERSION == 1
    assert len(starts) == 3  # magic, end, file end
    assert json.loads(data[starts[1] + 16 : -4])["status"] == "ok"


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda w: w.write_frame("h", "l", 0, np.array([object()])), "dtype"),
        (lambda w: w.write_frame("h", "l", 0, np.array(["text"])), "dtype"),
        (lambda w: w.write_frame("h", "l", 0, np.zeros(2, "datetime64[s]")), "dtype"),
        (lambda w: w.write_frame("h", "l", 0, np.zeros(2, [("a", "<f4")])), "dtype"),
        (lambda w: w.write_frame("h", "l", -1, np.zeros(2)), "`step`"),
        (lambda w: w.write_frame("h", "l", 1.5, np.zeros(2)), "`step`"),
        (lambda w: w.write_frame("", "l", 1, np.zeros(2)), "`kind`"),
        (lambda w: w.write_frame("h", "l", 1, np.zeros(2), axes=("a", "b")), "`axes`"),
        (lambda w: w.write_scalars(0, {"loss": 1.0}, phase="epochs"), "`phase`"),
        (lambda w: w.write_scalars(0, {"loss": "high"}, phase="epoch"), "'loss'"),
        (lambda w: w.write_meta({"lr": float("nan")}), "NaN"),
        (lambda w: w.write_event("x", {"f": object()}), "JSON"),
    ],
)
def test_writer_refuses_what_it_cannot_store_and_names_it(tmp_path, call, message):
    with RunWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match=re.escape(message)):
            call(writer)
        writer.write_scalars(0, {"ok": 1.0}, phase="epoch")
    reader = RunReader(tmp_path)
    assert reader.problems == [] and reader.scalar_names() == ["ok"]


def test_writer_refuses_records_over_the_size_cap(tmp_path, monkeypatch):
    monkeypatch.setattr(runlog, "MAX_RECORD_BYTES", 1000)
    with RunWriter(tmp_path) as writer:
        writer.write_frame("h", "l", 0, np.zeros(100, np.float32))
        with pytest.raises(ValueError, match="at most 1000 bytes"):
            writer.write_frame("h", "l", 1, np.zeros(300, np.float32))
    assert RunReader(tmp_path).frame_count("h", "l") == 1


def test_writer_after_close_and_over_an_existing_run(tmp_path):
    writer = RunWriter(tmp_path, meta={"a": 1})
    writer.close()
    writer.close()
    with pytest.raises(ValueError, match="closed"):
        writer.write_event("late")
    with pytest.raises(RunLogError, match="resume=True"):
        RunWriter(tmp_path)
    with pytest.raises(ValueError, match="`meta`"):
        RunWriter(tmp_path / "other", meta=["not", "a", "dict"])
    assert not (tmp_path / "other" / LOG_FILE_NAME).exists()


def test_end_status_records_an_exception_in_the_with_block(tmp_path):
    with pytest.raises(ZeroDivisionError):
        with RunWriter(tmp_path) as writer:
            writer.write_scalars(0, {"loss": 1.0}, phase="epoch")
            1 / 0
    reader = RunReader(tmp_path)
    assert reader.finished and reader.end_status == "error: ZeroDivisionError"
    np.testing.assert_array_equal(reader.scalars("loss")[1], [1.0])


# ---- tailing a live run ---------------------------------------------------------------------


def test_refresh_returns_what_was_appended_and_several_readers_agree(tmp_path):
    writer = RunWriter(tmp_path, meta={"model": "m"})
    first, second = RunReader(tmp_path), RunReader(tmp_path, max_frames=2)
    assert first.record_count == 1 and first.meta["model"] == "m"
    assert first.refresh() == 0
    for step in range(3):
        writer.write_scalars(step, {"loss": 1.0 / (step + 1)}, phase="batch")
    writer.flush()
    assert first.refresh() == 3
    assert first.refresh() == 0
    writer.write_frame("h", "lstm", 2, np.ones((2, 3)))
    writer.write_event("dropped_frames", {"count": 1}, step=2)
    writer.flush()
    assert first.refresh() == 2 and not first.finished
    writer.close()
    assert first.refresh() == 1 and first.finished
    assert second.refresh() == 6  # it read the meta record when opened
    for reader in (first, second):
        np.testing.assert_allclose(reader.scalars("loss", "batch")[1], [1.0, 0.5, 1 / 3])
        assert reader.frames("h", "lstm")[0][0] == 2
        assert reader.problems == []


def test_refresh_max_records_reads_in_portions(tmp_path):
    with RunWriter(tmp_path / "source") as writer:
        for step in range(10):
            writer.write_frame("h", "lstm", step, np.full((2, 3), step))
    reader = RunReader(tmp_path)
    assert reader.record_count == 0
    write_log(tmp_path, (tmp_path / "source" / LOG_FILE_NAME).read_bytes())
    portions = []
    while (count := reader.refresh(max_records=4)) > 0:
        portions.append(count)
    assert portions == [4, 4, 3]  # 10 frames and the end record
    assert frame_steps_and_values(reader)[0] == list(range(10))
    assert RunReader(tmp_path / LOG_FILE_NAME).frame_count("h", "lstm") == 10  # the file opens too


def test_a_file_replaced_by_a_longer_copy_is_followed(tmp_path):
    data = magic() + b"".join(frame_record(step, step) for step in range(3))
    path = write_log(tmp_path, data[:-10])
    reader = RunReader(tmp_path)
    assert reader.record_count == 2
    partial = tmp_path / ".events.rnnx.partial"  # how rsync delivers a newer copy
    partial.write_bytes(data + frame_record(3, 3))
    os.replace(partial, path)
    assert reader.refresh() == 2
    assert frame_steps_and_values(reader) == ([0, 1, 2, 3], [0.0, 1.0, 2.0, 3.0])
    assert reader.problems == []


def test_a_run_that_has_not_started_is_not_an_error(tmp_path):
    reader = RunReader(tmp_path)
    assert reader.record_count == 0 and reader.meta == {} and reader.format_version is None
    assert reader.layers() == [] and reader.problems == [] and not reader.finished
    (tmp_path / LOG_FILE_NAME).touch()
    assert reader.refresh() == 0 and RunReader(tmp_path).record_count == 0
    (tmp_path / LOG_FILE_NAME).unlink()
    with RunWriter(tmp_path, meta={"model": "m"}) as writer:
        writer.write_frame("h", "lstm", 0, np.zeros(3))
    assert reader.refresh() == 3
    assert reader.meta["model"] == "m" and reader.format_version == 1


def test_torn_tail_is_ignored_then_read_once_complete_byte_by_byte(tmp_path):
    source = tmp_path / "source"
    with RunWriter(source, meta={"model": "m"}) as writer:
        writer.write_scalars(0, {"loss": 0.5}, phase="epoch")
        for step in range(3):
            writer.write_frame("h", "lstm", step, np.full((2, 3), step + 0.5, np.float32))
    data = (source / LOG_FILE_NAME).read_bytes()
    ends = boundaries(data)[1:]

    path = write_log(tmp_path / "copy", b"")
    reader = RunReader(tmp_path / "copy")
    complete = 0
    for size in range(1, len(data) + 1):
        append(path, data[size - 1 : size])
        new = reader.refresh()
        if size in ends[1:]:  # the magic record (ends[0]) is not counted
            assert new == 1, size
            complete += 1
        else:
            assert new == 0, size
        assert reader.record_count == complete
        assert reader.bytes_read == max([0] + [end for end in ends if end <= size])
        assert reader.problems == []
    assert frame_steps_and_values(reader) == ([0, 1, 2], [0.5, 1.5, 2.5])
    assert reader.finished


@pytest.mark.parametrize("into_last", [1, 8, 11, 12, 13, 40, -5, -4, -1])
def test_a_copy_cut_inside_the_last_record_reads_the_others(tmp_path, into_last):
    data = magic() + b"".join(frame_record(step, step) for step in range(4))
    last = boundaries(data)[-2]
    cut = last + into_last if into_last > 0 else len(data) + into_last
    path = write_log(tmp_path, data[:cut])
    reader = RunReader(tmp_path)
    assert frame_steps_and_values(reader) == ([0, 1, 2], [0.0, 1.0, 2.0])
    assert reader.problems == [] and reader.bytes_read == last
    append(path, data[cut:])
    assert reader.refresh() == 1
    assert frame_steps_and_values(reader) == ([0, 1, 2, 3], [0.0, 1.0, 2.0, 3.0])


# ---- corruption -----------------------------------------------------------------------------


def corrupt(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x5A]) + data[offset + 1 :]


def test_a_corrupt_payload_in_the_middle_is_skipped_and_reported(tmp_path):
    data = magic() + b"".join(frame_record(step, step) for step in range(5))
    starts = boundaries(data)
    bad = starts[3]  # the frame of step 2
    write_log(tmp_path, corrupt(data, bad + 40))
    reader = RunReader(tmp_path)
    assert frame_steps_and_values(reader) == ([0, 1, 3, 4], [0.0, 1.0, 3.0, 4.0])
    [problem] = reader.problems
    assert str(tmp_path / LOG_FILE_NAME) in problem
    assert f"byte {bad}" in problem and "checksum" in problem


@pytest.mark.parametrize("field_byte", [0, 3, 7, 8, 11])
def test_a_corrupt_length_field_is_resynchronised_past(tmp_path, field_byte):
    data = magic() + b"".join(frame_record(step, step) for step in range(5))
    starts = boundaries(data)
    write_log(tmp_path, corrupt(data, starts[3] + field_byte))
    reader = RunReader(tmp_path)
    assert frame_steps_and_values(reader) == ([0, 1, 3, 4], [0.0, 1.0, 3.0, 4.0])
    [problem] = reader.problems
    assert f"skipped bytes {starts[3]}..{starts[4]}" in problem
    assert reader.bytes_read == len(data)


@pytest.mark.parametrize("garbage", [1, 5, 11, 12, 13, 31, 32, 33, 100])
def test_resync_finds_the_next_record_across_scan_chunks(tmp_path, monkeypatch, garbage):
    monkeypatch.setattr(runlog, "_SCAN_CHUNK_BYTES", 16)
    noise = bytes(np.random.default_rng(garbage).integers(1, 256, garbage, dtype=np.uint8))
    head = magic() + frame_record(0, 0)
    write_log(tmp_path, head + noise + frame_record(1, 1) + frame_record(2, 2))
    reader = RunReader(tmp_path)
    assert frame_steps_and_values(reader) == ([0, 1, 2], [0.0, 1.0, 2.0])
    [problem] = reader.problems
    assert f"skipped bytes {len(head)}..{len(head) + garbage}" in problem


def test_a_wild_length_with_a_valid_checksum_is_skipped_without_allocating(tmp_path):
    huge = struct.pack("<Q", 1 << 40)
    bogus = huge + struct.pack("<I", zlib.crc32(huge)) + b"\x01" * 64
    write_log(tmp_path, magic() + frame_record(0, 0) + bogus + frame_record(1, 1))
    reader = RunReader(tmp_path)
    assert frame_steps_and_values(reader) == ([0, 1], [0.0, 1.0])
    [problem] = reader.problems
    assert f"declared length {1 << 40}" in problem


def test_a_large_length_past_the_end_of_the_file_is_a_torn_record_not_an_allocation(tmp_path):
    large = struct.pack("<Q", 900 << 20)
    torn = large + struct.pack("<I", zlib.crc32(large)) + b"\x01" * 64
    write_log(tmp_path, magic() + frame_record(0, 0) + torn)
    tracemalloc.start()
    try:
        reader = RunReader(tmp_path)
        reader.refresh()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    assert frame_steps_and_values(reader) == ([0], [0.0]) and reader.problems == []


def test_a_garbage_tail_is_reported_and_records_appended_after_it_are_found(tmp_path):
    path = write_log(tmp_path, magic() + frame_record(0, 0) + bytes(4096))  # a crash's zeros
    reader = RunReader(tmp_path)
    assert frame_steps_and_values(reader)[0] == [0]
    [problem] = reader.problems
    assert "not a valid record" in problem and reader.bytes_read == len(
        magic() + frame_record(0, 0)
    )
    append(path, frame_record(1, 1)[:30])
    assert reader.refresh() == 0
    append(path, frame_record(1, 1)[30:] + frame_record(2, 2))
    assert reader.refresh() == 2
    assert frame_steps_and_values(reader) == ([0, 1, 2], [0.0, 1.0, 2.0])
    [problem] = reader.problems
    start = len(magic() + frame_record(0, 0))
    assert f"skipped bytes {start}..{start + 4096} (length checksum mismatch)" in problem


def test_a_bad_last_record_waits_until_records_follow_it(tmp_path):
    path = write_log(tmp_path, magic() + frame_record(0, 0) + corrupt(frame_record(1, 1), 40))
    reader = RunReader(tmp_path)
    assert frame_steps_and_values(reader)[0] == [0]
    assert "last record" in reader.problems[0]
    append(path, frame_record(2, 2))
    assert reader.refresh() == 1
    assert frame_steps_and_values(reader) == ([0, 2], [0.0, 2.0])
    [problem] = reader.problems
    assert "fails its payload checksum; skipped" in problem


@pytest.mark.parametrize(
    "header, data, reason",
    [
        (
            {"type": "frame", "kind": "h", "layer": "l", "step": 1, "dtype": "|O", "shape": [1]},
            b"\x80\x04N.",
            "dtype '|O'",
        ),
        (
            {"type": "frame", "kind": "h", "layer": "l", "step": 1, "dtype": "<f4", "shape": [3]},
            b"\x00" * 8,
            "needs 12 bytes",
        ),
        (
            {"type": "frame", "kind": "h", "layer": "l", "dtype": "<f4", "shape": [1]},
            b"\x00" * 4,
            "'step'",
        ),
        (
            {
                "type": "scalars",
                "step": 1,
                "phase": "epoch",
                "names": ["a", "b"],
                "dtype": "<f8",
                "shape": [1],
            },
            b"\x00" * 8,
            "2 numbers",
        ),
        (
            {"type": "scalar_rows", "steps": [1, 2], "phase": "batch", "names": ["a"],
             "dtype": "<f8", "shape": [3, 1]},
            b"\x00" * 24,
            "2 x 1 numbers",
        ),
        (
            {"type": "scalar_rows", "steps": [], "phase": "batch", "names": ["a"],
             "dtype": "<f8", "shape": [0, 1]},
            b"",
            "'steps'",
        ),
        ({"type": "meta", "meta": [1, 2]}, b"", "'meta'"),
        ({"type": "event", "name": "x"}, b"\x00", "no 'dtype'"),
    ],
)
def test_records_with_valid_checksums_but_bad_content_are_skipped(tmp_path, header, data, reason):
    write_log(tmp_path, magic() + frame_record(0, 0) + record(header, data) + frame_record(2, 2))
    reader = RunReader(tmp_path)
    assert frame_steps_and_values(reader) == ([0, 2], [0.0, 2.0])
    [problem] = reader.problems
    assert reason in problem and "skipped" in problem


def test_scalar_rows_merge_with_single_scalars_in_the_documented_layout(tmp_path):
    """Batch logs of many steps in one `scalar_rows` record (as docs/runlog.md lays it out,
    built by hand), between single `scalars` records: one series, in the order logged, NaN
    and Inf kept and counted; the writer's own records read back the same."""
    rows = np.array([[0.5, 1.0], [np.nan, 2.0], [0.25, np.inf]])
    block = record({"type": "scalar_rows", "steps": [2, 3, 4], "phase": "batch",
                    "names": ["loss", "acc"], "dtype": "<f8", "shape": [3, 2]},
                   rows.astype("<f8").tobytes())
    single = record({"type": "scalars", "step": 1, "phase": "batch", "names": ["loss"],
                     "dtype": "<f8", "shape": [1]}, np.array([0.75]).astype("<f8").tobytes())
    write_log(tmp_path, magic() + single + block)
    reader = RunReader(tmp_path)
    assert reader.problems == []
    steps, values = reader.scalars("loss", phase="batch")
    assert steps.tolist() == [1, 2, 3, 4]
    np.testing.assert_array_equal(values, [0.75, 0.5, np.nan, 0.25])
    steps, values = reader.scalars("acc", phase="batch")
    assert steps.tolist() == [2, 3, 4] and values.tolist() == [1.0, 2.0, np.inf]
    assert {(p.name, p.first_step, p.nan, p.inf) for p in reader.nonfinite()} == {
        ("loss", 3, True, False), ("acc", 4, False, True)}

    with RunWriter(tmp_path / "written") as writer:
        writer.write_scalars(1, {"loss": 0.75}, phase="batch")
        writer.write_scalar_rows([2, 3, 4], ["loss", "acc"], rows, phase="batch")
    again = RunReader(tmp_path / "written")
    for name in ("loss", "acc"):
        for a, b in zip(again.scalars(name, phase="batch"), reader.scalars(name, phase="batch")):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("call, message", [
    (lambda w: w.write_scalar_rows([1, 2], ["a"], [[1.0]], phase="batch"), "shape (2, 1)"),
    (lambda w: w.write_scalar_rows([1], [""], [[1.0]], phase="batch"), "`names`"),
    (lambda w: w.write_scalar_rows([-1], ["a"], [[1.0]], phase="batch"), "step"),
    (lambda w: w.write_scalar_rows([1], ["a"], [["x"]], phase="batch"), "`values`"),
    (lambda w: w.write_scalar_rows([1], ["a"], [[1.0]], phase="train"), "`phase`"),
])
def test_write_scalar_rows_refuses_bad_arguments_and_names_them(tmp_path, call, message):
    with RunWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match=re.escape(message)):
            call(writer)


def test_unknown_record_types_from_newer_writers_are_skipped_silently(tmp_path):
    extra = record({"type": "histogram", "step": 1, "dtype": "<f4", "shape": [2]}, bytes(8))
    write_log(tmp_path, magic() + extra + frame_record(1, 1))
    reader = RunReader(tmp_path)
    assert reader.record_count == 2 and reader.problems == []
    assert frame_steps_and_values(reader) == ([1], [1.0])


# ---- what is not a run log ------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        np.random.default_rng(2).bytes(5000),
        b"loss,val_loss\n0.5,0.6\n",
        b"hi\n",
        bytes(64),
        record({"type": "meta", "meta": {}}),
        record({"type": "magic", "format": "something-else", "version": 1}),
        corrupt(magic(), 30),
    ],
    ids=["random", "csv", "short-text", "zeros", "no-magic", "other-format", "corrupt-magic"],
)
def test_a_file_that_is_not_a_run_log_raises_naming_it(tmp_path, content):
    path = write_log(tmp_path, content)
    with pytest.raises(RunLogError, match=re.escape(str(path))):
        RunReader(tmp_path)
    with pytest.raises(RunLogError, match=re.escape(str(path))):
        RunReader(path)
    with pytest.raises(RunLogError):
        RunWriter(tmp_path, resume=True)
    assert path.read_bytes() == content


def test_a_text_file_given_directly_raises(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a run\n")
    with pytest.raises(RunLogError, match="notes.txt: not a keras-rnnx run log"):
        RunReader(path)


def test_a_newer_format_version_raises(tmp_path):
    write_log(tmp_path, magic(version=2) + frame_record(0, 0))
    with pytest.raises(RunLogError, match=r"version 2.*up to 1.*upgrade"):
        RunReader(tmp_path)


def test_missing_or_unreadable_locations_raise(tmp_path):
    with pytest.raises(RunLogError, match=re.escape(f"{tmp_path / 'nope'}: no such run")):
        RunReader(tmp_path / "nope")
    (tmp_path / "run" / LOG_FILE_NAME).mkdir(parents=True)
    with pytest.raises(RunLogError, match="cannot be read"):
        RunReader(tmp_path / "run")
    with pytest.raises(ValueError, match="`max_frames`"):
        RunReader(tmp_path, max_frames=0)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads all")
def test_an_unreadable_log_raises(tmp_path):
    path = write_log(tmp_path, magic())
    path.chmod(0)
    try:
        with pytest.raises(RunLogError, match="cannot be read"):
            RunReader(tmp_path)
    finally:
        path.chmod(0o644)


def test_a_directory_removed_while_tailing_raises(tmp_path):
    run = tmp_path / "run"
    RunWriter(run).close()
    reader = RunReader(run)
    (run / LOG_FILE_NAME).unlink()
    with pytest.raises(RunLogError, match="disappeared"):
        reader.refresh()
    run.rmdir()
    with pytest.raises(RunLogError, match="no such run directory"):
        reader.refresh()


# ---- resume ---------------------------------------------------------------------------------


def test_resume_cuts_a_torn_tail_and_appends(tmp_path):
    writer = RunWriter(tmp_path, meta={"model": "m"})
    writer.write_frame("h", "lstm", 0, np.zeros(3))
    writer.flush()
    path = tmp_path / LOG_FILE_NAME
    torn_at = path.stat().st_size
    append(path, frame_record(1, 1)[:25])  # the killed writer's half record

    with RunWriter(tmp_path, meta={"resumed": True}, resume=True) as again:
        again.write_frame("h", "lstm", 1, np.ones(3))
    reader = RunReader(tmp_path)
    assert reader.problems == []
    assert frame_steps_and_values(reader) == ([0, 1], [0.0, 1.0])
    [event] = reader.events("resume")
    assert event.data == {"truncated_bytes": 25}
    assert reader.meta["model"] == "m" and reader.meta["resumed"] is True
    assert boundaries(path.read_bytes())[3] == torn_at  # magic, meta, frame, then the resume


# ---- NaN / Inf and memory -------------------------------------------------------------------


def test_nan_and_inf_round_trip_and_their_first_steps_are_reported(tmp_path):
    with RunWriter(tmp_path) as writer:
        for step in range(6):
            h = np.full((2, 2), 0.5, np.float32)
            grad = np.full(3, 1.0)
            if step >= 3:
                h[1, 0] = np.nan
            if step == 4:
                grad[2] = -np.inf
            writer.write_frame("h", "lstm", step * 10, h)
            writer.write_frame("grad_h", "lstm", step * 10, grad)
            writer.write_frame("ids", "lstm", step * 10, np.arange(3))
        writer.write_scalars(0, {"loss": 1.0}, phase="epoch")
        writer.write_scalars(1, {"loss": float("nan")}, phase="epoch")
        writer.write_scalars(2, {"loss": float("inf")}, phase="epoch")
    reader = RunReader(tmp_path)
    h = reader.frames("h", "lstm")
    assert np.isnan(h[3][1][1, 0]) and h[3][1][0, 0] == np.float32(0.5)
    assert np.isneginf(reader.frames("grad_h", "lstm")[4][1][2])
    np.testing.assert_array_equal(reader.scalars("loss")[1], [1.0, np.nan, np.inf])

    found = {(n.record, n.name): n for n in reader.nonfinite()}
    assert set(found) == {("frame", "h"), ("frame", "grad_h"), ("scalars", "loss")}
    nan_h, inf_grad, loss = found["frame", "h"], found["frame", "grad_h"], found["scalars", "loss"]
    assert (nan_h.first_step, nan_h.count, nan_h.nan, nan_h.inf) == (30, 3, True, False)
    assert (inf_grad.first_step, inf_grad.count, inf_grad.nan, inf_grad.inf) == (40, 1, False, True)
    assert (loss.first_step, loss.count, loss.nan, loss.inf, loss.phase) == (
        1,
        2,
        True,
        True,
        "epoch",
    )
    assert str(nan_h) == "NaN in h of layer 'lstm' from step 30 (3 frames)"
    assert str(loss) == "NaN and Inf in epoch scalar 'loss' from step 1 (2 values)"
    assert [n.first_step for n in reader.nonfinite()] == [1, 30, 40]


def test_frame_cap_decimates_evenly_and_keeps_the_newest(tmp_path):
    with RunWriter(tmp_path) as writer:
        for step in range(100):
            writer.write_frame("h", "lstm", step, np.full(2, step, np.int64))
            writer.write_scalars(step, {"loss": step}, phase="batch")
    full = RunReader(tmp_path)
    capped = RunReader(tmp_path, max_frames=10)
    latest = RunReader(tmp_path, max_frames=1)
    assert len(full.frames("h", "lstm")) == 100
    steps, values = frame_steps_and_values(capped)
    assert steps == [0, 16, 32, 48, 64, 80, 96, 99]
    assert values == [float(s) for s in steps]
    assert capped.frame_count("h", "lstm") == 100
    assert frame_steps_and_values(latest) == ([99], [99.0])
    assert len(capped.scalars("loss", "batch")[0]) == 100  # scalars are never decimated
    np.testing.assert_array_equal(capped.steps(), steps)

    # the bound holds for every length of run, and the kept frames are evenly spaced
    for cap in (2, 3, 7):
        run = tmp_path / "grow" / str(cap)
        run.mkdir(parents=True)
        reader = RunReader(run, max_frames=cap)
        with RunWriter(run) as writer:
            for step in range(40):
                writer.write_frame("h", "lstm", step, np.zeros(1))
                writer.flush()
                reader.refresh()
                kept = [s for s, _ in reader.frames("h", "lstm")]
                assert len(kept) <= cap and kept[-1] == step and kept[0] == 0
                gaps = set(np.diff(kept[:-1]).tolist()) if cap > 2 else set()
                assert len(gaps) <= 1, (cap, kept)


def test_frame_at_returns_the_newest_frame_at_or_before_a_step(tmp_path):
    with RunWriter(tmp_path) as writer:
        for step in (10, 20, 30):
            writer.write_frame("h", "lstm", step, np.full(1, step))
    reader = RunReader(tmp_path)
    assert reader.frame_at("h", "lstm")[0] == 30
    assert reader.frame_at("h", "lstm", 25)[0] == 20
    assert reader.frame_at("h", "lstm", 25)[1][0] == 20
    assert reader.frame_at("h", "lstm", 5) is None
    with pytest.raises(KeyError, match="'c' frames of layer 'lstm'"):
        reader.frame_at("c", "lstm")


# ---- the module's promises ------------------------------------------------------------------


def test_importing_the_run_log_imports_no_tensorflow_keras_or_qt():
    code = (
        "import keras_rnnx.runlog, sys; "
        "assert not any(m in sys.modules for m in ('tensorflow','keras','PyQt6','pyqtgraph'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_example_reader_in_the_docs_reads_what_the_writer_wrote(tmp_path):
    text = DOCS.read_text()
    example = text.split("## Example reader", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(example, namespace)
    h = np.arange(12, dtype=np.float32).reshape(3, 4)
    with RunWriter(tmp_path, meta={"model": "m"}) as writer:
        writer.write_frame("h", "lstm", 5, h)
        writer.write_frame("empty", "lstm", 5, np.zeros((0, 2), np.int16))
        writer.write_scalars(1, {"loss": 0.25}, phase="epoch")
    records = list(namespace["read_run"](tmp_path / LOG_FILE_NAME))
    assert [header["type"] for header, _ in records] == [
        "magic",
        "meta",
        "frame",
        "frame",
        "scalars",
        "end",
    ]
    np.testing.assert_array_equal(records[2][1], h)
    assert records[3][1].shape == (0, 2) and records[3][1].dtype == np.int16
    assert records[4][0]["names"] == ["loss"] and records[4][1].tolist() == [0.25]


# ---- corpus probe records --------------------------------------------------------------------

CORPUS_TEXT = 'def f(x):\n    return "é€😀" + x  # ünïcode\n'


def test_corpus_text_and_frames_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    n = len(CORPUS_TEXT)
    h = rng.uniform(-1, 1, (n, 4)).astype(np.float16)
    f = rng.uniform(0, 1, (n, 4)).astype(np.float32)
    with RunWriter(tmp_path) as writer:
        writer.write_corpus(CORPUS_TEXT, meta={"source": "test", "window": 8})
        writer.write_corpus("ab", name="other")
        writer.write_corpus_frame("h", "lstm", 10, h)
        writer.write_corpus_frame("f", "lstm", 10, f)
        writer.write_corpus_frame("h", "lstm", 20, -h)
        writer.write_corpus_frame("h", "rnn", 20, np.zeros((2, 3)), corpus="other")
        writer.write_frame("h", "lstm", 20, np.zeros((1, 2, 4)))  # a probe frame beside them

    reader = RunReader(tmp_path)
    corpus = reader.corpus()
    assert corpus.text == CORPUS_TEXT and corpus.name == "corpus"
    assert corpus.meta == {"source": "test", "window": 8} and isinstance(corpus.time, float)
    assert reader.corpora() == ["corpus", "other"] and reader.corpus("other").text == "ab"
    assert reader.corpus_layers() == ["lstm"] and reader.corpus_layers("other") == ["rnn"]
    assert reader.corpus_kinds("lstm") == ["h", "f"]
    frames = reader.corpus_frames("h", "lstm")
    assert [step for step, _ in frames] == [10, 20]
    np.testing.assert_array_equal(frames[0][1], h)
    np.testing.assert_array_equal(frames[1][1], -h)
    assert frames[0][1].dtype == np.float16 and not frames[0][1].flags.writeable
    np.testing.assert_array_equal(reader.corpus_frames("f", "lstm")[0][1], f)
    assert reader.corpus_frame_at("h", "lstm", step=15)[0] == 10
    assert reader.corpus_frame_at("h", "lstm")[0] == 20
    assert reader.corpus_frame_at("h", "lstm", step=5) is None
    assert reader.corpus_steps().tolist() == [10, 20]
    assert reader.corpus_frame_count("h", "lstm") == 2
    # corpus frames are not probe frames: the viewer's panels do not see them
    assert reader.layers() == ["lstm"] and reader.frames("h", "lstm")[0][1].shape == (1, 2, 4)
    with pytest.raises(KeyError, match="'c' corpus frames"):
        reader.corpus_frames("c", "lstm")
    with pytest.raises(KeyError, match="no corpus 'missing'"):
        reader.corpus("missing")


def test_corpus_records_follow_the_documented_layout(tmp_path):
    text = "x = (1)\n"
    rows = np.arange(len(text) * 2, dtype="<f2").reshape(len(text), 2)
    data = (
        magic()
        + record({"type": "corpus", "name": "corpus", "characters": len(text),
                  "meta": {"window": 4}, "time": 2.0, "dtype": "|u1",
                  "shape": [len(text.encode())]}, text.encode())
        + record({"type": "corpus_frame", "corpus": "corpus", "kind": "c", "layer": "lstm",
                  "step": 7, "axes": ["char", "unit"], "time": 3.0, "dtype": "<f2",
                  "shape": [len(text), 2]}, rows.tobytes())
    )
    write_log(tmp_path / "hand", data)
    reader = RunReader(tmp_path / "hand")
    assert reader.problems == [] and reader.corpus().text == text
    np.testing.assert_array_equal(reader.corpus_frames("c", "lstm")[0][1], rows)
    with RunWriter(tmp_path / "written") as writer:
        writer.write_corpus(text, meta={"window": 4})
        writer.write_corpus_frame("c", "lstm", 7, rows)
    written = (tmp_path / "written" / LOG_FILE_NAME).read_bytes()
    starts = boundaries(written)
    for k in (1, 2):  # the same headers (time aside) and data as the hand-made records
        ours = written[starts[k] + 12: starts[k + 1] - 4]
        theirs = data[boundaries(data)[k] + 12: boundaries(data)[k + 1] - 4]
        (hl,) = struct.unpack_from("<I", ours)
        (hl2,) = struct.unpack_from("<I", theirs)
        a, b = json.loads(ours[4:4 + hl]), json.loads(theirs[4:4 + hl2])
        a.pop("time"), b.pop("time")
        assert a == b and ours[4 + hl:] == theirs[4 + hl2:]


def test_corpus_torn_tail_is_ignored_then_read_once_complete_byte_by_byte(tmp_path):
    source = tmp_path / "source"
    n = len(CORPUS_TEXT)
    with RunWriter(source) as writer:
        writer.write_corpus(CORPUS_TEXT)
        for step in range(2):
            writer.write_corpus_frame("h", "lstm", step, np.full((n, 2), step, np.float16))
    data = (source / LOG_FILE_NAME).read_bytes()
    ends = boundaries(data)[1:]
    path = write_log(tmp_path / "copy", b"")
    reader = RunReader(tmp_path / "copy")
    for size in range(1, len(data) + 1):
        append(path, data[size - 1: size])
        reader.refresh()
        complete = sum(1 for end in ends[1:] if end <= size)
        assert reader.record_count == complete and reader.problems == []
        if complete >= 1:
            assert reader.corpus().text == CORPUS_TEXT
        else:
            assert reader.corpora() == []
        if complete >= 2:
            assert len(reader.corpus_frames("h", "lstm")) == min(complete - 1, 2)
    assert [s for s, _ in reader.corpus_frames("h", "lstm")] == [0, 1] and reader.finished


def test_writer_bounds_corpus_sizes_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(runlog, "MAX_CORPUS_CHARACTERS", 10)
    with RunWriter(tmp_path) as writer:
        with pytest.raises(ValueError, match="11 characters, more than the 10"):
            writer.write_corpus("x" * 11)
        writer.write_corpus("x" * 10)
        with pytest.raises(ValueError, match="9 rows, but corpus 'corpus' has 10 characters"):
            writer.write_corpus_frame("h", "l", 0, np.zeros((9, 2), np.float16))
        with pytest.raises(ValueError, match="2-D float array"):
            writer.write_corpus_frame("h", "l", 0, np.zeros((10, 2), np.int8))
        with pytest.raises(ValueError, match="`corpus`"):
            writer.write_corpus_frame("h", "l", 0, np.zeros((10, 2)), corpus="")
        with pytest.raises(ValueError, match="`text`"):
            writer.write_corpus("")
        monkeypatch.setattr(runlog, "MAX_RECORD_BYTES", 1000)
        with pytest.raises(ValueError, match="at most 1000 bytes"):
            writer.write_corpus_frame("h", "l", 0, np.zeros((10, 100), np.float16))
        writer.write_corpus_frame("h", "l", 1, np.zeros((10, 2), np.float16))
    reader = RunReader(tmp_path)
    assert reader.problems == [] and reader.corpus_frame_count("h", "l") == 1


def corpus_record(characters, data: bytes, **extra) -> bytes:
    header = {"type": "corpus", "name": "corpus", "characters": characters, "time": 1.0,
              "dtype": "|u1", "shape": [len(data)], **extra}
    return record(header, data)


@pytest.mark.parametrize(
    "bad, reason",
    [
        (lambda: corpus_record((1 << 20) + 1, b"x" * 8), "outside 1..1048576"),
        (lambda: corpus_record(0, b""), "outside 1..1048576"),
        (lambda: corpus_record(2, b"x" * 9), "9 bytes for 2 characters"),
        (lambda: corpus_record(3, b"\xff\xfe\xfd"), "not UTF-8"),
        (lambda: corpus_record(3, "éa".encode()), "2 characters, its header says 3"),
        (lambda: corpus_record("3", b"abc"), "'characters'"),
        (lambda: record({"type": "corpus", "name": "corpus", "characters": 2, "dtype": "<u2",
                         "shape": [1]}, b"ab"), "UTF-8 bytes"),
        (lambda: record({"type": "corpus_frame", "corpus": "corpus", "kind": "h", "layer": "l",
                         "step": 1, "dtype": "<f4", "shape": [3]}, bytes(12)), "2-D float"),
        (lambda: record({"type": "corpus_frame", "corpus": "corpus", "kind": "h", "layer": "l",
                         "step": 1, "dtype": "<f4", "shape": [2, 1]}, bytes(8)),
         "2 rows for corpus 'corpus' of 3 characters"),
        (lambda: record({"type": "corpus_frame", "kind": "h", "layer": "l", "step": 1,
                         "dtype": "<f4", "shape": [3, 1]}, bytes(12)), "'corpus'"),
    ],
)
def test_bad_corpus_records_are_skipped_and_reported(tmp_path, bad, reason):
    good = corpus_record(3, b"abc")
    data = magic() + good + bad() + frame_record(1, 1.0)
    write_log(tmp_path, data)
    reader = RunReader(tmp_path)
    assert len(reader.problems) == 1 and reason in reader.problems[0], reader.problems
    assert reader.corpus().text == "abc" and frame_steps_and_values(reader) == ([1], [1.0])


def test_corpus_frame_cap_decimates_and_keeps_the_newest(tmp_path):
    with RunWriter(tmp_path) as writer:
        writer.write_corpus("ab")
        for step in range(9):
            writer.write_corpus_frame("h", "l", step, np.full((2, 1), step, np.float32))
            writer.write_frame("h", "l", step, np.zeros(1))
    reader = RunReader(tmp_path, max_corpus_frames=3)
    kept = [s for s, _ in reader.corpus_frames("h", "l")]
    assert len(kept) <= 3 and kept[0] == 0 and kept[-1] == 8
    assert reader.corpus_frame_count("h", "l") == 9 and len(reader.frames("h", "l")) == 9
    with pytest.raises(ValueError, match="`max_corpus_frames`"):
        RunReader(tmp_path, max_corpus_frames=0)
