//! The forward pass on the device. Weights are uploaded once per model ([`GpuModel`]); a
//! [`GpuSession`] holds the KV cache (f16 pairs packed in u32, as the CPU's default f16 cache;
//! with `--kv-window`, each layer without a native window keeps a ring, sinks and summary, see
//! `stream.rs`),
//! the activation buffers sized for one batch, and the whole pass recorded once as dispatches
//! with their bind groups. Evaluating a batch writes the embedded rows (looked up on the CPU) and
//! a small `step` uniform (token count, first position), replays the dispatches in one command
//! buffer, and reads back only the logits.
//!
//! Per layer, the same order as [`crate::model::forward`]: norm → Q/K/V → (biases) → (Q/K norm)
//! → RoPE → cache store → attention → output projection added to the residual → norm → SwiGLU
//! FFN, or router → top-k → the chosen experts' products (the expert index read from a buffer)
//! → their weighted sum added to the residual. A layer whose experts stay in RAM
//! (`--n-cpu-moe`) ends the command buffer after routing: the normed hidden state, ids and
//! weights come back, the CPU runs the experts, and their sum goes up again.

use std::sync::Arc;

use super::cpu_moe;
use super::ops::{u32s, StepUniform};
use super::plan::{Acts, Builder, Dispatch, Groups, LayerKv, Segment};
use super::stream::{slot_part_len, Dims, StreamLayerGpu};
use super::weights::{GpuFfn, GpuWeights};
use super::GpuContext;
use crate::error::{Error, Result};
use crate::model::forward as model_forward;
use crate::model::kv_cache::KvCache;
use crate::model::kv_window::StreamConfig;
use crate::model::moe_select::MoeState;
use crate::model::{HParams, Weights};

pub use super::weights::GpuOptions;

/// A model's weights on the device and how they are placed.
pub struct GpuModel {
    pub ctx: Arc<GpuContext>,
    pub w: GpuWeights,
    pub opts: GpuOptions,
}

impl GpuModel {
    pub fn new(
        ctx: Arc<GpuContext>,
        hp: &HParams,
        w: &Weights,
        opts: GpuOptions,
    ) -> Result<GpuModel> {
        let gw = GpuWeights::upload(&ctx, hp, w, &opts)?;
        Ok(GpuModel { ctx, w: gw, opts })
    }

    /// Bytes of weights one decoded token reads on the GPU: every matrix but the experts, and of
    /// each expert tensor the share of the experts a token uses (k of n_expert). The KV cache
    /// and activations are left out (small at the lengths the roofline is quoted for).
    pub fn decode_bytes(&self, hp: &HParams) -> u64 {
        let share = |b: u64| b * hp.n_expert_used as u64 / hp.n_expert.max(1) as u64;
        self.w.bytes(share)
    }

    /// One line for stderr: the adapter, what runs where, the bytes uploaded.
    pub fn describe(&self) -> String {
        let i = &self.ctx.info;
        let n_cpu_moe = self
            .w
            .layers
            .iter()
            .filter(|l| matches!(&l.ffn, GpuFfn::Moe { experts: None, .. }))
            .count();
        let cached = self.w.layers.iter().find_map(|l| match &l.ffn {
            GpuFfn::Moe { cache: Some(c), .. } => Some(c.n_slot),
            _ => None,
        });
        let moe = match (n_cpu_moe, cached) {
            (0, _) => String::new(),
            (n, None) => format!(", experts of {n} layers on the CPU"),
            (n, Some(c)) => {
                format!(", experts of {n} layers on the CPU ({c} of each cached in VRAM)")
            }
        };
        let cpu = match self.w.first_layer {
            0 => String::new(),
            n => format!(" (the first {n} on the CPU)"),
        };
        format!(
            "GPU: {} ({}, {}), {} of {} layers and the output on the GPU{cpu}{moe}, \
             {:.1} MiB of weights",
            i.name,
            i.backend,
            i.device_type,
            self.w.layers.len(),
            self.w.first_layer + self.w.layers.len(),
            self.w.bytes(|b| b) as f64 / (1 << 20) as f64
        )
    }
}

/// A session's state on the device: KV cache, activations, and the recorded pass.
pub struct GpuSession {
    model: Arc<GpuModel>,
    n_batch: usize,
    n_ctx: usize,
    /// Most rows of logits one call may return (`eval_all` batches are cut to this).
    pub max_out_rows: usize,
    a: Acts,
    kv: Vec<LayerKv>,
    segments: Vec<Segment>,
    tail_last: Vec<Dispatch>,
    tail_all: Vec<Dispatch>,
    staging_bytes: u64,
    /// With `DSRUN_GPU_PROFILE=1`: time per pipeline, each dispatch waited for alone.
    pub profile: Option<std::sync::Mutex<std::collections::HashMap<String, std::time::Duration>>>,
}

