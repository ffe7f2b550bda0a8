//! `cargo bench --bench kernels [-- FORMAT...]`: throughput of each quantized dot-product kernel
//! on every ISA this CPU has, on a 512 KiB matrix that stays in L2 and on one far larger than the
//! caches, for one token and (in L2) for the four-token kernels; then the super-block tiles on
//! AVX2 (on AVX-512 VNNI their formats run on the panels) as the model calls them (a
//! whole matrix per call, one token and 64 tokens; 16-row tasks of a prefill pass on short and
//! long rows); then the float formats (f32, f16, bf16): one row by one token, a tile of rows by
//! one token (decode) and a tile of rows by tokens (prefill), with AVX-512 BF16 the bf16 dot
//! product on 2,048-value rows (decode's one row, in L2 and streamed; the prefill tile and the
//! shapes beside it), and on AVX2 the bf16 and f16 pair tiles (the prefill tile and the shapes
//! beside it) in 16-row tasks of 2,048-value rows by 256 tokens; then the decode attention kernels
//! and the AVX-512 panel tiles (1 to 16 tokens in L2; 1 and 8 tokens streamed, on one thread and
//! two). Each figure is the best of five timed passes, so other work on the machine disturbs it
//! less. One thread unless named; a multiply-add is two FLOPs. `-- sequence` adds a decode step's
//! stream: a lone token through 128 MiB of matrices in turn, panels against the AVX2 tiles.
//! `-- peak` gives what one core's multiply pipes allow with AVX-512: `vpdpbusd` (the panels'
//! product, 64 byte multiply-adds) and `vdpbf16ps` (the bf16 dot product, 32), each as twelve
//! independent chains in registers, so the tiles' figures read as a fraction of the machine.

use std::time::Instant;

use finllm::generate::Rng;
use finllm::quant::bf16dot::{bf16_dot_kernels, round_to_bf16};
use finllm::quant::blocks::{quantize_q8, quantize_q8_k, BlockQ8, QK};
use finllm::quant::float::{float_kernels, FloatTileFn, FLOAT_FORMATS, MAX_TILE_ROWS, MAX_TILE_TOKENS};
use finllm::quant::halfpair::{input_len, pair_kernels};
use finllm::quant::kernels::{block_bytes, dot4_fn, dot_fn, Isa, KERNEL_FORMATS};
use finllm::quant::ktile::{super_kernels, supers_from_blocks, SuperKernels, SuperQ8, SUBS};
use finllm::quant::{QuantType, TASK_ROWS};

const PASSES: usize = 5;

fn main() {
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let mut rng = Rng::new(1);
    for dtype in KERNEL_FORMATS {
        if !only.is_empty() && !only.iter().any(|f| f.eq_ignore_ascii_case(dtype.name())) {
            continue;
        }
        // SmolLM2-135M's hidden size for the 32-element formats; its FFN size (a whole number of
        // 256-element super-blocks) for the K-quants.
        let block = usize::try_from(dtype.block_size()).expect("small");
        let cols = if block == QK { 576 } else { 1536 };
        let blocks = cols / QK;
        let row_bytes = cols / block * block_bytes(dtype);
        let acts: Vec<Vec<BlockQ8>> = (0..4)
            .map(|_| {
                let x: Vec<f32> = (0..cols).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
                let mut a = vec![BlockQ8::default(); blocks];
                quantize_q8(&x, &mut a);
                a
            })
            .collect();
        for (label, rows) in [
            ("L2 512 KiB", (512 << 10) / row_bytes),
            ("streamed 64 MiB", (64 << 20) / row_bytes),
        ] {
            let data = masked_file(&mut rng, rows * row_bytes);
            // At least 64 MB of weights per pass.
            let reps = (64 << 20) / data.len() + 1;
            for isa in one_row_isas() {
                let dot = dot_fn(dtype, isa).unwrap();
                let (secs, sink) = best_of(|| {
                    let mut sink = 0f32;
                    for _ in 0..reps {
                        for r in data.chunks_exact(row_bytes) {
                            sink += dot(r, &acts[0]);
                        }
                    }
                    sink
                });
                report(dtype, isa, label, secs, reps * data.len(), reps * rows * cols, sink);
            }
            if label != "L2 512 KiB" {
                continue;
            }
            for isa in one_row_isas() {
                let dot4 = dot4_fn(dtype, isa).unwrap();
                let (secs, sink) = best_of(|| {
                    let mut sink = 0f32;
                    for _ in 0..reps {
                        for r in data.chunks_exact(row_bytes) {
                            sink += dot4(r, [&acts[0], &acts[1], &acts[2], &acts[3]]).iter().sum::<f32>();
                        }
                    }
                    sink
                });
                report(
                    dtype,
                    isa,
                    "x4 L2 512 KiB",
                    secs,
                    reps * data.len(),
                    4 * reps * rows * cols,
                    sink,
                );
            }
        }
    }
    for dtype in KERNEL_FORMATS {
        if only.is_empty() || only.iter().any(|f| f.eq_ignore_ascii_case(dtype.name())) {
            super_tiles(dtype, &mut rng);
            prefill_tasks(dtype, &mut rng);
        }
    }
    for dtype in FLOAT_FORMATS {
        if only.is_empty() || only.iter().any(|f| f.eq_ignore_ascii_case(dtype.name())) {
            float_format(dtype, &mut rng);
            bf16_dot(dtype, &mut rng);
            pair_tasks(dtype, &mut rng);
        }
    }
    if only.is_empty() || only.iter().any(|f| f.eq_ignore_ascii_case("attention")) {
        attention(&mut rng);
    }
    if only.iter().any(|f| f.eq_ignore_ascii_case("sequence")) {
        sequence(&mut rng);
    }
    if only.is_empty() || only.iter().any(|f| f.eq_ignore_ascii_case("panels")) {
        panels(&mut rng);
    }
    if only.iter().any(|f| f.eq_ignore_ascii_case("peak")) {
        peak();
    }
}

