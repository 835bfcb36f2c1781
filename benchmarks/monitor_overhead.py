"""Monitor overhead: `model.fit` time with and without `RNNMonitor`, on the adding problem.

The model, data and optimizer are those of examples/long_time_lag.py: `rx.RNN(cell(32))` +
`Dense(1)`, T = 100, batch 64, Adam(3e-3, clipnorm=1) with Keras's default compile (no XLA
on a CPU-only machine: `rx.RNN`'s compiled kernels), 3000 training steps per fit (`--epochs`
× `--steps`; the demo trains 10,000 a cell, which `--epochs 33` matches). Arms: no callback
("without") and `RNNMonitor(every="auto")`, the default cadence, probing 8 held-out sequences
with targets; `--every N` adds a fixed cadence. Every arm has its own model (same initial
weights) and is warmed by one short fit first, the monitored ones with a monitor, so that the
train function is compiled and the probe traced; those first fits are printed apart, as the
one-time cost. Then `--pairs` rounds of timed fits run arm after arm, in ABBA order (the order
reverses every round, so a machine that slows down or speeds up shifts both arms alike), each
monitored fit with a fresh `RNNMonitor` writing into a temporary directory.

Printed: overhead = median(with) / median(without) - 1 in wall time (the figure the 3 % target
is about), the median of the per-round ratios, the same ratio in process CPU time (all
threads), and what the monitor itself measured: seconds in its callback hooks on the training
thread plus the CPU seconds of its writer thread, as a fraction of a plain fit.

    python benchmarks/monitor_overhead.py            # 3 rounds of 3000-step fits, ~7 min
    python benchmarks/monitor_overhead.py --every 50 --epochs 3   # also a fixed cadence
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
from machine import describe

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
    model.compile(optimizer=keras.optimizers.Adam(args.lr, clipnorm=1.0), loss="mse")
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


def timed_fit(model, x, y, args, monitor=None, epochs=None) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one `fit`."""
    start, cpu = time.perf_counter(), time.process_time()
    model.fit(x, y, batch_size=args.batch, epochs=epochs or args.epochs, verbose=0,
              callbacks=[] if monitor is None else [monitor])
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", choices=["vanilla", "cec", "original", "forget"],
                        default="forget")
    parser.add_argument("--lag", type=int, default=100, help="sequence length T")
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=300, help="training steps per epoch")
    parser.add_argument("--every", type=int, action="append", default=[],
                        help="also time RNNMonitor(every=N) (repeatable)")
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
    if any(n < 1 for n in args.every):
        parser.error("--every must be a positive integer")

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
    arms = {"without": None, "auto": "auto", **{f"every={n}": n for n in args.every}}
    steps = args.epochs * args.steps
    print(f"RNNMonitor overhead: {args.cell} cell, T={args.lag}, units {args.units}, batch "
          f"{args.batch}, {args.epochs} epochs × {args.steps} steps = {steps} steps per fit, "
          f"probe batch 8, {args.pairs} rounds in ABBA order; tensorflow {tf.__version__}, "
          f"keras {keras.__version__}, {describe()}", flush=True)

    # All models first: `set_random_seed` empties TensorFlow's cache of instantiated graph
    # functions, which would make the next fit of an already warmed model slow again.
    models = {arm: build_model(args) for arm in arms}
    wall = {arm: [] for arm in arms}
    cpu = {arm: [] for arm in arms}
    stats = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory(prefix="rnnx-monitor-bench-") as tmp:
        runs = iter(range(10**6))

        def monitor_for(every):
            if every is None:
                return None
            return RNNMonitor(Path(tmp) / f"run{next(runs)}", probe_x, probe_y, every=every)

        print(f"\nfirst fit of each model ({args.warmup_steps} steps; compiles the train step "
              f"and traces the probe where monitored):")
        for arm, every in arms.items():
            monitor = monitor_for(every)
            seconds, _ = timed_fit(models[arm], x[:warm], y[:warm], args, monitor, epochs=1)
            line = f"  {arm:<9} {seconds:.2f} s"
            if monitor is not None:
                line += (f", of which {monitor.probe_count} probes {monitor.probe_seconds:.2f} s "
                         f"(not counting the calls that traced the probe)")
            print(line, flush=True)

        print(f"\ntimed fits ({steps} steps each), wall s:")
        for r in range(args.pairs):
            parts = []
            order = list(arms.items()) if r % 2 == 0 else list(arms.items())[::-1]
            for arm, every in order:
                monitor = monitor_for(every)
                hooks = None if monitor is None else hook_timer(monitor)
                seconds, cpu_seconds = timed_fit(models[arm], x, y, args, monitor)
                wall[arm].append(seconds)
                cpu[arm].append(cpu_seconds)
                part = f"{arm} {seconds:.2f}"
                if monitor is not None:
                    own = sum(hooks.values()) + monitor.writer_cpu_seconds
                    stats[arm].append(dict(interval=monitor.interval, probes=monitor.probe_count,
                                           probe_s=monitor.probe_seconds, own=own,
                                           dropped=monitor.dropped_frames))
                    part += (f" (probes {monitor.probe_count} = {monitor.probe_seconds:.2f} s, "
                             f"interval {monitor.interval}, hooks "
                             f"{sum(hooks.values()):.2f} s, writer CPU "
                             f"{monitor.writer_cpu_seconds:.2f} s, dropped "
                             f"{monitor.dropped_frames})")
                parts.append(part)
            ratios = " ".join(f"{arm} {wall[arm][-1] / wall['without'][-1]:.3f}"
                              for arm in arms if arm != "without")
            print(f"  round {r + 1}: " + " | ".join(parts) + f"; ratio to without: {ratios}",
                  flush=True)

    base, base_cpu = float(np.median(wall["without"])), float(np.median(cpu["without"]))
    print(f"\nmedian fit without monitor: {base:.3f} s wall ({base / steps * 1e3:.2f} ms/step), "
          f"{base_cpu:.3f} s CPU")
    for arm in arms:
        if arm == "without":
            continue
        overhead = float(np.median(wall[arm])) / base - 1.0
        per_round = float(np.median(np.array(wall[arm]) / np.array(wall["without"]))) - 1.0
        cpu_overhead = float(np.median(cpu[arm])) / base_cpu - 1.0
        own = float(np.median([s["own"] for s in stats[arm]]))
        probes = float(np.median([s["probes"] for s in stats[arm]]))
        probe_s = float(np.median([s["probe_s"] for s in stats[arm]]))
        print(f"{arm:<9} overhead {overhead * 100:+.1f} % wall (median / median; target ≤ "
              f"{TARGET * 100:.0f} %: {'met' if overhead <= TARGET else 'NOT met'}), "
              f"{per_round * 100:+.1f} % median of per-round ratios, {cpu_overhead * 100:+.1f} "
              f"% CPU; measured by the monitor: hooks + writer {own:.2f} s = "
              f"{own / base * 100:.1f} % of a plain fit; {probes:.0f} probes/fit at "
              f"{probe_s / max(probes, 1) * 1e3:.0f} ms, interval {stats[arm][-1]['interval']}, "
              f"dropped frames {sum(s['dropped'] for s in stats[arm])}")
    return wall, stats


if __name__ == "__main__":
    main()
