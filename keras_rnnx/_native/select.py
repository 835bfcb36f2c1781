"""Whether `keras_rnnx.RNN` trains (and infers) on the compiled kernels or on its loop.

The kernels are not faster on every CPU: their matrix products run in Eigen, built for this
CPU's widest vector ISA, against TensorFlow's oneDNN in the loop; their row-block threads
share the cores with the input pipeline's. So the choice is measured, once per machine and
shape class, and the kernels are taken only where they measured faster:

- the shape class is (cell, units, batch rounded up to a power of two, threads): the time of
  both paths grows linearly with the sequence length, so their ratio hardly depends on it and
  the measurement runs a short sequence (`MEASURE_STEPS` steps);
- each path runs forward and backward through time (`tf.GradientTape`) on random inputs of
  that class, in `ROUNDS` interleaved rounds, and the medians are compared (`faster`); for
  inference (classes named `<cell>-inference`, `<cell>-inference-xla` under XLA) the
  forward-only kernel against Keras's loop, both compiled by XLA in the second case;
- the result is kept for the process and in a JSON file beside the compiled library
  (`selection-<library>.json`, keyed by the CPU model and the thread count), so that it is
  measured once per machine, not once per process.

`KERAS_RNNX_NATIVE` overrides the measurement: `0` (or off/false/no) never uses the kernels,
`1` (or on/true/yes) always does where they can run, `auto` (the default) measures.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

MEASURE_STEPS = 16
ROUNDS = 5
CALLS_PER_ROUND = 2
_OFF = ("0", "false", "no", "off")
_ON = ("1", "true", "yes", "on")
_lock = threading.Lock()
_decisions: dict[str, dict] = {}


def policy() -> str:
    """"off", "on" or "auto", from `KERAS_RNNX_NATIVE` (unset: "auto")."""
    value = os.environ.get("KERAS_RNNX_NATIVE", "auto").strip().lower()
    if value in _OFF:
        return "off"
    if value in _ON:
        return "on"
    if value in ("", "auto"):
        return "auto"
    raise ValueError(f"KERAS_RNNX_NATIVE must be 0, 1 or auto (or off/on, false/true, no/yes), "
                     f"got {os.environ['KERAS_RNNX_NATIVE']!r}")


def faster(timings: dict[str, list[float]]) -> bool:
    """Whether the kernels' median time is below the TensorFlow loop's.

    `timings`: {"kernels": [seconds, ...], "loop": [seconds, ...]}, each non-empty. A tie, or
    a missing or empty list, keeps the loop: the kernels must measure faster to be used.
    """
    kernels, loop = timings.get("kernels") or [], timings.get("loop") or []
    if not kernels or not loop:
        return False
    return statistics.median(kernels) < statistics.median(loop)


def batch_class(batch: int | None) -> int:
    """The batch size a measurement runs: the next power of two ≥ `batch` (at least 8; 64
    where the batch is not known when the graph is traced)."""
    if batch is None:
        return 64
    return max(8, 1 << max(0, int(batch) - 1).bit_length())


def shape_key(kind: str, units: int, batch: int | None, threads: int) -> str:
    return f"{kind}/units={units}/batch={batch_class(batch)}/threads={threads}"


def decisions() -> dict[str, dict]:
    """This process's choices so far: shape key -> {"kernels": [...], "loop": [...] seconds,
    "use_kernels": bool}."""
    return {key: dict(value) for key, value in _decisions.items()}


def use_kernels(library: Path, kind: str, units: int, batch: int | None,
                measure: Callable[[int], dict[str, list[float]]]) -> bool:
    """Whether to train this shape class on the kernels (see the module docstring).

    `measure(batch)` times both paths at that batch size and returns `faster`'s argument; it is
    called only where neither this process nor the cache file has the class yet. A measurement
    that fails keeps the loop.
    """
    chosen = policy()
    if chosen != "auto":
        return chosen == "on"
    key = shape_key(kind, units, batch, _threads())
    if key in _decisions:
        return _decisions[key]["use_kernels"]
    with _lock:
        if key not in _decisions:
            path = _cache_file(library)
            cpu_key = f"{_cpu_name()}/{key}"
            timings = _read(path).get(cpu_key)
            if timings is None:
                try:
                    timings = measure(batch_class(batch))
                except Exception as error:  # noqa: BLE001 - a failed measurement keeps the loop
                    timings = {"kernels": [], "loop": [], "error": f"{type(error).__name__}: "
                                                                   f"{error}"}
                else:
                    _write(path, cpu_key, timings)
            _decisions[key] = {**timings, "use_kernels": faster(timings)}
    return _decisions[key]["use_kernels"]


def time_interleaved(fns: dict[str, Callable[[], object]], rounds: int = ROUNDS,
                     calls: int = CALLS_PER_ROUND) -> dict[str, list[float]]:
    """Seconds per call of each function, one entry per round, the functions interleaved
    (A, B, A, B, ...) so that a load change on the machine hits both; two warm-up calls each."""
    for fn in fns.values():
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - start) / calls)
    return times


def _threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return "unknown CPU"


def _cache_file(library: Path) -> Path:
    return Path(library).with_name(f"selection-{Path(library).stem}.json")


def _read(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, key: str, timings: dict) -> None:
    """Adds one entry to the cache file (atomically; a cache that cannot be written is only a
    lost measurement)."""
    with contextlib.suppress(OSError):
        data = _read(path)
        data[key] = {name: [float(s) for s in timings[name]] for name in ("kernels", "loop")}
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=1, sort_keys=True)
        os.replace(tmp, path)
