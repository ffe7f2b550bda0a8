//! Throughput and latency measurement shared by `finllm bench` and `benches/`.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::generate::argmax;
use crate::llm::Model;
use crate::model::{ForwardOptions, GgufFile, SeqInput, Transformer};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    /// Timed repetitions; medians are reported.
    pub runs: usize,
    /// Sequences decoded together (each with its own KV cache, one token each per step);
    /// `decode_tok_s` is then the aggregate over all of them.
    pub batch: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            prompt_tokens: 256,
            gen_tokens: 128,
            runs: 5,
            batch: 1,
        }
    }
}

/// Medians over the runs.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BenchResult {
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    /// Prompt processing plus choosing the first token.
    pub ttft_ms: f64,
    /// Peak resident memory of the process (VmHWM), MiB.
    pub peak_rss_mb: f64,
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    pub threads: usize,
    pub runs: usize,
    pub batch: usize,
    /// The kernels' instruction set ([`crate::quant::kernels::Isa::name`]).
    pub isa: &'static str,
}

/// Finance text the benchmark prompt is cut from (repeated as needed).
const TEXT: &str = "The central bank held its policy rate at 4.25% while signalling that further tightening \
remains possible if core inflation fails to moderate. Credit spreads on investment-grade corporate bonds \
narrowed by eight basis points, and the two-year Treasury yield rose to 4.61% as traders priced fewer cuts. \
Net interest margin at regional lenders compressed for a third consecutive quarter, driven by higher deposit \
costs, while loan growth slowed to 2.3% year over year. ";

/// A prompt of exactly `n` tokens for `model`.
pub fn prompt_ids(model: &Model, n: usize) -> Result<Vec<u32>> {
    prompt_ids_from(model, n, 0)
}

/// A prompt of exactly `n` tokens for `model`, starting `offset` tokens into the benchmark text
/// (distinct offsets give distinct prompts of the same cost).
pub fn prompt_ids_from(model: &Model, n: usize, offset: usize) -> Result<Vec<u32>> {
    let one = model.tokenize(TEXT)?;
    if one.is_empty() {
        return Err(Error::invalid(
            "model",
            "the tokenizer produced no tokens for the benchmark text",
        ));
    }
    Ok(one.iter().cycle().skip(offset % one.len()).take(n).copied().collect())
}

/// Run the benchmark: each run prefills the prompt into a fresh cache, then decodes greedily
/// (end-of-sequence ignored so every run generates the same number of tokens).
pub fn run(model: &Model, cfg: &BenchConfig) -> Result<BenchResult> {
    if cfg.prompt_tokens == 0 || cfg.runs == 0 || cfg.batch == 0 {
        return Err(Error::invalid(
            "bench",
            "prompt_tokens, runs and batch must be at least 1",
        ));
    }
    let context = model.config().context_length;
    if cfg.prompt_tokens.saturating_add(cfg.gen_tokens) > context {
        return Err(Error::ContextOverflow {
            tokens: cfg.prompt_tokens,
            max_new: cfg.gen_tokens,
            context,
        });
    }
    let prompt = prompt_ids(model, cfg.prompt_tokens)?;
    let t = model.transformer();
    let (mut prefill, mut decode, mut ttft) = (Vec::new(), Vec::new(), Vec::new());
    // One untimed warm-up run pages the weights in.
    for run in 0..=cfg.runs {
        // The whole run's positions reserved up front, as the engine reserves a request's
        // (and llama.cpp its context): no copy when the cache would outgrow its room.
        let mut cache = t.new_cache_for(prompt.len() + cfg.gen_tokens);
        let start = Instant::now();
        let logits = model.run(|| t.forward(&prompt, &mut cache))?;
        let first = start.elapsed();
        // Every sequence of a batch starts from the same prefilled prompt.
        let mut caches = vec![cache; cfg.batch];
        let mut next = vec![argmax(&logits); cfg.batch];
        let start = Instant::now();
        for _ in 0..cfg.gen_tokens {
            next = model.run(|| decode_step(t, &mut caches, &next))?;
        }
        let gen = start.elapsed();
        if run > 0 {
            prefill.push(cfg.prompt_tokens as f64 / first.as_secs_f64());
            ttft.push(first.as_secs_f64() * 1e3);
            if cfg.gen_tokens > 0 {
                decode.push((cfg.gen_tokens * cfg.batch) as f64 / gen.as_secs_f64());
            }
        }
    }
    Ok(BenchResult {
        prefill_tok_s: median(&mut prefill),
        decode_tok_s: median(&mut decode),
        ttft_ms: median(&mut ttft),
        peak_rss_mb: peak_rss_mb().unwrap_or(f64::NAN),
        prompt_tokens: cfg.prompt_tokens,
        gen_tokens: cfg.gen_tokens,
        threads: model.threads(),
        runs: cfg.runs,
        batch: cfg.batch,
        isa: crate::quant::kernels::Isa::detect().name(),
    })
}

