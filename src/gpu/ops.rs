//! The ops of the GPU backend, each one dispatch over buffers on the device. This first layer
//! takes and returns host slices (upload, dispatch, read back), which is what the tests against
//! the CPU twins need; a forward pass on the GPU will chain device buffers instead.

use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

use super::GpuContext;
use super::{repack, shaders};
use crate::error::{Error, Result};
use crate::kernels::rope::{RopeKind, RopeParams};
use crate::tensor::GgmlType;

/// Workgroups along one dispatch dimension: WebGPU guarantees 65535.
const MAX_GROUPS: u32 = 65535;

/// A weight matrix on the device, its blocks split into aligned segments ([`repack`]): `d` (the
/// f32 scales; for F32 the values themselves) and `qs` (the quant bytes as u32 words).
pub struct GpuMatrix {
    pub ty: GgmlType,
    pub n_rows: usize,
    pub n_cols: usize,
    d: wgpu::Buffer,
    qs: Option<wgpu::Buffer>,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct MatvecParams {
    n_rows: u32,
    n_cols: u32,
    n_tok: u32,
    rows_per_y: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct NormParams {
    n: u32,
    eps: f32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct SoftmaxParams {
    n: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RopeUniform {
    n_tok: u32,
    n_head: u32,
    head_dim: u32,
    n_rot: u32,
    pos0: u32,
    mode: u32,
    freq_base: f32,
    freq_scale: f32,
}

/// The ops over one context.
pub struct GpuOps<'c> {
    pub ctx: &'c GpuContext,
}

fn u32s(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Invalid(format!("GPU: {what} {v} is too large")))
}

impl<'c> GpuOps<'c> {
    pub fn new(ctx: &'c GpuContext) -> Self {
        GpuOps { ctx }
    }

    fn storage(&self, label: &str, bytes: &[u8], writable: bool) -> Result<wgpu::Buffer> {
        let limit = self.ctx.info.max_storage_binding;
        if bytes.len() as u64 > limit {
            return Err(Error::Invalid(format!(
                "GPU: {label} needs {} bytes in one binding; this adapter allows {limit}",
                bytes.len()
            )));
        }
        // wgpu refuses zero-sized bindings.
        let padded;
        let contents = if bytes.is_empty() {
            padded = [0u8; 4];
            &padded[..]
        } else {
            bytes
        };
        let mut usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST;
        if writable {
            usage |= wgpu::BufferUsages::COPY_SRC;
        }
        Ok(self
            .ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents,
                usage,
            }))
    }

