#!/usr/bin/env bash
# The CUDA issue's checks, run on a GPU machine with a binary from scripts/build-cuda.sh (the
# machine needs no Rust toolchain and no model files: the models are random-weight ones made
# here, deterministically from a seed). Prints JSON lines.
#   scripts/gpu-check.sh [FINLLM_BINARY] [DEVICE]
#     1. logits GPU vs CPU kernels over 128 greedy steps, for Q4_0, Q4_K, Q8_0 and F16
#        (llama-1b shape): max |diff|, top-1 agreement;
#     2. speed on the 1B and 7B llama shapes, Q4_K: prefill of a 512-token prompt, decode at
#        batch 1 (with the card's copy bandwidth and the decode floor it implies), aggregate
#        decode at batch 8 and 32.
set -euo pipefail
bin="${1:-target/cuda/release/finllm}"
device="${2:-cuda:0}"
work="${GPU_CHECK_DIR:-/tmp/finllm-gpu-check}"
mkdir -p "$work"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
echo "# logits: CPU kernels vs $device, 128 greedy steps (llama-1b shape, random weights)"
for q in q4_0 q4_k q8_0 f16; do
  m="$work/llama-1b-$q.gguf"
  [ -f "$m" ] || "$bin" synth --preset llama-1b --quant "$q" --seed 1 --out "$m" >&2
  "$bin" compare-devices --model "$m" --device "$device" --steps 128
done

echo "# speed: Q4_K, 512-token prompt, 128 generated tokens, median of 3 runs"
for shape in llama-1b llama-7b; do
  m="$work/$shape-q4_k.gguf"
  [ -f "$m" ] || "$bin" synth --preset "$shape" --quant q4_k --seed 1 --out "$m" >&2
  "$bin" bench --model "$m" --device "$device" --prompt-tokens 512 --gen-tokens 128 --runs 3 --bandwidth --json
  for batch in 8 32; do
    "$bin" bench --model "$m" --device "$device" --prompt-tokens 512 --gen-tokens 128 --runs 3 --batch "$batch" --json
  done
done
