//! `*.safetensors` files, memory-mapped and checked with the `safetensors` crate: every tensor's
//! byte range lies inside the file and matches its dtype and shape before anything is read.

use crate::error::{Error, Result};
use crate::tensor::GgmlType;
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensorError, SafeTensors};
use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One tensor of a safetensors file.
#[derive(Debug, Clone)]
pub struct StTensor {
    /// Index of the file in [`StFiles::files`].
    pub file: usize,
    pub dtype: Dtype,
    /// Hugging Face (row-major) order: the last dimension is contiguous.
    pub shape: Vec<u64>,
    /// Bytes in the file's map.
    pub range: Range<usize>,
}

impl StTensor {
    /// The ggml type of the stored values, for the float dtypes a model's weights come in.
    pub fn ggml_type(&self, name: &str) -> Result<GgmlType> {
        match self.dtype {
            Dtype::F32 => Ok(GgmlType::F32),
            Dtype::F16 => Ok(GgmlType::F16),
            Dtype::BF16 => Ok(GgmlType::Bf16),
            other => Err(Error::Invalid(format!(
                "tensor {name}: dtype {other:?} is not supported (F32, F16 or BF16 expected)"
            ))),
        }
    }
}

/// All safetensors files of a model folder, mapped.
pub struct StFiles {
    pub files: Vec<(PathBuf, Mmap)>,
    pub tensors: HashMap<String, StTensor>,
}

impl StFiles {
    /// The files named by `model.safetensors.index.json`, else every `*.safetensors` of `dir`.
    pub fn open(dir: &Path) -> Result<StFiles> {
        let index = dir.join("model.safetensors.index.json");
        let names: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index)
                .map_err(|e| Error::io(index.display().to_string(), e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::Invalid(format!("{}: not valid JSON: {e}", index.display())))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    Error::Invalid(format!("{}: no \"weight_map\" object", index.display()))
                })?;
            let mut files: Vec<PathBuf> = Vec::new();
            for v in map.values() {
                let f = v.as_str().filter(|f| !f.contains('/') && !f.contains('\\'));
                let f = f.ok_or_else(|| {
                    Error::Invalid(format!(
                        "{}: weight_map holds {v}, not a file name",
                        index.display()
                    ))
                })?;
                let p = dir.join(f);
                if !files.contains(&p) {
                    files.push(p);
                }
            }
            files
        } else {
            let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir.display().to_string(), e))?;
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect();
            files.sort();
            files
        };
        if names.is_empty() {
            return Err(Error::Invalid(format!(
                "{}: no *.safetensors files (pytorch_model.bin checkpoints are not supported)",
                dir.display()
            )));
        }
        let mut out = StFiles {
            files: Vec::new(),
            tensors: HashMap::new(),
        };
        for path in names {
            out.add(path)?;
        }
        Ok(out)
    }

    fn add(&mut self, path: PathBuf) -> Result<()> {
        let shown = path.display().to_string();
        let file = File::open(&path).map_err(|e| Error::io(&shown, e))?;
        // SAFETY: read-only private map; the checkpoint must not change while it is converted,
        // as for GGUF files (see GgufFile::open).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&shown, e))?;
        let (header_len, meta) = SafeTensors::read_metadata(&map)
            .map_err(|e| Error::Invalid(format!("{shown}: {}", explain(&map, e))))?;
        let data_start = 8 + header_len;
        let i = self.files.len();
        for (name, info) in meta.tensors() {
            let (s, e) = info.data_offsets;
            let range = data_start + s..data_start + e;
            if range.end > map.len() {
                return Err(Error::Invalid(format!(
                    "{shown}: tensor {name}: bytes {}..{} lie outside the file ({} bytes)",
                    range.start,
                    range.end,
                    map.len()
                )));
            }
            let t = StTensor {
                file: i,
                dtype: info.dtype,
                shape: info.shape.iter().map(|&d| d as u64).collect(),
                range,
            };
            if self.tensors.insert(name.clone(), t).is_some() {
                return Err(Error::Invalid(format!(
                    "{shown}: tensor {name} is also in another safetensors file"
                )));
            }
        }
        self.files.push((path, map));
        Ok(())
    }

    pub fn bytes(&self, t: &StTensor) -> &[u8] {
        &self.files[t.file].1[t.range.clone()]
    }

    pub fn path(&self, t: &StTensor) -> &Path {
        &self.files[t.file].0
    }
}

/// The crate's error in words, naming the tensor where the header allows it.
fn explain(buf: &[u8], e: SafeTensorError) -> String {
    match e {
        SafeTensorError::InvalidHeaderLength | SafeTensorError::HeaderTooLarge => {
            let n = buf
                .get(..8)
                .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .unwrap_or(0);
            format!(
                "not a safetensors file: its header length field says {n} bytes, the file has {}",
                buf.len()
            )
        }
        SafeTensorError::HeaderTooSmall => {
            "not a safetensors file: shorter than its 8-byte header length".into()
        }
        SafeTensorError::TensorInvalidInfo
        | SafeTensorError::InvalidOffset(_)
        | SafeTensorError::MetadataIncompleteBuffer => match find_bad_tensor(buf) {
            Some(msg) => msg,
            None => format!(
                "corrupt safetensors file ({} bytes): {e}: truncated, or tensor offsets out of range",
                buf.len()
            ),
        },
        e => format!("corrupt safetensors header: {e}"),
    }
}

/// The first tensor whose dtype and shape do not match its byte range, described.
fn find_bad_tensor(buf: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(buf.get(..8)?.try_into().ok()?) as usize;
    let header: serde_json::Value =
        serde_json::from_slice(buf.get(8..8usize.checked_add(n)?)?).ok()?;
    for (name, info) in header.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let dtype = info.get("dtype")?.as_str()?;
        let shape: Vec<u64> = info
            .get("shape")?
            .as_array()?
            .iter()
            .filter_map(|d| d.as_u64())
            .collect();
        let off: Vec<u64> = info
            .get("data_offsets")?
            .as_array()?
            .iter()
            .filter_map(|d| d.as_u64())
            .collect();
        let size: u64 = match dtype {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            _ => 1,
        };
        let want = shape
            .iter()
            .try_fold(size, |acc: u64, &d| acc.checked_mul(d))
            .unwrap_or(u64::MAX);
        let (s, e) = (*off.first()?, *off.get(1)?);
        if e < s || e - s != want {
            return Some(format!(
                "tensor {name}: dtype {dtype} and shape {shape:?} need {want} bytes, but its data_offsets [{s}, {e}] hold {}",
                e.saturating_sub(s)
            ));
        }
        if (8 + n as u64).saturating_add(e) > buf.len() as u64 {
            return Some(format!(
                "tensor {name}: data_offsets [{s}, {e}] lie outside the file ({} bytes of data)",
                buf.len() as u64 - 8 - n as u64
            ));
        }
    }
    None
}
