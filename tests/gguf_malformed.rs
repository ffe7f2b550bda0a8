//! Malformed and hostile GGUF files: each gives a typed error, never a panic or a huge
//! allocation.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use finllm::model::gguf::GgufWriter;
use finllm::model::{GgufFile, Transformer, Value};
use finllm::quant::QuantType;
use finllm::tools::synthetic::SyntheticSpec;
use finllm::{Architecture, Error, GgufError, Tokenizer};

/// A hand-assembled GGUF image, so each field can be set to anything.
#[derive(Default)]
struct Raw {
    buf: Vec<u8>,
}

impl Raw {
    fn u32(mut self, v: u32) -> Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(mut self, b: &[u8]) -> Self {
        self.buf.extend_from_slice(b);
        self
    }
    fn str(self, s: &str) -> Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Self {
        Raw::default().bytes(b"GGUF").u32(version).u64(n_tensors).u64(n_kv)
    }
    fn kv_u32(self, key: &str, v: u32) -> Self {
        self.str(key).u32(4).u32(v)
    }
    fn tensor(self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
        let mut r = self.str(name).u32(dims.len() as u32);
        for &d in dims {
            r = r.u64(d);
        }
        r.u32(ty).u64(offset)
    }
    fn pad_and_data(mut self, data_len: usize) -> Self {
        let padded = self.buf.len().div_ceil(32) * 32;
        self.buf.resize(padded + data_len, 0);
        self
    }
}

fn open(raw: Raw) -> Result<GgufFile, Error> {
    GgufFile::from_vec("test.gguf", raw.buf)
}

fn gguf_err(r: Result<GgufFile, Error>) -> GgufError {
    match r {
        Err(Error::Gguf { source, .. }) => source,
        other => panic!("expected a GGUF error, got {other:?}"),
    }
}

/// One f32 tensor of 2x32 after a `general.alignment` key.
fn valid() -> Raw {
    Raw::header(3, 1, 1)
        .kv_u32("general.alignment", 32)
        .tensor("t", &[32, 2], 0, 0)
        .pad_and_data(256)
}

#[test]
fn a_valid_minimal_file_opens() {
    let f = open(valid()).unwrap();
    assert_eq!(f.tensors().len(), 1);
    assert_eq!(f.tensor("t").unwrap().shape(), vec![2, 32]);
    assert_eq!(f.tensor_data(f.tensor("t").unwrap()).len(), 256);
    // Version 2 has the same layout.
    let mut v2 = valid();
    v2.buf[4] = 2;
    assert_eq!(open(v2).unwrap().version(), 2);
}

#[test]
fn wrong_magic() {
    let mut r = valid();
    r.buf[..4].copy_from_slice(b"GGML");
    assert_eq!(gguf_err(open(r)), GgufError::BadMagic { found: *b"GGML" });
}

#[test]
fn unknown_versions() {
    for v in [0, 1, 4, u32::MAX] {
        let mut r = valid();
        r.buf[4..8].copy_from_slice(&v.to_le_bytes());
        assert_eq!(gguf_err(open(r)), GgufError::UnsupportedVersion(v));
    }
}

#[test]
fn every_truncation_is_an_error() {
    let full = valid().buf;
    for len in 0..full.len() {
        let r = Raw {
            buf: full[..len].to_vec(),
        };
        let e = gguf_err(open(r));
        assert!(
            matches!(
                e,
                GgufError::Truncated { .. } | GgufError::CountTooLarge { .. } | GgufError::TensorOutOfBounds { .. }
            ),
            "cut at {len}: {e:?}"
        );
    }
}

#[test]
fn truncated_tensor_data() {
    let mut r = valid();
    r.buf.pop();
    assert!(matches!(gguf_err(open(r)), GgufError::TensorOutOfBounds { .. }));
}

