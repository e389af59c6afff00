#!/usr/bin/env bash
# Re-take docs/tensorboard_demo.png and docs/report_demo.png from a fresh run of the MLP demo.
#   bash docs/screenshot.sh                 # after `make demo` (uses .venv/bin/python)
#   PY=/path/to/python bash docs/screenshot.sh
# Needs Debian's chromium (installed with apt-get when missing and running as root) and matplotlib.
# The demo runs into a temporary directory (runs/ is left alone); TensorBoard serves it on
# 127.0.0.1 only. The TensorBoard picture is the Custom Scalars tab (the monitor's "LPLR" layout),
# where each series of a multi-line chart is a sub-run of its own (lplr_pairs/...) and so has its
# own colour; should that tab come out blank headless, the Scalars tab filtered to the paired tags
# (lplr/pairs/...) instead. (The Time Series tab does not render its charts headless.)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PORT=${PORT:-6017}
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y chromium >/dev/null || { apt-get update >/dev/null && apt-get install -y chromium >/dev/null; }
  else
    echo "docs/screenshot.sh: chromium is missing; install it with: sudo apt-get install chromium" >&2
    exit 1
  fi
fi

work=$(mktemp -d)
tb=""
cleanup() {
  if [ -n "$tb" ]; then kill "$tb" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "docs/screenshot.sh: running the MLP demo (examples/mlp.py, defaults) into $work" >&2
"$PY" examples/mlp.py --no-progress-bar --log-dir "$work/runs" >"$work/demo.log" 2>&1
run="$work/runs/mlp/version_0"
test -d "$run/lplr_pairs" || { echo "docs/screenshot.sh: no paired sub-runs in $run" >&2; exit 1; }

"$PY" -m lightning_lplr report "$run" --plot docs/report_demo.png >"$work/report.txt"

"$PY" -m tensorboard.main --logdir "$work/runs/mlp" --host 127.0.0.1 --port "$PORT" >"$work/tb.log" 2>&1 &
tb=$!
for _ in $(seq 60); do
  if "$PY" -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$PORT/data/runs', timeout=1)" 2>/dev/null; then
    break
  fi
  sleep 1
done
sleep 3  # let TensorBoard finish loading the event files

shoot() {  # shoot URL-FRAGMENT WIDTH,HEIGHT: a headless screenshot into $work/shot.png
  rm -rf "$work/profile" "$work/shot.png"
  chromium --headless --no-sandbox --disable-gpu --disable-background-networking --no-first-run \
    --disable-component-update --disable-sync --hide-scrollbars --user-data-dir="$work/profile" \
    --window-size="$2" --virtual-time-budget=25000 --screenshot="$work/shot.png" \
    "http://127.0.0.1:$PORT/#$1" 2>>"$work/chromium.log"
}
drawn() {  # how many saturated (line-coloured) pixels the charts area of $work/shot.png holds
  "$PY" -c "
import matplotlib.image as mi
a = mi.imread('$work/shot.png')[..., :3]
h, w, _ = a.shape
r = a[int(0.08 * h):, int(0.27 * w):]
print(int(((r.max(-1) - r.min(-1)) > 0.3).sum()))"
}

# The "LPLR" custom-scalars layout, all 14 charts; the Scalars tab's paired charts if it came out blank.
shoot "custom_scalars&_smoothingWeight=0" 1500,1740
if [ "$(drawn)" -lt 5000 ]; then
  echo "docs/screenshot.sh: the Custom Scalars tab came out blank; taking the Scalars tab" >&2
  shoot "scalars&tagFilter=pairs&_smoothingWeight=0" 1500,1000
fi
cp "$work/shot.png" docs/tensorboard_demo.png
echo "docs/screenshot.sh: wrote docs/tensorboard_demo.png and docs/report_demo.png" >&2
