//! `--kv-window W --kv-sinks S --kv-summary M` on the GPU: per layer without a native window, a
//! ring of K/V rows, the f32 sinks and the summary slots, and the dispatches that run a batch
//! through them (`shaders/attention_stream.wgsl`), the twin of the CPU's
//! [`crate::model::kv_window`] attend: the same ring positions, the same slot choice, the same
//! stochastically rounded f16 means (the same hash), the same scores.
//!
//! The ring holds W + the batch size rows (at most the context), so a batch's rows go in before
//! its queries run without overwriting a row that one of them, or the summary, still needs; the
//! CPU keeps W rows and reads the batch's own from a view. `absorb` moves the batch's leaving
//! tokens into the summary in order and, after those that left before each query, leaves that
//! query's share of the softmax over the slots (maximum, sum, weighted values: `slot_part`, the
//! size of the queries plus two numbers a head), which the attention starts from.
//!
//! What the GPU refuses (the CPU runs them): quantized K/V, the hidden `SlotKeys::Window`
//! variant, and the reference mode of the tests.

use bytemuck::{Pod, Zeroable};

use super::ops::{rope_factors, u32s, RopeUniform};
use super::plan::{Dispatch, Groups};
use super::{shaders, GpuContext};
use crate::error::{Error, Result};
use crate::kernels::rope::RopeParams;
use crate::model::kv_window::{Assign, SinkPos, SlotKeys, StreamConfig};

/// `struct Stream` of the shader.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct StreamUniform {
    n_head: u32,
    n_head_kv: u32,
    head_dim: u32,
    window: u32,
    sinks: u32,
    cap: u32,
    n_slot: u32,
    assign: u32,
    il: u32,
    has_head_sinks: u32,
    scale: f32,
    log_weight: f32,
    decay: f32,
    _pad: [u32; 3],
}

/// The shapes a stream layer's buffers follow.
#[derive(Clone, Copy)]
pub(super) struct Dims {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    /// Ring rows: W + the batch size, at most the context.
    pub cap: usize,
}

/// Why the GPU cannot run `cfg`, if it cannot.
pub(super) fn check(cfg: &StreamConfig, head_dim: usize) -> Result<()> {
    let refuse = |what: &str| {
        Err(Error::Invalid(format!(
            "the GPU does not run {what}: use --device cpu"
        )))
    };
    if cfg.reference {
        return refuse("the reference windowed attention");
    }
    if cfg
        .summary
        .as_ref()
        .is_some_and(|s| s.keys == SlotKeys::Window)
    {
        return refuse("summary slots keyed at the window's distance");
    }
    if head_dim > 256 || head_dim % 2 == 1 {
        return refuse(&format!("windowed attention with heads of {head_dim}"));
    }
    if cfg.n_slot() > 256 {
        return refuse(&format!(
            "a KV summary of {} slots (256 at most)",
            cfg.n_slot()
        ));
    }
    Ok(())
}

/// f32 values of one token's share of the softmax over the slots: per query head its maximum
/// score, the sum of the exponentials and the weighted values (none without a summary).
pub(super) fn slot_part_len(cfg: &StreamConfig, n_head: usize, head_dim: usize) -> usize {
    match cfg.n_slot() {
        0 => 0,
        _ => n_head * (head_dim + 2),
    }
}

/// The buffers a session shares between its stream layers (each layer's attention is done
/// before the next layer writes them).
pub(super) struct StreamActs<'a> {
    pub q: &'a wgpu::Buffer,
    /// The queries rotated to their sink position.
    pub qs: &'a wgpu::Buffer,
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
    /// Each query's share of the softmax over the summary slots.
    pub slot_part: &'a wgpu::Buffer,
    pub step: &'a wgpu::Buffer,
    pub dummy: &'a wgpu::Buffer,
}

/// One stream layer's state on the device and its settings.
pub struct StreamLayerGpu {
    ring_k: wgpu::Buffer,
    ring_v: wgpu::Buffer,
    sinkkv: wgpu::Buffer,
    /// The summary: mean K words, mean V words, counts (f32 bits).
    summ: wgpu::Buffer,
    cent: wgpu::Buffer,
    params: wgpu::Buffer,
    rope: RopeParams,
    /// The query's position for the sinks at most this (StreamingLLM's cache positions).
    sink_pos_max: u32,
    dims: Dims,
    n_slot: usize,
    bytes: u64,
}

