//! Where the model runs: `--device cpu|gpu`, `-ngl N` (`--gpu-layers`, layers on the GPU counted
//! from the last, as llama.cpp), `--cpu-moe` / `--n-cpu-moe N` (expert tensors of the first N
//! layers stay in RAM and run on the CPU).
//!
//! No adapter: one line on stderr and the CPU path; but with `DSRUN_REQUIRE_GPU=1` (which CI
//! sets) asking for the GPU without one is an error, so a missing driver cannot pass unnoticed.

use clap::Args;
use dsrun::engine::Model;
use dsrun::gpu::{GpuContext, GpuOptions};
use dsrun::Error;
use std::sync::Arc;

#[derive(Args, Debug, Clone, Default)]
pub struct DeviceArgs {
    /// Where to run: cpu or gpu [default: cpu; gpu when -ngl N > 0 is given]
    #[arg(long = "device", value_name = "DEVICE")]
    pub device: Option<String>,
    /// Layers on the GPU as llama.cpp counts them (also -ngl, --n-gpu-layers): the output and
    /// the last N-1 layers; the first n_layer+1-N run on the CPU [default: all]
    #[arg(long = "gpu-layers", alias = "n-gpu-layers", value_name = "N")]
    pub gpu_layers: Option<usize>,
    /// Keep every layer's expert tensors in RAM and run the experts on the CPU
    #[arg(long = "cpu-moe")]
    pub cpu_moe: bool,
    /// Keep the expert tensors of the first N layers in RAM (experts run on the CPU)
    #[arg(long = "n-cpu-moe", value_name = "N", conflicts_with = "cpu_moe")]
    pub n_cpu_moe: Option<usize>,
    /// Of each layer whose experts stay in RAM, the N most chosen also in VRAM, run on the GPU
    /// (chosen online from the routing; the hit rate is in --verbose and bench)
    #[arg(long = "moe-gpu-cache", value_name = "N")]
    pub moe_gpu_cache: Option<usize>,
}

impl DeviceArgs {
    /// Whether the GPU was asked for.
    pub fn wants_gpu(&self) -> Result<bool, Error> {
        match self.device.as_deref() {
            Some("gpu") => Ok(true),
            Some("cpu") => Ok(false),
            Some(d) => Err(Error::Invalid(format!("--device {d}: expected cpu or gpu"))),
            None => Ok(self.gpu_layers.is_some_and(|n| n > 0)),
        }
    }

    /// Puts `model` on the GPU when asked (saying so on stderr unless `quiet`).
    pub fn apply(&self, model: &mut Model, quiet: bool) -> Result<(), Error> {
        if !self.wants_gpu()? {
            return Ok(());
        }
        let Some(ctx) = GpuContext::new()? else {
            if std::env::var("DSRUN_REQUIRE_GPU").as_deref() == Ok("1") {
                return Err(Error::Invalid(
                    "no GPU adapter found (and DSRUN_REQUIRE_GPU=1): install a Vulkan driver, \
                     e.g. mesa-vulkan-drivers libvulkan1"
                        .into(),
                ));
            }
            eprintln!("dsrun: no GPU adapter found: running on the CPU");
            return Ok(());
        };
        let n_layer = model.hp.n_layer;
        if self.gpu_layers == Some(0) {
            if !quiet {
                eprintln!("dsrun: -ngl 0: every layer on the CPU");
            }
            return Ok(());
        }
        let opts = GpuOptions {
            n_gpu_layers: self.gpu_layers.map(|n| n.min(n_layer + 1)),
            n_cpu_moe: if self.cpu_moe {
                n_layer
            } else {
                self.n_cpu_moe.unwrap_or(0)
            },
            moe_gpu_cache: self.moe_gpu_cache.unwrap_or(0),
            expert_share: None,
        };
        if opts.moe_gpu_cache > 0 && opts.n_cpu_moe == 0 {
            return Err(Error::Invalid(
                "--moe-gpu-cache caches the experts of layers kept in RAM: add --cpu-moe or \
                 --n-cpu-moe N"
                    .into(),
            ));
        }
        let seeded = opts.moe_gpu_cache > 0
            && (model.moe_calibration.as_ref()).is_some_and(|c| !c.expert_share.is_empty());
        model.use_gpu(Arc::new(ctx), opts)?;
        if !quiet {
            if seeded {
                eprintln!(
                    "dsrun: the expert cache starts from the experts calibration saw chosen most"
                );
            }
            if let Some(g) = &model.gpu {
                eprintln!("dsrun: {}", g.describe());
            }
        }
        Ok(())
    }
}
