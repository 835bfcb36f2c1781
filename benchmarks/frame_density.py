"""Frame density of recorded runs: how many probe frames each run holds, and the largest gap.

For every run under a directory (e.g. one written by `examples/long_time_lag.py --monitor
DIR`), and each of its recorded layers: the number of frames with ∂L/∂h_t (`grad_h`) and with
Jacobian norms (`jacobian_norm`), and the largest gap between two consecutive frames (from
step 0 to the first, between frames, from the last to the run's last step) as a percentage of
the run's steps; then the monitor's own `train_end` summary and, where it has them, the
monitor's seconds in % of training time: all, frames, one-time setup, writer thread CPU and
the other hooks (batch logging). Reads the logs with
`keras_rnnx.runlog.RunReader` (NumPy only; no TensorFlow).

    python benchmarks/frame_density.py runs/lag
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

KINDS = ("grad_h", "jacobian_norm")


def density(steps: np.ndarray, total: int) -> tuple[int, float]:
    """(frame count, largest gap in % of `total` steps), gaps counted from 0 and to `total`."""
    points = np.concatenate([[0], np.sort(steps), [total]])
    return len(steps), float(np.max(np.diff(points))) / max(total, 1) * 100.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", help="a run directory or a directory of runs")
    args = parser.parse_args(argv)
    from keras_rnnx.runlog import LOG_FILE_NAME, RunReader

    root = Path(args.runs)
    if not root.is_dir():
        parser.error(f"{root} is not a directory")
    runs = sorted(p.parent for p in root.rglob(LOG_FILE_NAME))
    if not runs:
        parser.error(f"no run log ({LOG_FILE_NAME}) under {root}")
    results = {}
    for run in runs:
        reader = RunReader(run)
        ends = reader.events("train_end")
        total = int(ends[-1].step) if ends else int(reader.steps().max(initial=0))
        for layer in reader.layers():
            row = {}
            for kind in KINDS:
                have = kind in reader.kinds(layer)
                steps = np.array([s for s, _ in reader.frames(kind, layer)] if have else [])
                row[kind] = density(steps, total)
            results[(run.name, layer)] = row
            parts = [f"{kind}: {n} frames, largest gap {gap:.1f} %"
                     for kind, (n, gap) in row.items()]
            print(f"{run.relative_to(root) if run != root else run.name} [{layer}], "
                  f"{total} steps: " + "; ".join(parts))
        if ends:
            data = ends[-1].data
            print(f"    monitor: {data}")
            training = data.get("training_seconds")
            if training:
                # Where the monitor's seconds went, in % of training time (budget: 2 %).
                frames, setup = data["frame_seconds"], data["setup_seconds"]
                writer, total_s = data["writer_cpu_seconds"], data["monitor_seconds"]
                hooks = total_s - frames - setup - writer
                print("    monitor cost in % of training: " + ", ".join(
                    f"{name} {100 * value / training:.2f}" for name, value in (
                        ("all", total_s), ("frames", frames), ("setup", setup),
                        ("writer thread", writer), ("other hooks", hooks))))
    return results


if __name__ == "__main__":
    main()