impl StreamLayerGpu {
    /// Layer `il`'s buffers, zeroed (an empty summary).
    pub(super) fn new(
        ctx: &GpuContext,
        cfg: &StreamConfig,
        il: usize,
        dims: Dims,
        rope: &RopeParams,
        scale: f32,
        has_head_sinks: bool,
    ) -> Result<StreamLayerGpu> {
        check(cfg, dims.head_dim)?;
        let (h, hd) = (dims.n_head_kv, dims.head_dim);
        let kvd = (h * hd) as u64;
        let m = cfg.n_slot();
        let ring = dims.cap as u64 * kvd * 2;
        let sinks = 2 * cfg.sinks as u64 * kvd * 4;
        let summ = (2 * (h * m * hd / 2) + h * m) as u64 * 4;
        let (assign, cent) = match cfg.summary.as_ref().map(|s| &s.assign) {
            Some(Assign::Centroids(c)) => {
                let n = h * m * hd;
                let layer = c.get(il * n..(il + 1) * n).ok_or_else(|| {
                    Error::Invalid(format!("KV summary centroids: none for layer {il}"))
                })?;
                (
                    0,
                    ctx.storage("summary centroids", bytemuck::cast_slice(layer))?,
                )
            }
            Some(Assign::RoundRobin) => (1, ctx.zeroed("no centroids", 4)?),
            Some(Assign::Recency) => (2, ctx.zeroed("no centroids", 4)?),
            None => (0, ctx.zeroed("no centroids", 4)?),
        };
        let sc = cfg.summary.as_ref();
        let params = ctx.uniform(&StreamUniform {
            n_head: u32s(dims.n_head, "heads")?,
            n_head_kv: u32s(h, "heads")?,
            head_dim: u32s(hd, "head size")?,
            window: u32s(cfg.window, "window")?,
            sinks: u32s(cfg.sinks, "sinks")?,
            cap: u32s(dims.cap, "ring rows")?,
            n_slot: u32s(m, "summary slots")?,
            assign,
            il: u32s(il, "layer")?,
            has_head_sinks: has_head_sinks as u32,
            scale,
            log_weight: sc.map_or(0.0, |s| s.log_weight),
            decay: sc.map_or(1.0, |s| s.decay()),
            _pad: [0; 3],
        });
        let sink_pos_max = match cfg.sink_pos {
            SinkPos::Cache => u32s((cfg.sinks + cfg.window).saturating_sub(1), "position")?,
            SinkPos::Absolute => u32::MAX,
        };
        Ok(StreamLayerGpu {
            ring_k: ctx.zeroed("K ring", ring)?,
            ring_v: ctx.zeroed("V ring", ring)?,
            sinkkv: ctx.zeroed("sinks", sinks)?,
            summ: ctx.zeroed("KV summary", summ)?,
            cent,
            params,
            rope: rope.clone(),
            sink_pos_max,
            dims,
            n_slot: m,
            bytes: 2 * ring + sinks + summ,
        })
    }

    /// Bytes on the device: the ring, the sinks and the summary.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Empties the summary (a new sequence; the ring and sinks are written before they are read).
    pub(super) fn reset(&self, enc: &mut wgpu::CommandEncoder) {
        enc.clear_buffer(&self.summ, 0, None);
    }

    /// The summary as it stands: mean K and V (f16 bits) and counts, for tests.
    #[cfg(test)]
    pub(super) fn summary_buffer(&self) -> &wgpu::Buffer {
        &self.summ
    }

