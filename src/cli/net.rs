//! Network options shared by the commands that build one.

use crate::error::{Error, Result};
use crate::model::{self, NetConfig, Norm, Program};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct NetArgs {
    /// Network preset (superhuman: ENGINEERING.md section 1).
    #[arg(long, default_value = "superhuman")]
    pub preset: String,
    /// Widths per scale, overriding the preset's (e.g. 28,36,48,64,80).
    #[arg(long)]
    pub widths: Option<String>,
    /// RevNet blocks per residual module (0: the original residual modules).
    #[arg(long, default_value_t = 2)]
    pub rev_blocks: usize,
    /// Normalisation: batch or none.
    #[arg(long, default_value = "batch")]
    pub norm: String,
    /// Output channels: 3 (nearest-neighbour affinities) or 12 (with long-range ones).
    #[arg(long, default_value_t = 3)]
    pub outputs: usize,
    /// Patch D,H,W.
    #[arg(long, default_value = "18,160,160")]
    pub patch: String,
}

impl NetArgs {
    pub fn config(&self) -> Result<NetConfig> {
        let mut c = match self.preset.as_str() {
            "superhuman" => NetConfig::superhuman(self.rev_blocks),
            p => {
                return Err(Error::Invalid(format!(
                    "unknown preset '{p}'; known: superhuman"
                )))
            }
        };
        if let Some(w) = &self.widths {
            c.widths = w
                .split(',')
                .map(|s| s.trim().parse::<usize>())
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| {
                    Error::Invalid(format!(
                        "widths '{w}': expected positive integers like 28,36,48,64,80"
                    ))
                })?;
        }
        c.norm = match self.norm.as_str() {
            "batch" => Norm::Batch,
            "none" => Norm::None,
            n => return Err(Error::Invalid(format!("norm '{n}': choose batch or none"))),
        };
        if self.outputs != 3 && self.outputs != 12 {
            return Err(Error::Invalid(format!(
                "outputs {}: choose 3 or 12",
                self.outputs
            )));
        }
        c.outputs = self.outputs;
        Ok(c)
    }

    pub fn program(&self) -> Result<Program> {
        let patch = super::parse_patch(&self.patch)?;
        model::build(&self.config()?, patch)
    }
}

/// `--precision`, shared by every command that runs the network.
#[derive(Args, Debug, Clone, Default)]
pub struct PrecisionArg {
    /// Convolution and activation format: f32, tf32 (GPU tensor cores) or bf16 (default: tf32
    /// on a GPU where this build has tensor-core kernels, else f32).
    #[arg(long)]
    pub precision: Option<String>,
}

impl PrecisionArg {
    /// The precision asked for, checked against the device that will run it.
    pub fn resolve(
        &self,
        dev: crate::backend::device::Device,
    ) -> Result<crate::precision::Precision> {
        let asked = self
            .precision
            .as_deref()
            .map(crate::precision::Precision::parse)
            .transpose()?;
        crate::precision::Precision::for_device(asked, dev)
    }
}
