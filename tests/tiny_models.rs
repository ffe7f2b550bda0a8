//! Tiny random-weight models of every architecture, written as GGUF and safetensors by the
//! tests, loaded through the real loaders and checked against a float64 oracle and against
//! mathematical properties of the forward pass.

mod common;
#[path = "common/oracle.rs"]
mod oracle;

use std::path::{Path, PathBuf};

use finllm::device::Device;
use finllm::model::{Backend, ForwardOptions, GgufFile, KvCache, KvPrecision, SeqInput, Transformer};
use finllm::quant::QuantType;
use finllm::tools::synthetic::SyntheticSpec;
use finllm::{Architecture, ChatMessage, Error, FinishReason, GenerateParams, LoadOptions, Model, SamplingParams};

const ARCHS: [Architecture; 4] = [
    Architecture::Llama,
    Architecture::Qwen2,
    Architecture::Qwen3,
    Architecture::Gemma3,
];
/// Longer than the synthetic Gemma 3 sliding window (16), so the window matters.
const SEQ: [u32; 24] = [
    5, 77, 260, 101, 32, 116, 104, 101, 32, 114, 97, 116, 101, 258, 44, 32, 49, 50, 37, 32, 121, 111, 121, 46,
];

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("finllm-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn write_gguf(spec: &SyntheticSpec, quant: QuantType) -> PathBuf {
    let path = tmp(&format!("{}-{}-{}.gguf", spec.arch.name(), quant, spec.seed));
    spec.write_gguf(&path, quant).unwrap();
    path
}

fn load_transformer(path: &Path) -> Transformer {
    Transformer::from_gguf(&std::sync::Arc::new(GgufFile::open(path).unwrap())).unwrap()
}

/// All-position logits for `tokens` from an empty cache.
fn all_logits(t: &Transformer, tokens: &[u32], precision: KvPrecision) -> Vec<Vec<f32>> {
    let mut cache = t.new_cache_with(precision);
    let opts = ForwardOptions {
        all_logits: true,
        ..Default::default()
    };
    let out = t
        .forward_batch(
            &mut [SeqInput {
                tokens,
                cache: &mut cache,
            }],
            &opts,
        )
        .unwrap();
    out[0].logits.to_vec2::<f32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn every_architecture_matches_the_f64_oracle() {
    for arch in ARCHS {
        let spec = SyntheticSpec::tiny(arch, 11);
        let t = load_transformer(&write_gguf(&spec, QuantType::F32));
        let ours = all_logits(&t, &SEQ, KvPrecision::F32);
        let want = oracle::logits(&spec, &spec.weights().unwrap(), &SEQ, 16);
        let worst = ours
            .iter()
            .zip(&want)
            .map(|(a, b)| max_abs_diff(a, b))
            .fold(0.0, f64::max);
        let scale = want.iter().flatten().map(|v| v.abs()).fold(0.0, f64::max);
        eprintln!("{arch:?}: max |diff| {worst:.2e} (logit scale {scale:.2})");
        assert!(scale > 0.5, "{arch:?}: degenerate logits");
        assert!(worst < 1e-3, "{arch:?}: max |diff| {worst}");
    }
}

#[test]
fn quantized_weights_track_the_oracle() {
    // Quantization error grows as bits shrink; every format must load and stay correlated.
    let spec = SyntheticSpec {
        hidden: 256,
        head_dim: 64,
        ffn: 512,
        ..SyntheticSpec::tiny(Architecture::Llama, 3)
    };
    let want = oracle::logits(&spec, &spec.weights().unwrap(), &SEQ[..8], 16);
    let want: Vec<f64> = want.into_iter().flatten().collect();
    for (quant, min_corr) in [
        (QuantType::F16, 0.9999),
        (QuantType::BF16, 0.999),
        (QuantType::Q8_0, 0.999),
        (QuantType::Q6K, 0.995),
        (QuantType::Q5_0, 0.99),
        (QuantType::Q5_1, 0.99),
        (QuantType::Q5K, 0.99),
        (QuantType::Q4_0, 0.97),
        (QuantType::Q4_1, 0.97),
        (QuantType::Q4K, 0.97),
        (QuantType::Q3K, 0.85),
        (QuantType::Q2K, 0.5),
    ] {
        let t = load_transformer(&write_gguf(&spec, quant));
        let ours: Vec<f64> = all_logits(&t, &SEQ[..8], KvPrecision::F32)
            .into_iter()
            .flatten()
            .map(f64::from)
            .collect();
        let corr = correlation(&ours, &want);
        eprintln!("{quant}: correlation with f64 oracle {corr:.5}");
        assert!(corr >= min_corr, "{quant}: correlation {corr} < {min_corr}");
    }
}

fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

#[test]
fn incremental_decoding_equals_a_full_pass() {
    for arch in ARCHS {
        let t = load_transformer(&write_gguf(&SyntheticSpec::tiny(arch, 5), QuantType::F32));
        let full = all_logits(&t, &SEQ, KvPrecision::F32);
        let mut cache = t.new_cache_with(KvPrecision::F32);
        // A prefill of 10 then one token at a time.
        let mut last = t.forward(&SEQ[..10], &mut cache).unwrap();
        assert_eq!(cache.len(), 10);
        for (i, &tok) in SEQ.iter().enumerate().skip(10) {
            let diff = last
                .iter()
                .zip(&full[i - 1])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-4, "{arch:?} position {i}: {diff}");
            last = t.forward(&[tok], &mut cache).unwrap();
        }
        let diff = last
            .iter()
            .zip(&full[SEQ.len() - 1])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "{arch:?} last position: {diff}");
    }
}