/// Logits read back per call at most (rows × vocabulary × 4 bytes).
const LOGITS_BYTES: usize = 64 << 20;

impl GpuSession {
    /// A session of `n_ctx` positions in batches of `n_batch`; with `stream`, the layers without
    /// a native window keep a ring, sinks and summary instead of the full cache.
    pub fn new(
        model: Arc<GpuModel>,
        hp: &HParams,
        n_ctx: usize,
        n_batch: usize,
        stream: Option<&StreamConfig>,
    ) -> Result<Self> {
        let ctx = model.ctx.clone();
        let f = 4u64;
        let b = n_batch.max(1) as u64;
        let (e, hd) = (hp.n_embd as u64, hp.head_dim as u64);
        let (qd, kvd) = (hp.n_head as u64 * hd, hp.n_head_kv as u64 * hd);
        let k = hp.n_expert_used.max(1) as u64;
        let ff = model
            .w
            .layers
            .iter()
            .map(|l| match &l.ffn {
                GpuFfn::Dense { gate, .. } => gate.n_rows as u64,
                GpuFfn::Moe { n_ff, .. } => k * *n_ff as u64,
            })
            .max()
            .unwrap_or(1);
        let n_vocab = hp.n_vocab;
        let max_out_rows = (LOGITS_BYTES / (n_vocab * 4)).clamp(1, n_batch.max(1));
        let r = max_out_rows as u64;
        let cpu_back = (b * e + 2 * b * k) * f;
        let logit_bytes = r * n_vocab as u64 * f;
        let staging_bytes = cpu_back.max(logit_bytes);
        let z = |label: &str, n: u64| ctx.zeroed(label, n * f);
        let a = Acts {
            x: z("x", b * e)?,
            h: z("h", b * e)?,
            q: z("q", b * qd)?,
            k: z("k", b * kvd)?,
            v: z("v", b * kvd)?,
            att: z("att", b * qd)?,
            g: z("g", b * ff)?,
            u: z("u", b * ff)?,
            dm: z("expert outputs", b * k * e)?,
            rl: z("router logits", b * hp.n_expert.max(1) as u64)?,
            ids: z("expert ids", b * k)?,
            order: z("pairs by expert", b * k)?,
            offsets: z("expert offsets", hp.n_expert.max(1) as u64 + 1)?,
            wts: z("expert weights", b * k)?,
            cids: z("expert cache slots", b * k)?,
            cwts: z("expert cache weights", b * k)?,
            cpu_out: z("cpu experts", b * e)?,
            xo: z("output rows", r * e)?,
            logits: z("logits", r * n_vocab as u64)?,
            xq: z("rounded activations", b * e.max(qd).max(ff))?,
            qs: z("sink queries", if stream.is_some() { b * qd } else { 1 })?,
            slot_part: z(
                "summary shares",
                stream.map_or(1, |c| b * slot_part_len(c, hp.n_head, hp.head_dim) as u64),
            )?,
            dummy: z("dummy", 1)?,
            step: ctx.uniform(&StepUniform {
                n_tok: 0,
                pos0: 0,
                _pad: [0; 2],
            }),
            staging: ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("staging"),
                size: staging_bytes,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
        };
        let mut kv = Vec::with_capacity(model.w.layers.len());
        for l in &model.w.layers {
            kv.push(match stream.filter(|_| l.window.is_none()) {
                Some(cfg) => {
                    let dims = Dims {
                        n_head: hp.n_head,
                        n_head_kv: hp.n_head_kv,
                        head_dim: hp.head_dim,
                        cap: (cfg.window + n_batch.max(1)).min(n_ctx),
                    };
                    let scale = hp.scales.attention.unwrap_or(1.0 / (hd as f32).sqrt());
                    let st = StreamLayerGpu::new(
                        &ctx,
                        cfg,
                        l.il,
                        dims,
                        &l.rope,
                        scale,
                        l.sinks.is_some(),
                    )?;
                    LayerKv::Stream(Box::new(st))
                }
                None => {
                    let bytes = n_ctx as u64 * kvd * 2;
                    LayerKv::Full(ctx.zeroed("K cache", bytes)?, ctx.zeroed("V cache", bytes)?)
                }
            });
        }
        let bld = Builder {
            ctx: &ctx,
            hp,
            a: &a,
            xq_holds: Default::default(),
            f32_acts: std::env::var("DSRUN_REFERENCE").is_ok_and(|v| v == "1"),
            tiled: std::env::var("DSRUN_GPU_TILED").map_or(true, |v| v != "0"),
        };
        let mut segments = vec![Segment::default()];
        for (l, kv) in model.w.layers.iter().zip(&kv) {
            bld.layer(l, kv, &mut segments)?;
        }
        let out = &model.w.output;
        let mut tail_last =
            vec![bld.norm_to(&a.xo, &model.w.output_norm, &a.x, "rms_norm_last")?];
        // One row: its quantization is one token's worth of blocks, whatever the batch.
        let xs = bld.acts(&mut tail_last, out.ty, &a.xo, out.n_cols)?;
        if tail_last.len() == 2 {
            if let Groups::Elements(e) = tail_last[1].groups {
                tail_last[1].groups = Groups::ElementsOnce(e);
            }
        }
        bld.mv(
            &mut tail_last,
            out.dispatches(&ctx, xs, &a.logits, false, None)?,
            1,
            Some(1),
        );
        let mut tail_all = vec![bld.norm_to(&a.xo, &model.w.output_norm, &a.x, "rms_norm_to")?];
        bld.mm(&mut tail_all, out, &a.xo, &a.logits, false)?;
        Ok(GpuSession {
            model,
            n_batch: n_batch.max(1),
            n_ctx,
            max_out_rows,
            a,
            kv,
            segments,
            tail_last,
            tail_all,
            staging_bytes,
            profile: (std::env::var("DSRUN_GPU_PROFILE").as_deref() == Ok("1"))
                .then(Default::default),
        })
    }