/// Instructions each of the twelve chains of [`peak`] runs per pass.
const PEAK_STEPS: usize = 20_000_000;

/// The multiply pipes' peak on one core: twelve chains of `vpdpbusd` and of `vdpbf16ps`, with
/// no memory operands, as GMAC/s (one instruction is 64 and 32 multiply-adds) and instructions
/// per nanosecond.
fn peak() {
    #[cfg(target_arch = "x86_64")]
    {
        let bw = std::arch::is_x86_feature_detected!("avx512bw");
        let vnni = bw && std::arch::is_x86_feature_detected!("avx512vnni");
        let bf16 = bw && std::arch::is_x86_feature_detected!("avx512bf16");
        for (name, macs, present, run) in [
            ("vpdpbusd", 64, vnni, peak_x86::vnni as unsafe fn(usize) -> f32),
            ("vdpbf16ps", 32, bf16, peak_x86::bf16 as unsafe fn(usize) -> f32),
        ] {
            if !present {
                println!("peak  {name:<9} not on this CPU");
                continue;
            }
            // SAFETY: the features were detected above.
            let (secs, sink) = best_of(|| unsafe { run(PEAK_STEPS) });
            let instructions = (12 * PEAK_STEPS) as f64;
            println!(
                "peak  {name:<9} 12 chains, one core      : {:7.2} GMAC/s, {:.2} instructions/ns (sink {sink})",
                instructions * macs as f64 / secs / 1e9,
                instructions / secs / 1e9
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    println!("peak: x86-64 only");
}

#[cfg(target_arch = "x86_64")]
mod peak_x86 {
    use std::arch::asm;
    use std::arch::x86_64::*;

    /// SAFETY: AVX-512 F/BW/VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn vnni(steps: usize) -> f32 {
        let mut acc = [_mm512_setzero_si512(); 12];
        let mut w = _mm512_set1_epi8(3);
        let y = _mm512_set1_epi8(-2);
        for _ in 0..steps {
            for a in acc.iter_mut() {
                *a = _mm512_dpbusd_epi32(*a, w, y);
            }
            // Opaque each step (an empty asm on the register), so the chains cannot be folded.
            // SAFETY: the asm is empty.
            unsafe { asm!("/* {0} */", inout(zmm_reg) w, options(nomem, nostack)) };
        }
        acc.iter().map(|a| _mm512_reduce_add_epi32(*a) as f32).sum()
    }

    /// SAFETY: AVX-512 F/BW/BF16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn bf16(steps: usize) -> f32 {
        let mut acc = [_mm512_setzero_ps(); 12];
        let mut w = _mm512_castps_si512(_mm512_set1_ps(0.5));
        let y: __m512bh = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3), _mm512_set1_ps(1e-3));
        for _ in 0..steps {
            let wb: __m512bh = unsafe { std::mem::transmute(w) };
            for a in acc.iter_mut() {
                *a = _mm512_dpbf16_ps(*a, wb, y);
            }
            // SAFETY: the asm is empty.
            unsafe { asm!("/* {0} */", inout(zmm_reg) w, options(nomem, nostack)) };
        }
        acc.iter().map(|a| _mm512_reduce_add_ps(*a)).sum()
    }
}

