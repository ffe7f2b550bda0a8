//! Tokenizers built from a GGUF file's own `tokenizer.ggml.*` metadata (or a `tokenizer.json`),
//! and byte-exact incremental detokenisation.
//!
//! Encoding goes through HF `tokenizers`. Decoding does not: every token is mapped to the raw
//! bytes it stands for, so streamed text can be cut exactly at UTF-8 character boundaries and a
//! character split across tokens is never emitted broken.

mod stream;

use std::collections::HashMap;
use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{NormalizerWrapper, Prepend, Replace, Sequence as NormSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

pub use stream::StreamDecoder;

use crate::error::{Error, Result};
use crate::model::gguf::{GgufFile, Value};

/// GGUF `tokenizer.ggml.token_type` values.
const TOKEN_NORMAL: i64 = 1;
const TOKEN_UNKNOWN: i64 = 2;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;
const TOKEN_BYTE: i64 = 6;

/// How token strings map back to bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// GPT-2 style byte-level BPE (Llama 3, Qwen, SmolLM2).
    ByteLevelBpe,
    /// SentencePiece-style BPE with `▁` for spaces and `<0xNN>` byte fallback (Llama 2, Mistral).
    SentencePiece,
}

/// A tokenizer together with the special-token facts generation needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    kind: TokenizerKind,
    /// Raw bytes of each token id.
    pieces: Vec<Vec<u8>>,
    /// Control tokens are not rendered in output text.
    control: Vec<bool>,
    bos: Option<u32>,
    eos: Option<u32>,
    /// Every id that ends a generation (EOS, end-of-turn tokens).
    stop_ids: Vec<u32>,
    add_bos: bool,
    strip_leading_space: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("vocab", &self.pieces.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish()
    }
}

/// Each token's byte range in the encoded text ([`Tokenizer::encode_with_offsets`]).
pub type Offsets = Vec<(usize, usize)>;

/// Largest `tokenizer.json` read (real ones are up to ~30 MB).
pub const MAX_TOKENIZER_JSON_BYTES: u64 = 256 << 20;

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

impl Tokenizer {
    /// Build the tokenizer a GGUF file describes.
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let tokens = string_array(f, "tokenizer.ggml.tokens")?;
        let n = tokens.len();
        if n == 0 {
            return Err(Error::bad_key("tokenizer.ggml.tokens", "a non-empty array", "[]"));
        }
        let types = match f.get("tokenizer.ggml.token_type") {
            Some(v) => int_array(v, "tokenizer.ggml.token_type", n)?,
            None => vec![TOKEN_NORMAL; n],
        };
        let model = f.get_str("tokenizer.ggml.model")?;
        let (mut inner, kind) = match model {
            "gpt2" => {
                let merges = string_array(f, "tokenizer.ggml.merges")?;
                let pre = f.get("tokenizer.ggml.pre").and_then(Value::as_str).unwrap_or("default");
                (byte_level_bpe(&tokens, &merges, pre)?, TokenizerKind::ByteLevelBpe)
            }
            "llama" => {
                let scores = match f.get("tokenizer.ggml.scores") {
                    Some(v) => float_array(v, "tokenizer.ggml.scores", n)?,
                    None => vec![0.0; n],
                };
                let add_space = f
                    .get("tokenizer.ggml.add_space_prefix")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                (sentencepiece_bpe(&tokens, &scores, &types, add_space)?, TokenizerKind::SentencePiece)
            }
            other => {
                return Err(Error::Tokenizer(format!(
                    "tokenizer.ggml.model '{other}' is not supported (gpt2, llama); put a tokenizer.json beside the model to override"
                )))
            }
        };
        let mut special = Vec::new();
        for (id, (tok, &ty)) in tokens.iter().zip(&types).enumerate() {
            if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED {
                special.push((id, AddedToken::from(tok.clone(), ty == TOKEN_CONTROL)));
            }
        }
        add_specials(&mut inner, &special)?;

