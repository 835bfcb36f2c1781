"""Synthetic runs in the RNNMonitor's format, written without TensorFlow.

For the viewer's tests, its benchmark and its screenshots: a vanilla RNN whose ‖∂L/∂h_t‖ decays
geometrically back in time, and LSTMs whose gradient flows back almost unchanged, with
tanh-bounded states, sigmoid gates, σ_max of the recurrent kernel and weight-gradient norms per
gate block, batch and epoch scalars, and the `dropped_frames` event. Deterministic per seed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from keras_rnnx.runlog import RunWriter

__all__ = ["CELLS", "layer_meta", "run_meta", "write_probe_step", "write_synthetic_run"]

# gates (block names) and states of each cell kind, as the monitor describes them
CELLS = {
    "vanilla": {"states": ["h"], "gates": [], "blocks": ["z"]},
    "cec": {"states": ["h", "c"], "gates": ["i", "z", "o"], "blocks": ["i", "z", "o"]},
    "original": {"states": ["h", "c"], "gates": ["i", "z", "o"], "blocks": ["i", "z", "o"]},
    "forget": {"states": ["h", "c"], "gates": ["i", "f", "z", "o"],
               "blocks": ["i", "f", "z", "o"]},
    "keras_lstm": {"states": ["h", "c"], "gates": ["i", "f", "z", "o"],
                   "blocks": ["i", "f", "z", "o"]},
}
_TANH, _SIGMOID = [-1.0, 1.0], [0.0, 1.0]


def layer_meta(cell: str, units: int, timesteps: int) -> dict[str, Any]:
    """The meta entry of one layer, as RNNMonitor writes it."""
    spec = CELLS[cell]
    bounds: dict[str, Any] = {"h": _TANH}
    for gate in spec["gates"]:
        bounds[gate] = _TANH if gate == "z" else _SIGMOID
    if "c" in spec["states"]:
        bounds["c"] = None
    return {
        "layer": cell,
        "cell": cell,
        "units": units,
        "timesteps": timesteps,
        "states": list(spec["states"]),
        "gates": list(spec["gates"]),
        "blocks": list(spec["blocks"]),
        "activation_bounds": bounds,
        "sigma_threshold": [1.0 if b == "z" else 4.0 for b in spec["blocks"]],
    }


def run_meta(layers: dict[str, dict[str, Any]], batch: int, timesteps: int, features: int,
             tokens: Sequence[str] | None = None, every: int = 10) -> dict[str, Any]:
    summary = "\n".join(
        ['Model: "synthetic"', f"{'Layer (type)':<28}{'Output Shape':<22}Param #"]
        + [f"{name:<28}{str((None, info['units'])):<22}{4 * info['units'] ** 2}"
           for name, info in layers.items()]
    )
    return {
        "model": {"name": "synthetic", "summary": summary},
        "layers": layers,
        "probe": {"batch_shape": [batch, timesteps, features],
                  "tokens": list(tokens) if tokens is not None else None},
        "versions": {"keras": "3.x", "tensorflow": "2.x", "keras_rnnx": "0.1.0"},
        "monitor": {"every": every},
    }


def write_probe_step(writer: RunWriter, layer: str, info: dict[str, Any], step: int,
                     batch: int, rng: np.random.Generator, progress: float = 0.5,
                     kinds: Sequence[str] | None = None, nan: bool = False) -> None:
    """Writes the frames of one probe of `layer` at `step` (`progress` in [0, 1] of training).

    `kinds` limits the frames written; `nan` makes `h` all NaN (a diverged run).
    """
    units, steps = info["units"], info["timesteps"]
    vanilla = info["cell"] == "vanilla"
    t = np.arange(steps, dtype=np.float32)
    drive = np.sin(t[None, :, None] * (0.05 + 0.2 * rng.random((batch, 1, units))) +
                   rng.uniform(0, 6.3, (batch, 1, units)))
    frames: dict[str, np.ndarray] = {}
    frames["h"] = np.tanh(1.5 * drive + 0.3 * rng.standard_normal((batch, steps, units)))
    if nan:
        frames["h"][:] = np.nan
    if "c" in info["states"]:
        frames["c"] = np.cumsum(0.1 * drive, axis=1) + 0.5 * drive
    for gate in info["gates"]:
        pre = drive * (1.0 if gate != "f" else 0.5) + (2.0 if gate == "f" else 0.0)
        frames[gate] = np.tanh(pre) if gate == "z" else 1.0 / (1.0 + np.exp(-2 * pre))
    # ∂L/∂h_t: the loss is read after the last step, so the gradient reaches back from T - 1.
    decay = 0.8 + 0.15 * progress if vanilla else 0.995
    lag = (steps - 1 - t)[None, :, None]
    scale = decay ** lag
    frames["grad_h"] = scale * rng.standard_normal((batch, steps, units)) / np.sqrt(units)
    grad_norm = np.sqrt(np.sum(frames["grad_h"] ** 2, axis=(0, 2)))
    jacobian = (decay + 0.03 * rng.standard_normal((batch, steps))).clip(0, None)
    blocks = info["blocks"]
    sigma = np.array([(0.9 + 0.4 * progress) * (1.0 if b == "z" else 1.6) for b in blocks])
    sigma = sigma * (1 + 0.02 * rng.standard_normal(len(blocks)))
    base = np.exp(-3 * progress) * (1 if not vanilla else 0.3)
    grads = {
        "kernel_grad_norm": base * np.linspace(1.0, 2.0, len(blocks)),
        "recurrent_kernel_grad_norm": base * np.linspace(0.5, 1.5, len(blocks)),
        "bias_grad_norm": base * np.linspace(0.1, 0.3, len(blocks)),
    }
    for name, array in frames.items():
        if kinds is None or name in kinds:
            writer.write_frame(name, layer, step, array.astype(np.float32),
                               axes=("batch", "time", "unit"))
    small = {"grad_norm": grad_norm.astype(np.float32),
             "jacobian_norm": jacobian.astype(np.float32), "sigma_max": sigma, **grads}
    for name, array in small.items():
        if kinds is None or name in kinds:
            writer.write_frame(name, layer, step, np.asarray(array))


def write_synthetic_run(
    run_dir: str | os.PathLike,
    *,
    cells: dict[str, str] | None = None,
    units: int = 32,
    timesteps: int = 40,
    batch: int = 4,
    probes: int = 20,
    every: int = 10,
    steps_per_epoch: int = 50,
    tokens: Sequence[str] | None = None,
    seed: int = 0,
    nan_from: int | None = None,
    dropped: int = 0,
    close: bool = True,
) -> Path:
    """Writes a whole run: `cells` maps layer names to cell kinds (default one `forget` layer).

    `nan_from` makes the loss and `h` of the first layer NaN from that probe on; `dropped`
    logs a `dropped_frames` event with that count.
    """
    cells = cells or {"lstm": "forget"}
    rng = np.random.default_rng(seed)
    layers = {name: layer_meta(cell, units, timesteps) for name, cell in cells.items()}
    writer = RunWriter(run_dir, meta=run_meta(layers, batch, timesteps, 2, tokens, every))
    vanilla = all(c == "vanilla" for c in cells.values())
    for probe in range(probes):
        step = probe * every
        progress = probe / max(probes - 1, 1)
        for batch_step in range(max(step - every, 0) + 1, step + 1):
            loss = 0.17 * np.exp(-batch_step / (every * probes) * (0.3 if vanilla else 3)) \
                + 0.003 * rng.random()
            if nan_from is not None and probe >= nan_from:
                loss = float("nan")
            writer.write_scalars(batch_step, {"loss": loss}, phase="batch")
        diverged = nan_from is not None and probe >= nan_from
        for index, (name, info) in enumerate(layers.items()):
            write_probe_step(writer, name, info, step, batch, rng, progress,
                             nan=diverged and index == 0)
        if step and step % steps_per_epoch == 0:
            epoch = step // steps_per_epoch - 1
            loss = 0.17 * np.exp(-step / (every * probes) * (0.3 if vanilla else 3))
            writer.write_scalars(epoch, {"loss": loss, "val_loss": loss * 1.1,
                                         "mae": np.sqrt(loss), "val_mae": np.sqrt(loss) * 1.05},
                                 phase="epoch")
        writer.flush()
    if dropped:
        writer.write_event("dropped_frames", {"count": dropped}, step=(probes - 1) * every)
    if close:
        writer.close()
    else:
        writer.flush()
    return Path(run_dir)
