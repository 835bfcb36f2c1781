"""`RNNMonitor`: records what the probe measures during `model.fit`, into a run log.

Training never waits on the disk: the callback runs the probe on the training thread (that is
the cost it adds to `fit`) and hands the arrays to a background writer thread. Scalars and
small per-layer arrays (gradient norms, Jacobian norms, σ_max) are always queued; bulky
frames (states, gates, ∂L/∂h_t) are dropped when more than `max_pending_mb` of them are
waiting, and the drops are counted in the log. The writer takes the batch logs from a buffer
whenever it wakes, at least every `flush_seconds` (0.1 s by default), writes them as one
record and flushes to the operating system; it fsyncs at least every `_FSYNC_SECONDS` (10 s)
and at the end. So a killed process loses at most its last 0.2 s (an operating-system crash
or power loss, the last 10 s: an fsync costs the writer ~5 ms, every second a quarter of its
time); the log's format keeps the rest readable.
"""

from __future__ import annotations

import atexit
import collections
import queue
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import Any

import keras
import numpy as np

from keras_rnnx import __version__, runlog

__all__ = ["RNNMonitor"]

BULKY_KINDS = frozenset({"h", "c", "grad_h", "i", "f", "z", "o", "u", "r", "n"})
_BOUNDS = {"tanh": [-1.0, 1.0], "sigmoid": [0.0, 1.0], "hard_sigmoid": [0.0, 1.0],
           "softsign": [-1.0, 1.0]}
_STOP = object()
# The part of the "auto" budget reserved for probes that compute the Jacobian norms.
_JACOBIAN_SHARE = 0.5
# "auto" aims at one frame with the Jacobian norms in this many (within that share).
_JACOBIAN_EVERY = 4
# "auto" probes at least this often (a fraction of the fit's steps) wherever the budget allows.
_MAX_GAP = 0.05
# The writer thread fsyncs at least this often (and when the run ends).
_FSYNC_SECONDS = 10.0
_NEVER = 2**62


class _Cadence:
    """Plans "auto" probes evenly over a `fit` from their measured costs (no clock inside).

    With `budget` b, the allowance of the whole `fit` is A = b·(t + τ·n_left): t the training
    seconds so far, τ the recent seconds per step, n_left the steps still to come. What the
    monitor costs apart from probes (hooks, batch logging, writer thread) runs at a measured
    rate ρ per training second, so the probes may still spend P = A − spent − ρ·τ·n_left.
    One frame in `_JACOBIAN_EVERY` (k) has the Jacobian norms: n_J = P / (c_J + (k−1)·c_L),
    n = k·n_J frames, unless n_J·c_J > share·P: then n_J = share·P / c_J and the other frames
    get the rest, n = n_J + (P − n_J·c_J) / c_L. A frame comes every n_left / n steps, a
    Jacobian frame every n_left / n_J. Where P pays for a frame every `max_gap` of the run's
    steps but that split does not, frames come that often and the Jacobian frames get what
    is left; where P pays for a Jacobian frame every `max_gap` of the steps (with 15 % to
    spare) but the split plans fewer, they come that often and the other frames get the
    rest. A frame is taken only where P pays for it (`kind`). Planned again after every probe
    and epoch, so that a first expensive probe or a wrong estimate spreads over the rest of
    the run instead of starving part of it.
    """

    def __init__(self, budget: float, share: float, total_steps: int | None,
                 max_gap: float = _MAX_GAP):
        self.budget = budget
        self.share = share
        self.total = total_steps
        self.cap = None if not total_steps else max(1, int(max_gap * total_steps))
        self.money = 0.0  # what the probes may still spend, as of the last plan
        self.reserve = 0.0  # what the frames that keep the gap rule need of it

    def kind(self, jacobian_due: bool, light: float, full: float | None) -> bool | None:
        """The frame due now: True (with the Jacobian norms), False (without), None (none):
        a frame only where the money pays for it, the Jacobian norms only where they leave
        the frames that keep the gap rule paid for."""
        if jacobian_due and full is not None and self.money - full >= self.reserve - light:
            return True
        return False if self.money >= light else None

    def intervals(self, *, done: int, training: float, step_seconds: float, spent: float,
                  other: float, light: float, full: float | None) -> tuple[float, float]:
        """(steps between frames, steps between Jacobian frames; inf for none).

        `done` steps of this `fit` took `training` seconds (`step_seconds` each, recently);
        the monitor spent `spent` seconds, `other` of them outside probes; a frame costs
        `light` seconds, one with the Jacobian norms `full` (None: no Jacobian frames).
        """
        inf = float("inf")
        if done <= 0 or training <= 0.0 or step_seconds <= 0.0:
            return 1.0, inf
        left = max(1, self.total - done) if self.total else max(1, done)
        rate = other / training
        money = self.budget * (training + step_seconds * left) - spent - rate * step_seconds * left
        self.money, self.reserve = money, 0.0
        if money <= 0.0:
            return inf, inf
        light = max(light, 1e-9)
        if self.cap is not None and (left / self.cap + 1.0) * light <= money:
            self.reserve = (left / self.cap + 1.0) * light  # a frame's margin for rounding
        if full is None:
            n_full, frames = 0.0, money / light
        else:
            # One frame in `_JACOBIAN_EVERY` has the Jacobian norms, as long as those spend at
            # most `share` of the money; the other frames get the rest.
            full = max(full, light)
            n_full = money / (full + (_JACOBIAN_EVERY - 1) * light)
            frames = _JACOBIAN_EVERY * n_full
            if n_full * full > self.share * money:
                n_full = self.share * money / full
                frames = n_full + (money - n_full * full) / light
        frame_every = left / frames
        if self.cap is not None and frame_every > self.cap and left / self.cap * light <= money:
            frame_every = float(self.cap)
            if full is not None:
                # A frame every `cap` steps first; the Jacobian frames get what is left.
                extra = money - left / self.cap * light
                n_full = min(n_full, extra / max(full - light, 1e-9))
        # The gap rule for the Jacobian frames too, where the money pays for them with 15 % to
        # spare (a plan at the edge would switch back and forth): they come first, the other
        # frames get the rest. Early in a run the first, cold Jacobian frames' cost would
        # otherwise space them wider than later ones. A Jacobian frame comes with the first
        # frame at or after its step, up to a frame's interval late: planned that much early.
        full_cap = None if self.cap is None else max(0.5 * self.cap,
                                                     0.9 * self.cap - frame_every)
        if (full is not None and full_cap is not None and n_full < left / full_cap
                and 1.15 * left / full_cap * full <= money):
            n_full = left / full_cap
            frames = n_full + (money - n_full * full) / light
            frame_every = left / frames
        full_every = inf if n_full <= 0.0 else left / n_full
        return max(1.0, frame_every), max(1.0, full_every)


