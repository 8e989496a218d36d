//! dsrun: a local inference engine for sparse Mixture-of-Experts language models.
//!
//! Layers, with dependencies pointing down: `cli` (in the binary) → `model` → `tensor`;
//! `model` → `gguf`; `gpu` (wgpu and the WGSL shaders) → `kernels` (its reference twins).

pub mod calibrate;
pub mod chat_template;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod gpu;
pub mod imatrix;
pub mod kernels;
pub mod model;
pub mod perplexity;
pub mod pool;
#[cfg(feature = "quantize")]
pub mod quantize;
pub mod rng;
pub mod sampling;
pub mod synth;
pub mod tensor;
pub mod tokenizer;

pub use error::{Error, Result};
