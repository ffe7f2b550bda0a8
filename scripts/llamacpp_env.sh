#!/usr/bin/env bash
# Create .venv-llamacpp/ (git-ignored) with llama-cpp-python, the peer finllm is compared with.
# A native build (GGML_NATIVE) like the numbers in the issues; takes several minutes once.
#
# FINLLM_LLAMACPP_NO_AMX=1 builds .venv-llamacpp-noamx/ instead: native, but without Intel AMX
# (-mno-amx-*). On the Sapphire Rapids VM of 2026-12-04 the native build's AMX matmul
# (ggml_backend_amx_mul_mat) crashes with SIGSEGV on the first evaluation of SmolLM2 Q4_1, so
# llama.cpp can only be measured there with AMX compiled out; the script prints the python of
# the venv it made either way.
#
# FINLLM_LLAMACPP_ISA=avx2 builds .venv-llamacpp-avx2/ instead: not native, AVX2 + FMA + F16C
# and no AVX-512 or AMX, the llama.cpp an AVX2-only server runs. With `FINLLM_MAX_ISA=avx2`
# on finllm's side it gives the AVX2 comparison on a machine that also has AVX-512.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ "${FINLLM_LLAMACPP_ISA:-native}" = "avx2" ]; then
  venv="$root/.venv-llamacpp-avx2"
  cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
elif [ "${FINLLM_LLAMACPP_NO_AMX:-0}" != "0" ]; then
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
