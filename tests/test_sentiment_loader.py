"""The sentiment example's loader reads a text directory in the aclImdb layout."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import sentiment  # noqa: E402

REVIEWS = {
    "pos": ["A lovely film.<br /><br />Really GOOD acting!", "great fun"],
    "neg": ["Not good at all.", "the plot was awful", "boring, boring, boring"],
}


def write_reviews(folder: Path, reviews=REVIEWS) -> None:
    for label, texts in reviews.items():
        (folder / label).mkdir(parents=True)
        for k, text in enumerate(texts):
            (folder / label / f"{k}_7.txt").write_text(text, encoding="utf-8")


def test_train_and_test_folders(tmp_path):
    write_reviews(tmp_path / "train")
    write_reviews(tmp_path / "test", {"pos": ["so good"], "neg": ["so bad"]})
    (tmp_path / "train" / "unsup").mkdir()  # as in aclImdb; not a class
    (tmp_path / "train" / "unsup" / "0_0.txt").write_text("unlabelled")

    (train_texts, train_labels), (test_texts, test_labels) = sentiment.load_directory(tmp_path)

    assert train_texts == REVIEWS["neg"] + REVIEWS["pos"]
    np.testing.assert_array_equal(train_labels, [0, 0, 0, 1, 1])
    assert test_texts == ["so bad", "so good"]
    np.testing.assert_array_equal(test_labels, [0, 1])

    vectorizer = sentiment.text_vectorizer(train_texts, max_len=6, vocab_size=100)
    vocabulary = vectorizer.get_vocabulary()
    assert vocabulary[:3] == ["", "[UNK]", "boring"]  # padding, unknown, then by frequency
    assert {"lovely", "good", "not", "awful", "acting"} <= set(vocabulary)
    assert not {"br", "unlabelled"} & set(vocabulary)  # <br /> tags and unsup/ are dropped
    ids = sentiment.encode(vectorizer, ["not good at all zebra"])
    assert sentiment.tokens_of(ids, vocabulary) == [["not", "good", "at", "all", "[UNK]", ""]]


def test_pos_neg_folders_are_split(tmp_path):
    reviews = {"pos": [f"good review {k}" for k in range(10)],
               "neg": [f"bad review {k}" for k in range(10)]}
    write_reviews(tmp_path, reviews)

    (train_texts, train_labels), (test_texts, test_labels) = sentiment.load_directory(
        tmp_path, test_fraction=0.25, seed=3)

    assert len(train_texts) == 15 and len(test_texts) == 5
    assert sorted(train_texts + test_texts) == sorted(reviews["pos"] + reviews["neg"])
    for texts, labels in ((train_texts, train_labels), (test_texts, test_labels)):
        assert [int(t.startswith("good")) for t in texts] == list(labels)


def test_folder_without_classes_names_the_path(tmp_path):
    (tmp_path / "reviews").mkdir()
    (tmp_path / "reviews" / "a.txt").write_text("good")
    with pytest.raises(ValueError, match="aclImdb layout") as error:
        sentiment.load_directory(tmp_path / "reviews")
    assert str(tmp_path / "reviews") in str(error.value)
