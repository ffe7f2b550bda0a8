//! Malformed and hostile GGUF files: each gives a typed error, never a panic or a huge
//! allocation.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use finllm::model::gguf::GgufWriter;
use finllm::model::synthetic::SyntheticSpec;
use finllm::model::{GgufFile, Transformer, Value};
use finllm::quant::QuantType;
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
