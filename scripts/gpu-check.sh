#!/usr/bin/env bash
# The CUDA issue's checks, run on a GPU machine with a binary from scripts/build-cuda.sh (the
# machine needs no Rust toolchain and no model files: the models are random-weight ones made
# here, deterministically from a seed). Prints JSON lines.
#   scripts/gpu-check.sh [FINLLM_BINARY] [DEVICE]
#     1. logits GPU vs CPU kernels over 128 greedy steps, for Q4_0, Q4_K, Q8_0 and F16
#        (llama-1b shape): max |diff|, top-1 agreement (all steps, and the steps where the CPU's
#        top-1 leads by more than 1.0);
#     2. speed on the 1B and 7B llama shapes, Q4_K: prefill of a 512-token prompt, decode at
#        batch 1 (with the card's copy bandwidth and the decode floor it implies), aggregate
#        decode at batch 8 and 32.
# The CUDA 13 libraries (cuBLAS, cuRAND, NVRTC, runtime) are found on the loader's path, or else
# in the `nvidia` packages of the machine's python3 (as PyTorch's CUDA wheels install them).
set -uo pipefail
bin="${1:-target/cuda/release/finllm}"
device="${2:-cuda:0}"
work="${GPU_CHECK_DIR:-/tmp/finllm-gpu-check}"
mkdir -p "$work"

if ! ldconfig -p 2>/dev/null | grep -q 'libcublas\.so\.13'; then
  nvidia_dirs="$(python3 -c 'import nvidia, os; print(":".join(os.path.join(p, d, "lib") for p in nvidia.__path__ for d in sorted(os.listdir(p)) if os.path.isdir(os.path.join(p, d, "lib"))))' 2>/dev/null || true)"
  nvidia_cu13="$(python3 -c 'import nvidia, os; print(":".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null || true)"
  export LD_LIBRARY_PATH="${nvidia_cu13}:${nvidia_dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/local/cuda/lib64; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
if ldd "$bin" | grep -q 'not found'; then
  echo "missing libraries:" >&2
  ldd "$bin" | grep 'not found' >&2
  exit 1
fi

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader || true

# The random-weight models, made in parallel (each is single-threaded).
pids=()
for m in llama-1b:q4_0 llama-1b:q4_k llama-1b:q8_0 llama-1b:f16 llama-7b:q4_k; do
  shape="${m%%:*}" q="${m##*:}"
  f="$work/$shape-$q.gguf"
  [ -f "$f" ] || { "$bin" synth --preset "$shape" --quant "$q" --seed 1 --out "$f.tmp" >&2 && mv "$f.tmp" "$f"; } &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || echo "a model could not be made" >&2; done

echo "# ${SECONDS}s: logits: CPU kernels vs $device, 128 greedy steps (llama-1b shape, random weights)"
for q in q4_0 q4_k q8_0 f16; do
  "$bin" compare-devices --model "$work/llama-1b-$q.gguf" --device "$device" --steps 128
done

echo "# ${SECONDS}s: speed: Q4_K, 512-token prompt, 128 generated tokens, median of 3 runs"
for shape in llama-1b llama-7b; do
  m="$work/$shape-q4_k.gguf"
  "$bin" bench --model "$m" --device "$device" --prompt-tokens 512 --gen-tokens 128 --runs 3 --bandwidth --json
  for batch in 8 32; do
    "$bin" bench --model "$m" --device "$device" --prompt-tokens 512 --gen-tokens 128 --runs 3 --batch "$batch" --json
  done
done
echo "# ${SECONDS}s: done"
