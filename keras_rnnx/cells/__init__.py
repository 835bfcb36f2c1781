"""The four recurrent cells of the lecture, as Keras 3 RNN cells, and the LSTM variants of its
reading list (peepholes; Greff et al. 2016).

`CELL_KINDS` holds the four lecture cells only; the variants are `LSTMVariantCell(units,
variant=...)` for each name in `VARIANTS`.
"""

from keras_rnnx.cells.base import GatedCell, LectureCell
from keras_rnnx.cells.cec import CECCell
from keras_rnnx.cells.forget_gate_lstm import ForgetGateLSTMCell
from keras_rnnx.cells.lstm_variants import VARIANTS, LSTMVariantCell, PeepholeLSTMCell
from keras_rnnx.cells.original_lstm import OriginalLSTMCell
from keras_rnnx.cells.vanilla import VanillaRNNCell

CELL_KINDS = {
    "vanilla": VanillaRNNCell,
    "cec": CECCell,
    "original": OriginalLSTMCell,
    "forget": ForgetGateLSTMCell,
}

__all__ = [
    "CELL_KINDS",
    "CECCell",
    "ForgetGateLSTMCell",
    "GatedCell",
    "LSTMVariantCell",
    "LectureCell",
    "OriginalLSTMCell",
    "PeepholeLSTMCell",
    "VARIANTS",
    "VanillaRNNCell",
]
