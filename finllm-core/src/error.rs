//! The one error type of `finllm-core`.
//!
//! Variants are grouped by domain (file formats, model structure, tokenizer, generation) and carry
//! the structured facts a caller needs to act: the path, the tensor or key name, expected vs found.
use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in finllm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- files -------------------------------------------------------------------------------
    /// The OS refused to open or map a file.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A GGUF file is malformed; the inner error says where.
    #[error("{path}: malformed GGUF file: {source}")]
    Gguf {
        path: PathBuf,
        #[source]
        source: GgufError,
    },

    /// A safetensors checkpoint or its `config.json` is malformed.
    #[error("{path}: invalid safetensors model: {reason}")]
    Safetensors { path: PathBuf, reason: String },

    // ---- model structure ---------------------------------------------------------------------
    /// The file names an architecture finllm does not implement.
    #[error("unknown model architecture '{found}'; supported: {supported}")]
    UnknownArchitecture { found: String, supported: String },

    /// A required metadata / config key is absent.
    #[error("model metadata key '{key}' is missing")]
    MissingKey { key: String },

    /// A metadata / config key has the wrong type or an impossible value.
    #[error("model metadata key '{key}' is invalid: expected {expected}, found {found}")]
    BadKey {
        key: String,
        expected: String,
        found: String,
    },

    /// A required weight tensor is absent.
    #[error("model tensor '{name}' is missing")]
    MissingTensor { name: String },

    /// A weight tensor has the wrong shape for the model's hyper-parameters.
    #[error("model tensor '{name}' has shape {found:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A weight tensor is stored in a type finllm cannot compute with.
    #[error("model tensor '{name}' has unsupported type {dtype}")]
    UnsupportedTensorType { name: String, dtype: String },

    // ---- tokenizer / chat --------------------------------------------------------------------
    /// The tokenizer could not be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    ChatTemplate(String),

    // ---- requests ----------------------------------------------------------------------------
    /// A caller-supplied argument is out of range.
    #[error("invalid argument '{name}': {reason}")]
    InvalidArgument { name: String, reason: String },

    /// The prompt (plus requested tokens) does not fit the model's context.
    #[error("prompt of {tokens} tokens plus {max_new} new tokens exceeds the context length {context}")]
    ContextOverflow {
        tokens: usize,
        max_new: usize,
        context: usize,
    },

    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab_size}")]
    TokenOutOfRange { id: u32, vocab_size: usize },

    // ---- engine ------------------------------------------------------------------------------
    /// The engine's queue is full (requests or prompt tokens waiting); nothing was queued. Retry
    /// later, or submit with a wait.
    #[error("engine busy: {reason}; the request was not queued")]
    Busy { reason: String },

    /// The request can never run on this engine: its prompt plus `max_tokens` needs more KV
    /// cache than the engine's whole budget, or its prompt more than the queue holds.
    #[error("request needs {needed} tokens of {what}, more than the engine's {limit}")]
    RequestTooLarge { what: String, needed: usize, limit: usize },

    /// The request's deadline passed before it finished (`generated` tokens had been sent).
    #[error("deadline exceeded after {generated} generated tokens")]
    DeadlineExceeded { generated: usize },

    /// The engine could not serve the request: its scheduler stopped, or a batched forward
    /// pass failed (every request of that step gets this error).
    #[error("engine: {reason}")]
    Engine { reason: String },

    // ---- compliance --------------------------------------------------------------------------
    /// A compliance policy (TOML rule pack) is invalid, or a semantic rule's embedder failed.
    #[error("compliance policy {origin}: {reason}")]
    Policy { origin: String, reason: String },

    /// The audit log cannot be opened, read or appended to; `reason` says what to do.
    #[error("audit log {path}: {reason}")]
    Audit { path: PathBuf, reason: String },

    /// An earlier write or fsync of the audit log failed, so the log refuses all further records
    /// (it fails closed rather than lose or reorder a record).
    #[error(
        "audit log {path} is closed after a failed write ({cause}); no record was accepted: fix the disk, then \
         reopen the log (a torn tail is truncated on open)"
    )]
    AuditPoisoned { path: PathBuf, cause: String },

    /// A path of the audit log (the log itself, a rotated file, its checkpoint or lock file) is
    /// not a regular file: a symbolic link, FIFO, device, socket or directory. Such paths are
    /// refused, so that records can neither block, vanish (`/dev/null`) nor be redirected.
    #[error(
        "audit log {path}: {found}, not a regular file; give the path of a regular file (symbolic links are \
         refused too)"
    )]
    AuditNotRegularFile { path: PathBuf, found: String },

    // ---- retrieval ---------------------------------------------------------------------------
    /// A document cannot be read as text: an unsupported type, invalid UTF-8, a malformed PDF or
    /// one without a text layer, or a file over the size limit.
    #[error("document {name}: {reason}")]
    Document { name: String, reason: String },

    /// An index file is not one finllm wrote, is of another version, or is truncated or
    /// corrupted (its checksum does not match): rebuild it with `finllm index`.
    #[error("index file {path}: {reason}")]
    IndexFile { path: PathBuf, reason: String },

    /// A retriever failed: an external store (PostgreSQL), a caller's retrieval function, or
    /// an index used with an embedder other than the one that built it.
    #[error("retriever {name}: {reason}")]
    Retriever { name: String, reason: String },

    // ---- compute -----------------------------------------------------------------------------
    /// The requested device cannot be used: no CUDA in this build, no such GPU, no driver.
    #[error("device {device} is not available: {reason}")]
    DeviceUnavailable { device: String, reason: String },

    /// A weight holds NaN or infinity, or the forward pass produced a non-finite logit.
    #[error(
        "{what} is not finite (NaN or infinity): the model's weights are corrupt; find the tensor with \
         `finllm info --check-weights`"
    )]
    NonFinite { what: String },

    /// The tensor backend failed (shape bug, out of memory).
    #[error("tensor backend: {0}")]
    Backend(#[from] candle_core::Error),
}

