"""A character-level language model of Python's own standard library, and the units it grows.

Karpathy, Johnson & Fei-Fei, "Visualizing and understanding recurrent networks" (2015), trained
character-level LSTMs on source code and found single cells that track whether the text is
inside a quote, how deep it is inside brackets and how far along the line it is, and gates
that spend much of their time saturated. This example repeats that on a corpus every machine
has: the `.py` files of the running interpreter's standard library (without `test/`,
`idlelib/` and site-packages), split by file (a hash of the path) into train, validation and
test. Each cell reads 100 characters per step with stateful layers (truncated BPTT over
contiguous streams, as in the paper), trained with Adam and gradient clipping; the learning
rate is the same for every cell, 1e-2: in one pass of 1249 updates every cell ends lower than
at 3e-3 (the 1997 cell most: its input gates start nearly closed, σ(−3) ≈ 0.05).

State resets, one protocol per kind of cell. Gers, Schmidhuber & Cummins (2000) introduced the
forget gate because the 1997 LSTM, whose carousel only ever adds, needs its state reset from
outside on a continual stream: its c grows without bound and the states it meets stop
resembling a fresh start. So the 1997 LSTM and the CEC have their states zeroed every 1000
characters (`--reset-every 10` windows), in training, in the test and in the corpus probe
alike; the forget-gate LSTM (which learns to reset itself) and the vanilla RNN (whose state
is squashed at every step, so nothing accumulates) run on the unbroken stream, as Karpathy et
al. did. The test bits per character are printed under both protocols for every cell; the
comparison between cells uses each cell's own.

Prints, per cell, test bits per character against a count-based interpolated Kneser-Ney
n-gram on the same split, and samples at temperatures 0.5 and 1.0; then, over a stretch of
held-out files run as one stream (the corpus probe, with the cell's own resets), the best |r|
of any unit with five features of the code (`keras_rnnx.interpret.code_features`) for the
trained model against two controls: the untrained model, and the trained model against the
feature shifted by a random offset. Writes the classic picture (held-out code coloured by the
best unit for in_string, bracket_depth and column) to `--out` and the gate-saturation scatter
of the paper's Fig. 3 next to it (`*_saturation.png`).

    python examples/char_lm.py                        # all four cells (4-8 min on 2 cores)
    python examples/char_lm.py --cell forget          # one cell
    python examples/char_lm.py --monitor runs/chars   # record each run, corpus probe included
    python examples/char_lm.py --viz                  # ... and watch them live
    python examples/char_lm.py --smoke                # tiny, for tests
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sysconfig
import time

import common
import numpy as np

UNKNOWN = "\ufffd"  # the vocabulary's one symbol for characters not seen in training
EXCLUDED = ("test", "idlelib")
FEATURES_SHOWN = ("in_string", "bracket_depth", "column")
# Windows between state resets by kind of cell (see the module docstring): the cells without a
# forget gate are reset, those whose state cannot accumulate run on the stream.
RESET_WINDOWS = {"vanilla": 0, "cec": 10, "original": 10, "forget": 0}
CELL_NAMES = {"vanilla": "vanilla RNN", "cec": "CEC", "original": "original LSTM (1997)",
              "forget": "forget-gate LSTM"}


# --- the corpus ---------------------------------------------------------------------------


def stdlib_sources() -> list[tuple[str, str]]:
    """(relative path, text) of the standard library's .py files, sorted by path."""
    root = sysconfig.get_paths()["stdlib"]
    found = []
    for directory, subdirs, files in os.walk(root):
        relative = os.path.relpath(directory, root)
        top = relative.split(os.sep)[0]
        if top in EXCLUDED or "site-packages" in relative.split(os.sep):
            subdirs[:] = []
            continue
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__" and d != "site-packages")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                try:
                    with open(path, encoding="utf-8") as file:
                        text = file.read()
                except (OSError, UnicodeDecodeError):
                    continue
                found.append((os.path.relpath(path, root).replace(os.sep, "/"), text))
    if not found:
        raise SystemExit(f"char_lm: no .py files found in the standard library at {root}")
    return sorted(found)