        let pieces = tokens
            .iter()
            .zip(&types)
            .map(|(t, &ty)| piece_bytes(t, ty, kind))
            .collect();
        let control = types
            .iter()
            .map(|&t| t == TOKEN_CONTROL || t == TOKEN_UNKNOWN)
            .collect();
        let id = |key: &str| -> Result<Option<u32>> {
            match f.get(key) {
                None => Ok(None),
                Some(v) => match v.as_u64() {
                    Some(id) if (id as usize) < n => Ok(Some(id as u32)),
                    _ => Err(Error::bad_key(
                        key,
                        &format!("a token id below the vocabulary size {n}"),
                        v.describe(),
                    )),
                },
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let eos = id("tokenizer.ggml.eos_token_id")?;
        let eot = id("tokenizer.ggml.eot_token_id")?;
        // Ids finllm does not use itself are still checked: a file that names a token outside its
        // vocabulary is broken, and another reader of it could index out of bounds.
        for key in [
            "tokenizer.ggml.unknown_token_id",
            "tokenizer.ggml.padding_token_id",
            "tokenizer.ggml.seperator_token_id",
            "tokenizer.ggml.cls_token_id",
            "tokenizer.ggml.mask_token_id",
        ] {
            id(key)?;
        }
        let add_bos = f
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(kind == TokenizerKind::SentencePiece);
        let mut tokenizer = Tokenizer {
            inner,
            kind,
            pieces,
            control,
            bos,
            eos,
            stop_ids: Vec::new(),
            add_bos: add_bos && bos.is_some(),
            strip_leading_space: kind == TokenizerKind::SentencePiece,
        };
        tokenizer.stop_ids = [eos, eot].into_iter().flatten().collect();
        tokenizer.add_end_of_turn_stops(&tokens);
        Ok(tokenizer)
    }

    /// Load a `tokenizer.json`; special-token ids come from the caller (GGUF or HF config).
    pub fn from_json_file(path: &Path, bos: Option<u32>, eos: &[u32], add_bos: bool) -> Result<Self> {
        use std::io::Read;
        let fail = |reason: String| Error::Tokenizer(format!("{}: {reason}", path.display()));
        let io_err = |e: std::io::Error| fail(e.to_string());
        // A regular file of bounded size: a FIFO would block, a device never end.
        if !std::fs::metadata(path).map_err(io_err)?.is_file() {
            return Err(fail("is not a regular file".into()));
        }
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .map_err(io_err)?
            .take(MAX_TOKENIZER_JSON_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        if bytes.len() as u64 > MAX_TOKENIZER_JSON_BYTES {
            return Err(fail(format!("larger than {MAX_TOKENIZER_JSON_BYTES} bytes")));
        }
        // The tokenizers crate panics (`expect("Helper")`) on some syntax errors inside a
        // `decoder`; a syntactically valid document cannot reach that. Any other panic in it
        // becomes an error here too, not an unwinding through the caller.
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| fail(format!("invalid JSON: {e}")))?;
        let inner = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes))
            .map_err(|_| fail("the tokenizers library failed on this file".into()))?
            .map_err(|e| fail(e.to_string()))?;
        let vocab = inner.get_vocab(true);
        let n = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        // Ids index a table below: a vocabulary with an id of 4e9 would ask for 100 GB.
        if n > 2 * vocab.len() + 1024 {
            return Err(fail(format!(
                "token ids reach {} for a vocabulary of {} tokens; ids must be (nearly) dense",
                n - 1,
                vocab.len()
            )));
        }
        let mut tokens = vec![String::new(); n];
        for (tok, &id) in &vocab {
            tokens[id as usize] = tok.clone();
        }
        let kind = if vocab.contains_key("<0x0A>") {
            TokenizerKind::SentencePiece
        } else {
            TokenizerKind::ByteLevelBpe
        };
        let added: HashMap<u32, bool> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, t)| (id, t.special))
            .collect();
        let mut types = vec![TOKEN_NORMAL; n];
        for (id, special) in &added {
            types[*id as usize] = if *special { TOKEN_CONTROL } else { TOKEN_USER_DEFINED };
        }
        if kind == TokenizerKind::SentencePiece {
            for (t, ty) in tokens.iter().zip(types.iter_mut()) {
                if is_byte_token(t) {
                    *ty = TOKEN_BYTE;
                }
            }
        }
        let pieces = tokens
            .iter()
            .zip(&types)
            .map(|(t, &ty)| piece_bytes(t, ty, kind))
            .collect();
        let control = types.iter().map(|&t| t == TOKEN_CONTROL).collect();
        for &id in bos.iter().chain(eos) {
            if id as usize >= n {
                return Err(Error::TokenOutOfRange { id, vocab_size: n });
            }
        }
        let mut tokenizer = Tokenizer {
            inner,
            kind,
            pieces,
            control,
            bos,
            eos: eos.first().copied(),
            stop_ids: eos.to_vec(),
            add_bos: add_bos && bos.is_some(),
            strip_leading_space: kind == TokenizerKind::SentencePiece,
        };
        tokenizer.add_end_of_turn_stops(&tokens);
        Ok(tokenizer)
    }

    /// Chat models end a turn with a dedicated token that the file may not call EOS.
    fn add_end_of_turn_stops(&mut self, tokens: &[String]) {
        for name in ["<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>", "<|end|>"] {
            if let Some(id) = tokens.iter().position(|t| t == name) {
                let id = id as u32;
                if self.control[id as usize] && !self.stop_ids.contains(&id) {
                    self.stop_ids.push(id);
                }
            }
        }
    }

    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Ids that end generation.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// The text of a token (special tokens as written, bytes lossily).
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.pieces
            .get(id as usize)
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// The id of a token written exactly as `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    /// The longest text that could possibly encode to at most `tokens` tokens: every token
    /// stands for at most the longest piece's bytes, with a factor of four for normalisers that
    /// shrink text (NFKC) and for the spaces SentencePiece writes as three-byte `▁`. Longer text
    /// can never fit, and is refused before tokenising (which takes ~40 bytes of memory per
    /// input byte).
    pub fn max_text_bytes(&self, tokens: usize) -> usize {
        let longest = self.pieces.iter().map(Vec::len).max().unwrap_or(1).max(4);
        tokens.saturating_mul(longest).saturating_mul(4)
    }

    /// Encode raw text. Special tokens written in it (`<|im_start|>`) are parsed; BOS is
    /// prepended when the model says so.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// [`encode`](Self::encode) with each token's byte range in `text` (a BOS the tokenizer
    /// adds has the empty range `(0, 0)`). Ranges come from the tokenizer's alignment of tokens
    /// with the input: they are ordered, lie within `text` and fall on character boundaries.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Offsets)> {
        let enc = self.inner.encode(text, false).map_err(tok_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        let mut offsets = Vec::with_capacity(enc.len() + 1);
        if self.add_bos {
            if let Some(b) = self.bos {
                ids.push(b);
                offsets.push((0, 0));
            }
        }
        ids.extend_from_slice(enc.get_ids());
        let mut last = 0;
        for &(a, b) in enc.get_offsets() {
            // Clamp to the text and to char boundaries, and keep them ordered, whatever the
            // tokenizer reported.
            let fit = |mut i: usize| {
                i = i.min(text.len());
                while !text.is_char_boundary(i) {
                    i -= 1;
                }
                i
            };
            let a = fit(a).max(last);
            let b = fit(b).max(a);
            offsets.push((a, b));
            last = a;
        }
        Ok((ids, offsets))
    }

    /// Decode ids to text, skipping control tokens; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let bytes = self.decode_bytes(ids, true)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The raw bytes the ids stand for.
    pub fn decode_bytes(&self, ids: &[u32], skip_control: bool) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(self.piece(id, skip_control)?);
        }
        if self.strip_leading_space && out.first() == Some(&b' ') {
            out.remove(0);
        }
        Ok(out)
    }

    /// The bytes of one token (empty for control tokens when skipped).
    pub fn piece(&self, id: u32, skip_control: bool) -> Result<&[u8]> {
        let p = self.pieces.get(id as usize).ok_or(Error::TokenOutOfRange {
            id,
            vocab_size: self.pieces.len(),
        })?;
        Ok(if skip_control && self.control[id as usize] {
            &[]
        } else {
            p
        })
    }

    /// Save the encoder as an HF `tokenizer.json`.
    pub fn save_json(&self, path: &Path) -> Result<()> {
        self.inner
            .save(path, true)
            .map_err(|e| Error::Tokenizer(format!("cannot write {}: {e}", path.display())))
    }

    /// A streaming decoder for text generated after a prompt.
    pub fn stream_decoder(&self) -> StreamDecoder<'_> {
        StreamDecoder::new(self)
    }
}

