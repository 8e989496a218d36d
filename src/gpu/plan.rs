//! The recording of the GPU forward pass: the activation buffers of a session ([`Acts`]) and the
//! [`Builder`] that turns each layer into dispatches with their bind groups, cut into
//! [`Segment`]s where the CPU takes over (the experts of a `--n-cpu-moe` layer). Nothing runs
//! here; [`super::forward::GpuSession`] replays what is recorded.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::ops::{rope_factors, u32s, GpuMatrix, MatvecDispatch, NormParams, MAX_GROUPS, TILE};
use super::shaders;
use super::stream::{rope_dispatch, StreamActs, StreamLayerGpu};
use super::weights::{GpuFfn, GpuLayer};
use super::GpuContext;
use crate::error::Result;
use crate::kernels::qdot::{act_kind, ActKind};
use crate::model::arch::Gating;
use crate::model::HParams;
use crate::tensor::GgmlType;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct EwParams {
    pub width: u32,
    pub k: u32,
    pub _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(super) struct AttnParams {
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
pub(super) struct RouteParams {
    pub n_expert: u32,
    pub k: u32,
    pub gating: u32,
    pub norm: u32,
    pub scale: f32,
    pub _pad: [u32; 3],
}

/// Workgroups of a dispatch as a function of the batch's token count.
#[derive(Clone, Copy)]
pub(super) enum Groups {
    /// A matrix product: rows over x and y, `z_per_tok` workgroups in z per token (or a fixed
    /// z when `fixed_z`).
    Matvec {
        xy: (u32, u32),
        z_per_tok: u32,
        fixed_z: Option<u32>,
    },
    /// A matrix product for one token only (z workgroups: 1, or its experts): nothing in a
    /// batch of several, which [`Groups::Tiled`] or [`Groups::Batch`] takes.
    MatvecOne { xy: (u32, u32), z: u32 },
    /// The tiled matrix product of a batch: rows over x and y, a tile of [`TILE`] tokens per z;
    /// nothing for one token.
    Tiled { xy: (u32, u32) },
    /// A fixed grid for a batch of several tokens, nothing for one (the expert grouping and the
    /// tiled expert products, z over the experts).
    Batch(u32, u32, u32),
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
    /// x workgroups, whatever the batch.
    Fixed(u32),
}

impl Groups {
    pub(super) fn at(self, n_tok: u32) -> (u32, u32, u32) {
        match self {
            Groups::Matvec {
                xy,
                z_per_tok,
                fixed_z,
            } => (xy.0, xy.1, fixed_z.unwrap_or(n_tok * z_per_tok)),
            Groups::MatvecOne { xy, z } => (xy.0, xy.1, if n_tok == 1 { z } else { 0 }),
            Groups::Tiled { xy } => (xy.0, xy.1, if n_tok > 1 { n_tok.div_ceil(TILE) } else { 0 }),
            Groups::Batch(x, y, z) => {
                if n_tok > 1 {
                    (x, y, z)
                } else {
                    (0, 0, 0)
                }
            }
            Groups::Rows(r) => (n_tok * r, 1, 1),
            Groups::Elements(e) => {
                let g = (n_tok * e).div_ceil(64).max(1);
                (g.min(MAX_GROUPS), g.div_ceil(MAX_GROUPS), 1)
            }
            Groups::ElementsOnce(e) => Groups::Elements(e).at(1),
            Groups::Heads(h) => (h, n_tok, 1),
            Groups::One => (1, 1, 1),
            Groups::Fixed(x) => (x, 1, 1),
        }
    }
}

pub(super) struct Dispatch {
    pub name: String,
    pub pipeline: Arc<wgpu::ComputePipeline>,
    pub bind: wgpu::BindGroup,
    pub groups: Groups,
}

/// Dispatches up to a point where the CPU takes over (the experts of a layer), if any.
#[derive(Default)]
pub(super) struct Segment {
    pub work: Vec<Dispatch>,
    pub then: Option<CpuExperts>,
}

/// The CPU's turn: the experts of layer `il`, but those in the VRAM cache, which `cached` runs
/// (from `cids`/`cwts`, written once the routing is back) while the CPU works.
pub(super) struct CpuExperts {
    pub il: usize,
    pub cached: Vec<Dispatch>,
}

/// The activation buffers of one session; (rows, width) in comments, B the batch size.
pub(super) struct Acts {
    pub x: wgpu::Buffer,         // (B, n_embd) the residual stream
    pub h: wgpu::Buffer,         // (B, n_embd) normed
    pub q: wgpu::Buffer,         // (B, n_head * head_dim)
    pub k: wgpu::Buffer,         // (B, n_head_kv * head_dim)
    pub v: wgpu::Buffer,         // (B, n_head_kv * head_dim)
    pub att: wgpu::Buffer,       // (B, n_head * head_dim)
    pub g: wgpu::Buffer,         // (B, max(n_ff, k * n_ff_exp))
    pub u: wgpu::Buffer,         // as g
    pub dm: wgpu::Buffer,        // (B * k, n_embd) expert outputs
    pub rl: wgpu::Buffer,        // (B, n_expert) router logits
    pub ids: wgpu::Buffer,       // (B * k) u32
    pub order: wgpu::Buffer,     // (B * k) u32, the pairs grouped by expert
    pub offsets: wgpu::Buffer,   // (max(n_expert, cache slots) + 1) u32, each expert's first pair
    pub wts: wgpu::Buffer,       // (B * k)
    pub cids: wgpu::Buffer,      // (B * k) u32, expert cache slots
    pub cwts: wgpu::Buffer,      // (B * k), 0 where the expert is not cached
    pub cpu_out: wgpu::Buffer,   // (B, n_embd) the CPU experts' sum
    pub xo: wgpu::Buffer,        // (R, n_embd) normed rows whose logits are wanted
    pub logits: wgpu::Buffer,    // (R, n_vocab)
    pub xq: wgpu::Buffer,        // (B, widest input) activations rounded to the CPU's grid
    pub qs: wgpu::Buffer,        // (B, n_head * head_dim) queries at their sink position (windowed)
    pub slot_part: wgpu::Buffer, // (B, n_head * (head_dim + 2)) each query's share of the summary
    pub dummy: wgpu::Buffer,
    pub step: wgpu::Buffer,
    pub staging: wgpu::Buffer,
}

/// A layer's KV cache: full (`n_ctx` rows of K and V; a native window is masked over it), or
/// `--kv-window`'s ring, sinks and summary.
pub(super) enum LayerKv {
    Full(wgpu::Buffer, wgpu::Buffer),
    Stream(Box<StreamLayerGpu>),
}

/// A matrix product's dispatch, recorded with the grid it takes per batch.
fn recorded(d: MatvecDispatch, groups: Groups) -> Dispatch {
    Dispatch {
        name: d.name,
        pipeline: d.pipeline,
        bind: d.bind,
        groups,
    }
}

/// Records dispatches over one context.
pub(super) struct Builder<'a> {
    pub ctx: &'a GpuContext,
    pub hp: &'a HParams,
    pub a: &'a Acts,
    /// The buffer and grid `a.xq` holds now (so q, k and v quantize `h` once).
    pub xq_holds: std::cell::Cell<Option<(*const wgpu::Buffer, &'static str)>>,
    /// `DSRUN_REFERENCE=1`: f32 activations, as the CPU's reference products take them.
    pub f32_acts: bool,
    /// Batches of several tokens take the tiled matrix product (`DSRUN_GPU_TILED=0`: the
    /// per-token one, for comparison).
    pub tiled: bool,
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

    pub(super) fn mv(
        &self,
        out: &mut Vec<Dispatch>,
        ds: Vec<MatvecDispatch>,
        z_per_tok: u32,
        fixed_z: Option<u32>,
    ) {
        out.extend(ds.into_iter().map(|d| {
            let xy = d.groups_xy;
            recorded(
                d,
                Groups::Matvec {
                    xy,
                    z_per_tok,
                    fixed_z,
                },
            )
        }));
    }

    /// `x` (per_tok values a token, or a token's expert slots) rounded to the activation grid
    /// the CPU dots `ty` weights against, into `a.xq`; returns the buffer to multiply from.
    pub(super) fn acts<'b>(
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
    pub(super) fn mm(
        &self,
        out: &mut Vec<Dispatch>,
        m: &GpuMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        accumulate: bool,
    ) -> Result<()> {
        let xs = self.acts(out, m.ty, x, m.n_cols)?;
        let ds = m.dispatches(self.ctx, xs, y, accumulate, None)?;
        if !self.tiled {
            self.mv(out, ds, 1, None);
            return Ok(());
        }
        // One token: the per-token product; a batch: the tiled one. Both are recorded, the
        // batch's size picks at replay.
        let ts = m.dispatches(self.ctx, xs, y, accumulate, Some(&self.a.step))?;
        for d in ds {
            let xy = d.groups_xy;
            out.push(recorded(d, Groups::MatvecOne { xy, z: 1 }));
        }
        for d in ts {
            let xy = d.groups_xy;
            out.push(recorded(d, Groups::Tiled { xy }));
        }
        Ok(())
    }

    /// Expert products `y[z] = W_{ids[z]} · x[z / x_div]` over each token's `k` slots.
    fn mm_ids(
        &self,
        out: &mut Vec<Dispatch>,
        m: &GpuMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        (rows, x_div, k): (usize, usize, usize),
        ids: &wgpu::Buffer,
    ) -> Result<()> {
        let per_tok = m.n_cols * k / x_div;
        let xs = self.acts(out, m.ty, x, per_tok)?;
        let d = m.dispatch_ids(self.ctx, xs, y, ids, rows, x_div)?;
        let k = u32s(k, "experts per token")?;
        if !self.tiled {
            self.mv(out, vec![d], k, None);
            return Ok(());
        }
        // One token: a workgroup per (row, slot); a batch: per (row, expert), over the pairs
        // that `group` (recorded by `experts`) put in order.
        let xy = d.groups_xy;
        let n = u32s(m.n_rows / rows, "experts")?;
        let t = m.dispatch_ids_tiled(
            self.ctx,
            xs,
            y,
            (&self.a.order, &self.a.offsets),
            rows,
            x_div,
        )?;
        out.push(recorded(d, Groups::MatvecOne { xy, z: k }));
        out.push(recorded(t, Groups::Batch(xy.0, xy.1, n)));
        Ok(())
    }

    pub(super) fn norm_to(
        &self,
        dst: &wgpu::Buffer,
        w: &wgpu::Buffer,
        src: &wgpu::Buffer,
        entry: &str,
    ) -> Result<Dispatch> {
        let (sg, source) = shaders::norm_variant(self.ctx.subgroups());
        let p = self.pipe(&format!("{entry}{sg}"), &source, entry)?;
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
        self.ew_wts(entry, a, b, width, k, &self.a.wts)
    }

    /// [`Self::ew`] with `moe_sum`'s weights from `wts`.
    fn ew_wts(
        &self,
        entry: &str,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        width: usize,
        k: usize,
        wts: &wgpu::Buffer,
    ) -> Result<Dispatch> {
        let p = self.pipe(&format!("ew_{entry}"), shaders::ELEMENTWISE, entry)?;
        let params = self.ctx.uniform(&EwParams {
            width: u32s(width, "width")?,
            k: u32s(k, "experts per token")?,
            _pad: [0; 2],
        });
        let mut bufs = vec![(0, a), (1, b), (2, &params), (3, &self.a.step)];
        if entry == "moe_sum" {
            bufs.push((4, wts));
        }
        Ok(self.d(p, &bufs, Groups::Elements(u32s(width, "width")?)))
    }

    /// The products of stacked experts `m` for each token's k (expert `ids`, weight `wts`) pairs,
    /// their weighted sum added to the residual.
    fn experts(
        &self,
        w: &mut Vec<Dispatch>,
        [gate, up, down]: &[GpuMatrix; 3],
        n_ff: usize,
        ids: &wgpu::Buffer,
        wts: &wgpu::Buffer,
    ) -> Result<()> {
        let (a, k, e) = (self.a, self.hp.n_expert_used, self.hp.n_embd);
        if self.tiled {
            // A batch's pairs grouped by expert (or cache slot), for the tiled products.
            let params = self.ctx.uniform(&RouteParams {
                n_expert: u32s(gate.n_rows / n_ff, "experts")?,
                k: u32s(k, "experts per token")?,
                gating: 0,
                norm: 0,
                scale: 0.0,
                _pad: [0; 3],
            });
            let p = self.pipe("moe_group", shaders::MOE, "group")?;
            let bufs = [
                (1, ids),
                (3, &params),
                (4, &a.order),
                (5, &a.offsets),
                (6, &a.step),
            ];
            // It leaves the rounded activations as they were.
            let held = self.xq_holds.get();
            w.push(self.d(p, &bufs, Groups::Batch(1, 1, 1)));
            self.xq_holds.set(held);
        }
        self.mm_ids(w, gate, &a.h, &a.g, (n_ff, k, k), ids)?;
        self.mm_ids(w, up, &a.h, &a.u, (n_ff, k, k), ids)?;
        w.push(self.ew("glu", &a.g, &a.u, k * n_ff, 1)?);
        self.mm_ids(w, down, &a.g, &a.dm, (e, 1, k), ids)?;
        w.push(self.ew_wts("moe_sum", &a.x, &a.dm, e, k, wts)?);
        Ok(())
    }

    /// Attention over a full cache (`kc`, `vc`; a native window masked over it): RoPE, the
    /// store, the attention into `a.att`.
    fn attention(
        &self,
        w: &mut Vec<Dispatch>,
        l: &GpuLayer,
        kc: &wgpu::Buffer,
        vc: &wgpu::Buffer,
    ) -> Result<()> {
        let (hp, a, ctx) = (self.hp, self.a, self.ctx);
        let hd = hp.head_dim;
        let kvd = hp.n_head_kv * hd;
        let rope = &l.rope;
        let factors = rope_factors(ctx, rope)?;
        for (buf, n_head) in [(&a.q, hp.n_head), (&a.k, hp.n_head_kv)] {
            w.push(rope_dispatch(
                ctx,
                buf,
                n_head,
                hd,
                rope,
                u32::MAX,
                &a.step,
                &factors,
            )?);
            self.xq_holds.set(None);
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
        let (f16, src) = shaders::attention_variant(ctx.f16(), ctx.subgroups());
        let p = self.pipe(&format!("kv_store{f16}"), &src, "kv_store")?;
        w.push(self.d(
            p,
            &[
                (1, kc),
                (2, vc),
                (4, &attn_params),
                (5, &a.step),
                (7, &a.k),
                (8, &a.v),
            ],
            Groups::Elements(u32s(kvd / 2, "width")?),
        ));
        let p = self.pipe(&format!("attention{f16}"), &src, "attention")?;
        w.push(self.d(
            p,
            &[
                (0, &a.q),
                (1, kc),
                (2, vc),
                (3, &a.att),
                (4, &attn_params),
                (5, &a.step),
                (6, l.sinks.as_ref().unwrap_or(&a.dummy)),
            ],
            Groups::Heads(u32s(hp.n_head, "heads")?),
        ));
        Ok(())
    }

    /// Layer `l`'s dispatches, appended to `seg`; a new segment starts after a CPU-expert layer.
    pub(super) fn layer(&self, l: &GpuLayer, kv: &LayerKv, segs: &mut Vec<Segment>) -> Result<()> {
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
                let (sg, src) = shaders::norm_variant(ctx.subgroups());
                let p = self.pipe(&format!("rms_norm{sg}"), &src, "rms_norm")?;
                let params = ctx.uniform(&NormParams {
                    n: u32s(*len, "norm width")?,
                    eps: hp.rms_eps,
                    _pad: [0; 2],
                });
                let rows = u32s(width / len, "rows")?;
                w.push(self.d(p, &[(0, buf), (1, nw), (2, &params)], Groups::Rows(rows)));
            }
        }
        match kv {
            LayerKv::Full(kc, vc) => self.attention(&mut w, l, kc, vc)?,
            LayerKv::Stream(st) => {
                let acts = StreamActs {
                    q: &a.q,
                    qs: &a.qs,
                    k: &a.k,
                    v: &a.v,
                    out: &a.att,
                    slot_part: &a.slot_part,
                    step: &a.step,
                    dummy: &a.dummy,
                };
                w.extend(st.record(ctx, &acts, l.sinks.as_ref())?);
                self.xq_holds.set(None);
            }
        }
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
                cache,
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
                    Some(m) => self.experts(&mut w, m, *n_ff, &a.ids, &a.wts)?,
                    None => {
                        let seg = segs.last_mut().expect("one segment");
                        seg.work = w;
                        let mut cached = Vec::new();
                        if let Some(c) = cache {
                            self.xq_holds.set(None);
                            self.experts(&mut cached, &c.mats, *n_ff, &a.cids, &a.cwts)?;
                        }
                        seg.then = Some(CpuExperts { il: l.il, cached });
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
