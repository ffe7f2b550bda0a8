//! `cargo bench --bench kernels`: throughput of each quantized dot-product kernel on every ISA
//! this CPU has, on a cache-resident matrix and on one far larger than the caches.

use std::time::Instant;

use finllm::generate::Rng;
use finllm::quant::blocks::{quantize_q8, BlockQ8, QK};
use finllm::quant::kernels::{block_bytes, dot_fn, Isa};
use finllm::quant::QuantType;

fn main() {
    let mut rng = Rng::new(1);
    let cols = 576;
    let blocks = cols / QK;
    let x: Vec<f32> = (0..cols).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
    let mut a = vec![BlockQ8::default(); blocks];
    quantize_q8(&x, &mut a);
    for dtype in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0] {
        let row_bytes = blocks * block_bytes(dtype);
        for (label, rows) in [("L2-resident", 1536), ("streamed 64 MiB", (64 << 20) / row_bytes)] {
            let data: Vec<u8> = (0..rows * row_bytes).map(|_| rng.next_u64() as u8 & 0x77).collect();
            for isa in Isa::available() {
                let dot = dot_fn(dtype, isa).unwrap();
                let reps = (256 << 20) / data.len().max(1) + 1;
                let start = Instant::now();
                let mut sink = 0f32;
                for _ in 0..reps {
                    for r in data.chunks_exact(row_bytes) {
                        sink += dot(r, &a);
                    }
                }
                let secs = start.elapsed().as_secs_f64();
                let gbs = (reps * data.len()) as f64 / secs / 1e9;
                let gmacs = (reps * rows * cols) as f64 / secs / 1e9;
                println!("{dtype:5} {isa:?} {label:16}: {gbs:6.2} GB/s, {gmacs:6.2} GMAC/s (sink {sink:.1})");
            }
        }
    }
}
