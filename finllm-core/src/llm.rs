//! [`Model`]: a loaded LLM with its tokenizer and chat template, ready to generate.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::chat::{ChatMessage, ChatTemplate};
use crate::error::{Error, Result};
use crate::generate::{GenerateParams, TokenStream};
use crate::model::{Backend, GgufFile, ModelConfig, Transformer};
use crate::tokenizer::Tokenizer;

/// What to answer: the prompt of a request, in whichever form the caller has it.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// Raw text, encoded as [`Model::tokenize_prompt`] does (special tokens parsed, no template).
    Text(String),
    /// A conversation, rendered with the model's chat template (assistant turn opened).
    Chat(Vec<ChatMessage>),
    /// Token ids, used as they are.
    Ids(Vec<u32>),
}

/// How to load a model.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// Compute threads for this model (default: the number of physical cores).
    pub threads: Option<usize>,
    /// Where to run: the CPU (default), `cuda:N`, or `auto` (the first GPU when this build has
    /// CUDA and the machine a GPU, else the CPU).
    pub device: crate::DeviceSpec,
    /// Use this `tokenizer.json` instead of the tokenizer in the GGUF file.
    pub tokenizer_json: Option<PathBuf>,
    /// Called with the fraction of the load done, for progress bars.
    pub progress: Option<Arc<dyn Fn(f32) + Send + Sync>>,
    /// Scan every weight of a GGUF file for NaN and infinity before building the model (reads
    /// the whole file once); a corrupt tensor is an [`Error::NonFinite`] naming it. Generation
    /// checks every step's logits either way.
    pub check_weights: bool,
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("threads", &self.threads)
            .field("device", &self.device)
            .field("tokenizer_json", &self.tokenizer_json)
            .field("check_weights", &self.check_weights)
            .finish_non_exhaustive()
    }
}

/// Where the model came from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    Gguf(Arc<GgufFile>),
    Safetensors(PathBuf),
}

