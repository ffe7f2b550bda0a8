//! `finllm embed`.

use std::io::{BufRead, Write};
use std::path::Path;

use crate::util::CliResult;

pub(crate) fn embed(model: &Path, threads: Option<usize>, batch: usize, quantize: Option<&str>) -> CliResult {
    if batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let options = finllm_core::rag::EmbedderOptions::named(threads, quantize)?;
    let embedder = finllm_core::rag::Embedder::load_with(model, &options)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut lines: Vec<String> = Vec::with_capacity(batch);
    let flush = |lines: &mut Vec<String>, out: &mut std::io::BufWriter<std::io::StdoutLock<'_>>| -> CliResult {
        for e in embedder.embed(lines)? {
            serde_json::to_writer(&mut *out, &e)?;
            out.write_all(b"\n")?;
        }
        lines.clear();
        Ok(())
    };
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.map_err(|e| format!("stdin line {}: {e}", n + 1))?;
        lines.push(line);
        if lines.len() == batch {
            flush(&mut lines, &mut out)?;
        }
    }
    flush(&mut lines, &mut out)?;
    out.flush()?;
    Ok(())
}
