//! An audit log file: verified and read back record by record.
#![no_main]

use finllm_core::compliance::audit;
use finllm_fuzz::scratch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = scratch().join("audit.log");
    std::fs::write(&path, data).expect("write");
    let _ = audit::verify(&path);
    let _ = audit::read_records(&path);
});