def split_of(path: str) -> str:
    """The file's split, from a hash of its relative path: 80 % train, 10 % each for the rest."""
    bucket = int(hashlib.sha256(path.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < 80 else "valid" if bucket < 90 else "test"


def take(files: list[tuple[str, str]], limit: int) -> list[tuple[str, str]]:
    """Whole files, in the order of their hash, until `limit` characters."""
    chosen, total = [], 0
    for path, text in sorted(files, key=lambda f: hashlib.sha256(f[0].encode()).hexdigest()):
        if total >= limit:
            break
        chosen.append((path, text))
        total += len(text)
    return chosen


class Vocabulary:
    """The training characters plus `UNKNOWN`, as ids (UNKNOWN is 0)."""

    def __init__(self, text: str):
        self.chars = [UNKNOWN] + sorted(set(text) - {UNKNOWN})
        self.table = np.zeros(max(map(ord, self.chars)) + 1, dtype=np.int32)
        self.table[[ord(c) for c in self.chars]] = np.arange(len(self.chars))

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64)
        known = codes < len(self.table)
        return np.where(known, self.table[np.minimum(codes, len(self.table) - 1)], 0).astype(
            np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)


def batches(ids: np.ndarray, batch: int, steps: int):
    """(x, y) for stateful truncated BPTT: `batch` contiguous streams, `steps` characters per
    window; sample k·batch + b is window k of stream b, so consecutive batches continue."""
    length = (len(ids) - 1) // batch
    windows = length // steps
    if windows < 1:
        raise SystemExit(f"char_lm: {len(ids)} training characters are too few for a batch of "
                         f"{batch} streams of {steps} steps; raise --corpus-mb.")
    streams = ids[: batch * length + 1]
    x = np.stack([streams[b * length: b * length + windows * steps] for b in range(batch)])
    y = np.stack([streams[b * length + 1: b * length + 1 + windows * steps]
                  for b in range(batch)])
    x = x.reshape(batch, windows, steps).transpose(1, 0, 2).reshape(-1, steps)
    y = y.reshape(batch, windows, steps).transpose(1, 0, 2).reshape(-1, steps)
    return x, y


# --- the count-based baseline ---------------------------------------------------------------


def kneser_ney_log2probs(train: np.ndarray, test: np.ndarray, order: int,
                         vocab: int) -> np.ndarray:
    """log2 P(test[t] | test[t-order+1:t]) under interpolated Kneser-Ney (NaN for t < order-1).

    P_k(w|h) = max(C_k(hw) − D_k, 0)/T_k(h) + D_k·N_k(h)/T_k(h) · P_{k−1}(w|h′), with C_n the
    counts of n-grams, C_k (k < n) continuation counts (how many distinct characters precede
    hw), T_k(h) = Σ_w C_k(hw), N_k(h) the number of w with C_k(hw) > 0, D_k = n1/(n1 + 2·n2)
    from the counts of counts (0.5 when no count is 1 or 2), P_0 uniform over the vocabulary;
    an unseen context h backs off to P_{k−1} whole (Chen & Goodman 1998).
    """
    v = np.int64(vocab)

    def grams(ids, k):  # the k-gram ending at each position t >= k-1, as one integer
        key = np.zeros(len(ids) - k + 1, dtype=np.int64)
        for j in range(k):
            key = key * v + ids[j: len(ids) - k + 1 + j]
        return key

    tables = {}
    unique_above = None
    for k in range(order, 0, -1):
        if k == order:
            keys, counts = np.unique(grams(train, k), return_counts=True)
        else:  # continuation counts: distinct (k+1)-grams with the first character dropped
            keys, counts = np.unique(unique_above % v ** k, return_counts=True)
        unique_above = keys
        contexts, first = np.unique(keys // v, return_index=True)
        totals = np.add.reduceat(counts, first)
        followers = np.diff(np.append(first, len(keys)))
        n1, n2 = np.sum(counts == 1), np.sum(counts == 2)
        discount = n1 / (n1 + 2 * n2) if n1 + n2 else 0.5
        tables[k] = (keys, counts, contexts, totals, followers, discount)

    n = len(test)
    prob = np.full(n - order + 1, 1.0 / vocab)
    for k in range(1, order + 1):
        keys, counts, contexts, totals, followers, discount = tables[k]
        gram = grams(test, k)[order - k:]  # aligned: position t = order-1 ...
        context = gram // v
        at = np.minimum(np.searchsorted(contexts, context), len(contexts) - 1)
        seen = contexts[at] == context
        total = np.where(seen, totals[at], 1)
        g_at = np.minimum(np.searchsorted(keys, gram), len(keys) - 1)
        count = np.where(keys[g_at] == gram, counts[g_at], 0)
        mixed = (np.maximum(count - discount, 0) + discount * followers[at] * prob) / total
        prob = np.where(seen, mixed, prob)
    out = np.full(n, np.nan)
    out[order - 1:] = np.log2(prob)
    return out


# --- the models ------------------------------------------------------------------------------


def build_model(kind: str, args, vocab: int, batch: int, steps: int | None):
    import keras

    import keras_rnnx as rx

    keras.utils.set_random_seed(args.seed)
    layers = [keras.Input(batch_shape=(batch, steps), dtype="int32"),
              keras.layers.Embedding(vocab, args.embedding, name="embed")]
    for k in range(args.layers):
        layers.append(rx.RNN(common.cell(kind, args.units), return_sequences=True,
                             stateful=True, name="rnn" if args.layers == 1 else f"rnn{k}"))
    layers.append(keras.layers.Dense(vocab, name="logits"))
    return keras.Sequential(layers, name=f"char_{kind}")


def reset_states(model) -> None:
    for layer in model.layers:
        if getattr(layer, "stateful", False):
            layer.reset_state()


def stream_log2probs(model, ids: np.ndarray, batch: int, window: int,
                     reset_every: int = 0) -> np.ndarray:
    """log2 P(ids[t] | ids[:t]) for the characters the model predicts (NaN elsewhere).

    The text is cut into `batch` contiguous streams run side by side from zero states, in
    windows of `window` characters (the states carry over); with `reset_every` > 0 the states
    are zeroed again before every stream position that is a multiple of it (windows are cut
    there), as in training with resets."""
    reset_states(model)
    length = len(ids) // batch
    every = reset_every or length
    streams = ids[: batch * length].reshape(batch, length)
    out = np.full(len(ids), np.nan)
    start = 0
    while start < length - 1:
        if start and start % every == 0:
            reset_states(model)
        stop = min(start + window, (start // every + 1) * every)
        x = streams[:, start: stop]
        y = streams[:, start + 1: stop + 1]
        x = x[:, : y.shape[1]]
        valid = x.shape[1]
        if valid < window:  # one traced shape: pad (the steps after come later, or a reset)
            x = np.concatenate([x, np.zeros((batch, window - valid), x.dtype)], axis=1)
        logits = np.asarray(model.predict_on_batch(x), dtype=np.float64)[:, :valid]
        top = logits.max(axis=-1, keepdims=True)
        log_z = top[..., 0] + np.log(np.exp(logits - top).sum(axis=-1))
        picked = np.take_along_axis(logits, y[..., None], axis=-1)[..., 0]
        rows = np.arange(batch)[:, None] * length + start + 1 + np.arange(valid)
        out[rows] = (picked - log_z) / math.log(2)
        start = stop
    return out


def sample(model, vocab: Vocabulary, prime: str, length: int, temperature: float,
           rng: np.random.Generator) -> str:
    """`length` characters drawn from the batch-1 stateful `model` after reading `prime`."""
    reset_states(model)
    ids = vocab.encode(prime)
    logits = np.asarray(model.predict_on_batch(ids[None]), dtype=np.float64)[0, -1]
    out = []
    for _ in range(length):
        scaled = logits / temperature
        p = np.exp(scaled - scaled.max())
        p[0] = 0.0  # never write the unknown symbol
        next_id = int(rng.choice(len(p), p=p / p.sum()))
        out.append(next_id)
        logits = np.asarray(model.predict_on_batch(np.array([[next_id]])),
                            dtype=np.float64)[0, -1]
    return vocab.decode(out)


# --- analysis ---------------------------------------------------------------------------------


def corpus_stretch(files, limit: int):
    """Whole held-out files (each under 8000 characters, in hash order) until `limit`
    characters, and their code features, computed file by file."""
    from keras_rnnx.interpret import code_features

    texts, features = [], []
    for path, text in files:
        if len(text) > 8000 or not text.endswith("\n"):
            continue
        try:
            feats = code_features(text)
        except ValueError:
            continue
        texts.append(text)
        features.append(feats)
        if sum(map(len, texts)) >= limit:
            break
    joined = {name: np.concatenate([f[name] for f in features]) for name in features[0]}
    return "".join(texts), joined


def unit_states(layers: dict) -> tuple[str, np.ndarray, list[str]]:
    """The cell state c where the cell has one (Karpathy et al. read c), else h, of every
    recorded layer side by side: (state name, (N, all units), a label per unit)."""
    name = "c" if all("c" in fields for fields in layers.values()) else "h"
    labels = [f"{key}:{u}" if len(layers) > 1 else str(u)
              for key, fields in layers.items() for u in range(fields[name].shape[1])]
    return name, np.concatenate([fields[name] for fields in layers.values()], axis=1), labels


def best_abs_r(states: np.ndarray, feature: np.ndarray) -> tuple[int, float]:
    from keras_rnnx.interpret import unit_correlations

    r = unit_correlations(states, feature)
    unit = int(np.argmax(np.abs(r)))
    return unit, float(r[unit])


def unit_table(trained: dict, untrained: dict, features: dict, rng) -> dict:
    """Best |r| per feature: trained units, untrained units, trained vs a shifted feature."""
    name, states, labels = unit_states(trained)
    _, initial, _ = unit_states(untrained)
    n = len(states)
    shift = int(rng.integers(n // 4, 3 * n // 4))
    rows = {}
    for feature_name, feature in features.items():
        unit, r = best_abs_r(states, feature)
        rows[feature_name] = dict(
            unit=unit, label=labels[unit], r=r, trained=abs(r),
            untrained=abs(best_abs_r(initial, feature)[1]),
            shifted=abs(best_abs_r(states, np.roll(feature, shift))[1]),
        )
    return {"state": name, "shift": shift, "rows": rows}


def pick_stretch(text: str, features: dict, lines_shown: int, width: int) -> int:
    """The first line of the `lines_shown` lines (none wider than `width`) with the most string
    characters and characters at bracket depth >= 2: a stretch that shows all three units."""
    lines = text.split("\n")
    starts = np.concatenate([[0], np.cumsum([len(line) + 1 for line in lines])])
    best, best_score = 0, -1.0
    for first in range(0, max(1, len(lines) - lines_shown)):
        block = lines[first: first + lines_shown]
        if any(len(line) > width for line in block) or sum(not line for line in block) > 4:
            continue
        a, b = starts[first], starts[first + len(block)]
        score = (features["in_string"][a:b].sum() + 2 * (features["bracket_depth"][a:b] >= 2).sum()
                 + (features["bracket_depth"][a:b] >= 1).sum())
        if score > best_score:
            best, best_score = first, score
    return best


def plot_classic(text, features, layers, table, cell_name, path, lines_shown=22, width=92):
    """Held-out code, each character's background coloured by one unit, for three features."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = pick_stretch(text, features, lines_shown, width)
    lines = text.split("\n")
    start = sum(len(line) + 1 for line in lines[:first])
    block = lines[first: first + lines_shown]
    _, states, _ = unit_states(layers)
    fig, axes = plt.subplots(len(FEATURES_SHOWN), 1,
                             figsize=(width * 0.092, len(FEATURES_SHOWN) * lines_shown * 0.165))
    cmap = plt.get_cmap("coolwarm")
    for ax, feature in zip(axes, FEATURES_SHOWN):
        row = table["rows"][feature]
        unit = row["unit"]
        values = states[:, unit] * np.sign(row["r"])  # oriented so that red = feature high
        lo, hi = np.percentile(values, [2, 98])
        grid = np.full((len(block), width), np.nan)
        offset = start
        for i, line in enumerate(block):
            for j in range(len(line) + 1):
                if j < width:
                    grid[i, j] = values[offset + j]
            offset += len(line) + 1
        scaled = np.clip((grid - lo) / max(hi - lo, 1e-9), 0, 1)
        image = cmap(np.nan_to_num(scaled, nan=0.5))
        image[np.isnan(grid)] = 1.0
        ax.imshow(image, aspect="auto", interpolation="nearest",
                  extent=(-0.5, width - 0.5, len(block) - 0.5, -0.5))
        for i, line in enumerate(block):
            for j, ch in enumerate(line[:width]):
                if not ch.isspace():
                    ax.text(j, i, ch, ha="center", va="center", family="monospace",
                            fontsize=7.2, color="black")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{feature}: unit {row['label']} of the {cell_name}'s {table['state']}, "
                     f"r = {row['r']:+.2f} over {len(text):,} held-out characters "
                     f"(red: high, blue: low)", fontsize=9, loc="left")
    common.save_figure(fig, path)
    plt.close(fig)


def plot_saturation(saturations: dict, path: str):
    """The paper's Fig. 3: left- vs right-saturated fraction of each gate unit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gates = [g for g in ("f", "i", "o") if any(g in s for s in saturations.values())]
    titles = {"f": "forget gate", "i": "input gate", "o": "output gate"}
    colours = {"original": "tab:orange", "forget": "tab:blue"}
    fig, axes = plt.subplots(1, len(gates), figsize=(4.0 * len(gates), 4.1), squeeze=False)
    for ax, gate in zip(axes[0], gates):
        ax.plot([0, 1], [1, 0], color="0.8", lw=0.8)
        for cell, by_gate in saturations.items():
            if gate in by_gate:
                left, right = by_gate[gate]
                ax.scatter(left, right, s=14, alpha=0.75, color=colours.get(cell, "tab:green"),
                           label=CELL_NAMES.get(cell, cell), edgecolors="none")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_aspect("equal")
        ax.set_title(titles[gate])
        ax.set_xlabel("fraction left-saturated (< 0.1)")
        ax.set_ylabel("fraction right-saturated (> 0.9)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    fig.suptitle("Gate saturation on held-out code, one dot per unit (Karpathy et al. 2015, "
                 "Fig. 3)", fontsize=10)
    common.save_figure(fig, path)
    plt.close(fig)


# --- the run ------------------------------------------------------------------------------


def reset_windows(kind: str, args) -> int:
    """Windows between state resets for this kind of cell (0: never)."""
    return RESET_WINDOWS[kind] if args.reset_every is None else args.reset_every


def train_cell(kind, args, vocab, data, corpus, first):
    import keras

    every = reset_windows(kind, args)

    class ResetStates(keras.callbacks.Callback):
        """Zero the states every `every` windows (the 1997 cell and the CEC have no forget
        gate: on a never-ending stream their c drifts, Gers et al. 2000)."""

        def on_train_batch_begin(self, batch, logs=None):
            if every and batch % every == 0:
                reset_states(self.model)

    from keras_rnnx.corpus_probe import CorpusProbe

    x, y = data
    model = build_model(kind, args, len(vocab), args.batch, args.seq)
    lr = args.lr
    if args.lr_schedule == "cosine":  # from args.lr down to 0 over the whole run
        lr = keras.optimizers.schedules.CosineDecay(args.lr, args.epochs * len(x) // args.batch)
    model.compile(optimizer=keras.optimizers.Adam(lr, global_clipnorm=args.clip),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  # rx.RNN trains with its compiled kernels on the CPU, which XLA would bypass
                  jit_compile=False)
    text, ids = corpus
    # The probe reads the units under the protocol they were trained with.
    probe = CorpusProbe(text, ids, window=500, layers=None, reset_every=every * args.seq or None,
                        meta={"source": "Python standard library, held-out validation files",
                              "cell": kind})
    untrained = probe.run(model)
    tokens = [[vocab.chars[i] for i in row] for row in x[: args.batch]]
    callbacks = common.monitor_callbacks(args, kind, x[: args.batch], y[: args.batch],
                                         tokens=tokens, open_viewer=first, corpus=probe,
                                         corpus_every=args.corpus_every)
    start = time.perf_counter()
    model.fit(x, y, batch_size=args.batch, epochs=args.epochs, shuffle=False, verbose=0,
              callbacks=[ResetStates(), *callbacks])
    seconds = time.perf_counter() - start
    trained = probe.run(model)
    return model, dict(kind=kind, seconds=seconds, reset=every * args.seq,
                       steps=args.epochs * len(x) // args.batch, trained=trained,
                       untrained=untrained)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(parser, cell_default="all", allow_all=True)
    parser.add_argument("--corpus-mb", type=float, default=4.0,
                        help="megabytes of training text (whole files; default %(default)s)")
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--embedding", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32, help="contiguous streams per batch")
    parser.add_argument("--seq", type=int, default=100, help="truncated BPTT length")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--reset-every", type=int, default=None,
                        help="zero the states every this many windows (in training, test and "
                             "corpus probe), for every cell; 0: never. Default: by kind of "
                             "cell, 10 (1000 characters) for the cells without a forget gate "
                             "(cec, original), which cannot reset themselves on a continual "
                             "stream (Gers et al. 2000), never for vanilla and forget")
    parser.add_argument("--lr", type=float, default=1e-2,
                        help="Adam's learning rate, the same for every cell (default "
                             "%(default)s: in one pass of 1249 updates every cell ends lower "
                             "than with 3e-3)")
    parser.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                        help="constant, or cosine decay from --lr to 0 over the run")
    parser.add_argument("--clip", type=float, default=5.0, help="global gradient-norm clip")
    parser.add_argument("--order", type=int, default=5, help="order of the n-gram baseline")
    parser.add_argument("--eval-chars", type=int, default=100_000,
                        help="held-out characters for bits per character")
    parser.add_argument("--corpus-chars", type=int, default=20_000,
                        help="held-out characters the corpus probe runs as one stream")
    parser.add_argument("--corpus-every", type=int, default=None,
                        help="with --monitor, record the corpus probe every this many steps "
                             "too (default: at the end of training only)")
    parser.add_argument("--sample-chars", type=int, default=200)
    args = common.finish_arguments(parser.parse_args(argv), "char_lm")
    if args.smoke:
        args.corpus_mb, args.units, args.batch, args.seq = 0.02, 16, 8, 20
        args.eval_chars, args.corpus_chars, args.sample_chars = 4000, 1500, 30
    wall = time.perf_counter()

    import keras  # noqa: F401 - imported before the kernels are built, as in every example

    files = stdlib_sources()
    splits = {name: [f for f in files if split_of(f[0]) == name]
              for name in ("train", "valid", "test")}
    train_files = take(splits["train"], int(args.corpus_mb * 1e6))
    train_text = "\n".join(text for _, text in train_files)
    vocab = Vocabulary(train_text)
    train_ids = vocab.encode(train_text)[: int(args.corpus_mb * 1e6)]
    test_text = "\n".join(text for _, text in take(splits["test"], args.eval_chars))
    test_ids = vocab.encode(test_text)[: args.eval_chars]
    corpus_text, features = corpus_stretch(take(splits["valid"], 10**9), args.corpus_chars)
    corpus_ids = vocab.encode(corpus_text)
    x, y = batches(train_ids, args.batch, args.seq)
    print(f"Python {'.'.join(map(str, __import__('sys').version_info[:3]))} standard library: "
          f"{len(files)} files; training on {len(train_files)} files ({len(train_ids):,} "
          f"characters, vocabulary {len(vocab)} with the unknown symbol), "
          f"{len(x) // args.batch} steps of {args.batch}×{args.seq}; test {len(test_ids):,} "
          f"characters of {sum(1 for _ in take(splits['test'], args.eval_chars))} held-out "
          f"files; corpus probe {len(corpus_text):,} characters of held-out validation files",
          flush=True)

    ngram = kneser_ney_log2probs(train_ids.astype(np.int64), test_ids.astype(np.int64),
                                 args.order, len(vocab))
    # Samples start after whole lines of held-out code: a network trained on the unbroken
    # stream has met zero states only at the start of training, so it is primed first.
    prime = corpus_text[: corpus_text.rfind("\n", 0, 500) + 1] + "def "
    kinds = list(common.CELL_CHOICES) if args.cell == "all" else [args.cell]
    rng = np.random.default_rng(args.seed)
    results = []
    for kind in kinds:
        model, result = train_cell(kind, args, vocab, (x, y), (corpus_text, corpus_ids),
                                   first=kind == kinds[0])
        evaluator = build_model(kind, args, len(vocab), 64, None)
        evaluator.set_weights(model.get_weights())
        # Both protocols for every cell; result["log2p"] is the cell's own.
        result["stream"] = stream_log2probs(evaluator, test_ids, 64, 500)
        result["reset1000"] = stream_log2probs(evaluator, test_ids, 64, 500, 1000)
        result["log2p"] = (stream_log2probs(evaluator, test_ids, 64, 500, result["reset"])
                           if result["reset"] not in (0, 1000) else
                           result["reset1000"] if result["reset"] else result["stream"])
        sampler = build_model(kind, args, len(vocab), 1, None)
        sampler.set_weights(model.get_weights())
        result["samples"] = {t: sample(sampler, vocab, prime, args.sample_chars, t, rng)
                             for t in (0.5, 1.0)}
        result["table"] = unit_table(result["trained"], result["untrained"], features, rng)
        results.append(result)
        print(f"  trained {kind} in {result['seconds']:.0f} s", flush=True)

    both = ~np.isnan(ngram)
    for r in results:
        for key in ("log2p", "stream", "reset1000"):
            both &= ~np.isnan(r[key])
    ngram_bpc = float(-ngram[both].mean())
    print(f"\nTest bits per character on {int(both.sum()):,} held-out characters "
          f"({args.units} units, {args.layers} layer{'s' * (args.layers > 1)}, "
          f"{results[0]['steps']} steps), each cell under the reset protocol it was trained "
          f"with, and under both:")
    print(f"{'model':<34}{'resets':>14}{'bits/char':>10}{'stream':>8}{'reset 1000':>11}"
          f"{'train s':>9}")
    print(f"{f'{args.order}-gram, interpolated Kneser-Ney':<34}{'-':>14}{ngram_bpc:>10.3f}"
          f"{'-':>8}{'-':>11}{'-':>9}")
    for r in results:
        r["bpc"] = float(-r["log2p"][both].mean())
        resets = f"every {r['reset']}" if r["reset"] else "none (stream)"
        print(f"{r['kind']:<34}{resets:>14}{r['bpc']:>10.3f}"
              f"{float(-r['stream'][both].mean()):>8.3f}"
              f"{float(-r['reset1000'][both].mean()):>11.3f}{r['seconds']:>9.1f}")
    bpc = {r["kind"]: r["bpc"] for r in results}
    if {"vanilla", "original", "forget"} <= set(bpc):
        below = [k for k in ("original", "forget") if bpc[k] < bpc["vanilla"]]
        print(f"LSTMs below the vanilla RNN ({bpc['vanilla']:.3f}): "
              + (", ".join(f"{k} by {bpc['vanilla'] - bpc[k]:.3f}" for k in below) or "none")
              + "".join(f"; {k} above it by {bpc[k] - bpc['vanilla']:.3f}"
                        for k in ("original", "forget") if k not in below))
    if "forget" in bpc:
        gap = bpc["forget"] - ngram_bpc
        print(f"forget-gate LSTM {'above' if gap > 0 else 'below'} the {args.order}-gram by "
              f"{abs(gap):.3f} bits/char")

    for r in results:
        print(f"\nSamples of the {r['kind']} model after {len(prime) - 4} held-out "
              f"characters and 'def ':")
        for t, text in r["samples"].items():
            print(f"  T={t}: " + repr(text)[1:-1])

    for r in results:
        table = r["table"]
        resets = f"states zeroed every {r['reset']}" if r["reset"] else "one stream"
        print(f"\nInterpretable units, {r['kind']}: best |r| of any unit's {table['state']} "
              f"with each feature over {len(corpus_text):,} held-out characters ({resets}; "
              f"shifted by {table['shift']:,} characters for the control)")
        print(f"{'feature':<16}{'trained':>9}{'untrained':>11}{'shifted':>9}{'unit':>6}")
        for name, row in table["rows"].items():
            print(f"{name:<16}{row['trained']:>9.3f}{row['untrained']:>11.3f}"
                  f"{row['shifted']:>9.3f}{row['label']:>6}")

    from keras_rnnx.interpret import saturation

    saturations = {}
    for r in results:
        gates = {name: r["trained"][key][name] for key in r["trained"]
                 for name in ("f", "i", "o") if name in r["trained"][key]}
        if gates:
            saturations[r["kind"]] = {name: saturation(g) for name, g in gates.items()}
    if saturations:
        print("\nGate saturation (mean over units of the fraction < 0.1 / > 0.9):")
        for cell, by_gate in saturations.items():
            print(f"  {cell}: " + ", ".join(
                f"{g} {left.mean():.2f} / {right.mean():.2f}"
                for g, (left, right) in by_gate.items()))
        root, ext = os.path.splitext(args.out)
        plot_saturation(saturations, f"{root}_saturation{ext}")
    shown = next((r for r in results if r["kind"] == "forget"), results[-1])
    plot_classic(corpus_text, features, shown["trained"], shown["table"],
                 CELL_NAMES[shown["kind"]], args.out)
    print(f"wall time {time.perf_counter() - wall:.0f} s")
    if args.monitor:
        print(f"runs recorded in {args.monitor}; watch them with: rnnx-viz {args.monitor}")
    return results


if __name__ == "__main__":
    main()