#[test]
fn batched_forward_equals_separate_calls() {
    for arch in ARCHS {
        let t = load_transformer(&write_gguf(&SyntheticSpec::tiny(arch, 9), QuantType::Q8_0));
        // Three sequences: different cached prefixes, different numbers of new tokens.
        let prefixes: [&[u32]; 3] = [&SEQ[..3], &SEQ[5..20], &SEQ[2..3]];
        let news: [&[u32]; 3] = [&SEQ[10..15], &SEQ[20..21], &SEQ[..9]];
        let mut separate = Vec::new();
        for (p, n) in prefixes.iter().zip(&news) {
            let mut c = t.new_cache_with(KvPrecision::F32);
            t.forward(p, &mut c).unwrap();
            separate.push(t.forward(n, &mut c).unwrap());
        }
        let mut caches: Vec<_> = prefixes
            .iter()
            .map(|p| {
                let mut c = t.new_cache_with(KvPrecision::F32);
                t.forward(p, &mut c).unwrap();
                c
            })
            .collect();
        let mut inputs: Vec<SeqInput> = caches
            .iter_mut()
            .zip(&news)
            .map(|(cache, tokens)| SeqInput { tokens, cache })
            .collect();
        let opts = ForwardOptions {
            attentions: true,
            hidden_states: true,
            ..Default::default()
        };
        let out = t.forward_batch(&mut inputs, &opts).unwrap();
        for (s, o) in out.iter().enumerate() {
            let batched = o.logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let diff = batched
                .iter()
                .zip(&separate[s])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(diff < 1e-4, "{arch:?} seq {s}: {diff}");
            let (past, new) = (prefixes[s].len(), news[s].len());
            assert_eq!(o.hidden_states.len(), t.config().n_layers + 1);
            assert_eq!(o.hidden_states[0].dims(), &[new, t.config().hidden_size]);
            assert_eq!(o.attentions.len(), t.config().n_layers);
            for probs in &o.attentions {
                assert_eq!(probs.dims(), &[t.config().n_heads, new, past + new]);
                let p = probs.to_vec3::<f32>().unwrap();
                for head in &p {
                    for (j, row) in head.iter().enumerate() {
                        let sum: f32 = row.iter().sum();
                        assert!((sum - 1.0).abs() < 1e-4, "attention row sums to {sum}");
                        // Causal: nothing after the query's own position.
                        assert!(row[past + j + 1..].iter().all(|&v| v == 0.0));
                    }
                }
            }
        }
    }
}

/// All-position logits of one forward call over `caches` with `tokens` each; asking for
/// attentions keeps the call on the general path.
fn batch_logits(t: &Transformer, caches: &mut [KvCache], tokens: &[&[u32]], attentions: bool) -> Vec<Vec<Vec<f32>>> {
    let mut inputs: Vec<SeqInput> = caches
        .iter_mut()
        .zip(tokens)
        .map(|(cache, tokens)| SeqInput { tokens, cache })
        .collect();
    let opts = ForwardOptions {
        all_logits: true,
        attentions,
        ..Default::default()
    };
    t.forward_batch(&mut inputs, &opts)
        .unwrap()
        .iter()
        .map(|o| o.logits.to_vec2::<f32>().unwrap())
        .collect()
}

