#!/usr/bin/env bash
# Create .venv-llamacpp/ (git-ignored) with llama-cpp-python, the peer finllm is compared with.
# A native build (GGML_NATIVE) like the numbers in the issues; takes several minutes once.
#
# FINLLM_LLAMACPP_NO_AMX=1 builds .venv-llamacpp-noamx/ instead: native, but without Intel AMX
# (-mno-amx-*). On the Sapphire Rapids VM of 2026-12-04 the native build's AMX matmul
# (ggml_backend_amx_mul_mat) crashes with SIGSEGV on the first evaluation of SmolLM2 Q4_1, so
# llama.cpp can only be measured there with AMX compiled out; the script prints the python of
# the venv it made either way.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ "${FINLLM_LLAMACPP_NO_AMX:-0}" != "0" ]; then
  venv="$root/.venv-llamacpp-noamx"
  flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  # scikit-build-core splits CMAKE_ARGS like a shell: the quotes keep each flag list whole.
  cmake_args="-DGGML_NATIVE=ON '-DCMAKE_C_FLAGS=$flags' '-DCMAKE_CXX_FLAGS=$flags'"
else
  venv="$root/.venv-llamacpp"
  cmake_args="-DGGML_NATIVE=ON"
fi
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check numpy
  CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir "llama-cpp-python==0.3.36"
fi
echo "$venv/bin/python"
