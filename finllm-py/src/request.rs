//! Requests from Python: one set of arguments for every way to ask (text or chat, guarded or
//! not, whole or streamed, on a Model or an Engine), converted here into the core's
//! `finllm_core::Request` and handed to the one request path. Only conversion lives here.

use std::sync::Arc;
use std::time::Duration;

use finllm_core as core;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3::IntoPyObjectExt;

use crate::compliance::{Guard, GuardedGeneration};
use crate::{to_py, Generation};

fn invalid(name: &str, reason: String) -> PyErr {
    to_py(core::Error::InvalidArgument {
        name: name.into(),
        reason,
    })
}

/// Seconds from Python as a Duration (None stays None).
pub(crate) fn seconds(name: &str, s: Option<f64>) -> PyResult<Option<Duration>> {
    s.map(|s| Duration::try_from_secs_f64(s).map_err(|e| invalid(name, format!("{s} seconds: {e}"))))
        .transpose()
}

/// The prompt: exactly one of `prompt` (raw text) and `messages` (a conversation).
fn prompt(prompt: Option<String>, messages: Option<Vec<Bound<'_, PyAny>>>) -> PyResult<core::Prompt> {
    match (prompt, messages) {
        (Some(p), None) => Ok(core::Prompt::Text(p)),
        (None, Some(m)) => Ok(core::Prompt::Chat(crate::messages(m)?)),
        _ => Err(invalid("prompt", "give a prompt or messages (one of them)".into())),
    }
}

/// Build the core request for `method` from its arguments. `options` holds the keyword
/// arguments every request method takes: generation (`max_tokens`, `temperature`, `top_k`,
/// `top_p`, `min_p`, `repetition_penalty`, `seed`, `stop`, `top_logits`), the audit record's
/// facts (`request_id`, `caller_id`, `source_ids`, `adapter`) and limits (`deadline_s`, and on
/// an engine `wait_s`).
pub(crate) fn build(
    method: &str,
    on_engine: bool,
    text: Option<String>,
    messages: Option<Vec<Bound<'_, PyAny>>>,
    guard: Option<PyRef<'_, Guard>>,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<core::Request> {
    let mut request = core::Request::new(prompt(text, messages)?);
    request.guard = guard.map(|g| Arc::clone(&g.inner));
    let (p, info) = (&mut request.params, &mut request.info);
    for (key, value) in options.into_iter().flat_map(|d| d.iter()) {
        let key: String = key.extract()?;
        match key.as_str() {
            "max_tokens" => p.max_tokens = value.extract()?,
            "temperature" => p.sampling.temperature = value.extract()?,
            "top_k" => p.sampling.top_k = value.extract()?,
            "top_p" => p.sampling.top_p = value.extract()?,
            "min_p" => p.sampling.min_p = value.extract()?,
            "repetition_penalty" => p.sampling.repetition_penalty = value.extract()?,
            "seed" => p.sampling.seed = value.extract()?,
            "stop" => p.stop = value.extract::<Option<Vec<String>>>()?.unwrap_or_default(),
            "top_logits" => p.top_logits = value.extract()?,
            "request_id" => info.request_id = value.extract::<Option<String>>()?.unwrap_or_default(),
            "caller_id" => info.caller_id = value.extract()?,
            "source_ids" => info.source_ids = value.extract::<Option<Vec<String>>>()?.unwrap_or_default(),
            "adapter" => info.adapter = value.extract()?,
            "deadline_s" => request.deadline = seconds("deadline_s", value.extract()?)?,
            "wait_s" if on_engine => request.queue_wait = seconds("wait_s", value.extract()?)?,
            other => {
                return Err(PyTypeError::new_err(format!(
                    "{method}() got an unexpected keyword argument '{other}'"
                )))
            }
        }
    }
    Ok(request)
}

/// A core answer as Python sees it: a GuardedGeneration for a guarded request, else a
/// Generation.
pub(crate) fn response(py: Python<'_>, r: core::Response) -> PyResult<Py<PyAny>> {
    match r.guard {
        Some(report) => GuardedGeneration::new(r.generation, report).into_py_any(py),
        None => Generation::from(r.generation).into_py_any(py),
    }
}