/// The AVX-512 VNNI panel tiles (prefill and batched decode) as a product calls them, one
/// panel after another: SmolLM2-135M's hidden size (1,536 columns for the K-quants, whole
/// super-blocks), a matrix that stays in L2 (512 KiB) times
/// 1 to 16 tokens, and one of 64 MiB (streamed from memory) times 1 and 8 (batched decode).
/// Bytes are the weights read once per call.
fn panels(rng: &mut Rng) {
    use finllm::quant::gemm::{PanelFormat, Panels, PANEL_ROWS};
    if !Panels::fast() {
        return;
    }
    for dtype in [
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q8_0,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
    ] {
        let format = PanelFormat::of(dtype).expect("a panel format");
        let block = usize::try_from(dtype.block_size()).expect("small");
        let cols = if block == QK { 576 } else { 1536 };
        let row_bytes = cols / block * block_bytes(dtype);
        for (label, bytes, counts) in [
            ("L2", 512 << 10, &[1usize, 2, 4, 6, 8, 12, 16][..]),
            ("streamed", 64 << 20, &[1, 8][..]),
        ] {
            let rows = bytes / row_bytes / PANEL_ROWS * PANEL_ROWS;
            let file = masked_file(rng, rows * row_bytes);
            let m = Panels::from_blocks(format, &file, rows, cols).expect("whole blocks");
            for &n in counts {
                let x: Vec<f32> = (0..n * cols).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
                let a = panel_activations(format, &x);
                let reps = (256 << 20) / (rows * cols * n) + 1;
                // One walk over a range of panels, `reps` times; the sink keeps the work live.
                let run = |range: std::ops::Range<usize>| {
                    let mut out = vec![vec![0f32; PANEL_ROWS]; n];
                    let mut sink = 0f32;
                    for _ in 0..reps {
                        for p in range.clone() {
                            let mut views: Vec<&mut [f32]> = out.iter_mut().map(|o| &mut o[..]).collect();
                            m.panel_times(p, &a, &mut views);
                            sink += out[0][0];
                        }
                    }
                    sink
                };
                let (secs, sink) = best_of(|| run(0..rows / PANEL_ROWS));
                report(
                    dtype,
                    Isa::Avx512,
                    &format!("panels {n:2} tokens {label}"),
                    secs,
                    reps * file.len(),
                    reps * rows * cols * n,
                    sink,
                );
                if label != "streamed" {
                    continue;
                }
                // Two threads, each over half the panels (as a product's tasks split them),
                // sharing the memory bus.
                let half = rows / PANEL_ROWS / 2;
                let (secs, sink) = best_of(|| {
                    std::thread::scope(|s| {
                        let other = s.spawn(|| run(half..2 * half));
                        run(0..half) + other.join().expect("no panic")
                    })
                });
                report(
                    dtype,
                    Isa::Avx512,
                    &format!("panels {n:2} tokens {label} 2 thr"),
                    secs,
                    reps * 2 * half * PANEL_ROWS * row_bytes,
                    reps * 2 * half * PANEL_ROWS * cols * n,
                    sink,
                );
            }
        }
    }
}

/// `len` random bytes of a block-format file, masked to keep every f16 scale finite.
fn masked_file(rng: &mut Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next_u64() as u8 & 0x77).collect()
}

/// Tokens of activations `x` (whole rows of the matrix's columns) in 8-bit blocks as the panels
/// of `format` take them: scaled per 256 values where the format has super-blocks.
fn panel_activations(format: finllm::quant::gemm::PanelFormat, x: &[f32]) -> Vec<BlockQ8> {
    let mut a = vec![BlockQ8::default(); x.len() / QK];
    if format.supers() {
        quantize_q8_k(x, &mut a);
    } else {
        quantize_q8(x, &mut a);
    }
    a
}