/// A long prefill walks the cache in blocks of tokens and tiles of positions; one token at a
/// time walks it whole, head by head. Both must give the same bits for every architecture
/// (Gemma 3's 16-position sliding window included, narrower than a tile), f16 and f32 caches,
/// after a shared prefix whose end falls inside a tile, and with two sequences in one call.
#[test]
fn long_prefills_in_tiles_equal_one_token_at_a_time() {
    let prompt: Vec<u32> = (0..230).map(|i| SEQ[(i * 7 + i / 5) % SEQ.len()]).collect();
    let (split, cut) = (37, 200);
    for arch in ARCHS {
        let t = load_transformer(&write_gguf(&SyntheticSpec::tiny(arch, 29), QuantType::Q8_0));
        for precision in [KvPrecision::F16, KvPrecision::F32] {
            // One token at a time: every position's logits.
            let mut cache = t.new_cache_with(precision);
            let stepwise: Vec<Vec<f32>> = prompt
                .iter()
                .map(|&tok| t.forward(&[tok], &mut cache).unwrap())
                .collect();
            let opts = ForwardOptions {
                all_logits: true,
                ..Default::default()
            };
            let rows = |out: &[finllm::model::SeqOutput]| out[0].logits.to_vec2::<f32>().unwrap();
            // The prefix frozen and shared, the rest in one call.
            let mut prefix = t.new_cache_with(precision);
            t.forward(&prompt[..split], &mut prefix).unwrap();
            let mut after = t.cache_after_prefix(std::sync::Arc::new(prefix), 0).unwrap();
            let tiled = rows(
                &t.forward_batch(
                    &mut [SeqInput {
                        tokens: &prompt[split..cut],
                        cache: &mut after,
                    }],
                    &opts,
                )
                .unwrap(),
            );
            for (i, got) in tiled.iter().enumerate() {
                assert_eq!(
                    got,
                    &stepwise[split + i],
                    "{arch:?} {precision:?} position {}",
                    split + i
                );
            }
            // Two sequences in one call: each equals its own stepwise logits (the second is
            // the same prompt from position 0).
            let mut fresh = t.new_cache_with(precision);
            let out = t
                .forward_batch(
                    &mut [
                        SeqInput {
                            tokens: &prompt[cut..],
                            cache: &mut after,
                        },
                        SeqInput {
                            tokens: &prompt[..100],
                            cache: &mut fresh,
                        },
                    ],
                    &opts,
                )
                .unwrap();
            let (a, b) = (
                out[0].logits.to_vec2::<f32>().unwrap(),
                out[1].logits.to_vec2::<f32>().unwrap(),
            );
            for (i, got) in a.iter().enumerate() {
                assert_eq!(
                    got,
                    &stepwise[cut + i],
                    "{arch:?} {precision:?} first sequence, position {}",
                    cut + i
                );
            }
            for (i, got) in b.iter().enumerate() {
                assert_eq!(
                    got, &stepwise[i],
                    "{arch:?} {precision:?} second sequence, position {i}"
                );
            }
        }
    }
}

#[test]
fn host_path_equals_the_general_path() {
    // Float weights (f32 kernels) and block formats (8-bit activations); both cache precisions;
    // three sequences at different positions (one past the Gemma 3 sliding window), first with
    // several new tokens each (all logits; such calls take the general path too, so this step
    // checks that mixing the paths on one cache is seamless), then single-token steps.
    for arch in ARCHS {
        for quant in [QuantType::F32, QuantType::Q8_0, QuantType::Q4_0] {
            let t = load_transformer(&write_gguf(&SyntheticSpec::tiny(arch, 13), quant));
            for precision in [KvPrecision::F32, KvPrecision::F16] {
                let prefixes: [&[u32]; 3] = [&SEQ[..1], &SEQ[3..20], &SEQ[..7]];
                let mut fast: Vec<_> = prefixes
                    .iter()
                    .map(|p| {
                        let mut c = t.new_cache_with(precision);
                        t.forward(p, &mut c).unwrap();
                        c
                    })
                    .collect();
                let mut general = fast.clone();
                let chunks: [&[u32]; 3] = [&SEQ[5..8], &SEQ[20..21], &SEQ[9..14]];
                for step in 0..4 {
                    let singles: Vec<[u32; 1]> = (0..3).map(|s| [SEQ[(5 * s + step) % SEQ.len()]]).collect();
                    let tokens: Vec<&[u32]> = if step == 0 {
                        chunks.to_vec()
                    } else {
                        singles.iter().map(|t| &t[..]).collect()
                    };
                    let got = batch_logits(&t, &mut fast, &tokens, false);
                    let want = batch_logits(&t, &mut general, &tokens, true);
                    for (s, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(g.len(), tokens[s].len());
                        assert_eq!(g[0].len(), t.config().vocab_size);
                        // Attention sums in a different order (candle's gemm against our
                        // kernels); with quantized weights a last-bit difference can also flip
                        // the 8-bit rounding of an activation downstream. Relative to the logits.
                        let scale = w.iter().flatten().fold(1f32, |m, v| m.max(v.abs()));
                        let tol = if quant == QuantType::F32 { 1e-4 } else { 2e-2 } * scale;
                        let diff = max_diff(g, w);
                        assert!(diff < tol, "{arch:?} {quant} {precision:?} step {step} seq {s}: {diff}");
                    }
                }
                for (f, g) in fast.iter().zip(&general) {
                    assert_eq!(f.len(), g.len());
                    assert_eq!(f.size_bytes(), g.size_bytes());
                }
            }
        }
    }
}

