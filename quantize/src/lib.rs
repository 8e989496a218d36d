//! dsrun-quantize: ggml itself, linked through `llama-cpp-sys-2`, behind a small safe API.
//!
//! It exists for two reasons: it is the oracle dsrun's own code is tested against (ggml's
//! dequantizers bit for bit, ggml's GGUF reader field by field), and it gives `dsrun quantize`
//! ggml's quantizers, so that a file dsrun writes has exactly the bytes llama.cpp would write.
//!
//! - [`ggml`]: quantize and dequantize rows through ggml's type traits; type table queries.
//! - [`gguf_ref`]: a GGUF file as ggml's reader sees it.
//! - [`llama`]: llama.cpp's tokenizer and forward pass, for parity tests.

pub mod ggml;
pub mod gguf_ref;
pub mod llama;

pub use ggml::{
    ggml_blck_size, ggml_dequantize, ggml_quantize, ggml_quantize_imatrix, ggml_quantize_row_ref,
    ggml_type_name, ggml_type_size, ggml_validate_row_data,
};
pub use gguf_ref::{read_gguf, read_gguf_bytes, GgufKv, GgufRef, GgufTensor, GgufValue};
