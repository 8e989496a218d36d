//! The plain twins: one obvious loop per weight type, the reference every SIMD kernel is held to.
//!
//! Each block's weights are unpacked to small integers in value order, dotted with the i8
//! activations exactly in i32 (no sum can overflow: the largest, Q6_K's, is below 2^28), and
//! only then scaled: `sum += (d_w * d_a) * isum` per block, minus the min term for the types
//! that have one. ggml's generic code computes the same integers; its float order differs
//! slightly between types, and is not needed bit for bit.

use super::{ActRow, DotFn, QK8_0, QK_K};
use crate::tensor::quants::float::{bf16_to_f32, f16_to_f32, BlockBf16, BlockF16, BlockF32};
use crate::tensor::quants::iq::{BlockIq4Nl, BlockIq4Xs, KVALUES_IQ4NL};
use crate::tensor::quants::k_quants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, BlockQ8K};
use crate::tensor::quants::legacy::{
    BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, BlockQ8_1,
};
use crate::tensor::quants::mxfp4::{e8m0_to_f32_half, BlockMxfp4, KVALUES_MXFP4};
use crate::tensor::quants::{as_blocks, Block};
use crate::tensor::GgmlType;

/// The plain kernel for any supported type.
pub(super) fn kernel(ty: GgmlType) -> DotFn {
    use GgmlType::*;
    match ty {
        F32 => f32_row,
        F16 => f16_row,
        Bf16 => bf16_row,
        Q4_0 => q4_0,
        Q4_1 => q4_1,
        Q5_0 => q5_0,
        Q5_1 => q5_1,
        Q8_0 => q8_0,
        Iq4Nl => iq4_nl,
        Mxfp4 => mxfp4,
        Q2K => q2_k,
        Q3K => q3_k,
        Q4K => q4_k,
        Q5K => q5_k,
        Q6K => q6_k,
        Iq4Xs => iq4_xs,
        Q8_1 => fallback::<BlockQ8_1>,
        Q8K => fallback::<BlockQ8K>,
        Other(_) => panic!("no kernel for unsupported type {ty}"),
    }
}

/// Exact integer dot of two equal-length i8 runs.
fn idot(w: &[i8], y: &[i8]) -> i32 {
    w.iter().zip(y).map(|(&a, &b)| a as i32 * b as i32).sum()
}

/// Blocks of 32 i8 activations with their scales.
fn q8_blocks<'a>(a: &ActRow<'a>) -> impl Iterator<Item = (&'a [i8; QK8_0], f32)> {
    a.qs.as_chunks::<QK8_0>().0.iter().zip(a.d.iter().copied())
}

/// Blocks of 256 i8 activations with their scale and 16-value sums.
fn q8k_blocks<'a>(a: &ActRow<'a>) -> impl Iterator<Item = (&'a [i8; QK_K], f32, &'a [i16])> {
    a.qs.as_chunks::<QK_K>()
        .0
        .iter()
        .zip(a.d.iter().copied())
        .zip(a.bsums.chunks_exact(16))
        .map(|((q, d), s)| (q, d, s))
}

/// 16 nibbles to 32 values: low nibbles first, then high ones (Q4_0's layout), each mapped.
fn nibbles(qs: &[u8; 16], map: impl Fn(u8) -> i8) -> [i8; 32] {
    std::array::from_fn(|j| {
        map(if j < 16 {
            qs[j] & 0x0f
        } else {
            qs[j - 16] >> 4
        })
    })
}

/// Q5_0/Q5_1's 5-bit values 0..32: nibbles plus bit j of `qh` as bit 4.
fn five_bits(qs: &[u8; 16], qh: [u8; 4]) -> [i8; 32] {
    let qh = u32::from_le_bytes(qh);
    let low = nibbles(qs, |q| q as i8);
    std::array::from_fn(|j| low[j] | (((qh >> j) & 1) << 4) as i8)
}

pub(super) fn q4_0(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sum = 0.0f32;
    for (b, (y, dy)) in as_blocks::<BlockQ4_0>(w).iter().zip(q8_blocks(a)) {
        let isum = idot(&nibbles(&b.qs, |q| q as i8 - 8), y);
        sum += (f16_to_f32(b.d) * dy) * isum as f32;
    }
    sum
}

