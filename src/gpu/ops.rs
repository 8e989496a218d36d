//! The ops of the GPU backend over host slices (upload, dispatch, read back), which is what the
//! tests against the CPU twins need, and the weight matrix on the device with its recorded
//! dispatches, which the forward pass ([`super::forward`]) chains over device buffers.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};

use super::GpuContext;
use super::{repack, shaders};
use crate::error::{Error, Result};
use crate::kernels::rope::{RopeKind, RopeParams};
use crate::tensor::GgmlType;

/// Workgroups along one dispatch dimension: WebGPU guarantees 65535.
pub(crate) const MAX_GROUPS: u32 = 65535;

/// Tokens per workgroup of the tiled (prefill) matrix product, `TILE` in `matvec.wgsl`.
pub(crate) const TILE: u32 = 8;

/// A weight matrix on the device, its blocks split into aligned segments ([`repack`]): `d` (the
/// f32 scales; for F32 the values themselves) and `qs` (the quant bytes as u32 words). A matrix
/// larger than one storage binding is held as several parts of whole rows.
pub struct GpuMatrix {
    pub ty: GgmlType,
    pub n_rows: usize,
    pub n_cols: usize,
    pub parts: Vec<MatrixPart>,
}

/// Rows `row0 .. row0 + n_rows` of a [`GpuMatrix`].
pub struct MatrixPart {
    pub row0: usize,
    pub n_rows: usize,
    d: wgpu::Buffer,
    qs: Option<wgpu::Buffer>,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MatvecParams {
    n_rows: u32,
    n_cols: u32,
    rows_per_y: u32,
    y_stride: u32,
    y_off: u32,
    accumulate: u32,
    x_div: u32,
    _pad: u32,
}

/// One recorded dispatch of a matrix product: its pipeline, bindings and the workgroups along x
/// and y (z is the token count, or tokens × experts per token).
pub struct MatvecDispatch {
    pub name: String,
    pub pipeline: Arc<wgpu::ComputePipeline>,
    pub bind: wgpu::BindGroup,
    pub groups_xy: (u32, u32),
}

impl GpuMatrix {
    /// Bytes on the device.
    pub fn bytes(&self) -> u64 {
        self.parts
            .iter()
            .map(|p| p.d.size() + p.qs.as_ref().map_or(0, |q| q.size()))
            .sum()
    }

    /// Overwrites rows `row0..` with `bytes` (whole rows in ggml's layout of the matrix's type),
    /// repacked as at upload (the expert cache swaps experts this way).
    pub fn write_rows(&self, ctx: &GpuContext, row0: usize, bytes: &[u8]) -> Result<()> {
        let layout = repack::layout(self.ty).expect("checked at upload");
        let nb = self.n_cols / layout.block;
        let row_bytes = nb * layout.block_bytes;
        let n = bytes.len() / row_bytes;
        if !bytes.len().is_multiple_of(row_bytes) || row0 + n > self.n_rows {
            return Err(Error::Invalid(format!(
                "GPU: {} bytes at row {row0} of a {}x{} {} matrix",
                bytes.len(),
                self.n_rows,
                self.n_cols,
                self.ty.name()
            )));
        }
        let (d_row, q_row) = (nb * layout.n_f * 4, nb * layout.n_words * 4);
        for p in &self.parts {
            let lo = row0.max(p.row0);
            let hi = (row0 + n).min(p.row0 + p.n_rows);
            if lo >= hi {
                continue;
            }
            let (d, qs) =
                layout.split_all(&bytes[(lo - row0) * row_bytes..(hi - row0) * row_bytes]);
            let at = (lo - p.row0) as u64;
            ctx.queue
                .write_buffer(&p.d, at * d_row as u64, bytemuck::cast_slice(&d));
            if let Some(q) = &p.qs {
                ctx.queue.write_buffer(q, at * q_row as u64, &qs);
            }
        }
        Ok(())
    }

