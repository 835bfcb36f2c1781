"""Translation, many → many: an encoder–decoder RNN turns dates written by people into ISO dates.

The lecture's many → many scenario, with the input read whole before the output is written.
The source is a date in one of four formats, e.g. "the twenty-third of march two thousand and
four", "march 23, 2004", "23/03/2004" or "23 mar 2004", as tokens (words, digits, punctuation);
the target is "2004-03-23", character by character. The encoder RNN reads the source and hands
its final states ([h] for the vanilla cell, [h, c] for the others) to the decoder RNN as its
initial state; everything the decoder learns about the source passes through them. The decoder
is trained with teacher forcing (the true previous character is its input) and translates test
dates greedily, one step at a time, carrying its states and feeding its own most likely
character back in. Test dates never occur in training, in any format.

Prints exact-match and per-character accuracy on held-out dates (and exact match per source
format), and writes a PNG of the training curves, of the gradient ‖∂L/∂h_t‖ that reaches each
step of the encoder (measured by `keras_rnnx.diagnostics.probe`), and of example translations.

    python examples/translation.py                      # forget-gate LSTM encoder and decoder
    python examples/translation.py --cell vanilla       # any of the four cells
    python examples/translation.py --monitor runs/dates # record both RNNs for the viewer
    python examples/translation.py --smoke              # tiny, for tests
"""

from __future__ import annotations

import argparse
import datetime
import re
import time

import common
import numpy as np

MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december")
ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen").split()
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
ORDINALS = ("- first second third fourth fifth sixth seventh eighth ninth tenth eleventh "
            "twelfth thirteenth fourteenth fifteenth sixteenth seventeenth eighteenth "
            "nineteenth").split()
FIRST_DATE, LAST_DATE = datetime.date(1950, 1, 1), datetime.date(2049, 12, 31)


