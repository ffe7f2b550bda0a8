#!/usr/bin/env bash
# The project's test command (README, CI): fetch the default models, check formatting and lints,
# run every test in release mode (the tests run the real model).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_models.sh
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --locked -- -D warnings
cargo test --release --workspace --locked
# C ABI: error-path tests and the C++ example, under AddressSanitizer/UBSan with leak checking.
make -C examples/cpp check
