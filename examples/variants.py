"""The LSTM variants, repeated small: Greff et al. (2016) and Gers & Schmidhuber (2000).

Part 1, after "LSTM: a search space odyssey": every variant of `rx.LSTMVariantCell` (V, NIG,
NFG, NOG, NIAF, NOAF, NP, CIFG, FGR) on two tasks, several seeds each, same units, optimizer,
learning rate and number of steps for all:

- the adding problem (see `long_time_lag.py`), test MSE;
- a character-level model of Python source: next-character prediction on files of the running
  interpreter's standard library, test cross-entropy in bits per character on other files.

Greff et al. tuned each variant by random search on three tasks (speech, handwriting, music)
and report: removing the forget gate (NFG) or the output activation (NOAF) hurts most; coupling
input and forget gate (CIFG) and removing the peepholes (NP) cost nothing; full gate
recurrence (FGR) does not help. Here every variant gets one fixed setting, far fewer steps
and seeds, so the table says which of the findings show up at this scale, not whether they
are true.

Part 2, after "Recurrent nets that time and count": generating timed spikes. One input spike
at a random step t0 < `--period`; the target is a spike train at t0 + k·period (k ≥ 1) and
silence elsewhere. A sequence counts as solved when the output is above 0.5 exactly at the
target steps. The peepholes let the gates see the cell state, which can count the steps
since the last spike; the cell without peepholes (NP) must read the count through h. Each
variant trains in its own branch of one model (same batches, each branch's own loss, Adam
per weight, so the branches do not interact).

Prints one table per task (median and range of the test error over seeds, per variant), a
table of Greff et al.'s findings with "holds" / "does not hold" here, the timing task's
success rates, and writes a PNG with a box plot per task.

    python examples/variants.py            # default run (about 9 minutes on 2 shared cores)
    python examples/variants.py --seeds 5  # more seeds
    python examples/variants.py --smoke    # tiny, for tests
"""

from __future__ import annotations

import argparse
import os
import sysconfig
import time

import common
import numpy as np
from long_time_lag import adding_problem

