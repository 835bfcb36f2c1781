"""Parity, the lecture's motivating task: answer YES when a bit string has an even number of 1s.

"1000010101 – YES, 100011 – NO." An RNN reads the string one bit at a time and keeps the
running parity in its state, so it needs no fixed context window. It is trained on strings of
length 1 to 20 (padded to 20 and masked, so the padding is skipped) and tested on lengths up
to 100. The comparison is an MLP that sees the last 20 bits, zero-padded on the left: on a
longer string the bits it cannot see flip the answer half the time, so beyond its window it
is at chance however well it is trained ("there can always be a new sample longer than
anything seen"). Inside the window it has to learn 20-bit parity from examples, which
gradient descent finds hard, so it is far from perfect on the longer strings there too.

Prints the accuracy of both models on the lengths 1–20, 21–50 and 51–100, and writes a PNG of
accuracy against string length.

    python examples/parity.py                       # forget-gate LSTM against the MLP
    python examples/parity.py --cell vanilla        # another lecture cell
    python examples/parity.py --monitor runs/parity # record the RNN's run for the viewer
    python examples/parity.py --smoke               # tiny, for tests
"""

from __future__ import annotations

import argparse
import time

import common
import numpy as np

TRAIN_MAX_LENGTH = 20
TEST_MAX_LENGTH = 100
WINDOW = 20
BUCKETS = ((1, 20), (21, 50), (51, 100))


def parity_strings(lengths: np.ndarray, timesteps: int, rng: np.random.Generator):
    """Random bit strings of the given lengths, one-hot and padded to `timesteps`.

    A step is [1, 0] for a 0, [0, 1] for a 1 and [0, 0] for padding (what `Masking` skips).
    The target is 1 (YES) when the number of 1s is even.
    """
    present = np.arange(timesteps) < lengths[:, None]
    bits = rng.integers(0, 2, size=present.shape) * present
    x = np.stack([present & (bits == 0), bits == 1], axis=-1).astype("float32")
    y = (bits.sum(axis=1) % 2 == 0).astype("float32")[:, None]
    return x, y


def last_window(x: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """The MLP's input: the last `width` steps of each string, left-padded with [0, 0]."""
    index = lengths[:, None] - width + np.arange(width)
    window = x[np.arange(len(x))[:, None], np.maximum(index, 0)] * (index >= 0)[..., None]
    return window.reshape(len(x), -1)


def train(model, x, y, args, callbacks=()):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(args.lr, clipnorm=1.0),
                  loss="binary_crossentropy", metrics=["accuracy"],
                  jit_compile=False)  # XLA would recompile for the test length; no faster here
    start = time.perf_counter()
    model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0, callbacks=list(callbacks))
    return time.perf_counter() - start


def accuracy_by_length(model, x, y, lengths) -> np.ndarray:
    """Accuracy for each string length 1..TEST_MAX_LENGTH."""
    correct = (model.predict(x, batch_size=500, verbose=0) > 0.5) == (y > 0.5)
    return np.array([correct[lengths == n].mean() for n in range(1, TEST_MAX_LENGTH + 1)])


def bucket_means(accuracy: np.ndarray) -> list[float]:
    return [float(accuracy[lo - 1:hi].mean()) for lo, hi in BUCKETS]


def plot(results, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.4))
    lengths = np.arange(1, TEST_MAX_LENGTH + 1)
    for r in results:
        ax.plot(lengths, r["accuracy"], marker=".", ms=4, label=r["name"])
    ax.axvspan(0.5, TRAIN_MAX_LENGTH + 0.5, color="tab:green", alpha=0.08,
               label=f"training lengths = MLP window (≤{TRAIN_MAX_LENGTH})")
    ax.axhline(0.5, color="grey", ls="--", label="chance (0.5)")
    ax.set_xlim(0, TEST_MAX_LENGTH + 1)
    ax.set_ylim(0.3, 1.03)
    ax.set_xlabel("string length (bits)")
    ax.set_ylabel(f"test accuracy ({args.per_length} strings per length)")
    ax.set_title("Parity: is the number of 1s even? Trained on lengths 1–20")
    ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 0.93))
    common.save_figure(fig, args.out)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(parser, cell_default="forget")
    parser.add_argument("--units", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1000, help="training steps per model")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--per-length", type=int, default=100,
                        help="test strings per length 1..100")
    args = common.finish_arguments(parser.parse_args(argv), "parity")
    if args.smoke:
        args.units, args.steps, args.batch, args.per_length = 8, 20, 32, 4

    import keras

    import keras_rnnx as rx

    rng = np.random.default_rng(args.seed)
    train_lengths = rng.integers(1, TRAIN_MAX_LENGTH + 1, size=args.steps * args.batch)
    x_train, y_train = parity_strings(train_lengths, TRAIN_MAX_LENGTH, rng)
    test_lengths = np.repeat(np.arange(1, TEST_MAX_LENGTH + 1), args.per_length)
    x_test, y_test = parity_strings(test_lengths, TEST_MAX_LENGTH, rng)

    keras.utils.set_random_seed(args.seed)
    rnn = keras.Sequential([
        keras.Input((None, 2)),
        keras.layers.Masking(0.0),
        rx.RNN(common.cell(args.cell, args.units), name="rnn"),
        keras.layers.Dense(1, activation="sigmoid"),
    ], name=f"{args.cell}_rnn")
    probe_x, probe_y = x_train[:8], y_train[:8]
    tokens = [["01"[int(b)] if p else "·" for p, b in zip(row.any(-1), row[:, 1])]
              for row in probe_x]
    callbacks = common.monitor_callbacks(args, args.cell, probe_x, probe_y, tokens=tokens)
    rnn_seconds = train(rnn, x_train, y_train, args, callbacks)

    keras.utils.set_random_seed(args.seed)
    mlp = keras.Sequential([
        keras.Input((2 * WINDOW,)),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ], name="window_mlp")
    mlp_seconds = train(mlp, last_window(x_train, train_lengths, WINDOW), y_train, args)

    results = [
        dict(name=f"RNN ({args.cell}, {args.units} units)", seconds=rnn_seconds,
             accuracy=accuracy_by_length(rnn, x_test, y_test, test_lengths)),
        dict(name=f"MLP (last {WINDOW} bits)", seconds=mlp_seconds,
             accuracy=accuracy_by_length(mlp, last_window(x_test, test_lengths, WINDOW),
                                         y_test, test_lengths)),
    ]
    print(f"Parity (YES = even number of 1s): trained {args.steps} steps on lengths "
          f"1–{TRAIN_MAX_LENGTH}, tested on {args.per_length} strings per length "
          f"1–{TEST_MAX_LENGTH}; chance is 0.5")
    header = "".join(f"{f'acc {lo}–{hi}':>12}" for lo, hi in BUCKETS)
    print(f"{'model':<26}{header}{'seconds':>9}")
    for r in results:
        accs = "".join(f"{a:>12.3f}" for a in bucket_means(r["accuracy"]))
        print(f"{r['name']:<26}{accs}{r['seconds']:>9.1f}", flush=True)
    plot(results, args)
    if args.monitor:
        print(f"run recorded in {args.monitor}; watch it with: rnnx-viz {args.monitor}")
    return results


if __name__ == "__main__":
    main()