    /// `y[t][r] (+)= W[r] · x[t]`, one dispatch per part; rows of y are `n_rows` apart. One
    /// workgroup per (row, token) (threads over blocks, or over groups of 4 values where
    /// [`GpuContext::strided`]), or with `tiled` (the batch's `step` uniform) per (row, tile
    /// of [`TILE`] tokens), reading each weight once for the tile (prefill).
    pub fn dispatches(
        &self,
        ctx: &GpuContext,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        accumulate: bool,
        tiled: Option<&wgpu::Buffer>,
    ) -> Result<Vec<MatvecDispatch>> {
        let (sg, source) =
            shaders::matvec_variant(self.ty, ctx.subgroups()).expect("checked at upload");
        let (name, entry) = match (tiled, ctx.strided()) {
            (Some(_), _) => (format!("matmat_{}{sg}", self.ty.name()), "main_tiled"),
            (None, true) => (format!("matvec4_{}{sg}", self.ty.name()), "main_strided"),
            (None, false) => (format!("matvec_{}{sg}", self.ty.name()), "main"),
        };
        let pipeline = ctx.pipeline(&name, &source, entry)?;
        self.parts
            .iter()
            .map(|p| {
                let rows = u32s(p.n_rows, "rows")?;
                let rows_per_y = rows.clamp(1, MAX_GROUPS);
                let params = ctx.uniform(&MatvecParams {
                    n_rows: rows,
                    n_cols: u32s(self.n_cols, "columns")?,
                    rows_per_y,
                    y_stride: u32s(self.n_rows, "rows")?,
                    y_off: u32s(p.row0, "rows")?,
                    accumulate: accumulate as u32,
                    x_div: 1,
                    _pad: 0,
                });
                let mut bufs = vec![(0, &p.d)];
                if let Some(q) = &p.qs {
                    bufs.push((1, q));
                }
                bufs.extend([(2, x), (3, y), (4, &params)]);
                if let Some(step) = tiled {
                    bufs.push((6, step));
                }
                Ok(MatvecDispatch {
                    name: name.clone(),
                    bind: ctx.bind(&pipeline, &bufs),
                    pipeline: pipeline.clone(),
                    groups_xy: (rows_per_y, rows.div_ceil(rows_per_y)),
                })
            })
            .collect()
    }

    /// For stacked experts of `rows_per_expert` rows each: `y[z] = W_{ids[z]} · x[z / x_div]`
    /// for z over (token, slot); y rows are `rows_per_expert` long. The matrix must be one part.
    pub fn dispatch_ids(
        &self,
        ctx: &GpuContext,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        ids: &wgpu::Buffer,
        rows_per_expert: usize,
        x_div: usize,
    ) -> Result<MatvecDispatch> {
        self.experts_dispatch(ctx, (x, y), &[(5, ids)], rows_per_expert, x_div)
    }

    /// [`GpuMatrix::dispatch_ids`] for a batch, tiled: one workgroup per (row, expert) over the
    /// expert's pairs `order[offsets[e]..offsets[e + 1]]` (`group` in `moe.wgsl`), [`TILE`] at
    /// a time; z is the number of experts.
    pub fn dispatch_ids_tiled(
        &self,
        ctx: &GpuContext,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        (order, offsets): (&wgpu::Buffer, &wgpu::Buffer),
        rows_per_expert: usize,
        x_div: usize,
    ) -> Result<MatvecDispatch> {
        let pairs = [(7, order), (8, offsets)];
        self.experts_dispatch(ctx, (x, y), &pairs, rows_per_expert, x_div)
    }