VARIANTS = ("V", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR")
TIMING_VARIANTS = ("V", "NP")


# --- data ---------------------------------------------------------------------------------------


def python_source(n_train: int, n_test: int, window: int, rng: np.random.Generator):
    """Windows of `window` + 1 characters from the standard library's .py files.

    Train and test come from disjoint files (every other file in sorted order). Characters
    outside printable ASCII are mapped to one symbol; newline and tab are kept.
    """
    root = sysconfig.get_paths()["stdlib"]
    files = sorted(os.path.join(root, name) for name in os.listdir(root) if name.endswith(".py"))
    vocab = ["\n", "\t"] + [chr(c) for c in range(32, 127)] + ["\x00"]
    index = {ch: k for k, ch in enumerate(vocab)}
    other = len(vocab) - 1

    def text(paths, n_chars):
        chunks, size = [], 0
        for path in paths:
            with open(path, encoding="utf-8", errors="replace") as handle:
                chunks.append(handle.read())
            size += len(chunks[-1])
            if size >= n_chars:
                break
        codes = np.array([index.get(ch, other) for ch in "".join(chunks)[:n_chars]], np.int32)
        return codes

    def windows(codes, n):
        starts = rng.integers(0, len(codes) - window - 1, size=n)
        return np.stack([codes[s: s + window + 1] for s in starts])

    train = windows(text(files[0::2], 40 * n_train + 10 * window), n_train)
    test = windows(text(files[1::2], 40 * n_test + 10 * window), n_test)
    return (train[:, :-1], train[:, 1:]), (test[:, :-1], test[:, 1:]), len(vocab)


def timed_spikes(n: int, steps: int, period: int, rng: np.random.Generator):
    """Input: one spike at t0 < period. Target: spikes at t0 + k·period, k ≥ 1."""
    t0 = rng.integers(0, period, size=n)
    x = np.zeros((n, steps, 1), np.float32)
    x[np.arange(n), t0, 0] = 1.0
    t = np.arange(steps)[None, :]
    since = t - t0[:, None]
    y = ((since > 0) & (since % period == 0)).astype(np.float32)[..., None]
    return x, y


# --- training -----------------------------------------------------------------------------------


def branched_model(variants, input_shape, units, head, sequences, embed=None):
    """One input, one `rx.RNN(LSTMVariantCell)` + `head` branch per variant."""
    import keras

    import keras_rnnx as rx

    inputs = keras.Input(input_shape, dtype="int32" if embed else "float32")
    features = inputs
    if embed:
        # A shared embedding's gradient would mix the branches: it is frozen (random
        # features), so that the variants stay independent.
        layer = keras.layers.Embedding(embed, 16, name="embed", trainable=False)
        features = layer(inputs)
    outputs = {}
    for variant in variants:
        h = rx.RNN(rx.LSTMVariantCell(units, variant=variant), return_sequences=sequences,
                   name=f"rnn_{variant}")(features)
        outputs[variant] = head(variant)(h)
    return keras.Model(inputs, outputs)


class Runs:
    """A branched model compiled once and retrained from fresh weights for every seed.

    Tracing the training graph of nine recurrent branches costs more than training them for
    hundreds of steps on 2 cores, so the model is traced once: each seed gets the weights of a
    freshly built model with that seed and an Adam whose moments and step count are zeroed.
    """

    def __init__(self, build, variants, loss, lr, args):
        import keras

        self.build, self.variants, self.args = build, variants, args
        self.model = build()
        # clipnorm clips each weight's gradient on its own, so the branches stay independent.
        self.model.compile(optimizer=keras.optimizers.Adam(lr, clipnorm=1.0),
                           loss={v: loss for v in variants}, jit_compile=False,
                           run_eagerly=args.smoke)  # a 4-step smoke run: tracing would dominate
        self.fitted = False

    def train(self, seed, x, y):
        """One epoch over (x, y), len(x) / batch steps; every branch on the same batches."""
        import keras

        keras.utils.set_random_seed(seed)
        if self.fitted:
            self.model.set_weights(self.build().get_weights())
            for variable in self.model.optimizer.variables:
                if not variable.path.endswith("learning_rate"):  # moments and step count
                    variable.assign(keras.ops.zeros_like(variable))
        self.model.fit(x, {v: y for v in self.variants}, batch_size=self.args.batch, epochs=1,
                       verbose=0)
        self.fitted = True
        return self.model


def adding_runs(args):
    import keras

    return Runs(lambda: branched_model(VARIANTS, (args.lag, 2), args.units,
                                       lambda v: keras.layers.Dense(1, name=v), sequences=False),
                VARIANTS, "mse", 1e-2, args)


def adding_errors(runs, seed, args):
    rng = np.random.default_rng(seed)
    x, y = adding_problem(args.steps * args.batch, args.lag, rng)
    xt, yt = adding_problem(500, args.lag, rng)
    pred = runs.train(seed, x, y).predict(xt, batch_size=500, verbose=0)
    return {v: float(np.mean((pred[v] - yt) ** 2)) for v in VARIANTS}


def source_runs(args, vocab):
    import keras

    return Runs(lambda: branched_model(VARIANTS, (args.window,), args.units,
                                       lambda v: keras.layers.Dense(vocab, name=v),
                                       sequences=True, embed=vocab),
                VARIANTS, keras.losses.SparseCategoricalCrossentropy(from_logits=True), 3e-3,
                args)


def source_errors(runs, seed, data):
    (x, y), (xt, yt), _ = data
    logits = runs.train(seed, x, y).predict(xt, batch_size=256, verbose=0)
    errors = {}
    for v in VARIANTS:
        z = logits[v].astype(np.float64)
        z = z - z.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        nll = -np.take_along_axis(logp, yt[..., None].astype(np.int64), axis=-1).mean()
        errors[v] = float(nll / np.log(2.0))
    return errors


def timing_runs(args):
    import keras

    return Runs(lambda: branched_model(TIMING_VARIANTS, (args.timing_steps, 1),
                                       args.timing_units,
                                       lambda v: keras.layers.Dense(1, name=v), sequences=True),
                TIMING_VARIANTS, keras.losses.BinaryCrossentropy(from_logits=True), 1e-2, args)


def timing_results(runs, seed, args):
    rng = np.random.default_rng(seed)
    x, y = timed_spikes(args.timing_train_steps * args.batch, args.timing_steps, args.period,
                        rng)
    xt, yt = timed_spikes(500, args.timing_steps, args.period, rng)
    pred = runs.train(seed, x, y).predict(xt, batch_size=500, verbose=0)
    out = {}
    for v in TIMING_VARIANTS:
        spikes = pred[v][..., 0] > 0.0  # logit > 0 ⇔ output > 0.5
        target = yt[..., 0] > 0.5
        out[v] = dict(solved=float(np.mean(np.all(spikes == target, axis=1))),
                      step_errors=float(np.mean(spikes != target) * args.timing_steps))
    return out


# --- report -------------------------------------------------------------------------------------


def summary(errors: dict) -> dict:
    return {v: (float(np.median(e)), float(np.min(e)), float(np.max(e)))
            for v, e in errors.items()}


def findings(errors: dict) -> list[tuple[str, bool, str]]:
    """Greff et al.'s findings, each with whether it holds on these errors and the numbers.

    With a few seeds no significance test has power, so the criteria compare the ranges over
    seeds: a variant "hurts" when all its runs are worse than all of V's, is "about as good"
    when the two ranges overlap, and is "better" when all its runs beat all of V's.
    """
    med = {v: float(np.median(e)) for v, e in errors.items()}
    lo = {v: float(np.min(e)) for v, e in errors.items()}
    hi = {v: float(np.max(e)) for v, e in errors.items()}
    others = sorted((v for v in VARIANTS if v != "V"), key=med.get, reverse=True)

    def vs(v):
        return f"{v} [{lo[v]:.4g}, {hi[v]:.4g}] vs V [{lo['V']:.4g}, {hi['V']:.4g}]"

    return [
        ("NFG hurts (worse than V)", lo["NFG"] > hi["V"], vs("NFG")),
        ("NOAF hurts (worse than V)", lo["NOAF"] > hi["V"], vs("NOAF")),
        ("NFG and NOAF are the two worst", set(others[:2]) == {"NFG", "NOAF"},
         "worst medians: " + ", ".join(others[:3])),
        ("CIFG about as good as V", lo["CIFG"] <= hi["V"] and lo["V"] <= hi["CIFG"],
         vs("CIFG")),
        ("NP about as good as V", lo["NP"] <= hi["V"] and lo["V"] <= hi["NP"], vs("NP")),
        ("FGR no better than V", hi["FGR"] >= lo["V"], vs("FGR")),
    ]


def print_errors(title: str, errors: dict, unit: str) -> None:
    print(f"\n{title} ({unit}; median [min, max] over {len(errors['V'])} seeds)")
    for v, (m, lo, hi) in summary(errors).items():
        print(f"{v:<6}{m:>10.4f}  [{lo:.4f}, {hi:.4f}]")


def plot(tasks, timing, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(5.2 * (len(tasks) + 1), 4.4))
    for ax, (title, unit, errors, log) in zip(axes, tasks):
        ax.boxplot([errors[v] for v in VARIANTS], tick_labels=list(VARIANTS))
        for k, v in enumerate(VARIANTS, start=1):
            ax.plot(np.full(len(errors[v]), k), errors[v], ".", color="tab:blue", alpha=0.7)
        ax.axhline(np.median(errors["V"]), color="grey", ls=":", lw=1)
        ax.set_title(title)
        ax.set_ylabel(f"test {unit}")
        if log:
            ax.set_yscale("log")
        ax.tick_params(axis="x", labelrotation=45)
    ax = axes[-1]
    solved = [[r[v]["solved"] for r in timing] for v in TIMING_VARIANTS]
    ax.boxplot(solved, tick_labels=[f"{v}{' (peepholes)' if v == 'V' else ' (none)'}"
                               for v in TIMING_VARIANTS])
    for k, values in enumerate(solved, start=1):
        ax.plot(np.full(len(values), k), values, ".", color="tab:blue", alpha=0.7)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("test sequences with every spike exactly on time")
    ax.set_title(f"Timed spikes, period {args.period}, {args.timing_steps} steps, "
                 f"{args.timing_units} units")
    fig.suptitle(f"LSTM variants: {args.seeds} seeds per Greff task ({args.units} units, "
                 f"{args.steps} steps), {args.timing_seeds} seeds of the timing task")
    common.save_figure(fig, args.out)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(parser, cell_default=None)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per Greff task")
    parser.add_argument("--timing-seeds", type=int, default=6, help="seeds of the timing task")
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--steps", type=int, default=400, help="training steps per run")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lag", type=int, default=30, help="adding problem length")
    parser.add_argument("--window", type=int, default=32, help="characters per sequence")
    parser.add_argument("--period", type=int, default=10, help="timed-spike period")
    args = common.finish_arguments(parser.parse_args(argv), "variants")
    args.timing_steps, args.timing_units, args.timing_train_steps = 4 * args.period, 16, 600
    if args.smoke:
        args.seeds, args.units, args.steps, args.batch, args.lag, args.window = 2, 4, 4, 16, 8, 8
        args.timing_seeds, args.period = 2, 4
        args.timing_steps, args.timing_units, args.timing_train_steps = 12, 4, 4
    if args.seeds < 2 or args.timing_seeds < 1:
        parser.error("--seeds must be at least 2 (the findings compare spreads), "
                     "--timing-seeds at least 1")
    if args.monitor:
        parser.error("--monitor: this example trains branched models; record a single cell "
                     "with long_time_lag.py instead")

    start = time.perf_counter()
    seeds = [args.seed + k for k in range(args.seeds)]
    rng = np.random.default_rng(args.seed)
    n_windows = args.steps * args.batch
    source = python_source(n_windows, max(64, n_windows // 10), args.window, rng)
    adding = {v: [] for v in VARIANTS}
    chars = {v: [] for v in VARIANTS}
    timing = []
    runs = adding_runs(args), source_runs(args, source[2]), timing_runs(args)
    for seed in seeds:
        for target, errors in ((adding, adding_errors(runs[0], seed, args)),
                               (chars, source_errors(runs[1], seed, source))):
            for v in VARIANTS:
                target[v].append(errors[v])
        print(f"seed {seed} done after {time.perf_counter() - start:.0f} s", flush=True)
    for seed in range(args.seed, args.seed + args.timing_seeds):
        timing.append(timing_results(runs[2], seed, args))
    print(f"timing task done after {time.perf_counter() - start:.0f} s", flush=True)

    print_errors(f"Adding problem, lag {args.lag}", adding, "MSE, predicting 1.0 gives 0.167")
    print_errors("Python source, next character", chars, "bits per character")
    print("\nGreff et al. (2016) here (ranges over seeds; \"hurts\": every run worse than every"
          " run of V; \"about as good\": the ranges overlap):")
    print(f"{'finding':<34}{'adding problem':<16}{'Python source':<16}")
    rows = zip(findings(adding), findings(chars))
    for (name, holds_a, why_a), (_, holds_c, why_c) in rows:
        print(f"{name:<34}{'holds' if holds_a else 'does not hold':<16}"
              f"{'holds' if holds_c else 'does not hold':<16}{why_a} | {why_c}")
    print(f"\nTimed spikes, period {args.period}, {args.timing_steps} steps "
          f"(solved: every spike exactly on time; per seed)")
    for v in TIMING_VARIANTS:
        solved = " ".join(f"{r[v]['solved']:.2f}" for r in timing)
        wrong = np.mean([r[v]["step_errors"] for r in timing])
        print(f"{v:<6}solved {solved}   wrong steps per sequence {wrong:.2f}")
    plot([(f"Adding problem, lag {args.lag}", "MSE (log scale)", adding, True),
          ("Python source, next character", "bits/char", chars, False)], timing, args)
    print(f"wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
