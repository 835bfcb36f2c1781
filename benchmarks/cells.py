"""Training and inference speed of the lecture cells against Keras's and PyTorch's LSTM.

Workloads (all on the CPU, float32; `Input((T, input)) → RNN(units) → Dense(1)`, MSE, Adam):

- W1: batch 64, T = 100, input 32, units 128. W2 (`--w2`): T = 1000, units 256.
- Training, two ways: `model.fit` (one epoch of `--batches` batches per round from NumPy arrays,
  the median time between consecutive batch ends, the first batch of each epoch left out) and
  `train_on_batch`. Rows: `ForgetGateLSTMCell` in `rx.RNN` with Keras's default compile (on a
  CPU-only machine: no XLA, and the compiled kernels where `keras_rnnx._native.select`
  measured them faster than rx.RNN's TensorFlow loop), the same with the kernels off
  (`KERAS_RNNX_NATIVE=0`), and under XLA; `keras.layers.LSTM` with Keras's default compile and
  with XLA (the faster of the two is the Keras baseline); `torch.nn.LSTM` (its own loop of
  `zero_grad`/`backward`/`step` over the same batches, on all cores (its default) and on one:
  its OpenMP threads wait for each other at every step, which collapses when another process
  holds a core, so the faster of the two is the baseline; if torch is installed:
  `pip install torch==2.13.0`); in W1 the other three cells in `rx.RNN`.
- Inference (forward only) at batch 64 and 1: `predict_on_batch` (batch 64), and
  `model(x, training=False)` in a `tf.function` with and without `jit_compile`; the model
  exported with `model.export` and served by `tf.saved_model.load(...).serve` (it runs
  without keras-rnnx); `torch.nn.LSTM` under `torch.no_grad()` (on all cores and on one);
  and, as the floor of what any Keras model costs per call here, a model of one Dense layer
  on the same input (`Flatten → Dense(1)`) in the same `tf.function`s. Then 8 calls of the
  `tf.function` in TensorFlow's profiler (which slows them a little): how much of a call is
  tf.function's Python dispatch before TensorFlow executes it, and how much the inference op.
- Roofline: the machine's large-matmul rate (2048² float32 in TensorFlow, GFLOP/s), against
  which the training steps' rate is reported (FLOPs of the matrix products only: forward
  x·W and h·U, backward twice that; W1 ≈ 3.15 GFLOP a step for the LSTMs).

Every table is timed in interleaved rounds (A, B, C, …, A, B, C, …) and medians are compared
as ratios against baselines measured in the same run, so that load from other processes
shifts all rows alike.

    python benchmarks/cells.py              # W1, inference, roofline (about 4 minutes on 2 cores)
    python benchmarks/cells.py --w2         # also W2 (about 3 more)
    python benchmarks/cells.py --quick      # tiny sizes, a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import glob
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from machine import describe  # noqa: E402

import keras_rnnx as rx  # noqa: E402
from keras_rnnx import _native  # noqa: E402
from keras_rnnx._native import select  # noqa: E402

N_BLOCKS = {"vanilla": 1, "cec": 1, "original": 3, "forget": 4}
KERAS_LSTM = ("keras.layers.LSTM", "keras.layers.LSTM XLA")
TORCH = "torch.nn.LSTM"
TORCH_1 = "torch.nn.LSTM 1 thread"
TORCH_BEST = "torch (faster)"


@contextlib.contextmanager
def native_policy(value):
    """KERAS_RNNX_NATIVE while a model's graphs are traced (rx.RNN reads it at trace time)."""
    old = os.environ.get("KERAS_RNNX_NATIVE")
    os.environ["KERAS_RNNX_NATIVE"] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ["KERAS_RNNX_NATIVE"]
        else:
            os.environ["KERAS_RNNX_NATIVE"] = old


def keras_model(layer, steps, features, jit):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((steps, features)), layer, keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse", jit_compile=jit)
    return model