fn add_specials(inner: &mut tokenizers::Tokenizer, special: &[(usize, AddedToken)]) -> Result<()> {
    let tokens: Vec<AddedToken> = special.iter().map(|(_, t)| t.clone()).collect();
    inner.add_special_tokens(&tokens);
    // Added tokens must keep their GGUF ids; a mismatch means the vocabulary is inconsistent.
    for (id, tok) in special {
        if inner.token_to_id(&tok.content) != Some(*id as u32) {
            return Err(Error::Tokenizer(format!(
                "special token {:?} (id {id}) appears more than once in the vocabulary",
                tok.content
            )));
        }
    }
    Ok(())
}

fn string_array(f: &GgufFile, key: &str) -> Result<Vec<String>> {
    let v = f.require(key)?;
    let arr = v
        .as_array()
        .ok_or_else(|| Error::bad_key(key, "an array of strings", v.describe()))?;
    arr.iter()
        .map(|x| {
            x.as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::bad_key(key, "an array of strings", x.describe()))
        })
        .collect()
}

fn int_array(v: &Value, key: &str, n: usize) -> Result<Vec<i64>> {
    let arr = v
        .as_array()
        .filter(|a| a.len() == n)
        .ok_or_else(|| Error::bad_key(key, &format!("an array of {n} integers"), v.describe()))?;
    arr.iter()
        .map(|x| match *x {
            Value::I32(i) => Ok(i64::from(i)),
            _ => x
                .as_u64()
                .and_then(|u| i64::try_from(u).ok())
                .ok_or_else(|| Error::bad_key(key, "integers", x.describe())),
        })
        .collect()
}

