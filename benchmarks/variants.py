"""Training speed of the LSTM variants in `keras_rnnx.RNN` against `keras.layers.RNN`.

Workload: one training step (forward, backward, Adam update) of `Input((T, 32)) → RNN(units) →
Dense(1)` on a batch of 64, compiled with Keras's default (on a CPU-only machine: no XLA), for

- `hoisted(variant)`: `keras_rnnx.RNN`'s hoisted-projection TensorFlow loop, which the
  lecture cells take without compiled kernels, for each variant asked for. `rx.RNN` trains
  the variants on Keras's generic loop instead, because this arm measured slower than the
  baseline (README, "LSTM variants");
- `keras.layers.RNN(LSTMVariantCell("V"))`: Keras's generic loop, the baseline;
- `rx.RNN(ForgetGateLSTMCell)`: the compiled kernels, for what they would be worth.

Timed in interleaved rounds; the median per-step time of each is printed with its ratio to
the baseline of the same run, and the CPU it ran on.

    python benchmarks/variants.py                 # T = 100, 64 units, V and NP
    python benchmarks/variants.py --variants all  # every variant
    python benchmarks/variants.py --quick         # tiny, a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from machine import describe  # noqa: E402

import keras_rnnx as rx  # noqa: E402
from keras_rnnx import _native  # noqa: E402


class HoistedRNN(rx.RNN):
    """`rx.RNN` with its hoisted-projection training loop for any lecture-style cell."""

    def _hoists_projection(self) -> bool:
        return True


def model(layer, steps, features):
    m = keras.Sequential([keras.Input((steps, features)), layer, keras.layers.Dense(1)])
    m.compile(optimizer="adam", loss="mse")
    return m


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="sequence length T")
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5, help="training steps per round")
    parser.add_argument("--variants", default="V,NP", help="comma-separated, or 'all'")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.units, args.rounds, args.repeats = 10, 8, 2, 2
    variants = rx.VARIANTS if args.variants == "all" else tuple(args.variants.split(","))
    features, batch = 32, 64
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, args.steps, features)).astype("float32")
    y = rng.normal(size=(batch, 1)).astype("float32")

    keras.utils.set_random_seed(0)
    baseline = "keras.layers.RNN(V)"
    workloads = {baseline: model(keras.layers.RNN(rx.LSTMVariantCell(args.units)), args.steps,
                                 features)}
    for variant in variants:
        workloads[f"hoisted({variant})"] = model(
            HoistedRNN(rx.LSTMVariantCell(args.units, variant=variant)), args.steps, features)
    workloads["rx.RNN(ForgetGateLSTMCell)"] = model(rx.RNN(rx.ForgetGateLSTMCell(args.units)),
                                                   args.steps, features)
    for m in workloads.values():
        m.train_on_batch(x, y)  # trace and warm up
    times = {name: [] for name in workloads}
    for _ in range(args.rounds):
        for name, m in workloads.items():
            start = time.perf_counter()
            for _ in range(args.repeats):
                m.train_on_batch(x, y)
            times[name].append((time.perf_counter() - start) / args.repeats)

    print(f"CPU: {describe()}; load average "
          f"{os.getloadavg()[0]:.1f} at the end; compiled kernels: {_native.status()}")
    print(f"training step, T = {args.steps}, {args.units} units, batch {batch}; median of "
          f"{args.rounds} interleaved rounds")
    base = statistics.median(times[baseline])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<30}{median * 1e3:>9.1f} ms{median / base:>8.2f}x")


if __name__ == "__main__":
    main()
