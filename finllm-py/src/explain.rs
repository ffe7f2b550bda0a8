//! `Model.explain` and the `Attribution` it returns: converts arguments and results, runs
//! `finllm_core::explain` with the GIL released.

use finllm_core as core;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use pyo3::IntoPyObjectExt;

use crate::{to_py, InvalidArgument};

/// Explanation options from keyword arguments (`method`, `granularity`, `target`,
/// `max_tokens`, `target_tokens`, `samples`, `held_out`, `seed`, `batch`, `segments`, `layer`).
pub(crate) fn options(kwargs: Option<&Bound<'_, PyDict>>) -> PyResult<core::explain::ExplainOptions> {
    let mut o = core::explain::ExplainOptions::default();
    let Some(kw) = kwargs else { return Ok(o) };
    for (k, v) in kw.iter() {
        let key: String = k.extract()?;
        match key.as_str() {
            "method" => o.method = v.extract::<String>()?.parse().map_err(to_py)?,
            "granularity" => o.granularity = v.extract::<String>()?.parse().map_err(to_py)?,
            "target" => o.answer = v.extract()?,
            "max_tokens" => o.max_tokens = v.extract()?,
            "target_tokens" => o.target_tokens = v.extract()?,
            "samples" => o.samples = v.extract()?,
            "held_out" => o.held_out = v.extract()?,
            "seed" => o.seed = v.extract()?,
            "batch" => o.batch = v.extract()?,
            "layer" => o.layer = v.extract()?,
            "segments" => {
                let mut segments = Vec::new();
                for item in v.cast::<PyList>()?.iter() {
                    let (label, start, end): (String, usize, usize) = item.extract().map_err(|_| {
                        InvalidArgument::new_err("segments are (label, start, end) tuples of byte offsets")
                    })?;
                    segments.push(core::explain::Segment { label, start, end });
                }
                o.segments = segments;
                o.granularity = core::explain::Granularity::Segment;
            }
            _ => {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                    "explain() got an unexpected keyword argument '{key}'"
                )))
            }
        }
    }
    Ok(o)
}

/// Why the model answered as it did: units of the prompt ranked by their attribution to the
/// answer. `units` are dicts (index, text, start and end in characters, byte_start and byte_end,
/// tokens, score, and label for sources),
/// best first; `matrix` is units (prompt order) × answer tokens. `table()` gives rows for
/// `pandas.DataFrame`, `scores_array()` / `matrix_array()` numpy arrays; in a notebook the
/// object shows its HTML report.
#[pyclass(frozen, module = "finllm._finllm")]
pub(crate) struct Attribution {
    inner: core::explain::Attribution,
    audit_seq: Option<u64>,
}

pub(crate) fn json_to_py(py: Python<'_>, v: &impl serde::Serialize) -> PyResult<Py<PyAny>> {
    let s = serde_json::to_string(v).map_err(|e| InvalidArgument::new_err(e.to_string()))?;
    Ok(py.import("json")?.call_method1("loads", (s,))?.unbind())
}

#[pymethods]
impl Attribution {
    #[getter]
    fn method(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_to_py(py, &self.inner.method)
    }

    #[getter]
    fn granularity(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_to_py(py, &self.inner.granularity)
    }

    /// The text the units' byte spans point into.
    #[getter]
    fn prompt(&self) -> &str {
        &self.inner.prompt
    }

    #[getter]
    fn answer(&self) -> &str {
        &self.inner.answer
    }

    #[getter]
    fn answer_tokens(&self) -> Vec<String> {
        self.inner.answer_tokens.clone()
    }

    /// {"text", "start", "end"}: the answer tokens explained.
    #[getter]
    fn target(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_to_py(py, &self.inner.target)
    }

    /// Units ranked by score, best first.
    #[getter]
    fn units(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_to_py(py, &self.inner.units)
    }

    /// Units (prompt order) × answer tokens.
    #[getter]
    fn matrix(&self) -> Vec<Vec<f64>> {
        self.inner.matrix.clone()
    }

