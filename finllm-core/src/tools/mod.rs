//! Offline tools built on the model layer: the quantizer (`finllm quantize`) and random-weight
//! model files for tests and benchmarks (`finllm synth`). Nothing on the request path uses them.

pub mod quantize;
pub mod synthetic;
