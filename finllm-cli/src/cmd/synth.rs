//! `finllm synth`.

use std::path::Path;

use crate::util::CliResult;

pub(crate) fn synth(arch: &str, preset: &str, out: &Path, quant: &str, seed: u64, safetensors: bool) -> CliResult {
    use finllm_core::tools::synthetic::SyntheticSpec;
    let arch = finllm_core::Architecture::parse(arch)?;
    let spec = SyntheticSpec::preset(preset, arch, seed)?;
    let quant =
        finllm_core::quant::QuantType::from_name(quant).ok_or_else(|| format!("unknown weight type '{quant}'"))?;
    if safetensors {
        spec.write_safetensors_dir(out, quant)?;
    } else {
        spec.write_gguf(out, quant)?;
    }
    eprintln!(
        "wrote {} ({} {preset}, {quant}, seed {seed})",
        out.display(),
        arch.name()
    );
    Ok(())
}