pub(super) fn q4_1(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sum = 0.0f32;
    for ((b, (y, dy)), &s) in as_blocks::<BlockQ4_1>(w).iter().zip(q8_blocks(a)).zip(a.s) {
        let isum = idot(&nibbles(&b.qs, |q| q as i8), y);
        sum += (f16_to_f32(b.d) * dy) * isum as f32 + f16_to_f32(b.m) * s;
    }
    sum
}

pub(super) fn q5_0(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sum = 0.0f32;
    for (b, (y, dy)) in as_blocks::<BlockQ5_0>(w).iter().zip(q8_blocks(a)) {
        let q = five_bits(&b.qs, b.qh).map(|v| v - 16);
        sum += (f16_to_f32(b.d) * dy) * idot(&q, y) as f32;
    }
    sum
}

pub(super) fn q5_1(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sum = 0.0f32;
    for ((b, (y, dy)), &s) in as_blocks::<BlockQ5_1>(w).iter().zip(q8_blocks(a)).zip(a.s) {
        let isum = idot(&five_bits(&b.qs, b.qh), y);
        sum += (f16_to_f32(b.d) * dy) * isum as f32 + f16_to_f32(b.m) * s;
    }
    sum
}

pub(super) fn q8_0(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sum = 0.0f32;
    for (b, (y, dy)) in as_blocks::<BlockQ8_0>(w).iter().zip(q8_blocks(a)) {
        let q = b.qs.map(|v| v as i8);
        sum += (f16_to_f32(b.d) * dy) * idot(&q, y) as f32;
    }
    sum
}

pub(super) fn iq4_nl(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sum = 0.0f32;
    for (b, (y, dy)) in as_blocks::<BlockIq4Nl>(w).iter().zip(q8_blocks(a)) {
        let q = nibbles(&b.qs, |v| KVALUES_IQ4NL[v as usize]);
        sum += (f16_to_f32(b.d) * dy) * idot(&q, y) as f32;
    }
    sum
}

pub(super) fn mxfp4(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sum = 0.0f32;
    for (b, (y, dy)) in as_blocks::<BlockMxfp4>(w).iter().zip(q8_blocks(a)) {
        let q = nibbles(&b.qs, |v| KVALUES_MXFP4[v as usize]);
        sum += (e8m0_to_f32_half(b.e) * dy) * idot(&q, y) as f32;
    }
    sum
}

/// Q2_K: 2-bit values in value order, 16 (scale, min) nibble pairs.
pub(super) fn q2_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sum = 0.0f32;
    for (b, (y, dy, bsums)) in as_blocks::<BlockQ2K>(w).iter().zip(q8k_blocks(a)) {
        // Value 128h + 32s + l is bits 2s..2s+2 of qs[32h + l].
        let q: [i8; QK_K] = std::array::from_fn(|v| {
            let (h, s, l) = (v / 128, (v / 32) % 4, v % 32);
            ((b.qs[32 * h + l] >> (2 * s)) & 3) as i8
        });
        let isum: i32 = (0..16)
            .map(|j| (b.scales[j] & 0x0f) as i32 * idot(&q[16 * j..16 * j + 16], &y[16 * j..]))
            .sum();
        let summs: i32 = (0..16)
            .map(|j| bsums[j] as i32 * (b.scales[j] >> 4) as i32)
            .sum();
        sum += (f16_to_f32(b.d) * dy) * isum as f32 - (f16_to_f32(b.dmin) * dy) * summs as f32;
    }
    sum
}

/// Q3_K's 16 six-bit scales, offset by -32.
pub(super) fn q3_k_scales(s: &[u8; 12]) -> [i8; 16] {
    std::array::from_fn(|i| {
        let low = if i < 8 { s[i] & 0x0f } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        (low | (high << 4)) as i8 - 32
    })
}

