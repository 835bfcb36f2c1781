"""Exploding gradients, and how clipping the gradient's norm tames them (Pascanu et al., 2013).

A vanilla RNN whose recurrent kernel W_h starts orthogonal with gain 1.5, so σ_max(W_h) = 1.5
is above the 1/γ = 1 of tanh: the lecture's necessary condition for exploding gradients.
The task: read `--timesteps` values drawn uniformly from [-1, 1] and output the one that came
`--delay` steps before the end (always predicting 0 gives an MSE of 1/3). Each variant starts
from the same weights and sees the same batches, with plain SGD at a large learning rate:

- none: the raw gradient. Its norm grows by orders of magnitude within a few dozen steps and
  the loss overflows to inf/NaN.
- clipnorm=1: each weight's gradient is rescaled to norm ≤ 1 (Keras `clipnorm`).
- global_clipnorm=1: the whole gradient is rescaled to norm ≤ 1 (Keras `global_clipnorm`),
  Pascanu et al.'s norm clipping.
- clipvalue=0.1: every element is clipped to [-0.1, 0.1], the lecture's element-wise clipping.

Prints σ_max(W_h) against 1/γ, the test MSE, the largest gradient norm seen and whether the loss
went to NaN/inf for each variant, and writes a PNG of the gradient norm (before clipping) and
the loss per training step, and of ‖∂L/∂h_t‖ through time at initialisation.

    python examples/gradient_clipping.py                        # all four variants
    python examples/gradient_clipping.py --gain 1.0             # σ_max = 1: nothing explodes
    python examples/gradient_clipping.py --monitor runs/clip    # record each variant's run
    python examples/gradient_clipping.py --smoke                # tiny, for tests
"""

from __future__ import annotations

import argparse
import math
import time

import common
import numpy as np

VARIANTS = {
    "none": {},
    "clipnorm=1": {"clipnorm": 1.0},
    "global_clipnorm=1": {"global_clipnorm": 1.0},
    "clipvalue=0.1": {"clipvalue": 0.1},
}
BASELINE_MSE = 1.0 / 3.0


def delayed_recall(n: int, timesteps: int, delay: int, rng: np.random.Generator):
    x = rng.uniform(-1.0, 1.0, size=(n, timesteps, 1)).astype("float32")
    return x, x[:, -delay].copy()


def build_model(args):
    """A vanilla RNN that also reports the global gradient norm, before clipping, every step."""
    import keras
    import tensorflow as tf

    import keras_rnnx as rx

    class GradientNormModel(keras.Sequential):
        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                loss = self.compute_loss(x=x, y=y, y_pred=self(x, training=True))
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply(grads, self.trainable_variables)  # clips, then steps
            return {"loss": loss, "grad_norm": tf.linalg.global_norm(grads)}

    recurrent = keras.initializers.Orthogonal(gain=args.gain)
    return GradientNormModel([
        keras.Input((args.timesteps, 1)),
        rx.RNN(rx.VanillaRNNCell(args.units, recurrent_initializer=recurrent), name="rnn"),
        keras.layers.Dense(1),
    ])


def record_steps(log: dict):
    """A callback that keeps the loss and gradient norm of every step, and stops at inf/NaN."""
    import keras

    class StepLog(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            values = [float(logs[key]) for key in ("loss", "grad_norm")]
            for key, value in zip(("loss", "grad_norm"), values):
                log.setdefault(key, []).append(value)
            if not all(math.isfinite(v) for v in values):
                self.model.stop_training = True

    return StepLog()


def train_variant(name: str, args, data, first: bool):
    import keras

    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(args.seed)
    model = build_model(args)
    # No XLA: without it rx.RNN trains on its compiled CPU kernels, which XLA would bypass.
    model.compile(optimizer=keras.optimizers.SGD(args.lr, **VARIANTS[name]), loss="mse")
    log: dict[str, list[float]] = {}
    callbacks = [record_steps(log)] + common.monitor_callbacks(
        args, name.replace("=", "-"), x_test[:8], y_test[:8], open_viewer=first)
    start = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch, epochs=1, verbose=0, shuffle=False,
              callbacks=callbacks)
    seconds = time.perf_counter() - start
    with np.errstate(all="ignore"):
        mse = float(np.mean((model.predict(x_test, verbose=0) - y_test) ** 2))
    loss, grad_norm = np.array(log["loss"]), np.array(log["grad_norm"])
    diverged = not (np.isfinite(loss).all() and np.isfinite(grad_norm).all())
    return dict(name=name, mse=mse, loss=loss, grad_norm=grad_norm, diverged=diverged,
                seconds=seconds)


def at_initialisation(args, x, y):
    """σ_max(W_h), its threshold 1/γ and ‖∂L/∂h_t‖ per step, from the probe."""
    import keras

    from keras_rnnx.diagnostics import probe

    keras.utils.set_random_seed(args.seed)
    model = build_model(args)
    model.compile(loss="mse")
    (fields,) = probe(model, x, y, jacobian=False).values()
    return (fields["recurrent_sigma_max"]["z"], fields["recurrent_sigma_threshold"]["z"],
            fields["grad_norm"])


def running_mean(values: np.ndarray, window: int):
    """(steps, means) of `window` consecutive steps; inf/NaN stay inf/NaN."""
    window = max(1, min(window, len(values)))
    sums = np.cumsum(np.insert(values, 0, 0.0))
    with np.errstate(invalid="ignore"):
        return np.arange(window, len(values) + 1), (sums[window:] - sums[:-window]) / window