/// Largest |a - b| over two sets of logit rows.
fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn candle_backend_matches_the_kernels() {
    // The code CUDA runs (candle tensors, quantized matmuls, a tensor KV cache), here on the CPU
    // against finllm's kernels, for the formats the GPU checks cover.
    for arch in ARCHS {
        for quant in [QuantType::F32, QuantType::F16, QuantType::Q8_0, QuantType::Q4_0] {
            let file = std::sync::Arc::new(GgufFile::open(write_gguf(&SyntheticSpec::tiny(arch, 17), quant)).unwrap());
            let kernels = Transformer::from_gguf(&file).unwrap();
            let candle = Transformer::from_gguf_on(&file, &Backend::Candle(Device::Cpu)).unwrap();
            let want = all_logits(&kernels, &SEQ, KvPrecision::F32);
            let got = all_logits(&candle, &SEQ, KvPrecision::F32);
            let scale = want.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
            // Float weights: only summation order differs. Quantized: both quantize the
            // activations to 8 bits, rounding a few values differently.
            let tol = if matches!(quant, QuantType::F32 | QuantType::F16) {
                1e-4
            } else {
                2e-2
            } * scale.max(1.0);
            let diff = max_diff(&got, &want);
            eprintln!("{arch:?} {quant}: candle vs kernels max |diff| {diff:.2e} (logits up to {scale:.1})");
            assert!(diff <= tol, "{arch:?} {quant}: {diff} > {tol}");

            // Its tensor cache: a prefill then single tokens give the full pass's logits (to the
            // same tolerance: candle quantizes one token's activations differently from many).
            let mut cache = candle.new_cache_with(KvPrecision::F32);
            let mut last = candle.forward(&SEQ[..10], &mut cache).unwrap();
            for (i, &tok) in SEQ.iter().enumerate().skip(10) {
                let d = last
                    .iter()
                    .zip(&got[i - 1])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(d <= tol, "{arch:?} {quant} position {i}: {d}");
                last = candle.forward(&[tok], &mut cache).unwrap();
            }
            assert_eq!(cache.len(), SEQ.len());
            cache.truncate(4).unwrap();
            assert_eq!(cache.len(), 4);
            let again = candle.forward(&SEQ[4..5], &mut cache).unwrap();
            let d = again
                .iter()
                .zip(&got[4])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d <= tol, "{arch:?} {quant} after truncate: {d}");

            // A cache of the other backend is refused, not misused.
            let mut host = kernels.new_cache();
            assert!(matches!(
                candle.forward(&SEQ[..2], &mut host),
                Err(Error::InvalidArgument { .. })
            ));
            let mut device = candle.new_cache();
            assert!(matches!(
                kernels.forward(&SEQ[..2], &mut device),
                Err(Error::InvalidArgument { .. })
            ));
        }
    }
}

#[test]
fn device_caches_grow_in_place_and_clones_keep_their_own_rows() {
    // The candle backend's cache (what CUDA runs) fills a preallocated buffer and doubles it when
    // full; clones share the buffer until one writes. Two clones fed different tokens past two
    // doublings must each give, bit for bit, what a cache of their own gives, and stay within the
    // tolerance of the kernels.
    let file = std::sync::Arc::new(
        GgufFile::open(write_gguf(
            &SyntheticSpec::tiny(Architecture::Llama, 29),
            QuantType::F32,
        ))
        .unwrap(),
    );
    let kernels = Transformer::from_gguf(&file).unwrap();
    let candle = Transformer::from_gguf_on(&file, &Backend::Candle(Device::Cpu)).unwrap();
    let a_tokens: Vec<u32> = (0..150).map(|i| SEQ[i % SEQ.len()]).collect();
    let mut b_tokens = a_tokens.clone();
    for t in b_tokens.iter_mut().skip(6) {
        *t = (*t * 7 + 3) % 250;
    }
    for precision in [KvPrecision::F32, KvPrecision::F16] {
        // Token by token on a cache of its own.
        let alone = |tokens: &[u32]| -> Vec<Vec<f32>> {
            let mut cache = candle.new_cache_with(precision);
            let mut out = vec![candle.forward(&tokens[..6], &mut cache).unwrap()];
            for &t in &tokens[6..] {
                out.push(candle.forward(&[t], &mut cache).unwrap());
            }
            out
        };
        let (want_a, want_b) = (alone(&a_tokens), alone(&b_tokens));
        let mut a = candle.new_cache_with(precision);
        let first = candle.forward(&a_tokens[..6], &mut a).unwrap();
        let mut b = a.clone();
        let (mut got_a, mut got_b) = (vec![first.clone()], vec![first]);
        for (&ta, &tb) in a_tokens[6..].iter().zip(&b_tokens[6..]) {
            got_a.push(candle.forward(&[ta], &mut a).unwrap());
            got_b.push(candle.forward(&[tb], &mut b).unwrap());
        }
        assert_eq!(got_a, want_a, "{precision:?}: the first clone");
        assert_eq!(got_b, want_b, "{precision:?}: the second clone");
        assert_ne!(got_a.last(), got_b.last());
        // Against the kernels (an independent implementation), on the f32 cache.
        if precision == KvPrecision::F32 {
            let full = all_logits(&kernels, &b_tokens, KvPrecision::F32);
            let scale = full.iter().flatten().fold(0f32, |m, v| m.max(v.abs()));
            let d = max_diff(&got_b[1..], &full[6..]);
            assert!(d <= 1e-4 * scale.max(1.0), "{d}");
        }
        // Cut back below the first doubling, then continue: the rows written after the cut
        // replace the old ones.
        b.truncate(40).unwrap();
        let again = candle.forward(&[b_tokens[40]], &mut b).unwrap();
        assert_eq!(again, want_b[40 - 5], "{precision:?}: after truncating");
        assert_eq!(b.len(), 41);
    }
}

/// Bytes of a synthetic model's projection and output matrices at `elem_bytes` per weight.
fn matrix_bytes(spec: &SyntheticSpec, elem_bytes: u64) -> u64 {
    let (h, q, kv, f) = (
        spec.hidden,
        spec.heads * spec.head_dim,
        spec.kv_heads * spec.head_dim,
        spec.ffn,
    );
    let per_layer = h * q + 2 * h * kv + q * h + 3 * h * f;
    (spec.layers * per_layer + spec.vocab * h) as u64 * elem_bytes
}

