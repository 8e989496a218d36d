//! ggml's k-quants: super-blocks of 256 values split into 16 or 8 sub-blocks, each with its own
//! small integer scale (and min) that a per-super-block f16 multiplies. Decoding only; dsrun
//! quantizes to these through ggml (`dsrun-quantize`).
//!
//! Every expression keeps ggml's association order: the sub-block scale is formed first
//! (`d1 = d * sc`, `m1 = min * m`) and then applied (`d1 * q - m1`).

use super::float::f16_to_f32;
use super::{assert_block_size, Block};
use crate::tensor::GgmlType;

const QK_K: usize = 256;

/// x = d * sc * q - dmin * m, with 4-bit `sc` and `m` per 16 values and 2-bit `q`.
///
/// `scales[i]` holds sub-block i's scale (low nibble) and min (high nibble). In each 128-value
/// half, byte `l` of the half's 32 `qs` bytes holds values l (or l + 16 for l >= 16), l + 32,
/// l + 64, l + 96 in bits 0-1, 2-3, 4-5, 6-7.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}
assert_block_size!(BlockQ2K, 84);

// SAFETY: repr(C), byte arrays only.
unsafe impl Block for BlockQ2K {
    const TYPE: GgmlType = GgmlType::Q2K;
    const QK: usize = QK_K;
    fn to_f32(&self, out: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let min = f16_to_f32(self.dmin);
        let mut is = 0;
        let mut y = 0;
        for half in 0..2 {
            let q = &self.qs[32 * half..32 * half + 32];
            for shift in [0, 2, 4, 6] {
                for q16 in [&q[..16], &q[16..]] {
                    let sc = self.scales[is];
                    is += 1;
                    let dl = d * (sc & 0x0f) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for &b in q16 {
                        out[y] = dl * ((b >> shift) & 3) as f32 - ml;
                        y += 1;
                    }
                }
            }
        }
    }
}

/// x = d * (sc - 32) * q, with a 6-bit `sc` per 16 values and q = (2 low bits) - (high bit
/// clear ? 4 : 0), in -4..4.
///
/// Low bits are laid out as in Q2_K. `hmask[l]` holds the high bits of values l + 32k (for
/// l < 32, k = 0..8) in bit k. The 16 scales are packed in 12 bytes: low nibbles in bytes 0-7
/// (scale i < 8 in the low nibble of byte i, scale i >= 8 in the high nibble of byte i - 8),
/// high two bits of scale i in bits 2*(i/4) of byte 8 + i%4.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: [u8; 2],
}
assert_block_size!(BlockQ3K, 110);

impl BlockQ3K {
    /// The 16 six-bit scales, not yet offset by -32.
    fn unpacked_scales(&self) -> [u8; 16] {
        let s = &self.scales;
        std::array::from_fn(|i| {
            let low = if i < 8 { s[i] & 0x0f } else { s[i - 8] >> 4 };
            let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
            low | (high << 4)
        })
    }
}

// SAFETY: repr(C), byte arrays only.
unsafe impl Block for BlockQ3K {
    const TYPE: GgmlType = GgmlType::Q3K;
    const QK: usize = QK_K;
    fn to_f32(&self, out: &mut [f32]) {
        let d_all = f16_to_f32(self.d);
        let scales = self.unpacked_scales();
        let mut is = 0;
        let mut y = 0;
        let mut bit = 0;
        for half in 0..2 {
            let q = &self.qs[32 * half..32 * half + 32];
            for shift in [0, 2, 4, 6] {
                let m = 1u8 << bit;
                for l0 in [0, 16] {
                    let dl = d_all * (scales[is] as i32 - 32) as f32;
                    is += 1;
                    let hmask = &self.hmask[l0..l0 + 16];
                    for (&qb, &hb) in q[l0..l0 + 16].iter().zip(hmask) {
                        let low = ((qb >> shift) & 3) as i32;
                        let minus = if hb & m != 0 { 0 } else { 4 };
                        out[y] = dl * (low - minus) as f32;
                        y += 1;
                    }
                }
                bit += 1;
            }
        }
    }
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K and Q5_K: 6 bits each;
/// for j < 4 the low 6 bits of bytes j and j + 4, for j >= 4 a nibble of byte j + 4 plus the top
/// two bits of bytes j - 4 and j.
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        let sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (sc, m)
    }
}

/// x = d * sc * q - dmin * m, with 6-bit `sc`, `m` per 32 values and 4-bit `q`. Each 64-value
/// chunk k uses 32 `qs` bytes: low nibbles are values 64k..64k+32, high nibbles the next 32.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}
assert_block_size!(BlockQ4K, 144);

