"""Probe cost: milliseconds per `keras_rnnx.diagnostics.probe` call, against a training step.

For each of the four cells, a model `Input((T, D)) → keras.layers.RNN(cell(U)) → Dense(1)`,
compiled with mse, is probed on one batch of B sequences with targets, with and without the
Jacobian norms. The first call of each (it traces the probe's graph) is reported apart from
the steady state: the median of `--repeats` calls (`--jac-repeats` for the Jacobian variant;
repeated on the same weights, its Lanczos steps start from the previous call's vectors and stop
early: the demo lines below, with training between calls, show the cost during a run),
interleaved across cells and
variants, the order rotating every round. The baselines, on the same batch and in the same
rounds: one `model.train_on_batch` step, and one forward + backward pass (`tf.GradientTape`
in a `tf.function`, no weight update).

Then, for the flagship demo's model (examples/long_time_lag.py: `rx.RNN(cell(32))` →
`Dense(1)` on the adding problem, T = 100, Adam with `clipnorm`, Keras's default compile),
one line per cell "probe ms / train-step ms": a training step is a `fit` step at the demo's
batch of 64 (the median time between two batch ends in fits of `--fit-steps` steps, one fit
per round, interleaved with the probe calls), the probe runs on the demo's probe batch of 8
with targets, with and without the Jacobian norms.

    python benchmarks/probe.py              # B=8, T=100, U=128, D=32; then the demo's model
    python benchmarks/probe.py --quick      # tiny sizes, a smoke run
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from machine import describe

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

VARIANTS = ("train_on_batch", "fwd+bwd", "probe jac", "probe no-jac")


def build_model(kind: str, args):
    import keras

    import keras_rnnx as rx

    keras.utils.set_random_seed(args.seed)
    model = keras.Sequential([
        keras.Input((args.timesteps, args.input_dim)),
        keras.layers.RNN(rx.CELL_KINDS[kind](args.units)),
        keras.layers.Dense(1),
    ], name=kind)
    model.compile(optimizer="adam", loss="mse")
    return model


def make_calls(model, x, y) -> dict:
    """One zero-argument callable per variant, each returning only once its work is done."""
    import keras
    import tensorflow as tf

    from keras_rnnx import diagnostics

    loss_fn = keras.losses.MeanSquaredError()

    @tf.function
    def forward_backward(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)

    def fwd_bwd():
        return [g.numpy() for g in forward_backward(x, y)]

    return {
        "train_on_batch": lambda: model.train_on_batch(x, y),
        "fwd+bwd": fwd_bwd,
        "probe jac": lambda: diagnostics.probe(model, x, y, jacobian=True),
        "probe no-jac": lambda: diagnostics.probe(model, x, y, jacobian=False),
    }


def demo_ratios(args) -> dict:
    """probe ms / train-step ms for the demo's model, per cell (see the module docstring)."""
    import sys
    from pathlib import Path

    import keras

    import keras_rnnx as rx
    from keras_rnnx import diagnostics

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from long_time_lag import adding_problem

    lag, batch, steps = (10, 8, 4) if args.quick else (100, 64, args.fit_steps)
    rng = np.random.default_rng(args.seed)
    x, y = adding_problem(batch * steps, lag, rng)
    probe_x, probe_y = adding_problem(8, lag, rng)
    kinds = list(rx.CELL_KINDS)
    models = {}
    for kind in kinds:
        keras.utils.set_random_seed(args.seed)
        model = keras.Sequential([keras.Input((lag, 2)), rx.RNN(rx.CELL_KINDS[kind](32)),
                                  keras.layers.Dense(1)], name=kind)
        model.compile(optimizer=keras.optimizers.Adam(1e-2, clipnorm=1.0), loss="mse")
        models[kind] = model

    class StepClock(keras.callbacks.Callback):
        """Wall time between consecutive batch ends: a `fit` step without fit's setup."""

        def on_train_begin(self, logs=None):
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

    clock = StepClock()

    def fit_step_ms(model):
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=[clock])
        return float(np.median(np.diff(clock.ends))) * 1e3

    calls = {kind: {"train step": lambda m=models[kind]: fit_step_ms(m),
                    "probe jac": lambda m=models[kind]: timed_ms(
                        lambda: diagnostics.probe(m, probe_x, probe_y, jacobian=True)),
                    "probe no-jac": lambda m=models[kind]: timed_ms(
                        lambda: diagnostics.probe(m, probe_x, probe_y, jacobian=False))}
             for kind in kinds}
    for kind in kinds:  # compile the train step, trace the probes
        for call in calls[kind].values():
            call()
    samples = {kind: {v: [] for v in calls[kind]} for kind in kinds}
    pairs = [(kind, v) for kind in kinds for v in calls[kind]]
    for r in range(args.repeats):
        shift = r % len(pairs)
        for kind, variant in pairs[shift:] + pairs[:shift]:
            samples[kind][variant].append(calls[kind][variant]())
    med = {kind: {v: float(np.median(t)) for v, t in samples[kind].items()} for kind in kinds}
    print(f"\nthe demo's model (examples/long_time_lag.py: rx.RNN(cell(32)), T={lag}; train "
          f"step = fit step at batch {batch}, {steps} steps a fit; probe batch 8), median of "
          f"{args.repeats} interleaved rounds:")
    widths = (20, 15, 14, 17, 26, 24)
    print("".join(f"{c:>{w}}" for c, w in zip(
        ("cell", "train step ms", "probe jac ms", "probe no-jac ms",
         "probe ms / train-step ms", "no-jac / train-step ms"), widths)))
    for kind in kinds:
        m = med[kind]
        cells = (rx.CELL_KINDS[kind].__name__, f"{m['train step']:.2f}", f"{m['probe jac']:.2f}",
                 f"{m['probe no-jac']:.2f}", f"{m['probe jac'] / m['train step']:.2f}",
                 f"{m['probe no-jac'] / m['train step']:.2f}")
        print("".join(f"{c:>{w}}" for c, w in zip(cells, widths)))
    return med


