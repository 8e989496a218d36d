//! dsrun: a local inference engine for sparse Mixture-of-Experts language models.
//!
//! Layers, with dependencies pointing down: `cli` (in the binary) → `model` → `tensor`;
//! `model` → `gguf`.

pub mod chat_template;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod kernels;
pub mod model;
pub mod perplexity;
#[cfg(feature = "quantize")]
pub mod quantize;
pub mod sampling;
pub mod tensor;
pub mod tokenizer;

pub use error::{Error, Result};
