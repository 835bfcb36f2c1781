"""Sentiment classification, many → one: the lecture's "The food was really good" example.

An Embedding feeds one of the lecture's cells, whose last hidden state goes to a
Dense(1, sigmoid) that reads P(positive). The default data are restaurant reviews generated
from a small grammar in which word order decides the label, so that a bag-of-words model (the
same Embedding and Dense layer on the mean of the word vectors) cannot read it:

- negation: "the food was good" is positive, "the food was not good" negative, "not bad"
  positive, so neither "not" nor "good" alone says which;
- contrast: in "X but Y" the second clause wins, in "X although Y" the first, and in
  "although X Y" the second: swapping the clauses flips the label and keeps the bag of words;
- long-range cues: in "the chicken crossed the road because it was uncooked" the word that
  decides comes last and what it is about comes first; uncooked is bad for a chicken, fine for
  sushi, and cold is bad for soup, fine for a salad.

Test sentences are drawn from the same grammar and none of them occurs in the training set.
`--data DIR` reads a text directory in the aclImdb layout instead and `--imdb` downloads
`keras.datasets.imdb`. Prints the test accuracy of the RNN next to the bag-of-words model's and
P(positive) for a few sentences, and writes a PNG of the training curves, of the accuracy on
each construction and of which words the gradient ‖∂L/∂h_t‖ reaches in the chicken sentence.

    python examples/sentiment.py                         # generated reviews, forget-gate LSTM
    python examples/sentiment.py --cell vanilla          # the vanilla RNN
    python examples/sentiment.py --data aclImdb          # DIR/{pos,neg} or DIR/{train,test}/...
    python examples/sentiment.py --imdb                  # keras.datasets.imdb (downloads)
    python examples/sentiment.py --monitor runs/senti    # record the run, tokens on the time axis
    python examples/sentiment.py --smoke                 # tiny, for tests
"""

from __future__ import annotations

import argparse
import os
import sys

import common
import numpy as np

CLASSES = ("neg", "pos")
CHICKEN = "the chicken crossed the road because it was uncooked"
SHOWCASE = [  # (sentence, label)
    ("the food was really good", 1),
    ("the food was not good", 0),
    ("the food was not bad", 1),
    (CHICKEN, 0),
    ("the sushi crossed the road because it was uncooked", 1),
    ("the food was great although the service was slow", 1),
    ("although the food was great the service was slow", 0),
    ("the food was great but the service was slow", 0),
]

# The grammar of the generated reviews.
SUBJECTS = ["food", "service", "waiter", "staff", "music", "dessert", "wine", "bread", "place",
            "menu"]
GOOD = ["good", "great", "tasty", "friendly", "lovely", "excellent"]
BAD = ["bad", "awful", "bland", "slow", "rude", "terrible"]
ADVERBS = ["", "really", "very", "quite"]
OPENERS = ["", "", "", "honestly", "i think", "to be fair", "last night", "on friday"]
HOT_DISHES = ["chicken", "steak", "soup", "burger", "pizza"]
RAW_DISHES = ["sushi", "salad", "oysters", "tartare", "sashimi"]
STATES = {"uncooked": (0, 1), "cold": (0, 1), "hot": (1, 0)}  # (hot dish, raw dish) label
FILLERS = ["crossed the road", "came to the table", "arrived after an hour", "sat on the counter",
           "was on the menu", "came with the bread", "was served last"]


def clause(rng):
    """("the food was not really good", label)."""
    negated = rng.random() < 0.5
    positive = rng.random() < 0.5
    words = ["the", rng.choice(SUBJECTS), "was", "not" if negated else "",
             rng.choice(ADVERBS), rng.choice(GOOD if positive else BAD)]
    return " ".join(w for w in words if w), int(positive != negated)


def review(rng):
    """One generated review: (text, label, construction)."""
    kind = rng.choice(["negation", "but", "although", "long-range"])
    if kind == "negation":
        text, label = clause(rng)
    elif kind == "long-range":
        hot = rng.random() < 0.5
        state = rng.choice(list(STATES))
        fillers = " and ".join(rng.choice(FILLERS, size=rng.integers(1, 3), replace=False))
        dish = rng.choice(HOT_DISHES if hot else RAW_DISHES)
        text = f"the {dish} {fillers} because it was {state}"
        label = STATES[state][0 if hot else 1]
    else:
        (first, a), (second, b) = clause(rng), clause(rng)
        while a == b and rng.random() < 0.8:  # mostly clauses that disagree
            second, b = clause(rng)
        if kind == "but":
            text, label = f"{first} but {second}", b
        elif rng.random() < 0.5:
            text, label = f"{first} although {second}", a
        else:
            text, label = f"although {first} {second}", b
    opener = rng.choice(OPENERS)
    return (f"{opener} {text}" if opener else text), label, kind