def timed_ms(call) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7,
                        help="steady-state calls per cell and variant (median reported)")
    parser.add_argument("--jac-repeats", type=int, default=3,
                        help="steady-state calls of the jacobian=True probe (at most --repeats)")
    parser.add_argument("--batch", type=int, default=8, help="B")
    parser.add_argument("--timesteps", type=int, default=100, help="T")
    parser.add_argument("--units", type=int, default=128, help="U")
    parser.add_argument("--input-dim", type=int, default=32, help="D")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fit-steps", type=int, default=50,
                        help="training steps per timed fit of the demo's model")
    parser.add_argument("--skip-table", action="store_true",
                        help="only the demo model's probe ms / train-step ms lines")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.timesteps, args.units, args.input_dim = 2, 6, 4, 3
        args.repeats = min(args.repeats, 3)
    args.jac_repeats = min(args.jac_repeats, args.repeats)
    if args.jac_repeats < 1:
        parser.error("--repeats and --jac-repeats must be at least 1")

    import keras
    import tensorflow as tf

    import keras_rnnx as rx
    from keras_rnnx import diagnostics

    # Each Probe owns one graph function of the same method, which TensorFlow's retracing
    # warning counts together; real retraces are reported from `trace_count` at the end.
    tf.get_logger().setLevel("ERROR")
    rng = np.random.default_rng(args.seed)
    x = rng.normal(size=(args.batch, args.timesteps, args.input_dim)).astype("float32")
    y = rng.normal(size=(args.batch, 1)).astype("float32")
    kinds = list(rx.CELL_KINDS)
    print(f"probe cost: B={args.batch} T={args.timesteps} U={args.units} D={args.input_dim}, "
          f"{args.repeats} interleaved repeats ({args.jac_repeats} for probe jac); tensorflow "
          f"{tf.__version__}, keras {keras.__version__}, {describe()}", flush=True)

    # All models first: `set_random_seed` empties TensorFlow's cache of instantiated graph
    # functions, so seeding between calls would make the next call of every graph slow again.
    if args.skip_table:
        return demo_ratios(args)
    models = {kind: build_model(kind, args) for kind in kinds}
    calls = {kind: make_calls(models[kind], x, y) for kind in kinds}
    first = {}
    for kind in kinds:
        first[kind] = {v: timed_ms(calls[kind][v]) for v in VARIANTS}
        print(f"first calls of {kind}: {sum(first[kind].values()) / 1e3:.1f} s", flush=True)

    samples = {kind: {v: [] for v in VARIANTS} for kind in kinds}
    pairs = [(kind, v) for kind in kinds for v in VARIANTS]
    for r in range(args.repeats):
        shift = r % len(pairs)
        start = time.perf_counter()
        for kind, variant in pairs[shift:] + pairs[:shift]:
            if variant != "probe jac" or r < args.jac_repeats:
                samples[kind][variant].append(timed_ms(calls[kind][variant]))
        print(f"round {r + 1}/{args.repeats}: {time.perf_counter() - start:.1f} s", flush=True)

    def row(cells, widths):
        return "".join(f"{c:>{w}}" for c, w in zip(cells, widths))

    widths = (20, 16, 12, 16, 16)
    print("\nfirst call, ms (train_on_batch and probe trace their graphs here)")
    print(row(("cell",) + VARIANTS, widths))
    for kind in kinds:
        name = rx.CELL_KINDS[kind].__name__
        print(row((name,) + tuple(f"{first[kind][v]:.0f}" for v in VARIANTS), widths))

    med = {kind: {v: float(np.median(samples[kind][v])) for v in VARIANTS} for kind in kinds}
    print(f"\nsteady state, ms: median of {args.repeats} calls ({args.jac_repeats} for probe "
          f"jac) [min-max]")
    print(row(("cell",) + VARIANTS, widths))
    for kind in kinds:
        cells = [f"{med[kind][v]:.1f}" for v in VARIANTS]
        print(row((rx.CELL_KINDS[kind].__name__, *cells), widths))
        spread = [f"[{min(samples[kind][v]):.0f}-{max(samples[kind][v]):.0f}]"
                  for v in VARIANTS]
        print(row(("", *spread), widths))

    ratio_widths = (20, 16, 16, 16, 16)
    print("\nsteady-state ratios (same run): probe ms / baseline ms")
    print(row(("cell", "jac/train", "no-jac/train", "jac/fwd+bwd", "no-jac/fwd+bwd"),
              ratio_widths))
    for kind in kinds:
        m = med[kind]
        print(row((rx.CELL_KINDS[kind].__name__,
                   f"{m['probe jac'] / m['train_on_batch']:.2f}",
                   f"{m['probe no-jac'] / m['train_on_batch']:.2f}",
                   f"{m['probe jac'] / m['fwd+bwd']:.2f}",
                   f"{m['probe no-jac'] / m['fwd+bwd']:.2f}"), ratio_widths))

    traces = {kind: {j: diagnostics.get_probe(models[kind], jacobian=j).trace_count
                     for j in (True, False)} for kind in kinds}
    retraced = {k: t for k, t in traces.items() if any(n != 1 for n in t.values())}
    print("\nprobe traces per cell and jacobian setting: "
          + ("1 each (steady-state calls ran the graph only)" if not retraced
             else f"RETRACED {retraced}"))
    demo_ratios(args)
    return med


if __name__ == "__main__":
    main()
