//! ggml's block formats, decoded to f32 bit for bit as ggml's `dequantize_row_*` does, and the
//! simple ones encoded as ggml's `quantize_row_*_ref` does.
//!
//! Each format is a `#[repr(C)]` struct of byte arrays with a compile-time size check, and one
//! plain `to_f32` per block. These are the reference path: fast kernels elsewhere are tested
//! against them, and they are tested against ggml itself (`tests/dequant_vs_ggml.rs`).
//!
//! Float operations keep ggml's order (`d1 = d * sc; m1 = min * m; y = d1 * q - m1`). The order
//! turns out not to matter for decoding: an f16 scale has 11 significant bits and sub-block
//! scales and quants at most 7 each, so every scale-times-quant product fits f32's 24 bits
//! exactly (Q8_K, with an f32 scale, does a single multiply) and each output is one correctly
//! rounded operation, whether or not a C compiler reorders it or fuses it into an FMA.
//! The encoders are different (`x * id + 8.5` rounds twice); they match ggml's x86-64 build,
//! which has no FMA.

pub mod float;
pub mod iq;
pub mod k_quants;
pub mod legacy;
pub mod mxfp4;

use crate::error::{Error, Result};
use crate::tensor::GgmlType;

/// One block of a ggml type: `QK` values stored in `size_of::<Self>()` bytes.
///
/// # Safety
///
/// Implementors must be `#[repr(C)]` structs whose fields are all `u8` or `[u8; N]`, so that they
/// have alignment 1, no padding, and every byte pattern is a valid value. [`as_blocks`] reinterprets
/// raw tensor bytes as `&[Self]` on the strength of this.
pub unsafe trait Block: Copy {
    /// The ggml type this block encodes.
    const TYPE: GgmlType;
    /// Values per block.
    const QK: usize;

    /// Decodes the block into `out`, whose length is `QK`.
    fn to_f32(&self, out: &mut [f32]);
}

/// A block type dsrun can also encode, with ggml's reference (`quantize_row_*_ref`) rounding.
pub trait Quantize: Block {
    /// Encodes `x`, whose length is `QK`.
    fn from_f32(x: &[f32]) -> Self;
}

/// Fails to compile unless the block has the given byte size and alignment 1.
macro_rules! assert_block_size {
    ($block:ty, $size:expr) => {
        const _: () = assert!(
            ::std::mem::size_of::<$block>() == $size && ::std::mem::align_of::<$block>() == 1
        );
    };
}
pub(crate) use assert_block_size;

/// Views raw bytes as blocks. `bytes.len()` must be a multiple of the block size (the caller
/// checked it); a tail that is not would be ignored.
pub fn as_blocks<B: Block>(bytes: &[u8]) -> &[B] {
    let n = bytes.len() / std::mem::size_of::<B>();
    // SAFETY: `B: Block` promises alignment 1, no padding and no invalid byte patterns, so any
    // `n * size_of::<B>()` bytes inside `bytes` are `n` valid `B`s; the borrow keeps them alive.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), n) }
}

/// Mutable twin of [`as_blocks`].
pub fn as_blocks_mut<B: Block>(bytes: &mut [u8]) -> &mut [B] {
    let n = bytes.len() / std::mem::size_of::<B>();
    // SAFETY: as in `as_blocks`; the exclusive borrow of `bytes` makes the view exclusive, and
    // any value written through it is again valid bytes.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<B>(), n) }
}

/// Checks that `n_bytes` bytes of type `ty` hold exactly `n_values` values.
fn check_lengths(op: &str, ty: GgmlType, n_bytes: usize, n_values: usize) -> Result<()> {
    let (Some(block_size), Some(expected)) = (ty.block_size(), ty.row_bytes(n_values as u64))
    else {
        let block_size = ty.block_size().unwrap_or(0);
        return Err(Error::Invalid(format!(
            "{op} {ty}: {n_values} values is not a whole number of {block_size}-value blocks"
        )));
    };
    if expected != n_bytes as u64 {
        return Err(Error::Invalid(format!(
            "{op} {ty}: {n_values} values ({} blocks of {block_size}) take {expected} bytes, got {n_bytes}",
            n_values / block_size
        )));
    }
    Ok(())
}

fn dequantize_blocks<B: Block>(src: &[u8], dst: &mut [f32]) {
    for (block, out) in as_blocks::<B>(src).iter().zip(dst.chunks_exact_mut(B::QK)) {
        block.to_f32(out);
    }
}