def keras_models(steps, features, units, kinds):
    """name -> (model, n_blocks, KERAS_RNNX_NATIVE while tracing). "XLA" rows compile with
    jit_compile=True; the others with Keras's default, on a CPU-only machine no XLA."""
    forget = rx.ForgetGateLSTMCell
    out = {
        "rx.RNN(forget)": (keras_model(rx.RNN(forget(units)), steps, features, "auto"), 4,
                           "auto"),
        "rx.RNN(forget) kernels off": (
            keras_model(rx.RNN(forget(units)), steps, features, "auto"), 4, "0"),
        "rx.RNN(forget) XLA": (keras_model(rx.RNN(forget(units)), steps, features, True), 4,
                               "auto"),
        KERAS_LSTM[0]: (keras_model(keras.layers.LSTM(units), steps, features, "auto"), 4,
                        "auto"),
        KERAS_LSTM[1]: (keras_model(keras.layers.LSTM(units), steps, features, True), 4,
                        "auto"),
    }
    for kind in kinds:
        if kind != "forget":
            out[f"rx.RNN({kind})"] = (keras_model(rx.RNN(rx.CELL_KINDS[kind](units)), steps,
                                                  features, "auto"), N_BLOCKS[kind], "auto")
    return out


class BatchEnds(keras.callbacks.Callback):
    """Seconds between consecutive batch ends within an epoch (the first batch left out: it
    includes the epoch's setup)."""

    def on_epoch_begin(self, epoch, logs=None):
        self.stamps = []

    def on_train_batch_end(self, batch, logs=None):
        self.stamps.append(time.perf_counter())

    def step_seconds(self):
        return list(np.diff(self.stamps))


def torch_parts(steps, features, units):
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(features, units, batch_first=True)
            self.head = torch.nn.Linear(units, 1)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.head(out[:, -1])

    net = Net()
    optimizer = torch.optim.Adam(net.parameters())

    def train_step(x, y, threads):
        torch.set_num_threads(threads)
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        optimizer.step()

    def predict(x, threads):
        torch.set_num_threads(threads)
        with torch.no_grad():
            return net(x)

    return torch, train_step, predict


