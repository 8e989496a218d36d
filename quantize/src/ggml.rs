//! ggml's own quantizers and dequantizers, called through its type-traits table.
//!
//! This exists so that dsrun's Rust decoders can be held bit for bit against the C code they
//! reimplement, and so that `dsrun quantize` can produce exactly the bytes llama.cpp would.
//! Type ids are ggml's `enum ggml_type` numbers (the ids stored in GGUF). Every function checks
//! its arguments before calling into ggml, whose own checks abort the process.

use std::ffi::CStr;

use llama_cpp_sys_2 as sys;

/// Types `ggml_quantize_chunk` has a case for; it aborts on any other.
const CHUNK_TYPES: &[u32] = &[
    sys::GGML_TYPE_F32,
    sys::GGML_TYPE_F16,
    sys::GGML_TYPE_BF16,
    sys::GGML_TYPE_Q4_0,
    sys::GGML_TYPE_Q4_1,
    sys::GGML_TYPE_Q5_0,
    sys::GGML_TYPE_Q5_1,
    sys::GGML_TYPE_Q8_0,
    sys::GGML_TYPE_Q1_0,
    sys::GGML_TYPE_Q2_0,
    sys::GGML_TYPE_MXFP4,
    sys::GGML_TYPE_NVFP4,
    sys::GGML_TYPE_Q2_K,
    sys::GGML_TYPE_Q3_K,
    sys::GGML_TYPE_Q4_K,
    sys::GGML_TYPE_Q5_K,
    sys::GGML_TYPE_Q6_K,
    sys::GGML_TYPE_TQ1_0,
    sys::GGML_TYPE_TQ2_0,
    sys::GGML_TYPE_IQ2_XXS,
    sys::GGML_TYPE_IQ2_XS,
    sys::GGML_TYPE_IQ2_S,
    sys::GGML_TYPE_IQ3_XXS,
    sys::GGML_TYPE_IQ3_S,
    sys::GGML_TYPE_IQ1_S,
    sys::GGML_TYPE_IQ1_M,
    sys::GGML_TYPE_IQ4_NL,
    sys::GGML_TYPE_IQ4_XS,
];

/// Bytes in 8-byte aligned storage: ggml casts its buffers to block structs (Q8_K's has an f32,
/// most have u16 fields), so they must be aligned as those structs are.
struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    fn zeroed(len: usize) -> Self {
        Aligned {
            words: vec![0; len.div_ceil(8)],
            len,
        }
    }

    fn copy_of(bytes: &[u8]) -> Self {
        let mut a = Aligned::zeroed(bytes.len());
        a.as_mut_bytes().copy_from_slice(bytes);
        a
    }

    fn as_mut_bytes(&mut self) -> &mut [u8] {
        // SAFETY: the words own at least `len` initialized bytes, u8 has no alignment or
        // validity requirement, and the borrow of `self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.words.as_mut_ptr().cast(), self.len) }
    }

    fn as_ptr(&self) -> *const u8 {
        self.words.as_ptr().cast()
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.words.as_mut_ptr().cast()
    }

    fn into_bytes(mut self) -> Vec<u8> {
        self.as_mut_bytes().to_vec()
    }
}

#[allow(non_snake_case)]
unsafe extern "C" {
    // Q8_K's row functions: exported by ggml-base (declared in ggml-quants.h) but missing from
    // ggml's type-traits table and from the bindings.
    fn dequantize_row_q8_K(x: *const std::ffi::c_void, y: *mut f32, k: i64);
    fn quantize_row_q8_K_ref(x: *const f32, y: *mut std::ffi::c_void, k: i64);
}

/// The type's decoder: its `to_float` trait, or for Q8_K the exported row function.
fn to_float(type_id: u32) -> sys::ggml_to_float_t {
    match type_id {
        sys::GGML_TYPE_Q8_K => Some(dequantize_row_q8_K),
        _ => traits(type_id)?.to_float,
    }
}

