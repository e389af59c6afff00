#!/usr/bin/env bash
# Re-take docs/tensorboard_demo.png from a demo run (needs Debian's chromium: apt-get install chromium).
#   make demo && bash docs/screenshot.sh
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/tensorboard --logdir runs/mlp --host 127.0.0.1 --port 6007 >/dev/null 2>&1 &
tb=$!
trap 'kill $tb' EXIT
sleep 8
profile=$(mktemp -d)
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --no-first-run \
  --disable-component-update --disable-sync --user-data-dir="$profile" --window-size=1500,1420 \
  --virtual-time-budget=20000 --screenshot=docs/tensorboard_demo.png \
  "http://127.0.0.1:6007/#custom_scalars&_smoothingWeight=0"
