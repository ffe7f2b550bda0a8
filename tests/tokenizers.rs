//! Tokenizers built from GGUF metadata: SentencePiece-style vocabularies with hand-derived
//! expectations, and the `tokenizer.json` override.

use finllm::model::gguf::GgufWriter;
use finllm::model::{GgufFile, Value};
use finllm::quant::QuantType;
use finllm::tokenizer::TokenizerKind;
use finllm::tools::synthetic::SyntheticSpec;
use finllm::{Architecture, LoadOptions, Model, Tokenizer};

/// `<unk> <s> </s>`, 256 byte tokens, then scored pieces.
fn spm_writer() -> (GgufWriter, Vec<String>) {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![Value::I32(2), Value::I32(3), Value::I32(3)];
    let mut scores = vec![Value::F32(0.0); 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(Value::I32(6));
        scores.push(Value::F32(0.0));
    }
    for (piece, score) in [
        ("▁", -5.0),
        ("a", -6.0),
        ("b", -6.0),
        ("c", -6.0),
        ("▁a", -2.0),
        ("ab", -3.0),
        ("▁ab", -1.0),
        ("bc", -4.0),
        ("▁abc", -0.5),
    ] {
        tokens.push(piece.into());
        types.push(Value::I32(1));
        scores.push(Value::F32(score));
    }
    let mut g = GgufWriter::new();
    g.meta("general.architecture", Value::String("llama".into()));
    g.meta("tokenizer.ggml.model", Value::String("llama".into()));
    g.meta(
        "tokenizer.ggml.tokens",
        Value::Array(tokens.iter().cloned().map(Value::String).collect()),
    );
    g.meta("tokenizer.ggml.token_type", Value::Array(types));
    g.meta("tokenizer.ggml.scores", Value::Array(scores));
    g.meta("tokenizer.ggml.bos_token_id", Value::U32(1));
    g.meta("tokenizer.ggml.eos_token_id", Value::U32(2));
    g.meta("tokenizer.ggml.unknown_token_id", Value::U32(0));
    (g, tokens)
}

fn tok_from(g: &GgufWriter) -> Tokenizer {
    Tokenizer::from_gguf(&GgufFile::from_vec("t.gguf", g.to_bytes()).unwrap()).unwrap()
}

#[test]
fn sentencepiece_merges_follow_scores_with_byte_fallback() {
    let (g, tokens) = spm_writer();
    let tok = tok_from(&g);
    assert_eq!(tok.kind(), TokenizerKind::SentencePiece);
    let id = |p: &str| tokens.iter().position(|t| t == p).unwrap() as u32;
    // BOS is added by default for SentencePiece vocabularies; a space prefix is added.
    assert_eq!(tok.encode("ab").unwrap(), vec![1, id("▁ab")]);
    assert_eq!(tok.encode("abc").unwrap(), vec![1, id("▁abc")]);
    assert_eq!(tok.encode("a bc").unwrap(), vec![1, id("▁a"), id("▁"), id("bc")]);
    // 'é' is not in the vocabulary: its UTF-8 bytes 0xC3 0xA9 are used.
    let ids = tok.encode("a é").unwrap();
    assert_eq!(ids, vec![1, id("▁a"), id("▁"), id("<0xC3>"), id("<0xA9>")]);
    // Decoding maps ▁ to spaces, joins bytes, skips BOS and drops the added leading space.
    assert_eq!(tok.decode(&ids).unwrap(), "a é");
    // Streaming holds the first byte of 'é' until the second arrives.
    let mut dec = tok.stream_decoder();
    let pieces: Vec<String> = ids[1..].iter().map(|&i| dec.push(i).unwrap()).collect();
    assert_eq!(pieces, vec![" a", " ", "", "é"]);
}

#[test]
fn add_bos_flag_and_space_prefix_are_honoured() {
    let (mut g, tokens) = spm_writer();
    g.meta("tokenizer.ggml.add_bos_token", Value::Bool(false));
    g.meta("tokenizer.ggml.add_space_prefix", Value::Bool(false));
    let tok = tok_from(&g);
    let id = |p: &str| tokens.iter().position(|t| t == p).unwrap() as u32;
    assert_eq!(tok.encode("ab").unwrap(), vec![id("ab")]);
    // Special tokens written in the text are parsed as such.
    assert_eq!(tok.encode("<s>ab").unwrap(), vec![1, id("ab")]);
}

#[test]
fn tokenizer_json_beside_the_model_overrides_the_gguf() {
    let spec = SyntheticSpec::tiny(Architecture::Llama, 3);
    let dir = std::env::temp_dir().join(format!("finllm-tok-override-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The GGUF's own tokenizer loses its merges: "the" becomes three byte tokens.
    let mut g = spec.gguf_writer(QuantType::F32).unwrap();
    g.meta("tokenizer.ggml.merges", Value::Array(Vec::new()));
    let path = dir.join("model.gguf");
    g.write(&path).unwrap();
    let plain = Model::load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(plain.tokenize(" the").unwrap().len(), 4);
    // The HF tokenizer.json (with merges) written next to it takes over.
    let hf = dir.join("hf");
    spec.write_safetensors_dir(&hf, QuantType::F32).unwrap();
    std::fs::copy(hf.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let over = Model::load(&path, &LoadOptions::default()).unwrap();
    assert_eq!(over.tokenize(" the").unwrap().len(), 1);
    assert_eq!(
        over.detokenize(&over.tokenize(" the rate").unwrap()).unwrap(),
        " the rate"
    );
}

#[test]
fn hostile_tokenizer_json_files_are_typed_errors() {
    use finllm::Error;
    let dir = std::env::temp_dir().join(format!("finllm-tok-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let load = |path: &std::path::Path| Tokenizer::from_json_file(path, None, &[], false);
    // Found by the tokenizer_json fuzz target: a syntax error inside `decoder` made the
    // tokenizers crate panic (`expect("Helper")`) instead of returning an error.
    let regression = env!("CARGO_MANIFEST_DIR").to_string()
        + "/tests/data/fuzz-regressions/tokenizer_json-decoder-syntax-panic.json";
    match load(std::path::Path::new(&regression)) {
        Err(Error::Tokenizer(msg)) => assert!(msg.contains("invalid JSON"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // A vocabulary whose one id is 4e9 would size a 100 GB table.
    let sparse = dir.join("sparse.json");
    std::fs::write(
        &sparse,
        r#"{"version":"1.0","model":{"type":"WordLevel","vocab":{"a":4000000000,"[UNK]":0},"unk_token":"[UNK]"}}"#,
    )
    .unwrap();
    match load(&sparse) {
        Err(Error::Tokenizer(msg)) => assert!(msg.contains("dense"), "{msg}"),
        other => panic!("{other:?}"),
    }
    // Devices are not tokenizer files.
    assert!(matches!(load(std::path::Path::new("/dev/zero")), Err(Error::Tokenizer(m)) if m.contains("regular file")));
    std::fs::remove_dir_all(&dir).ok();
}
