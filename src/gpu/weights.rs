//! A model's weights on the device, uploaded once: every matrix repacked ([`super::repack`]) and
//! split by rows where it exceeds one binding, the norms and biases as f32 buffers. The expert
//! tensors of the first `n_cpu_moe` layers stay in RAM (the CPU runs those experts).
//!
//! What the GPU forward pass covers is checked here, at load, so that an unsupported model is
//! one clear error before anything runs.

use std::sync::Arc;

use super::expert_cache::ExpertCache;
use super::ops::GpuMatrix;
use super::{GpuContext, GpuOps};
use crate::error::{Error, Result};
use crate::kernels::rope::RopeParams;
use crate::model::arch::FfnAct;
use crate::model::weights::{Attn, Ffn, Weights};
use crate::model::HParams;
use crate::tensor::TensorView;

/// Which layers and experts the GPU takes (`-ngl`, `--n-cpu-moe`).
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// llama.cpp's `-ngl`: the output layer and the last N − 1 layers on the GPU (the first
    /// n_layer + 1 − N run on the CPU); `None`: all of them. 0 leaves nothing for the GPU.
    pub n_gpu_layers: Option<usize>,
    /// The expert tensors of the first N layers stay in RAM and run on the CPU.
    pub n_cpu_moe: usize,
    /// Of each layer whose experts stay in RAM, this many experts also in VRAM, run on the GPU
    /// ([`super::expert_cache`]).
    pub moe_gpu_cache: usize,
    /// (n_layer, n_expert): the share of tokens that chose each expert in calibration
    /// (`dsrun.moe.expert_share`), which the expert cache starts from; `None` without one.
    pub expert_share: Option<Vec<f32>>,
}

pub struct GpuLayer {
    pub il: usize,
    pub attn_norm: wgpu::Buffer,
    pub wq: GpuMatrix,
    pub wk: GpuMatrix,
    pub wv: GpuMatrix,
    pub wo: GpuMatrix,
    pub bq: Option<wgpu::Buffer>,
    pub bk: Option<wgpu::Buffer>,
    pub bv: Option<wgpu::Buffer>,
    pub bo: Option<wgpu::Buffer>,
    /// Q/K norm weights and the length of the rows they normalise (a head, or the whole row).
    pub q_norm: Option<(wgpu::Buffer, usize)>,
    pub k_norm: Option<(wgpu::Buffer, usize)>,
    pub sinks: Option<wgpu::Buffer>,
    pub ffn_norm: wgpu::Buffer,
    pub ffn: GpuFfn,
    /// Sliding window of this layer (masked over the full cache).
    pub window: Option<usize>,
    /// This layer's RoPE (base and scale differ on sliding-window layers).
    pub rope: RopeParams,
}

pub enum GpuFfn {
    Dense {
        gate: GpuMatrix,
        up: GpuMatrix,
        down: GpuMatrix,
    },
    Moe {
        router: GpuMatrix,
        /// Stacked gate, up (n_expert * n_ff rows) and down (n_expert * n_embd rows); `None`
        /// when the experts run on the CPU.
        experts: Option<Box<[GpuMatrix; 3]>>,
        /// With the experts on the CPU: the most chosen of them in VRAM too.
        cache: Option<ExpertCache>,
        n_ff: usize,
    },
}

pub struct GpuWeights {
    /// Layers `first_layer ..` of the model (the ones before run on the CPU).
    pub layers: Vec<GpuLayer>,
    pub first_layer: usize,
    pub output_norm: wgpu::Buffer,
    pub output: GpuMatrix,
}

fn unsupported(what: &str, arch: &str) -> Error {
    Error::Invalid(format!(
        "the GPU forward pass does not cover {what} ({arch}) yet: use --device cpu"
    ))
}

/// The features of `hp` and `w` the GPU forward pass lacks, as an error.
fn check(hp: &HParams, w: &Weights) -> Result<()> {
    let arch = hp.arch.name;
    if hp.mla.is_some() {
        return Err(unsupported("multi-head latent attention", arch));
    }
    if hp.arch.ffn_act != FfnAct::Silu || hp.arch.oai {
        return Err(unsupported("this feed-forward activation", arch));
    }
    if hp.scales.residual != 1.0 {
        return Err(unsupported("residual scaling", arch));
    }
    if hp.routing.n_group > 1 {
        return Err(unsupported("group-limited routing", arch));
    }
    if hp.n_expert > 512 || hp.n_expert_used > 64 {
        return Err(unsupported("more than 512 experts or 64 per token", arch));
    }
    if hp.head_dim > 256 || !hp.head_dim.is_multiple_of(2) {
        return Err(unsupported("heads over 256 values or of odd size", arch));
    }
    for lw in &w.layers {
        if lw.post_attn_norm.is_some() || lw.post_ffn_norm.is_some() {
            return Err(unsupported("post-norms", arch));
        }
        if let Ffn::Moe {
            shared,
            selection_bias,
            biases,
            ..
        } = &lw.ffn
        {
            if shared.is_some() || selection_bias.is_some() || biases.is_some() {
                return Err(unsupported(
                    "shared experts, selection biases or expert biases",
                    arch,
                ));
            }
        }
    }
    Ok(())
}

fn f32_buf(ctx: &GpuContext, label: &str, v: &[f32]) -> Result<wgpu::Buffer> {
    ctx.storage(label, bytemuck::cast_slice(v))
}

