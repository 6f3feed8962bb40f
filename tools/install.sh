#!/usr/bin/env bash
# Install fla_mm and the OpenMMLab stack into a virtual environment.
#   bash tools/install.sh            -> .venv in the repo root
# Env: FLA_MM_VENV (venv path), FLA_MM_WHEELS (mmcv wheel cache, outside the repo so that a
# second install takes seconds), PYTHON (interpreter, default python3.11 or python3).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FLA_MM_VENV:-$ROOT/.venv}"
WHEELS="${FLA_MM_WHEELS:-$HOME/.cache/fla_mm/wheels}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
CONSTRAINTS="$ROOT/requirements/constraints.txt"
say() { echo "[install $(date +%H:%M:%S)] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtual environment $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
PIP="python -m pip --disable-pip-version-check -q"
export PIP_CONSTRAINT="$CONSTRAINTS"

say "installing torch 2.13.0 (CPU wheel where there is no GPU) and build tools"
$PIP install torch==2.13.0 "setuptools<81" wheel ninja numpy

mkdir -p "$WHEELS"
if ! ls "$WHEELS"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
  if command -v nvcc >/dev/null 2>&1 && python -c 'import torch,sys; sys.exit(not torch.cuda.is_available())'; then
    CUDA_OPS=1; else CUDA_OPS=0; fi
  say "building mmcv 2.1.0 with compiled ops (FORCE_CUDA=$CUDA_OPS) into $WHEELS"
  say "this happens once per machine and takes about 20 minutes on 2 CPU cores"
  start=$(date +%s)
  MAX_JOBS="${MAX_JOBS:-$(nproc)}" MMCV_WITH_OPS=1 FORCE_CUDA=$CUDA_OPS \
    $PIP wheel --no-deps --no-build-isolation -w "$WHEELS" mmcv==2.1.0
  say "mmcv built in $(( $(date +%s) - start )) s"
else
  say "using cached mmcv wheel from $WHEELS"
fi

say "installing mmcv, mmengine, mmsegmentation, mmdet, FLA, ONNX (Runtime) and fla_mm (editable)"
$PIP install --find-links "$WHEELS" mmcv==2.1.0
$PIP install --find-links "$WHEELS" -e "$ROOT[mm,tests,export]"
python -c 'import mmcv.ops, mmseg, mmdet, fla_mm, onnxruntime, onnxscript; print("fla_mm", fla_mm.__version__, "| mmcv", mmcv.__version__, "with ops | mmseg", mmseg.__version__, "| mmdet", mmdet.__version__, "| onnxruntime", onnxruntime.__version__)'
say "done: activate with '. $VENV/bin/activate'"
