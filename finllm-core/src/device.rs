//! Where a model runs: `"cpu"`, `"cuda:N"` or `"auto"`.
//!
//! On the CPU the forward pass uses finllm's own kernels; on a CUDA device it runs on candle's
//! CUDA tensors and quantized kernels. CUDA needs a build with the `cuda` feature
//! (`scripts/build-cuda.sh`); without it, or without a GPU, asking for CUDA is a clear error and
//! `"auto"` falls back to the CPU.

use std::fmt;
use std::str::FromStr;

pub use candle_core::Device;

use crate::error::{Error, Result};

/// A requested device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// finllm's CPU kernels (the default).
    #[default]
    Cpu,
    /// CUDA device `N` (`"cuda"` means `cuda:0`).
    Cuda(usize),
    /// CUDA device 0 when this build has CUDA and the machine a GPU, otherwise the CPU.
    Auto,
}

impl DeviceSpec {
    /// The device to run on, or why it cannot be had.
    pub fn resolve(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => cuda_device(ordinal),
            DeviceSpec::Auto => Ok(cuda_device(0).unwrap_or(Device::Cpu)),
        }
    }

    /// Whether this build of finllm can run on CUDA at all.
    pub fn cuda_compiled() -> bool {
        cfg!(feature = "cuda")
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(ordinal: usize) -> Result<Device> {
    Device::new_cuda(ordinal).map_err(|e| {
        // candle appends a backtrace to its message: the first line says what failed.
        let msg = e.to_string();
        let first = msg.lines().next().unwrap_or_default().to_string();
        Error::DeviceUnavailable {
            device: DeviceSpec::Cuda(ordinal).to_string(),
            reason: format!("{first} (is the NVIDIA driver installed, and does the machine have GPU {ordinal}?)"),
        }
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(ordinal: usize) -> Result<Device> {
    Err(Error::DeviceUnavailable {
        device: DeviceSpec::Cuda(ordinal).to_string(),
        reason: "this build of finllm has no CUDA support: rebuild with `--features cuda` \
                 (scripts/build-cuda.sh), or use device \"cpu\""
            .into(),
    })
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "auto" => Ok(DeviceSpec::Auto),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            _ => lower
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| Error::invalid("device", format!("'{s}' is not \"cpu\", \"cuda:N\" or \"auto\""))),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Auto => f.write_str("auto"),
        }
    }
}

/// A short name for a resolved device, as `DeviceSpec` spells it.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        for (text, spec) in [
            ("cpu", DeviceSpec::Cpu),
            (" CPU ", DeviceSpec::Cpu),
            ("auto", DeviceSpec::Auto),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceSpec>().unwrap(), spec, "{text}");
        }
        for spec in [DeviceSpec::Cpu, DeviceSpec::Auto, DeviceSpec::Cuda(1)] {
            assert_eq!(spec.to_string().parse::<DeviceSpec>().unwrap(), spec);
        }
        for bad in ["", "tpu", "cuda:", "cuda:-1", "cuda:x", "cuda:1:2"] {
            let err = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(matches!(err, Error::InvalidArgument { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn cuda_without_the_feature_or_a_gpu_is_a_clear_error_and_auto_falls_back() {
        assert!(DeviceSpec::Cpu.resolve().unwrap().is_cpu());
        match DeviceSpec::Cuda(7).resolve() {
            // A CUDA build on a machine with eight GPUs: nothing to check here.
            Ok(d) => assert!(d.is_cuda()),
            Err(e) => {
                assert!(matches!(e, Error::DeviceUnavailable { .. }), "{e}");
                let msg = e.to_string();
                assert!(msg.contains("cuda:7"), "{msg}");
                if !DeviceSpec::cuda_compiled() {
                    assert!(msg.contains("--features cuda"), "{msg}");
                }
            }
        }
        let auto = DeviceSpec::Auto.resolve().unwrap();
        if !DeviceSpec::cuda_compiled() {
            assert!(auto.is_cpu());
        }
    }
}
