//! Chat templates: the model's own Jinja template rendered with `minijinja`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// A compiled chat template.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

const NAME: &str = "chat";

/// Template instructions one render may execute. Real chat templates spend a few hundred per
/// message; a hostile one (nested loops, doubly recursive macros) stops here with an error
/// after well under a second.
pub const TEMPLATE_FUEL: u64 = 20_000_000;

/// Rendered bytes allowed beyond the messages' own: role markers, the system preamble some
/// templates add. The output may also repeat the messages a few times (tool templates do).
const OUTPUT_SLACK_BYTES: usize = 1 << 20;
const OUTPUT_PER_INPUT_BYTE: usize = 8;

/// Collects rendered output and refuses to grow past a limit, so a template that prints
/// without end fails early instead of exhausting memory in rendering or tokenisation.
struct CappedOutput {
    out: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl std::io::Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("output limit"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl ChatTemplate {
    /// Compile `source`; BOS/EOS strings come from the tokenizer.
    pub fn new(source: &str, tokenizer: &Tokenizer) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        // No source excerpts in errors: minijinja 2.24 builds them with a column subtraction
        // that overflows on some hostile templates (found by the chat_template fuzz target);
        // errors name the line instead (see `describe`).
        env.set_debug(false);
        // HF templates call Python string methods (`.strip()`, `.startswith()`).
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| Error::ChatTemplate(format!("cannot parse the template: {}", describe(&e))))?;
        let text = |id: Option<u32>| id.and_then(|i| tokenizer.token_text(i)).unwrap_or_default();
        Ok(Self {
            env,
            bos: text(tokenizer.bos_id()),
            eos: text(tokenizer.eos_id()),
        })
    }

    /// Render the conversation; `add_generation_prompt` appends the assistant's turn opener.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::invalid("messages", "a conversation needs at least one message"));
        }
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::ChatTemplate(e.to_string()))?;
        let input: usize = messages.iter().map(|m| m.role.len() + m.content.len()).sum();
        let limit = OUTPUT_SLACK_BYTES.saturating_add(input.saturating_mul(OUTPUT_PER_INPUT_BYTE));
        let mut out = CappedOutput {
            out: Vec::new(),
            limit,
            exceeded: false,
        };
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos,
            eos_token => self.eos,
        };
        match template.render_captured_to(ctx, &mut out) {
            Ok(_) => {
                String::from_utf8(out.out).map_err(|_| Error::ChatTemplate("rendering produced invalid UTF-8".into()))
            }
            Err(_) if out.exceeded => Err(Error::ChatTemplate(format!(
                "the rendered prompt exceeds {limit} bytes ({OUTPUT_PER_INPUT_BYTE} x the messages' {input} \
                     bytes + {OUTPUT_SLACK_BYTES}): the template prints without bound"
            ))),
            Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => Err(Error::ChatTemplate(format!(
                "rendering stopped after {TEMPLATE_FUEL} template instructions: the template loops \
                 without bound"
            ))),
            Err(e) => Err(Error::ChatTemplate(format!("rendering failed: {}", describe(&e)))),
        }
    }
}

/// A template error and its causes in one line, with the template line where known.
fn describe(e: &minijinja::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}
