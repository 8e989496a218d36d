//! The GPU backend through wgpu: one device, WGSL compute shaders from `shaders/` (one file per op
//! family; a weight type's variant of the matrix product is the shared template with that type's
//! `block_dot` prepended), and compiled pipelines cached under a descriptive key.
//!
//! Any adapter wgpu finds will do: a discrete or integrated GPU, or Mesa's software Vulkan driver
//! (lavapipe), which the tests use for correctness only. No adapter is not an error here: the
//! caller gets `Ok(None)` and says so in one line before running on the CPU.
//!
//! Each op has the CPU kernel of [`crate::kernels`] as its reference twin; `src/gpu/tests.rs`
//! holds them together on random shapes by normalized mean squared error.
//!
//! The forward pass on the device ([`forward`], recorded by [`plan`]) keeps weights
//! ([`weights`]), activations and the KV cache in GPU buffers and records one command buffer per
//! batch; `-ngl` below n_layer + 1 runs the first layers on the CPU; [`cpu_moe`] runs the experts
//! of the layers that `--n-cpu-moe` keeps in RAM, but for those [`expert_cache`] holds in VRAM;
//! `stream` keeps `--kv-window`'s ring, sinks and KV summary on the device.
//!
//! Not yet here (issue 8): the other weight types (Q5_0, Q5_K, ...), f16 matrix products, subgroup
//! reductions beyond the matrix products, rings for native sliding-window layers (their windows
//! are masked over a full cache), MLA, quantized KV caches on the GPU.

mod cpu_moe;
pub mod expert_cache;
pub mod forward;
mod ops;
mod plan;
pub mod repack;
pub mod shaders;
mod stream;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_forward;
#[cfg(test)]
mod tests_stream;
pub mod weights;

pub use forward::{GpuModel, GpuOptions, GpuSession};
pub use ops::{GpuMatrix, GpuOps};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

/// What the chosen adapter is and offers, for reports.
#[derive(Debug, Clone)]
pub struct GpuInfo {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub shader_f16: bool,
    pub subgroups: bool,
    pub max_storage_binding: u64,
}

/// A wgpu device and queue with the pipelines compiled so far.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: GpuInfo,
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    /// Whether pipelines compiled from now on take the subgroup variant of the reductions
    /// (where offered; `DSRUN_GPU_SUBGROUPS=0` or [`Self::set_subgroups`] turn it off).
    use_subgroups: AtomicBool,
    /// Whether attention takes its shader-f16 Q·K variant (opt-in: `DSRUN_GPU_F16=1`).
    use_f16: AtomicBool,
    /// Whether one token's matrix products take `main_strided` (threads over groups of 4
    /// values; the default) or `main` (threads over blocks: `DSRUN_GPU_DECODE=block`).
    use_strided: AtomicBool,
}

impl GpuContext {
    /// The first adapter wgpu offers (high performance preferred), or `None` when there is none.
    /// An adapter that refuses to create a device is an error.
    pub fn new() -> Result<Option<GpuContext>> {
        pollster::block_on(Self::new_async())
    }