fn opt_buf(ctx: &GpuContext, label: &str, v: &Option<Vec<f32>>) -> Result<Option<wgpu::Buffer>> {
    v.as_ref().map(|v| f32_buf(ctx, label, v)).transpose()
}

fn matrix(ops: &GpuOps, t: &TensorView) -> Result<GpuMatrix> {
    ops.upload_matrix(t.ty, t.n_rows, t.n_cols, t.data)
        .map_err(|e| Error::Invalid(format!("{}: {e}", t.name)))
}

impl GpuWeights {
    pub fn upload(
        ctx: &Arc<GpuContext>,
        hp: &HParams,
        w: &Weights,
        opts: &GpuOptions,
    ) -> Result<GpuWeights> {
        check(hp, w)?;
        let ops = GpuOps::new(ctx);
        // As llama.cpp (llama-model.cpp, `i_gpu_start`): the output counts as layer n_layer, and
        // the last N of the n_layer + 1 go to the GPU; the embedding lookup stays on the CPU.
        let n_gpu = opts.n_gpu_layers.unwrap_or(hp.n_layer + 1);
        if n_gpu == 0 {
            return Err(Error::Invalid(
                "-ngl 0 puts no layer on the GPU: use --device cpu".into(),
            ));
        }
        let first_layer = (hp.n_layer + 1).saturating_sub(n_gpu).min(hp.n_layer);
        let mut layers = Vec::with_capacity(hp.n_layer - first_layer);
        for (il, lw) in w.layers.iter().enumerate().skip(first_layer) {
            let Attn::Mha(a) = &lw.attn else {
                return Err(unsupported("multi-head latent attention", hp.arch.name));
            };
            let swa = hp.is_swa_layer(il);
            let norm = |v: &Option<Vec<f32>>| -> Result<Option<(wgpu::Buffer, usize)>> {
                Ok(match v {
                    Some(v) => Some((f32_buf(ctx, "qk norm", v)?, v.len())),
                    None => None,
                })
            };
            let ffn = match &lw.ffn {
                Ffn::Dense { gate, up, down } => GpuFfn::Dense {
                    gate: matrix(&ops, gate)?,
                    up: matrix(&ops, up)?,
                    down: matrix(&ops, down)?,
                },
                Ffn::Moe {
                    router,
                    gate,
                    up,
                    down,
                    n_ff,
                    ..
                } => GpuFfn::Moe {
                    router: matrix(&ops, router)?,
                    experts: if il < opts.n_cpu_moe {
                        None
                    } else {
                        Some(Box::new([
                            matrix(&ops, gate)?,
                            matrix(&ops, up)?,
                            matrix(&ops, down)?,
                        ]))
                    },
                    cache: if il < opts.n_cpu_moe && opts.moe_gpu_cache > 0 {
                        let share = opts.expert_share.as_ref().and_then(|s| {
                            let ne = hp.n_expert;
                            s.get(il * ne..(il + 1) * ne)
                        });
                        Some(ExpertCache::new(&ops, &lw.ffn, opts.moe_gpu_cache, share)?)
                    } else {
                        None
                    },
                    n_ff: *n_ff,
                },
            };
            layers.push(GpuLayer {
                il,
                attn_norm: f32_buf(ctx, "attn_norm", &lw.attn_norm)?,
                wq: matrix(&ops, &a.wq)?,
                wk: matrix(&ops, &a.wk)?,
                wv: matrix(&ops, &a.wv)?,
                wo: matrix(&ops, &a.wo)?,
                bq: opt_buf(ctx, "bq", &a.bq)?,
                bk: opt_buf(ctx, "bk", &a.bk)?,
                bv: opt_buf(ctx, "bv", &a.bv)?,
                bo: opt_buf(ctx, "bo", &a.bo)?,
                q_norm: norm(&a.q_norm)?,
                k_norm: norm(&a.k_norm)?,
                sinks: opt_buf(ctx, "sinks", &a.sinks)?,
                ffn_norm: f32_buf(ctx, "ffn_norm", &lw.ffn_norm)?,
                ffn,
                window: hp.sliding_window.filter(|_| swa),
                rope: w.rope(hp, il),
            });
        }
        let output = matrix(&ops, &w.output)?;
        Ok(GpuWeights {
            layers,
            first_layer,
            output_norm: f32_buf(ctx, "output_norm", &w.output_norm)?,
            output,
        })
    }

    /// Bytes of the weights on the device, each expert tensor counted as `expert_share(its
    /// bytes)` (all of it for the upload, the used share for a decoded token's reads).
    pub fn bytes(&self, expert_share: impl Fn(u64) -> u64) -> u64 {
        let mut bytes = self.output.bytes();
        for l in &self.layers {
            bytes += [&l.wq, &l.wk, &l.wv, &l.wo]
                .iter()
                .map(|m| m.bytes())
                .sum::<u64>();
            bytes += match &l.ffn {
                GpuFfn::Dense { gate, up, down } => gate.bytes() + up.bytes() + down.bytes(),
                GpuFfn::Moe {
                    router,
                    experts,
                    cache,
                    ..
                } => {
                    let share = |e: &[GpuMatrix; 3]| -> u64 {
                        e.iter().map(|m| expert_share(m.bytes())).sum()
                    };
                    router.bytes()
                        + experts.as_deref().map_or(0, share)
                        + cache.as_ref().map_or(0, |c| share(&c.mats))
                }
            };
        }
        bytes
    }
}