fn quantize_blocks<B: Quantize>(src: &[f32], dst: &mut [u8]) {
    for (block, x) in as_blocks_mut::<B>(dst)
        .iter_mut()
        .zip(src.chunks_exact(B::QK))
    {
        *block = B::from_f32(x);
    }
}

/// Decodes `dst.len()` values of type `ty` from `src`, bit for bit as ggml does.
///
/// `src.len()` must be `ty.row_bytes(dst.len())`. Any bytes decode without panicking (NaN and
/// infinite scales give NaN and infinite values, as in ggml).
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    if !ty.is_supported() {
        return Err(Error::Invalid(format!(
            "dequantizing {ty} is not implemented in dsrun"
        )));
    }
    check_lengths("dequantize", ty, src.len(), dst.len())?;
    match ty {
        GgmlType::F32 => dequantize_blocks::<float::BlockF32>(src, dst),
        GgmlType::F16 => dequantize_blocks::<float::BlockF16>(src, dst),
        GgmlType::Bf16 => dequantize_blocks::<float::BlockBf16>(src, dst),
        GgmlType::Q4_0 => dequantize_blocks::<legacy::BlockQ4_0>(src, dst),
        GgmlType::Q4_1 => dequantize_blocks::<legacy::BlockQ4_1>(src, dst),
        GgmlType::Q5_0 => dequantize_blocks::<legacy::BlockQ5_0>(src, dst),
        GgmlType::Q5_1 => dequantize_blocks::<legacy::BlockQ5_1>(src, dst),
        GgmlType::Q8_0 => dequantize_blocks::<legacy::BlockQ8_0>(src, dst),
        GgmlType::Q8_1 => dequantize_blocks::<legacy::BlockQ8_1>(src, dst),
        GgmlType::Q2K => dequantize_blocks::<k_quants::BlockQ2K>(src, dst),
        GgmlType::Q3K => dequantize_blocks::<k_quants::BlockQ3K>(src, dst),
        GgmlType::Q4K => dequantize_blocks::<k_quants::BlockQ4K>(src, dst),
        GgmlType::Q5K => dequantize_blocks::<k_quants::BlockQ5K>(src, dst),
        GgmlType::Q6K => dequantize_blocks::<k_quants::BlockQ6K>(src, dst),
        GgmlType::Q8K => dequantize_blocks::<k_quants::BlockQ8K>(src, dst),
        GgmlType::Iq4Nl => dequantize_blocks::<iq::BlockIq4Nl>(src, dst),
        GgmlType::Iq4Xs => dequantize_blocks::<iq::BlockIq4Xs>(src, dst),
        GgmlType::Mxfp4 => dequantize_blocks::<mxfp4::BlockMxfp4>(src, dst),
        GgmlType::Other(_) => unreachable!("rejected above"),
    }
    Ok(())
}

/// Encodes `src` as type `ty` into `dst`, byte for byte as ggml's `quantize_row_*_ref`.
///
/// Implemented for F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q8_1; `dst.len()` must be
/// `ty.row_bytes(src.len())`.
pub fn quantize(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    let quantize: fn(&[f32], &mut [u8]) = match ty {
        GgmlType::F32 => quantize_blocks::<float::BlockF32>,
        GgmlType::F16 => quantize_blocks::<float::BlockF16>,
        GgmlType::Bf16 => quantize_blocks::<float::BlockBf16>,
        GgmlType::Q4_0 => quantize_blocks::<legacy::BlockQ4_0>,
        GgmlType::Q4_1 => quantize_blocks::<legacy::BlockQ4_1>,
        GgmlType::Q5_0 => quantize_blocks::<legacy::BlockQ5_0>,
        GgmlType::Q5_1 => quantize_blocks::<legacy::BlockQ5_1>,
        GgmlType::Q8_0 => quantize_blocks::<legacy::BlockQ8_0>,
        GgmlType::Q8_1 => quantize_blocks::<legacy::BlockQ8_1>,
        _ => {
            return Err(Error::Invalid(format!(
                "quantizing to {ty} is not implemented in dsrun; \
                 dsrun quantizes to F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q8_1"
            )))
        }
    };
    check_lengths("quantize", ty, dst.len(), src.len())?;
    quantize(src, dst);
    Ok(())
}

