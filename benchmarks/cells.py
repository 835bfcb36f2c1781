"""Training and inference speed of the lecture cells against Keras's and PyTorch's LSTM.

Workloads (all on the CPU, float32):

- W1: one training step (forward, backward, Adam update) of `Input((100, 32)) → RNN(128) →
  Dense(1)` on a batch of 64, for `ForgetGateLSTMCell` in `keras_rnnx.RNN` (compiled with
  Keras's default, which on a CPU-only machine means no XLA: its compiled kernels; and with
  XLA: its TensorFlow loop) and in `keras.layers.RNN` (Keras's generic loop, XLA),
  `keras.layers.LSTM` in both configurations (the faster one is the baseline),
  `torch.nn.LSTM` (if torch is installed: `pip install torch==2.13.0`), and the other three
  cells in `keras_rnnx.RNN` (Keras's default); plus inference (forward only) at batch 1 and 64.
- W2: the same training step on long sequences, T = 1000, units 256.
- Roofline: the machine's large-matmul throughput (2048² float32, GFLOP/s), against which the
  cells' achieved GFLOP/s is reported (FLOPs of the matrix products only).

Every workload is timed in interleaved rounds (A, B, C, …, A, B, C, …) and the median
per-step time is compared as a ratio against the named baselines measured in the same run.

    python benchmarks/cells.py              # W1 + roofline (a few minutes)
    python benchmarks/cells.py --w2         # also W2
    python benchmarks/cells.py --quick      # tiny sizes, a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from machine import describe  # noqa: E402

import keras_rnnx as rx  # noqa: E402
from keras_rnnx import _native  # noqa: E402

N_BLOCKS = {"vanilla": 1, "cec": 1, "original": 3, "forget": 4, "keras_lstm": 4, "torch": 4}


def keras_model(layer, steps, features, jit=True):
    model = keras.Sequential([keras.Input((steps, features)), layer, keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse", jit_compile=jit)
    return model


KERAS_LSTM = ("keras.layers.LSTM", "keras.layers.LSTM XLA")


def keras_workloads(steps, features, units, kinds):
    """name -> (model, n_blocks). "XLA" rows compile with jit_compile=True; the others with
    Keras's default, which on a CPU-only machine is no XLA."""
    keras.utils.set_random_seed(0)
    forget = rx.ForgetGateLSTMCell
    out = {
        "rx.RNN(forget)": (keras_model(rx.RNN(forget(units)), steps, features, "auto"), 4),
        "rx.RNN(forget) XLA": (keras_model(rx.RNN(forget(units)), steps, features), 4),
        "keras.layers.RNN(forget) XLA": (
            keras_model(keras.layers.RNN(forget(units)), steps, features), 4),
        KERAS_LSTM[0]: (keras_model(keras.layers.LSTM(units), steps, features, "auto"), 4),
        KERAS_LSTM[1]: (keras_model(keras.layers.LSTM(units), steps, features), 4),
    }
    for kind in kinds:
        if kind != "forget":
            out[f"rx.RNN({kind})"] = (keras_model(rx.RNN(rx.CELL_KINDS[kind](units)), steps,
                                                  features, "auto"), N_BLOCKS[kind])
    return out


def torch_workload(steps, features, units):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
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

    def train_step(x, y):
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        optimizer.step()

    def predict(x):
        with torch.no_grad():
            net(x)

    return torch, train_step, predict


def time_calls(fn, repeats):
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def matmul_gflops(size, repeats):
    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    matmul = tf.function(lambda a, b: tf.matmul(a, b))
    matmul(a, b).numpy()
    seconds = min(time_calls(lambda: matmul(a, b).numpy(), repeats) for _ in range(3))
    return 2 * size**3 / seconds / 1e9


def train_flops(batch, steps, features, units, blocks):
    """Matrix-product FLOPs of one training step: forward x·W and h·U, backward twice that."""
    forward = 2 * batch * steps * (features + units) * blocks * units
    return 3 * forward