#[test]
fn counts_of_u64_max() {
    let e = gguf_err(open(Raw::header(3, u64::MAX, 0)));
    assert!(matches!(e, GgufError::CountTooLarge { count: u64::MAX, .. }), "{e:?}");
    let e = gguf_err(open(Raw::header(3, 0, u64::MAX)));
    assert!(matches!(e, GgufError::CountTooLarge { count: u64::MAX, .. }), "{e:?}");
    // An array claiming 2^64-1 elements.
    let r = Raw::header(3, 0, 1).str("a").u32(9).u32(4).u64(u64::MAX).u32(1);
    assert!(matches!(gguf_err(open(r)), GgufError::CountTooLarge { .. }));
    // A string claiming 2^64-1 bytes.
    let r = Raw::header(3, 0, 1).str("s").u32(8).u64(u64::MAX).bytes(b"abc");
    assert!(matches!(
        gguf_err(open(r)),
        GgufError::Truncated { needed: u64::MAX, .. }
    ));
}

#[test]
fn string_length_past_end_of_file() {
    let r = Raw::header(3, 0, 1).u64(1000).bytes(b"general.name");
    assert!(matches!(gguf_err(open(r)), GgufError::Truncated { needed: 1000, .. }));
}

#[test]
fn bad_alignment() {
    for a in [0, 3, 48] {
        let r = Raw::header(3, 0, 1).kv_u32("general.alignment", a);
        assert_eq!(gguf_err(open(r)), GgufError::BadAlignment(u64::from(a)));
    }
}

#[test]
fn tensor_offsets_out_of_bounds_or_misaligned() {
    let r = Raw::header(3, 1, 0).tensor("t", &[32], 0, 1 << 20).pad_and_data(128);
    assert!(matches!(gguf_err(open(r)), GgufError::TensorOutOfBounds { .. }));
    let r = Raw::header(3, 1, 0)
        .tensor("t", &[32], 0, u64::MAX - 31)
        .pad_and_data(128);
    assert!(matches!(gguf_err(open(r)), GgufError::TensorOutOfBounds { .. }));
    let r = Raw::header(3, 1, 0).tensor("t", &[32], 0, 4).pad_and_data(256);
    assert!(matches!(
        gguf_err(open(r)),
        GgufError::MisalignedTensor { offset: 4, .. }
    ));
}

#[test]
fn duplicate_names() {
    let r = Raw::header(3, 2, 0)
        .tensor("t", &[32], 0, 0)
        .tensor("t", &[32], 0, 128)
        .pad_and_data(256);
    assert_eq!(gguf_err(open(r)), GgufError::DuplicateTensor { name: "t".into() });
    let r = Raw::header(3, 0, 2).kv_u32("k", 1).kv_u32("k", 2);
    assert_eq!(gguf_err(open(r)), GgufError::DuplicateKey { key: "k".into() });
}

#[test]
fn unknown_types() {
    for ty in [4, 5, 99, u32::MAX] {
        let r = Raw::header(3, 1, 0).tensor("t", &[32], ty, 0).pad_and_data(256);
        assert_eq!(
            gguf_err(open(r)),
            GgufError::UnknownTensorType {
                name: "t".into(),
                type_id: ty
            }
        );
    }
    let r = Raw::header(3, 0, 1).str("k").u32(13).u32(0);
    assert!(matches!(
        gguf_err(open(r)),
        GgufError::UnknownValueType { type_id: 13, .. }
    ));
}

#[test]
fn impossible_dimensions() {
    let r = Raw::header(3, 1, 0)
        .tensor("t", &[1 << 32, 1 << 32, 2], 0, 0)
        .pad_and_data(64);
    assert!(matches!(gguf_err(open(r)), GgufError::BadDims { .. }));
    let r = Raw::header(3, 1, 0).tensor("t", &[32, 0], 0, 0).pad_and_data(64);
    assert!(matches!(gguf_err(open(r)), GgufError::BadDims { .. }));
    let r = Raw::header(3, 1, 0)
        .tensor("t", &[1, 1, 1, 1, 1], 0, 0)
        .pad_and_data(64);
    assert!(matches!(gguf_err(open(r)), GgufError::TooManyDims { n_dims: 5, .. }));
    // Q4_0 rows must be whole 32-element blocks.
    let r = Raw::header(3, 1, 0).tensor("t", &[33], 2, 0).pad_and_data(64);
    assert!(matches!(gguf_err(open(r)), GgufError::NotBlockAligned { ne0: 33, .. }));
    // Element count fits, byte size does not.
    let r = Raw::header(3, 1, 0).tensor("t", &[1 << 62, 3], 0, 0).pad_and_data(64);
    assert!(matches!(gguf_err(open(r)), GgufError::BadDims { .. }));
}