def number(n: int) -> str:
    return ONES[n] if n < 20 else TENS[n // 10] + (f"-{ONES[n % 10]}" if n % 10 else "")


def ordinal(n: int) -> str:
    if n < 20:
        return ORDINALS[n]
    return TENS[n // 10][:-1] + "ieth" if n % 10 == 0 else f"{TENS[n // 10]}-{ORDINALS[n % 10]}"


def year_in_words(year: int) -> str:
    if year < 2000:
        return f"nineteen {number(year - 1900)}"
    return "two thousand" + (f" and {number(year - 2000)}" if year > 2000 else "")


FORMATS = {
    "words": lambda d: f"the {ordinal(d.day)} of {MONTHS[d.month - 1]} {year_in_words(d.year)}",
    "month d, yyyy": lambda d: f"{MONTHS[d.month - 1]} {d.day}, {d.year}",
    "dd/mm/yyyy": lambda d: f"{d.day:02d}/{d.month:02d}/{d.year}",
    "d mon yyyy": lambda d: f"{d.day} {MONTHS[d.month - 1][:3]} {d.year}",
}
TARGET_VOCAB = ("<start>", "<end>", *"0123456789-")
TARGET_ID = {char: k for k, char in enumerate(TARGET_VOCAB)}
SOURCE_STEPS = 12  # the longest: "the twenty - third of march two thousand and forty - four"
TARGET_STEPS = 11  # yyyy-mm-dd and <end>


def tokenize(text: str) -> list[str]:
    return re.findall(r"[a-z]+|\d|\S", text)


def source_vocabulary() -> tuple[str, ...]:
    """Every source token, from one example of each day, month, year and format."""
    days = [datetime.date(2000, 1, d) for d in range(1, 32)]
    months = [datetime.date(2000, m, 1) for m in range(1, 13)]
    years = [datetime.date(y, 1, 1) for y in range(FIRST_DATE.year, LAST_DATE.year + 1)]
    tokens = {t for d in days + months + years for f in FORMATS.values() for t in tokenize(f(d))}
    return ("<pad>", *sorted(tokens))


def dataset(dates, rng: np.random.Generator, vocab):
    """Sources (left-padded token ids), decoder inputs and targets, format names, texts."""
    index = {token: k for k, token in enumerate(vocab)}
    names = list(FORMATS)
    formats = [names[k] for k in rng.integers(len(names), size=len(dates))]
    sources = np.zeros((len(dates), SOURCE_STEPS), np.int32)
    previous = np.zeros((len(dates), TARGET_STEPS), np.int32)
    targets = np.zeros((len(dates), TARGET_STEPS), np.int32)
    texts = []
    for k, (date, name) in enumerate(zip(dates, formats)):
        text = FORMATS[name](date)
        ids = [index[t] for t in tokenize(text)]
        sources[k, SOURCE_STEPS - len(ids):] = ids  # left-padded: the last step reads the source
        iso = [TARGET_ID[c] for c in date.isoformat()]
        previous[k] = [TARGET_ID["<start>"], *iso]
        targets[k] = [*iso, TARGET_ID["<end>"]]
        texts.append(text)
    return sources, previous, targets, formats, texts


def build_models(kind: str, units: int, vocab_size: int):
    """The training model, and the encoder and one-step decoder that share its layers."""
    import keras
    from keras import layers

    import keras_rnnx as rx

    source = keras.Input((SOURCE_STEPS,), dtype="int32", name="source")
    previous = keras.Input((TARGET_STEPS,), dtype="int32", name="previous_chars")
    embedded = layers.Embedding(vocab_size, 32, name="source_embedding")(source)
    _, *states = rx.RNN(common.cell(kind, units), return_state=True, name="encoder")(embedded)
    char_embedding = layers.Embedding(len(TARGET_VOCAB), 16, name="char_embedding")
    decoder = rx.RNN(common.cell(kind, units), return_sequences=True, return_state=True,
                     name="decoder")
    next_char = layers.Dense(len(TARGET_VOCAB), activation="softmax", name="next_char")
    hidden, *_ = decoder(char_embedding(previous), initial_state=states)
    model = keras.Model([source, previous], next_char(hidden), name=f"translator_{kind}")

    encoder = keras.Model(source, states, name="encoder_only")
    char = keras.Input((1,), dtype="int32", name="char")
    state_in = [keras.Input((units,), name=f"state_{k}") for k in range(len(states))]
    hidden, *state_out = decoder(char_embedding(char), initial_state=state_in)
    step = keras.Model([char, *state_in], [next_char(hidden), *state_out], name="decoder_step")
    return model, encoder, step


def translate(encoder, step, sources) -> list[str]:
    """Greedy decoding: each step's most likely character is the next step's input."""
    from keras import tree

    states = tree.flatten(encoder.predict_on_batch(sources))  # one array for the vanilla cell
    char = np.full((len(sources), 1), TARGET_ID["<start>"], np.int32)
    chars = []
    for _ in range(TARGET_STEPS):
        probs, *states = step.predict_on_batch([char, *states])
        char = np.asarray(probs)[:, -1].argmax(-1)[:, None].astype(np.int32)
        chars.append(char[:, 0])
    words = ["".join(TARGET_VOCAB[i] for i in row) for row in np.stack(chars, axis=1)]
    return [w.split("<end>")[0] for w in words]


def encoder_gradient(model, sources, previous, targets):
    """‖∂L/∂h_t‖ at every step of the encoder, one source at a time."""
    from keras_rnnx.diagnostics import probe

    return np.stack([probe(model, [sources[k:k + 1], previous[k:k + 1]], targets[k:k + 1],
                           layers="encoder", jacobian=False)["encoder"]["grad_norm"]
                     for k in range(len(sources))])


def plot(history, gradients, grad_texts, examples, title: str, path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(14, 8.5))
    grid = fig.add_gridspec(2, 2, height_ratios=[1, 1.05])
    ax = fig.add_subplot(grid[0, 0])
    epochs = np.arange(1, len(history["loss"]) + 1)
    ax.plot(epochs, history["loss"], marker=".", label="training loss")
    ax.plot(epochs, history["val_loss"], marker=".", label="held-out loss")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy per character (teacher forcing)")
    twin = ax.twinx()
    twin.plot(epochs, history["val_accuracy"], color="tab:green", ls="--", marker=".",
              label="held-out per-character accuracy")
    twin.set_ylabel("accuracy")
    twin.set_ylim(0, 1.02)
    lines = ax.get_lines() + twin.get_lines()
    ax.legend(lines, [line.get_label() for line in lines], fontsize=8, loc="center right")
    ax.set_title("Training")

    ax = fig.add_subplot(grid[0, 1])
    steps = np.arange(1 - SOURCE_STEPS, 1)
    for grad, text in zip(gradients, grad_texts):
        grad, first = np.maximum(grad, 1e-30), 1 - len(tokenize(text))
        (line,) = ax.plot(steps[steps >= first], grad[steps >= first], marker=".",
                          label=f'"{text}"')
        ax.plot(steps[steps <= first], grad[steps <= first], color=line.get_color(), ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("encoder step t (0 = last token; dotted: the left padding)")
    ax.set_ylabel("‖∂L/∂h_t‖ of the encoder")
    ax.set_title("Gradient reaching each step of the encoder, after training")
    ax.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.16))

    ax = fig.add_subplot(grid[1, :])
    ax.axis("off")
    rows = [[text, pred, true, "✓" if pred == true else "✗"] for text, pred, true in examples]
    table = ax.table(cellText=rows, colLabels=["source", "greedy translation", "true", ""],
                     colWidths=[0.55, 0.17, 0.17, 0.04], loc="center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.35)
    for (row, _), cell in table.get_celld().items():
        if row > 0 and rows[row - 1][3] == "✗":
            cell.set_facecolor("mistyrose")
    ax.set_title("Held-out dates (mistakes first, then each format in turn)")
    fig.suptitle(title)
    common.save_figure(fig, path)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(parser)
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--train", type=int, default=20_000, help="training sentences")
    parser.add_argument("--test", type=int, default=1000, help="held-out dates")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = common.finish_arguments(parser.parse_args(argv), "translation")
    if args.smoke:
        args.units, args.train, args.test, args.epochs = 16, 512, 64, 1

    import keras

    rng = np.random.default_rng(args.seed)
    all_dates = [FIRST_DATE + datetime.timedelta(days=int(k))
                 for k in rng.permutation((LAST_DATE - FIRST_DATE).days + 1)]
    test_dates, train_dates = all_dates[:args.test], all_dates[args.test:]
    vocab = source_vocabulary()
    train = dataset([train_dates[k] for k in rng.integers(len(train_dates), size=args.train)],
                    rng, vocab)
    sources, previous, targets, formats, texts = dataset(test_dates, rng, vocab)

    keras.utils.set_random_seed(args.seed)
    model, encoder, step = build_models(args.cell, args.units, len(vocab))
    # Decaying the rate to 0 keeps a late Adam spike from spoiling the final model.
    decay_steps = args.epochs * -(-args.train // args.batch)
    learning_rate = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate, clipnorm=1.0),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=not args.smoke)
    tokens = [[vocab[i] for i in row] for row in sources[:8]]
    callbacks = common.monitor_callbacks(args, args.cell, [sources[:8], previous[:8]],
                                         targets[:8], tokens=tokens)
    start = time.perf_counter()
    history = model.fit(list(train[:2]), train[2], batch_size=args.batch, epochs=args.epochs,
                        validation_data=([sources, previous], targets), verbose=0,
                        callbacks=callbacks)
    seconds = time.perf_counter() - start

    predicted = translate(encoder, step, sources)
    truth = [d.isoformat() for d in test_dates]
    right = np.array([p == t for p, t in zip(predicted, truth)])
    per_char = np.mean([a == b for p, t in zip(predicted, truth) for a, b in
                        zip(p.ljust(len(t)), t)])
    by_format = {name: right[[f == name for f in formats]].mean() for name in FORMATS}
    print(f"Date translation (many → many): {args.cell} encoder and decoder, {args.units} units, "
          f"{args.train} training sentences, {args.epochs} epochs, {seconds:.1f} s")
    print(f"exact match {100 * right.mean():.1f}%, per-character {100 * per_char:.1f}% "
          f"on {args.test} held-out dates")
    print("exact match by source format: "
          + ", ".join(f"{name} {100 * acc:.1f}%" for name, acc in by_format.items()))

    per_format = [[k for k, f in enumerate(formats) if f == name] for name in FORMATS]
    first = [ks[0] for ks in per_format]
    gradients = encoder_gradient(model, sources[first], previous[first], targets[first])
    wrong = np.flatnonzero(~right)[:4].tolist()
    shown = wrong + [k for ks in zip(*per_format) for k in ks if k not in wrong][:12 - len(wrong)]
    examples = [(texts[k], predicted[k], truth[k]) for k in shown]
    plot(history.history, gradients, [texts[k] for k in first], examples,
         f"Dates to ISO 8601 with a {args.cell} encoder–decoder: exact match "
         f"{100 * right.mean():.1f}%, per-character {100 * per_char:.1f}% on held-out dates",
         args.out)
    if args.monitor:
        print(f"run recorded in {args.monitor}; watch it with: rnnx-viz {args.monitor}")
    return dict(exact=float(right.mean()), per_char=float(per_char), seconds=seconds)


if __name__ == "__main__":
    main()