/// A loaded model. Shareable across threads: each request carries its own KV cache.
pub struct Model {
    transformer: Transformer,
    tokenizer: Tokenizer,
    chat_template: Option<ChatTemplate>,
    source: ModelSource,
    /// Compute threads, shared with every other model of this process that asked for as many.
    pool: Arc<rayon::ThreadPool>,
    /// SHA-256 of the model's files, computed on first use (audit records name the exact model).
    sha256: std::sync::OnceLock<String>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", self.config())
            .field("tokenizer", &self.tokenizer)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Load a `.gguf` file, or an HF directory with `config.json`, `*.safetensors` and
    /// `tokenizer.json`. A `tokenizer.json` beside a GGUF file overrides its built-in tokenizer.
    pub fn load(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        let report = |f: f32| {
            if let Some(p) = &opts.progress {
                p(f)
            }
        };
        report(0.0);
        let backend = match opts.device.resolve()? {
            d if d.is_cpu() => Backend::CpuKernels,
            d => Backend::Candle(d),
        };
        let pool = thread_pool(opts.threads)?;
        let model = if path.is_dir() {
            Self::load_hf_dir(path, opts, pool, &backend)?
        } else {
            let file = Arc::new(GgufFile::open(path)?);
            if opts.check_weights {
                file.check_finite()?;
            }
            report(0.2);
            let transformer = pool.install(|| Transformer::from_gguf_on(&file, &backend))?;
            report(0.9);
            let beside = path.with_file_name("tokenizer.json");
            let override_json = opts
                .tokenizer_json
                .clone()
                .or_else(|| beside.is_file().then_some(beside));
            let gguf_tok = Tokenizer::from_gguf(&file)?;
            let tokenizer = match override_json {
                Some(json) => {
                    let eos: Vec<u32> = gguf_tok.stop_ids().to_vec();
                    Tokenizer::from_json_file(&json, gguf_tok.bos_id(), &eos, gguf_tok.adds_bos())?
                }
                None => gguf_tok,
            };
            let chat_template = match file.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
                Some(src) => Some(ChatTemplate::new(src, &tokenizer)?),
                None => None,
            };
            Model {
                transformer,
                tokenizer,
                chat_template,
                source: ModelSource::Gguf(file),
                pool,
                sha256: Default::default(),
            }
        };
        model.check_vocab()?;
        report(1.0);
        Ok(model)
    }

    fn load_hf_dir(dir: &Path, opts: &LoadOptions, pool: Arc<rayon::ThreadPool>, backend: &Backend) -> Result<Self> {
        if opts.check_weights {
            crate::model::check_safetensors_finite(dir)?;
        }
        let transformer = pool.install(|| Transformer::from_safetensors_on(dir, backend))?;
        let config = crate::model::read_hf_config(dir)?;
        let tok_config = read_json_if_present(&dir.join("tokenizer_config.json"))?;
        let json = opts
            .tokenizer_json
            .clone()
            .unwrap_or_else(|| dir.join("tokenizer.json"));
        let id_of = |v: Option<&serde_json::Value>| -> Vec<u32> {
            match v {
                Some(serde_json::Value::Number(n)) => n.as_u64().map(|x| x as u32).into_iter().collect(),
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
                _ => Vec::new(),
            }
        };
        let bos = id_of(config.get("bos_token_id")).first().copied();
        let eos = id_of(config.get("eos_token_id"));
        let add_bos = tok_config
            .as_ref()
            .and_then(|c| c.get("add_bos_token"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let tokenizer = Tokenizer::from_json_file(&json, bos, &eos, add_bos)?;
        let chat_template = match tok_config
            .as_ref()
            .and_then(|c| c.get("chat_template"))
            .and_then(|v| v.as_str())
        {
            Some(src) => Some(ChatTemplate::new(src, &tokenizer)?),
            None => None,
        };
        Ok(Model {
            transformer,
            tokenizer,
            chat_template,
            source: ModelSource::Safetensors(dir.to_path_buf()),
            pool,
            sha256: Default::default(),
        })
    }

    fn check_vocab(&self) -> Result<()> {
        let (model_vocab, tok_vocab) = (self.config().vocab_size, self.tokenizer.vocab_size());
        if tok_vocab > model_vocab {
            return Err(Error::Tokenizer(format!(
                "the tokenizer has {tok_vocab} tokens but the model's embedding only {model_vocab}"
            )));
        }
        Ok(())
    }

    pub fn config(&self) -> &ModelConfig {
        self.transformer.config()
    }

    pub fn transformer(&self) -> &Transformer {
        &self.transformer
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn source(&self) -> &ModelSource {
        &self.source
    }

    /// SHA-256 (lower-case hex) identifying the exact weights served: of the GGUF file's bytes,
    /// or, for an HF directory, of every `*.safetensors`, `*.json` and tokenizer file in it (name
    /// and contents, in name order). Computed once, on first call.
    pub fn sha256(&self) -> Result<String> {
        if let Some(h) = self.sha256.get() {
            return Ok(h.clone());
        }
        let hash = match &self.source {
            ModelSource::Gguf(file) => file.sha256(),
            ModelSource::Safetensors(dir) => sha256_of_dir(dir)?,
        };
        Ok(self.sha256.get_or_init(|| hash).clone())
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Where the model runs: `"cpu"` or `"cuda:N"`.
    pub fn device(&self) -> String {
        crate::device::device_name(self.transformer.backend().device())
    }

    /// Run `f` on this model's compute threads.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    /// Encode raw text (special tokens parsed, BOS as the model says).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(text)
    }

    /// Decode ids to text (control tokens skipped).
    pub fn detokenize(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids)
    }

    /// Encode a prompt, first refusing text too long to ever fit the context (so a hostile
    /// prompt costs no tokenisation time).
    pub fn tokenize_prompt(&self, prompt: &str) -> Result<Vec<u32>> {
        let context = self.config().context_length;
        let max = self.tokenizer.max_text_bytes(context);
        if prompt.len() > max {
            return Err(Error::invalid(
                "prompt",
                format!(
                    "{} bytes can never fit the context of {context} tokens (at most {max} bytes for this \
                     tokenizer)",
                    prompt.len()
                ),
            ));
        }
        self.tokenize(prompt)
    }

    /// The token ids of `prompt`: text is encoded (refused at once when it could never fit the
    /// context), a conversation rendered with the chat template first, ids checked against the
    /// vocabulary.
    pub fn encode(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        match prompt {
            Prompt::Text(text) => self.tokenize_prompt(text),
            Prompt::Chat(messages) => self.tokenize_prompt(&self.apply_chat_template(messages)?),
            Prompt::Ids(ids) => {
                let vocab_size = self.config().vocab_size;
                if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab_size) {
                    return Err(Error::TokenOutOfRange { id, vocab_size });
                }
                Ok(ids.clone())
            }
        }
    }

    /// Start generating from prompt token ids on the caller's thread: the low-level stream under
    /// every request on a model alone (see [`crate::request`] for requests and the conveniences
    /// `generate`, `chat`, `stream`).
    pub fn stream_ids(&self, prompt_ids: Vec<u32>, params: &GenerateParams) -> Result<TokenStream<'_>> {
        TokenStream::new(
            &self.transformer,
            &self.tokenizer,
            &self.pool,
            prompt_ids,
            params.clone(),
        )
    }

    /// Render `messages` with the model's chat template (with the assistant prompt appended).
    pub fn apply_chat_template(&self, messages: &[ChatMessage]) -> Result<String> {
        let template = self
            .chat_template
            .as_ref()
            .ok_or_else(|| Error::ChatTemplate("the model has no chat template (tokenizer.chat_template)".into()))?;
        template.render(messages, true)
    }
}