class _Writer:
    """The background thread that owns the `RunWriter`."""

    def __init__(self, run_dir: Path, flush_seconds: float, fsync_seconds: float,
                 max_pending_bytes: int, resume: bool):
        self.run_dir = run_dir
        self.flush_seconds = flush_seconds
        self.fsync_seconds = fsync_seconds
        self.max_pending_bytes = max_pending_bytes
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        # Batch logs [(step, {name: value})]: appended by the training thread (deque appends
        # are atomic), taken by this thread whenever it wakes, at least every flush_seconds:
        # no queue item and no wake-up per step (each wake-up costs the thread more CPU time
        # than writing the rows).
        self.rows: collections.deque = collections.deque()
        self.pending_bytes = 0
        self.dropped = 0
        self.cpu_seconds = 0.0  # CPU time of the writer thread, updated after each record
        self.failed: str | None = None
        self._lock = threading.Lock()
        self._writer = runlog.RunWriter(run_dir, resume=resume)
        self._thread = threading.Thread(target=self._run, name="rnnx-monitor-writer",
                                        daemon=True)
        self._thread.start()

    def put(self, method: str, *args, bulky_bytes: int = 0, **kwargs) -> bool:
        """Queues one write; returns False when it was dropped (bulky and over budget)."""
        if self.failed is not None:
            return False
        if bulky_bytes:
            with self._lock:
                if self.pending_bytes + bulky_bytes > self.max_pending_bytes:
                    self.dropped += 1
                    return False
                self.pending_bytes += bulky_bytes
        self.queue.put((method, args, kwargs, bulky_bytes))
        return True

    def put_frames(self, frames: list, scalars: tuple | None = None) -> None:
        """Queues one probe's frames [(kind, layer, step, array, bulky bytes)] and its batch
        scalars (step, {name: value}) as one item (one wake-up of the writer thread instead of
        one per array); bulky arrays over budget are left out and counted, the others always
        go."""
        if self.failed is not None:
            return
        kept, bulky_total = [], 0
        with self._lock:
            for kind, layer, step, array, bulky in frames:
                if bulky and self.pending_bytes + bulky_total + bulky > self.max_pending_bytes:
                    self.dropped += 1
                    continue
                bulky_total += bulky
                kept.append((kind, layer, step, array))
            self.pending_bytes += bulky_total
        self.queue.put(("frames", (kept, scalars), {}, bulky_total))

    def close(self, status: str = "ok", timeout: float = 30.0) -> None:
        if self._thread.is_alive():
            self.queue.put((_STOP, (status,), {}, 0))
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self.cpu_seconds = time.thread_time()

    def _loop(self) -> None:
        last_flush = last_fsync = time.monotonic()
        dirty = False
        while True:
            try:
                item = self.queue.get(timeout=self.flush_seconds)
            except queue.Empty:
                item = None
            if self.rows:
                rows = []
                while self.rows:
                    rows.append(self.rows.popleft())
                if self.failed is None:
                    try:
                        self._write_batch_logs(rows)
                        dirty = True
                    except (OSError, runlog.RunLogError) as error:
                        self._fail(error)
                self.cpu_seconds = time.thread_time()
            if item is not None:
                method, args, kwargs, bulky_bytes = item
                if method is _STOP:
                    self._finish(args[0])
                    return
                if bulky_bytes:
                    with self._lock:
                        self.pending_bytes -= bulky_bytes
                if self.failed is None:
                    try:
                        if method == "frames":
                            frames, scalars = args
                            if scalars is not None:
                                self._writer.write_scalars(*scalars, phase="batch")
                            for frame in frames:
                                self._writer.write_frame(*frame)
                        else:
                            getattr(self._writer, method)(*args, **kwargs)
                        dirty = True
                    except (OSError, runlog.RunLogError) as error:
                        self._fail(error)
                self.cpu_seconds = time.thread_time()
            now = time.monotonic()
            if dirty and self.failed is None and now - last_flush >= self.flush_seconds:
                fsync = now - last_fsync >= self.fsync_seconds
                try:
                    self._writer.flush(fsync=fsync)
                except OSError as error:
                    self._fail(error)
                last_flush = now
                last_fsync = now if fsync else last_fsync
                dirty = False

    def _write_batch_logs(self, rows: list) -> None:
        """Batch logs [(step, {name: value})] as `scalar_rows` records, one per run of rows
        with the same names (one record per step cost the writer more than everything else)."""
        start = 0
        while start < len(rows):
            names = list(rows[start][1])
            end = start + 1
            while end < len(rows) and list(rows[end][1]) == names:
                end += 1
            if names:
                self._writer.write_scalar_rows(
                    [step for step, _ in rows[start:end]], names,
                    [[values[name] for name in names] for _, values in rows[start:end]],
                    phase="batch")
            start = end

    def _finish(self, status: str) -> None:
        if self.failed is None:
            try:
                self._writer.close(status)
            except OSError as error:
                self._fail(error)

    def _fail(self, error: BaseException) -> None:
        self.failed = str(error)
        warnings.warn(
            f"RNNMonitor: cannot write the run log in {self.run_dir} ({error}); training goes "
            f"on, and this run is no longer recorded.",
            RuntimeWarning,
            stacklevel=2,
        )
        try:
            self._writer.close("error: write failed")
        except Exception:  # noqa: BLE001 - the file is already unusable; nothing left to save
            pass


