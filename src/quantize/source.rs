//! Where the tensors come from: a GGUF file or a Hugging Face folder, behind one small trait so
//! that the planning and the parallel writing are the same for both.

use super::recipe::ModelFacts;
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};
use crate::tensor::GgmlType;
use std::borrow::Cow;
use std::path::Path;

/// A tensor of the model to write, under its GGUF name.
#[derive(Debug, Clone)]
pub struct SourceTensor {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    /// The type the tensor has in the model as llama.cpp would see it before quantizing: its
    /// GGUF type, or for a Hugging Face tensor the type llama.cpp's converter would give it.
    pub ty: GgmlType,
}

impl SourceTensor {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A tensor's bytes as stored, in `ty` (which may differ from the nominal type: bf16 weights of
/// a Hugging Face checkpoint that the converter would write as f32).
pub struct TensorData<'a> {
    pub ty: GgmlType,
    pub bytes: Cow<'a, [u8]>,
}

/// A model to quantize.
pub trait Source: Sync {
    /// What the input is, for messages ("models/x.gguf").
    fn describe(&self) -> String;
    /// Metadata to write, in order, before `general.quantization_version` and
    /// `general.file_type` (which the writer sets).
    fn metadata(&self) -> &[(String, Value)];
    fn tensors(&self) -> &[SourceTensor];
    /// The bytes of tensor `i`.
    fn read(&self, i: usize) -> Result<TensorData<'_>>;
    /// Hyperparameters the per-tensor rules read.
    fn facts(&self) -> ModelFacts;
}

/// A GGUF file, requantized as llama-quantize does.
pub struct GgufSource {
    file: GgufFile,
    metadata: Vec<(String, Value)>,
    tensors: Vec<SourceTensor>,
}

/// Keys llama-quantize drops from its input (split bookkeeping) or sets itself.
const DROPPED_KEYS: &[&str] = &[
    "general.quantization_version",
    "general.file_type",
    "split.no",
    "split.count",
    "split.tensors.count",
];

impl GgufSource {
    pub fn open(path: &Path) -> Result<GgufSource> {
        let file = GgufFile::open(path)?;
        if file.get_u64("split.count")?.unwrap_or(1) > 1 {
            return Err(Error::Invalid(format!(
                "{}: split GGUF files are not supported; merge them with llama-gguf-split first",
                path.display()
            )));
        }
        let metadata = file
            .metadata
            .iter()
            .filter(|(k, _)| !DROPPED_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        let tensors = file
            .tensors
            .iter()
            .map(|t| SourceTensor {
                name: t.name.clone(),
                dims: t.dims.clone(),
                ty: t.ty,
            })
            .collect();
        Ok(GgufSource {
            file,
            metadata,
            tensors,
        })
    }

    fn arch_u32(&self, arch: &str, key: &str) -> u32 {
        let full = format!("{arch}.{key}");
        match self.file.get(&full) {
            Some(Value::Array(_, items)) => items.first().and_then(Value::as_u64),
            Some(v) => v.as_u64(),
            None => None,
        }
        .unwrap_or(0) as u32
    }
}

impl Source for GgufSource {
    fn describe(&self) -> String {
        self.file.path().display().to_string()
    }

    fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    fn tensors(&self) -> &[SourceTensor] {
        &self.tensors
    }

    fn read(&self, i: usize) -> Result<TensorData<'_>> {
        let t = &self.file.tensors[i];
        Ok(TensorData {
            ty: t.ty,
            bytes: Cow::Borrowed(self.file.tensor_data(t)?),
        })
    }

    fn facts(&self) -> ModelFacts {
        let arch = self
            .file
            .get_str("general.architecture")
            .ok()
            .flatten()
            .unwrap_or("")
            .to_string();
        let n_head = self.arch_u32(&arch, "attention.head_count");
        // llama.cpp: without the key, every head has its own key/value head.
        let n_head_kv = match self.arch_u32(&arch, "attention.head_count_kv") {
            0 => n_head,
            n => n,
        };
        ModelFacts {
            n_layer: self.arch_u32(&arch, "block_count"),
            n_expert: self.arch_u32(&arch, "expert_count"),
            n_head,
            n_head_kv,
            arch,
        }
    }
}