/// The decode attention kernels over an f16 cache as the model calls them (SmolLM2-135M's
/// shape: three KV heads of 64 values, three query heads each), on the ISA the dispatcher
/// picks (`FINLLM_MAX_ISA` lowers it): per 64-row tile and KV head, the scores of its query
/// heads, then the weighted sums; one sequence of 256 positions (in L2) and 64 MiB of rows
/// (streamed). Bytes are the keys (or values) read; a multiply-add per query head and value.
fn attention(rng: &mut Rng) {
    use finllm::quant::vector::KvElem;
    use half::f16;
    const D: usize = 64;
    const GROUP: usize = 3;
    const KV_HEADS: usize = 3;
    const TILE: usize = 64;
    let kv_dim = D * KV_HEADS;
    let q: Vec<f32> = (0..D * GROUP * KV_HEADS)
        .map(|_| (rng.next_f64() * 2.0 - 1.0) as f32)
        .collect();
    let isa = Isa::detect();
    for (label, positions) in [
        ("L2 256 positions", 256),
        ("streamed 64 MiB", (64 << 20) / (2 * kv_dim)),
    ] {
        let rows: Vec<f16> = (0..positions * kv_dim)
            .map(|_| f16::from_f64(rng.next_f64() * 2.0 - 1.0))
            .collect();
        let bytes = rows.len() * 2;
        let reps = (64 << 20) / bytes + 1;
        let mut probs = vec![0f32; GROUP * KV_HEADS * positions];
        let (secs, sink) = best_of(|| {
            for _ in 0..reps {
                for tile in (0..positions).step_by(TILE) {
                    let n = (positions - tile).min(TILE);
                    for j in 0..KV_HEADS {
                        f16::scores_heads(
                            &q[j * GROUP * D..][..GROUP * D],
                            D,
                            &rows[tile * kv_dim + j * D..],
                            kv_dim,
                            0.125,
                            &mut probs[j * GROUP * positions + tile..],
                            positions,
                            n,
                            if j == 0 { kv_dim } else { D },
                        );
                    }
                }
            }
            probs.iter().sum()
        });
        let macs = reps * positions * KV_HEADS * GROUP * D;
        report(
            QuantType::F16,
            isa,
            &format!("attention scores {label}"),
            secs,
            reps * bytes / 2,
            macs,
            sink,
        );
        let p: Vec<f32> = probs.iter().map(|v| v.abs() / positions as f32).collect();
        let mut out = vec![0f32; GROUP * KV_HEADS * D];
        let (secs, sink) = best_of(|| {
            out.fill(0.0);
            for _ in 0..reps {
                for tile in (0..positions).step_by(TILE) {
                    let n = (positions - tile).min(TILE);
                    for j in 0..KV_HEADS {
                        f16::weighted_sum_heads(
                            &p[j * GROUP * positions + tile..],
                            positions,
                            n,
                            &rows[tile * kv_dim + j * D..],
                            kv_dim,
                            &mut out[j * GROUP * D..][..GROUP * D],
                            D,
                            if j == 0 { kv_dim } else { D },
                        );
                    }
                }
            }
            out.iter().sum()
        });
        report(
            QuantType::F16,
            isa,
            &format!("attention sums {label}"),
            secs,
            reps * bytes / 2,
            macs,
            sink,
        );
    }
}

/// The ISAs with their own one-row kernels: on AVX-512 the one-row kernels are the AVX2 ones
/// (the formats the models use run on the super-block tiles there).
fn one_row_isas() -> Vec<Isa> {
    Isa::available().into_iter().filter(|&isa| isa != Isa::Avx512).collect()
}

/// The widest ISA with super-block tiles for `dtype`, and its kernels.
fn widest_super_kernels(dtype: QuantType) -> Option<(Isa, SuperKernels)> {
    Isa::available()
        .into_iter()
        .rev()
        .find_map(|isa| super_kernels(dtype, isa).map(|k| (isa, k)))
}

/// `tokens` tokens of `cols` random activations in [-1, 1), as the tiles read them.
fn random_supers(rng: &mut Rng, tokens: usize, cols: usize) -> Vec<SuperQ8> {
    let blocks = cols / QK;
    (0..tokens)
        .flat_map(|_| {
            let x: Vec<f32> = (0..cols).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
            let mut a = vec![BlockQ8::default(); blocks];
            quantize_q8(&x, &mut a);
            let mut s = vec![SuperQ8::default(); blocks.div_ceil(SUBS)];
            supers_from_blocks(&a, &mut s);
            s
        })
        .collect()
}

