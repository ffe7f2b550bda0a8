//! The C ABI called with random arguments, within each function's documented contract (pointers
//! are NULL or valid for the sizes passed; the fuzzer picks which): strings with invalid UTF-8,
//! any lengths, NULLs, undersized and oversized `struct_size`, NaN and extreme parameters.
//! Every call must return a status (never crash, hang, or write past a buffer under ASan).
#![no_main]

use std::ffi::{c_char, CString};
use std::ptr::{null, null_mut};
use std::sync::OnceLock;

use finllm::*;
use finllm_fuzz::tiny_gguf_path;
use libfuzzer_sys::fuzz_target;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    fn f32(&mut self) -> f32 {
        f32::from_bits(self.u32())
    }
    /// A NUL-terminated string of arbitrary bytes (no interior NUL), or NULL.
    fn c_string(&mut self) -> Option<CString> {
        let n = self.byte() as usize;
        if n == 255 {
            return None;
        }
        let bytes: Vec<u8> = (0..n.min(self.0.len())).map(|_| self.byte()).filter(|&b| b != 0).collect();
        Some(CString::new(bytes).expect("no interior NUL"))
    }
}

fn ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(null(), |s| s.as_ptr())
}

struct Model(*mut finllm_model);
// SAFETY: finllm_model is documented thread-safe; the fuzzer only shares the pointer.
unsafe impl Send for Model {}
unsafe impl Sync for Model {}

fn model() -> *const finllm_model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = CString::new(tiny_gguf_path().to_str().expect("utf-8 path")).expect("path");
            let mut m = null_mut();
            // SAFETY: valid path, NULL params, valid out.
            let status = unsafe { finllm_model_load(path.as_ptr(), null(), &mut m) };
            assert_eq!(status as i32, 0, "the tiny model loads");
            Model(m)
        })
        .0
}