// SAFETY: repr(C), byte arrays only.
unsafe impl Block for BlockQ4K {
    const TYPE: GgmlType = GgmlType::Q4K;
    const QK: usize = QK_K;
    fn to_f32(&self, out: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let min = f16_to_f32(self.dmin);
        for (k, (q, y)) in self
            .qs
            .chunks_exact(32)
            .zip(out.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc, m) = scale_min_k4(2 * k, &self.scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = scale_min_k4(2 * k + 1, &self.scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            for l in 0..32 {
                y[l] = d1 * (q[l] & 0x0f) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// Q4_K with a fifth bit: bit 2k of `qh[l]` is the high bit of value 64k + l, bit 2k + 1 that of
/// value 64k + 32 + l.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ5K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
assert_block_size!(BlockQ5K, 176);

// SAFETY: repr(C), byte arrays only.
unsafe impl Block for BlockQ5K {
    const TYPE: GgmlType = GgmlType::Q5K;
    const QK: usize = QK_K;
    fn to_f32(&self, out: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let min = f16_to_f32(self.dmin);
        for (k, (ql, y)) in self
            .qs
            .chunks_exact(32)
            .zip(out.chunks_exact_mut(64))
            .enumerate()
        {
            let (sc, m) = scale_min_k4(2 * k, &self.scales);
            let (d1, m1) = (d * sc as f32, min * m as f32);
            let (sc, m) = scale_min_k4(2 * k + 1, &self.scales);
            let (d2, m2) = (d * sc as f32, min * m as f32);
            let (u1, u2) = (1u8 << (2 * k), 2u8 << (2 * k));
            for l in 0..32 {
                let h1 = if self.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if self.qh[l] & u2 != 0 { 16 } else { 0 };
                y[l] = d1 * ((ql[l] & 0x0f) + h1) as f32 - m1;
                y[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

/// x = d * sc * (q - 32), with an i8 `sc` per 16 values and 6-bit `q`.
///
/// Per 128-value half: 64 `ql` bytes (low nibbles: values l and l + 32 for l < 32 from bytes l
/// and l + 32; high nibbles: values l + 64 and l + 96) and 32 `qh` bytes (bits 0-1, 2-3, 4-5,
/// 6-7 of byte l: high bits of values l, l + 32, l + 64, l + 96).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [u8; QK_K / 16],
    pub d: [u8; 2],
}
assert_block_size!(BlockQ6K, 210);

// SAFETY: repr(C), byte arrays only.
unsafe impl Block for BlockQ6K {
    const TYPE: GgmlType = GgmlType::Q6K;
    const QK: usize = QK_K;
    fn to_f32(&self, out: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for half in 0..2 {
            let ql = &self.ql[64 * half..64 * half + 64];
            let qh = &self.qh[32 * half..32 * half + 32];
            let sc = &self.scales[8 * half..8 * half + 8];
            let y = &mut out[128 * half..128 * half + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0f) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}

/// x = d * q with an f32 `d` and i8 `q`; `bsums` (16 little-endian i16, sums of 16 quants) only
/// speed up dot products. The activation type of k-quant dot products.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ8K {
    pub d: [u8; 4],
    pub qs: [u8; QK_K],
    pub bsums: [u8; QK_K / 16 * 2],
}
assert_block_size!(BlockQ8K, 292);

// SAFETY: repr(C), byte arrays only.
unsafe impl Block for BlockQ8K {
    const TYPE: GgmlType = GgmlType::Q8K;
    const QK: usize = QK_K;
    fn to_f32(&self, out: &mut [f32]) {
        let d = f32::from_le_bytes(self.d);
        for (y, &q) in out.iter_mut().zip(&self.qs) {
            *y = d * (q as i8) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_min_k4_unpacks_six_bits() {
        // Sub-block j has scale j + 1 and min 40 + j, packed by hand.
        let mut q = [0u8; 12];
        for j in 0..8u8 {
            let (sc, m) = (j + 1, 40 + j);
            if j < 4 {
                q[j as usize] |= sc;
                q[j as usize + 4] |= m;
            } else {
                let j = j as usize;
                q[j + 4] |= (sc & 0x0f) | ((m & 0x0f) << 4);
                q[j - 4] |= (sc >> 4) << 6;
                q[j] |= (m >> 4) << 6;
            }
        }
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &q), (j as u8 + 1, 40 + j as u8));
        }
    }

    #[test]
    fn q4k_known_block() {
        // d = 1, dmin = 0.5, every scale 1 and min 2 (j < 4 bytes give sub-blocks 0-3; the high
        // sub-blocks take nibbles of bytes 8-11): x = q - 1.
        let mut scales = [0u8; 12];
        scales[..4].fill(1);
        scales[4..8].fill(2);
        scales[8..].fill(0x21);
        let mut qs = [0u8; 128];
        for (l, q) in qs.iter_mut().enumerate() {
            *q = (l % 16) as u8 | ((15 - l % 16) as u8) << 4;
        }
        let block = BlockQ4K {
            d: 0x3c00u16.to_le_bytes(),
            dmin: 0x3800u16.to_le_bytes(),
            scales,
            qs,
        };
        let mut y = [0f32; 256];
        block.to_f32(&mut y);
        for k in 0..4 {
            for l in 0..32 {
                assert_eq!(y[64 * k + l], (l % 16) as f32 - 1.0);
                assert_eq!(y[64 * k + 32 + l], (15 - l % 16) as f32 - 1.0);
            }
        }
    }

    #[test]
    fn q3k_scales_unpack() {
        let mut block = BlockQ3K {
            hmask: [0; 32],
            qs: [0; 64],
            scales: [0; 12],
            d: [0; 2],
        };
        block.scales = [
            0x10,
            0x32,
            0x54,
            0x76,
            0x98,
            0xba,
            0xdc,
            0xfe,
            0b11_10_01_00,
            0,
            0,
            0,
        ];
        let s = block.unpacked_scales();
        assert_eq!(&s[..8], &[0x00, 0x02, 0x04, 0x06, 0x18, 0x0a, 0x0c, 0x0e]);
        assert_eq!(s[8], 0x01 | (2 << 4));
        assert_eq!(s[9], 0x03);
        assert_eq!(s[12], 0x09 | (3 << 4));
    }
}
