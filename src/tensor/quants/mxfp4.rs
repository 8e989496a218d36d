//! MXFP4 (OCP microscaling FP4): 32 E2M1 values sharing one E8M0 power-of-two scale. ggml stores
//! the E2M1 levels doubled (`KVALUES_MXFP4`) and halves the scale to match.

use super::{assert_block_size, Block};
use crate::tensor::GgmlType;

/// ggml's `kvalues_mxfp4`: twice the E2M1 value of each 4-bit code.
pub const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Half of the E8M0 scale `e`, i.e. 2^(e - 128), as ggml's `GGML_E8M0_TO_FP32_HALF`: subnormal
/// for e < 2, and no NaN for e = 255 (that gives 2^127).
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        ((e - 1) as u32) << 23
    };
    f32::from_bits(bits)
}

/// x = 2^(e - 128) * KVALUES_MXFP4[q]; nibbles laid out as in Q4_0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockMxfp4 {
    pub e: u8,
    pub qs: [u8; 16],
}
assert_block_size!(BlockMxfp4, 17);

// SAFETY: repr(C), a byte and a byte array only.
unsafe impl Block for BlockMxfp4 {
    const TYPE: GgmlType = GgmlType::Mxfp4;
    const QK: usize = 32;
    fn to_f32(&self, out: &mut [f32]) {
        let d = e8m0_to_f32_half(self.e);
        for j in 0..16 {
            out[j] = KVALUES_MXFP4[(self.qs[j] & 0x0f) as usize] as f32 * d;
            out[j + 16] = KVALUES_MXFP4[(self.qs[j] >> 4) as usize] as f32 * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e8m0_half_scale() {
        assert_eq!(e8m0_to_f32_half(128), 1.0);
        assert_eq!(e8m0_to_f32_half(127), 0.5);
        assert_eq!(e8m0_to_f32_half(1), 2f32.powi(-127));
        assert_eq!(e8m0_to_f32_half(0), 2f32.powi(-128));
        assert_eq!(e8m0_to_f32_half(255), 2f32.powi(127));
    }

    #[test]
    fn known_block() {
        // e = 128: scale 1, so values are the doubled E2M1 levels.
        let qs: [u8; 16] = std::array::from_fn(|j| j as u8 | ((15 - j as u8) << 4));
        let mut y = [0f32; 32];
        BlockMxfp4 { e: 128, qs }.to_f32(&mut y);
        for j in 0..16 {
            assert_eq!(y[j], KVALUES_MXFP4[j] as f32);
            assert_eq!(y[j + 16], KVALUES_MXFP4[15 - j] as f32);
        }
    }
}
