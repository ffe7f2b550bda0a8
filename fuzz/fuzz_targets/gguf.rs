//! The GGUF reader, then everything built from a file that opens: tokenizer, chat template,
//! model (and a two-token forward pass when the shapes are small).
#![no_main]

use std::sync::Arc;

use finllm_core::{ChatMessage, ChatTemplate, GgufFile, Tokenizer, Transformer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_vec("fuzz.gguf", data.to_vec()) else {
        return;
    };
    let file = Arc::new(file);
    let _ = file.check_finite();
    for (_, v) in file.metadata() {
        let _ = v.describe();
    }
    if let Ok(tok) = Tokenizer::from_gguf(&file) {
        if let Ok(ids) = tok.encode("The rate rose 5.25% <|im_start|> 利率") {
            let _ = tok.decode(&ids);
        }
        if let Some(src) = file.get("tokenizer.chat_template").and_then(|v| v.as_str()) {
            if let Ok(t) = ChatTemplate::new(src, &tok) {
                let _ = t.render(&[ChatMessage::user("hi")], true);
            }
        }
    }
    if let Ok(t) = Transformer::from_gguf(&file) {
        let c = t.config();
        if c.hidden_size * c.n_layers <= 1 << 14 && c.vocab_size <= 1 << 16 && c.ffn_size <= 1 << 12 {
            let mut cache = t.new_cache();
            let _ = t.forward(&[0, 1], &mut cache);
        }
    }
});