pub(super) fn q3_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sum = 0.0f32;
    for (b, (y, dy, _)) in as_blocks::<BlockQ3K>(w).iter().zip(q8k_blocks(a)) {
        // Value 128h + 32s + l: bits 2s..2s+2 of qs[32h + l], minus 4 unless bit 4h + s of
        // hmask[l] is set.
        let q: [i8; QK_K] = std::array::from_fn(|v| {
            let (h, s, l) = (v / 128, (v / 32) % 4, v % 32);
            let low = ((b.qs[32 * h + l] >> (2 * s)) & 3) as i8;
            let high = b.hmask[l] & (1 << (4 * h + s)) != 0;
            low - if high { 0 } else { 4 }
        });
        let sc = q3_k_scales(&b.scales);
        let isum: i32 = (0..16)
            .map(|j| sc[j] as i32 * idot(&q[16 * j..16 * j + 16], &y[16 * j..]))
            .sum();
        sum += (f16_to_f32(b.d) * dy) * isum as f32;
    }
    sum
}

/// Q4_K/Q5_K's 8 six-bit (scale, min) pairs from their 12 packed bytes.
pub(super) fn k4_scales_mins(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut m = [0u8; 8];
    for j in 0..8 {
        (sc[j], m[j]) = if j < 4 {
            (s[j] & 63, s[j + 4] & 63)
        } else {
            (
                (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
                (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
            )
        };
    }
    (sc, m)
}

/// [`k4_scales_mins`] with 32-bit masks (ggml's `utmp` trick), for the SIMD kernels: a dozen
/// integer operations instead of a loop.
pub(super) fn k4_scales_mins_packed(s: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let word = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (u0, u1, u2) = (word(0), word(1), word(2));
    let sc_lo = u0 & 0x3f3f_3f3f;
    let m_lo = u1 & 0x3f3f_3f3f;
    let sc_hi = (u2 & 0x0f0f_0f0f) | (((u0 >> 6) & 0x0303_0303) << 4);
    let m_hi = ((u2 >> 4) & 0x0f0f_0f0f) | (((u1 >> 6) & 0x0303_0303) << 4);
    let join = |lo: u32, hi: u32| ((lo as u64) | ((hi as u64) << 32)).to_le_bytes();
    (join(sc_lo, sc_hi), join(m_lo, m_hi))
}

/// The k-quant sum for 8 sub-blocks of 32 with unsigned values and (scale, min) pairs.
fn k4_sum(
    q: &[i8; QK_K],
    (sc, m): ([u8; 8], [u8; 8]),
    (d, dmin): (f32, f32),
    (y, dy, bsums): (&[i8; QK_K], f32, &[i16]),
) -> f32 {
    let isum: i32 = (0..8)
        .map(|j| sc[j] as i32 * idot(&q[32 * j..32 * j + 32], &y[32 * j..]))
        .sum();
    let summs: i32 = (0..8)
        .map(|j| m[j] as i32 * (bsums[2 * j] as i32 + bsums[2 * j + 1] as i32))
        .sum();
    (d * dy) * isum as f32 - (dmin * dy) * summs as f32
}

pub(super) fn q4_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sum = 0.0f32;
    for (b, act) in as_blocks::<BlockQ4K>(w).iter().zip(q8k_blocks(a)) {
        // Value 64c + l is the low nibble of qs[32c + l] for l < 32, else the high one.
        let q: [i8; QK_K] = std::array::from_fn(|v| {
            let (c, l) = (v / 64, v % 64);
            let byte = b.qs[32 * c + l % 32];
            (if l < 32 { byte & 0x0f } else { byte >> 4 }) as i8
        });
        let scales = k4_scales_mins(&b.scales);
        sum += k4_sum(&q, scales, (f16_to_f32(b.d), f16_to_f32(b.dmin)), act);
    }
    sum
}

pub(super) fn q5_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sum = 0.0f32;
    for (b, act) in as_blocks::<BlockQ5K>(w).iter().zip(q8k_blocks(a)) {
        // As Q4_K, plus bit 2c (l < 32) or 2c + 1 (l >= 32) of qh[l % 32] as bit 4.
        let q: [i8; QK_K] = std::array::from_fn(|v| {
            let (c, l) = (v / 64, v % 64);
            let byte = b.qs[32 * c + l % 32];
            let low = if l < 32 { byte & 0x0f } else { byte >> 4 };
            let high = (b.qh[l % 32] >> (2 * c + l / 32)) & 1;
            (low | (high << 4)) as i8
        });
        let scales = k4_scales_mins(&b.scales);
        sum += k4_sum(&q, scales, (f16_to_f32(b.d), f16_to_f32(b.dmin)), act);
    }
    sum
}

