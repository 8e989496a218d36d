//! Writing GGUF version 3 files that dsrun's reader and llama.cpp both load.
//!
//! A file is written to `NAME.tmp` beside its destination and renamed only when complete, so an
//! error (a full disk, a failed tensor) never leaves a partial file under the final name.

use super::reader::{DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use super::value::{Value, ValueType};
use crate::error::{Error, Result};
use crate::tensor::GgmlType;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A tensor to be written: its description; the data come from a callback at write time so that
/// large outputs are produced one tensor at a time.
#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorSpec {
    pub fn n_bytes(&self) -> Result<u64> {
        let n: u64 = self.dims.iter().product();
        self.ty.row_bytes(n).ok_or_else(|| {
            Error::Invalid(format!(
                "tensor {}: {:?} is not a whole number of {} blocks",
                self.name, self.dims, self.ty
            ))
        })
    }
}

/// The header of a file to write: metadata in order, then tensors in order.
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorSpec>,
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a key (replacing keeps its position).
    pub fn set(&mut self, key: &str, value: Value) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    pub fn add_tensor(&mut self, name: &str, ty: GgmlType, dims: &[u64]) {
        self.tensors.push(TensorSpec {
            name: name.to_string(),
            dims: dims.to_vec(),
            ty,
        });
    }

    fn alignment(&self) -> Result<u64> {
        match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, Value::U32(a))) if *a > 0 && a.is_power_of_two() => Ok(*a as u64),
            Some((_, v)) => Err(Error::Invalid(format!(
                "general.alignment must be a power of two stored as u32, not {v}"
            ))),
        }
    }

    /// Writes the whole file to `out`. `data(i)` returns the bytes of tensor `i`, which must be
    /// exactly its size.
    pub fn write_to<W: Write>(
        &self,
        out: &mut W,
        mut data: impl FnMut(usize) -> Result<Vec<u8>>,
    ) -> Result<()> {
        let io = |e: std::io::Error| Error::Invalid(format!("writing GGUF: {e}"));
        let alignment = self.alignment()?;
        let mut header = Vec::new();
        header.extend_from_slice(GGUF_MAGIC);
        header.extend_from_slice(&3u32.to_le_bytes());
        header.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        header.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_string(&mut header, key);
            header.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            put_value(&mut header, value, key)?;
        }
        let mut offset = 0u64;
        let mut sizes = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            if t.dims.len() > MAX_DIMS {
                return Err(Error::Invalid(format!(
                    "tensor {} has {} dimensions, at most {MAX_DIMS} allowed",
                    t.name,
                    t.dims.len()
                )));
            }
            let n_bytes = t.n_bytes()?;
            put_string(&mut header, &t.name);
            header.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                header.extend_from_slice(&d.to_le_bytes());
            }
            header.extend_from_slice(&t.ty.id().to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            sizes.push(n_bytes);
            offset += n_bytes.div_ceil(alignment) * alignment;
        }
        pad(&mut header, alignment);
        out.write_all(&header).map_err(io)?;

        let zeros = vec![0u8; alignment as usize];
        for (i, t) in self.tensors.iter().enumerate() {
            let bytes = data(i)?;
            if bytes.len() as u64 != sizes[i] {
                return Err(Error::Invalid(format!(
                    "tensor {}: got {} bytes of data, expected {}",
                    t.name,
                    bytes.len(),
                    sizes[i]
                )));
            }
            out.write_all(&bytes).map_err(io)?;
            let padding = sizes[i].div_ceil(alignment) * alignment - sizes[i];
            out.write_all(&zeros[..padding as usize]).map_err(io)?;
        }
        out.flush().map_err(io)
    }

    /// Writes the file at `path` atomically: into `path.tmp`, synced, then renamed. On any error
    /// the temporary file is removed and `path` is untouched.
    pub fn write_file(
        &self,
        path: impl AsRef<Path>,
        data: impl FnMut(usize) -> Result<Vec<u8>>,
    ) -> Result<()> {
        let path = path.as_ref();
        let tmp = tmp_path(path);
        let shown = tmp.display().to_string();
        let result = (|| {
            let file = File::create(&tmp).map_err(|e| Error::io(&shown, e))?;
            let mut w = BufWriter::with_capacity(1 << 20, file);
            self.write_to(&mut w, data).map_err(|e| match e {
                Error::Invalid(m) => Error::Invalid(format!("{}: {m}", path.display())),
                e => e,
            })?;
            let file = w
                .into_inner()
                .map_err(|e| Error::io(&shown, e.into_error()))?;
            file.sync_all().map_err(|e| Error::io(&shown, e))?;
            std::fs::rename(&tmp, path).map_err(|e| Error::io(path.display().to_string(), e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// The whole file in memory (for tests and small files).
    pub fn to_bytes(&self, data: impl FnMut(usize) -> Result<Vec<u8>>) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.write_to(&mut out, data)?;
        Ok(out)
    }
}

/// Where `write_file` writes before renaming: `NAME.tmp` beside `path`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn pad(buf: &mut Vec<u8>, alignment: u64) {
    let len = buf.len() as u64;
    buf.resize((len.div_ceil(alignment) * alignment) as usize, 0);
}

fn put_string(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &Value, key: &str) -> Result<()> {
    match v {
        Value::U8(x) => buf.push(*x),
        Value::I8(x) => buf.push(*x as u8),
        Value::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => buf.push(*x as u8),
        Value::String(s) => put_string(buf, s),
        Value::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        Value::Array(ty, items) => {
            buf.extend_from_slice(&(*ty as u32).to_le_bytes());
            buf.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                if item.value_type() != *ty {
                    return Err(Error::Invalid(format!(
                        "metadata {key}: array of {} holds a {}",
                        ty.name(),
                        item.value_type().name()
                    )));
                }
                put_value(buf, item, key)?;
            }
        }
    }
    Ok(())
}

/// Array of strings, the common case for vocabularies.
pub fn string_array<S: AsRef<str>>(items: &[S]) -> Value {
    Value::Array(
        ValueType::String,
        items
            .iter()
            .map(|s| Value::String(s.as_ref().to_string()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufHeader;

    #[test]
    fn round_trip_every_value_type() {
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::String("llama".into()));
        w.set("a.u8", Value::U8(7));
        w.set("a.i8", Value::I8(-7));
        w.set("a.u16", Value::U16(65535));
        w.set("a.i16", Value::I16(-300));
        w.set("a.u32", Value::U32(123456));
        w.set("a.i32", Value::I32(-123456));
        w.set("a.f32", Value::F32(1.5));
        w.set("a.bool", Value::Bool(true));
        w.set("a.u64", Value::U64(u64::MAX));
        w.set("a.i64", Value::I64(i64::MIN));
        w.set("a.f64", Value::F64(-2.25));
        w.set("a.strs", string_array(&["x", "", "ünï"]));
        let nested = Value::Array(
            ValueType::Array,
            vec![
                Value::Array(ValueType::I32, vec![Value::I32(1), Value::I32(2)]),
                Value::Array(ValueType::I32, vec![]),
            ],
        );
        w.set("a.nested", nested.clone());
        w.add_tensor("t0", GgmlType::F32, &[3, 2]);
        w.add_tensor("t1", GgmlType::Q8_0, &[64]);
        let bytes = w
            .to_bytes(|i| Ok(vec![i as u8 + 1; w.tensors[i].n_bytes()? as usize]))
            .unwrap();
        let h = GgufHeader::parse(&bytes).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.metadata, w.metadata);
        assert_eq!(h.get("a.nested"), Some(&nested));
        assert_eq!(h.tensors.len(), 2);
        let t1 = h.tensor("t1").unwrap();
        assert_eq!(t1.ty, GgmlType::Q8_0);
        assert_eq!(t1.n_bytes, 68);
        assert_eq!(t1.offset, 32);
        let start = (h.data_offset + t1.offset) as usize;
        assert!(bytes[start..start + 68].iter().all(|&b| b == 2));
        assert_eq!(h.data_offset % 32, 0);
    }

    #[test]
    fn wrong_data_length_is_an_error_and_leaves_no_file() {
        let dir = std::env::temp_dir().join(format!("dsrun-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.gguf");
        let mut w = GgufWriter::new();
        w.add_tensor("t", GgmlType::F32, &[4]);
        let err = w.write_file(&path, |_| Ok(vec![0; 3])).unwrap_err();
        assert!(err.to_string().contains("expected 16"), "{err}");
        assert!(!path.exists());
        assert!(!tmp_path(&path).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
