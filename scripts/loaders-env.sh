#!/usr/bin/env bash
# Creates (or reuses) what the loaders check needs: .venv-loaders with onnxruntime-genai and
# transformers' tokenizers (pinned in requirements-loaders.txt; genai brings its own
# onnxruntime, which is why it has a venv of its own), and transformers.js in scripts/js
# (npm; --ignore-scripts: onnxruntime-node's install step downloads GPU binaries, its CPU
# library is in the package).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-loaders/bin/python ]; then
  python3 -m venv .venv-loaders
fi
if ! cmp -s scripts/requirements-loaders.txt .venv-loaders/requirements.installed; then
  .venv-loaders/bin/pip install --quiet --disable-pip-version-check -r scripts/requirements-loaders.txt
  cp scripts/requirements-loaders.txt .venv-loaders/requirements.installed
fi
if ! command -v node >/dev/null; then
  echo "loaders-env: node is not on PATH: transformers.js cannot be checked" >&2
  exit 1
fi
if ! cmp -s scripts/js/package-lock.json scripts/js/node_modules/.package.installed; then
  (cd scripts/js && npm ci --ignore-scripts --no-audit --no-fund --silent)
  cp scripts/js/package-lock.json scripts/js/node_modules/.package.installed
fi
