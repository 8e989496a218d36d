//! The forward pass on the device. Weights are uploaded once per model ([`GpuModel`]); a
//! [`GpuSession`] holds the KV cache (f16 pairs packed in u32, as the CPU's default f16 cache),
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

use bytemuck::{Pod, Zeroable};

use super::cpu_moe;
use super::ops::{
    u32s, GpuMatrix, MatvecDispatch, NormParams, RopeUniform, StepUniform, MAX_GROUPS,
};
use super::shaders;
use super::weights::{GpuFfn, GpuLayer, GpuWeights};
use super::GpuContext;
use crate::error::{Error, Result};
use crate::kernels::qdot::{act_kind, ActKind};
use crate::model::arch::Gating;
use crate::model::moe_select::MoeState;
use crate::model::{HParams, Weights};
use crate::tensor::GgmlType;

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
        if gw.first_layer > 0 {
            return Err(Error::Invalid(format!(
                "-ngl {} of {} layers: only all layers on the GPU are implemented yet \
                 (use -ngl {} or --device cpu)",
                hp.n_layer - gw.first_layer,
                hp.n_layer,
                hp.n_layer
            )));
        }
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
        let moe = match n_cpu_moe {
            0 => String::new(),
            n => format!(", experts of {n} layers on the CPU"),
        };
        format!(
            "GPU: {} ({}, {}), {} layers on the GPU{moe}, {:.1} MiB of weights",
            i.name,
            i.backend,
            i.device_type,
            self.w.layers.len(),
            self.w.bytes(|b| b) as f64 / (1 << 20) as f64
        )
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct EwParams {
    pub width: u32,
    pub k: u32,
    pub _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct AttnParams {
    pub n_head: u32,
    pub n_head_kv: u32,
    pub head_dim: u32,
    pub window: u32,
    pub scale: f32,
    pub has_sinks: u32,
    pub _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct RouteParams {
    pub n_expert: u32,
    pub k: u32,
    pub gating: u32,
    pub norm: u32,
    pub scale: f32,
    pub _pad: [u32; 3],
}

/// Workgroups of a dispatch as a function of the batch's token count.
#[derive(Clone, Copy)]
enum Groups {
    /// A matrix product: rows over x and y, `z_per_tok` workgroups in z per token (or a fixed
    /// z when `fixed_z`).
    Matvec {
        xy: (u32, u32),
        z_per_tok: u32,
        fixed_z: Option<u32>,
    },
    /// One workgroup per row, `per_tok` rows per token.
    Rows(u32),
    /// One invocation per element, `per_tok` elements per token, 64 to a workgroup.
    Elements(u32),
    /// [`Groups::Elements`] for one token, whatever the batch.
    ElementsOnce(u32),
    /// One workgroup per (head, token).
    Heads(u32),
    /// One workgroup.
    One,
}

impl Groups {
    fn at(self, n_tok: u32) -> (u32, u32, u32) {
        match self {
            Groups::Matvec {
                xy,
                z_per_tok,
                fixed_z,
            } => (xy.0, xy.1, fixed_z.unwrap_or(n_tok * z_per_tok)),
            Groups::Rows(r) => (n_tok * r, 1, 1),
            Groups::Elements(e) => {
                let g = (n_tok * e).div_ceil(64).max(1);
                (g.min(MAX_GROUPS), g.div_ceil(MAX_GROUPS), 1)
            }
            Groups::ElementsOnce(e) => Groups::Elements(e).at(1),
            Groups::Heads(h) => (h, n_tok, 1),
            Groups::One => (1, 1, 1),
        }
    }
}

struct Dispatch {
    name: String,
    pipeline: Arc<wgpu::ComputePipeline>,
    bind: wgpu::BindGroup,
    groups: Groups,
}

/// Dispatches up to a point where the CPU takes over (the experts of layer `then`), if any.
#[derive(Default)]
struct Segment {
    work: Vec<Dispatch>,
    then: Option<usize>,
}

/// The activation buffers of one session; (rows, width) in comments, B the batch size.
struct Acts {
    x: wgpu::Buffer,       // (B, n_embd) the residual stream
    h: wgpu::Buffer,       // (B, n_embd) normed
    q: wgpu::Buffer,       // (B, n_head * head_dim)
    k: wgpu::Buffer,       // (B, n_head_kv * head_dim)
    v: wgpu::Buffer,       // (B, n_head_kv * head_dim)
    att: wgpu::Buffer,     // (B, n_head * head_dim)
    g: wgpu::Buffer,       // (B, max(n_ff, k * n_ff_exp))
    u: wgpu::Buffer,       // as g
    dm: wgpu::Buffer,      // (B * k, n_embd) expert outputs
    rl: wgpu::Buffer,      // (B, n_expert) router logits
    ids: wgpu::Buffer,     // (B * k) u32
    wts: wgpu::Buffer,     // (B * k)
    cpu_out: wgpu::Buffer, // (B, n_embd) the CPU experts' sum
    xo: wgpu::Buffer,      // (R, n_embd) normed rows whose logits are wanted
    logits: wgpu::Buffer,  // (R, n_vocab)
    xq: wgpu::Buffer,      // (B, widest input) activations rounded to the CPU's grid
    dummy: wgpu::Buffer,
    step: wgpu::Buffer,
    staging: wgpu::Buffer,
}

/// A session's state on the device: KV cache, activations, and the recorded pass.
pub struct GpuSession {
    model: Arc<GpuModel>,
    n_batch: usize,
    n_ctx: usize,
    /// Most rows of logits one call may return (`eval_all` batches are cut to this).
    pub max_out_rows: usize,
    a: Acts,
    segments: Vec<Segment>,
    tail_last: Vec<Dispatch>,
    tail_all: Vec<Dispatch>,
    staging_bytes: u64,
    /// With `DSRUN_GPU_PROFILE=1`: time per pipeline, each dispatch waited for alone.
    pub profile: Option<std::sync::Mutex<std::collections::HashMap<String, std::time::Duration>>>,
}

/// Logits read back per call at most (rows × vocabulary × 4 bytes).
const LOGITS_BYTES: usize = 64 << 20;

/// Records dispatches over one context.
struct Builder<'a> {
    ctx: &'a GpuContext,
    hp: &'a HParams,
    a: &'a Acts,
    /// The buffer and grid `a.xq` holds now (so q, k and v quantize `h` once).
    xq_holds: std::cell::Cell<Option<(*const wgpu::Buffer, &'static str)>>,
    /// `DSRUN_REFERENCE=1`: f32 activations, as the CPU's reference products take them.
    f32_acts: bool,
}

impl Builder<'_> {
    fn pipe(
        &self,
        key: &str,
        source: &str,
        entry: &str,
    ) -> Result<(String, Arc<wgpu::ComputePipeline>)> {
        Ok((key.to_string(), self.ctx.pipeline(key, source, entry)?))
    }

    fn d(
        &self,
        (name, pipeline): (String, Arc<wgpu::ComputePipeline>),
        buffers: &[(u32, &wgpu::Buffer)],
        groups: Groups,
    ) -> Dispatch {
        self.xq_holds.set(None);
        Dispatch {
            name,
            bind: self.ctx.bind(&pipeline, buffers),
            pipeline,
            groups,
        }
    }

    fn mv(
        &self,
        out: &mut Vec<Dispatch>,
        ds: Vec<MatvecDispatch>,
        z_per_tok: u32,
        fixed_z: Option<u32>,
    ) {
        out.extend(ds.into_iter().map(|d| Dispatch {
            name: d.name,
            pipeline: d.pipeline,
            bind: d.bind,
            groups: Groups::Matvec {
                xy: d.groups_xy,
                z_per_tok,
                fixed_z,
            },
        }));
    }

    /// `x` (per_tok values a token, or a token's expert slots) rounded to the activation grid
    /// the CPU dots `ty` weights against, into `a.xq`; returns the buffer to multiply from.
    fn acts<'b>(
        &'b self,
        out: &mut Vec<Dispatch>,
        ty: GgmlType,
        x: &'b wgpu::Buffer,
        per_tok: usize,
    ) -> Result<&'b wgpu::Buffer> {
        if self.f32_acts {
            return Ok(x);
        }
        let (entry, block) = match act_kind(ty) {
            ActKind::Q8_0 | ActKind::Q8_1 => ("q8_0", 32),
            ActKind::Q8K => ("q8_k", 256),
            ActKind::F32 => return Ok(x),
        };
        let key = (x as *const wgpu::Buffer, entry);
        if self.xq_holds.get() == Some(key) {
            return Ok(&self.a.xq);
        }
        let p = self.pipe(&format!("quantize_{entry}"), shaders::QUANTIZE, entry)?;
        let params = self.ctx.uniform(&EwParams {
            width: u32s(per_tok, "width")?,
            k: 0,
            _pad: [0; 2],
        });
        out.push(self.d(
            p,
            &[(0, x), (1, &self.a.xq), (2, &params), (3, &self.a.step)],
            Groups::Elements(u32s(per_tok / block, "blocks")?),
        ));
        self.xq_holds.set(Some(key));
        Ok(&self.a.xq)
    }

    /// `y (+)= m · x` with x rounded as the CPU rounds it.
    fn mm(
        &self,
        out: &mut Vec<Dispatch>,
        m: &GpuMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        accumulate: bool,
    ) -> Result<()> {
        let xs = self.acts(out, m.ty, x, m.n_cols)?;
        let ds = m.dispatches(self.ctx, xs, y, accumulate)?;
        self.mv(out, ds, 1, None);
        Ok(())
    }

    /// Expert products `y[z] = W_{ids[z]} · x[z / x_div]` over each token's `k` slots.
    #[allow(clippy::too_many_arguments)]
    fn mm_ids(
        &self,
        out: &mut Vec<Dispatch>,
        m: &GpuMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        rows: usize,
        x_div: usize,
        k: usize,
    ) -> Result<()> {
        let per_tok = m.n_cols * k / x_div;
        let xs = self.acts(out, m.ty, x, per_tok)?;
        let d = m.dispatch_ids(self.ctx, xs, y, &self.a.ids, rows, x_div)?;
        self.mv(out, vec![d], u32s(k, "experts per token")?, None);
        Ok(())
    }

    fn norm_to(
        &self,
        dst: &wgpu::Buffer,
        w: &wgpu::Buffer,
        src: &wgpu::Buffer,
        entry: &str,
    ) -> Result<Dispatch> {
        let p = self.pipe(entry, &shaders::norm_source(), entry)?;
        let params = self.ctx.uniform(&NormParams {
            n: u32s(self.hp.n_embd, "width")?,
            eps: self.hp.rms_eps,
            _pad: [0; 2],
        });
        let groups = if entry == "rms_norm_last" {
            Groups::One
        } else {
            Groups::Rows(1)
        };
        let mut bufs = vec![(0, dst), (1, w), (2, &params), (3, src)];
        if entry == "rms_norm_last" {
            bufs.push((4, &self.a.step));
        }
        Ok(self.d(p, &bufs, groups))
    }

    fn ew(
        &self,
        entry: &str,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        width: usize,
        k: usize,
    ) -> Result<Dispatch> {
        let p = self.pipe(&format!("ew_{entry}"), shaders::ELEMENTWISE, entry)?;
        let params = self.ctx.uniform(&EwParams {
            width: u32s(width, "width")?,
            k: u32s(k, "experts per token")?,
            _pad: [0; 2],
        });
        let mut bufs = vec![(0, a), (1, b), (2, &params), (3, &self.a.step)];
        if entry == "moe_sum" {
            bufs.push((4, &self.a.wts));
        }
        Ok(self.d(p, &bufs, Groups::Elements(u32s(width, "width")?)))
    }

    /// Layer `l`'s dispatches, appended to `seg`; a new segment starts after a CPU-expert layer.
    fn layer(
        &self,
        l: &GpuLayer,
        kv: &(wgpu::Buffer, wgpu::Buffer),
        segs: &mut Vec<Segment>,
    ) -> Result<()> {
        let (hp, a, ctx) = (self.hp, self.a, self.ctx);
        let hd = hp.head_dim;
        let (qd, kvd) = (hp.n_head * hd, hp.n_head_kv * hd);
        let mut w = std::mem::take(&mut segs.last_mut().expect("one segment").work);

        w.push(self.norm_to(&a.h, &l.attn_norm, &a.x, "rms_norm_to")?);
        self.mm(&mut w, &l.wq, &a.h, &a.q, false)?;
        self.mm(&mut w, &l.wk, &a.h, &a.k, false)?;
        self.mm(&mut w, &l.wv, &a.h, &a.v, false)?;
        for (bias, buf, width) in [(&l.bq, &a.q, qd), (&l.bk, &a.k, kvd), (&l.bv, &a.v, kvd)] {
            if let Some(b) = bias {
                w.push(self.ew("add_bias", buf, b, width, 1)?);
            }
        }
        for (norm, buf, width) in [(&l.q_norm, &a.q, qd), (&l.k_norm, &a.k, kvd)] {
            if let Some((nw, len)) = norm {
                let p = self.pipe("rms_norm", &shaders::norm_source(), "rms_norm")?;
                let params = ctx.uniform(&NormParams {
                    n: u32s(*len, "norm width")?,
                    eps: hp.rms_eps,
                    _pad: [0; 2],
                });
                let rows = u32s(width / len, "rows")?;
                w.push(self.d(p, &[(0, buf), (1, nw), (2, &params)], Groups::Rows(rows)));
            }
        }
        let rope = l.rope;
        for (buf, n_head) in [(&a.q, hp.n_head), (&a.k, hp.n_head_kv)] {
            let p = self.pipe("rope", shaders::ROPE, "rope")?;
            let params = ctx.uniform(&RopeUniform::new(n_head, hd, &rope)?);
            let per_tok = u32s(n_head * hp.n_rot / 2, "rotations")?;
            w.push(self.d(
                p,
                &[(0, buf), (1, &params), (2, &a.step)],
                Groups::Elements(per_tok),
            ));
        }
        let attn_params = ctx.uniform(&AttnParams {
            n_head: u32s(hp.n_head, "heads")?,
            n_head_kv: u32s(hp.n_head_kv, "heads")?,
            head_dim: u32s(hd, "head size")?,
            window: u32s(l.window.unwrap_or(0), "window")?,
            scale: hp.scales.attention.unwrap_or(1.0 / (hd as f32).sqrt()),
            has_sinks: l.sinks.is_some() as u32,
            _pad: [0; 2],
        });
        let src = shaders::attention_source();
        let p = self.pipe("kv_store", &src, "kv_store")?;
        w.push(self.d(
            p,
            &[
                (1, &kv.0),
                (2, &kv.1),
                (4, &attn_params),
                (5, &a.step),
                (7, &a.k),
                (8, &a.v),
            ],
            Groups::Elements(u32s(kvd / 2, "width")?),
        ));
        let p = self.pipe("attention", &src, "attention")?;
        w.push(self.d(
            p,
            &[
                (0, &a.q),
                (1, &kv.0),
                (2, &kv.1),
                (3, &a.att),
                (4, &attn_params),
                (5, &a.step),
                (6, l.sinks.as_ref().unwrap_or(&a.dummy)),
            ],
            Groups::Heads(u32s(hp.n_head, "heads")?),
        ));
        self.mm(&mut w, &l.wo, &a.att, &a.x, true)?;
        if let Some(b) = &l.bo {
            w.push(self.ew("add_bias", &a.x, b, hp.n_embd, 1)?);
        }

        w.push(self.norm_to(&a.h, &l.ffn_norm, &a.x, "rms_norm_to")?);
        match &l.ffn {
            GpuFfn::Dense { gate, up, down } => {
                self.mm(&mut w, gate, &a.h, &a.g, false)?;
                self.mm(&mut w, up, &a.h, &a.u, false)?;
                w.push(self.ew("glu", &a.g, &a.u, gate.n_rows, 1)?);
                self.mm(&mut w, down, &a.g, &a.x, true)?;
            }
            GpuFfn::Moe {
                router,
                experts,
                n_ff,
            } => {
                let k = hp.n_expert_used;
                self.mm(&mut w, router, &a.h, &a.rl, false)?;
                let r = &hp.routing;
                let params = ctx.uniform(&RouteParams {
                    n_expert: u32s(hp.n_expert, "experts")?,
                    k: u32s(k, "experts per token")?,
                    gating: match r.routing.gating {
                        Gating::Softmax => 0,
                        Gating::Sigmoid => 1,
                        Gating::TopKThenSoftmax => 2,
                    },
                    norm: r.routing.norm as u32,
                    scale: r.scale,
                    _pad: [0; 3],
                });
                let p = self.pipe("route", shaders::MOE, "route")?;
                w.push(self.d(
                    p,
                    &[(0, &a.rl), (1, &a.ids), (2, &a.wts), (3, &params)],
                    Groups::Rows(1),
                ));
                match experts.as_deref() {
                    Some([gate, up, down]) => {
                        self.mm_ids(&mut w, gate, &a.h, &a.g, *n_ff, k, k)?;
                        self.mm_ids(&mut w, up, &a.h, &a.u, *n_ff, k, k)?;
                        w.push(self.ew("glu", &a.g, &a.u, k * n_ff, 1)?);
                        self.mm_ids(&mut w, down, &a.g, &a.dm, hp.n_embd, 1, k)?;
                        w.push(self.ew("moe_sum", &a.x, &a.dm, hp.n_embd, k)?);
                    }
                    None => {
                        let seg = segs.last_mut().expect("one segment");
                        seg.work = w;
                        seg.then = Some(l.il);
                        let add = self.ew("add", &a.x, &a.cpu_out, hp.n_embd, 1)?;
                        segs.push(Segment {
                            work: vec![add],
                            then: None,
                        });
                        return Ok(());
                    }
                }
            }
        }
        segs.last_mut().expect("one segment").work = w;
        Ok(())
    }
}

