"""Every example runs with --smoke in a fresh process, prints a sane result and writes its plot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ROW = r"\s+[01]\.\d{3}"

# Each example: the patterns its printed headline must match (re.MULTILINE).
EXPECTED = {
    "long_time_lag": [
        r"^Adding problem, lag \d+; always predicting 1\.0 gives MSE 0\.167$",
        *(rf"^{kind}\s+\d+\.\d{{4}}\s+\d+\.\d\d\s+\d\.\d\de[-+]\d\d\s+\d+\s+\d+\.\d$"
          for kind in ("vanilla", "cec", "original", "forget")),
    ],
    "parity": [
        rf"^RNN \((vanilla|cec|original|forget), \d+ units\){ROW}{ROW}{ROW}\s+\d+\.\d$",
        rf"^MLP \(last 20 bits\){ROW}{ROW}{ROW}\s+\d+\.\d$",
    ],
    "gradient_clipping": [
        r"^σ_max\(W_h\) = \d+\.\d{3} (>|≤) 1/γ = 1 \(tanh\)",
        *(rf"^{re.escape(name)}\s+\S+\s+\S+\s+(yes|no)\s+\d+\s+\d+\.\d$"
          for name in ("none", "clipnorm=1", "global_clipnorm=1", "clipvalue=0.1")),
    ],
    "captioning": [
        r"exact match \d{1,3}\.\d% and BLEU-4 [01]\.\d{3} on \d+ held-out images",
    ],
    "translation": [
        r"exact match \d{1,3}\.\d%, per-character \d{1,3}\.\d% on \d+ held-out dates",
    ],
    "variants": [
        *(rf"^{v}\s+\d+\.\d{{4}}\s+\[\d+\.\d{{4}}, \d+\.\d{{4}}\]$"
          for v in ("V", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR")),
        r"^Adding problem, lag \d+ \(MSE",
        r"^Python source, next character \(bits per character",
        *(rf"^{re.escape(f)}\s+(holds|does not hold)\s+(holds|does not hold)\s+\S"
          for f in ("NFG hurts (worse than V)", "NOAF hurts (worse than V)",
                    "NFG and NOAF are the two worst", "CIFG about as good as V",
                    "NP about as good as V", "FGR no better than V")),
        *(rf"^{v}\s+solved( [01]\.\d\d)+\s+wrong steps per sequence \d+\.\d\d$"
          for v in ("V", "NP")),
    ],
    "char_lm": [
        r"^5-gram, interpolated Kneser-Ney\s+-\s+\d+\.\d{3}\s+-\s+-\s+-$",
        *(rf"^{kind}\s+{resets}\s+\d+\.\d{{3}}\s+\d+\.\d{{3}}\s+\d+\.\d{{3}}\s+\d+\.\d$"
          for kind, resets in (("vanilla", r"none \(stream\)"), ("cec", "every 200"),
                               ("original", "every 200"), ("forget", r"none \(stream\)"))),
        r"^LSTMs below the vanilla RNN \(\d\.\d{3}\): ",
        r"^forget-gate LSTM (above|below) the 5-gram by \d+\.\d{3} bits/char$",
        *(rf"^{feature}\s+[01]\.\d{{3}}\s+[01]\.\d{{3}}\s+[01]\.\d{{3}}\s+\d+$"
          for feature in ("in_string", "in_comment", "bracket_depth", "column", "indent")),
        r"^  T=0\.5: .+$",
        r"^  forget: f [01]\.\d\d / [01]\.\d\d, i [01]\.\d\d / [01]\.\d\d, o ",
    ],
    "sentiment": [
        r"test accuracy: (vanilla|cec|original|forget) [01]\.\d{3} vs bag-of-words "
        r"[01]\.\d{3} \(chance 0\.500\)",
        r"^\s+[01]\.\d\d\s+[01]\.\d\d\s+-\s+the chicken crossed the road because it was "
        r"uncooked$",
    ],
}


def run_example(name, tmp_path, *extra):
    out = tmp_path / f"{name}.png"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), "--smoke", "--out", str(out), *extra],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return result.stdout


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_smoke(name, tmp_path):
    stdout = run_example(name, tmp_path)
    for pattern in EXPECTED[name]:
        assert re.search(pattern, stdout, re.MULTILINE), f"{pattern!r} not in:\n{stdout}"
    # char_lm prints generated text, which may spell "nan"; its numbers are matched above.
    assert "nan" not in stdout.lower() or name in ("gradient_clipping", "char_lm")


def test_every_example_is_smoke_tested():
    scripts = {p.stem for p in EXAMPLES.glob("*.py")} - {"common"}
    assert scripts == set(EXPECTED)


def test_example_records_a_run_for_the_viewer(tmp_path):
    from keras_rnnx.runlog import RunReader

    stdout = run_example("long_time_lag", tmp_path, "--cell", "original", "--monitor",
                         str(tmp_path / "runs"))
    assert "runs recorded in" in stdout
    reader = RunReader(tmp_path / "runs" / "original")
    assert reader.finished and reader.meta["layers"]["rnn"]["cell"] == "original"
    assert len(reader.scalars("loss", phase="batch")[0]) == 40


def test_char_lm_records_the_corpus_probe(tmp_path):
    from keras_rnnx.runlog import RunReader

    stdout = run_example("char_lm", tmp_path, "--cell", "forget", "--monitor",
                         str(tmp_path / "runs"))
    assert "runs recorded in" in stdout
    reader = RunReader(tmp_path / "runs" / "forget")
    assert reader.finished and reader.problems == []
    corpus = reader.corpus()
    assert len(corpus.text) > 1000 and "def " in corpus.text
    assert reader.corpus_kinds("rnn") == ["h", "c", "i", "f", "z", "o"]
    (step, c), = reader.corpus_frames("c", "rnn")  # recorded once, at the end of training
    assert c.shape == (len(corpus.text), 16)
    assert step == reader.scalars("loss", phase="batch")[0][-1]
    assert reader.events("train_end")[-1].data["corpus_recordings"] == 1
