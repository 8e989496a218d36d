//! Models: what a GGUF file describes (hyperparameters, tensors) and the reference forward pass.

pub mod activations;
pub mod arch;
pub mod forward;
pub mod hparams;
pub mod info;
pub mod kv_cache;
pub mod kv_summary;
pub mod kv_window;
pub mod mla;
pub mod moe;
pub mod moe_calibration;
pub mod moe_select;
pub mod rope_scaling;
pub mod routing;
pub mod weights;

pub use hparams::HParams;
pub use info::ModelInfo;
pub use kv_cache::{KvCache, KvTypes};
pub use weights::Weights;