/// One greedy token for every sequence, in one batched forward call.
fn decode_step(t: &Transformer, caches: &mut [crate::model::KvCache], tokens: &[u32]) -> Result<Vec<u32>> {
    let singles: Vec<[u32; 1]> = tokens.iter().map(|&id| [id]).collect();
    let mut inputs: Vec<SeqInput> = caches
        .iter_mut()
        .zip(&singles)
        .map(|(cache, tokens)| SeqInput { tokens, cache })
        .collect();
    t.forward_batch(&mut inputs, &ForwardOptions::default())?
        .iter()
        .map(|o| Ok(argmax(&o.logits.flatten_all()?.to_vec1::<f32>()?)))
        .collect()
}

/// Best-of-five device-to-device copy bandwidth in GB/s (bytes read plus bytes written), over
/// a buffer of `mib` MiB: the denominator of the decode bandwidth floor. On the CPU the copy
/// runs on the calling rayon pool's threads (call it inside [`crate::Model::run`] to measure
/// with the model's thread count) between buffers that are written before timing, so that
/// neither page faults nor the kernel's shared zero page enter the figure.
pub fn copy_bandwidth_gb_s(device: &Device, mib: usize) -> Result<f64> {
    if device.is_cpu() {
        return Ok(host_copy_bandwidth_gb_s(mib));
    }
    let n = mib << 18; // f32 elements
    let src = Tensor::zeros(n, DType::F32, device)?;
    device.synchronize()?;
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let copy = src.copy()?;
        device.synchronize()?;
        let secs = start.elapsed().as_secs_f64();
        drop(copy);
        best = best.max(2.0 * (n * 4) as f64 / secs / 1e9);
    }
    Ok(best)
}

fn host_copy_bandwidth_gb_s(mib: usize) -> f64 {
    use rayon::prelude::*;
    let n = (mib << 18).max(1);
    let src: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut dst = vec![1f32; n];
    // Several pieces per thread, each long enough to stream (64 KiB at least).
    let piece = n.div_ceil(4 * rayon::current_num_threads()).max(1 << 14);
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        dst.par_chunks_mut(piece)
            .zip(src.par_chunks(piece))
            .for_each(|(d, s)| d.copy_from_slice(s));
        let secs = start.elapsed().as_secs_f64();
        best = best.max(2.0 * (n * 4) as f64 / secs / 1e9);
    }
    assert_eq!(dst[n - 1], (n - 1) as f32, "the copy happened");
    best
}

/// Bytes of weights one decode token reads from a GGUF file: every tensor but the token
/// embedding table, of which a token reads one row, unless the file has no `output.weight` (the
/// output projection is then that table, read whole every token). This is the numerator of the
/// decode bandwidth floor: the file's size counts an untied table that decode hardly touches
/// (about a sixth of a 1B llama's bf16 bytes: 528 of 3,000 MB).
pub fn decode_read_bytes(file: &GgufFile) -> u64 {
    let tensors = file.tensors().iter().map(|t| {
        let rows = t.dims.last().copied().unwrap_or(1);
        (t.name.as_str(), t.n_bytes, rows)
    });
    read_a_token(tensors, "token_embd.weight", "output.weight")
}

/// The bytes of `(name, bytes, rows)` tensors a decode token reads: all of each, but one row of
/// the `embed` table when a separate `head` exists.
fn read_a_token<'a>(tensors: impl Iterator<Item = (&'a str, u64, u64)> + Clone, embed: &str, head: &str) -> u64 {
    let tied = !tensors.clone().any(|(name, ..)| name == head);
    tensors
        .map(|(name, bytes, rows)| {
            if name == embed && !tied && rows > 0 {
                bytes / rows
            } else {
                bytes
            }
        })
        .sum()
}