/// The compute pool for `threads` threads (default: one per core). Models asking for the same
/// number share one pool, so several models in one process do not multiply the threads beyond
/// what was asked for; their work queues on the shared threads instead.
pub(crate) fn thread_pool(threads: Option<usize>) -> Result<Arc<rayon::ThreadPool>> {
    use std::collections::HashMap;
    use std::sync::{Mutex, Weak};
    static POOLS: Mutex<Option<HashMap<usize, Weak<rayon::ThreadPool>>>> = Mutex::new(None);

    let n = match threads {
        Some(0) => return Err(Error::invalid("threads", "must be at least 1")),
        Some(n) if n > 1024 => return Err(Error::invalid("threads", format!("{n} is more than 1024"))),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    // A poisoned lock only means another thread panicked while holding the map, which stays valid.
    let mut pools = POOLS.lock().unwrap_or_else(|e| e.into_inner());
    let pools = pools.get_or_insert_with(HashMap::new);
    pools.retain(|_, weak| weak.strong_count() > 0);
    if let Some(pool) = pools.get(&n).and_then(Weak::upgrade) {
        return Ok(pool);
    }
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            // Named by pool size ("finllm-2t-0"): fits Linux's 15-byte thread names.
            .thread_name(move |i| format!("finllm-{n}t-{i}"))
            .build()
            .map_err(|e| Error::invalid("threads", e.to_string()))?,
    );
    pools.insert(n, Arc::downgrade(&pool));
    Ok(pool)
}

fn sha256_of_dir(dir: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "safetensors" | "json" | "model"))
        })
        .collect();
    files.sort();
    let mut hasher = Sha256::new();
    for path in &files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        let mut file = std::fs::File::open(path).map_err(io_err(path))?;
        std::io::copy(&mut file, &mut hasher).map_err(io_err(path))?;
    }
    Ok(crate::util::hex(&hasher.finalize()))
}

fn read_json_if_present(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            reason: format!("not valid JSON: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}
