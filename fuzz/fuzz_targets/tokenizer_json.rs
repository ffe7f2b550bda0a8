//! A `tokenizer.json` (HF tokenizers format), then encoding and decoding with it.
#![no_main]

use finllm_core::Tokenizer;
use finllm_fuzz::scratch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch().join("tokenizer.json");
    std::fs::write(&path, data).expect("write");
    let eos = [1u32, 2];
    for (bos, add_bos) in [(None, false), (Some(0u32), true)] {
        if let Ok(tok) = Tokenizer::from_json_file(&path, bos, &eos, add_bos) {
            if let Ok(ids) = tok.encode("The rate rose 5.25% 利率 <s>") {
                let _ = tok.decode(&ids);
            }
            let _ = tok.decode(&[0, 1, 2, 3, u32::MAX]);
        }
    }
});
