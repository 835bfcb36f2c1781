#!/usr/bin/env bash
# Screenshots of the viewer following the flagship demo live, under a real X server (Xvfb).
#
# Usage (from the repository root):
#
#   docs/screenshots/take_live.sh [OUT_DIR] [-- DEMO_ARGS...]
#
#   docs/screenshots/take_live.sh docs                  # the full demo (about 5 minutes)
#   docs/screenshots/take_live.sh /tmp/shots -- --smoke # a quick check (under a minute)
#
# It starts Xvfb (1600x1000), opens the viewer (`python -m visualizer RUNS`) on an empty runs
# directory, runs `python examples/long_time_lag.py --monitor RUNS DEMO_ARGS` while the viewer
# follows, and saves with `import -window root`:
#
#   live_1_first_run.png    while the first run (vanilla) trains: the viewer shows it
#   live_2_later_run.png    while the last run (forget) trains: the viewer has switched to it
#   live_2b_picked_run.png  after a click on vanilla in the run list: it stays there
#   live_2c_follow_again.png after a click on "Follow newest run": back to the newest run
#   live_3_end.png          after the demo has ended: all four runs finished
#   live_4_compare.png      after a click on "Compare ‖∂L/∂h_t‖ of all runs"
#   long_time_lag.png       the demo's own plot from the same run
#
# and prints the runs' frame counts and largest gaps (benchmarks/frame_density.py).
#
# Each step waits for the window title ("rnnx-viz — RUN") to name the run expected and says so
# when it does not (the screenshot is taken all the same). The clicks use the positions of the
# default layout at 1600x1000 (the viewer starts with a fresh settings directory); override them
# with RUN_ROW_Y0, RUN_ROW_H, RUN_X, FOLLOW_XY and COMPARE_XY if the layout changes.
#
# Screenshots over 300 KB are stored with a 256-colour palette.
#
# Environment: PYTHON (default: python3, or the project's .venv if there is one), DISPLAY_NUM
# (default :97), SETTLE (seconds a run trains before its screenshot; default 12, 2 with --smoke),
# KEEP_RUNS=1 keeps the runs directory. Needs Xvfb, xdotool and imagemagick:
#   apt-get install -y xvfb xdotool imagemagick libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${1:-docs}
shift || true
[[ "${1:-}" == "--" ]] && shift
DEMO_ARGS=("$@")
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
SMOKE=0
for arg in "${DEMO_ARGS[@]}"; do [[ "$arg" == "--smoke" ]] && SMOKE=1; done
SETTLE=${SETTLE:-$([[ $SMOKE == 1 ]] && echo 2 || echo 12)}
DISPLAY_NUM=${DISPLAY_NUM:-:97}
RUN_X=${RUN_X:-70}
RUN_ROW_Y0=${RUN_ROW_Y0:-107}
RUN_ROW_H=${RUN_ROW_H:-16}
FOLLOW_XY=${FOLLOW_XY:-"362 33"}
COMPARE_XY=${COMPARE_XY:-"521 33"}

for tool in Xvfb xdotool import; do
    command -v "$tool" >/dev/null || { echo "take_live.sh: $tool is missing (apt-get install -y xvfb xdotool imagemagick)" >&2; exit 2; }
done

WORK=$(mktemp -d)
RUNS=$WORK/runs
mkdir -p "$RUNS"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    [[ "${KEEP_RUNS:-0}" == 1 ]] && echo "runs kept in $RUNS" || rm -rf "$WORK"
}
trap cleanup EXIT

say() { echo "take_live.sh: $*"; }

Xvfb "$DISPLAY_NUM" -screen 0 1600x1000x24 -nolisten tcp >"$WORK/xvfb.log" 2>&1 &
PIDS+=($!)
export DISPLAY=$DISPLAY_NUM
for _ in $(seq 50); do xdotool getdisplaygeometry >/dev/null 2>&1 && break; sleep 0.1; done
xdotool getdisplaygeometry >/dev/null || { say "Xvfb did not start"; cat "$WORK/xvfb.log"; exit 1; }

export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
export XDG_CONFIG_HOME=$WORK/config  # a fresh layout: the clicks below need the default one
"$PYTHON" -m visualizer "$RUNS" >"$WORK/viewer.log" 2>&1 &
PIDS+=($!)
WID=$(timeout 60 xdotool search --sync --onlyvisible --name "rnnx-viz" | head -1) || true
[[ -n "$WID" ]] || { say "the viewer window did not appear"; cat "$WORK/viewer.log"; exit 1; }
xdotool windowmove "$WID" 0 0 windowsize "$WID" 1600 1000

"$PYTHON" examples/long_time_lag.py --monitor "$RUNS" --out "$WORK/demo.png" "${DEMO_ARGS[@]}" \
    >"$WORK/demo.log" 2>&1 &
DEMO=$!
PIDS+=($DEMO)

title() { xdotool getwindowname "$WID" 2>/dev/null || true; }

# wait_for_title TEXT SECONDS: until the window title contains TEXT.
wait_for_title() {
    local deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        [[ "$(title)" == *"$1"* ]] && return 0
        sleep 0.2
    done
    say "after $2 s the title is '$(title)', not '$1'"
    return 1
}

# wait_for_run NAME SECONDS: until the demo has started writing run NAME.
wait_for_run() {
    local deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        [[ -s "$RUNS/$1/events.rnnx" ]] && return 0
        kill -0 "$DEMO" 2>/dev/null || { say "the demo ended before run $1 started"; return 1; }
        sleep 0.2
    done
    say "run $1 did not start within $2 s"
    return 1
}

# shot NAME: the whole screen; over 300 KB it is stored with a 256-colour palette (docs/ keeps
# images small).
shot() {
    import -window root "$OUT/$1"
    if (($(stat -c %s "$OUT/$1") > 300000)); then
        convert "$OUT/$1" -colors 256 "PNG8:$OUT/$1"
    fi
    say "$1: title '$(title)', $(($(stat -c %s "$OUT/$1") / 1024)) KB"
}

click() {
    xdotool mousemove --window "$WID" $1 click 1
    sleep 1
}

wait_for_run vanilla 300 || true
wait_for_title vanilla 30 || true
sleep "$SETTLE"
shot live_1_first_run.png

wait_for_run forget 1200 || true
wait_for_title forget 30 || true
sleep "$SETTLE"
shot live_2_later_run.png

# Runs join the list as they appear: vanilla, cec, original, forget.
click "$RUN_X $RUN_ROW_Y0"
wait_for_title vanilla 10 || true
sleep 3  # the title changes at once; the panels repaint a moment later on a loaded machine
shot live_2b_picked_run.png
click "$FOLLOW_XY"
wait_for_title forget 10 || true
sleep 3
shot live_2c_follow_again.png

wait "$DEMO" || say "the demo exited with status $? (see below)"
sleep 4
shot live_3_end.png
click "$COMPARE_XY"
sleep 2
shot live_4_compare.png

tail -n 8 "$WORK/demo.log"
cp "$WORK/demo.png" "$OUT/long_time_lag.png" 2>/dev/null || say "the demo wrote no PNG"
"$PYTHON" benchmarks/frame_density.py "$RUNS" || true
say "screenshots and the demo's long_time_lag.png in $OUT"
