#!/usr/bin/env bash
# Screenshots of the viewer's Text panel under a real X server (Xvfb), with real mouse input.
#
# Usage (from the repository root):
#
#   docs/screenshots/take_text.sh RUN [OUT_DIR]
#
# RUN is a run with a corpus probe of Python source, e.g. one of
# `python examples/char_lm.py --cell forget --monitor runs/chars`. For each of the features
# in_string and bracket_depth, it opens the viewer (`visualizer.main_window.MainWindow`, the
# real application on the X server) with the Text panel filling the screen, coloured by the
# feature's best unit (`TextPanel.select_feature(feature, best=True)`), then drags the mouse
# with xdotool over a few characters (inside a string literal, or at the deepest brackets on
# screen) so that the panel lists the span's on units and its matches, leaves the mouse there
# (the read-out names the character under it), and saves the screen with `import -window root`:
#
#   OUT_DIR/text_xvfb_in_string.png
#   OUT_DIR/text_xvfb_bracket_depth.png
#
# Environment: PYTHON (default: python3, or the project's .venv if there is one), DISPLAY_NUM
# (default :96), KIND (the quantity colouring the text: h by default, or c, a gate name).
# Needs Xvfb, xdotool and imagemagick.
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
RUN=${1:?usage: take_text.sh RUN [OUT_DIR]}
OUT=${2:-docs}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
DISPLAY_NUM=${DISPLAY_NUM:-:96}
KIND=${KIND:-h}
for tool in Xvfb xdotool import; do
    command -v "$tool" >/dev/null || { echo "take_text.sh: $tool is missing" >&2; exit 2; }
done

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
say() { echo "take_text.sh: $*"; }

Xvfb "$DISPLAY_NUM" -screen 0 1600x1000x24 -nolisten tcp >"$WORK/xvfb.log" 2>&1 &
PIDS+=($!)
export DISPLAY=$DISPLAY_NUM
for _ in $(seq 50); do xdotool getdisplaygeometry >/dev/null 2>&1 && break; sleep 0.1; done
xdotool getdisplaygeometry >/dev/null || { say "Xvfb did not start"; exit 1; }
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
unset QT_QPA_PLATFORM

for feature in in_string bracket_depth; do
    TARGETS=$WORK/$feature.json
    "$PYTHON" - "$RUN" "$feature" "$TARGETS" "$KIND" >"$WORK/$feature.log" 2>&1 <<'PY' &
"""The viewer on RUN with the Text panel floated over the whole screen; writes the screen
positions of a span to drag over once the feature's best unit colours the text."""
import json
import sys

import numpy as np
from PyQt6 import QtCore

from keras_rnnx import interpret
from visualizer.main_window import MainWindow, make_application

run, feature, out, kind = sys.argv[1:5]
app = make_application()
window = MainWindow([run], settings=None)
window.resize(1600, 1000)
window.show()
panel = window.panels["text"]
panel.select_kind(kind)
panel.select_feature(feature, best=True)
dock = window.docks["text"]
dock.setFloating(True)
dock.setGeometry(0, 0, 1600, 1000)
dock.show()
dock.raise_()
panel.splitter.setSizes([1150, 450])


def ready():
    if panel.shown.get("array") is None or not panel.jobs.idle or panel._best_pending \
            or panel.ranking() is None or panel.shown.get("unit") != panel.unit:
        QtCore.QTimer.singleShot(200, ready)
        return
    text, canvas = panel.shown["text"], panel.canvas
    layout = canvas.layout_
    features = interpret.code_features(text)
    first, lines, _, columns = canvas.visible_range()
    on_screen = (layout.row >= first) & (layout.row < first + lines - 2) & \
        (layout.col < columns - 2)
    if feature == "in_string":
        inside = (features["in_string"] == 1) & on_screen
        # six string characters in a row on one line, not the opening quote
        starts = [i for i in np.flatnonzero(inside)[5:].tolist()
                  if inside[i:i + 6].all() and layout.row[i] == layout.row[i + 5]
                  and text[i - 1] not in "\"'" and text[i].isalpha()]
        start = starts[0]
    else:
        depth = np.where(on_screen, features["bracket_depth"], -1)
        deepest = np.flatnonzero(depth == depth.max())
        # six characters at the deepest level on one line, if there are, else the first
        starts = [i for i in deepest.tolist() if (depth[i:i + 6] == depth.max()).all()
                  and layout.row[i] == layout.row[min(i + 5, len(text) - 1)]]
        start = starts[0] if starts else int(deepest[0])
    stop = start + 5
    points = []
    for item in (start, stop):
        line, col = layout.line_span(item)
        point = canvas.viewport().mapToGlobal(canvas.cell_rect(line, col).center().toPoint())
        points.append([point.x(), point.y()])
    with open(out, "w") as file:
        json.dump({"points": points, "unit": panel.shown["unit"], "span": [start, stop + 1],
                   "text": text[start:stop + 1]}, file)


QtCore.QTimer.singleShot(500, ready)
app.exec()
PY
    VIEWER=$!
    PIDS+=($VIEWER)
    for _ in $(seq 600); do [[ -s "$TARGETS" ]] && break; sleep 0.2; done
    [[ -s "$TARGETS" ]] || { say "the viewer did not get ready"; cat "$WORK/$feature.log"; exit 1; }
    read -r X1 Y1 X2 Y2 < <("$PYTHON" -c "import json,sys; p=json.load(open(sys.argv[1]))['points']; print(*p[0], *p[1])" "$TARGETS")
    say "$feature: $(cat "$TARGETS")"
    xdotool mousemove "$X1" "$Y1" mousedown 1
    sleep 0.3
    xdotool mousemove "$(( (X1 + X2) / 2 ))" "$Y1"
    sleep 0.3
    xdotool mousemove "$X2" "$Y2" mouseup 1
    sleep 4  # the match runs in the panel's worker; the timer draws it
    import -window root "$OUT/text_xvfb_$feature.png"
    # 256 colours keep the picture under 300 KB for the docs
    convert "$OUT/text_xvfb_$feature.png" -colors 256 "PNG8:$OUT/text_xvfb_$feature.png"
    say "wrote $OUT/text_xvfb_$feature.png"
    kill "$VIEWER" 2>/dev/null || true
    wait "$VIEWER" 2>/dev/null || true
done