#[test]
fn invalid_utf8_and_deep_nesting() {
    let r = Raw::header(3, 0, 1).u64(2).bytes(&[0xff, 0xfe]).u32(4).u32(0);
    assert!(matches!(gguf_err(open(r)), GgufError::InvalidUtf8 { .. }));
    let r = Raw::header(3, 0, 1)
        .str("a")
        .u32(9)
        .u32(9)
        .u64(1)
        .u32(9)
        .u64(1)
        .u32(4)
        .u64(1)
        .u32(0);
    assert!(matches!(gguf_err(open(r)), GgufError::NestingTooDeep { .. }));
}

fn tiny() -> GgufWriter {
    SyntheticSpec::tiny(Architecture::Llama, 1)
        .gguf_writer(QuantType::F32)
        .unwrap()
}

fn load(g: &GgufWriter) -> Result<(Transformer, Tokenizer), Error> {
    let f = Arc::new(GgufFile::from_vec("m.gguf", g.to_bytes())?);
    Ok((Transformer::from_gguf(&f)?, Tokenizer::from_gguf(&f)?))
}

#[test]
fn model_level_errors_name_what_is_wrong() {
    let mut g = tiny();
    g.meta("general.architecture", Value::String("mamba9".into()));
    assert!(matches!(load(&g), Err(Error::UnknownArchitecture { found, .. }) if found == "mamba9"));

    let mut g = tiny();
    g.remove_tensor("blk.1.ffn_up.weight");
    assert!(matches!(load(&g), Err(Error::MissingTensor { name }) if name == "blk.1.ffn_up.weight"));

    let mut g = tiny();
    g.remove_meta("llama.block_count");
    assert!(matches!(load(&g), Err(Error::MissingKey { key }) if key == "llama.block_count"));

    let mut g = tiny();
    g.meta("llama.embedding_length", Value::String("wide".into()));
    assert!(matches!(load(&g), Err(Error::BadKey { key, .. }) if key == "llama.embedding_length"));

    let mut g = tiny();
    g.meta("llama.feed_forward_length", Value::U32(100));
    assert!(matches!(load(&g), Err(Error::TensorShape { name, .. }) if name == "blk.0.ffn_gate.weight"));

    let mut g = tiny();
    g.meta("llama.attention.head_count_kv", Value::U32(3));
    assert!(matches!(load(&g), Err(Error::BadKey { .. })));

    let mut g = tiny();
    g.meta("tokenizer.ggml.bos_token_id", Value::U32(1_000_000));
    assert!(matches!(load(&g), Err(Error::BadKey { key, .. }) if key == "tokenizer.ggml.bos_token_id"));

    let mut g = tiny();
    g.meta("tokenizer.ggml.model", Value::String("rwkv".into()));
    assert!(matches!(load(&g), Err(Error::Tokenizer(_))));

    let mut g = tiny();
    g.meta("llama.block_count", Value::U64(u64::MAX));
    assert!(load(&g).is_err());
}

#[test]
fn random_corruption_never_panics() {
    let image = tiny().to_bytes();
    let mut rng = finllm::generate::Rng::new(1234);
    let header_len = 16 * 1024; // most structure lives in the first bytes: hit them hardest
    for trial in 0..1500 {
        let mut bytes = image.clone();
        let flips = 1 + (rng.next_u64() % 4) as usize;
        for _ in 0..flips {
            let span = if trial % 4 == 0 {
                bytes.len()
            } else {
                header_len.min(bytes.len())
            };
            let at = (rng.next_u64() % span as u64) as usize;
            bytes[at] = rng.next_u64() as u8;
        }
        let result = catch_unwind(AssertUnwindSafe(|| {
            let f = Arc::new(GgufFile::from_vec("fuzz.gguf", bytes)?);
            let t = Transformer::from_gguf(&f)?;
            let tok = Tokenizer::from_gguf(&f)?;
            let ids = tok.encode("the rate")?;
            let mut cache = t.new_cache();
            t.forward(&ids, &mut cache).map(|_| ())
        }));
        assert!(result.is_ok(), "trial {trial}: panicked");
    }
}