/// What kind of failure an [`Error`] is: the classes a binding maps to its own error codes or
/// exception types. Not `non_exhaustive`, on purpose: a binding matches every kind, so a new
/// kind fails its build instead of falling into a catch-all; and [`Error::kind`] matches every
/// error, so a new error variant must be given a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A file could not be read or written.
    Io,
    /// A model file is malformed (GGUF, safetensors).
    ModelFormat,
    /// A well-formed model that finllm cannot run (architecture, keys, tensors, types).
    UnsupportedModel,
    Tokenizer,
    ChatTemplate,
    /// A caller's argument is out of range (token ids included).
    InvalidArgument,
    ContextOverflow,
    /// The tensor backend failed, or a computation produced NaN or infinity.
    Backend,
    /// The requested device cannot be used.
    Device,
    Policy,
    Audit,
    /// The audit log refuses further records after an earlier failure.
    AuditPoisoned,
    /// The engine's queue is full.
    Busy,
    /// The request can never fit the engine's limits.
    RequestTooLarge,
    DeadlineExceeded,
    /// The engine's scheduler failed or stopped.
    Engine,
    /// A document cannot be read as text.
    Document,
    /// An index file is corrupt, truncated or of another version.
    IndexFile,
    /// A retriever (an external store, a caller's function) failed.
    Retriever,
}

