//! A GGUF file as ggml's own reader (`gguf_init_from_file`) sees it, copied into plain Rust.
//!
//! This exists as an independent oracle: dsrun parses GGUF itself, and its tests compare what
//! it finds (header, every key and value, every tensor's type, shape, offset and size) with
//! what this module reports. Nothing here is shared with dsrun's reader.

use std::ffi::{CStr, CString};
use std::path::Path;

use llama_cpp_sys_2 as sys;

/// A metadata value. Integers of every width come back as `U64` / `I64`, floats as `F64`.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    /// ggml returns strings as C strings: an embedded NUL ends them, and bytes that are not
    /// UTF-8 are replaced (U+FFFD).
    Str(String),
    /// `elem_type` is the GGUF type id of the elements (ggml rejects arrays of arrays).
    Array {
        elem_type: u32,
        values: Vec<GgufValue>,
    },
}

/// One key-value pair, in file order. `type_id` is the GGUF type id (9 for arrays).
#[derive(Debug, Clone, PartialEq)]
pub struct GgufKv {
    pub key: String,
    pub type_id: u32,
    pub value: GgufValue,
}

/// One tensor, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensor {
    pub name: String,
    /// ggml type id.
    pub type_id: u32,
    /// ggml's four element counts, innermost first; 1 past the tensor's dimensions.
    pub ne: [u64; 4],
    /// `ne` without trailing 1s (at least one entry), as `ggml_n_dims` counts: ggml does not
    /// keep the file's own `n_dims`, so a file that writes trailing 1s has fewer dims here.
    pub dims: Vec<u64>,
    /// Byte offset relative to the start of the data section.
    pub offset: u64,
    /// Bytes of data (`ggml_nbytes`).
    pub size: u64,
}

/// What ggml read from a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufRef {
    pub version: u32,
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
    pub kvs: Vec<GgufKv>,
    pub tensors: Vec<GgufTensor>,
}

/// Frees the context when dropped, whichever way reading ends.
struct Context(*mut sys::gguf_context);

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the pointer came from gguf_init_from_* (non-null, checked at construction) and
        // is freed exactly once, here.
        unsafe { sys::gguf_free(self.0) };
    }
}

fn init_params() -> sys::gguf_init_params {
    // Metadata only: no ggml context, no tensor data read.
    sys::gguf_init_params {
        no_alloc: true,
        ctx: std::ptr::null_mut(),
    }
}

/// Reads `path` with ggml's GGUF reader. `None` when ggml rejects the file (it logs why to
/// stderr) or the path cannot be passed to C (it contains a NUL byte).
pub fn read_gguf(path: &Path) -> Option<GgufRef> {
    let c_path = CString::new(path.to_str()?).ok()?;
    // SAFETY: a NUL-terminated path that outlives the call; with no_alloc and a null ctx, ggml
    // only parses the header and returns an owned context or null.
    let ctx = unsafe { sys::gguf_init_from_file(c_path.as_ptr(), init_params()) };
    if ctx.is_null() {
        return None;
    }
    Some(collect(&Context(ctx)))
}

/// Reads a GGUF file held in memory, as [`read_gguf`].
pub fn read_gguf_bytes(bytes: &[u8]) -> Option<GgufRef> {
    if bytes.is_empty() {
        return None;
    }
    // SAFETY: `bytes` is readable for its length for the duration of the call; ggml copies what
    // it keeps and holds no pointer into the buffer afterwards.
    let ctx =
        unsafe { sys::gguf_init_from_buffer(bytes.as_ptr().cast(), bytes.len(), init_params()) };
    if ctx.is_null() {
        return None;
    }
    Some(collect(&Context(ctx)))
}

