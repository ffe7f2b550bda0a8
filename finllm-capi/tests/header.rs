//! The committed header must be what cbindgen generates from the current source.
//! Regenerate: `FINLLM_UPDATE_HEADER=1 cargo test --release -p finllm-capi --test header`.

use std::path::PathBuf;

#[test]
fn committed_header_is_current() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let bindings = cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).unwrap();
    let path = crate_dir.join("../include/finllm.h");
    if std::env::var_os("FINLLM_UPDATE_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/finllm.h is stale: run FINLLM_UPDATE_HEADER=1 cargo test --release -p finllm-capi --test header"
    );
    // The version macros are in the header.
    for name in ["FINLLM_VERSION_MAJOR", "FINLLM_VERSION_MINOR", "FINLLM_VERSION_PATCH"] {
        assert!(generated.contains(&format!("#define {name} ")), "{name} missing");
    }
}