#[test]
fn float_weights_run_in_place_on_the_kernels_and_match_candle() {
    // f32, f16 and bf16 matrices, from GGUF and from safetensors, tied output (Llama, Qwen3,
    // Gemma 3) or not (Qwen2): finllm's float kernels read them in place, and give the logits of
    // candle, which multiplies f32 copies. Only summation order differs, except for bf16 rows on
    // a CPU with a bf16 dot product: there the activations are rounded to bf16 (8 significant
    // bits, relative error up to 2^-9 per value, as llama.cpp does), and those errors pass
    // through every layer (measured 8e-3 of the largest logit on these tiny models).
    let check = |what: &str, spec: &SyntheticSpec, kernels: &Transformer, candle: &Transformer, dtype: QuantType| {
        let elem_bytes = dtype.block_bytes();
        let bf16_activations =
            finllm::quant::bf16dot::bf16_dot_kernels(dtype, finllm::quant::kernels::Isa::detect()).is_some();
        let bound = if bf16_activations { 2e-2 } else { 2e-5 };
        let in_place = kernels.matrix_memory();
        assert_eq!(in_place.copied, 0, "{what}: no matrix copied");
        assert_eq!(in_place.in_place, matrix_bytes(spec, elem_bytes), "{what}");
        let copies = candle.matrix_memory();
        assert_eq!(
            (copies.in_place, copies.copied),
            (0, matrix_bytes(spec, 4)),
            "{what}: candle's f32 copies"
        );

        let want = all_logits(candle, &SEQ, KvPrecision::F32);
        let got = all_logits(kernels, &SEQ, KvPrecision::F32);
        let scale = want.iter().flatten().fold(1f32, |m, v| m.max(v.abs()));
        let diff = max_diff(&got, &want);
        eprintln!("{what}: kernels vs candle max |diff| {diff:.2e} (logits up to {scale:.1})");
        assert!(diff <= bound * scale, "{what}: {diff}");
        // The host path: a prefill, then single-token steps.
        let mut cache = kernels.new_cache_with(KvPrecision::F32);
        let mut last = kernels.forward(&SEQ[..10], &mut cache).unwrap();
        for (i, &tok) in SEQ.iter().enumerate().skip(10) {
            let d = last
                .iter()
                .zip(&want[i - 1])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(d <= bound * scale, "{what} position {i}: {d}");
            last = kernels.forward(&[tok], &mut cache).unwrap();
        }
    };
    for arch in ARCHS {
        let spec = SyntheticSpec::tiny(arch, 29);
        for dtype in [QuantType::F32, QuantType::F16, QuantType::BF16] {
            let file = std::sync::Arc::new(GgufFile::open(write_gguf(&spec, dtype)).unwrap());
            let kernels = Transformer::from_gguf(&file).unwrap();
            let candle = Transformer::from_gguf_on(&file, &Backend::Candle(Device::Cpu)).unwrap();
            check(&format!("{arch:?} {dtype} GGUF"), &spec, &kernels, &candle, dtype);
            // The table is looked up in place (the logits above hold it to candle's copy).
            assert!(kernels.embedding_in_place(), "{arch:?} {dtype}");
            if arch == Architecture::Gemma3 {
                continue; // GGUF only
            }
            let dir = tmp(&format!("hf-in-place-{}-{dtype}", arch.name()));
            spec.write_safetensors_dir(&dir, dtype).unwrap();
            let kernels = Transformer::from_safetensors(&dir).unwrap();
            let candle = Transformer::from_safetensors_on(&dir, &Backend::Candle(Device::Cpu)).unwrap();
            check(
                &format!("{arch:?} {dtype} safetensors"),
                &spec,
                &kernels,
                &candle,
                dtype,
            );
            assert!(kernels.embedding_in_place(), "{arch:?} {dtype} safetensors");
        }
    }
}

