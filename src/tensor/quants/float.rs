//! Plain float types (F32, F16, BF16) as one-value blocks, and the f16 / bf16 conversions every
//! quantized format uses for its scales, rounded exactly as ggml rounds them.

use super::{assert_block_size, Block, Quantize};
use crate::tensor::GgmlType;

/// f16 (little-endian bytes) to f32. Exact for every value; NaNs keep their payload and come back
/// quiet, as ggml's `GGML_FP16_TO_FP32` does.
#[inline]
pub fn f16_to_f32(bytes: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(bytes).to_f32()
}

/// f32 to f16 bits, as ggml's `GGML_FP32_TO_FP16`: round to nearest even, overflow to infinity,
/// and every NaN to the quiet NaN `0x7e00` with the input's sign (ggml drops the payload).
#[inline]
pub fn f32_to_f16_bits(x: f32) -> u16 {
    if x.is_nan() {
        return ((x.to_bits() >> 16) & 0x8000) as u16 | 0x7e00;
    }
    half::f16::from_f32(x).to_bits()
}

/// bf16 bits to f32: a shift, so NaN payloads (signalling ones too) are kept as ggml keeps them.
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// f32 to bf16 bits, as ggml's `ggml_compute_fp32_to_bf16`: round to nearest even, and NaNs
/// truncated and forced quiet.
#[inline]
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// One f32, little-endian.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockF32 {
    pub bits: [u8; 4],
}
assert_block_size!(BlockF32, 4);

/// One IEEE half, little-endian.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockF16 {
    pub bits: [u8; 2],
}
assert_block_size!(BlockF16, 2);

/// One bfloat16, little-endian.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockBf16 {
    pub bits: [u8; 2],
}
assert_block_size!(BlockBf16, 2);

// SAFETY: repr(C), byte arrays only.
unsafe impl Block for BlockF32 {
    const TYPE: GgmlType = GgmlType::F32;
    const QK: usize = 1;
    fn to_f32(&self, out: &mut [f32]) {
        out[0] = f32::from_le_bytes(self.bits);
    }
}

impl Quantize for BlockF32 {
    fn from_f32(x: &[f32]) -> Self {
        BlockF32 {
            bits: x[0].to_le_bytes(),
        }
    }
}

// SAFETY: repr(C), byte arrays only.
unsafe impl Block for BlockF16 {
    const TYPE: GgmlType = GgmlType::F16;
    const QK: usize = 1;
    fn to_f32(&self, out: &mut [f32]) {
        out[0] = f16_to_f32(self.bits);
    }
}

impl Quantize for BlockF16 {
    fn from_f32(x: &[f32]) -> Self {
        BlockF16 {
            bits: f32_to_f16_bits(x[0]).to_le_bytes(),
        }
    }
}

// SAFETY: repr(C), byte arrays only.
unsafe impl Block for BlockBf16 {
    const TYPE: GgmlType = GgmlType::Bf16;
    const QK: usize = 1;
    fn to_f32(&self, out: &mut [f32]) {
        out[0] = bf16_to_f32(u16::from_le_bytes(self.bits));
    }
}

impl Quantize for BlockBf16 {
    fn from_f32(x: &[f32]) -> Self {
        BlockBf16 {
            bits: f32_to_bf16_bits(x[0]).to_le_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_known_values() {
        assert_eq!(f16_to_f32(0x3c00u16.to_le_bytes()), 1.0);
        assert_eq!(f16_to_f32(0xc000u16.to_le_bytes()), -2.0);
        assert_eq!(f16_to_f32(0x0001u16.to_le_bytes()), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7c00u16.to_le_bytes()), f32::INFINITY);
        assert_eq!(f16_to_f32(0x7c01u16.to_le_bytes()).to_bits(), 0x7fc0_2000);
        assert_eq!(f32_to_f16_bits(65504.0), 0x7bff);
        assert_eq!(f32_to_f16_bits(65520.0), 0x7c00);
        assert_eq!(f32_to_f16_bits(-0.0), 0x8000);
        assert_eq!(f32_to_f16_bits(f32::from_bits(0xffc1_2345)), 0xfe00);
        // Halfway between 1 and the next f16: ties go to the even mantissa.
        assert_eq!(f32_to_f16_bits(1.0 + 2f32.powi(-11)), 0x3c00);
        assert_eq!(f32_to_f16_bits(1.0 + 3.0 * 2f32.powi(-11)), 0x3c02);
    }

    #[test]
    fn bf16_known_values() {
        assert_eq!(f32_to_bf16_bits(1.0), 0x3f80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(f32_to_bf16_bits(f32::MAX), 0x7f80);
        assert_eq!(f32_to_bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(bf16_to_f32(0x7f81).to_bits(), 0x7f81_0000);
    }

    #[test]
    fn every_f16_and_bf16_round_trips() {
        for bits in 0..=u16::MAX {
            let x = f16_to_f32(bits.to_le_bytes());
            if x.is_nan() {
                assert_eq!(f32_to_f16_bits(x), (bits & 0x8000) | 0x7e00);
            } else {
                assert_eq!(f32_to_f16_bits(x), bits);
            }
            let y = bf16_to_f32(bits);
            if y.is_nan() {
                assert_eq!(f32_to_bf16_bits(y), bits | 64);
            } else {
                assert_eq!(f32_to_bf16_bits(y), bits);
            }
        }
    }
}
