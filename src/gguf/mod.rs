//! GGUF, the file format of ggml and llama.cpp: a header of typed key-value metadata and tensor
//! descriptions, then aligned tensor data. `GgufFile` maps a file and parses its header; tensor
//! data are borrowed from the map, never copied. `writer` writes files llama.cpp loads.

mod file;
mod reader;
mod value;
pub mod writer;

pub use file::GgufFile;
pub use reader::{GgufHeader, TensorInfo, DEFAULT_ALIGNMENT, MAX_DIMS};
pub use value::{Value, ValueType};
