//! With the `cuda` feature, compile finllm's own CUDA kernels (`kernels/*.cu`) to PTX with nvcc
//! (on the PATH, or `NVCC`), for `CUDA_COMPUTE_CAP` (default 90: H100/H200). Without it, nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=kernels/decode_attention.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let cap = cap.trim().trim_start_matches("sm_").replace('.', "");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let ptx = out.join("decode_attention.ptx");
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "-std=c++17", &format!("-arch=compute_{cap}"), "-o"])
        .arg(&ptx)
        .arg("kernels/decode_attention.cu")
        .status()
        .unwrap_or_else(|e| panic!("could not run {nvcc} (scripts/build-cuda.sh puts it on the PATH): {e}"));
    assert!(status.success(), "{nvcc} failed on kernels/decode_attention.cu");
}
