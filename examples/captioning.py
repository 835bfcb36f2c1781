"""Image captioning, one → many: a CNN looks at a picture, an RNN writes what it sees.

The lecture's one → many scenario: one input (an image) and many outputs (the words of a
sentence). Each 32×32 image, drawn with NumPy, holds one or two coloured shapes, and its caption
names them and where they are: "a green triangle", "a red circle above a blue square", "a yellow
square to the left of a red circle" (the upper or left shape is named first, so that every image
has exactly one right caption). A small CNN encodes the image into the decoder's initial state,
[h] for the vanilla cell and [h, c] for the others. The decoder reads the previous word and
predicts the next: trained with teacher forcing (the true previous word is its input), it
captions test images greedily, feeding its own most likely word back in.

Prints exact-match accuracy and corpus BLEU-4 on held-out images, and writes a PNG of test
images titled with the predicted and the true caption.

    python examples/captioning.py                      # forget-gate LSTM decoder
    python examples/captioning.py --cell vanilla       # any of the four cells
    python examples/captioning.py --monitor runs/cap   # record the decoder for the viewer
    python examples/captioning.py --smoke              # tiny, for tests
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter

import common
import numpy as np

SIZE = 32
COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.75, 0.2), "blue": (0.2, 0.35, 1.0),
           "yellow": (0.95, 0.85, 0.1)}
SHAPES = ("circle", "square", "triangle")
VOCAB = ("<pad>", "<start>", "<end>", "a", "above", "to", "the", "left", "of", *COLOURS, *SHAPES)
WORD_ID = {word: k for k, word in enumerate(VOCAB)}
STEPS = 11  # "a red circle to the left of a blue square" and <end>
_Y, _X = np.mgrid[:SIZE, :SIZE]


def draw(image, shape: str, colour: str, cx: int, cy: int, r: int) -> None:
    dx, dy = _X - cx, _Y - cy
    if shape == "circle":
        inside = np.hypot(dx, dy) <= r - 0.5
    elif shape == "square":
        inside = (abs(dx) <= 0.8 * r) & (abs(dy) <= 0.8 * r)
    else:  # apex up, base 0.8 r below the centre
        inside = (dy >= -r) & (dy <= 0.8 * r) & (abs(dx) <= (dy + r) / 1.8)
    image[inside] = COLOURS[colour]


def scene(rng: np.random.Generator):
    """One image and its caption (a list of words)."""
    image = np.zeros((SIZE, SIZE, 3), np.float32)
    (s1, c1), (s2, c2) = [(str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))))
                          for _ in range(2)]
    layout = rng.integers(3)
    if layout == 0:
        r = rng.integers(5, 9)
        draw(image, s1, c1, rng.integers(r, SIZE - r), rng.integers(r, SIZE - r), r)
        words = ["a", c1, s1]
    else:  # each shape inside its own half; `a` runs across the halves, `b` along them
        half = SIZE // 2
        r1, r2 = rng.integers(4, 7, size=2)
        a1, a2 = rng.integers(r1, half - r1), half + rng.integers(r2, half - r2)
        b1 = rng.integers(7, SIZE - 7)
        b2 = np.clip(b1 + rng.integers(-4, 5), r2, SIZE - 1 - r2)
        vertical = layout == 1
        draw(image, s1, c1, *((b1, a1) if vertical else (a1, b1)), r1)
        draw(image, s2, c2, *((b2, a2) if vertical else (a2, b2)), r2)
        relation = ["above"] if vertical else ["to", "the", "left", "of"]
        words = ["a", c1, s1, *relation, "a", c2, s2]
    image += rng.normal(0.0, 0.05, image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0), words


def dataset(n: int, rng: np.random.Generator):
    """Images, the decoder's inputs (<start> + caption) and targets (caption + <end>)."""
    images = np.empty((n, SIZE, SIZE, 3), np.float32)
    previous = np.zeros((n, STEPS), np.int32)
    targets = np.zeros((n, STEPS), np.int32)
    captions = []
    for k in range(n):
        images[k], words = scene(rng)
        ids = [WORD_ID[w] for w in words]
        previous[k, :len(ids) + 1] = [WORD_ID["<start>"], *ids]
        targets[k, :len(ids) + 1] = [*ids, WORD_ID["<end>"]]
        captions.append(words)
    return images, previous, targets, captions


def build_model(kind: str, units: int):
    import keras
    from keras import layers

    import keras_rnnx as rx

    image = keras.Input((SIZE, SIZE, 3), name="image")
    previous = keras.Input((STEPS,), dtype="int32", name="previous_words")
    x = image
    for filters in (8, 16, 32):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Dense(128, activation="relu")(layers.Flatten()(x))
    # Without it the decoder settles for a caption model that ignores the image: at first the
    # features barely differ between images (mostly black), so the words are easier to fit.
    x = layers.LayerNormalization()(x)
    cell = common.cell(kind, units)
    initial_state = [layers.Dense(units, activation="tanh", name=f"initial_{name}")(x)
                     for name in cell.state_names]
    words = layers.Embedding(len(VOCAB), 32, name="word_embedding")(previous)
    hidden = rx.RNN(cell, return_sequences=True, name="decoder")(words,
                                                                 initial_state=initial_state)
    next_word = layers.Dense(len(VOCAB), activation="softmax", name="next_word")(hidden)
    return keras.Model([image, previous], next_word, name=f"captioner_{kind}")


