"""`rnnx-viz PATH` (or `python -m visualizer PATH`): watch an RNN learn.

    rnnx-viz runs/lstm                         # one run, followed live
    rnnx-viz runs/                             # a directory of runs
    rnnx-viz runs/lstm --compare runs/vanilla  # two runs side by side
    rnnx-viz runs/lstm --screenshot out.png --panel gradient_flow   # render headless, exit
    rnnx-viz runs/chars --screenshot text.png --panel text --unit 7  # the text by one unit
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from visualizer.model import DEFAULT_HISTORY

PANEL_NAMES = (
    "training_curves", "state_heatmap", "gradient_flow", "jacobian", "weight_grads", "overview",
    "text",
)


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None
    if width < 100 or height < 100:
        raise argparse.ArgumentTypeError(f"size {text!r} is too small (at least 100x100)")
    return width, height


def _unit(text: str) -> int:
    try:
        unit = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a unit number, got {text!r}") from None
    if unit < 0:
        raise argparse.ArgumentTypeError(f"expected a unit number of 0 or more, got {unit}")
    return unit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnx-viz",
        description="Watch a keras-rnnx run learn: states, gates, gradient flow through time. "
        "Follows live runs as they are written and replays finished ones.",
    )
    parser.add_argument("path", help="a run directory, its events.rnnx, or a directory of runs")
    parser.add_argument("--compare", nargs="+", default=[], metavar="PATH",
                        help="more runs to draw beside the first one")
    parser.add_argument("--screenshot", metavar="OUT.png",
                        help="render offscreen to this PNG file and exit")
    parser.add_argument("--panel", metavar="NAME",
                        help=f"with --screenshot, only this panel: {', '.join(PANEL_NAMES)}")
    parser.add_argument("--size", type=_size, default=(1600, 1000), metavar="WxH",
                        help="with --screenshot, the image size (default 1600x1000)")
    parser.add_argument("--layer", help="the layer to show first")
    parser.add_argument("--sample", type=int, default=0, help="the probe sample to show")
    parser.add_argument("--step", type=int, help="with --screenshot, the training step to show")
    parser.add_argument("--kind", help="the heatmap quantity: h, c, a gate name, grad_h (with "
                        "--panel text: the quantity colouring the text)")
    parser.add_argument("--unit", type=_unit, help="the unit colouring the text panel")
    parser.add_argument("--feature", help="the code feature whose units the text panel lists "
                        "(in_string, in_comment, bracket_depth, column, indent); without "
                        "--unit, the text is coloured by its best unit")
    parser.add_argument("--all-layers", action="store_true", help="a heatmap row per layer")
    parser.add_argument("--log-y", action="store_true", help="log-scale training curves")
    parser.add_argument("--history", type=int, default=DEFAULT_HISTORY,
                        help=f"frames kept per series at most (default {DEFAULT_HISTORY})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.panel is not None and args.screenshot is None:
        build_parser().error("--panel needs --screenshot")
    if args.panel is not None:
        name = args.panel.strip().lower().replace("-", "_")
        if name not in PANEL_NAMES:
            build_parser().error(f"--panel: unknown panel {args.panel!r}; expected one of "
                                 f"{', '.join(PANEL_NAMES)}")
    if (args.unit is not None or args.feature is not None) and args.panel is not None \
            and args.panel.strip().lower() != "text":
        build_parser().error("--unit and --feature choose what the text panel shows: use them "
                             "with --panel text, or without --panel")
    if args.feature is not None:
        from keras_rnnx.interpret import FEATURES

        if args.feature not in FEATURES:
            build_parser().error(f"--feature: unknown feature {args.feature!r}; expected one "
                                 f"of {', '.join(FEATURES)}")
    if args.history < 2:
        build_parser().error("--history must be at least 2")
    if args.screenshot:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"

    from visualizer.main_window import MainWindow, make_application

    app = make_application(sys.argv[:1])
    if args.screenshot:
        from visualizer.screenshot import save_screenshot

        try:
            out, messages = save_screenshot(
                [args.path], args.screenshot, panel=args.panel, compare=args.compare,
                size=args.size, layer=args.layer, sample=args.sample, step=args.step,
                kind=args.kind, all_layers=args.all_layers, log_y=args.log_y,
                history=args.history, unit=args.unit, feature=args.feature,
            )
        except ValueError as error:
            print(f"rnnx-viz: error: {error}", file=sys.stderr)
            return 2
        for severity, text in messages:
            print(f"rnnx-viz: {severity}: {text}", file=sys.stderr)
        print(out)
        return 0

    from PyQt6 import QtCore

    settings = QtCore.QSettings()
    window = MainWindow([args.path], compare=args.compare, settings=settings,
                        history=args.history)
    if args.layer:
        window.collection.select_layer(args.layer)
    window.collection.select_sample(args.sample)
    if args.kind:
        window.panels["state_heatmap"].set_kind(args.kind)
    if args.all_layers:
        window.panels["state_heatmap"].all_layers.setChecked(True)
    if args.log_y:
        window.panels["training_curves"].log_scale.setChecked(True)
    if args.feature:
        window.panels["text"].select_feature(args.feature, best=args.unit is None)
    if args.unit is not None:
        window.panels["text"].select_unit(args.unit)
    if args.unit is not None or args.feature:
        window.show_panel("text")
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