def generated_reviews(n_train: int, n_test: int, seed: int):
    """Train and test (texts, labels, kinds); no test text occurs in the training set."""
    rng = np.random.default_rng(seed)
    train = [review(rng) for _ in range(n_train)]
    seen = {text for text, _, _ in train}
    test = []
    while len(test) < n_test:
        sample = review(rng)
        if sample[0] not in seen:
            test.append(sample)
    return [list(column) for column in zip(*train)], [list(column) for column in zip(*test)]


def _has_classes(path: str) -> bool:
    return all(os.path.isdir(os.path.join(path, c)) for c in CLASSES)


def _read_classes(path: str):
    import keras

    dataset = keras.utils.text_dataset_from_directory(
        path, class_names=list(CLASSES), batch_size=1024, shuffle=False, verbose=False)
    texts, labels = [], []
    for batch_texts, batch_labels in dataset.as_numpy_iterator():
        texts += [t.decode("utf-8", errors="replace") for t in batch_texts]
        labels += [int(y) for y in batch_labels]
    if not texts:
        raise ValueError(f"{path}: the pos/ and neg/ folders hold no .txt files")
    return texts, np.array(labels, dtype="int32")


def load_directory(path: str, *, test_fraction: float = 0.2, seed: int = 0):
    """((train_texts, train_labels), (test_texts, test_labels)) from an aclImdb-layout folder.

    `path` holds either `train/` and `test/`, each with `pos/` and `neg/` folders of .txt
    files (the aclImdb layout; other folders such as `unsup/` are ignored), or `pos/` and `neg/`
    directly, which are then split at random, `test_fraction` of the files for testing.
    Labels are 0 for neg and 1 for pos; texts are in file-name order within each class.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ValueError(f"{path}: no such directory")
    if _has_classes(os.path.join(path, "train")) and _has_classes(os.path.join(path, "test")):
        return _read_classes(os.path.join(path, "train")), _read_classes(os.path.join(path, "test"))
    if not _has_classes(path):
        raise ValueError(
            f"{path} is not a text directory in the aclImdb layout: expected pos/ and neg/ "
            f"folders of .txt files in it, or train/ and test/ folders that each hold them.")
    texts, labels = _read_classes(path)
    order = np.random.default_rng(seed).permutation(len(texts))
    n_test = max(1, int(round(test_fraction * len(texts))))
    pick = lambda rows: ([texts[i] for i in rows], labels[rows])  # noqa: E731
    return pick(np.sort(order[n_test:])), pick(np.sort(order[:n_test]))


def load_imdb(vocab_size: int):
    """keras.datasets.imdb decoded back to texts (downloads it on first use)."""
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.imdb.load_data(num_words=vocab_size)
        index = keras.datasets.imdb.get_word_index()
    except Exception as error:  # no network, proxy, ...: one line instead of a traceback
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        sys.exit(f"--imdb: downloading the IMDB data set failed ({reason}); unpack "
                 f"aclImdb_v1.tar.gz from another machine and pass --data aclImdb/ instead")
    words = {i + 3: w for w, i in index.items()}  # load_data's index_from=3; 1 start, 2 OOV
    decode = lambda seq: " ".join(words[i] for i in seq if i in words)  # noqa: E731
    return (([decode(s) for s in x_train], np.asarray(y_train, "int32")),
            ([decode(s) for s in x_test], np.asarray(y_test, "int32")))


def _standardize(text):
    import tensorflow as tf

    return tf.strings.regex_replace(tf.strings.lower(text), r"<br\s*/?>|[[:punct:]]", " ")


def text_vectorizer(train_texts, *, max_len: int, vocab_size: int):
    """A TextVectorization layer adapted to `train_texts`: 0 pads, 1 is [UNK]."""
    import keras

    vectorizer = keras.layers.TextVectorization(
        max_tokens=vocab_size, output_sequence_length=max_len, standardize=_standardize)
    vectorizer.adapt(train_texts)
    return vectorizer


def encode(vectorizer, texts) -> np.ndarray:
    return np.asarray(vectorizer(np.asarray(texts, dtype=object)))


def tokens_of(ids: np.ndarray, vocabulary: list[str]) -> list[list[str]]:
    """The words of each encoded row, "" for padding: the viewer's time-axis labels."""
    return [[vocabulary[i] if i else "" for i in row] for row in ids]


