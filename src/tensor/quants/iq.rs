//! ggml's non-linear 4-bit formats IQ4_NL and IQ4_XS: each 4-bit index picks one of 16 fixed
//! levels (`KVALUES_IQ4NL`), spaced more densely near zero, which a block scale multiplies.

use super::float::f16_to_f32;
use super::{assert_block_size, Block};
use crate::tensor::GgmlType;

/// ggml's `kvalues_iq4nl`.
pub const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// x = d * KVALUES_IQ4NL[q]; nibbles laid out as in Q4_0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockIq4Nl {
    pub d: [u8; 2],
    pub qs: [u8; 16],
}
assert_block_size!(BlockIq4Nl, 18);

// SAFETY: repr(C), byte arrays only.
unsafe impl Block for BlockIq4Nl {
    const TYPE: GgmlType = GgmlType::Iq4Nl;
    const QK: usize = 32;
    fn to_f32(&self, out: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for j in 0..16 {
            out[j] = d * KVALUES_IQ4NL[(self.qs[j] & 0x0f) as usize] as f32;
            out[j + 16] = d * KVALUES_IQ4NL[(self.qs[j] >> 4) as usize] as f32;
        }
    }
}

/// IQ4_NL over 256 values with a 6-bit scale per 32: x = d * (ls - 32) * KVALUES_IQ4NL[q].
/// Scale `ib` has its low nibble in `scales_l[ib / 2]` (low nibble for even `ib`) and its high two
/// bits in bits 2*ib of the little-endian `scales_h`. Each 32 values use 16 `qs` bytes as Q4_0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockIq4Xs {
    pub d: [u8; 2],
    pub scales_h: [u8; 2],
    pub scales_l: [u8; 4],
    pub qs: [u8; 128],
}
assert_block_size!(BlockIq4Xs, 136);

// SAFETY: repr(C), byte arrays only.
unsafe impl Block for BlockIq4Xs {
    const TYPE: GgmlType = GgmlType::Iq4Xs;
    const QK: usize = 256;
    fn to_f32(&self, out: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let scales_h = u16::from_le_bytes(self.scales_h);
        for (ib, (qs, y)) in self
            .qs
            .chunks_exact(16)
            .zip(out.chunks_exact_mut(32))
            .enumerate()
        {
            let low = (self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
            let high = ((scales_h >> (2 * ib)) & 3) as u8;
            let ls = (low | (high << 4)) as i32;
            let dl = d * (ls - 32) as f32;
            for j in 0..16 {
                y[j] = dl * KVALUES_IQ4NL[(qs[j] & 0x0f) as usize] as f32;
                y[j + 16] = dl * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iq4_nl_known_block() {
        let mut qs = [0u8; 16];
        for (j, q) in qs.iter_mut().enumerate() {
            *q = j as u8 | ((15 - j as u8) << 4);
        }
        let block = BlockIq4Nl {
            d: 0x3800u16.to_le_bytes(),
            qs,
        };
        let mut y = [0f32; 32];
        block.to_f32(&mut y);
        for j in 0..16 {
            assert_eq!(y[j], KVALUES_IQ4NL[j] as f32 * 0.5);
            assert_eq!(y[j + 16], KVALUES_IQ4NL[15 - j] as f32 * 0.5);
        }
    }

    #[test]
    fn iq4_xs_scales() {
        // Sub-block ib gets ls = 33 + ib: low nibble 1 + ib, high bits 2.
        let mut block = BlockIq4Xs {
            d: 0x3c00u16.to_le_bytes(),
            scales_h: 0xaaaau16.to_le_bytes(),
            scales_l: [0; 4],
            qs: [0x88; 128],
        };
        for ib in 0..8 {
            block.scales_l[ib / 2] |= (1 + ib as u8) << (4 * (ib % 2));
        }
        let mut y = [0f32; 256];
        block.to_f32(&mut y);
        for ib in 0..8 {
            assert_eq!(y[32 * ib], (1 + ib) as f32 * KVALUES_IQ4NL[8] as f32);
        }
    }
}
