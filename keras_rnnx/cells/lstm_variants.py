"""Peephole LSTM and the eight variants of Greff et al.'s "LSTM: a search space odyssey"."""

from __future__ import annotations

import keras
from keras import ops

from keras_rnnx.cells.base import GatedCell

# Each variant is one change to the vanilla cell "V" (Greff et al. 2016, section 2-3).
VARIANTS = ("V", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR")

# Kernel column blocks: the present gates among [i, f, z, o], in that order. CIFG has no
# forget-gate weights (f = 1 - i).
_BLOCKS = {"NIG": ("f", "z", "o"), "NFG": ("i", "z", "o"), "CIFG": ("i", "z", "o"),
           "NOG": ("i", "f", "z")}
_PEEPHOLE_NAMES = {"i": "input_gate_peephole_weights", "f": "forget_gate_peephole_weights",
                   "o": "output_gate_peephole_weights"}


def check_variant(variant) -> str:
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ValueError(
            f"Invalid value for argument `variant`: expected one of "
            f"{', '.join(repr(v) for v in VARIANTS)}, got {variant!r}."
        )
    return variant


@keras.saving.register_keras_serializable(package="keras_rnnx")
class LSTMVariantCell(GatedCell):
    r"""The peephole LSTM ("V") and Greff et al.'s eight variants of it, as one cell.

    Gers & Schmidhuber, "Recurrent nets that time and count", 2000 (peepholes); Greff,
    Srivastava, Koutník, Steunebrink & Schmidhuber, "LSTM: a search space odyssey", 2016
    (the variants). The vanilla LSTM "V", with σ = `recurrent_activation`, tanh =
    `activation`:

    .. math::

        a &= x_t W + h_{t-1} R + b \quad\text{(blocks of the present gates among } i, f, z, o) \\
        i &= \sigma(a_i + p_i \odot c_{t-1}) \qquad f = \sigma(a_f + p_f \odot c_{t-1})
             \qquad z = \tanh(a_z) \\
        c_t &= f \odot c_{t-1} + i \odot z \\
        o &= \sigma(a_o + p_o \odot c_t) \qquad h_t = o \odot \tanh(c_t)

    The variants, each one change to V:

    ====== ================================================================================
    NIG    no input gate: i = 1
    NFG    no forget gate: f = 1
    NOG    no output gate: o = 1
    NIAF   no input activation: z = a_z
    NOAF   no output activation: h_t = o ⊙ c_t
    NP     no peepholes (exactly `ForgetGateLSTMCell` and Keras's `LSTMCell`)
    CIFG   coupled input and forget gate: f = 1 − i, no forget-gate weights
    FGR    full gate recurrence: a_i, a_f, a_o also receive g_{t-1} G, with
           g_{t-1} = [i | f | o] of the previous step and G (3·units, 3·units)
    ====== ================================================================================

    Weights, in `get_weights()` order:

    - `kernel` (input_dim, n·units), `recurrent_kernel` (units, n·units), `bias` (n·units,):
      blocks in the order of the present gates among [i, f, z, o]: NIG [f, z, o]; NFG and
      CIFG [i, z, o]; NOG [i, f, z]; the others [i, f, z, o] (NP is weight for weight
      `ForgetGateLSTMCell`);
    - the peephole vectors (units,) of the gates that are present and have their own
      weights, in the order i, f, o: `input_gate_peephole_weights`,
      `forget_gate_peephole_weights`, `output_gate_peephole_weights` (the names of tf.keras 2
      and TensorFlow Addons). NIG has p_f, p_o; NFG p_i, p_o; NOG p_i, p_f; CIFG p_i, p_o
      (its f = 1 − i depends on c_{t-1} through p_i only); NP none; the others all three;
    - FGR only: `gate_recurrent_kernel` (3·units, 3·units), rows = previous [i | f | o],
      columns = pre-activations of [i | f | o].

    States `[h, c]`, each (batch, units); FGR `[h, c, g]` with g (batch, 3·units) the gates
    [i | f | o] of the previous step, zeros initially.

    The probe (`keras_rnnx.diagnostics`) reports as gates the cell's blocks, each after its
    activation (`block_names`: i, f, o after σ, z after tanh, or a_z itself for NIAF); a gate
    a variant removes (NIG's i, NFG's f, NOG's o) is the constant 1 and is not reported.
    CIFG reports its derived forget gate f = 1 − i as well (`gate_names` = i, f, z, o), so
    that the viewer shows what the carousel keeps next to the other cells' f.

    Defaults. `unit_forget_bias=True` starts the f block of the bias at 1, where the variant
    has one (as `ForgetGateLSTMCell`). The peepholes and G start at zero
    (`peephole_initializer="zeros"`, `gate_recurrent_initializer="zeros"`): every variant
    then starts as its cell without them, and what the peepholes or G do is what training
    puts there. tf.keras 2's `PeepholeLSTMCell` drew peepholes with the kernel initializer;
    pass `peephole_initializer="glorot_uniform"` for that.

    Speed. `keras_rnnx.RNN` trains these cells on Keras's generic loop, as
    `keras.layers.RNN` does; the compiled kernels cover the four lecture cells only.
    Measured with `benchmarks/variants.py` (one training step, T = 100, 64 units, batch 64,
    median of 15 interleaved rounds, one run on a 2-core AMD EPYC with AVX-512, load average
    about 1): `keras.layers.RNN(V)` 31.5 ms, the hoisted-projection loop that the lecture
    cells take without kernels 34.7 ms for V (1.10x; 1.23x in a run under load), and the
    compiled kernels' `rx.RNN(ForgetGateLSTMCell)` 18.8 ms (0.60x). So the variants keep the
    generic loop; kernels for them would make V about 1.7x faster, but peepholes, CIFG and
    FGR change the backward pass of every gate: nine variants of kernels to keep equal to
    this class.

    Args:
        units: positive integer, size of h and c.
        variant: one of "V", "NIG", "NFG", "NOG", "NIAF", "NOAF", "NP", "CIFG", "FGR".
        activation: for z and the output (default `"tanh"`).
        recurrent_activation: for the gates (default `"sigmoid"`).
        unit_forget_bias: start the forget-gate bias at 1 (default True).
        peephole_initializer, peephole_regularizer, peephole_constraint: for p_i, p_f, p_o.
        gate_recurrent_initializer, gate_recurrent_regularizer, gate_recurrent_constraint:
            for G (FGR only).
        Other arguments as in `VanillaRNNCell`.
    """

    def __init__(
        self,
        units: int,
        variant: str = "V",
        unit_forget_bias: bool = True,
        peephole_initializer="zeros",
        peephole_regularizer=None,
        peephole_constraint=None,
        gate_recurrent_initializer="zeros",
        gate_recurrent_regularizer=None,
        gate_recurrent_constraint=None,
        **kwargs,
    ):
        self.variant = check_variant(variant)
        super().__init__(units, **kwargs)
        self.block_names = _BLOCKS.get(self.variant, ("i", "f", "z", "o"))
        self.gate_names = ("i", "f", "z", "o") if self.variant == "CIFG" else self.block_names
        self.peephole_gates = () if self.variant == "NP" else tuple(
            g for g in ("i", "f", "o") if g in self.block_names)
        self.unit_forget_bias = bool(unit_forget_bias)
        self.peephole_initializer = keras.initializers.get(peephole_initializer)
        self.peephole_regularizer = keras.regularizers.get(peephole_regularizer)
        self.peephole_constraint = keras.constraints.get(peephole_constraint)
        self.gate_recurrent_initializer = keras.initializers.get(gate_recurrent_initializer)
        self.gate_recurrent_regularizer = keras.regularizers.get(gate_recurrent_regularizer)
        self.gate_recurrent_constraint = keras.constraints.get(gate_recurrent_constraint)
        if self.variant == "FGR":
            self.state_names = ("h", "c", "g")
            self.state_size = [self.units, self.units, 3 * self.units]
        else:
            self.state_names = ("h", "c")

    def bias_block_values(self):
        return {"f": 1.0} if self.unit_forget_bias and "f" in self.block_names else {}

    def build(self, input_shape):
        super().build(input_shape)
        for gate in self.peephole_gates:
            weight = self.add_weight(
                shape=(self.units,),
                name=_PEEPHOLE_NAMES[gate],
                initializer=self.peephole_initializer,
                regularizer=self.peephole_regularizer,
                constraint=self.peephole_constraint,
            )
            setattr(self, _PEEPHOLE_NAMES[gate], weight)
        self.gate_recurrent_kernel = None
        if self.variant == "FGR":
            self.gate_recurrent_kernel = self.add_weight(
                shape=(3 * self.units, 3 * self.units),
                name="gate_recurrent_kernel",
                initializer=self.gate_recurrent_initializer,
                regularizer=self.gate_recurrent_regularizer,
                constraint=self.gate_recurrent_constraint,
            )
        self.built = True

    def equations(self, a, states):
        c_prev = states[1]
        a = dict(zip(self.block_names, self.split_blocks(a)))
        sigmoid, tanh = self.recurrent_activation, self.activation
        if self.variant == "FGR":
            gate_input = ops.matmul(states[2], ops.cast(self.gate_recurrent_kernel, c_prev.dtype))
            for name, part in zip(("i", "f", "o"), ops.split(gate_input, 3, axis=-1)):
                a[name] = a[name] + part

        def peep(gate, c):
            if gate not in self.peephole_gates:
                return a[gate]
            return a[gate] + ops.cast(getattr(self, _PEEPHOLE_NAMES[gate]), c.dtype) * c

        i = sigmoid(peep("i", c_prev)) if "i" in a else None
        f = sigmoid(peep("f", c_prev)) if "f" in a else None
        if self.variant == "CIFG":
            f = 1.0 - i
        z = a["z"] if self.variant == "NIAF" else tanh(a["z"])
        c = (c_prev if f is None else f * c_prev) + (z if i is None else i * z)
        o = sigmoid(peep("o", c)) if "o" in a else None
        out = c if self.variant == "NOAF" else tanh(c)
        h = out if o is None else o * out
        gates = {"i": i, "f": f, "z": z, "o": o}
        gates = {name: gates[name] for name in self.gate_names}
        if self.variant == "FGR":
            return [h, c, ops.concatenate([i, f, o], axis=-1)], gates
        return [h, c], gates

    def get_config(self):
        config = {
            "variant": self.variant,
            "unit_forget_bias": self.unit_forget_bias,
            "peephole_initializer": keras.initializers.serialize(self.peephole_initializer),
            "peephole_regularizer": keras.regularizers.serialize(self.peephole_regularizer),
            "peephole_constraint": keras.constraints.serialize(self.peephole_constraint),
            "gate_recurrent_initializer":
                keras.initializers.serialize(self.gate_recurrent_initializer),
            "gate_recurrent_regularizer":
                keras.regularizers.serialize(self.gate_recurrent_regularizer),
            "gate_recurrent_constraint":
                keras.constraints.serialize(self.gate_recurrent_constraint),
        }
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="keras_rnnx")
class PeepholeLSTMCell(LSTMVariantCell):
    r"""The LSTM cell with peephole connections: `LSTMVariantCell(units, variant="V", ...)`.

    Gers & Schmidhuber, "Recurrent nets that time and count", 2000: the gates also see the
    cell state, i = σ(a_i + p_i ⊙ c_{t-1}), f = σ(a_f + p_f ⊙ c_{t-1}),
    o = σ(a_o + p_o ⊙ c_t). Same weights, states and arguments as `LSTMVariantCell` with
    variant "V" (see there), which this class is: every argument after `units` is a keyword
    argument of `LSTMVariantCell`.
    """

    def __init__(self, units: int, **kwargs):
        variant = kwargs.pop("variant", "V")
        if variant != "V":
            raise ValueError(
                f"Invalid value for argument `variant` of PeepholeLSTMCell: it is variant 'V'; "
                f"use LSTMVariantCell(units, variant={variant!r}) for the others."
            )
        super().__init__(units, variant="V", **kwargs)
