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
//! Not yet here (issue 8): the forward pass on the GPU (device-resident activations and KV
//! cache), attention, MoE dispatch, the other weight types (Q5_0, Q5_K, Q8_K-style tiling,
//! f16/subgroup variants), weights over one storage binding's limit (128 MiB on lavapipe).

mod ops;
pub mod repack;
pub mod shaders;
#[cfg(test)]
mod tests;

pub use ops::{GpuMatrix, GpuOps};

use std::collections::HashMap;
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
        Ok(Some(GpuContext {
            device,
            queue,
            info,
            pipelines: Mutex::new(HashMap::new()),
        }))
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

    /// How many pipelines have been compiled (for tests of the cache).
    pub fn n_pipelines(&self) -> usize {
        self.pipelines.lock().unwrap().len()
    }
}
