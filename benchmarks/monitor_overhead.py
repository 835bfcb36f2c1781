"""Monitor overhead: `model.fit` time with and without `RNNMonitor`, on the adding problem.

The model, data and optimizer are those of examples/long_time_lag.py: `rx.RNN(cell(32))` +
`Dense(1)`, T = 100, batch 64, Adam(3e-3, clipnorm=1) with `jit_compile=True`, here trained
for `--epochs` × `--steps` steps per timed fit. Arms: no callback ("without"),
`RNNMonitor(every="auto")` and `RNNMonitor(every=50)`, probing 8 held-out sequences with
targets. Every arm has its own model (same initial weights), and every arm is warmed by one
short fit before timing, the monitored ones with a monitor, so that the train function is
compiled and the probe traced; those first fits are printed apart, as the one-time cost.
Then `--pairs` rounds of timed fits run arm after arm (without, auto, every=50, without, ...),
each monitored fit with a fresh `RNNMonitor` writing into a temporary directory, and
overhead = median(with) / median(without) - 1.

    python benchmarks/monitor_overhead.py            # 3 epochs × 100 steps, 3 rounds
    python benchmarks/monitor_overhead.py --quick    # tiny, a smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TARGET = 0.03


def build_model(args):
    import keras

    import keras_rnnx as rx

    keras.utils.set_random_seed(args.seed)
    model = keras.Sequential([
        keras.Input((args.lag, 2)),
        rx.RNN(rx.CELL_KINDS[args.cell](args.units)),
        keras.layers.Dense(1),
    ], name=args.cell)
    model.compile(optimizer=keras.optimizers.Adam(args.lr, clipnorm=1.0), loss="mse",
                  jit_compile=True)
    return model


def hook_timer(monitor):
    """Wraps the monitor's callback hooks to add up the seconds spent in each, in place."""
    seconds = {"begin": 0.0, "batch": 0.0, "epoch": 0.0, "end": 0.0}
    hooks = {"on_train_begin": "begin", "on_train_batch_begin": "batch",
             "on_train_batch_end": "batch", "on_epoch_end": "epoch", "on_train_end": "end"}
    for name, part in hooks.items():
        def timed(*a, _hook=getattr(monitor, name), _part=part, **k):
            start = time.perf_counter()
            try:
                return _hook(*a, **k)
            finally:
                seconds[_part] += time.perf_counter() - start
        setattr(monitor, name, timed)
    return seconds


def timed_fit(model, x, y, args, monitor=None, epochs=None) -> float:
    start = time.perf_counter()
    model.fit(x, y, batch_size=args.batch, epochs=epochs or args.epochs, verbose=0,
              callbacks=[] if monitor is None else [monitor])
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=["vanilla", "cec", "original", "forget"],
                        default="forget")
    parser.add_argument("--lag", type=int, default=100, help="sequence length T")
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100, help="training steps per epoch")
    parser.add_argument("--pairs", type=int, default=3, help="timed rounds (at least 3)")
    parser.add_argument("--warmup-steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny, for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.lag, args.units, args.batch = 10, 4, 8
        args.epochs, args.steps, args.pairs, args.warmup_steps = 1, 12, 3, 4
    if args.pairs < 3 and not args.quick:
        parser.error("--pairs must be at least 3")

    import keras
    import tensorflow as tf

    from keras_rnnx.monitor import RNNMonitor

    tf.get_logger().setLevel("ERROR")
    sys.path.insert(0, str(EXAMPLES))
    from long_time_lag import adding_problem

    rng = np.random.default_rng(args.seed)
    x, y = adding_problem(args.batch * args.steps, args.lag, rng)
    probe_x, probe_y = adding_problem(8, args.lag, rng)
    warm = args.batch * args.warmup_steps
    arms = {"without": None, "auto": "auto", "every=50": 50}
    print(f"RNNMonitor overhead: {args.cell} cell, T={args.lag}, units {args.units}, batch "
          f"{args.batch}, {args.epochs} epochs × {args.steps} steps per fit, probe batch 8, "
          f"{args.pairs} interleaved rounds; tensorflow {tf.__version__}, keras "
          f"{keras.__version__}, {os.cpu_count()} CPUs", flush=True)

    # All models first: `set_random_seed` empties TensorFlow's cache of instantiated graph
    # functions, which would make the next fit of an already warmed model slow again.
    models = {arm: build_model(args) for arm in arms}
    times = {arm: [] for arm in arms}
    stats = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="rnnx-monitor-bench-") as tmp:
        runs = iter(range(10**6))

        def monitor_for(every):
            if every is None:
                return None
            return RNNMonitor(Path(tmp) / f"run{next(runs)}", probe_x, probe_y, every=every)

        print(f"\nfirst fit of each model ({args.warmup_steps} steps; compiles the train step "
              f"with XLA, and traces the probe where monitored):")
        for arm, every in arms.items():
            monitor = monitor_for(every)
            seconds = timed_fit(models[arm], x[:warm], y[:warm], args, monitor, epochs=1)
            line = f"  {arm:<9} {seconds:.2f} s"
            if monitor is not None:
                line += (f", of which {monitor.probe_count} probes {monitor.probe_seconds:.2f} s "
                         f"(the first one traces the probe)")
            print(line, flush=True)

        print(f"\ntimed fits ({args.epochs * args.steps} steps each), s:")
        for r in range(args.pairs):
            parts = []
            for arm, every in arms.items():
                monitor = monitor_for(every)
                hooks = None if monitor is None else hook_timer(monitor)
                times[arm].append(timed_fit(models[arm], x, y, args, monitor))
                part = f"{arm} {times[arm][-1]:.2f}"
                if monitor is not None:
                    stats[arm].append((monitor.interval, monitor.probe_count,
                                       monitor.probe_seconds, monitor.dropped_frames))
                    part += (f" (interval {monitor.interval}, probes {monitor.probe_count} = "
                             f"{monitor.probe_seconds:.2f} s, dropped {monitor.dropped_frames}; "
                             f"hooks s: " + " ".join(f"{k} {v:.2f}" for k, v in hooks.items())
                             + ")")
                parts.append(part)
            print(f"  round {r + 1}: " + " | ".join(parts), flush=True)

    base = float(np.median(times["without"]))
    steps = args.epochs * args.steps
    print(f"\nmedian fit without monitor: {base:.3f} s ({base / steps * 1e3:.2f} ms/step)")
    for arm in ("auto", "every=50"):
        med = float(np.median(times[arm]))
        overhead = med / base - 1.0
        probe_s = float(np.median([s[2] for s in stats[arm]]))
        probes = float(np.median([s[1] for s in stats[arm]]))
        print(f"every={arm.removeprefix('every='):<5} median {med:.3f} s, overhead "
              f"{overhead * 100:+.1f} % (target ≤ {TARGET * 100:.0f} %: "
              f"{'met' if overhead <= TARGET else 'NOT met'}); interval "
              f"{stats[arm][-1][0]}, {probes:.0f} probes/fit, {probe_s / probes * 1e3:.1f} "
              f"ms/probe, probes {probe_s / base * 100:.1f} % of a plain fit, dropped frames "
              f"{sum(s[3] for s in stats[arm])}")
    return times, stats


if __name__ == "__main__":
    main()