    /// The expert products with `pairs`: `ids` at binding 5 (per pair), or `order` and
    /// `offsets` at 7 and 8 (tiled).
    fn experts_dispatch(
        &self,
        ctx: &GpuContext,
        (x, y): (&wgpu::Buffer, &wgpu::Buffer),
        pairs: &[(u32, &wgpu::Buffer)],
        rows_per_expert: usize,
        x_div: usize,
    ) -> Result<MatvecDispatch> {
        let [p] = &self.parts[..] else {
            return Err(Error::Invalid(format!(
                "GPU: a stacked expert tensor of {} bytes spans several bindings",
                self.bytes()
            )));
        };
        let (sg, source) =
            shaders::matvec_variant(self.ty, ctx.subgroups()).expect("checked at upload");
        let (kind, entry) = match (pairs.len(), ctx.strided()) {
            (1, true) => ("matvec4_ids", "main_ids_strided"),
            (1, false) => ("matvec_ids", "main_ids"),
            _ => ("matmat_ids", "main_ids_tiled"),
        };
        let name = format!("{kind}_{}{sg}", self.ty.name());
        let pipeline = ctx.pipeline(&name, &source, entry)?;
        let rows = u32s(rows_per_expert, "rows")?;
        let rows_per_y = rows.clamp(1, MAX_GROUPS);
        let params = ctx.uniform(&MatvecParams {
            n_rows: rows,
            n_cols: u32s(self.n_cols, "columns")?,
            rows_per_y,
            y_stride: rows,
            y_off: 0,
            accumulate: 0,
            x_div: u32s(x_div.max(1), "experts per token")?,
            _pad: 0,
        });
        let mut bufs = vec![(0, &p.d)];
        if let Some(q) = &p.qs {
            bufs.push((1, q));
        }
        bufs.extend([(2, x), (3, y), (4, &params)]);
        bufs.extend_from_slice(pairs);
        Ok(MatvecDispatch {
            name,
            bind: ctx.bind(&pipeline, &bufs),
            pipeline,
            groups_xy: (rows_per_y, rows.div_ceil(rows_per_y)),
        })
    }
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct NormParams {
    pub n: u32,
    pub eps: f32,
    pub _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SoftmaxParams {
    n: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct RopeUniform {
    pub n_head: u32,
    pub head_dim: u32,
    pub n_rot: u32,
    pub mode: u32,
    pub freq_base: f32,
    pub freq_scale: f32,
    /// YaRN (`ext_factor` 0: none) with its correction dims computed here.
    pub ext_factor: f32,
    pub attn_factor: f32,
    pub corr_lo: f32,
    pub corr_hi: f32,
    /// Positions past this rotate as this one (`u32::MAX`: none).
    pub pos_max: u32,
    pub _pad: u32,
}

impl RopeUniform {
    pub fn new(n_head: usize, head_dim: usize, rope: &RopeParams) -> Result<RopeUniform> {
        let corr = rope.yarn.corr_dims(rope.n_rot, rope.freq_base);
        Ok(RopeUniform {
            n_head: u32s(n_head, "heads")?,
            head_dim: u32s(head_dim, "head size")?,
            n_rot: u32s(rope.n_rot, "rotated dims")?,
            mode: match rope.kind {
                RopeKind::Norm => 0,
                RopeKind::Neox => 2,
            },
            freq_base: rope.freq_base,
            freq_scale: rope.freq_scale,
            ext_factor: rope.yarn.ext_factor,
            attn_factor: rope.yarn.attn_factor,
            corr_lo: corr[0],
            corr_hi: corr[1],
            pos_max: u32::MAX,
            _pad: 0,
        })
    }
}

/// The RoPE frequency divisors `rope.wgsl` reads (binding 3): the model's, or all 1.
pub(crate) fn rope_factors(ctx: &GpuContext, rope: &RopeParams) -> Result<wgpu::Buffer> {
    let ones = vec![1.0f32; (rope.n_rot / 2).max(1)];
    let f = rope.factors.as_deref().unwrap_or(&ones);
    ctx.storage("rope factors", bytemuck::cast_slice(f))
}

/// The per-batch values every dynamic shader reads (`struct Step` in WGSL).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub(crate) struct StepUniform {
    pub n_tok: u32,
    pub pos0: u32,
    pub _pad: [u32; 2],
}

/// One dispatch to run: pipeline, bindings, workgroups.
type Work<'a> = (
    &'a Arc<wgpu::ComputePipeline>,
    &'a wgpu::BindGroup,
    (u32, u32, u32),
);

/// The ops over one context.
pub struct GpuOps<'c> {
    pub ctx: &'c GpuContext,
}

pub(crate) fn u32s(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Invalid(format!("GPU: {what} {v} is too large")))
}

impl<'c> GpuOps<'c> {
    pub fn new(ctx: &'c GpuContext) -> Self {
        GpuOps { ctx }
    }

