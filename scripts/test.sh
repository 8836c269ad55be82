#!/usr/bin/env bash
# The one test command: formatting, lints, and every test (unit and integration), in release
# because the model tests run real forward passes.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
