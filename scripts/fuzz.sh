#!/usr/bin/env bash
# Run every fuzz target (fuzz/fuzz_targets/) for SECONDS each (default 60), as CI does:
#   scripts/fuzz.sh [SECONDS] [TARGET...]
# Each target starts from the committed seeds (fuzz/seeds/TARGET; the model-file targets' seeds are
# tiny random-weight models written here by `finllm synth`) plus what earlier runs found
# (fuzz/corpus/TARGET, git-ignored). A crash, timeout (10 s per input) or out-of-memory (2 GiB)
# fails the run; libFuzzer leaves the input in fuzz/artifacts/TARGET/. Needs the nightly
# toolchain (AddressSanitizer) and cargo-fuzz, installed from crates.io when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(gguf safetensors tokenizer_json chat_template policy_toml audit_reader pii document pdf capi)
fi
cargo +nightly --version >/dev/null 2>&1 || { echo "error: the nightly toolchain is required for fuzzing" >&2; exit 1; }
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
cargo +nightly fuzz build --fuzz-dir fuzz
# Model-file seeds are random-weight tiny models written by `finllm synth` (never committed).
cargo build --release --quiet -p finllm-cli
finllm=target/release/finllm
mkdir -p fuzz/corpus/gguf fuzz/corpus/safetensors
if [ ! -s fuzz/corpus/gguf/seed-llama-q8_0.gguf ]; then
  "$finllm" synth --arch llama --quant q8_0 --out fuzz/corpus/gguf/seed-llama-q8_0.gguf >/dev/null
  "$finllm" synth --arch gemma3 --quant q4_0 --out fuzz/corpus/gguf/seed-gemma3-q4_0.gguf >/dev/null
fi
if [ ! -s fuzz/corpus/safetensors/seed-llama-f16.safetensors ]; then
  st="$(mktemp -d)"
  "$finllm" synth --arch llama --quant f16 --safetensors --out "$st" >/dev/null
  cp "$st/model.safetensors" fuzz/corpus/safetensors/seed-llama-f16.safetensors
  { cat "$st/model.safetensors"; printf '\xff\x00'; cat "$st/config.json"; } >fuzz/corpus/safetensors/seed-with-config
  rm -rf "$st"
fi
summary=""
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t" "fuzz/seeds/$t"
  log="fuzz/artifacts/$t/last-run.log"
  echo "fuzz: $t for ${secs}s" >&2
  if ! cargo +nightly fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "error: fuzz target $t failed (input in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  summary+="$(printf '%-15s %10s execs  cov %6s  ft %6s' "$t" "${execs:-?}" "${cov:-?}" "${ft:-?}")"$'\n'
done
printf 'fuzz summary (%ss each):\n%s' "$secs" "$summary"
echo "fuzz: ${#targets[@]} passed, 0 failed"
