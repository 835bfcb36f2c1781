"""The compiled CPU kernels of `keras_rnnx.RNN`'s training and inference paths, built on first use.

`cell_kernels.cc` holds the lecture cells' recurrence (forward, and backward through time) as
two TensorFlow ops for training, and a forward-only op for inference, which is also registered
as the XLA custom call "rnnx_cell_infer" where TensorFlow's library exports XLA's registry of
custom-call targets (`_Module.xla`). The first time `keras_rnnx.RNN` runs one of the four
cells on the CPU, this module compiles it against the installed TensorFlow with the system's C++
compiler (about a minute, once per machine, TensorFlow version, vector ISA and source) into a
cache directory, then loads it with `tf.load_op_library`. The library is built for the widest
vector ISA the CPU has (`_ISAS`: AVX-512 F/VL/BW/DQ, else AVX2 + FMA, else the compiler's
default); the ISA's name is part of the file name, so that a cache directory shared between
machines never hands a CPU a library built for instructions it lacks. `KERAS_RNNX_ISA=avx2`
(or `generic`) caps the ISA. Where the kernels cannot be built or loaded — no compiler, a
failed build, or `KERAS_RNNX_NATIVE=0` in the environment — `load()` returns None, `status()`
says why, and `keras_rnnx.RNN` trains with its TensorFlow loop and infers with Keras's
instead: the same numbers.

Whether `keras_rnnx.RNN` then uses the loaded kernels is measured, per shape class, by
`keras_rnnx._native.select`: only where they ran faster than the TensorFlow loop.

Models saved as `.keras` files, exported for serving or converted never contain the ops
(`keras_rnnx.rnn._tracing_for_export`).

Cache directory: `$KERAS_RNNX_CACHE`, else `$XDG_CACHE_HOME/keras_rnnx`, else
`~/.cache/keras_rnnx`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

SOURCE = Path(__file__).with_name("cell_kernels.cc")
_COMPILE_TIMEOUT_S = 600
_lock = threading.Lock()
_state: dict = {"loaded": False, "module": None,
                "status": "not tried yet (rx.RNN loads them the first time it runs a lecture cell)"}


def status() -> str:
    """Whether the compiled kernels are in use, and if not, why (a sentence)."""
    return _state["status"]


def load():
    """The loaded op module (`rnnx_cell_forward`, `rnnx_cell_backward`), or None."""
    if _state["loaded"]:
        return _state["module"]
    with _lock:
        if not _state["loaded"]:
            try:
                _state["module"] = _load()
                _state["status"] = (f"in use ({_state['module'].path}, built for "
                                     f"{_state['module'].isa})")
            except _Unavailable as reason:
                _state["status"] = f"not in use: {reason}"
            except Exception as error:  # noqa: BLE001 - any failure means: the TensorFlow loop
                _state["status"] = f"not in use: {type(error).__name__}: {error}"
            _state["loaded"] = True
    return _state["module"]


class _Unavailable(Exception):
    pass


class _Module:
    def __init__(self, ops, path: Path, isa_name: str, xla: bool = False):
        self.rnnx_cell_forward = ops.rnnx_cell_forward
        self.rnnx_cell_backward = ops.rnnx_cell_backward
        self.rnnx_cell_infer = ops.rnnx_cell_infer
        self.path = path
        self.isa = isa_name
        self.xla = xla  # whether the XLA custom call "rnnx_cell_infer" is registered


def _cache_dir() -> Path:
    if os.environ.get("KERAS_RNNX_CACHE"):
        return Path(os.environ["KERAS_RNNX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "keras_rnnx"


# The vector ISAs the kernels are built for, widest first: (name, /proc/cpuinfo flags that must
# all be present, compiler flags). Explicit feature flags rather than -march=native: the ISA's
# name goes into the cache file's name, so a cache directory shared between machines (a home
# directory on a cluster) never hands one CPU a library built for another's instructions, and
# two CPUs with the same ISA share one build. AVX-512 F/VL/BW/DQ is the set every AVX-512 CPU
# since Skylake-SP has; Eigen uses 16-float packets and its AVX-512 matrix-product kernel there.
_ISAS = (
    ("avx512", {"avx512f", "avx512vl", "avx512bw", "avx512dq", "avx2", "fma"},
     ["-mavx512f", "-mavx512vl", "-mavx512bw", "-mavx512dq", "-mavx2", "-mfma"]),
    ("avx2", {"avx2", "fma"}, ["-mavx2", "-mfma"]),
)


def _cpu_isa() -> tuple[str, list[str]]:
    """(name, compiler flags) of the widest vector ISA in `_ISAS` this CPU has (x86-64 Linux);
    ("generic", []) elsewhere. `KERAS_RNNX_ISA=avx2` (or `generic`) caps it."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return "generic", []
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as file:
            for line in file:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return isa_for(flags, os.environ.get("KERAS_RNNX_ISA", ""))