def _is_chief(strategy=None) -> bool:
    """True unless this process is a non-chief worker of a `tf.distribute` cluster.

    The chief is the task of type "chief", or worker 0 when the cluster has no chief (the
    rule of `MultiWorkerMirroredStrategy`). Single-process strategies have one chief.
    `strategy` defaults to the strategy in scope.
    """
    import tensorflow as tf

    if strategy is None:
        if not tf.distribute.has_strategy():
            return True
        strategy = tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def _nbytes(array) -> int:
    return int(getattr(array, "nbytes", 0))


class RNNMonitor(keras.callbacks.Callback):
    """Records a recurrent model's training into a run log that the viewer can follow.

    At the start of `fit` it writes the run's meta (model summary, every probed layer with its
    cell kind, units and gate names, the probe batch shape, token labels, versions). Every
    `every` training steps it runs `keras_rnnx.diagnostics.probe` on (`probe_x`, `probe_y`) and
    records all of its fields; it records the logs of every batch and every epoch.

    Args:
        run_dir: the run directory (created; must not already hold a run log unless
            `resume=True`).
        probe_x: a small batch of input sequences (B, T, D), e.g. 8 samples.
        probe_y: its targets, for the gradient fields; None records states, gates and
            Jacobians only.
        every: probe every this many training steps, or "auto" (default): spread probes
            evenly over the `fit` so that the monitor's whole cost in it (its hooks on the
            training thread, probes and per-batch logging included, plus its writer thread's
            CPU time) stays within `overhead_budget` of the time spent training; the interval
            comes from the measured costs and step time and is planned again after every
            probe and epoch (the one-time tracing of the probe is not counted). A frame comes
            at least every 5 % of the fit's steps wherever the budget pays for that, and at the
            fit's last step in any case (the trained model). So frequent on small models and
            rare on big ones.
        layers: probe only these layer keys (see `probe`); default all.
        jacobian: record the per-step Jacobian norms (the most expensive field); with
            `every="auto"` one frame in four has them where they take at most half of the
            budget (fewer where they cost more), spread evenly too; the other frames record
            every other field.
        tokens: labels for the time axis: a list of T strings, or one such list per probe
            sample.
        overhead_budget: the fraction of training time "auto" may spend (0.02).
        max_pending_mb: bulky frames waiting for the writer beyond this are dropped (64).
        flush_seconds: the longest time a written record waits before reaching the OS.
        open_viewer: start the desktop viewer on this run in a separate process.
        resume: append to an existing run log instead of refusing it.
        chief_only: under `tf.distribute`, record only on the chief (default True).
        corpus: a `keras_rnnx.corpus_probe.CorpusProbe`: its text is stored once per run, and
            the states and gates of the recorded layers over it at the end of training and
            every `corpus_every` steps (within its `max_mb`). Its time is reported in the
            `train_end` event (`corpus_seconds`) and is outside the "auto" budget.
        corpus_every: record the corpus probe every this many steps too (None: only at the
            end of training).

    Use it as a context manager to close the log with status "error" when `fit` raises;
    otherwise it closes on `on_train_end`, when garbage-collected, or at interpreter exit.
    """

    def __init__(
        self,
        run_dir,
        probe_x,
        probe_y=None,
        every: int | str = "auto",
        layers=None,
        *,
        jacobian: bool = True,
        tokens=None,
        overhead_budget: float = 0.02,
        max_pending_mb: float = 64.0,
        flush_seconds: float = 0.1,
        open_viewer: bool = False,
        resume: bool = False,
        chief_only: bool = True,
        corpus=None,
        corpus_every: int | None = None,
    ):
        super().__init__()
        if every != "auto" and (isinstance(every, bool) or not isinstance(every, int)
                                or every < 1):
            raise ValueError(
                f"Invalid value for argument `every`: expected a positive integer or 'auto', "
                f"got {every!r}."
            )
        if not 0.0 < float(overhead_budget) < 1.0:
            raise ValueError(
                f"Invalid value for argument `overhead_budget`: expected a fraction in (0, 1), "
                f"got {overhead_budget!r}."
            )
        if probe_x is None:
            raise ValueError("RNNMonitor needs `probe_x`, a small batch of input sequences.")
        if corpus is not None and not callable(getattr(corpus, "record", None)):
            raise ValueError(
                f"Invalid value for argument `corpus`: expected a "
                f"keras_rnnx.corpus_probe.CorpusProbe, got {type(corpus).__name__}."
            )
        if corpus_every is not None and (isinstance(corpus_every, bool)
                                         or not isinstance(corpus_every, int)
                                         or corpus_every < 1):
            raise ValueError(
                f"Invalid value for argument `corpus_every`: expected a positive integer or "
                f"None, got {corpus_every!r}."
            )
        self.run_dir = Path(run_dir)
        if (self.run_dir / runlog.LOG_FILE_NAME).exists() and not resume:
            raise ValueError(
                f"Invalid value for argument `run_dir`: {self.run_dir} already holds a run "
                f"log; choose a new directory, or pass resume=True to append to it."
            )
        self.probe_x = probe_x
        self.probe_y = probe_y
        self.every = every
        self.layers = layers
        self.jacobian = bool(jacobian)
        self.tokens = tokens
        self.overhead_budget = float(overhead_budget)
        self.max_pending_bytes = int(max_pending_mb * 2**20)
        self.flush_seconds = float(flush_seconds)
        self.open_viewer = bool(open_viewer)
        self.resume = bool(resume)
        self.chief_only = bool(chief_only)
        self.corpus = corpus
        self.corpus_every = corpus_every
        self.corpus_seconds = 0.0
        self._corpus_step: int | None = None
        self._next_corpus = 0

        self.probe_count = 0
        self.probe_seconds = 0.0
        self.nonfinite_count = 0
        self.viewer_process = None
        self._writer: _Writer | None = None
        self._probes: dict[bool, Any] = {}  # with the Jacobian (True) and without (False)
        self._inputs = (probe_x, probe_y)
        self._active = False
        self._step = 0
        self._epoch_base = 0
        self._next_probe = 0
        self._probe_steps: list[int] = []
        self._jacobian_frames = 0  # frames with the Jacobian norms
        self._clock = 0.0
        self._spent = 0.0
        self._traced = 0.0
        self._writer_cpu_base = 0.0
        # Seconds a frame costs (probe and hand-over, tracing excluded): running means.
        self._probe_cost: dict[bool, float | None] = {True: None, False: None}
        self._cadence: _Cadence | None = None
        self._fit_start = 0
        self._first_step = 0.0  # training seconds of this fit's first step (tracing and all)
        self._frame_spent = 0.0  # the monitor's seconds in frames in this fit
        self._setup_spent = 0.0  # its one-time seconds at the fit's start, frames excluded
        self._next_full = 0.0
        self._last_frame = 0
        self._last_full = 0
        self._reported_drops = 0
        self._dropped = 0
        self._writer_cpu_seconds = 0.0
        self._probe_failed = False
        self._finalizer = None

    # --- public -------------------------------------------------------------------------

    @property
    def dropped_frames(self) -> int:
        """Bulky frames dropped under backpressure so far."""
        return self._dropped if self._writer is None else self._writer.dropped

    @property
    def writer_cpu_seconds(self) -> float:
        """CPU seconds the background writer thread used (final once the monitor is closed)."""
        return self._writer_cpu_seconds

    @property
    def interval(self) -> float | None:
        """The mean number of training steps between probes so far (None before two)."""
        steps = self._probe_steps
        return None if len(steps) < 2 else (steps[-1] - steps[0]) / (len(steps) - 1)

    @property
    def budget_used(self) -> float | None:
        """The monitor's seconds per second of training in this `fit`, so far.

        The monitor's seconds are those of its hooks on the training thread (probes included,
        their one-time tracing not) plus the CPU time of its writer thread.
        """
        training = time.perf_counter() - self._clock - self._spent
        return None if training <= 0 else self._monitor_seconds() / training

    def close(self, status: str = "ok") -> None:
        """Flushes and closes the run log; later calls do nothing."""
        writer, self._writer = self._writer, None
        self._active = False
        if writer is not None:
            writer.close(status)
            self._dropped = writer.dropped
            self._writer_cpu_seconds = writer.cpu_seconds
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close("ok" if exc_type is None else f"error: {exc_type.__name__}")
        return False

    # --- keras.callbacks.Callback ----------------------------------------------------------

    def on_train_begin(self, logs=None):
        self._step = self._epoch_base = self._global_step()
        self._clock = start = time.perf_counter()
        self._spent = self._traced = self._frame_spent = self._first_step = 0.0
        self._setup_spent = 0.0
        self._fit_start = self._last_frame = self._last_full = self._step
        if self.every == "auto":
            params = self.params or {}
            steps, epochs = params.get("steps"), params.get("epochs")
            total = steps * epochs if isinstance(steps, int) and isinstance(epochs, int) else None
            self._cadence = _Cadence(self.overhead_budget, _JACOBIAN_SHARE if self.jacobian
                                     else 0.0, total)
            self._next_probe, self._next_full = self._step + 1, float(_NEVER)
        if self._writer is not None:
            self._active = True  # a second `fit` on the same monitor appends to the same run
            self._writer_cpu_base = self._writer.cpu_seconds
            if isinstance(self.every, int):
                self._next_probe = self._step + self.every
            return
        # Keras 3 calls callbacks outside the strategy's scope: ask the model for it.
        if self.chief_only and not _is_chief(getattr(self.model, "distribute_strategy", None)):
            return
        from keras_rnnx import diagnostics

        self._probes = {self.jacobian: diagnostics.get_probe(self.model, layers=self.layers,
                                                             jacobian=self.jacobian)}
        # Converted once: converting NumPy arrays on every call is a good part of a cheap probe.
        # Inputs that do not convert go to the probe as given, which reports the error.
        try:
            self._inputs = (diagnostics._to_tensors(self.probe_x, "x"),
                            None if self.probe_y is None
                            else diagnostics._to_tensors(self.probe_y, "y"))
        except TypeError:
            self._inputs = (self.probe_x, self.probe_y)
        try:
            self._writer = _Writer(self.run_dir, self.flush_seconds, _FSYNC_SECONDS,
                                   self.max_pending_bytes, self.resume)
        except (OSError, runlog.RunLogError) as error:
            warnings.warn(
                f"RNNMonitor: cannot record into {self.run_dir} ({error}); training goes on "
                f"without it.",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        self._active = True
        writer = self._writer
        self._writer_cpu_base = 0.0
        self._finalizer = weakref.finalize(self, writer.close, "closed at exit")
        atexit.register(self._finalizer)

        self._frame(self.jacobian, meta=True)
        if self.corpus is not None:
            self.corpus.write_text(writer.put)
            self._next_corpus = self._step + (self.corpus_every or 0)
        if isinstance(self.every, int):
            self._next_probe = self._step + self.every
        if self.open_viewer:
            self._launch_viewer()
        self._account(start)
        # Spent (counted), but once: not part of the running rate `_plan` extrapolates.
        self._setup_spent = self._monitor_seconds() - self._frame_spent

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_base = self._step

    def on_train_batch_end(self, batch, logs=None):
        if not self._active:
            return
        # `batch` counts from 0 in each epoch (the last step of an execution with
        # steps_per_execution > 1); counting here avoids reading the optimizer every step.
        self._step = self._epoch_base + int(batch) + 1
        # Before the hook's own clock starts: the corpus probe is neither training nor "auto"
        # cost (it is asked for explicitly, at a fixed cadence).
        self._corpus_hook(final=False)
        start, cpu = time.perf_counter(), time.thread_time()
        # The writer thread takes batch logs from its row buffer when it wakes (at least every
        # flush_seconds): no hand-over, and no wake-up, per step.
        self._writer.rows.append((self._step, _floats(logs)))
        if self._step < self._next_probe:
            # Python work on this thread only: its CPU time is its cost. Wall time would also
            # charge the monitor for every other process that preempts it on a busy machine.
            self._spent += time.thread_time() - cpu
            return
        if self._cadence is not None:
            self._plan()  # due by the last plan; the costs and step time may have moved
        if self._step >= self._next_probe:
            if self._cadence is None:
                self._frame(self.jacobian)
                self._next_probe = self._step + self.every
            else:
                full = self._cadence.kind(self.jacobian and self._step >= self._next_full,
                                          *self._costs())
                if full is not None:
                    self._frame(full)
                self._plan()
        self._account(start)

    def on_epoch_end(self, epoch, logs=None):
        if self._active:
            start = time.perf_counter()
            self._writer.put("write_scalars", int(epoch), _floats(logs), phase="epoch")
            if self._cadence is not None:
                self._plan()
            self._account(start)

    def on_train_end(self, logs=None):
        if self._active:
            if self._cadence is not None and self._step > self._last_frame:
                # "auto": the trained model at the end of the fit is always recorded (one
                # frame, paid for in advance), with the Jacobian norms where the budget has
                # room for them.
                start = time.perf_counter()
                light, full = self._costs()
                self._plan()
                self._frame(full is not None and self._cadence.money + light >= full)
                self._account(start)
            self._corpus_hook(final=True)
            self._writer.put("write_event", "train_end", {
                "probes": self.probe_count, "probe_seconds": round(self.probe_seconds, 4),
                "monitor_seconds": round(self._monitor_seconds(), 4),
                "frame_seconds": round(self._frame_spent, 4),
                "setup_seconds": round(self._setup_spent, 4),
                "writer_cpu_seconds": round(self._writer.cpu_seconds - self._writer_cpu_base, 4),
                "training_seconds": round(self._training_seconds(), 4),
                "jacobian_frames": self._jacobian_frames,
                "interval": self.interval, "dropped_frames": self.dropped_frames,
                "nonfinite_arrays": self.nonfinite_count,
                **({} if self.corpus is None else {
                    "corpus_recordings": self.corpus.recordings,
                    "corpus_seconds": round(self.corpus_seconds, 4)}),
            }, step=self._step)
            self.close("ok")

    # --- internals ---------------------------------------------------------------------------

    def _corpus_hook(self, final: bool) -> None:
        """Records the corpus probe at the end of training and every `corpus_every` steps."""
        if self.corpus is None or self._corpus_step == self._step:
            return
        if not final and (self.corpus_every is None or self._step < self._next_corpus):
            return
        start = time.perf_counter()
        recorded = True
        try:
            recorded = self.corpus.record(self.model, self._writer.put, self._step, final=final)
        except Exception as error:  # noqa: BLE001 - a failed corpus probe must not stop training
            warnings.warn(f"RNNMonitor: the corpus probe failed ({type(error).__name__}: "
                          f"{error}); training goes on.", RuntimeWarning, stacklevel=3)
            self._writer.put("write_event", "corpus_probe_error",
                             {"error": f"{type(error).__name__}: {error}"}, step=self._step)
            self.corpus = None
        seconds = time.perf_counter() - start
        self.corpus_seconds += seconds
        # Asked for explicitly, at a fixed cadence: neither training time nor "auto" cost
        # (called outside the hooks' accounted time).
        self._clock += seconds
        if recorded:
            self._corpus_step = self._step
        if self.corpus_every is not None:
            self._next_corpus = self._step + self.corpus_every

    def _global_step(self) -> int:
        optimizer = getattr(self.model, "optimizer", None)
        iterations = getattr(optimizer, "iterations", None)
        return 0 if iterations is None else int(keras.ops.convert_to_numpy(iterations))

    def _account(self, start: float) -> None:
        """Adds a hook's time since `start` to the monitor's, less any tracing in it."""
        self._spent += time.perf_counter() - start - self._traced
        self._traced = 0.0

    def _monitor_seconds(self) -> float:
        """The monitor's cost in this `fit`: hook time (probes included) + writer CPU time."""
        writer = self._writer.cpu_seconds if self._writer is not None else 0.0
        return self._spent + max(0.0, writer - self._writer_cpu_base)

    def _training_seconds(self) -> float:
        return time.perf_counter() - self._clock - self._spent

    def _plan(self) -> None:
        """Sets the steps of the next frame and of the next Jacobian frame ("auto").

        The monitor's cost is everything it did in this `fit` (its hooks on the training
        thread, the first probe of the `fit` and the per-batch logging included, and the CPU
        time of its writer thread); training time is the wall time of this `fit` less the
        hooks; `_Cadence` spreads what the budget leaves over the remaining steps. The first
        step (which traces the training function) does not count towards the time a step
        takes. A call that traced a probe's graph counts as neither training nor cost.
        """
        done = self._step - self._fit_start
        training = self._training_seconds()
        if done < 2:
            if done == 1:
                self._first_step = training
            self._next_probe = self._step + 1
            return
        step_seconds = (training - self._first_step) / (done - 1)
        spent = self._monitor_seconds()
        light, full = self._costs()
        # The frame at the fit's last step (`on_train_end`) is paid for in advance.
        frame_every, full_every = self._cadence.intervals(
            done=done, training=training, step_seconds=step_seconds, spent=spent + light,
            other=max(0.0, spent - self._frame_spent - self._setup_spent), light=light,
            full=full)
        if frame_every == float("inf"):
            # Nothing affordable now: look again in a while (the step time may grow).
            frame_every = max(1.0, 0.05 * done)
        self._next_probe = max(self._step, self._last_frame + round(frame_every))
        if self._probe_cost[False] is None and self.jacobian:
            # Until a frame without the Jacobian norms is measured, its cost stands at a
            # Jacobian frame's, many times too high: measure one now (if that much is left).
            self._next_probe = self._step
        self._next_full = self._last_full + full_every

    def _costs(self) -> tuple[float, float | None]:
        """(a frame's cost, a Jacobian frame's or None): measured; before the first frame
        without the Jacobian norms, a Jacobian frame's cost stands for both. The first
        Jacobian frame starts its Lanczos steps cold (and at initialisation clustered singular
        values send many rows to the exact solver); later ones start from its vectors, so
        until a second one is measured a Jacobian frame is planned at twice a plain frame's
        cost, at most the first one's."""
        full = self._probe_cost[True]
        light = self._probe_cost[False] or full or 0.0
        if full is not None and self._jacobian_frames == 1 and self._probe_cost[False]:
            full = min(full, 2.0 * light)
        return light, (None if not self.jacobian else (full or light))

    def _frame(self, full: bool, meta: bool = False):
        """Probes (with the Jacobian norms if `full`) and queues the frame; measures its cost."""
        start, traced = time.perf_counter(), self._traced
        trace = self._probe_now(full)
        if meta:
            meta_start = time.perf_counter()
            self._writer.put("write_meta", self._meta(trace if trace is not None else {}))
            start += time.perf_counter() - meta_start  # once per run: not a frame's cost
        self._record(self._step, trace)
        seconds = time.perf_counter() - start - (self._traced - traced)
        self._frame_spent += seconds
        if trace is not None:
            cost = self._probe_cost[full]
            if cost is None or (full and self._jacobian_frames == 1):
                # The first Jacobian frame starts its Lanczos steps cold, the later ones from
                # the previous frame's vectors, at a fraction of its cost: the second replaces
                # the first measurement instead of averaging with it.
                self._probe_cost[full] = seconds
            else:
                self._probe_cost[full] = 0.7 * cost + 0.3 * seconds
        self._last_frame = self._step
        if full and trace is not None:
            self._last_full = self._step
            self._jacobian_frames += 1
        return trace

    def _probe_now(self, full: bool):
        probe = self._probes.get(full)
        if probe is None:
            from keras_rnnx import diagnostics

            probe = self._probes[full] = diagnostics.get_probe(
                self.model, layers=self.layers, jacobian=full)
        trace, seconds, traced = self._call_probe(probe)
        if traced and trace is not None and not isinstance(self.every, int):
            # That call traced the probe's graph, which is neither training nor the monitor's
            # running cost; "auto" needs the cost, so it probes once more (and records that).
            self._clock += seconds
            self._traced += seconds
            trace, seconds, traced = self._call_probe(probe)
        self.probe_count += 1
        self.probe_seconds += seconds
        self._probe_steps.append(self._step)
        if traced:
            self._clock += seconds
            self._traced += seconds
        return trace

    def _call_probe(self, probe):
        """(trace or None if the probe failed, seconds, whether the call traced)."""
        start = time.perf_counter()
        traces_before = probe.trace_count
        try:
            trace = probe(*self._inputs)
        except Exception as error:  # noqa: BLE001 - a failed probe must not stop training
            trace = None
            if not self._probe_failed:
                warnings.warn(f"RNNMonitor: the probe failed ({type(error).__name__}: "
                              f"{error}); training goes on.", RuntimeWarning, stacklevel=4)
            self._probe_failed = True
            self._writer.put("write_event", "probe_error",
                             {"error": f"{type(error).__name__}: {error}"},
                             step=self._step)
        return trace, time.perf_counter() - start, probe.trace_count != traces_before

    def _record(self, step: int, trace) -> None:
        writer = self._writer
        if trace is None:
            return
        scalars = None if trace.loss is None else (step, {"probe_loss": trace.loss})
        frames = []
        for key, fields in trace.items():
            arrays = {"grad_norm": fields["grad_norm"], "jacobian_norm": fields["jacobian_norm"]}
            arrays.update(fields["states"])
            mask = np.asarray(fields["meta"]["mask"], dtype=bool)
            # The probe leaves gates of masked steps NaN ("not computed"); record them as 0 so
            # that NaN in the log always means a real numerical problem. The mask is in meta.
            if mask.all():
                arrays.update(fields["gates"])
            else:
                arrays.update({name: np.where(mask[..., None], gate, 0.0).astype(np.float32)
                               for name, gate in fields["gates"].items()})
            arrays["grad_h"] = fields["grad_h"]
            blocks = fields["meta"]["block_names"]
            arrays["sigma_max"] = np.array(
                [fields["recurrent_sigma_max"][b] for b in blocks], dtype=np.float64)
            for weight, norms in (fields["weight_grad_norm"] or {}).items():
                # Peephole vectors and G have blocks of their own (see the probe's docs).
                arrays[f"{weight}_grad_norm"] = np.array(
                    [norms[b] for b in blocks if b in norms], dtype=np.float64)
            for kind, array in arrays.items():
                if array is None:
                    continue
                array = np.asarray(array)
                if not np.all(np.isfinite(array)):
                    self.nonfinite_count += 1
                bulky = _nbytes(array) if kind in BULKY_KINDS else 0
                frames.append((kind, key, step, array, bulky))
        writer.put_frames(frames, scalars)
        if writer.dropped != self._reported_drops:
            self._reported_drops = writer.dropped
            writer.put("write_event", "dropped_frames", {"count": writer.dropped}, step=step)

    def _meta(self, trace) -> dict[str, Any]:
        import tensorflow as tf

        summary: list[str] = []
        try:
            self.model.summary(print_fn=lambda line, *a, **k: summary.append(line))
        except Exception as error:  # noqa: BLE001 - a summary is a nicety, never fatal
            summary = [f"(no summary: {error})"]
        layers = {}
        for key, fields in trace.items():
            meta = fields["meta"]
            activations = meta["block_activations"]
            output_activation = activations.get("z", activations.get(meta["block_names"][0]))
            bounds = {name: _BOUNDS.get(activations.get(name)) for name in meta["gate_names"]}
            bounds["h"] = _BOUNDS.get(output_activation) if meta["kind"] != "cec" else [-1, 1]
            if "c" in meta["state_names"]:
                bounds["c"] = None
            if meta["kind"] == "LSTM-NOAF":
                bounds["h"] = None  # h = o ⊙ c: no output activation bounds it
            if "g" in meta["state_names"]:
                bounds["g"] = _BOUNDS.get(activations.get("i"))  # FGR's previous [i | f | o]
            layers[key] = {
                "layer": meta["layer"],
                "cell": meta["kind"],
                "cell_class": meta["cell_class"],
                "units": meta["units"],
                "timesteps": meta["timesteps"],
                "states": list(meta["state_names"]),
                "gates": list(meta["gate_names"]),
                "blocks": list(meta["block_names"]),
                "block_activations": dict(activations),
                "activation_bounds": bounds,
                "sigma_threshold": [fields["recurrent_sigma_threshold"][b]
                                    for b in meta["block_names"]],
                "go_backwards": meta["go_backwards"],
                "direction": meta["direction"],
                "time_order": meta["time_order"],
                "mask": np.asarray(meta["mask"], dtype=bool).astype(int).tolist(),
            }
        shapes = [list(np.shape(a)) for a in keras.tree.flatten(self.probe_x)]
        return {
            "model": {"name": self.model.name, "summary": "\n".join(summary),
                      "class": type(self.model).__name__},
            "layers": layers,
            "probe": {"batch_shape": shapes[0] if len(shapes) == 1 else shapes,
                      "tokens": _tokens(self.tokens),
                      "has_targets": self.probe_y is not None},
            "versions": {"keras": keras.__version__, "tensorflow": tf.__version__,
                         "keras_rnnx": __version__, "numpy": np.__version__},
            "monitor": {"every": self.every, "overhead_budget": self.overhead_budget,
                        "jacobian": self.jacobian},
        }

    def _launch_viewer(self) -> None:
        # A separate process (`python -m visualizer`): nothing of the viewer is imported here.
        from keras_rnnx.viewer_process import open_viewer

        self.viewer_process = open_viewer(self.run_dir)


def _floats(logs) -> dict[str, float]:
    out = {}
    for name, value in (logs or {}).items():
        if isinstance(value, (float, int)):  # what Keras's pythonify_logs hands callbacks
            out[str(name)] = float(value)
            continue
        try:
            out[str(name)] = float(np.asarray(value).reshape(-1)[0])
        except (TypeError, ValueError, IndexError):
            continue
    return out


def _tokens(tokens):
    if tokens is None:
        return None
    tokens = list(tokens)
    if tokens and all(isinstance(t, str) for t in tokens):
        return [str(t) for t in tokens]
    return [[str(t) for t in row] for row in tokens]