pub(super) fn q6_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sum = 0.0f32;
    for (b, (y, dy, _)) in as_blocks::<BlockQ6K>(w).iter().zip(q8k_blocks(a)) {
        // Value 128h + 32s + l: a nibble of ql[64h + 32(s % 2) + l] (high for s >= 2), plus
        // bits 2s..2s+2 of qh[32h + l] as bits 4-5; minus 32.
        let q: [i8; QK_K] = std::array::from_fn(|v| {
            let (h, s, l) = (v / 128, (v / 32) % 4, v % 32);
            let byte = b.ql[64 * h + 32 * (s % 2) + l];
            let low = if s < 2 { byte & 0x0f } else { byte >> 4 };
            let high = (b.qh[32 * h + l] >> (2 * s)) & 3;
            (low | (high << 4)) as i8 - 32
        });
        let isum: i32 = (0..16)
            .map(|j| b.scales[j] as i8 as i32 * idot(&q[16 * j..16 * j + 16], &y[16 * j..]))
            .sum();
        sum += (f16_to_f32(b.d) * dy) * isum as f32;
    }
    sum
}

/// IQ4_XS's 8 six-bit scales, offset by -32.
pub(super) fn iq4_xs_scales(b: &BlockIq4Xs) -> [i8; 8] {
    let h = u16::from_le_bytes(b.scales_h);
    std::array::from_fn(|ib| {
        let low = (b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0f;
        let high = ((h >> (2 * ib)) & 3) as u8;
        (low | (high << 4)) as i8 - 32
    })
}

pub(super) fn iq4_xs(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sum = 0.0f32;
    for (b, (y, dy, _)) in as_blocks::<BlockIq4Xs>(w).iter().zip(q8k_blocks(a)) {
        let ls = iq4_xs_scales(b);
        let isum: i32 = (0..8)
            .map(|ib| {
                let qs: &[u8; 16] = b.qs[16 * ib..16 * ib + 16].try_into().unwrap();
                let q = nibbles(qs, |v| KVALUES_IQ4NL[v as usize]);
                ls[ib] as i32 * idot(&q, &y[32 * ib..])
            })
            .sum();
        sum += (f16_to_f32(b.d) * dy) * isum as f32;
    }
    sum
}

/// f32 dot with eight interleaved partial sums, as `kernels::matmul::dot`.
fn dot_f32(w: impl Iterator<Item = f32>, x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    for (i, (w, &x)) in w.zip(x).enumerate() {
        acc[i % 8] += w * x;
    }
    let s4 = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (s4[0] + s4[2]) + (s4[1] + s4[3])
}

pub(super) fn f32_row(w: &[u8], a: &ActRow<'_>) -> f32 {
    let w = as_blocks::<BlockF32>(w)
        .iter()
        .map(|b| f32::from_le_bytes(b.bits));
    dot_f32(w, a.f)
}

pub(super) fn f16_row(w: &[u8], a: &ActRow<'_>) -> f32 {
    dot_f32(
        as_blocks::<BlockF16>(w).iter().map(|b| f16_to_f32(b.bits)),
        a.f,
    )
}

pub(super) fn bf16_row(w: &[u8], a: &ActRow<'_>) -> f32 {
    let w = as_blocks::<BlockBf16>(w)
        .iter()
        .map(|b| bf16_to_f32(u16::from_le_bytes(b.bits)));
    dot_f32(w, a.f)
}

/// Any other type: decode each block to f32 and dot with the f32 activations.
pub(super) fn fallback<B: Block>(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut buf = [0.0f32; QK_K];
    let buf = &mut buf[..B::QK];
    let mut sum = 0.0f32;
    for (b, x) in as_blocks::<B>(w).iter().zip(a.f.chunks_exact(B::QK)) {
        b.to_f32(buf);
        sum += dot_f32(buf.iter().copied(), x);
    }
    sum
}
