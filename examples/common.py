"""What every example shares: its command-line options and the optional run recording."""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CELL_CHOICES = ("vanilla", "cec", "original", "forget")


def add_common_arguments(parser: argparse.ArgumentParser, *, cell_default: str | None = "forget",
                         allow_all: bool = False) -> None:
    """Adds --cell (unless `cell_default` is None), --monitor, --viz, --smoke, --seed, --out."""
    if cell_default is not None:
        choices = CELL_CHOICES + (("all",) if allow_all else ())
        parser.add_argument("--cell", choices=choices, default=cell_default,
                            help="which lecture cell to use (default: %(default)s)")
    parser.add_argument("--monitor", metavar="RUN_DIR",
                        help="record training into RUN_DIR (one run per model) with RNNMonitor")
    parser.add_argument("--viz", action="store_true",
                        help="open the live viewer on the recorded run (implies --monitor)")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny run (well under a minute), used by the tests")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="where to write the PNG plot")


def finish_arguments(args: argparse.Namespace, example: str) -> argparse.Namespace:
    """Fills in defaults that depend on other options."""
    if args.viz and not args.monitor:
        args.monitor = os.path.join("runs", f"{example}-{time.strftime('%Y%m%d-%H%M%S')}")
    if not args.out:
        args.out = f"{example}.png"
    return args


def cell(kind: str, units: int, **kwargs):
    import keras_rnnx as rx

    return rx.CELL_KINDS[kind](units, **kwargs)


def monitor_callbacks(args: argparse.Namespace, run_name: str, probe_x, probe_y=None,
                      tokens=None, open_viewer: bool | None = None, **monitor_kwargs) -> list:
    """`[RNNMonitor(...)]` recording into `<--monitor>/<run_name>`, or `[]` without --monitor.

    The viewer opens (with --viz) on the whole --monitor directory, so that all the runs of
    one example show side by side; pass `open_viewer=False` for all but the first run.
    `monitor_kwargs` go to `RNNMonitor` (e.g. `corpus=`, `corpus_every=`).
    """
    if not args.monitor:
        return []
    from keras_rnnx.monitor import RNNMonitor

    monitor = RNNMonitor(os.path.join(args.monitor, run_name), probe_x, probe_y, tokens=tokens,
                         **monitor_kwargs)
    if args.viz and open_viewer is not False:
        from keras_rnnx.viewer_process import open_viewer as launch

        os.makedirs(args.monitor, exist_ok=True)
        launch(args.monitor)
    return [monitor]


def save_figure(fig, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")
