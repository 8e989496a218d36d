//! GGUF parsing (versions 2 and 3) from a byte slice, so the same code serves memory-mapped files
//! and in-memory tests and fuzzing. Every length and count is checked against the bytes that are
//! left before anything is allocated; every error names the byte offset and the key or tensor.

use super::value::{Value, ValueType};
use crate::error::{Error, Result};
use crate::tensor::GgmlType;
use std::collections::HashMap;

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's limit on tensor dimensions.
pub const MAX_DIMS: usize = 4;
/// Nesting limit for arrays of arrays (ggml itself reads none; a few levels is generous).
pub const MAX_ARRAY_DEPTH: usize = 8;
/// Longest key or tensor name accepted (ggml's tensor names are at most 64 bytes; keys are short).
pub const MAX_NAME_LEN: u64 = 64 * 1024;
/// Longest string value accepted (chat templates are a few KiB; this leaves ample room).
pub const MAX_STRING_LEN: u64 = 256 * 1024 * 1024;

/// A tensor as described in the GGUF header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the contiguous (row) dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// Everything in a GGUF file except the tensor data.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    /// Key-value pairs in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    key_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

/// A name from the file as it may appear in an error: control characters escaped, long names cut,
/// so that a corrupt file still gives one readable line.
fn esc(s: &str) -> String {
    let mut out: String = s.chars().take(80).flat_map(char::escape_default).collect();
    if s.chars().count() > 80 {
        out.push_str("...");
    }
    out
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::gguf(
                self.pos as u64,
                format!(
                    "{what} needs {n} bytes but the file ends {} bytes later",
                    self.remaining()
                ),
            ));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A GGUF string: u64 length, then that many bytes of UTF-8 (invalid sequences are replaced,
    /// as they cannot be represented in a Rust string; ggml's vocabularies are valid UTF-8).
    fn string(&mut self, max: u64, what: &str) -> Result<String> {
        let at = self.pos as u64;
        let len = self.u64(what)?;
        if len > max {
            return Err(Error::gguf(
                at,
                format!("{what} is {len} bytes long, over the limit of {max}"),
            ));
        }
        let bytes = self.take(len, what)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<Value> {
        let what = || format!("value of {key}");
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(&what())?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(&what())?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(&what())?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(&what())?)),
            ValueType::U32 => Value::U32(self.u32(&what())?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(&what())?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(&what())?)),
            ValueType::U64 => Value::U64(self.u64(&what())?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(&what())?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(&what())?)),
            ValueType::Bool => {
                let at = self.pos as u64;
                match self.array::<1>(&what())?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => {
                        return Err(Error::gguf(
                            at,
                            format!("{key}: boolean byte is {b}, expected 0 or 1"),
                        ))
                    }
                }
            }
            ValueType::String => Value::String(self.string(MAX_STRING_LEN, &what())?),
            ValueType::Array => self.array_value(key, depth)?,
        })
    }

    fn array_value(&mut self, key: &str, depth: usize) -> Result<Value> {
        let at = self.pos as u64;
        if depth >= MAX_ARRAY_DEPTH {
            return Err(Error::gguf(
                at,
                format!("{key}: arrays nested deeper than {MAX_ARRAY_DEPTH} levels"),
            ));
        }
        let type_id = self.u32(&format!("array type of {key}"))?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| {
            Error::gguf(at, format!("{key}: unknown array element type {type_id}"))
        })?;
        let len_at = self.pos as u64;
        let len = self.u64(&format!("array length of {key}"))?;
        // Every element takes at least this many bytes, so the length can be checked against
        // what is left before anything is allocated.
        let min_elem = match ty {
            ValueType::String | ValueType::Array => 8,
            t => t.scalar_size().unwrap_or(1) as u64,
        };
        if len.saturating_mul(min_elem) > self.remaining() {
            return Err(Error::gguf(
                len_at,
                format!(
                    "{key}: array of {len} {} does not fit in the {} bytes left",
                    ty.name(),
                    self.remaining()
                ),
            ));
        }
        let mut items = Vec::with_capacity(len as usize);
        for _ in 0..len {
            items.push(self.value(ty, key, depth + 1)?);
        }
        Ok(Value::Array(ty, items))
    }
}

impl GgufHeader {
    /// Parses the header of a GGUF file held in `buf` and checks every tensor against its length.
    pub fn parse(buf: &[u8]) -> Result<GgufHeader> {
        let mut c = Cursor { buf, pos: 0 };
        let magic = c.take(4, "magic").map_err(|_| {
            Error::gguf(0, format!("not a GGUF file: only {} bytes long", buf.len()))
        })?;
        if magic != GGUF_MAGIC {
            return Err(Error::gguf(
                0,
                format!(
                    "not a GGUF file: the magic is {:?}, expected \"GGUF\"",
                    String::from_utf8_lossy(magic)
                ),
            ));
        }
        let version = c.u32("version")?;
        if version == 1 {
            return Err(Error::gguf(
                4,
                "GGUF version 1 is obsolete and not supported",
            ));
        }
        if !(2..=3).contains(&version) {
            return Err(Error::gguf(
                4,
                format!("unsupported GGUF version {version} (dsrun reads 2 and 3)"),
            ));
        }
        let n_tensors_at = c.pos as u64;
        let n_tensors = c.u64("tensor count")?;
        let n_kv_at = c.pos as u64;
        let n_kv = c.u64("metadata count")?;
        // A key-value pair takes at least 12 bytes, a tensor info at least 28.
        if n_kv.saturating_mul(12) > c.remaining() {
            return Err(Error::gguf(
                n_kv_at,
                format!(
                    "metadata count {n_kv} cannot fit in a {} byte file",
                    buf.len()
                ),
            ));
        }
        if n_tensors.saturating_mul(28) > c.remaining() {
            return Err(Error::gguf(
                n_tensors_at,
                format!(
                    "tensor count {n_tensors} cannot fit in a {} byte file",
                    buf.len()
                ),
            ));
        }

        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut key_index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let at = c.pos as u64;
            let raw_key = c.string(MAX_NAME_LEN, &format!("key of metadata entry {i}"))?;
            let key = esc(&raw_key);
            let type_at = c.pos as u64;
            let type_id = c.u32(&format!("type of {key}"))?;
            let ty = ValueType::from_id(type_id).ok_or_else(|| {
                Error::gguf(type_at, format!("{key}: unknown value type {type_id}"))
            })?;
            let value = c.value(ty, &key, 0)?;
            if key_index.insert(raw_key.clone(), metadata.len()).is_some() {
                return Err(Error::gguf(at, format!("duplicate metadata key {key}")));
            }
            metadata.push((raw_key, value));
        }