def isa_for(cpu_flags: set[str], cap: str = "") -> tuple[str, list[str]]:
    """(name, compiler flags) of the widest ISA in `_ISAS` whose /proc/cpuinfo flags are all in
    `cpu_flags`, no wider than `cap` ("avx512", "avx2", "generic"; "" for no cap)."""
    names = [name for name, _, _ in _ISAS] + ["generic"]
    cap = cap.strip().lower()
    if cap and cap not in names:
        raise _Unavailable(f"KERAS_RNNX_ISA must be one of {', '.join(names)}, got {cap!r}")
    allowed = names[names.index(cap):] if cap else names
    for name, needed, compile_flags in _ISAS:
        if name in allowed and needed <= cpu_flags:
            return name, list(compile_flags)
    return "generic", []


def isa() -> str | None:
    """The vector ISA the loaded kernels were built for ("avx512", "avx2", "generic"), or None
    where they are not in use."""
    module = load()
    return None if module is None else module.isa


def _load():
    if os.environ.get("KERAS_RNNX_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        raise _Unavailable("disabled by KERAS_RNNX_NATIVE")
    if sys.platform != "linux":
        raise _Unavailable(f"built on Linux only (this is {sys.platform})")
    import tensorflow as tf

    compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if not compiler:
        raise _Unavailable("no C++ compiler found (set CXX, or install g++)")
    isa_name, isa_flags = _cpu_isa()
    # Hidden visibility: the library's own instances of Eigen's templates (built for this ISA)
    # must never stand in for TensorFlow's, nor TensorFlow's for them.
    flags = (["-std=c++17", "-O3", "-shared", "-fPIC", "-fvisibility=hidden", "-w", *isa_flags]
             + tf.sysconfig.get_compile_flags())
    link = tf.sysconfig.get_link_flags()
    # XLA's registry of custom-call targets lives in libtensorflow_cc: where it is there, the
    # inference loop is also registered as an XLA custom call (for jit_compile=True graphs).
    tf_dir = Path(tf.sysconfig.get_lib())
    if (tf_dir / "libtensorflow_cc.so.2").exists() and (
            Path(tf.sysconfig.get_include()) / "xla" / "service"
            / "custom_call_target_registry.h").exists():
        flags = [*flags, "-DRNNX_XLA_CUSTOM_CALL"]
        link = [*link, f"-L{tf_dir}", "-l:libtensorflow_cc.so.2"]
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), tf.__version__.encode(), " ".join(flags + link).encode(),
                 compiler.encode()):
        key.update(part)
        key.update(b"\0")
    cache = _cache_dir()
    target = cache / f"cell_kernels-{isa_name}-{key.hexdigest()[:16]}.so"
    if not target.exists():
        _compile(compiler, flags, link, cache, target)
    try:
        ops = tf.load_op_library(str(target))
    except Exception as error:  # noqa: BLE001 - any failure means: use the TensorFlow loop
        raise _Unavailable(f"cannot load {target}: {error}") from None
    return _Module(ops, target, isa_name, xla="-DRNNX_XLA_CUSTOM_CALL" in flags)


def _compile(compiler: str, flags: list[str], link: list[str], cache: Path, target: Path,
             source: Path = SOURCE, what: str = "the CPU kernels of rx.RNN (once; about a "
                                                "minute)"):
    """Builds `source` into the shared library `target` under a file lock (another process
    may be building it too); raises `_Unavailable` saying why it could not."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _Unavailable(f"cannot create the cache directory {cache}: {error}") from None
    with _file_lock(cache / (target.name + ".lock")):
        if target.exists():  # built by another process while this one waited
            return
        print(f"keras_rnnx: compiling {what} into {cache}", file=sys.stderr, flush=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
        os.close(fd)
        command = [compiler, *flags, "-o", tmp, str(source), *link]
        try:
            done = subprocess.run(command, capture_output=True, text=True,
                                  timeout=_COMPILE_TIMEOUT_S)
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                raise _Unavailable(f"the compiler failed ({' | '.join(tail)})")
            os.replace(tmp, target)
        except (OSError, subprocess.SubprocessError) as error:
            raise _Unavailable(f"cannot run the compiler: {error}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