    fn uniform<T: Pod>(&self, v: &T) -> wgpu::Buffer {
        self.ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::bytes_of(v),
                usage: wgpu::BufferUsages::UNIFORM,
            })
    }

    /// Runs one dispatch of `pipeline` with `buffers` bound at 0, 1, … (in that order).
    fn dispatch(
        &self,
        pipeline: &Arc<wgpu::ComputePipeline>,
        buffers: &[(u32, &wgpu::Buffer)],
        groups: (u32, u32, u32),
    ) -> Result<()> {
        let scope = self
            .ctx
            .device
            .push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .map(|(b, buf)| wgpu::BindGroupEntry {
                binding: *b,
                resource: buf.as_entire_binding(),
            })
            .collect();
        let bind = self
            .ctx
            .device
            .create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &layout,
                entries: &entries,
            });
        let mut enc = self
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        }
        self.ctx.queue.submit([enc.finish()]);
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Invalid(format!("GPU dispatch: {e}")));
        }
        Ok(())
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
        let slice = staging.slice(..size);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.ctx
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Invalid(format!("GPU: waiting for the device: {e}")))?;
        rx.recv()
            .map_err(|_| Error::Invalid("GPU: the read-back was dropped".into()))?
            .map_err(|e| Error::Invalid(format!("GPU: read-back: {e}")))?;
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Invalid(format!("GPU: read-back: {e}")))?;
            bytemuck::pod_collect_to_vec::<u8, f32>(&view)
        };
        staging.unmap();
        Ok(out)
    }

    /// Uploads a weight matrix of `n_rows` rows of `n_cols` values in ggml's layout (`bytes`),
    /// splitting its blocks into aligned segments.
    pub fn upload_matrix(
        &self,
        ty: GgmlType,
        n_rows: usize,
        n_cols: usize,
        bytes: &[u8],
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
        if !n_cols.is_multiple_of(layout.block) {
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
        let (d, qs) = layout.split_all(bytes);
        let qs = (layout.n_words > 0).then_some(qs);
        Ok(GpuMatrix {
            ty,
            n_rows,
            n_cols,
            d: self.storage("weights d", bytemuck::cast_slice(&d), false)?,
            qs: match qs {
                Some(q) => Some(self.storage("weights qs", &q, false)?),
                None => None,
            },
        })
    }

    /// `out[t][r] = W[r] · x[t]`: `x` is (n_tok, n_cols), the result (n_tok, n_rows); the same
    /// contract as [`crate::kernels::matmul::matmul`].
    pub fn matmul(&self, w: &GpuMatrix, x: &[f32], n_tok: usize) -> Result<Vec<f32>> {
        if x.len() != n_tok * w.n_cols {
            return Err(Error::Invalid(format!(
                "GPU matmul: {} activations for {n_tok} tokens of {}",
                x.len(),
                w.n_cols
            )));
        }
        let source = shaders::matvec_source(w.ty).expect("checked at upload");
        let key = format!("matvec_{}", w.ty.name());
        let pipeline = self.ctx.pipeline(&key, &source, "main")?;
        let n_rows = u32s(w.n_rows, "rows")?;
        let rows_per_y = n_rows.clamp(1, MAX_GROUPS);
        let groups_y = n_rows.div_ceil(rows_per_y);
        let tok = u32s(n_tok, "tokens")?;
        if tok > MAX_GROUPS {
            return Err(Error::Invalid(format!(
                "GPU matmul: {n_tok} tokens in one call"
            )));
        }
        let xb = self.storage("x", bytemuck::cast_slice(x), false)?;
        let yb = self.storage("y", &vec![0u8; n_tok * w.n_rows * 4], true)?;
        let params = self.uniform(&MatvecParams {
            n_rows,
            n_cols: u32s(w.n_cols, "columns")?,
            n_tok: tok,
            rows_per_y,
        });
        let mut bufs = vec![(0, &w.d)];
        if let Some(q) = &w.qs {
            bufs.push((1, q));
        }
        bufs.extend([(2, &xb), (3, &yb), (4, &params)]);
        self.dispatch(&pipeline, &bufs, (rows_per_y, groups_y, tok))?;
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
        let pipeline = self
            .ctx
            .pipeline("rms_norm", &shaders::norm_source(), "rms_norm")?;
        let xb = self.storage("x", bytemuck::cast_slice(x), true)?;
        let wb = self.storage("w", bytemuck::cast_slice(w), false)?;
        let params = self.uniform(&NormParams {
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
        let pipeline = self
            .ctx
            .pipeline("softmax", &shaders::softmax_source(), "softmax")?;
        let xb = self.storage("x", bytemuck::cast_slice(x), true)?;
        let params = self.uniform(&SoftmaxParams {
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
        let pipeline = self.ctx.pipeline("rope", shaders::ROPE, "rope")?;
        let xb = self.storage("x", bytemuck::cast_slice(x), true)?;
        let params = self.uniform(&RopeUniform {
            n_tok: u32s(n_tok, "tokens")?,
            n_head: u32s(n_head, "heads")?,
            head_dim: u32s(head_dim, "head size")?,
            n_rot: u32s(rope.n_rot, "rotated dims")?,
            pos0: u32s(pos0, "position")?,
            mode: match rope.kind {
                RopeKind::Norm => 0,
                RopeKind::Neox => 2,
            },
            freq_base: rope.freq_base,
            freq_scale: rope.freq_scale,
        });
        let n_inv = u32s(n_tok * n_head * rope.n_rot / 2, "rotations")?;
        let groups = n_inv.div_ceil(64);
        if groups > MAX_GROUPS {
            return Err(Error::Invalid(format!(
                "GPU rope: {n_tok} tokens in one call"
            )));
        }
        self.dispatch(&pipeline, &[(0, &xb), (1, &params)], (groups.max(1), 1, 1))?;
        x.copy_from_slice(&self.read(&xb, x.len())?);
        Ok(())
    }
}
