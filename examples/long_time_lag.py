"""Long time lags: the adding problem of Hochreiter & Schmidhuber (1997), for the four cells.

Each sequence has `--lag` steps of two inputs: a value drawn uniformly from [0, 1] and a
marker that is 1 at exactly two steps (one in each half of the sequence) and 0 elsewhere.
The target, read after the last step, is the sum of the two marked values. Predicting the
mean, 1.0, whatever the input gives an MSE of 1/6 ≈ 0.167: a cell that cannot carry
information across the lag stays there. The vanilla RNN's gradient vanishes across the lag;
the cells with a constant error carousel keep it alive.

Prints a table of test MSE per cell against the 0.167 baseline, and how much of the
gradient ‖∂L/∂h_t‖ reaches the first step, and writes a PNG of the test curves and of the
gradient through time (measured by `keras_rnnx.diagnostics.probe`) before and after training.

    python examples/long_time_lag.py                      # all four cells, lag 100
    python examples/long_time_lag.py --cell original      # one cell
    python examples/long_time_lag.py --monitor runs/lag   # record each cell's run for the viewer
    python examples/long_time_lag.py --viz                # ... and watch them live
    python examples/long_time_lag.py --smoke              # tiny, for tests
"""

from __future__ import annotations

import argparse
import time

import common
import numpy as np

BASELINE_MSE = 1.0 / 6.0
FLOOR = 1e-20  # where a gradient that underflowed to 0 is drawn on the log axes


def adding_problem(n: int, lag: int, rng: np.random.Generator):
    values = rng.uniform(0.0, 1.0, size=(n, lag))
    markers = np.zeros((n, lag))
    rows = np.arange(n)
    first = rng.integers(0, lag // 2, size=n)
    second = rng.integers(lag // 2, lag, size=n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = np.stack([values, markers], axis=-1).astype("float32")
    y = (values[rows, first] + values[rows, second]).astype("float32")[:, None]
    return x, y


def gradient_through_time(model, x, y):
    """‖∂L/∂h_t‖ for every t of the model's recurrent layer, from the probe."""
    from keras_rnnx.diagnostics import probe

    (fields,) = probe(model, x, y, jacobian=False).values()
    return fields["grad_norm"]


def train_cell(kind: str, args, data):
    import keras

    import keras_rnnx as rx

    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(args.seed)
    model = keras.Sequential([
        keras.Input((args.lag, 2)),
        rx.RNN(common.cell(kind, args.units), name="rnn"),
        keras.layers.Dense(1),
    ], name=kind)
    # No XLA: without it rx.RNN trains on its compiled CPU kernels, which XLA would bypass.
    model.compile(optimizer=keras.optimizers.Adam(args.lr, clipnorm=1.0), loss="mse")
    steps_per_epoch = max(1, len(x_train) // args.batch)
    epochs = max(1, args.steps // steps_per_epoch)
    probe_x, probe_y = x_test[:8], y_test[:8]
    grad_before = gradient_through_time(model, probe_x, probe_y)
    callbacks = common.monitor_callbacks(args, kind, probe_x, probe_y,
                                         open_viewer=kind == args.first_cell)
    start = time.perf_counter()
    history = model.fit(x_train, y_train, batch_size=args.batch, epochs=epochs,
                        validation_data=(x_test, y_test), verbose=0, callbacks=callbacks)
    seconds = time.perf_counter() - start
    mse = float(model.evaluate(x_test, y_test, verbose=0))
    grad_after = gradient_through_time(model, probe_x, probe_y)
    return dict(kind=kind, mse=mse, seconds=seconds, steps=epochs * steps_per_epoch,
                val_curve=history.history["val_loss"], steps_per_epoch=steps_per_epoch,
                grad_before=grad_before, grad_after=grad_after)


def plot(results, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    ax = axes[0]
    for r in results:
        steps = np.arange(1, len(r["val_curve"]) + 1) * r["steps_per_epoch"]
        ax.plot(steps, r["val_curve"], marker=".", label=f"{r['kind']} (final {r['mse']:.4f})")
    ax.axhline(BASELINE_MSE, color="grey", ls="--", label="predict 1.0 (0.167)")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("test MSE")
    ax.set_title(f"Adding problem, lag {args.lag}")
    ax.legend(fontsize=8)
    for ax, key, when in ((axes[1], "grad_before", "at initialisation"),
                          (axes[2], "grad_after", "after training")):
        for r in results:
            ax.plot(np.arange(args.lag), np.maximum(r[key], FLOOR), label=r["kind"])
        ax.set_yscale("log")
        ax.set_xlabel("time step t")
        ax.set_ylabel(f"‖∂L/∂h_t‖ (probe batch of 8; 0 drawn at {FLOOR:g})")
        ax.set_title(f"Gradient through time, {when}")
        ax.legend(fontsize=8)
    fig.suptitle("Vanishing gradients: the vanilla RNN cannot bridge the lag; the gated "
                 "carousels (1997 and forget-gate LSTM) can, the ungated CEC saturates")
    common.save_figure(fig, args.out)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(parser, cell_default="all", allow_all=True)
    parser.add_argument("--lag", type=int, default=100, help="sequence length T")
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10_000, help="training steps per cell")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    args = common.finish_arguments(parser.parse_args(argv), "long_time_lag")
    if args.smoke:
        args.lag, args.units, args.steps, args.batch = 20, 8, 40, 32
    if args.lag < 2:
        parser.error("--lag must be at least 2")

    rng = np.random.default_rng(args.seed)
    n_train = 320 if args.smoke else 20_000
    data = adding_problem(n_train, args.lag, rng), adding_problem(500, args.lag, rng)
    kinds = ["vanilla", "cec", "original", "forget"] if args.cell == "all" else [args.cell]
    args.first_cell = kinds[0]

    results = []
    print(f"Adding problem, lag {args.lag}; always predicting 1.0 gives MSE {BASELINE_MSE:.3f}")
    print("grad t=0/t=T-1: ‖∂L/∂h_0‖ / ‖∂L/∂h_{T-1}‖ on the probe batch after training")
    print(f"{'cell':<10}{'test MSE':>10}{'vs 0.167':>10}{'grad t=0/t=T-1':>16}"
          f"{'steps':>8}{'seconds':>9}")
    for kind in kinds:
        r = train_cell(kind, args, data)
        results.append(r)
        reach = r["grad_after"][0] / max(r["grad_after"][-1], 1e-30)
        print(f"{kind:<10}{r['mse']:>10.4f}{r['mse'] / BASELINE_MSE:>10.2f}{reach:>16.2e}"
              f"{r['steps']:>8}{r['seconds']:>9.1f}", flush=True)
    plot(results, args)
    if args.monitor:
        print(f"runs recorded in {args.monitor}; watch them with: rnnx-viz {args.monitor}")
    return results


if __name__ == "__main__":
    main()
