#!/usr/bin/env bash
# Create .venv-llamacpp/ (git-ignored) with llama-cpp-python, the peer finllm is compared with.
# A native build (GGML_NATIVE) like the numbers in the issues; takes several minutes once.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/.venv-llamacpp"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check numpy
  CMAKE_ARGS="-DGGML_NATIVE=ON" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-cache-dir "llama-cpp-python==0.3.36"
fi
echo "$venv/bin/python"
