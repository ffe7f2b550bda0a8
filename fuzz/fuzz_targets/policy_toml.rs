//! A policy rule pack (TOML), then the text after a 0xff 0x00 separator checked whole and
//! streamed in pieces; the two verdicts must agree.
#![no_main]

use finllm_core::compliance::Policy;
use finllm_fuzz::split2;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (pack, text) = split2(data);
    let Ok(policy) = Policy::from_toml_str(&String::from_utf8_lossy(pack)) else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    let Ok(whole) = policy.check(&text) else {
        return;
    };
    let mut stream = policy.stream();
    let mut streamed = None;
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(3) {
        let piece: String = piece.iter().collect();
        match stream.push(&piece) {
            Ok(out) if out.decision.is_some() => {
                streamed = out.decision;
                break;
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
    let streamed = match streamed {
        Some(d) => d,
        None => match stream.finish() {
            Ok(out) => out.decision.expect("finish decides"),
            Err(_) => return,
        },
    };
    assert_eq!(whole.is_blocked(), streamed.is_blocked(), "verdicts differ on {text:?}");
});