def greedy_captions(model, images) -> list[list[str]]:
    """Feeds the model's own most likely word back in, one step at a time.

    The decoder is causal, so the words after step t (still <pad>) do not change the
    prediction at t: rerunning the whole model on the growing caption is enough.
    """
    previous = np.zeros((len(images), STEPS), np.int32)
    previous[:, 0] = WORD_ID["<start>"]
    predicted = np.zeros_like(previous)
    for t in range(STEPS):
        predicted[:, t] = np.asarray(model.predict_on_batch([images, previous]))[:, t].argmax(-1)
        if t + 1 < STEPS:
            previous[:, t + 1] = predicted[:, t]
    captions = []
    for row in predicted:
        words = [VOCAB[i] for i in row]
        captions.append(words[:words.index("<end>")] if "<end>" in words else words)
    return captions


def corpus_bleu(hypotheses, references, max_n: int = 4) -> float:
    """Corpus BLEU (Papineni et al., 2002) with one reference per sentence.

    n-gram precisions for n > 1 get add-one smoothing (Lin & Och, 2004), so that a test set of
    three-word captions, which have no 4-grams, does not score 0.
    """
    matches, totals = np.zeros(max_n), np.zeros(max_n)
    for hyp, ref in zip(hypotheses, references):
        for n in range(1, max_n + 1):
            hyp_grams = Counter(tuple(hyp[i:i + n]) for i in range(len(hyp) - n + 1))
            ref_grams = Counter(tuple(ref[i:i + n]) for i in range(len(ref) - n + 1))
            matches[n - 1] += sum((hyp_grams & ref_grams).values())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    if matches[0] == 0:
        return 0.0
    smooth = np.r_[0.0, np.ones(max_n - 1)]
    log_precision = np.mean(np.log((matches + smooth) / (totals + smooth)))
    hyp_len, ref_len = sum(map(len, hypotheses)), sum(map(len, references))
    brevity = min(1.0, math.exp(1.0 - ref_len / max(hyp_len, 1)))
    return float(brevity * math.exp(log_precision))


def plot(images, predicted, truth, title: str, path: str, rows: int = 3, cols: int = 4):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.5 * rows))
    for ax, image, pred, true in zip(axes.flat, images, predicted, truth):
        ax.imshow(image, interpolation="nearest")
        ok = pred == true
        ax.set_title(f"{' '.join(pred)}\ntrue: {' '.join(true)}", fontsize=8,
                     color="darkgreen" if ok else "firebrick")
        ax.axis("off")
    for ax in axes.flat[len(images):]:
        ax.axis("off")
    fig.suptitle(title)
    common.save_figure(fig, path)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.add_common_arguments(parser)
    parser.add_argument("--units", type=int, default=64)
    parser.add_argument("--train", type=int, default=6000, help="training images")
    parser.add_argument("--test", type=int, default=500, help="held-out images")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = common.finish_arguments(parser.parse_args(argv), "captioning")
    if args.smoke:
        args.units, args.train, args.test, args.epochs = 16, 256, 32, 1

    import keras

    rng = np.random.default_rng(args.seed)
    train = dataset(args.train, rng)
    test_images, test_previous, test_targets, test_captions = dataset(args.test, rng)
    keras.utils.set_random_seed(args.seed)
    model = build_model(args.cell, args.units)
    model.compile(optimizer=keras.optimizers.Adam(args.lr, clipnorm=1.0),
                  loss="sparse_categorical_crossentropy", jit_compile=False)  # XLA: slower here
    probe_x, probe_y = [test_images[:8], test_previous[:8]], test_targets[:8]
    tokens = [[VOCAB[i] for i in row] for row in test_previous[:8]]
    callbacks = common.monitor_callbacks(args, args.cell, probe_x, probe_y, tokens=tokens)

    start = time.perf_counter()
    model.fit(list(train[:2]), train[2], batch_size=args.batch, epochs=args.epochs,
              validation_data=([test_images, test_previous], test_targets), verbose=0,
              callbacks=callbacks)
    seconds = time.perf_counter() - start
    predicted = greedy_captions(model, test_images)
    exact = float(np.mean([p == t for p, t in zip(predicted, test_captions)]))
    bleu = corpus_bleu(predicted, test_captions)

    print(f"Image captioning (one → many): {args.cell} decoder, {args.units} units, "
          f"{args.train} training images, {args.epochs} epochs, {seconds:.1f} s")
    print(f"exact match {100 * exact:.1f}% and BLEU-4 {bleu:.3f} on {args.test} held-out images")
    wrong = [k for k, (p, t) in enumerate(zip(predicted, test_captions)) if p != t][:4]
    shown = wrong + [k for k in range(args.test) if k not in wrong][:12 - len(wrong)]
    for k in shown[:3]:
        mark = "✓" if predicted[k] == test_captions[k] else "✗"
        print(f"  {mark} {' '.join(predicted[k]):<48} true: {' '.join(test_captions[k])}")
    plot(test_images[shown], [predicted[k] for k in shown], [test_captions[k] for k in shown],
         f"Greedy captions of held-out images ({args.cell} decoder; mistakes first, in red): "
         f"exact match {100 * exact:.1f}%, BLEU-4 {bleu:.3f}", args.out)
    if args.monitor:
        print(f"run recorded in {args.monitor}; watch it with: rnnx-viz {args.monitor}")
    return dict(exact=exact, bleu=bleu, seconds=seconds)


if __name__ == "__main__":
    main()