def build(kind: str, args, vocab_size: int):
    import keras

    import keras_rnnx as rx

    keras.utils.set_random_seed(args.seed)
    pool = (rx.RNN(common.cell(kind, args.units), name="rnn") if kind != "bow"
            else keras.layers.GlobalAveragePooling1D(name="mean"))
    model = keras.Sequential([
        keras.Input((args.max_len,), dtype="int32"),
        keras.layers.Embedding(vocab_size, args.embed, mask_zero=True),
        pool,
        keras.layers.Dense(1, activation="sigmoid"),
    ], name=kind)
    model.compile(optimizer=keras.optimizers.Adam(args.lr, clipnorm=1.0),
                  loss="binary_crossentropy", metrics=["accuracy"], jit_compile=not args.smoke)
    return model


def gradient_per_token(model, ids, label):
    """‖∂L/∂h_t‖ at each real (unpadded) token of one sentence, from the probe."""
    from keras_rnnx.diagnostics import probe

    (fields,) = probe(model, ids[None], np.array([[label]], "float32"), jacobian=False).values()
    return fields["grad_norm"][: int(np.count_nonzero(ids))]


def train(model, args, data, showcase, callbacks=()):
    """Fits `model`; returns its history, which test texts it gets right, P(pos) on `showcase`."""
    x_train, y_train, x_test, y_test = data
    validation = None if args.smoke else (x_test, y_test)  # --smoke: one graph less to trace
    history = model.fit(x_train, y_train, batch_size=args.batch, epochs=args.epochs,
                        validation_data=validation, verbose=0, callbacks=list(callbacks))
    p = model.predict(np.concatenate([x_test, showcase]), batch_size=512, verbose=0)[:, 0]
    return history.history, (p[: len(x_test)] > 0.5) == (y_test[:, 0] > 0.5), p[len(x_test):]


