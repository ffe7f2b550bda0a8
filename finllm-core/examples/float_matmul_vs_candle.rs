//! `cargo run --release -p finllm-core --example float_matmul_vs_candle`: single-thread GFLOP/s
//! of `y = x · Wᵀ` through finllm's float kernels (f32, f16 and bf16 weights, read in place) and
//! through candle's f32 matmul, the path float weights took before those kernels (f16 and bf16
//! converted to f32 at load), for one token (decode) and for batches of tokens (prefill).
//!
//! It lives in the core package because it calls candle directly. Both run on one rayon worker
//! thread and are timed by that thread's CPU time (`/proc/thread-self/schedstat`, Linux), so
//! other work on a shared machine disturbs the figures less; each is the best of three passes of
//! about 8 GFLOP.

use std::sync::Arc;

use candle_core::{Device, Tensor};
use finllm_core::model::{GgufFile, GgufWriter};
use finllm_core::quant::matmul::QMatrix;
use finllm_core::quant::QuantType;

/// SmolLM2-135M's FFN up and down projections, and a larger matrix far beyond the caches.
const SHAPES: [(usize, usize); 3] = [(1536, 576), (576, 1536), (8192, 2048)];
const TOKENS: [usize; 3] = [1, 64, 256];

fn main() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a thread pool");
    pool.install(run);
}

/// Seconds this thread has spent on a CPU.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").expect("Linux schedstat");
    let ns: f64 = stat
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("run time in ns");
    ns / 1e9
}

/// CPU seconds of the fastest of three runs of `pass`.
fn best_of(mut pass: impl FnMut() -> f32) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = cpu_secs();
        std::hint::black_box(pass());
        best = best.min(cpu_secs() - start);
    }
    best
}

/// Deterministic values in `[-spread, spread)`.
fn values(n: usize, seed: usize, spread: f32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * seed % 1000) as f32 / 500.0 - 1.0) * spread)
        .collect()
}

fn run() {
    for (rows, cols) in SHAPES {
        let w = values(rows * cols, 7919, 0.05);
        let wt = Tensor::from_slice(&w, (rows, cols), &Device::Cpu).expect("weights");
        let mats: Vec<(QuantType, QMatrix)> = [QuantType::F32, QuantType::F16, QuantType::BF16]
            .into_iter()
            .map(|dtype| (dtype, matrix(&w, rows, cols, dtype)))
            .collect();
        for n in TOKENS {
            let x = values(n * cols, 104_729, 0.5);
            let xt = Tensor::from_slice(&x, (n, cols), &Device::Cpu).expect("activations");
            let reps = (8_000_000_000 / (rows * cols * n * 2)).max(1);
            let flop = (2 * rows * cols * n * reps) as f64;
            let secs = best_of(|| {
                let mut sink = 0f32;
                for _ in 0..reps {
                    let y = xt.matmul(&wt.t().expect("transpose")).expect("matmul");
                    sink += y
                        .flatten_all()
                        .and_then(|y| y.get(0))
                        .and_then(|v| v.to_scalar::<f32>())
                        .expect("y");
                }
                sink
            });
            print!(
                "{rows}x{cols}, {n:3} tokens: candle f32 {:6.1} GFLOP/s",
                flop / secs / 1e9
            );
            for (dtype, m) in &mats {
                let secs = best_of(|| (0..reps).map(|_| m.matmul(&x, n)[0]).sum());
                print!(", finllm {dtype} {:6.1}", flop / secs / 1e9);
            }
            println!();
        }
    }
}

/// `w` stored as `dtype` in an in-memory GGUF file, as a kernel matrix.
fn matrix(w: &[f32], rows: usize, cols: usize, dtype: QuantType) -> QMatrix {
    let bytes: Vec<u8> = match dtype {
        QuantType::F32 => w.iter().flat_map(|v| v.to_le_bytes()).collect(),
        QuantType::F16 => w.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
        _ => w.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect(),
    };
    let mut g = GgufWriter::new();
    g.tensor("w", &[rows, cols], dtype, bytes).expect("a valid tensor");
    let file = Arc::new(GgufFile::from_vec("w.gguf", g.to_bytes()).expect("a valid file"));
    let start = file.tensor("w").expect("the tensor").start as usize;
    let shared: Arc<dyn finllm_core::quant::matmul::WeightBytes> = file;
    QMatrix::in_shared(&shared, start, dtype, rows, cols).expect("float formats have kernels")
}
