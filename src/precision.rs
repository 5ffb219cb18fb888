//! Numeric precision of a run: the format convolutions multiply in and kept activations are
//! stored in. Weights, their gradients, optimiser moments, normalisation statistics and the loss
//! stay f32 in every precision (master weights), so checkpoints are the same whatever it is.

use crate::backend::device::Device;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// IEEE single everywhere: the reference path of every backend.
    #[serde(alias = "fp32")]
    F32,
    /// Convolution operands rounded to TF32 (10-bit mantissa) on GPU tensor cores, f32
    /// accumulation and storage: what PyTorch runs its "fp32" convolutions in by default.
    Tf32,
    /// bf16 operands and kept activations, f32 accumulation.
    Bf16,
}

impl Precision {
    pub const NAMES: &'static str = "f32 (or fp32), tf32, bf16";

    pub fn parse(s: &str) -> Result<Precision> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(Precision::F32),
            "tf32" => Ok(Precision::Tf32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(Error::Invalid(format!(
                "unknown precision '{other}'; choose {}",
                Self::NAMES
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }

    /// What a run gets when it names none: TF32 on a GPU (as PyTorch does) where this build has
    /// tensor-core kernels, f32 elsewhere.
    pub fn default_for(device: Device) -> Precision {
        match device {
            Device::Cuda(_) if supported(Precision::Tf32, device) => Precision::Tf32,
            _ => Precision::F32,
        }
    }

    /// The precision a run on `device` uses: the one asked for when that device runs it, its
    /// default when none is asked for; an error naming both otherwise.
    pub fn for_device(asked: Option<Precision>, device: Device) -> Result<Precision> {
        let p = asked.unwrap_or_else(|| Self::default_for(device));
        if supported(p, device) {
            return Ok(p);
        }
        let have: Vec<&str> = [Precision::F32, Precision::Tf32, Precision::Bf16]
            .into_iter()
            .filter(|&q| supported(q, device))
            .map(Precision::name)
            .collect();
        let why = match (p, device) {
            (Precision::Tf32, Device::Cpu) => {
                "TF32 is a GPU tensor-core format; the CPU reference has no TF32 path"
            }
            (Precision::Bf16, Device::Cpu) => {
                "this CPU has neither AMX-BF16 nor AVX512-BF16, the instructions the bf16 \
                 convolutions multiply with (the scalar fallback is slower than f32)"
            }
            _ => "this build has no kernels for it on this device",
        };
        Err(Error::Invalid(format!(
            "precision {} on {device:?}: {why}; choose {}",
            p.name(),
            have.join(" or ")
        )))
    }
}

impl Precision {
    /// How kept activations and workspace tensors are stored in this precision; parameters,
    /// their gradients and moments, BatchNorm statistics and the loss are f32 in every one.
    pub fn activation_storage(self) -> Storage {
        match self {
            Precision::F32 | Precision::Tf32 => Storage::F32,
            Precision::Bf16 => Storage::Bf16,
        }
    }
}

/// The element type one buffer of a plan is stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Storage {
    #[default]
    F32,
    Bf16,
    /// A reversible chain's exact-coupling state in 16 bits: i16 k, the value k * 2^-S
    /// (`ops::coupling::Fix16`). Only the coupling writes it; a few ops read it.
    Fix16,
}

impl Storage {
    pub fn bytes(self) -> usize {
        match self {
            Storage::F32 => 4,
            Storage::Bf16 | Storage::Fix16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::Bf16 => "bf16",
            Storage::Fix16 => "fix16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which (precision, device) pairs have kernels in this build.
fn supported(p: Precision, device: Device) -> bool {
    match (p, device) {
        (Precision::F32, _) => true,
        // kernels/conv3d_mma.cu
        (Precision::Tf32 | Precision::Bf16, Device::Emu | Device::Cuda(_)) => true,
        // backend/cpu/mixed.rs, on conv3d_amx.rs or conv3d_bf16.rs's vdpbf16ps kernels.
        (Precision::Bf16, Device::Cpu) => {
            crate::backend::cpu::conv3d_bf16::Path::best()
                != crate::backend::cpu::conv3d_bf16::Path::Scalar
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_refused() {
        for p in [Precision::F32, Precision::Tf32, Precision::Bf16] {
            assert_eq!(Precision::parse(p.name()).unwrap(), p);
        }
        assert_eq!(Precision::parse("FP32").unwrap(), Precision::F32);
        let e = Precision::parse("fp16").unwrap_err().to_string();
        assert!(e.contains("fp16") && e.contains("bf16"), "{e}");
    }

    #[test]
    fn tf32_on_the_cpu_says_why() {
        let e = Precision::for_device(Some(Precision::Tf32), Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensor-core") && e.contains("f32"), "{e}");
        assert_eq!(
            Precision::for_device(None, Device::Cpu).unwrap(),
            Precision::F32
        );
    }

    #[test]
    fn bf16_on_the_cpu_runs_where_it_has_bf16_instructions_and_says_why_not_elsewhere() {
        use crate::backend::cpu::conv3d_bf16::Path;
        match Precision::for_device(Some(Precision::Bf16), Device::Cpu) {
            Ok(p) => {
                assert_eq!(p, Precision::Bf16);
                assert_ne!(Path::best(), Path::Scalar);
            }
            Err(e) => {
                let e = e.to_string();
                assert_eq!(Path::best(), Path::Scalar);
                assert!(e.contains("AVX512-BF16") && e.contains("f32"), "{e}");
            }
        }
        assert_eq!(Precision::Bf16.activation_storage().bytes(), 2);
        assert_eq!(Precision::Tf32.activation_storage(), Storage::F32);
    }
}