    /// A batch through the layer, from raw Q and K (before RoPE) and V to the attention output:
    /// Q copied for its sink rotation, Q and K rotated in place, the store, the summary, the
    /// attention.
    pub(super) fn record(
        &self,
        ctx: &GpuContext,
        a: &StreamActs,
        head_sinks: Option<&wgpu::Buffer>,
    ) -> Result<Vec<Dispatch>> {
        let Dims {
            n_head,
            n_head_kv,
            head_dim: hd,
            ..
        } = self.dims;
        let d =
            |key: &str, src: &str, entry: &str, bufs: &[(u32, &wgpu::Buffer)], groups: Groups| {
                let pipeline = ctx.pipeline(key, src, entry)?;
                Ok::<_, Error>(Dispatch {
                    name: key.to_string(),
                    bind: ctx.bind(&pipeline, bufs),
                    pipeline,
                    groups,
                })
            };
        let mut w = Vec::new();
        let copy_params = ctx.uniform(&super::plan::EwParams {
            width: u32s(n_head * hd, "width")?,
            k: 0,
            _pad: [0; 2],
        });
        w.push(d(
            "ew_copy",
            shaders::ELEMENTWISE,
            "copy",
            &[(0, a.qs), (1, a.q), (2, &copy_params), (3, a.step)],
            Groups::Elements(u32s(n_head * hd, "width")?),
        )?);
        let factors = rope_factors(ctx, &self.rope)?;
        for (buf, heads, pos_max) in [
            (a.q, n_head, u32::MAX),
            (a.k, n_head_kv, u32::MAX),
            (a.qs, n_head, self.sink_pos_max),
        ] {
            w.push(rope_dispatch(
                ctx, buf, heads, hd, &self.rope, pos_max, a.step, &factors,
            )?);
        }
        let (sg, src) = shaders::attention_stream_variant(ctx.subgroups());
        let p = &self.params;
        let rope_u = ctx.uniform(&RopeUniform::new(n_head_kv, hd, &self.rope)?);
        w.push(d(
            &format!("stream_store{sg}"),
            &src,
            "stream_store",
            &[
                (2, &self.ring_k),
                (3, &self.ring_v),
                (4, &self.sinkkv),
                (8, a.k),
                (9, a.v),
                (13, p),
                (15, a.step),
            ],
            Groups::Elements(u32s(n_head_kv * hd / 2, "width")?),
        )?);
        if self.n_slot > 0 {
            w.push(d(
                &format!("stream_absorb{sg}"),
                &src,
                "absorb",
                &[
                    (0, a.q),
                    (2, &self.ring_k),
                    (3, &self.ring_v),
                    (5, &self.summ),
                    (6, a.slot_part),
                    (10, &self.cent),
                    (12, &factors),
                    (13, p),
                    (14, &rope_u),
                    (15, a.step),
                ],
                Groups::Fixed(u32s(n_head_kv, "heads")?),
            )?);
        }
        w.push(d(
            &format!("stream_attention{sg}"),
            &src,
            "attention_stream",
            &[
                (0, a.q),
                (1, a.qs),
                (2, &self.ring_k),
                (3, &self.ring_v),
                (4, &self.sinkkv),
                (6, a.slot_part),
                (7, a.out),
                (11, head_sinks.unwrap_or(a.dummy)),
                (13, p),
                (15, a.step),
            ],
            Groups::Heads(u32s(n_head, "heads")?),
        )?);
        Ok(w)
    }
}

/// RoPE in place over `x` (`n_head` heads of `head_dim` per token), positions past `pos_max`
/// taking `pos_max`.
#[allow(clippy::too_many_arguments)]
pub(super) fn rope_dispatch(
    ctx: &GpuContext,
    x: &wgpu::Buffer,
    n_head: usize,
    head_dim: usize,
    rope: &RopeParams,
    pos_max: u32,
    step: &wgpu::Buffer,
    factors: &wgpu::Buffer,
) -> Result<Dispatch> {
    let pipeline = ctx.pipeline("rope", &shaders::rope_source(), "rope")?;
    let mut u = RopeUniform::new(n_head, head_dim, rope)?;
    u.pos_max = pos_max;
    let params = ctx.uniform(&u);
    Ok(Dispatch {
        name: "rope".into(),
        bind: ctx.bind(&pipeline, &[(0, x), (1, &params), (2, step), (3, factors)]),
        pipeline,
        groups: Groups::Elements(u32s(n_head * rope.n_rot / 2, "rotations")?),
    })
}
