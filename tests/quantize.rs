//! `finllm quantize` and perplexity: an HF checkpoint written as GGUF computes the same logits;
//! requantized GGUFs keep their metadata and track the f32 model; perplexity agrees with an
//! independent token-by-token computation.

use std::path::PathBuf;
use std::sync::Arc;

use finllm::eval::{calibrate, perplexity};
use finllm::model::{ForwardOptions, GgufFile, KvPrecision, SeqInput, Transformer, Value};
use finllm::quant::QuantType;
use finllm::tools::quantize::{quantize_model, quantize_model_with, QuantizeSpec};
use finllm::tools::synthetic::SyntheticSpec;
use finllm::{Architecture, Error, LoadOptions, Model};

const SEQ: [u32; 12] = [5, 77, 260, 101, 32, 116, 104, 101, 32, 114, 97, 116];

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("finllm-quantize-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn logits(t: &Transformer, tokens: &[u32]) -> Vec<f32> {
    let mut cache = t.new_cache_with(KvPrecision::F32);
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
    out[0].logits.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn gguf_transformer(path: &std::path::Path) -> Transformer {
    Transformer::from_gguf(&Arc::new(GgufFile::open(path).unwrap())).unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Pearson correlation in f64.
fn correlation(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (
        a.iter().map(|&x| f64::from(x)).sum::<f64>() / n,
        b.iter().map(|&x| f64::from(x)).sum::<f64>() / n,
    );
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (f64::from(x) - ma, f64::from(y) - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    sab / (saa * sbb).sqrt()
}

#[test]
fn hf_checkpoints_written_as_gguf_compute_the_same_logits() {
    for arch in [Architecture::Llama, Architecture::Qwen2, Architecture::Qwen3] {
        let spec = SyntheticSpec::tiny(arch, 31);
        let dir = tmp(&format!("hf-{}", arch.name()));
        spec.write_safetensors_dir(&dir, QuantType::F32).unwrap();
        let (writer, report) = quantize_model(&dir, QuantType::F32).unwrap();
        assert!(report.quantized > 0 && report.kept > 0, "{report:?}");
        let out = tmp(&format!("from-hf-{}.gguf", arch.name()));
        writer.write(&out).unwrap();

        let from_hf = Transformer::from_safetensors(&dir).unwrap();
        let diff = max_abs_diff(&logits(&from_hf, &SEQ), &logits(&gguf_transformer(&out), &SEQ));
        assert!(diff < 1e-4, "{arch:?}: {diff}");
        // The tokenizer went along: the GGUF model tokenizes as the directory's tokenizer.json.
        let (a, b) = (
            Model::load(&dir, &LoadOptions::default()).unwrap(),
            Model::load(&out, &LoadOptions::default()).unwrap(),
        );
        let text = "the rate rose 12% <|im_start|>";
        assert_eq!(a.tokenize(text).unwrap(), b.tokenize(text).unwrap(), "{arch:?}");
        assert_eq!(a.config().n_kv_heads, b.config().n_kv_heads);
    }
}

#[test]
fn requantized_gguf_keeps_metadata_and_tracks_the_f32_model() {
    let spec = SyntheticSpec::tiny(Architecture::Llama, 5);
    let f32_path = tmp("llama-f32.gguf");
    spec.write_gguf(&f32_path, QuantType::F32).unwrap();
    let source = GgufFile::open(&f32_path).unwrap();
    let reference = logits(&gguf_transformer(&f32_path), &SEQ);
    for (quant, min_corr) in [
        (QuantType::Q8_0, 0.999),
        (QuantType::Q4_0, 0.95),
        (QuantType::F16, 0.99999),
    ] {
        let (writer, report) = quantize_model(&f32_path, quant).unwrap();
        let out = tmp(&format!("llama-{quant}.gguf"));
        writer.write(&out).unwrap();
        let file = GgufFile::open(&out).unwrap();
        for (key, value) in source.metadata() {
            if key != "general.file_type" {
                assert_eq!(file.get(key), Some(value), "{key} changed");
            }
        }
        let matrices = source.tensors().iter().filter(|t| t.shape().len() == 2).count();
        assert_eq!(report.quantized, matrices);
        for t in file.tensors() {
            // Q8_0 keeps the value projections at f16.
            let expected = match (t.shape().len(), quant) {
                (2, QuantType::Q8_0) if t.name.ends_with("attn_v.weight") => QuantType::F16,
                (2, _) => quant,
                _ => QuantType::F32,
            };
            assert_eq!(t.dtype, expected, "{}", t.name);
        }
        let corr = correlation(&reference, &logits(&gguf_transformer(&out), &SEQ));
        assert!(corr > min_corr, "{quant}: correlation {corr}");
    }
}

#[test]
fn k_quants_fall_back_where_rows_are_not_whole_super_blocks() {
    // The tiny model's rows (64 or 128 values) are not whole 256-element blocks.
    let spec = SyntheticSpec::tiny(Architecture::Qwen2, 6);
    let path = tmp("qwen2-f32.gguf");
    spec.write_gguf(&path, QuantType::F32).unwrap();
    // Random (not grid-aligned) weights: Q5_0 encodes them with less error than Q4_1.
    for (quant, fallback) in [
        (QuantType::Q4K, QuantType::Q5_0),
        (QuantType::Q5K, QuantType::Q5_1),
        (QuantType::Q6K, QuantType::Q8_0),
    ] {
        let (writer, _) = quantize_model(&path, quant).unwrap();
        let out = tmp(&format!("qwen2-{quant}.gguf"));
        writer.write(&out).unwrap();
        let file = GgufFile::open(&out).unwrap();
        let tied = file.tensor("output.weight").is_none();
        for t in file.tensors().iter().filter(|t| t.shape().len() == 2) {
            let whole_blocks = (t.shape()[1] as u64).is_multiple_of(256);
            // The logits' matrix is kept at Q6_K (Q8_0 where its rows are not whole blocks).
            let is_output = t.name == "output.weight" || (tied && t.name == "token_embd.weight");
            let expected = match (is_output && quant != QuantType::Q6K, whole_blocks) {
                (true, true) => QuantType::Q6K,
                (true, false) => QuantType::Q8_0,
                (false, true) => quant,
                (false, false) => fallback,
            };
            assert_eq!(t.dtype, expected, "{quant}: {}", t.name);
        }
        // And it runs.
        assert!(logits(&gguf_transformer(&out), &SEQ).iter().all(|v| v.is_finite()));
    }
}

#[test]
fn the_fallback_with_less_error_is_chosen() {
    // A model whose weights lie on Q4_1's grid: Q4_1 reproduces them exactly, Q5_0 cannot, so
    // Q4_K's fallback becomes Q4_1, and the matrices come back bit for bit.
    let spec = SyntheticSpec::tiny(Architecture::Llama, 8);
    let q41 = tmp("llama-q4_1-source.gguf");
    spec.write_gguf(&q41, QuantType::Q4_1).unwrap();
    let (writer, _) = quantize_model(&q41, QuantType::Q4K).unwrap();
    let out = tmp("llama-q4_1-to-q4_k.gguf");
    writer.write(&out).unwrap();
    let (source, file) = (GgufFile::open(&q41).unwrap(), GgufFile::open(&out).unwrap());
    let mut compared = 0;
    for t in file.tensors().iter().filter(|t| t.shape().len() == 2) {
        let src = source.tensor(&t.name).unwrap();
        // (The tied embedding is the logits' matrix, kept at Q6_K or its fallback Q8_0.)
        let is_output = t.name == "token_embd.weight" || t.name == "output.weight";
        if src.dtype == QuantType::Q4_1 && !is_output && !(t.shape()[1] as u64).is_multiple_of(256) {
            assert_eq!(t.dtype, QuantType::Q4_1, "{}", t.name);
            assert_eq!(file.tensor_data(t), source.tensor_data(src), "{}", t.name);
            compared += 1;
        }
    }
    assert!(compared >= 7, "{compared} matrices compared");
}

#[test]
fn mixed_recipes_give_value_and_down_projections_more_bits_in_llama_cpps_layers() {
    assert_eq!(
        QuantizeSpec::from_name("q4_k_m").map(|s| (s.quant, s.mixed)),
        Some((QuantType::Q4K, true))
    );
    assert_eq!(
        QuantizeSpec::from_name("Q5_K_M").map(|s| (s.quant, s.mixed)),
        Some((QuantType::Q5K, true))
    );
    assert_eq!(
        QuantizeSpec::from_name("q4_k").map(|s| (s.quant, s.mixed)),
        Some((QuantType::Q4K, false))
    );
    assert!(QuantizeSpec::from_name("q8_0_m").is_none());
    assert!(QuantizeSpec::from_name("q4_k_x").is_none());

    let mut spec = SyntheticSpec::tiny(Architecture::Llama, 12);
    spec.layers = 8;
    let path = tmp("llama-8-layers.gguf");
    spec.write_gguf(&path, QuantType::F32).unwrap();
    let (writer, _) = quantize_model_with(&path, &QuantizeSpec::from_name("q4_k_m").unwrap()).unwrap();
    let out = tmp("llama-8-layers-q4_k_m.gguf");
    writer.write(&out).unwrap();
    let file = GgufFile::open(&out).unwrap();
    // llama.cpp's use_more_bits for 8 layers: i < 8/8, i >= 7*8/8, or (i - 8/8) % 3 == 2.
    let more_bits = [0, 3, 6, 7];
    for layer in 0..8 {
        for name in ["attn_v", "ffn_down", "attn_q", "ffn_up"] {
            let t = file.tensor(&format!("blk.{layer}.{name}.weight")).unwrap();
            // Rows of 64/128 values: Q6_K falls back to Q8_0, Q4_K to Q5_0 or Q4_1.
            let boosted = more_bits.contains(&layer) && matches!(name, "attn_v" | "ffn_down");
            if boosted {
                assert_eq!(t.dtype, QuantType::Q8_0, "blk.{layer}.{name}");
            } else {
                assert!(
                    matches!(t.dtype, QuantType::Q5_0 | QuantType::Q4_1),
                    "blk.{layer}.{name}: {}",
                    t.dtype
                );
            }
        }
    }
    assert_eq!(
        file.get("general.file_type"),
        Some(&Value::U32(15)),
        "llama.cpp's MOSTLY_Q4_K_M"
    );
}

#[test]
fn calibration_measures_the_mean_square_input_of_every_matrix() {
    let spec = SyntheticSpec::tiny(Architecture::Llama, 14);
    let path = tmp("llama-calibrate.gguf");
    spec.write_gguf(&path, QuantType::F32).unwrap();
    let model = Model::load(&path, &LoadOptions::default()).unwrap();
    let text = "the rate rose and the yield fell; the rate rose again";
    let imp = calibrate(&model, text, 8).unwrap();
    let ids = model.tokenize(text).unwrap();
    assert_eq!(imp.tokens, ids.len());
    let cfg = model.config().clone();
    for layer in 0..cfg.n_layers {
        for (name, cols) in [
            ("attn_q", cfg.hidden_size),
            ("attn_k", cfg.hidden_size),
            ("attn_v", cfg.hidden_size),
            ("attn_output", cfg.n_heads * cfg.head_dim),
            ("ffn_gate", cfg.hidden_size),
            ("ffn_up", cfg.hidden_size),
            ("ffn_down", cfg.ffn_size),
        ] {
            let v = &imp.columns[&format!("blk.{layer}.{name}.weight")];
            assert_eq!(v.len(), cols, "blk.{layer}.{name}");
            assert!(v.iter().all(|x| x.is_finite() && *x >= 0.0) && v.iter().any(|x| *x > 0.0));
        }
    }
    assert_eq!(imp.columns.len(), 7 * cfg.n_layers + 1);
    assert_eq!(imp.columns["output.weight"].len(), cfg.hidden_size);

    // Independent: layer 0's Q/K/V input is the RMS-normalised embedding, computed here in f64
    // from the file's tensors.
    let file = GgufFile::open(&path).unwrap();
    let f32s = |name: &str| -> Vec<f64> {
        file.tensor_data(file.tensor(name).unwrap())
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect()
    };
    let (embed, norm) = (f32s("token_embd.weight"), f32s("blk.0.attn_norm.weight"));
    let h = cfg.hidden_size;
    let mut want = vec![0f64; h];
    for &id in &ids {
        let row = &embed[id as usize * h..(id as usize + 1) * h];
        let rms = (row.iter().map(|v| v * v).sum::<f64>() / h as f64 + cfg.rms_eps).sqrt();
        for j in 0..h {
            want[j] += (row[j] / rms * norm[j]).powi(2) / ids.len() as f64;
        }
    }
    for (j, (&got, &want)) in imp.columns["blk.0.attn_q.weight"].iter().zip(&want).enumerate() {
        assert!(
            (f64::from(got) - want).abs() <= 1e-4 * (1.0 + want),
            "column {j}: {got} vs {want}"
        );
    }
    // The statistics drive the encoders: a calibrated file is written and runs.
    let spec = QuantizeSpec {
        importance: Some(imp),
        ..QuantizeSpec::new(QuantType::Q4_0)
    };
    let (writer, report) = quantize_model_with(&path, &spec).unwrap();
    assert!(report.quantized > 0);
    let out = tmp("llama-calibrated-q4_0.gguf");
    writer.write(&out).unwrap();
    assert!(logits(&gguf_transformer(&out), &SEQ).iter().all(|v| v.is_finite()));
    assert!(matches!(calibrate(&model, "", 8), Err(Error::InvalidArgument { .. })));
    assert!(matches!(calibrate(&model, text, 0), Err(Error::InvalidArgument { .. })));
}

#[test]
fn bad_quantize_requests_are_typed_errors() {
    let path = tmp("llama-bad.gguf");
    SyntheticSpec::tiny(Architecture::Llama, 1)
        .write_gguf(&path, QuantType::F32)
        .unwrap();
    assert!(matches!(
        quantize_model(&path, QuantType::Q2K),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        quantize_model(&tmp("missing.gguf"), QuantType::Q8_0),
        Err(Error::Io { .. })
    ));
}

#[test]
fn perplexity_agrees_with_token_by_token_scoring() {
    let path = tmp("llama-ppl.gguf");
    SyntheticSpec::tiny(Architecture::Llama, 9)
        .write_gguf(&path, QuantType::F32)
        .unwrap();
    let model = Model::load(
        &path,
        &LoadOptions {
            threads: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    let text = "the rate rose and the rate fell, the yield rose";
    let context = 8;
    let p = perplexity(&model, text, context).unwrap();

    // Independent: each window decoded one token at a time through the KV cache, f64 softmax.
    let ids = model.tokenize(text).unwrap();
    let (mut nll, mut n) = (0f64, 0usize);
    for window in ids.chunks(context).filter(|w| w.len() >= 2) {
        let mut cache = model.transformer().new_cache();
        for pair in window.windows(2) {
            let row = model.transformer().forward(&pair[..1], &mut cache).unwrap();
            let z: f64 = row.iter().map(|&v| f64::from(v).exp()).sum();
            nll -= (f64::from(row[pair[1] as usize]).exp() / z).ln();
            n += 1;
        }
    }
    assert_eq!(p.scored_tokens, n);
    let expected = (nll / n as f64).exp();
    assert!(
        (p.perplexity - expected).abs() / expected < 1e-3,
        "{} vs {expected}",
        p.perplexity
    );
    assert!(matches!(
        perplexity(&model, text, 1),
        Err(Error::InvalidArgument { .. })
    ));
}