/// `params` copied into a zeroed buffer of at least its size, with `struct_size` set to `size`
/// (smaller, equal or larger than ours: a caller compiled against another header version).
fn sized<T: Copy>(params: T, size: u32) -> Vec<u64> {
    let ours = std::mem::size_of::<T>();
    let mut buf = vec![0u64; (ours.max(size as usize)).div_ceil(8)];
    // SAFETY: the buffer holds at least size_of::<T>() bytes and is 8-byte aligned.
    unsafe {
        std::ptr::write(buf.as_mut_ptr().cast::<T>(), params);
        *buf.as_mut_ptr().cast::<u32>() = size;
    }
    buf
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let model = model();
    for _ in 0..4 {
        match input.byte() % 8 {
            0 => {
                let text = input.c_string();
                let cap = (input.byte() % 64) as usize;
                let mut ids = vec![0u32; cap];
                let mut n = 0usize;
                let ids_ptr = if cap == 0 && input.byte() % 2 == 0 { null_mut() } else { ids.as_mut_ptr() };
                // SAFETY: every pointer is NULL or valid for the size passed.
                unsafe { finllm_tokenize(model, ptr(&text), ids_ptr, cap, &mut n) };
            }
            1 => {
                let n_ids = (input.byte() % 16) as usize;
                let ids: Vec<u32> = (0..n_ids).map(|_| input.u32() % 70_000).collect();
                let len = (input.byte() % 64) as usize;
                let mut buf = vec![0 as c_char; len];
                let mut needed = 0usize;
                let buf_ptr = if len == 0 { null_mut() } else { buf.as_mut_ptr() };
                // SAFETY: as above.
                unsafe { finllm_detokenize(model, ids.as_ptr(), n_ids, buf_ptr, len, &mut needed) };
            }
            2 | 3 => {
                let prompt = input.c_string();
                let stop = input.c_string();
                let stops = [ptr(&stop)];
                let mut p = finllm_generate_default_params();
                p.max_tokens = u32::from(input.byte() % 6);
                p.temperature = input.f32();
                p.top_k = input.u32();
                p.top_p = input.f32();
                p.min_p = input.f32();
                p.repetition_penalty = input.f32();
                p.repeat_last_n = input.u32();
                p.seed = u64::from(input.u32());
                if stop.is_some() {
                    p.stop = stops.as_ptr();
                    p.n_stop = 1;
                }
                let size = match input.byte() % 4 {
                    0 => input.byte() as u32,
                    _ => std::mem::size_of::<finllm_generate_params>() as u32 + u32::from(input.byte() % 3) * 8,
                };
                let buf = sized(p, size);
                let params = if input.byte() % 8 == 0 { null() } else { buf.as_ptr().cast() };
                let mut request = finllm_request_default_params();
                request.prompt = ptr(&prompt);
                request.generate = params;
                request.deadline_ms = u64::from(input.byte() % 3);
                let mut out = null_mut();
                // SAFETY: as above; no callback, no cancel.
                let status = unsafe { finllm_generate(model, &request, None, null_mut(), null(), &mut out) };
                if status as i32 == 0 {
                    let mut len = 0usize;
                    // SAFETY: out is a live generation.
                    unsafe {
                        finllm_generation_text(out, &mut len);
                        finllm_generation_free(out);
                    }
                }
            }
            4 => {
                let text = input.c_string();
                let len = (input.byte() % 128) as usize;
                let mut buf = vec![0 as c_char; len];
                let mut needed = 0usize;
                let buf_ptr = if len == 0 { null_mut() } else { buf.as_mut_ptr() };
                // SAFETY: as above.
                unsafe { finllm_pii_mask(ptr(&text), input.byte() % 2 == 0, buf_ptr, len, &mut needed) };
            }
            5 => {
                let len = (input.byte() % 32) as usize;
                let mut buf = vec![0 as c_char; len];
                let buf_ptr = if len == 0 { null_mut() } else { buf.as_mut_ptr() };
                // SAFETY: as above.
                unsafe { finllm_last_error_message(buf_ptr, len) };
                let _ = finllm_status_name(input.u32() as i32);
            }
            6 => {
                // "default", or a rule pack of fuzz bytes in a scratch file (never a path of the
                // fuzzer's choosing: /dev/zero would be a test of the OS, not of finllm).
                let path = if input.byte() % 2 == 0 {
                    Some(CString::new("default").expect("literal"))
                } else {
                    let file = finllm_fuzz::scratch().join("policy.toml");
                    let n = (input.byte() as usize).min(input.0.len());
                    let (pack, rest) = input.0.split_at(n);
                    std::fs::write(&file, pack).expect("write");
                    input.0 = rest;
                    Some(CString::new(file.to_str().expect("utf-8 path")).expect("path"))
                };
                let mut policy = null_mut();
                // SAFETY: as above.
                let status = unsafe { finllm_policy_load(ptr(&path), &mut policy) };
                if status as i32 == 0 {
                    let text = input.c_string();
                    let mut verdict = std::mem::MaybeUninit::uninit();
                    let len = (input.byte() % 16) as usize;
                    let mut buf = vec![0 as c_char; len];
                    let mut needed = 0usize;
                    let buf_ptr = if len == 0 { null_mut() } else { buf.as_mut_ptr() };
                    // SAFETY: policy is live; the rest as above.
                    unsafe {
                        finllm_policy_check(policy, ptr(&text), verdict.as_mut_ptr(), buf_ptr, len, &mut needed);
                        finllm_policy_free(policy);
                    }
                }
            }
            _ => {
                let role = input.c_string();
                let content = input.c_string();
                let messages = [finllm_chat_message {
                    role: ptr(&role),
                    content: ptr(&content),
                }];
                let mut p = finllm_generate_default_params();
                p.max_tokens = u32::from(input.byte() % 4);
                let mut request = finllm_request_default_params();
                request.messages = messages.as_ptr();
                request.n_messages = (input.byte() % 2) as usize;
                request.generate = &p;
                let mut out = null_mut();
                // SAFETY: messages holds n_messages (<= 1) entries; the rest as above.
                let status = unsafe { finllm_generate(model, &request, None, null_mut(), null(), &mut out) };
                if status as i32 == 0 {
                    // SAFETY: out is a live generation.
                    unsafe { finllm_generation_free(out) };
                }
            }
        }
    }
});