impl Error {
    /// The error's kind (one exhaustive match: every variant has one).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Io { .. } => ErrorKind::Io,
            Error::Gguf { .. } | Error::Safetensors { .. } => ErrorKind::ModelFormat,
            Error::UnknownArchitecture { .. }
            | Error::MissingKey { .. }
            | Error::BadKey { .. }
            | Error::MissingTensor { .. }
            | Error::TensorShape { .. }
            | Error::UnsupportedTensorType { .. } => ErrorKind::UnsupportedModel,
            Error::Tokenizer(_) => ErrorKind::Tokenizer,
            Error::ChatTemplate(_) => ErrorKind::ChatTemplate,
            Error::InvalidArgument { .. } | Error::TokenOutOfRange { .. } => ErrorKind::InvalidArgument,
            Error::ContextOverflow { .. } => ErrorKind::ContextOverflow,
            Error::Backend(_) | Error::NonFinite { .. } => ErrorKind::Backend,
            Error::DeviceUnavailable { .. } => ErrorKind::Device,
            Error::Policy { .. } => ErrorKind::Policy,
            Error::Audit { .. } | Error::AuditNotRegularFile { .. } => ErrorKind::Audit,
            Error::AuditPoisoned { .. } => ErrorKind::AuditPoisoned,
            Error::Busy { .. } => ErrorKind::Busy,
            Error::RequestTooLarge { .. } => ErrorKind::RequestTooLarge,
            Error::DeadlineExceeded { .. } => ErrorKind::DeadlineExceeded,
            Error::Engine { .. } => ErrorKind::Engine,
            Error::Document { .. } => ErrorKind::Document,
            Error::IndexFile { .. } => ErrorKind::IndexFile,
            Error::Retriever { .. } => ErrorKind::Retriever,
        }
    }

    pub(crate) fn invalid(name: &str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            name: name.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn bad_key(key: &str, expected: &str, found: impl std::fmt::Display) -> Self {
        Error::BadKey {
            key: key.to_string(),
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
}

/// What is wrong inside a GGUF file. Offsets are byte offsets from the start of the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    #[error("bad magic {found:?}, expected \"GGUF\" (is this a GGUF model file?)")]
    BadMagic { found: [u8; 4] },
    #[error("unsupported GGUF version {0} (finllm reads versions 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("file ends at byte {file_len} while reading {what} at offset {offset} ({needed} bytes needed)")]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        file_len: u64,
    },
    #[error("{what} count {count} is impossible for a file of {file_len} bytes")]
    CountTooLarge { what: String, count: u64, file_len: u64 },
    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },
    #[error("metadata key '{key}' has unknown value type {type_id}")]
    UnknownValueType { key: String, type_id: u32 },
    #[error("metadata key '{key}' nests arrays deeper than {max}")]
    NestingTooDeep { key: String, max: usize },
    #[error("metadata key '{key}' appears twice")]
    DuplicateKey { key: String },
    #[error("general.alignment must be a non-zero power of two, found {0}")]
    BadAlignment(u64),
    #[error("tensor '{name}' has unknown type id {type_id}")]
    UnknownTensorType { name: String, type_id: u32 },
    #[error("tensor '{name}' has {n_dims} dimensions (at most 4 allowed)")]
    TooManyDims { name: String, n_dims: u32 },
    #[error("tensor '{name}' has dimensions {dims:?} whose product overflows or is zero")]
    BadDims { name: String, dims: Vec<u64> },
    #[error("tensor '{name}': first dimension {ne0} is not a multiple of the {dtype} block size {block}")]
    NotBlockAligned {
        name: String,
        dtype: String,
        ne0: u64,
        block: u64,
    },
    #[error("tensor '{name}' offset {offset} is not a multiple of the alignment {alignment}")]
    MisalignedTensor { name: String, offset: u64, alignment: u64 },
    #[error("tensor '{name}' data [{start}, {end}) lies past the end of the file ({file_len} bytes)")]
    TensorOutOfBounds {
        name: String,
        start: u64,
        end: u64,
        file_len: u64,
    },
    #[error("tensor '{name}' appears twice")]
    DuplicateTensor { name: String },
    #[error(
        "decoding {what} would take {needed} bytes of memory, over the {limit}-byte limit for a GGUF \
         header (metadata and tensor table); real models need a few megabytes"
    )]
    HeaderTooLarge { what: String, needed: u64, limit: u64 },
    #[error("tensors '{first}' [{first_start}, {first_end}) and '{second}' [{second_start}, {second_end}) overlap in the file")]
    OverlappingTensors {
        first: String,
        first_start: u64,
        first_end: u64,
        second: String,
        second_start: u64,
        second_end: u64,
    },
}