/// [`decode_read_bytes`] of the GGUF file at `path`; for a safetensors model (a `.safetensors`
/// file, or a directory holding the shards the loader reads: `model.safetensors` or those named
/// by `model.safetensors.index.json`) the same count over its tensors, with
/// `model.embed_tokens.weight` as one row when `lm_head.weight` exists; the size of any other
/// file. A file that starts as a GGUF but does not parse, a directory without a model's shards
/// and an unreadable shard are errors.
pub fn decode_read_bytes_at(path: &Path) -> Result<u64> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::Io { path: p, source }
    };
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let shards = if meta.is_dir() {
        crate::model::safetensors_files(path)?
    } else if path.extension().is_some_and(|e| e == "safetensors") {
        vec![path.to_path_buf()]
    } else {
        return if GgufFile::starts_as_gguf(path) {
            Ok(decode_read_bytes(&GgufFile::open(path)?))
        } else {
            Ok(meta.len())
        };
    };
    // (name, bytes, rows) of every tensor of every shard.
    let mut tensors = Vec::new();
    for shard in &shards {
        let file = std::fs::File::open(shard).map_err(io(shard))?;
        // SAFETY: a read-only map of a checkpoint nobody writes while the bench reads it.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(io(shard))?;
        let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| crate::model::st_err(shard, e))?;
        for (name, view) in st.tensors() {
            let rows = view.shape().first().copied().unwrap_or(1);
            tensors.push((name, view.data().len() as u64, rows as u64));
        }
    }
    let named = tensors.iter().map(|(name, bytes, rows)| (name.as_str(), *bytes, *rows));
    Ok(read_a_token(named, "model.embed_tokens.weight", "lm_head.weight"))
}

/// How two backends' logits compare over a greedy continuation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LogitComparison {
    /// Greedy steps compared (the prompt's last position, then each generated token).
    pub steps: usize,
    /// Steps where both backends' top-1 token is the same.
    pub top1_agree: usize,
    /// Steps where the reference's top-1 logit leads its runner-up by more than
    /// [`CONFIDENT_MARGIN`] (where a different top-1 on the other backend is a real error rather
    /// than a near tie broken by summation order)...
    pub confident_steps: usize,
    /// ...and of those, the steps where both backends' top-1 token is the same.
    pub confident_agree: usize,
    /// Largest top-1 margin of the reference among the steps where the two disagree (NaN when
    /// they never do).
    pub largest_disagreeing_margin: f32,
    /// Largest |a - b| over every logit of every step.
    pub max_abs_diff: f32,
    /// Median over steps of the largest |a - b| of that step.
    pub median_step_max_diff: f32,
    /// Largest |logit| of the reference, for scale.
    pub max_abs_logit: f32,
}

/// The reference's lead of its top-1 logit over its runner-up above which both backends must
/// choose the same token (the CUDA issue's criterion).
pub const CONFIDENT_MARGIN: f32 = 1.0;

