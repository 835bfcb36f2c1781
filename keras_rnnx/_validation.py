"""Argument checks shared by the cells and the layer, with messages that name the argument."""

from __future__ import annotations

import math
import numbers


def check_units(units) -> int:
    if isinstance(units, bool) or not isinstance(units, numbers.Integral) or units <= 0:
        raise ValueError(
            f"Invalid value for argument `units`: expected a positive integer, "
            f"got {units!r} (type {type(units).__name__})."
        )
    return int(units)


def check_rate(name: str, rate) -> float:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise ValueError(
            f"Invalid value for argument `{name}`: expected a float in [0, 1), "
            f"got {rate!r} (type {type(rate).__name__})."
        )
    rate = float(rate)
    if math.isnan(rate) or not 0.0 <= rate < 1.0:
        raise ValueError(
            f"Invalid value for argument `{name}`: expected a float in [0, 1), got {rate!r}."
        )
    return rate


def check_seed(seed):
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(
            f"Invalid value for argument `seed`: expected an integer or None, got {seed!r}."
        )
    return int(seed)


def check_finite_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(
            f"Invalid value for argument `{name}`: expected a finite number, got {value!r}."
        )
    return float(value)


def check_step_input_shape(owner: str, input_shape) -> int:
    """`input_shape` is the per-step shape (batch, features) a cell is built with."""
    shape = tuple(input_shape)
    if len(shape) != 2:
        raise ValueError(
            f"{owner} expects sequences of shape (batch, timesteps, features), i.e. steps of "
            f"shape (batch, features); got steps of shape {shape}, which means the sequence "
            f"has rank {len(shape) + 1} instead of 3."
        )
    if shape[-1] is None:
        raise ValueError(
            f"{owner} needs a known number of input features (the last axis of the input); "
            f"got steps of shape {shape}."
        )
    return int(shape[-1])


def check_sequences_shape(owner: str, shape) -> None:
    shape = tuple(shape)
    if len(shape) != 3:
        raise ValueError(
            f"{owner} expects `sequences` of shape (batch, timesteps, features); "
            f"got shape {shape} (rank {len(shape)})."
        )
    if shape[1] == 0:
        raise ValueError(
            f"{owner} got a zero-length sequence: `sequences` has shape {shape} with 0 "
            f"timesteps. A recurrent layer needs at least one step."
        )
    if shape[2] == 0:
        raise ValueError(
            f"{owner} got sequences with 0 features: `sequences` has shape {shape}."
        )


def check_float_dtype(owner: str, dtype: str) -> None:
    if "float" not in dtype:
        raise TypeError(
            f"{owner} expects floating-point inputs, got dtype {dtype}. Cast the sequences "
            f"to float (e.g. `ops.cast(x, 'float32')`) or map token ids through "
            f"`keras.layers.Embedding` first."
        )