    /// Bytes of the KV state on the device: full caches, and the windowed layers' rings (W + the
    /// batch size rows), sinks and summaries.
    pub fn kv_bytes(&self) -> u64 {
        self.kv
            .iter()
            .map(|kv| match kv {
                LayerKv::Full(k, v) => k.size() + v.size(),
                LayerKv::Stream(st) => st.bytes(),
            })
            .sum()
    }

    fn encode(&self, enc: &mut wgpu::CommandEncoder, work: &[Dispatch], n_tok: u32) {
        if let Some(prof) = &self.profile {
            let ctx = &self.model.ctx;
            for d in work {
                let t = std::time::Instant::now();
                let mut e = ctx.device.create_command_encoder(&Default::default());
                {
                    let mut pass = e.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
                    pass.set_pipeline(&d.pipeline);
                    pass.set_bind_group(0, &d.bind, &[]);
                    let (x, y, z) = d.groups.at(n_tok);
                    if x > 0 && y > 0 && z > 0 {
                        pass.dispatch_workgroups(x, y, z);
                    }
                }
                ctx.queue.submit([e.finish()]);
                let _ = ctx.device.poll(wgpu::PollType::wait_indefinitely());
                let mut p = prof.lock().unwrap();
                *p.entry(d.name.clone()).or_default() += t.elapsed();
            }
            return;
        }
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        for d in work {
            pass.set_pipeline(&d.pipeline);
            pass.set_bind_group(0, &d.bind, &[]);
            let (x, y, z) = d.groups.at(n_tok);
            if x > 0 && y > 0 && z > 0 {
                pass.dispatch_workgroups(x, y, z);
            }
        }
    }