#[test]
fn logit_comparison_counts_agreement_and_differences() {
    let file = std::sync::Arc::new(
        GgufFile::open(write_gguf(
            &SyntheticSpec::tiny(Architecture::Llama, 23),
            QuantType::Q8_0,
        ))
        .unwrap(),
    );
    let kernels = Transformer::from_gguf(&file).unwrap();
    let candle = Transformer::from_gguf_on(&file, &Backend::Candle(Device::Cpu)).unwrap();
    let same = finllm::bench::compare_logits(&kernels, &kernels, &SEQ[..5], 12).unwrap();
    assert_eq!((same.steps, same.top1_agree, same.max_abs_diff), (12, 12, 0.0));
    assert!(same.max_abs_logit > 0.0);
    assert_eq!(same.confident_agree, same.confident_steps);
    assert!(same.largest_disagreeing_margin.is_nan(), "{same:?}");
    // The kernels and candle may or may not sum in the same order, depending on the ISA the
    // dispatcher picks (bit-identical on some AVX2 machines): only the bound must hold.
    let c = finllm::bench::compare_logits(&kernels, &candle, &SEQ[..5], 12).unwrap();
    assert_eq!(c.steps, 12);
    assert!(c.max_abs_diff < 0.02 * c.max_abs_logit, "{c:?}");
    assert!(c.median_step_max_diff <= c.max_abs_diff);
    assert!(c.top1_agree >= 10, "{c:?}");
    assert!(c.confident_agree <= c.confident_steps && c.confident_steps <= c.steps);
    // Where the kernels lead by more than the margin, candle (the code CUDA runs) must agree.
    assert_eq!(c.confident_agree, c.confident_steps, "{c:?}");
    // Differences are counted: the same weights in f32 against their Q8_0 rounding differ on
    // every ISA (the rounding is in the weights, not in the summation order).
    let f32_file = std::sync::Arc::new(
        GgufFile::open(write_gguf(
            &SyntheticSpec::tiny(Architecture::Llama, 23),
            QuantType::F32,
        ))
        .unwrap(),
    );
    let exact = Transformer::from_gguf(&f32_file).unwrap();
    let q = finllm::bench::compare_logits(&kernels, &exact, &SEQ[..5], 12).unwrap();
    assert_eq!(q.steps, 12);
    // A disagreement is only possible at a step whose margin is at most the largest
    // disagreeing one; the margin-gated count never exceeds the steps counted.
    assert!(q.confident_agree <= q.confident_steps, "{q:?}");
    assert!(q.top1_agree == q.steps || q.largest_disagreeing_margin >= 0.0, "{q:?}");
    assert!(q.max_abs_diff > 0.0 && q.max_abs_diff < 0.05 * q.max_abs_logit, "{q:?}");
    assert!(
        q.median_step_max_diff > 0.0 && q.median_step_max_diff <= q.max_abs_diff,
        "{q:?}"
    );
    assert!(finllm::bench::compare_logits(&kernels, &candle, &[], 3).is_err());
    assert!(finllm::bench::compare_logits(&kernels, &candle, &SEQ[..2], 0).is_err());
}

#[test]
fn safetensors_and_gguf_f32_give_the_same_logits() {
    for arch in [Architecture::Llama, Architecture::Qwen2, Architecture::Qwen3] {
        let spec = SyntheticSpec::tiny(arch, 21);
        let gguf = load_transformer(&write_gguf(&spec, QuantType::F32));
        let dir = tmp(&format!("hf-{}", arch.name()));
        spec.write_safetensors_dir(&dir, QuantType::F32).unwrap();
        let st = Transformer::from_safetensors(&dir).unwrap();
        let a = all_logits(&gguf, &SEQ, KvPrecision::F32);
        let b = all_logits(&st, &SEQ, KvPrecision::F32);
        let diff = a
            .iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "{arch:?}: {diff}");

        // The whole Model (tokenizer.json, config) loads from the directory and generates.
        let m = Model::load(&dir, &LoadOptions::default()).unwrap();
        assert_eq!(
            m.tokenize("the rate").unwrap(),
            Model::load(write_gguf(&spec, QuantType::F32), &LoadOptions::default())
                .unwrap()
                .tokenize("the rate")
                .unwrap()
        );
    }
}

#[test]
fn half_precision_and_sharded_safetensors_load() {
    let spec = SyntheticSpec::tiny(Architecture::Qwen2, 4);
    let reference = {
        let dir = tmp("hf-ref-f32");
        spec.write_safetensors_dir(&dir, QuantType::F32).unwrap();
        all_logits(
            &Transformer::from_safetensors(&dir).unwrap(),
            &SEQ[..6],
            KvPrecision::F32,
        )
    };
    for dtype in [QuantType::F16, QuantType::BF16] {
        let dir = tmp(&format!("hf-{dtype}"));
        spec.write_safetensors_dir(&dir, dtype).unwrap();
        let got = all_logits(
            &Transformer::from_safetensors(&dir).unwrap(),
            &SEQ[..6],
            KvPrecision::F32,
        );
        let diff = got
            .iter()
            .flatten()
            .zip(reference.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 0.1, "{dtype}: {diff}");
    }
    // Split the f32 checkpoint into two shards with an index.
    let dir = tmp("hf-sharded");
    spec.write_safetensors_dir(&dir, QuantType::F32).unwrap();
    split_into_shards(&dir);
    let got = all_logits(
        &Transformer::from_safetensors(&dir).unwrap(),
        &SEQ[..6],
        KvPrecision::F32,
    );
    assert_eq!(got, reference);
}

fn split_into_shards(dir: &Path) {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let (a, b) = names.split_at(names.len() / 2);
    let mut map = serde_json::Map::new();
    for (i, part) in [a, b].iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> =
            part.iter().map(|n| (n.clone(), st.tensor(n).unwrap())).collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).unwrap();
        for n in part.iter() {
            map.insert(n.clone(), serde_json::Value::String(file.clone()));
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
}

