//! `finllm quantize`.

use std::path::Path;

use finllm_core::{LoadOptions, Model};

use crate::util::{read_text, CliResult};

pub(crate) fn quantize(
    model: &Path,
    out: &Path,
    quant: &str,
    calibration: Option<&Path>,
    context: usize,
    threads: Option<usize>,
) -> CliResult {
    let mut spec = finllm_core::tools::quantize::QuantizeSpec::from_name(quant)
        .ok_or_else(|| format!("unknown weight type or recipe '{quant}'"))?;
    let started = std::time::Instant::now();
    if let Some(text_path) = calibration {
        let text = read_text(text_path)?;
        let source = Model::load(
            model,
            &LoadOptions {
                threads,
                ..Default::default()
            },
        )?;
        let importance = finllm_core::eval::calibrate(&source, &text, context)?;
        eprintln!(
            "calibrated on {} tokens of {} ({} matrices, {:.1} s)",
            importance.tokens,
            text_path.display(),
            importance.columns.len(),
            started.elapsed().as_secs_f64()
        );
        spec.importance = Some(importance);
    }
    let (writer, report) = finllm_core::tools::quantize::quantize_model_with(model, &spec)?;
    writer.write(out)?;
    eprintln!(
        "wrote {} ({quant}): {} matrices quantized, {} tensors kept, tensor data {:.1} MiB -> {:.1} MiB, {:.1} s",
        out.display(),
        report.quantized,
        report.kept,
        report.bytes_in as f64 / (1 << 20) as f64,
        report.bytes_out as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
