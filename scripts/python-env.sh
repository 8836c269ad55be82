#!/usr/bin/env bash
# Creates (or reuses) .venv with the Python clients no one here wrote: the `onnx` checker and
# ONNX Runtime's own package, which also provides libonnxruntime.so for gptc's ort runtime.
# Prints the path of that library on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import onnx, onnxruntime, numpy' 2>/dev/null \
  || ! cmp -s scripts/requirements.txt .venv/requirements.installed; then
  .venv/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements.txt
  cp scripts/requirements.txt .venv/requirements.installed
fi
.venv/bin/python - <<'PY'
import glob, os, onnxruntime
libs = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))
if not libs:
    raise SystemExit("onnxruntime installed, but no libonnxruntime.so in its capi folder")
print(libs[-1])
PY
