#!/usr/bin/env bash
# The one test command: formatting, lints, every Rust test (unit and integration, in release
# because the model tests run real forward passes), then the cross-checks with the `onnx`
# checker and ONNX Runtime's Python package, then the loaders users point at gptc's model
# folder (onnxruntime-genai, transformers' tokenizer, transformers.js). Installs what it needs:
# a venv in .venv with onnx and onnxruntime==1.31.1, whose libonnxruntime.so also serves the
# Rust ort tests; .venv-loaders and scripts/js/node_modules (scripts/loaders-env.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_DYLIB_PATH="$(scripts/python-env.sh | tail -n 1)"
export ORT_DYLIB_PATH
echo "ONNX Runtime library: $ORT_DYLIB_PATH"

cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
.venv/bin/python scripts/crosscheck.py target/release/gptc "$work"
scripts/loaders-env.sh
mkdir "$work/loaders"
.venv-loaders/bin/python scripts/loaders.py target/release/gptc "$work/loaders"