/// The type's reference encoder: its `from_float_ref` trait, or for Q8_K the exported one.
fn from_float_ref(type_id: u32) -> sys::ggml_from_float_t {
    match type_id {
        sys::GGML_TYPE_Q8_K => Some(quantize_row_q8_K_ref),
        _ => traits(type_id)?.from_float_ref,
    }
}

/// ggml's traits row for a type, or `None` for ids outside its table and for removed types
/// (whose block size is 0).
fn traits(type_id: u32) -> Option<&'static sys::ggml_type_traits> {
    if type_id >= sys::GGML_TYPE_COUNT {
        return None;
    }
    // SAFETY: the id is inside ggml's table (checked above, so ggml's own assert holds); the
    // function returns a pointer into a static array that lives as long as the program.
    let traits = unsafe { sys::ggml_get_type_traits(type_id).as_ref()? };
    (traits.blck_size > 0 && traits.type_size > 0).then_some(traits)
}

/// ggml's name for a type ("q4_K", "f16"), or "NONE" for an id ggml does not know.
pub fn ggml_type_name(type_id: u32) -> String {
    if type_id >= sys::GGML_TYPE_COUNT {
        return "NONE".to_string();
    }
    // SAFETY: the id is inside ggml's table (ggml_type_name does not check it itself); the
    // result is a static string or null for an unnamed slot, checked before reading.
    let name = unsafe { sys::ggml_type_name(type_id) };
    if name.is_null() {
        return "NONE".to_string();
    }
    // SAFETY: non-null pointers from ggml_type_name are static NUL-terminated strings.
    unsafe { CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned()
}

/// Values per block, `None` for unknown or removed types.
pub fn ggml_blck_size(type_id: u32) -> Option<usize> {
    traits(type_id).map(|t| t.blck_size as usize)
}

/// Bytes per block, `None` for unknown or removed types.
pub fn ggml_type_size(type_id: u32) -> Option<usize> {
    traits(type_id).map(|t| t.type_size)
}

/// Bytes that `n` values take, `None` when `n` is not a whole number of blocks.
fn row_size(type_id: u32, n: usize) -> Option<usize> {
    let t = traits(type_id)?;
    let blck = t.blck_size as usize;
    n.is_multiple_of(blck).then(|| n / blck * t.type_size)
}

/// Decodes `n` values with ggml's `to_float` for the type (its `dequantize_row_*`).
///
/// Q8_K, absent from the traits, uses the exported `dequantize_row_q8_K`. `None` when ggml has
/// no decoder for the type (F32, Q8_1, ...), or `src.len()` is not the size of `n` values.
pub fn ggml_dequantize(type_id: u32, src: &[u8], n: usize) -> Option<Vec<f32>> {
    let to_float = to_float(type_id)?;
    if row_size(type_id, n)? != src.len() {
        return None;
    }
    let src = Aligned::copy_of(src);
    let mut out = vec![0f32; n];
    // SAFETY: `src` holds exactly the bytes of `n` values of this type, 8-byte aligned as ggml's
    // block structs expect, and `out` has room for `n` floats (both checked above); ggml reads
    // and writes nothing else.
    unsafe { to_float(src.as_ptr().cast(), out.as_mut_ptr(), n as i64) };
    Some(out)
}

/// Quantizes rows of `n_per_row` values with `ggml_quantize_chunk` and no importance matrix
/// (for the k-quants that is `quantize_row_*_ref`), exactly as llama.cpp's quantizer does.
///
/// Types `ggml_quantize_chunk` does not handle but that have a reference quantizer (Q8_1,
/// Q8_K) go through that instead. `None` for types that need an importance matrix (IQ2_XXS,
/// IQ2_XS, IQ1_S), types with no quantizer, or lengths that are not whole rows of whole blocks.
pub fn ggml_quantize(type_id: u32, src: &[f32], n_per_row: usize) -> Option<Vec<u8>> {
    ggml_quantize_imatrix(type_id, src, n_per_row, None)
}

/// As [`ggml_quantize`], with an importance matrix: one weight per column (`n_per_row`
/// values) for every row, as llama-quantize passes its imatrix to `ggml_quantize_chunk`. Types
/// that need one (IQ2_XXS, IQ2_XS, IQ1_S, ...) then work; types that do not use one ignore it.
/// `None` also when the weights are not `n_per_row` long.
pub fn ggml_quantize_imatrix(
    type_id: u32,
    src: &[f32],
    n_per_row: usize,
    imatrix: Option<&[f32]>,
) -> Option<Vec<u8>> {
    if !CHUNK_TYPES.contains(&type_id) {
        return ggml_quantize_row_ref(type_id, src);
    }
    if n_per_row == 0 || !src.len().is_multiple_of(n_per_row) {
        return None;
    }
    if imatrix.is_some_and(|w| w.len() != n_per_row) {
        return None;
    }
    let row_bytes = row_size(type_id, n_per_row)?;
    // SAFETY: plain query on an id inside ggml's table (CHUNK_TYPES holds only such ids).
    if imatrix.is_none() && unsafe { sys::ggml_quantize_requires_imatrix(type_id) } {
        return None;
    }
    let n_rows = src.len() / n_per_row;
    let mut out = Aligned::zeroed(n_rows * row_bytes);
    // SAFETY: a valid type id; ggml_quantize_init only builds lookup tables (under ggml's lock).
    unsafe { sys::ggml_quantize_init(type_id) };
    // SAFETY: `src` holds `n_rows * n_per_row` floats and `out` `n_rows` rows of `row_bytes`;
    // start 0 and a whole number of blocks per row satisfy ggml's asserts; the importance
    // matrix, when there is one, has `n_per_row` weights (what ggml reads), and is present
    // where the type requires it (checked above).
    let written = unsafe {
        sys::ggml_quantize_chunk(
            type_id,
            src.as_ptr(),
            out.as_mut_ptr().cast(),
            0,
            n_rows as i64,
            n_per_row as i64,
            imatrix.map_or(std::ptr::null(), |w| w.as_ptr()),
        )
    };
    (written == out.len).then(|| out.into_bytes())
}

/// Quantizes with the type's `from_float_ref` (`quantize_row_*_ref`): ggml's deterministic
/// reference encoder, the one dsrun's own `quantize` is held byte for byte against.
///
/// Q8_K uses the exported `quantize_row_q8_K_ref`. `None` when the type has no reference
/// quantizer or `src.len()` is not a whole number of blocks.
pub fn ggml_quantize_row_ref(type_id: u32, src: &[f32]) -> Option<Vec<u8>> {
    let from_float = from_float_ref(type_id)?;
    let mut out = Aligned::zeroed(row_size(type_id, src.len())?);
    // SAFETY: `src` is a whole number of blocks and `out` exactly their encoded size (checked
    // above), aligned for ggml's block structs; the reference quantizers read `src.len()` floats
    // and write only those blocks.
    unsafe { from_float(src.as_ptr(), out.as_mut_ptr().cast(), src.len() as i64) };
    Some(out.into_bytes())
}

/// ggml's `ggml_validate_row_data`: false when the bytes of a tensor of this type hold a NaN or
/// infinity (in the values or the block scales), or are not a whole number of blocks. llama.cpp
/// checks every tensor it writes (and reads, with `check_tensors`) this way.
pub fn ggml_validate_row_data(type_id: u32, data: &[u8]) -> bool {
    let Some(t) = traits(type_id) else {
        return false;
    };
    if !data.len().is_multiple_of(t.type_size) {
        return false;
    }
    let data = Aligned::copy_of(data);
    // SAFETY: a known type id and a buffer of whole blocks, aligned for ggml's block structs;
    // ggml only reads `nbytes` bytes.
    unsafe { sys::ggml_validate_row_data(type_id, data.as_ptr().cast(), data.len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_queries() {
        assert_eq!(ggml_type_name(sys::GGML_TYPE_Q4_K), "q4_K");
        assert_eq!(ggml_type_name(9999), "NONE");
        assert_eq!(ggml_blck_size(sys::GGML_TYPE_Q4_K), Some(256));
        assert_eq!(ggml_type_size(sys::GGML_TYPE_Q4_K), Some(144));
        assert_eq!(ggml_blck_size(4), None);
        assert_eq!(ggml_type_size(9999), None);
    }

    #[test]
    fn bad_lengths_are_none() {
        assert!(ggml_dequantize(sys::GGML_TYPE_Q4_0, &[0; 17], 32).is_none());
        assert!(ggml_dequantize(sys::GGML_TYPE_Q4_0, &[0; 18], 31).is_none());
        assert!(ggml_dequantize(sys::GGML_TYPE_F32, &[0; 4], 1).is_none());
        assert!(ggml_quantize(sys::GGML_TYPE_Q4_0, &[0.0; 48], 24).is_none());
        assert!(ggml_quantize(sys::GGML_TYPE_Q4_0, &[0.0; 64], 0).is_none());
        assert!(ggml_quantize(sys::GGML_TYPE_IQ2_XXS, &[0.0; 256], 256).is_none());
        assert!(ggml_quantize_row_ref(sys::GGML_TYPE_Q8_0, &[0.0; 33]).is_none());
        let w = [1.0f32; 128];
        assert!(
            ggml_quantize_imatrix(sys::GGML_TYPE_IQ2_XXS, &[0.0; 256], 256, Some(&w)).is_none()
        );
    }

    #[test]
    fn imatrix_changes_k_quants_and_enables_iq2() {
        let x: Vec<f32> = (0..512)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let mut w = vec![1.0f32; 256];
        w[..16].iter_mut().for_each(|v| *v = 100.0);
        let plain = ggml_quantize(sys::GGML_TYPE_Q4_K, &x, 256).unwrap();
        let weighted = ggml_quantize_imatrix(sys::GGML_TYPE_Q4_K, &x, 256, Some(&w)).unwrap();
        assert_eq!(plain.len(), weighted.len());
        assert_ne!(plain, weighted);
        let iq2 = ggml_quantize_imatrix(sys::GGML_TYPE_IQ2_XXS, &x, 256, Some(&w)).unwrap();
        assert!(ggml_validate_row_data(sys::GGML_TYPE_IQ2_XXS, &iq2));
        // Types that take no importance weights ignore them.
        assert_eq!(
            ggml_quantize(sys::GGML_TYPE_Q8_0, &x, 256),
            ggml_quantize_imatrix(sys::GGML_TYPE_Q8_0, &x, 256, Some(&w))
        );
    }

    #[test]
    fn validation_finds_nan() {
        let good = ggml_quantize(sys::GGML_TYPE_Q8_0, &[1.0; 32], 32).unwrap();
        assert!(ggml_validate_row_data(sys::GGML_TYPE_Q8_0, &good));
        assert!(!ggml_validate_row_data(sys::GGML_TYPE_Q8_0, &good[..33]));
        let nan = f32::NAN.to_le_bytes();
        assert!(!ggml_validate_row_data(sys::GGML_TYPE_F32, &nan));
        assert!(ggml_validate_row_data(
            sys::GGML_TYPE_F32,
            &1f32.to_le_bytes()
        ));
    }

    #[test]
    fn q8_0_round_trip() {
        let x: Vec<f32> = (0..64).map(|i| i as f32 - 31.0).collect();
        let q = ggml_quantize(sys::GGML_TYPE_Q8_0, &x, 32).unwrap();
        assert_eq!(q.len(), 68);
        assert_eq!(q, ggml_quantize_row_ref(sys::GGML_TYPE_Q8_0, &x).unwrap());
        let y = ggml_dequantize(sys::GGML_TYPE_Q8_0, &q, 64).unwrap();
        for (a, b) in x.iter().zip(&y) {
            assert!((a - b).abs() <= 0.15, "{a} vs {b}");
        }
    }
}