/// Copies a C string ggml owns. Null gives "".
///
/// # Safety
/// `ptr` is null or a NUL-terminated string that stays valid for the call.
unsafe fn c_string(ptr: *const std::os::raw::c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: non-null and NUL-terminated, per this function's contract.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

fn collect(ctx: &Context) -> GgufRef {
    let c = ctx.0;
    // SAFETY (whole function): `c` is a live context; every id passed below is in range
    // (0..n_kv, 0..n_tensors) and every typed getter matches the type ggml reported, so none of
    // ggml's asserts can fire; returned pointers are read before the context is freed.
    unsafe {
        let kvs = (0..sys::gguf_get_n_kv(c))
            .map(|id| {
                let type_id = sys::gguf_get_kv_type(c, id);
                GgufKv {
                    key: c_string(sys::gguf_get_key(c, id)),
                    type_id,
                    value: kv_value(c, id),
                }
            })
            .collect();
        let tensors = (0..sys::gguf_get_n_tensors(c))
            .map(|id| {
                let ne_ptr = sys::gguf_get_tensor_ne(c, id);
                let ne: [u64; 4] = std::array::from_fn(|i| *ne_ptr.add(i) as u64);
                let n_dims = ne.iter().rposition(|&n| n != 1).map_or(1, |i| i + 1);
                GgufTensor {
                    name: c_string(sys::gguf_get_tensor_name(c, id)),
                    type_id: sys::gguf_get_tensor_type(c, id),
                    ne,
                    dims: ne[..n_dims].to_vec(),
                    offset: sys::gguf_get_tensor_offset(c, id) as u64,
                    size: sys::gguf_get_tensor_size(c, id) as u64,
                }
            })
            .collect();
        GgufRef {
            version: sys::gguf_get_version(c),
            alignment: sys::gguf_get_alignment(c) as u64,
            data_offset: sys::gguf_get_data_offset(c) as u64,
            kvs,
            tensors,
        }
    }
}

/// Size in bytes of a non-string, non-array GGUF type.
fn scalar_size(type_id: u32) -> Option<usize> {
    Some(match type_id {
        sys::GGUF_TYPE_UINT8 | sys::GGUF_TYPE_INT8 | sys::GGUF_TYPE_BOOL => 1,
        sys::GGUF_TYPE_UINT16 | sys::GGUF_TYPE_INT16 => 2,
        sys::GGUF_TYPE_UINT32 | sys::GGUF_TYPE_INT32 | sys::GGUF_TYPE_FLOAT32 => 4,
        sys::GGUF_TYPE_UINT64 | sys::GGUF_TYPE_INT64 | sys::GGUF_TYPE_FLOAT64 => 8,
        _ => return None,
    })
}

/// Decodes one little-endian scalar of a GGUF type (`bytes.len()` is its size). Bools are read
/// as bytes, so a byte other than 0 or 1 is `true` rather than undefined behaviour.
fn scalar(type_id: u32, bytes: &[u8]) -> GgufValue {
    let mut b = [0u8; 8];
    b[..bytes.len()].copy_from_slice(bytes);
    let u = u64::from_le_bytes(b);
    match type_id {
        sys::GGUF_TYPE_UINT8 | sys::GGUF_TYPE_UINT16 | sys::GGUF_TYPE_UINT32 => GgufValue::U64(u),
        sys::GGUF_TYPE_UINT64 => GgufValue::U64(u),
        sys::GGUF_TYPE_INT8 => GgufValue::I64(u as u8 as i8 as i64),
        sys::GGUF_TYPE_INT16 => GgufValue::I64(u as u16 as i16 as i64),
        sys::GGUF_TYPE_INT32 => GgufValue::I64(u as u32 as i32 as i64),
        sys::GGUF_TYPE_INT64 => GgufValue::I64(u as i64),
        sys::GGUF_TYPE_FLOAT32 => GgufValue::F64(f32::from_bits(u as u32) as f64),
        sys::GGUF_TYPE_FLOAT64 => GgufValue::F64(f64::from_bits(u)),
        sys::GGUF_TYPE_BOOL => GgufValue::Bool(u != 0),
        _ => unreachable!("scalar() is only called for types scalar_size() knows"),
    }
}

/// The value of KV `id`.
///
/// # Safety
/// `c` is a live context and `id` in `0..gguf_get_n_kv(c)`.
unsafe fn kv_value(c: *const sys::gguf_context, id: i64) -> GgufValue {
    // SAFETY: per this function's contract; each getter is called only for the type ggml
    // reports, and data pointers span `n * size` bytes that ggml owns until the context is freed.
    unsafe {
        let type_id = sys::gguf_get_kv_type(c, id);
        if type_id == sys::GGUF_TYPE_STRING {
            return GgufValue::Str(c_string(sys::gguf_get_val_str(c, id)));
        }
        if type_id != sys::GGUF_TYPE_ARRAY {
            let size = scalar_size(type_id).expect("ggml only stores known GGUF types");
            let data = sys::gguf_get_val_data(c, id).cast::<u8>();
            return scalar(type_id, std::slice::from_raw_parts(data, size));
        }
        let elem_type = sys::gguf_get_arr_type(c, id);
        let n = sys::gguf_get_arr_n(c, id);
        let values = if elem_type == sys::GGUF_TYPE_STRING {
            (0..n)
                .map(|i| GgufValue::Str(c_string(sys::gguf_get_arr_str(c, id, i))))
                .collect()
        } else {
            let size = scalar_size(elem_type).expect("ggml only stores known GGUF types");
            let data = sys::gguf_get_arr_data(c, id).cast::<u8>();
            if n == 0 || data.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(data, n * size)
                    .chunks_exact(size)
                    .map(|b| scalar(elem_type, b))
                    .collect()
            }
        };
        GgufValue::Array { elem_type, values }
    }
}