impl GpuSession {
    pub fn new(model: Arc<GpuModel>, hp: &HParams, n_ctx: usize, n_batch: usize) -> Result<Self> {
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
            wts: z("expert weights", b * k)?,
            cpu_out: z("cpu experts", b * e)?,
            xo: z("output rows", r * e)?,
            logits: z("logits", r * n_vocab as u64)?,
            xq: z("rounded activations", b * e.max(qd).max(ff))?,
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
        for _ in &model.w.layers {
            let bytes = n_ctx as u64 * kvd * 2;
            kv.push((ctx.zeroed("K cache", bytes)?, ctx.zeroed("V cache", bytes)?));
        }
        let bld = Builder {
            ctx: &ctx,
            hp,
            a: &a,
            xq_holds: Default::default(),
            f32_acts: std::env::var("DSRUN_REFERENCE").is_ok_and(|v| v == "1"),
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
            out.dispatches(&ctx, xs, &a.logits, false)?,
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
            segments,
            tail_last,
            tail_all,
            staging_bytes,
            profile: (std::env::var("DSRUN_GPU_PROFILE").as_deref() == Ok("1"))
                .then(Default::default),
        })
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
                    pass.dispatch_workgroups(x, y, z);
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
            pass.dispatch_workgroups(x, y, z);
        }
    }

    /// Runs `tokens` at positions `pos0..` and returns the logits of the last token, or of every
    /// token with `all_logits` (at most `max_out_rows`).
    pub fn forward(
        &mut self,
        hp: &HParams,
        w: &Weights,
        tokens: &[u32],
        pos0: usize,
        all_logits: bool,
        moe: &mut MoeState,
    ) -> Result<Vec<f32>> {
        let n = tokens.len();
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
        let e = hp.n_embd;
        let mut x = vec![0.0f32; n * e];
        for (t, &tok) in tokens.iter().enumerate() {
            w.token_embd
                .dequantize_row(tok as usize, &mut x[t * e..(t + 1) * e]);
        }
        let mut s = hp.scales.embedding;
        if hp.arch.embd_scale {
            s *= (e as f32).sqrt();
        }
        if s != 1.0 {
            x.iter_mut().for_each(|v| *v *= s);
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
        let result = self.run(hp, w, n, all_logits);
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(Error::Invalid(format!("GPU forward pass: {err}")));
        }
        let mut logits = result?;
        if hp.scales.logit != 1.0 {
            logits.iter_mut().for_each(|v| *v /= hp.scales.logit);
        }
        for l in &self.model.w.layers {
            if matches!(l.ffn, GpuFfn::Moe { .. }) {
                for _ in 0..n {
                    moe.stats.count(l.il, hp.n_expert_used);
                }
            }
        }
        Ok(logits)
    }

    fn run(&self, hp: &HParams, w: &Weights, n: usize, all_logits: bool) -> Result<Vec<f32>> {
        let ctx = &self.model.ctx;
        let n_tok = n as u32;
        let e = hp.n_embd;
        let k = hp.n_expert_used;
        for seg in &self.segments {
            let mut enc = ctx.device.create_command_encoder(&Default::default());
            self.encode(&mut enc, &seg.work, n_tok);
            let Some(il) = seg.then else {
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
            let out = cpu_moe::experts(&w.layers[il].ffn, e, &h, &ids, &wts)?;
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
