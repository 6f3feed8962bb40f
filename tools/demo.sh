#!/usr/bin/env bash
# The main job on the embedded default: generate a small ADE20K-layout dataset, train
# UperNet-GLA on it on CPU (configs/toy/upernet_gla_toy_ade20k.py, which inherits the real
# configs/upernet_gla_ade20k.py), then evaluate the last checkpoint with mmseg's mIoU and
# save prediction overlays of every 4th validation image (the toy config's
# default_hooks.visualization.interval).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${FLA_MM_VENV:-$ROOT/.venv}/bin/python"
CONFIG=configs/toy/upernet_gla_toy_ade20k.py
WORK_DIR="${WORK_DIR:-work_dirs/upernet_gla_toy_ade20k}"
start=$(date +%s)
"$PY" tools/make_toy_data.py ade20k data/toy_ade20k
"$PY" tools/train.py "$CONFIG" --work-dir "$WORK_DIR" "$@"
CKPT="$(cat "$WORK_DIR/last_checkpoint")"
SHOW_DIR="$WORK_DIR/predictions"
"$PY" tools/test.py "$CONFIG" "$CKPT" --work-dir "$WORK_DIR" --show-dir "$SHOW_DIR"
echo "[demo] prediction overlays: $(find "$SHOW_DIR" -name '*.png' | wc -l) PNGs under $SHOW_DIR"
echo "[demo] finished in $(( $(date +%s) - start )) s; checkpoint: $CKPT; logs: $WORK_DIR"