    #[getter]
    fn base_logprobs(&self) -> Option<Vec<f64>> {
        self.inner.base_logprobs.clone()
    }

    /// The surrogate's fit (ablations, held_out, intercept, lambda, lds), or None.
    #[getter]
    fn surrogate(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_to_py(py, &self.inner.surrogate)
    }

    /// For a guarded ask() with an audit log: the sequence number of the explanation's record
    /// (it names the answer's record and holds the SHA-256 of to_json()); else None.
    #[getter]
    fn audit_seq(&self) -> Option<u64> {
        self.audit_seq
    }

    /// Gradient methods: which weights, f(input), and for integrated gradients the baseline,
    /// the attributions' sum and the completeness error; else None.
    #[getter]
    fn gradient(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_to_py(py, &self.inner.gradient)
    }

    /// Attention methods: `[layer][unit]` (units in prompt order), each layer's head-mean
    /// attention from the target's predicting positions to the unit; else None.
    #[getter]
    fn attention_layers(&self) -> Option<Vec<Vec<f64>>> {
        self.inner.attention_layers.clone()
    }

    #[getter]
    fn model_sha256(&self) -> &str {
        &self.inner.model_sha256
    }

    #[getter]
    fn parameters(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_to_py(py, &self.inner.parameters)
    }

    /// {"answer_ms", "explain_ms", "forward_sequences", "ratio_to_answer"}.
    #[getter]
    fn timings(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        json_to_py(py, &self.inner.timings)
    }

    /// One row per unit in prompt order (index, label, text, start, end, byte_start, byte_end,
    /// tokens, score, rank):
    /// `pandas.DataFrame(a.table())`.
    fn table(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let rows = PyList::empty(py);
        for u in self.inner.units_in_order() {
            let d = PyDict::new(py);
            d.set_item("index", u.index)?;
            d.set_item("label", u.label.clone())?;
            d.set_item("text", &u.text)?;
            d.set_item("start", u.start)?;
            d.set_item("end", u.end)?;
            d.set_item("byte_start", u.byte_start)?;
            d.set_item("byte_end", u.byte_end)?;
            d.set_item("tokens", u.tokens)?;
            d.set_item("score", u.score)?;
            let rank = self.inner.units.iter().position(|r| r.index == u.index).unwrap_or(0) + 1;
            d.set_item("rank", rank)?;
            rows.append(d)?;
        }
        rows.into_py_any(py)
    }

    /// The units' scores in prompt order as a numpy array (numpy must be installed).
    fn scores_array(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let scores: Vec<f64> = self.inner.units_in_order().iter().map(|u| u.score).collect();
        Ok(py.import("numpy")?.call_method1("asarray", (scores,))?.unbind())
    }

    /// The units × answer-tokens matrix as a 2-D numpy array (numpy must be installed).
    fn matrix_array(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let m = self.inner.matrix.clone();
        Ok(py.import("numpy")?.call_method1("asarray", (m,))?.unbind())
    }

    fn to_json(&self) -> PyResult<String> {
        self.inner.to_json().map_err(to_py)
    }

    /// The self-contained HTML report.
    fn to_html(&self) -> String {
        self.inner.to_html()
    }

    fn _repr_html_(&self) -> String {
        self.inner.to_html()
    }

    fn __len__(&self) -> usize {
        self.inner.units.len()
    }

    fn __repr__(&self) -> String {
        let top = self
            .inner
            .top()
            .map(|u| u.label.clone().unwrap_or_else(|| u.text.clone()));
        format!(
            "Attribution(method={:?}, units={}, top={:?})",
            serde_json::to_value(self.inner.method)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            self.inner.units.len(),
            top.unwrap_or_default()
        )
    }
}

pub(crate) fn attribution(inner: core::explain::Attribution, audit_seq: Option<u64>) -> Attribution {
    Attribution { inner, audit_seq }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Attribution>()
}