fn float_array(v: &Value, key: &str, n: usize) -> Result<Vec<f64>> {
    let arr = v
        .as_array()
        .filter(|a| a.len() == n)
        .ok_or_else(|| Error::bad_key(key, &format!("an array of {n} numbers"), v.describe()))?;
    arr.iter()
        .map(|x| x.as_f64().ok_or_else(|| Error::bad_key(key, "numbers", x.describe())))
        .collect()
}

/// The regex llama.cpp and HF use for Llama 3 style pre-tokenisation.
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2 splits digits one by one.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level_bpe(tokens: &[String], merges: &[String], pre: &str) -> Result<tokenizers::Tokenizer> {
    let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| Error::Tokenizer(format!("merge {m:?} is not two tokens separated by a space")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(tok_err)?;
    let byte_level = |use_regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, use_regex));
    let regex_then_bytes = |re: &str| -> Result<PreTokenizerWrapper> {
        let split = Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tok_err)?;
        Ok(PreTokenizerWrapper::Sequence(PreSequence::new(vec![
            split.into(),
            byte_level(false),
        ])))
    };
    let pre_tokenizer = match pre {
        "default" | "gpt-2" | "gpt2" => byte_level(true),
        "smollm" | "starcoder" | "refact" => PreTokenizerWrapper::Sequence(PreSequence::new(vec![
            Digits::new(true).into(),
            byte_level(true),
        ])),
        "llama3" | "llama-bpe" | "llama-v3" | "dbrx" | "smaug-bpe" => regex_then_bytes(LLAMA3_SPLIT)?,
        "qwen2" | "deepseek-r1-qwen" => regex_then_bytes(QWEN2_SPLIT)?,
        other => {
            return Err(Error::Tokenizer(format!(
                "pre-tokenizer '{other}' is not supported (default, gpt-2, smollm, llama-bpe, qwen2); put a tokenizer.json beside the model to override"
            )))
        }
    };
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tokenizer));
    Ok(tok)
}