#[test]
fn rewriting_a_mapped_file_leaves_its_readers_intact() {
    // A served model's file rewritten under it (`finllm quantize --out` onto the same path, a
    // test regenerating a fixture) must not truncate the pages the reader has mapped: that
    // faults with SIGBUS on the next read, which no error handling can catch.
    let dir = std::env::temp_dir().join(format!("finllm-rewrite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("w.gguf");
    let image = |fill: u8, len: usize| {
        let mut g = GgufWriter::new();
        g.tensor("w", &[len], QuantType::F32, vec![fill; len * 4]).unwrap();
        g
    };
    image(7, 4096).write(&path).unwrap();
    let old = GgufFile::open(&path).unwrap();
    image(9, 16).write(&path).unwrap();
    let info = old.tensor("w").unwrap();
    assert!(
        old.tensor_data(info).iter().all(|&b| b == 7),
        "the old mapping still reads the old bytes"
    );
    let new = GgufFile::open(&path).unwrap();
    assert!(new.tensor_data(new.tensor("w").unwrap()).iter().all(|&b| b == 9));
    assert_eq!(new.tensor("w").unwrap().shape(), vec![16]);
    // Nothing staged is left behind.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("w.gguf")]);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A sparse file: `header` then zeros up to `len` bytes, written without touching the disk's
/// blocks, so a test can hand the reader a file of gigabytes.
fn sparse_file(name: &str, header: &[u8], len: u64) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("finllm-bombs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, header).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len)
        .unwrap();
    path
}

#[test]
fn a_metadata_array_bomb_is_refused_before_allocating() {
    // 2^30 one-byte elements, all really in the file: the file justifies the count, but decoded
    // as 32-byte values they would take 34 GB (this aborted the process before).
    let n = 1u64 << 30;
    let header = Raw::header(3, 0, 1).str("bomb").u32(9).u32(0).u64(n).buf;
    let path = sparse_file("array.gguf", &header, header.len() as u64 + n);
    let started = std::time::Instant::now();
    match gguf_err(GgufFile::open(&path)) {
        GgufError::HeaderTooLarge { what, needed, limit } => {
            assert!(what.contains("bomb"), "{what}");
            assert!(needed > limit);
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed().as_secs() < 10);
    // An array of a size real tokenizers have still opens.
    let n = 300_000u64;
    let mut raw = Raw::header(3, 0, 1).str("tokenizer.ggml.scores").u32(9).u32(6).u64(n);
    raw.buf.resize(raw.buf.len() + 4 * n as usize, 0);
    let f = open(raw).unwrap();
    assert_eq!(
        f.get("tokenizer.ggml.scores").unwrap().as_array().unwrap().len(),
        n as usize
    );
    std::fs::remove_file(path).ok();
}

#[test]
fn a_key_count_bomb_in_a_large_file_is_refused_before_allocating() {
    // 6 GB of (sparse) file allow 460 million 13-byte keys by size; reserving them would take
    // 26 GB.
    let len = 6u64 << 30;
    let n_kv = (len - 24) / 13;
    let header = Raw::header(3, 0, n_kv).buf;
    let path = sparse_file("keys.gguf", &header, len);
    assert!(matches!(
        gguf_err(GgufFile::open(&path)),
        GgufError::HeaderTooLarge { what, .. } if what.contains("metadata")
    ));
    let n_tensors = (len - 24) / 24;
    std::fs::remove_file(&path).ok();
    let path = sparse_file("tensors.gguf", &Raw::header(3, n_tensors, 0).buf, len);
    assert!(matches!(
        gguf_err(GgufFile::open(&path)),
        GgufError::HeaderTooLarge { what, .. } if what.contains("tensor")
    ));
    std::fs::remove_file(path).ok();
}

#[test]
fn overlapping_tensors_are_refused() {
    let r = Raw::header(3, 2, 0)
        .tensor("a", &[32, 2], 0, 0)
        .tensor("b", &[32], 0, 128)
        .pad_and_data(512);
    match gguf_err(open(r)) {
        GgufError::OverlappingTensors { first, second, .. } => {
            assert_eq!((first.as_str(), second.as_str()), ("a", "b"))
        }
        other => panic!("{other:?}"),
    }
    // Adjacent is fine.
    let r = Raw::header(3, 2, 0)
        .tensor("a", &[32, 2], 0, 0)
        .tensor("b", &[32], 0, 256)
        .pad_and_data(512);
    assert_eq!(open(r).unwrap().tensors().len(), 2);
}

fn bad_key_named(r: Result<(Transformer, Tokenizer), Error>, expected_key: &str) {
    match r {
        Err(Error::BadKey { key, .. }) => assert_eq!(key, expected_key),
        other => panic!("expected a bad {expected_key}, got {other:?}"),
    }
}

#[test]
fn nonsense_hyper_parameters_name_their_key() {
    // head_dim of the tiny llama is 16.
    for dims in [0u32, 8, 17, 1 << 20] {
        let mut g = tiny();
        g.meta("llama.rope.dimension_count", Value::U32(dims));
        bad_key_named(load(&g), "llama.rope.dimension_count");
    }
    for factor in [0.0f32, -1.0, f32::NAN, f32::INFINITY] {
        let mut g = tiny();
        g.meta("llama.rope.scaling.type", Value::String("linear".into()));
        g.meta("llama.rope.scaling.factor", Value::F32(factor));
        bad_key_named(load(&g), "llama.rope.scaling.factor");
        let mut g = SyntheticSpec::tiny(Architecture::Gemma3, 1)
            .gguf_writer(QuantType::F32)
            .unwrap();
        g.meta("gemma3.rope.scaling.factor", Value::F32(factor));
        bad_key_named(load(&g), "gemma3.rope.scaling.factor");
        let mut g = tiny();
        g.meta("llama.rope.freq_base", Value::F32(factor));
        bad_key_named(load(&g), "llama.rope.freq_base");
    }
    let mut g = SyntheticSpec::tiny(Architecture::Gemma3, 1)
        .gguf_writer(QuantType::F32)
        .unwrap();
    g.meta("gemma3.attention.sliding_window", Value::U32(0));
    bad_key_named(load(&g), "gemma3.attention.sliding_window");
    // The tiny llama has two layers: a block count of one would silently drop layer 1.
    let mut g = tiny();
    g.meta("llama.block_count", Value::U32(1));
    bad_key_named(load(&g), "llama.block_count");
    for key in ["tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id"] {
        let mut g = tiny();
        g.meta(key, Value::U32(1_000_000));
        bad_key_named(load(&g), key);
    }
}

fn write_model(name: &str, g: &GgufWriter) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("finllm-nonsense-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    g.write(&path).unwrap();
    path
}

#[test]
fn nan_weights_are_a_typed_error_not_an_empty_answer() {
    use finllm::{GenerateParams, LoadOptions, Model};
    let spec = SyntheticSpec::tiny(Architecture::Llama, 1);
    let mut g = tiny();
    let mut norm = vec![1.0f32; spec.hidden];
    norm[5] = f32::NAN;
    g.remove_tensor("output_norm.weight");
    g.tensor_f32("output_norm.weight", &[spec.hidden], &norm).unwrap();
    let path = write_model("nan.gguf", &g);
    // Loaded plainly, generation refuses the first non-finite logits.
    let model = Model::load(&path, &LoadOptions::default()).unwrap();
    let params = GenerateParams {
        max_tokens: 4,
        ..Default::default()
    };
    assert!(matches!(
        model.generate("the rate", &params),
        Err(Error::NonFinite { .. })
    ));
    // With the weight check, the load names the tensor and element.
    let opts = LoadOptions {
        check_weights: true,
        ..Default::default()
    };
    match Model::load(&path, &opts) {
        Err(Error::NonFinite { what }) => assert!(
            what.contains("output_norm.weight") && what.contains("element 5"),
            "{what}"
        ),
        other => panic!("{other:?}"),
    }
    // Every stored format: an infinite or NaN scale is found.
    for quant in [
        QuantType::F16,
        QuantType::BF16,
        QuantType::Q8_0,
        QuantType::Q4_0,
        QuantType::Q4_1,
    ] {
        let g = spec.gguf_writer(quant).unwrap();
        let clean = write_model(&format!("clean-{quant}.gguf"), &g);
        GgufFile::open(&clean).unwrap().check_finite().unwrap();
        let mut bytes = std::fs::read(&clean).unwrap();
        let f = GgufFile::open(&clean).unwrap();
        let t = f.tensors().iter().find(|t| t.dtype == quant).unwrap();
        // The first block's first two bytes: the f16 scale of these block formats, and the first
        // value of the float ones; a NaN in each encoding (f16 0x7e00, bf16 0x7fc0).
        let at = t.start as usize;
        let nan = if quant == QuantType::BF16 {
            [0xc0, 0x7f]
        } else {
            [0x00, 0x7e]
        };
        bytes[at..at + 2].copy_from_slice(&nan);
        let broken = f.path().with_file_name(format!("broken-{quant}.gguf"));
        std::fs::write(&broken, &bytes).unwrap();
        match GgufFile::open(&broken).unwrap().check_finite() {
            Err(Error::NonFinite { what }) => assert!(what.contains(&t.name), "{quant}: {what}"),
            other => panic!("{quant}: {other:?}"),
        }
    }
}

#[test]
fn nan_weights_in_safetensors_are_found_by_the_weight_check() {
    use finllm::{LoadOptions, Model};
    let spec = SyntheticSpec::tiny(Architecture::Llama, 2);
    let opts = LoadOptions {
        check_weights: true,
        ..Default::default()
    };
    for (dtype, width, nan) in [
        (QuantType::F32, 4, f32::NAN.to_le_bytes().to_vec()),
        (QuantType::F16, 2, vec![0x00, 0x7e]),
        (QuantType::BF16, 2, vec![0x80, 0x7f]),
    ] {
        let dir = std::env::temp_dir().join(format!("finllm-st-nan-{}-{dtype}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        spec.write_safetensors_dir(&dir, dtype).unwrap();
        Model::load(&dir, &opts).unwrap();
        // Put a NaN (or +inf for bf16: 0x7f80) at element 3 of the final norm.
        let file = dir.join("model.safetensors");
        let mut bytes = std::fs::read(&file).unwrap();
        let at = {
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let view = st.tensor("model.norm.weight").unwrap();
            view.data().as_ptr() as usize - bytes.as_ptr() as usize + 3 * width
        };
        bytes[at..at + width].copy_from_slice(&nan);
        std::fs::write(&file, &bytes).unwrap();
        // A plain load does not read every weight; the check does, and names the place.
        Model::load(&dir, &LoadOptions::default()).unwrap();
        match Model::load(&dir, &opts) {
            Err(Error::NonFinite { what }) => assert!(
                what.contains("model.norm.weight") && what.contains("element 3"),
                "{dtype}: {what}"
            ),
            other => panic!("{dtype}: {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn max_tokens_near_usize_max_is_a_context_error() {
    use finllm::{GenerateParams, LoadOptions, Model};
    let path = write_model("ctx.gguf", &tiny());
    let model = Model::load(&path, &LoadOptions::default()).unwrap();
    let params = GenerateParams {
        max_tokens: usize::MAX,
        ..Default::default()
    };
    assert!(matches!(
        model.generate("the rate", &params),
        Err(Error::ContextOverflow { .. })
    ));
    // A prompt that could never fit is refused before tokenising it.
    let huge = "rate ".repeat(2_000_000);
    assert!(matches!(
        model.generate(&huge, &GenerateParams::default()),
        Err(Error::InvalidArgument { name, .. }) if name == "prompt"
    ));
}