    /// Runs dispatches of `pipeline`, each with its bind group and workgroups, in one submission.
    fn dispatch_all(&self, work: &[Work]) -> Result<()> {
        let scope = self
            .ctx
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let mut enc = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            for (pipeline, bind, groups) in work {
                pass.set_pipeline(pipeline);
                pass.set_bind_group(0, *bind, &[]);
                pass.dispatch_workgroups(groups.0, groups.1, groups.2);
            }
        }
        self.ctx.queue.submit([enc.finish()]);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Invalid(format!("GPU dispatch: {e}")));
        }
        Ok(())
    }

    fn dispatch(
        &self,
        pipeline: &Arc<wgpu::ComputePipeline>,
        buffers: &[(u32, &wgpu::Buffer)],
        groups: (u32, u32, u32),
    ) -> Result<()> {
        let bind = self.ctx.bind(pipeline, buffers);
        self.dispatch_all(&[(pipeline, &bind, groups)])
    }

    /// Copies `n` f32 from a device buffer back to the host.
    fn read(&self, buf: &wgpu::Buffer, n: usize) -> Result<Vec<f32>> {
        let size = (n * 4) as u64;
        let staging = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: size.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        enc.copy_buffer_to_buffer(buf, 0, &staging, 0, size);
        self.ctx.queue.submit([enc.finish()]);
        let bytes = self.ctx.read_staging(&staging, size)?;
        Ok(bytemuck::pod_collect_to_vec::<u8, f32>(&bytes))
    }

    /// Uploads a weight matrix of `n_rows` rows of `n_cols` values in ggml's layout (`bytes`),
    /// splitting its blocks into aligned segments, in parts that fit one binding each.
    pub fn upload_matrix(
        &self,
        ty: GgmlType,
        n_rows: usize,
        n_cols: usize,
        bytes: &[u8],
    ) -> Result<GpuMatrix> {
        self.upload_matrix_limit(ty, n_rows, n_cols, bytes, self.ctx.info.max_storage_binding)
    }

    /// [`Self::upload_matrix`] with parts of at most `limit` bytes per segment (tests use a
    /// small limit to exercise the split).
    pub fn upload_matrix_limit(
        &self,
        ty: GgmlType,
        n_rows: usize,
        n_cols: usize,
        bytes: &[u8],
        limit: u64,
    ) -> Result<GpuMatrix> {
        let layout = match (shaders::matvec_source(ty), repack::layout(ty)) {
            (Some(_), Some(l)) => l,
            _ => {
                return Err(Error::Invalid(format!(
                    "GPU: no matrix product for {} weights yet",
                    ty.name()
                )))
            }
        };
        if n_rows == 0 || !n_cols.is_multiple_of(layout.block) || n_cols == 0 {
            return Err(Error::Invalid(format!(
                "GPU: rows of {n_cols} values are not whole {}-value blocks",
                layout.block
            )));
        }
        let row_bytes = n_cols / layout.block * layout.block_bytes;
        if bytes.len() != row_bytes * n_rows {
            return Err(Error::Invalid(format!(
                "GPU: a {} matrix of {n_rows}x{n_cols} takes {} bytes, not {}",
                ty.name(),
                row_bytes * n_rows,
                bytes.len()
            )));
        }
        let nb = n_cols / layout.block;
        let seg_row = (nb * layout.n_f * 4).max(nb * layout.n_words * 4) as u64;
        let rows_per_part = (limit / seg_row).max(1) as usize;
        let mut parts = Vec::new();
        let mut row0 = 0;
        while row0 < n_rows {
            let n = rows_per_part.min(n_rows - row0);
            let (d, qs) = layout.split_all(&bytes[row0 * row_bytes..(row0 + n) * row_bytes]);
            parts.push(MatrixPart {
                row0,
                n_rows: n,
                d: self.ctx.storage("weights d", bytemuck::cast_slice(&d))?,
                qs: match layout.n_words {
                    0 => None,
                    _ => Some(self.ctx.storage("weights qs", &qs)?),
                },
            });
            row0 += n;
        }
        Ok(GpuMatrix {
            ty,
            n_rows,
            n_cols,
            parts,
        })
    }

    /// `out[t][r] = W[r] · x[t]`: `x` is (n_tok, n_cols), the result (n_tok, n_rows); the same
    /// contract as [`crate::kernels::matmul::matmul`]. One workgroup per (row, token).
    pub fn matmul(&self, w: &GpuMatrix, x: &[f32], n_tok: usize) -> Result<Vec<f32>> {
        self.matmul_with(w, x, n_tok, false)
    }

    /// [`GpuOps::matmul`] by the tiled (prefill) kernel: one workgroup per (row, [`TILE`] tokens).
    pub fn matmul_tiled(&self, w: &GpuMatrix, x: &[f32], n_tok: usize) -> Result<Vec<f32>> {
        self.matmul_with(w, x, n_tok, true)
    }

    fn matmul_with(&self, w: &GpuMatrix, x: &[f32], n_tok: usize, tiled: bool) -> Result<Vec<f32>> {
        if x.len() != n_tok * w.n_cols {
            return Err(Error::Invalid(format!(
                "GPU matmul: {} activations for {n_tok} tokens of {}",
                x.len(),
                w.n_cols
            )));
        }
        let tok = u32s(n_tok, "tokens")?;
        if tok > MAX_GROUPS || tok == 0 {
            return Err(Error::Invalid(format!(
                "GPU matmul: {n_tok} tokens in one call"
            )));
        }
        let xb = self.ctx.storage("x", bytemuck::cast_slice(x))?;
        let yb = self.ctx.zeroed("y", (n_tok * w.n_rows * 4) as u64)?;
        let step = self.ctx.uniform(&StepUniform {
            n_tok: tok,
            pos0: 0,
            _pad: [0; 2],
        });
        let ds = w.dispatches(self.ctx, &xb, &yb, false, tiled.then_some(&step))?;
        let z = if tiled { tok.div_ceil(TILE) } else { tok };
        let work: Vec<_> = ds
            .iter()
            .map(|d| (&d.pipeline, &d.bind, (d.groups_xy.0, d.groups_xy.1, z)))
            .collect();
        self.dispatch_all(&work)?;
        self.read(&yb, n_tok * w.n_rows)
    }

    /// RMS norm of each row of `x` (rows of `w.len()`) in place, as
    /// [`crate::kernels::norm::rms_norm_rows`].
    pub fn rms_norm_rows(&self, x: &mut [f32], w: &[f32], eps: f32) -> Result<()> {
        let n = w.len();
        if n == 0 || !x.len().is_multiple_of(n) {
            return Err(Error::Invalid(
                "GPU rms_norm: rows and weight disagree".into(),
            ));
        }
        let (sg, src) = shaders::norm_variant(self.ctx.subgroups());
        let pipeline = self
            .ctx
            .pipeline(&format!("rms_norm{sg}"), &src, "rms_norm")?;
        let xb = self.ctx.storage("x", bytemuck::cast_slice(x))?;
        let wb = self.ctx.storage("w", bytemuck::cast_slice(w))?;
        let params = self.ctx.uniform(&NormParams {
            n: u32s(n, "row length")?,
            eps,
            _pad: [0; 2],
        });
        let rows = u32s(x.len() / n, "rows")?;
        if rows > MAX_GROUPS {
            return Err(Error::Invalid(format!(
                "GPU rms_norm: {rows} rows in one call"
            )));
        }
        self.dispatch(&pipeline, &[(0, &xb), (1, &wb), (2, &params)], (rows, 1, 1))?;
        x.copy_from_slice(&self.read(&xb, x.len())?);
        Ok(())
    }

    /// Softmax of each row of `n` values in place, as [`crate::kernels::softmax::softmax`].
    pub fn softmax_rows(&self, x: &mut [f32], n: usize) -> Result<()> {
        if n == 0 || !x.len().is_multiple_of(n) {
            return Err(Error::Invalid(
                "GPU softmax: rows do not divide the data".into(),
            ));
        }
        let (sg, src) = shaders::softmax_variant(self.ctx.subgroups());
        let pipeline = self
            .ctx
            .pipeline(&format!("softmax{sg}"), &src, "softmax")?;
        let xb = self.ctx.storage("x", bytemuck::cast_slice(x))?;
        let params = self.ctx.uniform(&SoftmaxParams {
            n: u32s(n, "row length")?,
            _pad: [0; 3],
        });
        let rows = u32s(x.len() / n, "rows")?;
        if rows > MAX_GROUPS {
            return Err(Error::Invalid(format!(
                "GPU softmax: {rows} rows in one call"
            )));
        }
        self.dispatch(&pipeline, &[(0, &xb), (1, &params)], (rows, 1, 1))?;
        x.copy_from_slice(&self.read(&xb, x.len())?);
        Ok(())
    }

    /// RoPE over `x` (n_tok, n_head, head_dim), token t at position `pos0 + t`, as
    /// [`RopeParams::apply`] token by token.
    pub fn rope(
        &self,
        x: &mut [f32],
        n_head: usize,
        head_dim: usize,
        rope: &RopeParams,
        pos0: usize,
    ) -> Result<()> {
        let per_tok = n_head * head_dim;
        if per_tok == 0
            || !x.len().is_multiple_of(per_tok)
            || rope.n_rot > head_dim
            || !rope.n_rot.is_multiple_of(2)
        {
            return Err(Error::Invalid("GPU rope: shapes disagree".into()));
        }
        let n_tok = x.len() / per_tok;
        let pipeline = self.ctx.pipeline("rope", &shaders::rope_source(), "rope")?;
        let xb = self.ctx.storage("x", bytemuck::cast_slice(x))?;
        let params = self.ctx.uniform(&RopeUniform::new(n_head, head_dim, rope)?);
        let step = self.ctx.uniform(&StepUniform {
            n_tok: u32s(n_tok, "tokens")?,
            pos0: u32s(pos0, "position")?,
            _pad: [0; 2],
        });
        let n_inv = u32s(n_tok * n_head * rope.n_rot / 2, "rotations")?;
        let groups = n_inv.div_ceil(64);
        if groups > MAX_GROUPS {
            return Err(Error::Invalid(format!(
                "GPU rope: {n_tok} tokens in one call"
            )));
        }
        let factors = rope_factors(self.ctx, rope)?;
        self.dispatch(
            &pipeline,
            &[(0, &xb), (1, &params), (2, &step), (3, &factors)],
            (groups.max(1), 1, 1),
        )?;
        x.copy_from_slice(&self.read(&xb, x.len())?);
        Ok(())
    }
}