/// `rows` random rows of `cols` values in `dtype`, packed for the tiles `k`.
fn random_packed_rows(rng: &mut Rng, dtype: QuantType, k: &SuperKernels, rows: usize, cols: usize) -> Vec<u8> {
    let block = usize::try_from(dtype.block_size()).expect("small");
    let file_row = cols / block * block_bytes(dtype);
    let row_bytes = (k.packing.row_bytes)(cols / block);
    let file = masked_file(rng, rows * file_row);
    let mut data = vec![0u8; rows * row_bytes];
    for (src, dst) in file.chunks_exact(file_row).zip(data.chunks_exact_mut(row_bytes)) {
        (k.packing.pack_row)(src, dst);
    }
    data
}

/// The super-block tiles of `dtype` on the widest ISA that has them for it (AVX2: on AVX-512
/// their formats run on panels), as the model calls them: a whole
/// matrix per call, one token (decode) in L2 and streamed, 64 tokens (prefill) in L2; rows
/// packed first where the format's tile reads its own layout.
fn super_tiles(dtype: QuantType, rng: &mut Rng) {
    let Some((isa, k)) = widest_super_kernels(dtype) else {
        return;
    };
    let block = usize::try_from(dtype.block_size()).expect("small");
    let cols = if block == QK { 576 } else { 1536 };
    let row_bytes = (k.packing.row_bytes)(cols / block);
    let tokens = 64;
    let acts = random_supers(rng, tokens, cols);
    let per_token = (cols / QK).div_ceil(SUBS);
    for (label, rows, n) in [
        ("1 token, L2 512 KiB", (512 << 10) / row_bytes, 1),
        ("1 token, streamed 64 MiB", (64 << 20) / row_bytes, 1),
        ("64 tokens, L2 512 KiB", (512 << 10) / row_bytes, tokens),
    ] {
        let data = random_packed_rows(rng, dtype, &k, rows, cols);
        let reps = (64 << 20) / data.len() / n + 1;
        let mut out = vec![vec![0f32; rows]; n];
        let (secs, sink) = best_of(|| {
            let mut sink = 0f32;
            for _ in 0..reps {
                let mut views: Vec<&mut [f32]> = out.iter_mut().map(|o| &mut o[..]).collect();
                (k.tile)(&data, row_bytes, &acts[..n * per_token], &mut views);
                sink += out.iter().map(|o| o[0]).sum::<f32>();
            }
            sink
        });
        report(
            dtype,
            isa,
            &format!("tiles {label}"),
            secs,
            reps * data.len(),
            reps * rows * n * cols,
            sink,
        );
    }
}

