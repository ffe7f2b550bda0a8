//! A chat template from a model file: compiled and rendered under the fuel and output caps.
#![no_main]

use finllm_core::{ChatMessage, ChatTemplate};
use finllm_fuzz::{split2, tiny_tokenizer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (template, content) = split2(data);
    let template = String::from_utf8_lossy(template);
    let content = String::from_utf8_lossy(content);
    let Ok(t) = ChatTemplate::new(&template, tiny_tokenizer()) else {
        return;
    };
    let messages = [
        ChatMessage::system("You are a careful analyst."),
        ChatMessage::user(content.as_ref()),
        ChatMessage::assistant("Duration is rate sensitivity."),
    ];
    let _ = t.render(&messages, true);
    let _ = t.render(&messages[1..2], false);
});
