//! `finllm chat`.

use std::io::{BufRead, Write};
use std::ops::ControlFlow;

use finllm_core::{ChatMessage, Prompt, Request};

use super::generate::{report_guard, request};
use crate::options::Common;
use crate::util::CliResult;

pub(crate) fn chat(common: &Common, system: Option<String>, prompt: Option<String>) -> CliResult {
    let model = common.load()?;
    // One guard (and audit log) for the whole conversation.
    let template = request(common, Prompt::Chat(Vec::new()), 0)?;
    let mut messages: Vec<ChatMessage> = system.into_iter().map(ChatMessage::system).collect();
    let answer_to = |messages: &[ChatMessage]| -> Result<String, finllm_core::Error> {
        let turn = Request {
            prompt: Prompt::Chat(messages.to_vec()),
            ..template.clone()
        };
        let response = turn.run_streaming(&model, |ev| {
            print!("{}", ev.text);
            let _ = std::io::stdout().flush();
            ControlFlow::Continue(())
        })?;
        println!();
        if let Some(g) = &response.guard {
            report_guard(g);
        }
        Ok(response.generation.text)
    };
    if let Some(question) = prompt {
        messages.push(ChatMessage::user(question));
        answer_to(&messages)?;
        return Ok(());
    }
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    loop {
        write!(stdout, "> ")?;
        stdout.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            println!();
            return Ok(());
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line == "/exit" || line == "/quit" {
            return Ok(());
        }
        messages.push(ChatMessage::user(line));
        let answer = answer_to(&messages)?;
        messages.push(ChatMessage::assistant(answer.trim()));
    }
}