/// A decode step's stream: a lone token through 128 MiB of 2,048 x 2,048 matrices (Q4_0, Q4_1,
/// Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) in turn, four times, on the AVX-512 panels and on the AVX2
/// tiles (both in memory advised for 2 MiB pages). Far past any L3, unlike the 64 MiB matrices
/// above, whose repeats can find part of themselves there. Only with `-- sequence` (it takes a
/// while to lay out). Bytes are the file's.
fn sequence(rng: &mut Rng) {
    use finllm::quant::gemm::{PanelFormat, Panels, PANEL_ROWS};
    use finllm::util::HugeArray;
    let (rows, cols, passes) = (2048usize, 2048usize, 4);
    for dtype in [
        QuantType::Q4_0,
        QuantType::Q4_1,
        QuantType::Q5_1,
        QuantType::Q8_0,
        QuantType::Q4K,
        QuantType::Q5K,
        QuantType::Q6K,
    ] {
        let block = usize::try_from(dtype.block_size()).expect("small");
        let row_bytes = cols / block * block_bytes(dtype);
        let count = (128 << 20) / (rows * row_bytes);
        let (bytes, macs) = (passes * count * rows * row_bytes, passes * count * rows * cols);
        let x: Vec<f32> = (0..cols).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
        if let (Some(format), true) = (PanelFormat::of(dtype), Panels::fast()) {
            let mats: Vec<Panels> = (0..count)
                .map(|_| {
                    Panels::from_blocks(format, &masked_file(rng, rows * row_bytes), rows, cols).expect("whole blocks")
                })
                .collect();
            let a = panel_activations(format, &x);
            let (secs, sink) = best_of(|| {
                let mut out = [0f32; PANEL_ROWS];
                let mut sink = 0f32;
                for _ in 0..passes {
                    for m in &mats {
                        for p in 0..rows / PANEL_ROWS {
                            m.panel_times(p, &a, &mut [&mut out[..]]);
                            sink += out[0];
                        }
                    }
                }
                sink
            });
            report(
                dtype,
                Isa::Avx512,
                &format!("panels 1 token, {count} matrices"),
                secs,
                bytes,
                macs,
                sink,
            );
        }
        if let Some(k) = super_kernels(dtype, Isa::Avx2) {
            let packed_row = (k.packing.row_bytes)(cols / block);
            let mats: Vec<HugeArray<u8>> = (0..count)
                .map(|_| {
                    let rows_bytes = random_packed_rows(rng, dtype, &k, rows, cols);
                    let mut m = HugeArray::<u8>::zeroed(rows_bytes.len()).expect("memory");
                    m.copy_from_slice(&rows_bytes);
                    m
                })
                .collect();
            let acts = random_supers(rng, 1, cols);
            let (secs, sink) = best_of(|| {
                let mut out = [0f32; TASK_ROWS];
                let mut sink = 0f32;
                for _ in 0..passes {
                    for m in &mats {
                        // Tasks of TASK_ROWS rows, as a product hands them out.
                        for task in m.chunks(TASK_ROWS * packed_row) {
                            (k.tile)(task, packed_row, &acts, &mut [&mut out[..]]);
                            sink += out[0];
                        }
                    }
                }
                sink
            });
            report(
                dtype,
                Isa::Avx2,
                &format!("tiles 1 token, {count} matrices"),
                secs,
                bytes,
                macs,
                sink,
            );
        }
    }
}

/// The float kernels of `dtype` on rows of SmolLM2's hidden size.
fn float_format(dtype: QuantType, rng: &mut Rng) {
    let cols = 576;
    let row_bytes = cols * usize::try_from(dtype.block_bytes()).expect("small");
    let xs: Vec<Vec<f32>> = (0..4)
        .map(|_| (0..cols).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect())
        .collect();
    for (label, rows) in [
        ("L2 512 KiB", (512 << 10) / row_bytes),
        ("streamed 64 MiB", (64 << 20) / row_bytes),
    ] {
        // Finite values of every format: small f32s, then their top or bottom halves.
        let data: Vec<u8> = (0..rows * cols)
            .flat_map(|_| {
                let v = (rng.next_f64() * 2.0 - 1.0) as f32;
                match dtype {
                    QuantType::F32 => v.to_le_bytes().to_vec(),
                    QuantType::F16 => half::f16::from_f32(v).to_le_bytes().to_vec(),
                    _ => half::bf16::from_f32(v).to_le_bytes().to_vec(),
                }
            })
            .collect();
        let reps = (64 << 20) / data.len() + 1;
        for isa in Isa::available() {
            let k = float_kernels(dtype, isa).expect("a float format");
            let (secs, sink) = best_of(|| {
                let mut sink = 0f32;
                for _ in 0..reps {
                    for r in data.chunks_exact(row_bytes) {
                        sink += (k.dot)(r, &xs[0]);
                    }
                }
                sink
            });
            report(
                dtype,
                isa,
                &format!("1x1 {label}"),
                secs,
                reps * data.len(),
                reps * rows * cols,
                sink,
            );
            // Four rows by one token (decode takes `decode_rows`, one: the "1x1" line), then the
            // ISA's prefill tile and others beside it.
            let mut shapes = vec![(4, 1)];
            if label == "L2 512 KiB" {
                let own = (k.tile_rows, k.tile_tokens);
                shapes.push(own);
                shapes.extend([(2, 4), (4, 2), (4, 3), (4, 4)].into_iter().filter(|s| *s != own));
            }
            for (tr, tt) in shapes {
                let x_refs: Vec<&[f32]> = xs[..tt].iter().map(Vec::as_slice).collect();
                let (secs, sink) = time_tiles(k.tile, &data, row_bytes, tr, &x_refs, reps);
                let macs = reps * rows / tr * tr * tt * cols;
                report(
                    dtype,
                    isa,
                    &format!("{tr}x{tt} {label}"),
                    secs,
                    reps * data.len(),
                    macs,
                    sink,
                );
            }
        }
    }
}