def plot(results, grad_through_time, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    for r in results:
        norms = r["grad_norm"]
        line, = ax.plot(np.arange(1, len(norms) + 1), norms, lw=0.8, alpha=0.85,
                        label=r["name"])
        if r["diverged"]:
            last = np.flatnonzero(np.isfinite(norms))[-1]
            ax.plot(last + 1, norms[last], "x", ms=9, mew=2, color=line.get_color())
            ax.annotate(f"inf/NaN at step {len(norms)}", (last + 1, norms[last]),
                        textcoords="offset points", xytext=(8, -4), fontsize=8,
                        color=line.get_color())
    ax.axhline(1.0, color="grey", ls="--", lw=1, label="clip norm 1")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("global norm ‖∂L/∂θ‖ before clipping")
    ax.set_title(f"Gradient norm per step (SGD, lr {args.lr})")
    ax.legend(fontsize=8, loc="upper right")

    ax = axes[1]
    window = max(1, args.steps // 50)
    for r in results:
        line, = ax.plot(*running_mean(r["loss"], window), label=r["name"])
        if r["diverged"]:
            ax.annotate(f"{r['name']}: inf/NaN at step {len(r['loss'])}",
                        (len(r["loss"]), 10.0), textcoords="offset points", xytext=(4, -12),
                        fontsize=8, color=line.get_color())
    ax.axhline(BASELINE_MSE, color="grey", ls="--", lw=1, label="predict 0 (1/3)")
    ax.set_yscale("log")
    lowest = min((np.nanmin(running_mean(r["loss"], window)[1]) for r in results
                  if not r["diverged"]), default=0.1)
    ax.set_ylim(10 ** np.floor(np.log10(lowest)), 10.0)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"training MSE (mean of {window} steps)")
    ax.set_title("Training loss")
    ax.legend(fontsize=8, loc="upper right")

    ax = axes[2]
    ax.plot(np.arange(args.timesteps), grad_through_time, color="black")
    ax.set_yscale("log")
    ax.set_xlabel("time step t (the loss is read after t = T-1)")
    ax.set_ylabel("‖∂L/∂h_t‖ (probe batch of 8)")
    ax.set_title("Gradient through time at initialisation")
    ax.text(0.97, 0.95, f"σ_max(W_h) = {args.gain:g}", transform=ax.transAxes, ha="right",
            va="top")
    fig.suptitle(f"Exploding gradients: vanilla RNN, T = {args.timesteps}, "
                 f"recall the value {args.delay} steps before the end")
    common.save_figure(fig, args.out)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(parser, cell_default=None)
    parser.add_argument("--gain", type=float, default=1.5,
                        help="gain of the orthogonal W_h, i.e. its σ_max")
    parser.add_argument("--timesteps", type=int, default=50, help="sequence length T")
    parser.add_argument("--delay", type=int, default=5, help="recall x[T - delay]")
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1000, help="training steps per variant")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.1)
    args = common.finish_arguments(parser.parse_args(argv), "gradient_clipping")
    if args.smoke:
        args.timesteps, args.units, args.steps, args.batch = 20, 8, 25, 16
    if not 1 <= args.delay <= args.timesteps:
        parser.error("--delay must be between 1 and --timesteps")

    rng = np.random.default_rng(args.seed)
    test = delayed_recall(500, args.timesteps, args.delay, rng)
    data = delayed_recall(args.steps * args.batch, args.timesteps, args.delay, rng), test
    x_probe, y_probe = test[0][:8], test[1][:8]
    sigma, threshold, grad_through_time = at_initialisation(args, x_probe, y_probe)
    verdict = ("> 1/γ = {t:g} (tanh): exploding gradients are possible" if sigma > threshold
               else "≤ 1/γ = {t:g} (tanh): the gradient can only vanish").format(t=threshold)
    print(f"Vanilla RNN, T = {args.timesteps}, recall x[T-{args.delay}]; predicting 0 gives MSE "
          f"{BASELINE_MSE:.3f}; SGD lr {args.lr}, {args.steps} steps of {args.batch}")
    print(f"σ_max(W_h) = {sigma:.3f} {verdict} (Pascanu et al. 2013)")
    print(f"at initialisation ‖∂L/∂h_0‖ / ‖∂L/∂h_{{T-1}}‖ = "
          f"{grad_through_time[0] / grad_through_time[-1]:.3g}")
    print(f"{'clipping':<20}{'test MSE':>10}{'max ‖g‖':>10}{'NaN/inf':>9}{'steps':>7}"
          f"{'seconds':>9}")
    results = []
    for k, name in enumerate(VARIANTS):
        r = train_variant(name, args, data, first=k == 0)
        results.append(r)
        print(f"{name:<20}{r['mse']:>10.4g}{np.nanmax(r['grad_norm']):>10.3g}"
              f"{'yes' if r['diverged'] else 'no':>9}{len(r['loss']):>7}{r['seconds']:>9.1f}",
              flush=True)
    plot(results, grad_through_time, args)
    if args.monitor:
        print(f"runs recorded in {args.monitor}; watch them with: rnnx-viz {args.monitor}")
    return results


if __name__ == "__main__":
    main()
