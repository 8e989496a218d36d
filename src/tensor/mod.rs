//! Tensor element types, their decoding to f32, and borrowed tensor views.

pub mod ggml_type;
pub mod quants;
pub mod view;

pub use ggml_type::GgmlType;
pub use quants::dequantize;
pub use view::TensorView;