def per_call(fn, calls):
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def interleaved(fns, rounds):
    """name -> median over rounds of fn()'s returned seconds; one warm-up call each."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(fn())
    return {name: statistics.median(values) for name, values in times.items()}


def matmul_gflops(size, repeats):
    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    matmul = tf.function(lambda a, b: tf.matmul(a, b))
    matmul(a, b).numpy()
    seconds = min(per_call(lambda: matmul(a, b).numpy(), repeats) for _ in range(3))
    return 2 * size**3 / seconds / 1e9


def train_flops(batch, steps, features, units, blocks):
    """Matrix-product FLOPs of one training step: forward x·W and h·U, backward twice that."""
    return 3 * 2 * batch * steps * (features + units) * blocks * units


def print_table(title, medians, baselines, flops=None, peak=None):
    print(f"\n{title}")
    baselines = [b for b in baselines if b in medians]
    header = f"  {'':<40}{'ms':>10}" + (f"{'GFLOP/s':>9}{'% roof':>8}" if flops else "")
    print(header + "".join(f"{'÷ ' + b:>34}" for b in baselines))
    for name, seconds in medians.items():
        line = f"  {name:<40}{seconds * 1e3:>10.2f}"
        if flops:
            rate = flops[name] / seconds / 1e9
            line += f"{rate:>9.1f}{100 * rate / peak:>7.0f}%"
        print(line + "".join(f"{seconds / medians[b]:>34.2f}" for b in baselines))


def run_training(label, batch, steps, features, units, kinds, rounds, calls, batches,
                 with_torch, peak):
    gc.collect()  # each section starts without the garbage of the one before
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * batches, steps, features)).astype("float32")
    y = rng.normal(size=(batch * batches, 1)).astype("float32")
    models = keras_models(steps, features, units, kinds)
    fit_fns, tob_fns, flops = {}, {}, {}
    for name, (model, blocks, policy) in models.items():
        flops[name] = train_flops(batch, steps, features, units, blocks)
        callback = BatchEnds()

        def fit(model=model, callback=callback):
            model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0,
                      callbacks=[callback])
            return statistics.median(callback.step_seconds()[1:])

        def train_on_batch(model=model):
            return per_call(lambda: model.train_on_batch(x[:batch], y[:batch]), calls)

        with native_policy(policy):  # both training functions are traced here
            fit()
            train_on_batch()
        fit_fns[name], tob_fns[name] = fit, train_on_batch
    parts = torch_parts(steps, features, units) if with_torch else None
    if parts is not None:
        torch, train_step, _ = parts
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def torch_fit(threads):
            stamps = []
            for k in range(batches):
                train_step(tx[k * batch:(k + 1) * batch], ty[k * batch:(k + 1) * batch],
                           threads)
                stamps.append(time.perf_counter())
            return statistics.median(np.diff(stamps)[1:])

        for name, threads in ((TORCH, os.cpu_count() or 1), (TORCH_1, 1)):
            fit_fns[name] = lambda threads=threads: torch_fit(threads)
            tob_fns[name] = lambda threads=threads: per_call(
                lambda: train_step(tx[:batch], ty[:batch], threads), calls)
            flops[name] = train_flops(batch, steps, features, units, 4)
    fns = {**{("fit", n): f for n, f in fit_fns.items()},
           **{("tob", n): f for n, f in tob_fns.items()}}
    medians = interleaved(fns, rounds)
    for mode, what in (("fit", f"model.fit, {batches} batches an epoch, median step"),
                       ("tob", f"train_on_batch, {calls} calls a round")):
        table = {name: medians[(mode, name)] for name in fit_fns}
        table["Keras LSTM (faster)"] = min(table[name] for name in KERAS_LSTM)
        flops["Keras LSTM (faster)"] = flops[KERAS_LSTM[0]]
        if TORCH in table:
            table[TORCH_BEST] = min(table[TORCH], table[TORCH_1])
            flops[TORCH_BEST] = flops[TORCH]
        print_table(f"{label} training, {what}: batch {batch}, T = {steps}, input {features}, "
                    f"units {units}, Adam; median of {rounds} interleaved rounds",
                    table, ("Keras LSTM (faster)", TORCH_BEST), flops, peak)
    print(f"  rx.RNN's compiled CPU kernels: {_native.status()}")
    for key, decision in select.decisions().items():
        print(f"  selection {key}: kernels {statistics.median(decision['kernels']) * 1e3:.2f} ms"
              f", loop {statistics.median(decision['loop']) * 1e3:.2f} ms → "
              f"{'kernels' if decision['use_kernels'] else 'TensorFlow loop'}"
              if decision.get("kernels") else f"  selection {key}: {decision}")


def trace_call(fn, calls=8):
    """Medians over `calls` calls of fn in TensorFlow's profiler, ms: the whole call, the time
    from its start to TensorFlow executing the function (tf.function's Python dispatch), and
    the inference op's own time; None where no trace can be read."""
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError:
        return None
    fn()
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            for k in range(calls + 2):  # the first two warm the profiler up
                with tf.profiler.experimental.Trace("benchmark call" if k >= 2 else "warm-up"):
                    fn()
        finally:
            tf.profiler.experimental.stop()
        paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        if not paths:
            return None
        space = xplane_pb2.XSpace()
        with open(paths[0], "rb") as file:
            space.ParseFromString(file.read())
    events = []  # (start, duration, name), µs
    for plane in space.planes:
        names = {key: value.name for key, value in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                events.append(((line.timestamp_ns * 1000 + event.offset_ps) / 1e6,
                               event.duration_ps / 1e6, names.get(event.metadata_id, "")))
    events.sort()
    parts = []
    for start, duration, name in events:
        if name != "benchmark call":
            continue
        inside = [e for e in events if start <= e[0] <= start + duration]
        execute = [e[0] for e in inside if e[2] == "TFE_Py_ExecuteCancelable"]
        op = [e[1] for e in inside if "RnnxCellInfer" in e[2]]
        if execute and op:
            parts.append((duration, execute[0] - start, op[0]))
    if not parts:
        return None
    return tuple(statistics.median(p[k] for p in parts) / 1e3 for k in range(3))


def run_inference(batch_sizes, steps, features, units, rounds, calls, with_torch):
    gc.collect()  # each section starts without the garbage of the one before
    keras.utils.set_random_seed(0)
    models = {"rx.RNN(forget)": keras_model(rx.RNN(rx.ForgetGateLSTMCell(units)), steps,
                                            features, "auto"),
              "keras.layers.LSTM": keras_model(keras.layers.LSTM(units), steps, features,
                                               "auto")}
    floor = keras_model(keras.layers.Flatten(), steps, features, "auto")
    served = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in models.items():
            path = os.path.join(tmp, name.replace("(", "_").replace(")", ""))
            model.export(path, verbose=False)
            served[name] = tf.saved_model.load(path)
    parts = torch_parts(steps, features, units) if with_torch else None
    rng = np.random.default_rng(1)
    for batch in batch_sizes:
        x_np = rng.normal(size=(batch, steps, features)).astype("float32")
        x = tf.constant(x_np)
        fns = {}
        for name, model in models.items():
            if batch > 1:
                fns[f"{name} predict_on_batch"] = lambda m=model: m.predict_on_batch(x_np)
            for jit, tag in ((False, "tf.function"), (True, "tf.function XLA")):
                fn = tf.function(lambda v, m=model: m(v, training=False), jit_compile=jit)
                fns[f"{name} {tag}"] = lambda fn=fn: fn(x).numpy()
            fns[f"{name} exported serve"] = lambda s=served[name]: s.serve(x).numpy()
        for jit, tag in ((False, "tf.function"), (True, "tf.function XLA")):
            fn = tf.function(lambda v: floor(v, training=False), jit_compile=jit)
            fns[f"floor: Dense-only model {tag}"] = lambda fn=fn: fn(x).numpy()
        if parts is not None:
            torch, _, predict = parts
            tx = torch.from_numpy(x_np)
            fns[TORCH] = lambda: predict(tx, os.cpu_count() or 1)
            fns[TORCH_1] = lambda: predict(tx, 1)
        n = calls * (10 if batch == 1 else 1)
        medians = interleaved({k: (lambda f=f: per_call(f, n)) for k, f in fns.items()}, rounds)
        if TORCH in medians:
            medians[TORCH_BEST] = min(medians[TORCH], medians[TORCH_1])
        print_table(f"Inference (forward only), batch {batch}, T = {steps}, input {features}, "
                    f"units {units}; median of {rounds} interleaved rounds × {n} calls",
                    medians, ("keras.layers.LSTM tf.function", TORCH_BEST))
        traced = trace_call(fns["rx.RNN(forget) tf.function"])
        if traced is None:
            print("  rx.RNN(forget) tf.function in TensorFlow's profiler: no trace (or the "
                  "inference kernel not in use)")
        else:
            call, dispatch, op = traced
            print(f"  rx.RNN(forget) tf.function in TensorFlow's profiler (8 calls, medians): "
                  f"call {call:.2f} ms = tf.function's Python dispatch {dispatch:.2f} + "
                  f"inference op {op:.2f} + the rest {call - dispatch - op:.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="training rounds")
    parser.add_argument("--inference-rounds", type=int, default=15,
                        help="inference rounds (each call takes milliseconds: more rounds, so "
                             "that a slow second on a shared machine moves the medians less)")
    parser.add_argument("--calls", type=int, default=5, help="train_on_batch calls a round")
    parser.add_argument("--batches", type=int, default=20, help="model.fit batches an epoch")
    parser.add_argument("--w2", action="store_true", help="also run W2 (T = 1000, units 256)")
    parser.add_argument("--no-w1", action="store_true", help="skip W1 training")
    parser.add_argument("--no-inference", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    args = parser.parse_args(argv)
    kinds = ["vanilla", "cec", "original", "forget"]
    with_torch = not args.no_torch
    print(f"machine: {describe()}; load average {os.getloadavg()[0]:.1f}; tensorflow "
          f"{tf.__version__}, keras {keras.__version__}, numpy {np.__version__}")
    size, repeats = (256, 2) if args.quick else (2048, 3)
    peak = matmul_gflops(size, repeats)
    print(f"roofline: {size}² float32 matmul at {peak:.1f} GFLOP/s")
    if args.quick:
        run_training("W1 (quick)", 8, 10, 4, 8, kinds, 2, 1, 4, with_torch, peak)
        run_inference([1, 8], 10, 4, 8, 2, 1, with_torch)
        return
    if not args.no_w1:
        run_training("W1", 64, 100, 32, 128, kinds, args.rounds, args.calls, args.batches,
                     with_torch, peak)
    if not args.no_inference:
        run_inference([64, 1], 100, 32, 128, args.inference_rounds, args.calls, with_torch)
    if args.w2:
        run_training("W2", 64, 1000, 32, 256, ["forget"], max(3, args.rounds // 2), 1, 4,
                     with_torch, peak)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