/// The AVX-512 BF16 dot-product kernels (bf16 weights, activations rounded to bf16) on rows of
/// a 1B model's hidden size (2,048 values): one row by one token as decode calls it, in L2 and
/// streamed from memory, and the prefill tile in L2 (with the shapes beside it that fit 24
/// accumulators, for a design with two a pair).
fn bf16_dot(dtype: QuantType, rng: &mut Rng) {
    let Some(k) = bf16_dot_kernels(dtype, Isa::detect()) else {
        return;
    };
    let cols = 2048;
    let row_bytes = 2 * cols;
    let xs: Vec<Vec<u16>> = (0..MAX_TILE_TOKENS)
        .map(|_| {
            let x: Vec<f32> = (0..cols).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
            let mut b = vec![0u16; cols];
            round_to_bf16(&x, &mut b);
            b
        })
        .collect();
    let own = (k.tile_rows, k.tile_tokens);
    let others = [(4, 4), (4, 3), (3, 4)].into_iter().filter(|s| *s != own);
    let tiles = std::iter::once(own).chain(others).map(|s| ("L2 512 KiB", 512 << 10, s));
    let lone = [("L2 512 KiB", 512 << 10, (1, 1)), ("streamed 64 MiB", 64 << 20, (1, 1))];
    for (label, bytes, shape) in lone.into_iter().chain(tiles) {
        let rows = bytes / row_bytes;
        let data: Vec<u8> = (0..rows * cols)
            .flat_map(|_| half::bf16::from_f32((rng.next_f64() * 2.0 - 1.0) as f32).to_le_bytes())
            .collect();
        let (tr, tt) = shape;
        let x_refs: Vec<&[u16]> = xs[..tt].iter().map(Vec::as_slice).collect();
        let reps = (64 << 20) / data.len() + 1;
        let (secs, sink) = time_tiles(k.tile, &data, row_bytes, tr, &x_refs, reps);
        // Whole tiles only: a 3-row shape leaves the last rows out.
        let covered = rows - rows % tr;
        report(
            dtype,
            Isa::detect(),
            &format!("bf16 dot {tr}x{tt} {label}"),
            secs,
            reps * covered * row_bytes,
            reps * covered * tt * cols,
            sink,
        );
    }
}

/// [`best_of`] `reps` walks over `data` (rows of `row_bytes`) in tiles of `tr` rows by the
/// tokens `xs`, by a float tile kernel.
fn time_tiles<A>(
    tile: FloatTileFn<A>,
    data: &[u8],
    row_bytes: usize,
    tr: usize,
    xs: &[&[A]],
    reps: usize,
) -> (f64, f32) {
    let mut out = vec![0f32; tr * xs.len()];
    best_of(|| {
        let mut sink = 0f32;
        for _ in 0..reps {
            for r in data.chunks_exact(tr * row_bytes) {
                let mut w: [&[u8]; MAX_TILE_ROWS] = [&[]; MAX_TILE_ROWS];
                for (slot, row) in w.iter_mut().zip(r.chunks_exact(row_bytes)) {
                    *slot = row;
                }
                tile(&w[..tr], xs, &mut out);
                sink += out.iter().sum::<f32>();
            }
        }
        sink
    })
}

/// Seconds of the fastest of [`PASSES`] runs of `pass`, and its result.
fn best_of(mut pass: impl FnMut() -> f32) -> (f64, f32) {
    let mut best = (f64::MAX, 0f32);
    for _ in 0..PASSES {
        let start = Instant::now();
        let sink = std::hint::black_box(pass());
        let secs = start.elapsed().as_secs_f64();
        if secs < best.0 {
            best = (secs, sink);
        }
    }
    best
}

fn report(dtype: QuantType, isa: Isa, label: &str, secs: f64, bytes: usize, macs: usize, sink: f32) {
    let gbs = bytes as f64 / secs / 1e9;
    let gmacs = macs as f64 / secs / 1e9;
    println!(
        "{:5} {:6} {label:32}: {gbs:6.2} GB/s, {gmacs:6.2} GMAC/s (sink {sink:.1})",
        dtype.name(),
        format!("{isa:?}")
    );
}