/// SentencePiece BPE: merges are implied by scores (a merge is ranked by its result's score).
fn sentencepiece_bpe(
    tokens: &[String],
    scores: &[f64],
    types: &[i64],
    add_space: bool,
) -> Result<tokenizers::Tokenizer> {
    let vocab: tokenizers::models::bpe::Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let mut merges: Vec<(f64, u32, u32, String, String)> = Vec::new();
    for (id, piece) in tokens.iter().enumerate() {
        if types[id] != TOKEN_NORMAL {
            continue;
        }
        for (split, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(split);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                merges.push((scores[id], li, ri, l.to_string(), r.to_string()));
            }
        }
    }
    // Higher score merges first; ties broken by the ids of the parts, as HF's converter does.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges = merges.into_iter().map(|(_, _, _, l, r)| (l, r)).collect();
    let unk = tokens
        .iter()
        .zip(types)
        .find(|(_, &t)| t == TOKEN_UNKNOWN)
        .map(|(t, _)| t.clone());
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk);
    }
    let bpe = builder.build().map_err(tok_err)?;
    let mut norms: Vec<NormalizerWrapper> = Vec::new();
    if add_space {
        norms.push(Prepend::new("▁".into()).into());
    }
    norms.push(Replace::new(" ", "▁").map_err(tok_err)?.into());
    let mut tok = tokenizers::Tokenizer::new(bpe);
    tok.with_normalizer(Some(NormSequence::new(norms)));
    Ok(tok)
}

fn is_byte_token(t: &str) -> bool {
    t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && u8::from_str_radix(&t[3..5], 16).is_ok()
}

/// The bytes a token stands for.
fn piece_bytes(token: &str, ty: i64, kind: TokenizerKind) -> Vec<u8> {
    if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED || ty == TOKEN_UNKNOWN {
        return token.as_bytes().to_vec();
    }
    match kind {
        TokenizerKind::ByteLevelBpe => {
            let map = byte_decoder();
            token
                .chars()
                .map(|c| map.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                // Not a byte-level string: a token added as plain text.
                .unwrap_or_else(|| token.as_bytes().to_vec())
        }
        TokenizerKind::SentencePiece => {
            if ty == TOKEN_BYTE || is_byte_token(token) {
                if let Ok(b) = u8::from_str_radix(&token[3..5], 16) {
                    return vec![b];
                }
            }
            token.replace('▁', " ").into_bytes()
        }
    }
}

/// GPT-2's printable-character stand-ins for bytes, inverted.
fn byte_decoder() -> &'static HashMap<char, u8> {
    static MAP: std::sync::OnceLock<HashMap<char, u8>> = std::sync::OnceLock::new();
    MAP.get_or_init(|| {
        let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
        let mut next = 256u32;
        (0..=255u8)
            .map(|b| {
                let c = if printable(b) {
                    char::from(b)
                } else {
                    let c = char::from_u32(next).expect("below the surrogate range");
                    next += 1;
                    c
                };
                (c, b)
            })
            .collect()
    })
}