    async fn new_async() -> Result<Option<GpuContext>> {
        // Vulkan, Metal, DX12 (WGPU_BACKEND overrides): GL adapters lack f16 and subgroups, and
        // probing for them prints display-server noise on headless machines.
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        desc.backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
        let instance = wgpu::Instance::new(desc);
        let adapter = match instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                ..Default::default()
            })
            .await
        {
            Ok(a) => a,
            Err(_) => return Ok(None),
        };
        let ai = adapter.get_info();
        let features = adapter.features();
        let wanted = wgpu::Features::SHADER_F16 | wgpu::Features::SUBGROUP;
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("dsrun"),
                required_features: features & wanted,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Invalid(format!("GPU {}: cannot open a device: {e}", ai.name)))?;
        let info = GpuInfo {
            name: ai.name.clone(),
            backend: format!("{:?}", ai.backend),
            device_type: format!("{:?}", ai.device_type),
            shader_f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            max_storage_binding: limits.max_storage_buffer_binding_size as u64,
        };
        let use_subgroups =
            info.subgroups && std::env::var("DSRUN_GPU_SUBGROUPS").as_deref() != Ok("0");
        let use_f16 = info.shader_f16 && std::env::var("DSRUN_GPU_F16").as_deref() == Ok("1");
        let use_strided = std::env::var("DSRUN_GPU_DECODE").as_deref() != Ok("block");
        Ok(Some(GpuContext {
            device,
            queue,
            info,
            pipelines: Mutex::new(HashMap::new()),
            use_subgroups: AtomicBool::new(use_subgroups),
            use_f16: AtomicBool::new(use_f16),
            use_strided: AtomicBool::new(use_strided),
        }))
    }

    /// Whether the matrix products use subgroup reductions (their pipeline keys end in `_sg`).
    pub fn subgroups(&self) -> bool {
        self.use_subgroups.load(Ordering::Relaxed)
    }

    /// Chooses the subgroup variant (where the adapter offers subgroups) or the fallback for the
    /// matrices recorded from now on; returns what is in effect.
    pub fn set_subgroups(&self, on: bool) -> bool {
        let on = on && self.info.subgroups;
        self.use_subgroups.store(on, Ordering::Relaxed);
        on
    }

    /// Whether one token's matrix products stride over groups of 4 values (`main_strided`,
    /// pipeline keys `matvec4_*`) rather than over blocks (`main`).
    pub fn strided(&self) -> bool {
        self.use_strided.load(Ordering::Relaxed)
    }

    /// Chooses `main_strided` or `main` for the matrices recorded from now on.
    pub fn set_strided(&self, on: bool) {
        self.use_strided.store(on, Ordering::Relaxed);
    }

    /// Whether attention rounds Q to f16 and reads K as f16 (pipeline key `attention_f16`).
    pub fn f16(&self) -> bool {
        self.use_f16.load(Ordering::Relaxed)
    }

    /// Chooses attention's f16 variant (where the adapter offers shader-f16) or the f32 one for
    /// what is recorded from now on; returns what is in effect.
    pub fn set_f16(&self, on: bool) -> bool {
        let on = on && self.info.shader_f16;
        self.use_f16.store(on, Ordering::Relaxed);
        on
    }

    /// The pipeline of `entry` in `source`, compiled on first use and cached under `key`.
    /// Compilation errors (a shader bug) come back as errors, not as wgpu's default panic.
    pub fn pipeline(
        &self,
        key: &str,
        source: &str,
        entry: &str,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        if let Some(p) = self.pipelines.lock().unwrap().get(key) {
            return Ok(p.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(key),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(key),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Invalid(format!("GPU pipeline {key}: {e}")));
        }
        let p = Arc::new(pipeline);
        self.pipelines
            .lock()
            .unwrap()
            .insert(key.to_string(), p.clone());
        Ok(p)
    }

    /// A bind group of `pipeline` with `buffers` at their bindings.
    pub fn bind(
        &self,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[(u32, &wgpu::Buffer)],
    ) -> wgpu::BindGroup {
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .map(|(b, buf)| wgpu::BindGroupEntry {
                binding: *b,
                resource: buf.as_entire_binding(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &layout,
            entries: &entries,
        })
    }

    /// A uniform buffer holding `v`.
    pub fn uniform<T: bytemuck::Pod>(&self, v: &T) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytemuck::bytes_of(v),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// A zeroed storage buffer of `bytes` (at least 4), checked against the binding limit.
    pub fn zeroed(&self, label: &str, bytes: u64) -> Result<wgpu::Buffer> {
        let limit = self.info.max_storage_binding;
        if bytes > limit {
            return Err(Error::Invalid(format!(
                "GPU: {label} needs {bytes} bytes in one binding; this adapter allows {limit}"
            )));
        }
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        }))
    }

    /// A storage buffer holding `bytes`, checked against the binding limit.
    pub fn storage(&self, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        let buf = self.zeroed(label, bytes.len() as u64)?;
        if !bytes.is_empty() {
            self.queue.write_buffer(&buf, 0, bytes);
        }
        Ok(buf)
    }

    /// Waits for the device, then copies `size` bytes of the mappable `staging` buffer out.
    pub fn read_staging(&self, staging: &wgpu::Buffer, size: u64) -> Result<Vec<u8>> {
        let slice = staging.slice(..size.max(4));
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Invalid(format!("GPU: waiting for the device: {e}")))?;
        rx.recv()
            .map_err(|_| Error::Invalid("GPU: the read-back was dropped".into()))?
            .map_err(|e| Error::Invalid(format!("GPU: read-back: {e}")))?;
        let out = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| Error::Invalid(format!("GPU: read-back: {e}")))?;
            view[..size as usize].to_vec()
        };
        staging.unmap();
        Ok(out)
    }

    /// Device memory bandwidth as a buffer-to-buffer copy measures it: (bytes read + bytes
    /// written) per second, the best of three rounds of ten copies of up to 256 MiB. The
    /// roofline of decoding divides it by the bytes a token reads.
    pub fn copy_bandwidth(&self) -> Result<f64> {
        let size = (256u64 << 20).min(self.device.limits().max_buffer_size) & !255;
        let make = |label| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let (a, b) = (make("copy a"), make("copy b"));
        let wait = || {
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| Error::Invalid(format!("GPU: waiting for the device: {e}")))
        };
        let round = |n: u32| -> Result<f64> {
            let mut enc = self.device.create_command_encoder(&Default::default());
            for i in 0..n {
                let (src, dst) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
                enc.copy_buffer_to_buffer(src, 0, dst, 0, size);
            }
            let t = std::time::Instant::now();
            self.queue.submit([enc.finish()]);
            wait()?;
            Ok(t.elapsed().as_secs_f64())
        };
        round(2)?;
        let mut best = f64::MAX;
        for _ in 0..3 {
            best = best.min(round(10)?);
        }
        Ok(2.0 * 10.0 * size as f64 / best)
    }

    /// How many pipelines have been compiled (for tests of the cache).
    pub fn n_pipelines(&self) -> usize {
        self.pipelines.lock().unwrap().len()
    }
}