/// The super-block tiles as a prefill pass calls them: 16-row tasks (the matrix products' unit
/// of work), on SmolLM2's 576-value rows (the block formats) and 2,048-value rows with 256
/// tokens and on 8,192-value rows (a down projection of a 1B model) with 64, the widest ISA
/// that has the tile. The long rows run the same speed only if a task's runs of groups keep
/// their activations in L1.
fn prefill_tasks(dtype: QuantType, rng: &mut Rng) {
    let Some((isa, k)) = widest_super_kernels(dtype) else {
        return;
    };
    let block = usize::try_from(dtype.block_size()).expect("small");
    for (cols, n, rows) in [(576usize, 256usize, 1536usize), (2048, 256, 512), (8192, 64, 256)] {
        if cols % block != 0 {
            // 576 values are not whole K-quant super-blocks (llama.cpp's quantizer gives such
            // rows another format).
            continue;
        }
        let row_bytes = (k.packing.row_bytes)(cols / block);
        let acts = random_supers(rng, n, cols);
        let data = random_packed_rows(rng, dtype, &k, rows, cols);
        let mut out = vec![vec![0f32; TASK_ROWS]; n];
        let (secs, sink) = best_of(|| {
            let mut sink = 0f32;
            for task in data.chunks_exact(TASK_ROWS * row_bytes) {
                let mut views: Vec<&mut [f32]> = out.iter_mut().map(|o| &mut o[..]).collect();
                (k.tile)(task, row_bytes, &acts, &mut views);
                sink += out[0][0];
            }
            sink
        });
        let label = format!("tiles {n} tokens, 16-row tasks, {cols} inputs");
        report(dtype, isa, &label, secs, data.len(), rows * n * cols, sink);
    }
}

/// AVX2's pair kernels for bf16 and f16 as a prefill pass calls them: 16-row tasks of
/// 2,048-value rows (512 KiB of weights, in L2) times 256 tokens, the tile the matrices use and
/// shapes beside it.
fn pair_tasks(dtype: QuantType, rng: &mut Rng) {
    let Some(k) = pair_kernels(dtype, Isa::Avx2).filter(|_| Isa::available().contains(&Isa::Avx2)) else {
        return;
    };
    let (cols, n, rows) = (2048usize, 256usize, 128usize);
    let row_bytes = 2 * cols;
    let data: Vec<u8> = (0..rows * cols)
        .flat_map(|_| {
            let v = (rng.next_f64() * 2.0 - 1.0) as f32;
            match dtype {
                QuantType::F16 => half::f16::from_f32(v).to_le_bytes(),
                _ => half::bf16::from_f32(v).to_le_bytes(),
            }
        })
        .collect();
    let per = input_len(dtype, cols);
    let xs: Vec<Vec<f32>> = (0..n)
        .map(|_| (0..per).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect())
        .collect();
    let own = (k.tile_rows, k.tile_tokens);
    let others = [(3, 3), (2, 3), (3, 2), (2, 2), (4, 2), (2, 4), (4, 3), (3, 4)];
    for (tr, tt) in std::iter::once(own).chain(others.into_iter().filter(|s| *s != own)) {
        let mut out = vec![0f32; tr * tt];
        let (secs, sink) = best_of(|| {
            let mut sink = 0f32;
            for task in data.chunks_exact(TASK_ROWS * row_bytes) {
                for t0 in (0..n - n % tt).step_by(tt) {
                    // Fixed arrays, as the matrices' walk holds them: no allocation per call.
                    let x: [&[f32]; MAX_TILE_TOKENS] = std::array::from_fn(|j| xs[t0 + j.min(tt - 1)].as_slice());
                    for i0 in (0..TASK_ROWS).step_by(tr) {
                        let rn = tr.min(TASK_ROWS - i0);
                        let ws: [&[u8]; MAX_TILE_ROWS] =
                            std::array::from_fn(|j| &task[(i0 + j.min(rn - 1)) * row_bytes..][..row_bytes]);
                        (k.tile)(&ws[..rn], &x[..tt], &mut out[..rn * tt]);
                        sink += out[0];
                    }
                }
            }
            sink
        });
        let macs = rows * (n - n % tt) * cols;
        let label = format!("pair {tr}x{tt}, 16-row tasks, {n} tokens");
        report(dtype, Isa::Avx2, &label, secs, data.len(), macs, sink);
    }
}