    /// Runs `tokens` at positions `kv.n_past..` (the layers before the GPU's first on the CPU, their
    /// K/V into `kv`, whose `n_past` the caller advances) and returns the logits of the last token, or of every
    /// token with `all_logits` (at most `max_out_rows`).
    pub fn forward(
        &mut self,
        hp: &HParams,
        w: &Weights,
        kv: &mut KvCache,
        tokens: &[u32],
        all_logits: bool,
        moe: &mut MoeState,
    ) -> Result<Vec<f32>> {
        let n = tokens.len();
        let pos0 = kv.n_past;
        if n == 0 || n > self.n_batch || pos0 + n > self.n_ctx {
            return Err(Error::Invalid(format!(
                "GPU: {n} tokens at position {pos0} (batch {}, context {})",
                self.n_batch, self.n_ctx
            )));
        }
        if all_logits && n > self.max_out_rows {
            return Err(Error::Invalid(format!(
                "GPU: logits of {n} tokens in one call (at most {})",
                self.max_out_rows
            )));
        }
        let ctx = self.model.ctx.clone();
        // The hidden state crosses to the GPU once, after the CPU's layers.
        let mut x = model_forward::embed(hp, w, tokens);
        for il in 0..self.model.w.first_layer {
            model_forward::layer(hp, w, kv, il, &mut x, pos0, moe);
        }
        let n_tok = u32s(n, "tokens")?;
        ctx.queue
            .write_buffer(&self.a.x, 0, bytemuck::cast_slice(&x));
        ctx.queue.write_buffer(
            &self.a.step,
            0,
            bytemuck::bytes_of(&StepUniform {
                n_tok,
                pos0: u32s(pos0, "position")?,
                _pad: [0; 2],
            }),
        );
        let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        if pos0 == 0 {
            // A new sequence: the windowed layers' summaries start empty.
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            for kv in &self.kv {
                if let LayerKv::Stream(st) = kv {
                    st.reset(&mut enc);
                }
            }
            ctx.queue.submit([enc.finish()]);
        }
        let result = self.run(hp, w, n, all_logits, moe);
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(Error::Invalid(format!("GPU forward pass: {err}")));
        }
        let mut logits = result?;
        if hp.scales.logit != 1.0 {
            logits.iter_mut().for_each(|v| *v /= hp.scales.logit);
        }
        for l in &self.model.w.layers {
            if let GpuFfn::Moe { cache, .. } = &l.ffn {
                for _ in 0..n {
                    moe.stats.count(l.il, hp.n_expert_used);
                }
                if let Some(c) = cache {
                    c.refresh(&ctx, &w.layers[l.il].ffn, n)?;
                }
            }
        }
        Ok(logits)
    }

    fn run(
        &self,
        hp: &HParams,
        w: &Weights,
        n: usize,
        all_logits: bool,
        moe: &mut MoeState,
    ) -> Result<Vec<f32>> {
        let ctx = &self.model.ctx;
        let n_tok = n as u32;
        let e = hp.n_embd;
        let k = hp.n_expert_used;
        for seg in &self.segments {
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            self.encode(&mut enc, &seg.work, n_tok);
            let Some(cpu) = &seg.then else {
                ctx.queue.submit([enc.finish()]);
                continue;
            };
            let (hb, ib) = ((n * e * 4) as u64, (n * k * 4) as u64);
            enc.copy_buffer_to_buffer(&self.a.h, 0, &self.a.staging, 0, hb);
            enc.copy_buffer_to_buffer(&self.a.ids, 0, &self.a.staging, hb, ib);
            enc.copy_buffer_to_buffer(&self.a.wts, 0, &self.a.staging, hb + ib, ib);
            ctx.queue.submit([enc.finish()]);
            let bytes = ctx.read_staging(&self.a.staging, hb + 2 * ib)?;
            let (hbytes, rest) = bytes.split_at(hb as usize);
            let (ibytes, wbytes) = rest.split_at(ib as usize);
            let h: Vec<f32> = bytemuck::pod_collect_to_vec(hbytes);
            let ids: Vec<u32> = bytemuck::pod_collect_to_vec(ibytes);
            let wts: Vec<f32> = bytemuck::pod_collect_to_vec(wbytes);
            let ffn = &w.layers[cpu.il].ffn;
            let layer = &self.model.w.layers[cpu.il - self.model.w.first_layer];
            let mut served = Vec::new();
            if let GpuFfn::Moe { cache: Some(c), .. } = &layer.ffn {
                // The cached experts run on the GPU while the CPU runs the others.
                let (sids, swts, s) = c.split(&ids, &wts, &mut moe.stats)?;
                served = s;
                ctx.queue
                    .write_buffer(&self.a.cids, 0, bytemuck::cast_slice(&sids));
                ctx.queue
                    .write_buffer(&self.a.cwts, 0, bytemuck::cast_slice(&swts));
                let mut enc = ctx.device.create_command_encoder(&Default::default());
                self.encode(&mut enc, &cpu.cached, n_tok);
                ctx.queue.submit([enc.finish()]);
            }
            let out = cpu_moe::experts(ffn, e, &h, &ids, &wts, &served)?;
            ctx.queue
                .write_buffer(&self.a.cpu_out, 0, bytemuck::cast_slice(&out));
        }
        let (tail, rows) = if all_logits {
            (&self.tail_all, n)
        } else {
            (&self.tail_last, 1)
        };
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        self.encode(&mut enc, tail, n_tok);
        let bytes = (rows * hp.n_vocab * 4) as u64;
        debug_assert!(bytes <= self.staging_bytes);
        enc.copy_buffer_to_buffer(&self.a.logits, 0, &self.a.staging, 0, bytes);
        ctx.queue.submit([enc.finish()]);
        let out = ctx.read_staging(&self.a.staging, bytes)?;
        Ok(bytemuck::pod_collect_to_vec(&out))
    }
}
