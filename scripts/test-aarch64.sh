#!/usr/bin/env bash
# The quantized kernels' tests cross-compiled for aarch64 and run under qemu-user, once on an
# emulated CPU with the dot-product extension (the NEON and NEON+dotprod kernels) and once on
# one without it (NEON only), then with the scalar kernels forced. Installs the cross toolchain
# and qemu when they are missing (Debian/Ubuntu, as root or through sudo). Arguments go to the
# test binary (e.g. `--skip NAME`).
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
packages=(qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target" >/dev/null

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# C in dependencies (zstd, for jieba's compressed dictionary) must use the cross compiler.
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc

run_tests() {
    cargo test --release --locked --target "$target" -p finllm-core --lib quant:: -- --quiet "$@"
}

# qemu-user reads the CPU model from QEMU_CPU. FINLLM_EXPECT_ISA makes the tests fail if the
# emulated CPU does not offer exactly the level we mean to test.
echo "== aarch64 with dotprod (qemu -cpu max)"
QEMU_CPU=max FINLLM_EXPECT_ISA=NeonDot run_tests "$@"
echo "== aarch64 without dotprod (qemu -cpu cortex-a53)"
QEMU_CPU=cortex-a53 FINLLM_EXPECT_ISA=Neon run_tests "$@"
echo "== aarch64, scalar kernels forced"
QEMU_CPU=max FINLLM_FORCE_SCALAR=1 run_tests "$@"