        let alignment = match key_index.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(&i) => match metadata[i].1 {
                Value::U32(a) if a > 0 && a.is_power_of_two() => a as u64,
                ref v => {
                    return Err(Error::metadata(
                        "general.alignment",
                        format!("must be a power of two stored as u32, found {v}"),
                    ))
                }
            },
        };

        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let at = c.pos as u64;
            let raw_name = c.string(MAX_NAME_LEN, &format!("name of tensor {i}"))?;
            let name = esc(&raw_name);
            let n_dims_at = c.pos as u64;
            let n_dims = c.u32(&format!("dimension count of tensor {name}"))?;
            if n_dims as usize > MAX_DIMS {
                return Err(Error::gguf(
                    n_dims_at,
                    format!("tensor {name} has {n_dims} dimensions, at most {MAX_DIMS} allowed"),
                ));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for d in 0..n_dims {
                dims.push(c.u64(&format!("dimension {d} of tensor {name}"))?);
            }
            let type_at = c.pos as u64;
            let ty = GgmlType::from_id(c.u32(&format!("type of tensor {name}"))?);
            let offset_at = c.pos as u64;
            let offset = c.u64(&format!("offset of tensor {name}"))?;

            let n_elements = dims
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| {
                    Error::gguf(
                        n_dims_at,
                        format!("tensor {name}: dimensions {dims:?} overflow"),
                    )
                })?;
            if !ty.is_known() {
                return Err(Error::UnsupportedType {
                    tensor: name,
                    type_name: format!("id {} (byte {type_at})", ty.id()),
                });
            }
            let block = ty.block_size().unwrap_or(1) as u64;
            let row = dims.first().copied().unwrap_or(1);
            if !row.is_multiple_of(block) {
                return Err(Error::gguf(
                    n_dims_at,
                    format!(
                        "tensor {name}: row length {row} is not a multiple of {ty}'s block size {block}"
                    ),
                ));
            }
            let n_bytes = ty.row_bytes(n_elements).ok_or_else(|| {
                Error::gguf(
                    n_dims_at,
                    format!("tensor {name}: size of {dims:?} {ty} overflows"),
                )
            })?;
            if !offset.is_multiple_of(alignment) {
                return Err(Error::gguf(
                    offset_at,
                    format!("tensor {name}: offset {offset} is not a multiple of the alignment {alignment}"),
                ));
            }
            if tensor_index
                .insert(raw_name.clone(), tensors.len())
                .is_some()
            {
                return Err(Error::gguf(at, format!("duplicate tensor name {name}")));
            }
            tensors.push(TensorInfo {
                name: raw_name,
                dims,
                ty,
                offset,
                n_bytes,
            });
        }

        let header_end = c.pos as u64;
        let data_offset = header_end.div_ceil(alignment) * alignment;
        let file_len = buf.len() as u64;
        for t in &tensors {
            let end = data_offset
                .checked_add(t.offset)
                .and_then(|s| s.checked_add(t.n_bytes));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(Error::gguf(
                        data_offset.saturating_add(t.offset),
                        format!(
                            "tensor {} ({} bytes at data offset {}) runs past the end of the {file_len} byte file (truncated?)",
                            esc(&t.name), t.n_bytes, t.offset
                        ),
                    ))
                }
            }
        }
        if !tensors.is_empty() && data_offset > file_len {
            return Err(Error::gguf(
                header_end,
                "data section starts past the end of the file",
            ));
        }

        Ok(GgufHeader {
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            key_index,
            tensor_index,
        })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// A string key, or `None` when absent; an error when present with another type.
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| Error::metadata(key, format!("expected a string, found {v}"))),
        }
    }

    /// An unsigned integer key of any width, or `None` when absent.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                Error::metadata(key, format!("expected an unsigned integer, found {v}"))
            }),
        }
    }

    /// A float key (integers accepted), or `None` when absent.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| Error::metadata(key, format!("expected a number, found {v}"))),
        }
    }

    /// The first tensor whose type dsrun cannot decode, as the error loading a model gives.
    pub fn check_supported(&self) -> Result<()> {
        match self.tensors.iter().find(|t| !t.ty.is_supported()) {
            None => Ok(()),
            Some(t) => Err(Error::UnsupportedType {
                tensor: esc(&t.name),
                type_name: t.ty.name(),
            }),
        }
    }
}