/// The lead of the largest value over the second largest (0 for fewer than two values).
fn top1_margin(logits: &[f32]) -> f32 {
    let (mut first, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &v in logits {
        if v > first {
            second = first;
            first = v;
        } else if v > second {
            second = v;
        }
    }
    if second.is_finite() {
        first - second
    } else {
        0.0
    }
}

/// Run `prompt` then `steps - 1` greedy tokens chosen by `reference`, feeding the same tokens
/// to `other` (teacher forcing), and compare their logits at every step.
pub fn compare_logits(
    reference: &Transformer,
    other: &Transformer,
    prompt: &[u32],
    steps: usize,
) -> Result<LogitComparison> {
    if prompt.is_empty() || steps == 0 {
        return Err(Error::invalid(
            "compare",
            "the prompt and the number of steps must be non-empty",
        ));
    }
    let (mut ca, mut cb) = (reference.new_cache(), other.new_cache());
    let (mut a, mut b) = (reference.forward(prompt, &mut ca)?, other.forward(prompt, &mut cb)?);
    let (mut agree, mut max_diff, mut max_logit) = (0, 0f32, 0f32);
    let (mut confident, mut confident_agree, mut disagreeing_margin) = (0, 0, f32::NAN);
    let mut step_max = Vec::with_capacity(steps);
    for step in 0..steps {
        let (ta, tb) = (argmax(&a), argmax(&b));
        agree += usize::from(ta == tb);
        let margin = top1_margin(&a);
        if margin > CONFIDENT_MARGIN {
            confident += 1;
            confident_agree += usize::from(ta == tb);
        }
        if ta != tb {
            disagreeing_margin = disagreeing_margin.max(margin);
        }
        let d = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        max_diff = max_diff.max(d);
        max_logit = a.iter().fold(max_logit, |m, v| m.max(v.abs()));
        step_max.push(f64::from(d));
        if step + 1 < steps {
            a = reference.forward(&[ta], &mut ca)?;
            b = other.forward(&[ta], &mut cb)?;
        }
    }
    Ok(LogitComparison {
        steps,
        top1_agree: agree,
        confident_steps: confident,
        confident_agree,
        largest_disagreeing_margin: disagreeing_margin,
        max_abs_diff: max_diff,
        median_step_max_diff: median(&mut step_max) as f32,
        max_abs_logit: max_logit,
    })
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Peak resident set size of this process in MiB (Linux: `VmHWM`).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::{decode_read_bytes, decode_read_bytes_at, median, top1_margin};
    use crate::model::{GgufFile, GgufWriter};

    /// A GGUF image of f32 tensors of these shapes (row-major).
    fn file_of(tensors: &[(&str, [usize; 2])]) -> GgufFile {
        let mut w = GgufWriter::new();
        for (name, shape) in tensors {
            w.tensor_f32(name, shape, &vec![0.5; shape[0] * shape[1]])
                .expect("a tensor");
        }
        GgufFile::from_vec("test.gguf", w.to_bytes()).expect("a valid image")
    }

    #[test]
    fn a_decode_token_reads_one_row_of_an_untied_embedding_table_and_all_of_a_tied_one() {
        // 100 rows of 8 f32 (3,200 bytes); a 6x8 layer (192); an 8x100 output (3,200).
        let untied = file_of(&[
            ("token_embd.weight", [100, 8]),
            ("blk.0.ffn_up.weight", [6, 8]),
            ("output.weight", [100, 8]),
        ]);
        assert_eq!(decode_read_bytes(&untied), 32 + 192 + 3200);
        let tied = file_of(&[("token_embd.weight", [100, 8]), ("blk.0.ffn_up.weight", [6, 8])]);
        assert_eq!(decode_read_bytes(&tied), 3200 + 192);
    }

    /// A fresh directory under the system's temp dir, removed when dropped (also when a test
    /// fails).
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("finllm-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("a temp dir");
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A safetensors file at `path` of zero-valued bf16 tensors of these shapes.
    fn write_shard(path: &std::path::Path, tensors: &[(&str, [usize; 2])]) {
        use safetensors::tensor::{Dtype, TensorView};
        let zeros = vec![0u8; 100 * 8 * 2];
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(name, [r, c])| {
                let view = TensorView::new(Dtype::BF16, vec![*r, *c], &zeros[..r * c * 2]);
                (name.to_string(), view.expect("a view"))
            })
            .collect();
        std::fs::write(path, safetensors::serialize(views, None).expect("serialized")).expect("written");
    }

    #[test]
    fn a_safetensors_model_counts_the_loaders_shards_the_same_way() {
        let dir = TempDir::new("read-bytes");
        let d = &dir.0;
        // 100 rows of 8 bf16 (1,600 bytes), a 6x8 layer (96), an untied 100x8 head (1,600).
        write_shard(
            &d.join("a.safetensors"),
            &[("model.embed_tokens.weight", [100, 8]), ("mlp.up_proj.weight", [6, 8])],
        );
        write_shard(&d.join("b.safetensors"), &[("lm_head.weight", [100, 8])]);
        let index = r#"{"weight_map": {"model.embed_tokens.weight": "a.safetensors",
            "mlp.up_proj.weight": "a.safetensors", "lm_head.weight": "b.safetensors"}}"#;
        std::fs::write(d.join("model.safetensors.index.json"), index).expect("written");
        // Not a shard of the model: the loader does not read it, nor does the count.
        write_shard(&d.join("adapter_model.safetensors"), &[("lm_head.weight", [100, 8])]);
        std::fs::write(d.join("config.json"), "{}").expect("written");
        assert_eq!(decode_read_bytes_at(d).expect("counted"), 16 + 96 + 1600);
        let one = d.join("a.safetensors");
        assert_eq!(
            decode_read_bytes_at(&one).expect("counted"),
            1600 + 96,
            "tied: the table whole"
        );

        std::fs::write(d.join("broken.safetensors"), b"not a safetensors file").expect("written");
        let err = decode_read_bytes_at(&d.join("broken.safetensors")).expect_err("a corrupt shard");
        assert!(matches!(err, crate::error::Error::Safetensors { .. }), "{err}");
        let empty = TempDir::new("read-bytes-empty");
        let err = decode_read_bytes_at(&empty.0).expect_err("no shards");
        assert!(matches!(err, crate::error::Error::Safetensors { .. }), "{err}");
        std::fs::write(d.join("broken.gguf"), b"GGUF\x03\x00").expect("written");
        assert!(
            decode_read_bytes_at(&d.join("broken.gguf")).is_err(),
            "a truncated GGUF"
        );
        assert_eq!(
            decode_read_bytes_at(&d.join("config.json")).expect("a size"),
            2,
            "another file"
        );
    }

    #[test]
    fn top1_margin_is_the_lead_over_the_runner_up() {
        assert_eq!(top1_margin(&[1.0, 4.0, 2.5, 4.0]), 0.0, "a tie has no lead");
        assert_eq!(top1_margin(&[1.0, 4.0, 2.5, -3.0]), 1.5);
        assert_eq!(top1_margin(&[7.0, 1.0]), 6.0);
        assert_eq!(top1_margin(&[7.0]), 0.0);
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }
}