/// Converts a float to an integer the way ggml's C casts do on x86-64 (`cvttss2si`): truncate
/// toward zero; NaN and anything outside the `i32` range become `i32::MIN`. A narrower C cast
/// (`(int8_t)`, `(uint8_t)`) then keeps the low bits, which `as i8` / `as u8` on the result does.
/// Only NaN or infinite inputs reach the out-of-range cases.
pub(crate) fn c_float_to_int(x: f32) -> i32 {
    if x > -2147483904.0 && x < 2147483648.0 {
        x as i32
    } else {
        i32::MIN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_matches_table<B: Block>() {
        assert_eq!(
            Some(std::mem::size_of::<B>()),
            B::TYPE.type_size(),
            "{}",
            B::TYPE
        );
        assert_eq!(Some(B::QK), B::TYPE.block_size(), "{}", B::TYPE);
    }

    #[test]
    fn blocks_match_type_table() {
        block_matches_table::<float::BlockF32>();
        block_matches_table::<float::BlockF16>();
        block_matches_table::<float::BlockBf16>();
        block_matches_table::<legacy::BlockQ4_0>();
        block_matches_table::<legacy::BlockQ4_1>();
        block_matches_table::<legacy::BlockQ5_0>();
        block_matches_table::<legacy::BlockQ5_1>();
        block_matches_table::<legacy::BlockQ8_0>();
        block_matches_table::<legacy::BlockQ8_1>();
        block_matches_table::<k_quants::BlockQ2K>();
        block_matches_table::<k_quants::BlockQ3K>();
        block_matches_table::<k_quants::BlockQ4K>();
        block_matches_table::<k_quants::BlockQ5K>();
        block_matches_table::<k_quants::BlockQ6K>();
        block_matches_table::<k_quants::BlockQ8K>();
        block_matches_table::<iq::BlockIq4Nl>();
        block_matches_table::<iq::BlockIq4Xs>();
        block_matches_table::<mxfp4::BlockMxfp4>();
    }

    #[test]
    fn every_supported_type_decodes_any_bytes() {
        let mut state = 0x9E3779B97F4A7C15u64;
        for ty in GgmlType::supported() {
            let n = ty.block_size().unwrap() * 3;
            let bytes: Vec<u8> = (0..ty.row_bytes(n as u64).unwrap())
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let mut out = vec![0f32; n];
            dequantize(ty, &bytes, &mut out).unwrap();
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let mut out = vec![0f32; 256];
        let err = dequantize(GgmlType::Q4K, &[0u8; 143], &mut out).unwrap_err();
        assert!(err.to_string().contains("144 bytes, got 143"), "{err}");
        let err = dequantize(GgmlType::Q4_0, &[0u8; 18], &mut out[..31]).unwrap_err();
        assert!(err.to_string().contains("whole number"), "{err}");
        assert!(dequantize(GgmlType::F16, &[0u8; 3], &mut out[..1]).is_err());
        assert!(dequantize(GgmlType::Q8_0, &[], &mut []).is_ok());

        let mut bytes = [0u8; 36];
        assert!(quantize(GgmlType::Q8_0, &[0.0; 32], &mut bytes).is_err());
        assert!(quantize(GgmlType::Q8_0, &[0.0; 32], &mut bytes[..34]).is_ok());
        assert!(quantize(GgmlType::Q8_0, &[0.0; 33], &mut bytes[..34]).is_err());
    }

    #[test]
    fn unsupported_types_are_named() {
        let err = dequantize(GgmlType::from_id(16), &[0u8; 66], &mut [0.0; 256]).unwrap_err();
        assert!(err.to_string().contains("IQ2_XXS"), "{err}");
        let err = quantize(GgmlType::Q4K, &[0.0; 256], &mut [0u8; 144]).unwrap_err();
        assert!(
            err.to_string()
                .contains("quantizing to Q4_K is not implemented"),
            "{err}"
        );
    }

    #[test]
    fn c_casts() {
        assert_eq!(c_float_to_int(-0.7), 0);
        assert_eq!(c_float_to_int(16.9), 16);
        assert_eq!(c_float_to_int(f32::NAN), i32::MIN);
        assert_eq!(c_float_to_int(f32::INFINITY), i32::MIN);
        assert_eq!(c_float_to_int(-2147483648.0), i32::MIN);
        assert_eq!(c_float_to_int(2147483520.0), 2147483520);
        assert_eq!(c_float_to_int(2147483648.0), i32::MIN);
    }
}