def run_training(label, batch, steps, features, units, kinds, rounds, calls, with_torch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, steps, features)).astype("float32")
    y = rng.normal(size=(batch, 1)).astype("float32")
    workloads = {name: (lambda m=model: m.train_on_batch(x, y), blocks)
                 for name, (model, blocks) in keras_workloads(steps, features, units,
                                                              kinds).items()}
    torch_parts = torch_workload(steps, features, units) if with_torch else None
    if torch_parts is not None:
        torch, train_step, _ = torch_parts
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        workloads["torch.nn.LSTM"] = (lambda: train_step(tx, ty), 4)
    for fn, _ in workloads.values():  # compile / warm up
        fn()
        fn()
    times = {name: [] for name in workloads}
    for _ in range(rounds):
        for name, (fn, _) in workloads.items():
            times[name].append(time_calls(fn, calls))
    medians = {name: statistics.median(values) for name, values in times.items()}
    # The Keras LSTM baseline is the faster of its two configurations in this run.
    medians["Keras LSTM (faster)"] = min(medians[name] for name in KERAS_LSTM)
    print(f"\n{label}: training step, batch {batch}, T = {steps}, input {features}, "
          f"units {units}; median of {rounds} interleaved rounds × {calls} steps")
    baselines = [b for b in ("Keras LSTM (faster)", "torch.nn.LSTM") if b in medians]
    header = f"{'':<30}{'ms/step':>9}{'GFLOP/s':>9}" + "".join(f"{'÷ ' + b:>24}"
                                                             for b in baselines)
    print(header)
    for name in workloads:
        seconds = medians[name]
        flops = train_flops(batch, steps, features, units, workloads[name][1])
        ratios = "".join(f"{seconds / medians[b]:>24.2f}" for b in baselines)
        print(f"{name:<30}{seconds * 1e3:>9.1f}{flops / seconds / 1e9:>9.2f}{ratios}")
    print(f"rx.RNN's compiled CPU kernels: {_native.status()}")
    return medians


def run_inference(batch_sizes, steps, features, units, rounds, calls, with_torch):
    print(f"\nInference (forward only), T = {steps}, input {features}, units {units}; "
          f"median of {rounds} interleaved rounds × {calls} calls")
    keras.utils.set_random_seed(0)
    layers = {
        "rx.RNN(forget)": rx.RNN(rx.ForgetGateLSTMCell(units)),
        "keras.layers.RNN(forget)": keras.layers.RNN(rx.ForgetGateLSTMCell(units)),
        "keras.layers.LSTM": keras.layers.LSTM(units),
    }
    torch_parts = torch_workload(steps, features, units) if with_torch else None
    rng = np.random.default_rng(1)
    for batch in batch_sizes:
        x = tf.constant(rng.normal(size=(batch, steps, features)).astype("float32"))
        fns = {}
        for name, layer in layers.items():
            fn = tf.function(layer, jit_compile=True)
            fns[name] = lambda fn=fn: fn(x).numpy()
        if torch_parts is not None:
            torch, _, predict = torch_parts
            tx = torch.from_numpy(x.numpy())
            fns["torch.nn.LSTM"] = lambda: predict(tx)
        for fn in fns.values():
            fn()
        times = {name: [] for name in fns}
        for _ in range(rounds):
            for name, fn in fns.items():
                times[name].append(time_calls(fn, calls))
        base = statistics.median(times["keras.layers.LSTM"])
        for name, values in times.items():
            median = statistics.median(values)
            print(f"  batch {batch:<4}{name:<26}{median * 1e3:>9.2f} ms"
                  f"{median / base:>8.2f} × keras.layers.LSTM")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5, help="steps timed per round")
    parser.add_argument("--w2", action="store_true", help="also run W2 (T = 1000, units 256)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    args = parser.parse_args(argv)
    kinds = ["vanilla", "cec", "original", "forget"]
    with_torch = not args.no_torch
    print(f"machine: {describe()}; tensorflow {tf.__version__}, "
          f"keras {keras.__version__}, numpy {np.__version__}")
    size, repeats = (256, 2) if args.quick else (2048, 3)
    peak = matmul_gflops(size, repeats)
    print(f"roofline: {size}² float32 matmul at {peak:.1f} GFLOP/s")
    if args.quick:
        run_training("W1 (quick)", 8, 10, 4, 8, kinds, 2, 1, with_torch)
        run_inference([1, 8], 10, 4, 8, 2, 1, with_torch)
        return
    run_training("W1", 64, 100, 32, 128, kinds, args.rounds, args.calls, with_torch)
    run_inference([1, 64], 100, 32, 128, args.rounds, args.calls, with_torch)
    if args.w2:
        run_training("W2", 64, 1000, 32, 256, ["forget"], max(3, args.rounds // 2), 1,
                     with_torch)


if __name__ == "__main__":
    main()