def plot(args, curves, by_kind, tokens, grads):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6), width_ratios=(1, 1, 1.3))
    ax = axes[0]
    for (name, history), color in zip(curves.items(), ("C0", "C1")):
        epochs = np.arange(1, len(history["accuracy"]) + 1)
        ax.plot(epochs, history["accuracy"], color=color, ls="--", label=f"{name}, train")
        if "val_accuracy" in history:
            ax.plot(epochs, history["val_accuracy"], color=color, marker=".",
                    label=f"{name}, test")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.4, 1.02)
    ax.set_title("Training curves")
    ax.legend(fontsize=8)

    ax = axes[1]
    kinds = list(by_kind)
    width = 0.38
    for k, (name, color) in enumerate(zip(curves, ("C0", "C1"))):
        values = [by_kind[kind][k] for kind in kinds]
        bars = ax.bar(np.arange(len(kinds)) + (k - 0.5) * width, values, width, color=color,
                      label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(np.arange(len(kinds)), kinds)
    ax.set_ylim(0, 1.22)
    ax.set_ylabel("test accuracy")
    ax.set_title("Test accuracy by construction")
    ax.legend(fontsize=8, loc="upper center", ncol=2)

    ax = axes[2]
    steps = np.arange(len(tokens))
    for (when, values), color in zip(grads.items(), ("grey", "C0")):
        ax.plot(steps, np.maximum(values / values[-1], 1e-30), marker="o", color=color,
                label=f"{when} (last word: {values[-1]:.1e})")
    ax.set_yscale("log")
    lowest = min(float(np.min(values / values[-1])) for values in grads.values())
    ax.set_ylim(min(0.01, lowest / 2), 2)
    ax.set_xticks(steps, tokens, rotation=40, ha="right")
    ax.set_ylabel("‖∂L/∂h$_t$‖ relative to the last word")
    ax.set_title("Which words the gradient reaches (label: negative)")
    ax.legend(fontsize=8)
    fig.suptitle(f"Sentiment, many → one: {args.cell} cell vs bag of words ({args.source})")
    common.save_figure(fig, args.out)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(parser)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", metavar="DIR", help="a text directory in the aclImdb layout")
    source.add_argument("--imdb", action="store_true", help="keras.datasets.imdb (downloads)")
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--embed", type=int, default=16, help="embedding size")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--n-train", type=int, default=8000, help="generated training reviews")
    parser.add_argument("--max-len", type=int, default=None,
                        help="tokens per text (default: the longest generated review, or 100)")
    parser.add_argument("--vocab-size", type=int, default=20000)
    args = common.finish_arguments(parser.parse_args(argv), "sentiment")
    if args.smoke:
        args.units, args.embed, args.epochs, args.n_train, args.batch = 8, 8, 2, 400, 32

    if args.data or args.imdb:
        try:
            train_set, test_set = (load_directory(args.data, seed=args.seed) if args.data
                                   else load_imdb(args.vocab_size))
        except ValueError as error:
            parser.error(str(error))
        (train_texts, y_train), (test_texts, y_test) = train_set, test_set
        test_kinds = ["all"] * len(test_texts)
        args.source, longest = args.data or "IMDB", 100
    else:
        n_test = 200 if args.smoke else 2000
        (train_texts, y_train, _), (test_texts, y_test, test_kinds) = generated_reviews(
            args.n_train, n_test, args.seed)
        args.source = "generated reviews"
        longest = max(len(text.split()) for text in train_texts + test_texts)
    args.max_len = args.max_len or longest
    if args.max_len < 1:
        parser.error(f"--max-len must be at least 1, got {args.max_len}")
    vectorizer = text_vectorizer(train_texts, max_len=args.max_len, vocab_size=args.vocab_size)
    vocabulary = vectorizer.get_vocabulary()
    data = (encode(vectorizer, train_texts), np.asarray(y_train, "float32")[:, None],
            encode(vectorizer, test_texts), np.asarray(y_test, "float32")[:, None])
    showcase = encode(vectorizer, [text for text, _ in SHOWCASE])
    showcase_y = np.array([[label] for _, label in SHOWCASE], "float32")
    print(f"{args.source}: {len(train_texts)} train / {len(test_texts)} test texts, "
          f"{len(vocabulary)} words, {args.max_len} tokens per text")

    rnn = build(args.cell, args, len(vocabulary))
    chicken = showcase[3]
    grads = {"at initialisation": gradient_per_token(rnn, chicken, 0)}
    callbacks = common.monitor_callbacks(args, args.cell, showcase, showcase_y,
                                         tokens=tokens_of(showcase, vocabulary))
    rnn_curve, rnn_right, p_rnn = train(rnn, args, data, showcase, callbacks)
    grads["after training"] = gradient_per_token(rnn, chicken, 0)
    bow = build("bow", args, len(vocabulary))
    bow_curve, bow_right, p_bow = train(bow, args, data, showcase)

    print(f"test accuracy: {args.cell} {rnn_right.mean():.3f} vs bag-of-words "
          f"{bow_right.mean():.3f} (chance 0.500)")
    kinds = np.array(test_kinds)
    by_kind = {kind: (rnn_right[kinds == kind].mean(), bow_right[kinds == kind].mean())
               for kind in dict.fromkeys(test_kinds)}
    if len(by_kind) > 1:
        print("  " + ", ".join(f"{kind} {r:.2f} vs {b:.2f}" for kind, (r, b) in by_kind.items()))
    print(f"{'P(positive)':>11} {'bow':>5}  label  sentence")
    for (text, label), p, q in zip(SHOWCASE, p_rnn, p_bow):
        print(f"{p:>11.2f} {q:>5.2f}  {'+-'[1 - label]:^5}  {text}")

    words = tokens_of(chicken[None], vocabulary)[0][: len(grads["after training"])]
    plot(args, {args.cell: rnn_curve, "bag of words": bow_curve}, by_kind, words, grads)
    if args.monitor:
        print(f"run recorded in {args.monitor}; watch it with: rnnx-viz {args.monitor}")
    return dict(accuracy=float(rnn_right.mean()), bow_accuracy=float(bow_right.mean()))


if __name__ == "__main__":
    main()