fn tiny_model(arch: Architecture) -> Model {
    Model::load(
        write_gguf(&SyntheticSpec::tiny(arch, 2), QuantType::Q8_0),
        &LoadOptions {
            threads: Some(1),
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn seeded_sampling_is_reproducible() {
    let m = tiny_model(Architecture::Llama);
    let params = |seed| GenerateParams {
        sampling: SamplingParams {
            temperature: 1.0,
            top_k: 50,
            top_p: 0.95,
            min_p: 0.01,
            repetition_penalty: 1.1,
            seed,
            ..Default::default()
        },
        max_tokens: 20,
        ..Default::default()
    };
    let a = m.generate("the rate", &params(42)).unwrap();
    assert_eq!(a.ids, m.generate("the rate", &params(42)).unwrap().ids);
    assert_ne!(a.ids, m.generate("the rate", &params(43)).unwrap().ids);
    assert_eq!(a.ids.len(), 20);
    assert_eq!(a.finish, FinishReason::Length);
}

#[test]
fn streaming_iterator_callback_and_batch_agree() {
    let m = tiny_model(Architecture::Qwen3);
    let params = GenerateParams {
        max_tokens: 12,
        top_logits: 3,
        ..Default::default()
    };
    let whole = m.generate("the rate", &params).unwrap();
    let events: Vec<_> = m.stream("the rate", &params).unwrap().map(|e| e.unwrap()).collect();
    let streamed_ids: Vec<u32> = events.iter().map(|e| e.id).collect();
    let streamed_text: String = events.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(streamed_ids, whole.ids);
    assert_eq!(streamed_text, whole.text);
    assert_eq!(whole.steps.len(), 12);
    assert!(whole.steps.iter().all(|s| s.len() == 3 && s[0].1 >= s[1].1));
    // The first recorded step's argmax is the first greedy token.
    assert_eq!(whole.steps[0][0].0, whole.ids[0]);
    // A callback can stop generation.
    let mut n = 0;
    let stopped = m
        .generate_with("the rate", &params, |_| {
            n += 1;
            if n == 4 {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(stopped.finish, FinishReason::Cancelled);
    assert_eq!(stopped.ids, whole.ids[..4]);
}

#[test]
fn stop_strings_cut_the_output() {
    let m = tiny_model(Architecture::Llama);
    let free = m
        .generate(
            "the rate",
            &GenerateParams {
                max_tokens: 24,
                ..Default::default()
            },
        )
        .unwrap();
    // Stop at a piece of text the model is known to produce.
    let text = free.text.clone();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 6, "need some output, got {text:?}");
    let stop: String = chars[3..5].iter().collect();
    let cut = m
        .generate(
            "the rate",
            &GenerateParams {
                max_tokens: 24,
                stop: vec![stop.clone()],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(cut.finish, FinishReason::Stop);
    assert_eq!(cut.text, text[..text.find(&stop).unwrap()]);
}

#[test]
fn chat_template_renders_chatml() {
    let m = tiny_model(Architecture::Qwen2);
    let msgs = [ChatMessage::system("You are terse."), ChatMessage::user("Rate?")];
    let prompt = m.apply_chat_template(&msgs).unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nRate?<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = m.tokenize(&prompt).unwrap();
    let im_start = m.tokenizer().token_id("<|im_start|>").unwrap();
    assert_eq!(
        ids.iter().filter(|&&i| i == im_start).count(),
        3,
        "special tokens are parsed"
    );
    assert!(m
        .chat(
            &msgs,
            &GenerateParams {
                max_tokens: 4,
                ..Default::default()
            }
        )
        .is_ok());
    assert!(matches!(m.apply_chat_template(&[]), Err(Error::InvalidArgument { .. })));
}

#[test]
fn bad_chat_templates_are_errors_not_panics() {
    let m = tiny_model(Architecture::Llama);
    for src in [
        "{% for m in messages %}",
        "{{ raise_exception('no system role') }}",
        "{{ messages[99].content.upper() }}",
    ] {
        let t = finllm::ChatTemplate::new(src, m.tokenizer());
        let r = t.and_then(|t| t.render(&[ChatMessage::user("x")], true));
        assert!(matches!(r, Err(Error::ChatTemplate(_))), "{src}: {r:?}");
    }
}

#[test]
fn template_bombs_end_quickly_with_a_typed_error() {
    let m = tiny_model(Architecture::Llama);
    let bombs = [
        // prints ~100 MB (this exhausted memory in tokenisation before)
        ("output", "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"),
        // nested loops: 10^15 iterations
        (
            "loops",
            "{% for a in range(100000) %}{% for b in range(100000) %}{% for c in range(100000) %}{% endfor %}{% endfor %}{% endfor %}",
        ),
        // a doubly recursive macro: 2^40 calls
        (
            "recursion",
            "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
        ),
    ];
    for (what, src) in bombs {
        let started = std::time::Instant::now();
        let t = finllm::ChatTemplate::new(src, m.tokenizer()).unwrap();
        let r = t.render(&[ChatMessage::user("x")], true);
        assert!(
            matches!(&r, Err(Error::ChatTemplate(_))),
            "{what}: {:?}",
            r.as_ref().map(|s| s.len())
        );
        assert!(started.elapsed().as_secs() < 10, "{what} took {:?}", started.elapsed());
    }
    // A long real conversation still renders through a ChatML template within the budgets.
    let chatml = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}\
                  {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    let t = finllm::ChatTemplate::new(chatml, m.tokenizer()).unwrap();
    let conversation: Vec<ChatMessage> = (0..2000)
        .map(|i| ChatMessage::user(format!("message {i}: what is the duration of a ten-year bond?")))
        .collect();
    let text = t.render(&conversation, true).unwrap();
    assert!(text.ends_with("<|im_start|>assistant\n") && text.matches("<|im_start|>user").count() == 2000);
}

#[test]
fn request_errors_are_typed() {
    let m = tiny_model(Architecture::Llama);
    let ctx = m.config().context_length;
    let too_long = GenerateParams {
        max_tokens: ctx,
        ..Default::default()
    };
    assert!(matches!(
        m.generate("the rate", &too_long),
        Err(Error::ContextOverflow { .. })
    ));
    let bad = GenerateParams {
        sampling: SamplingParams {
            top_p: 1.5,
            ..Default::default()
        },
        ..Default::default()
    };
    let r = m.generate("x", &bad);
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
    let mut cache = m.transformer().new_cache();
    let vocab = m.config().vocab_size as u32;
    assert!(matches!(
        m.transformer().forward(&[vocab], &mut cache),
        Err(Error::TokenOutOfRange { .. })
    ));
    assert!(matches!(
        m.transformer().forward(&[], &mut cache),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(cache.is_empty(), "a failed call leaves the cache untouched");
    assert!(matches!(
        m.generate("", &GenerateParams::default()),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        Model::load("/nonexistent.gguf", &LoadOptions::default()),
        Err(Error::Io { .. })
    ));
    assert!(matches!(
        Model::load(
            write_gguf(&SyntheticSpec::tiny(Architecture::Llama, 2), QuantType::F32),
            &LoadOptions {
                threads: Some(0),
                ..Default::default()
            }
        ),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn one_model_serves_many_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Model>();
    let m = std::sync::Arc::new(tiny_model(Architecture::Gemma3));
    let prompts = ["the rate", "bonds", "on the", "a b c"];
    let params = GenerateParams {
        max_tokens: 10,
        ..Default::default()
    };
    let sequential: Vec<Vec<u32>> = prompts.iter().map(|p| m.generate(p, &params).unwrap().ids).collect();
    let handles: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (m, p, params) = (m.clone(), p.to_string(), params.clone());
            std::thread::spawn(move || m.generate(&p, &params).unwrap().ids)
        })
        .collect();
    let concurrent: Vec<Vec<u32>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(concurrent, sequential);
}

/// OS threads of this process whose name starts with `prefix` (Linux).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[test]
fn models_asking_for_the_same_threads_share_them() {
    // Five threads: no other test asks for that many, so the count is this test's alone.
    let opts = LoadOptions {
        threads: Some(5),
        ..Default::default()
    };
    let path = write_gguf(&SyntheticSpec::tiny(Architecture::Llama, 31), QuantType::Q8_0);
    let a = Model::load(&path, &opts).unwrap();
    let b = Model::load(&path, &opts).unwrap();
    // Rayon starts its threads lazily: make both pools do work.
    let params = GenerateParams {
        max_tokens: 2,
        ..Default::default()
    };
    a.generate("the rate", &params).unwrap();
    b.generate("the rate", &params).unwrap();
    assert_eq!((a.threads(), b.threads()), (5, 5));
    // Threads name themselves once they first run, and stop asynchronously: wait for the
    // count to settle (it can only reach 5 if the two models share one pool).
    let settles_at = |want: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while threads_named("finllm-5t-") != want && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        threads_named("finllm-5t-")
    };
    assert_eq!(settles_at(5), 5, "two models, one pool of five threads");
    drop((a, b));
    assert_eq!(settles_at(0), 0, "the pool goes with its last model");
}

#[test]
fn rope_frequency_factors_equal_linear_scaling_when_uniform() {
    // Llama 3 GGUFs carry per-frequency divisors in `rope_freqs.weight`; dividing every
    // frequency by 2 is exactly linear position scaling by 2.
    let spec = SyntheticSpec::tiny(Architecture::Llama, 8);
    let mut with_freqs = spec.gguf_writer(QuantType::F32).unwrap();
    with_freqs
        .tensor_f32("rope_freqs.weight", &[spec.head_dim / 2], &vec![2.0; spec.head_dim / 2])
        .unwrap();
    let mut linear = spec.gguf_writer(QuantType::F32).unwrap();
    linear.meta("llama.rope.scaling.type", finllm::model::Value::String("linear".into()));
    linear.meta("llama.rope.scaling.factor", finllm::model::Value::F32(2.0));
    let plain = spec.gguf_writer(QuantType::F32).unwrap();
    let run = |g: &finllm::model::GgufWriter| {
        let f = std::sync::Arc::new(GgufFile::from_vec("m.gguf", g.to_bytes()).unwrap());
        all_logits(&Transformer::from_gguf(&f).unwrap(), &SEQ, KvPrecision::F32)
    };
    let (a, b, c) = (run(&with_freqs), run(&linear), run(&plain));
    let diff = |x: &Vec<Vec<f32>>, y: &Vec<Vec<f32>>| {
        x.iter()
            .flatten()
            .zip(y.iter().flatten())
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max)
    };
    assert!(diff(&a, &b) < 1e-5, "{}", diff(&a, &b));
    assert!(diff(&a, &c) > 1e-3, "scaling must change the logits");
}
