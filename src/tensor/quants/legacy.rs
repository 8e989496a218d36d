//! ggml's original 32-value block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1. One f16 scale
//! (and for the `_1` types an f16 offset) per block of 32 values.
//!
//! The encoders follow ggml's `quantize_row_*_ref` step by step, including its comparisons
//! (which decide what a NaN input does) and its float-to-int casts ([`c_float_to_int`]).

use super::float::{f16_to_f32, f32_to_f16_bits};
use super::{assert_block_size, c_float_to_int, Block, Quantize};
use crate::tensor::GgmlType;

const QK: usize = 32;

fn f16_bytes(x: f32) -> [u8; 2] {
    f32_to_f16_bits(x).to_le_bytes()
}

/// (largest magnitude, the signed value that has it), the first one on ties; NaNs ignored.
fn signed_absmax(x: &[f32]) -> (f32, f32) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    (amax, max)
}

/// (min, max) with ggml's comparisons: a NaN never replaces a bound.
fn min_max(x: &[f32]) -> (f32, f32) {
    let (mut min, mut max) = (f32::MAX, -f32::MAX);
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// ggml's `d ? 1.0f/d : 0.0f` (a NaN `d` counts as true).
fn inverse_or_zero(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// x = d * (q - 8), q in 0..16; `qs[j]` holds values j (low nibble) and j + 16 (high nibble).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; QK / 2],
}
assert_block_size!(BlockQ4_0, 18);

// SAFETY: repr(C), byte arrays only.
unsafe impl Block for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const QK: usize = QK;
    fn to_f32(&self, out: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for j in 0..QK / 2 {
            let x0 = (self.qs[j] & 0x0f) as i32 - 8;
            let x1 = (self.qs[j] >> 4) as i32 - 8;
            out[j] = x0 as f32 * d;
            out[j + QK / 2] = x1 as f32 * d;
        }
    }
}

impl Quantize for BlockQ4_0 {
    fn from_f32(x: &[f32]) -> Self {
        let (_, max) = signed_absmax(x);
        let d = max / -8.0;
        let id = inverse_or_zero(d);
        let mut qs = [0u8; QK / 2];
        for j in 0..QK / 2 {
            let xi0 = (c_float_to_int(x[j] * id + 8.5) as i8).min(15) as u8;
            let xi1 = (c_float_to_int(x[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
            qs[j] = xi0 | (xi1 << 4);
        }
        BlockQ4_0 {
            d: f16_bytes(d),
            qs,
        }
    }
}

/// x = d * q + m, q in 0..16.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; QK / 2],
}
assert_block_size!(BlockQ4_1, 20);

// SAFETY: repr(C), byte arrays only.
unsafe impl Block for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const QK: usize = QK;
    fn to_f32(&self, out: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let m = f16_to_f32(self.m);
        for j in 0..QK / 2 {
            let x0 = (self.qs[j] & 0x0f) as f32;
            let x1 = (self.qs[j] >> 4) as f32;
            out[j] = x0 * d + m;
            out[j + QK / 2] = x1 * d + m;
        }
    }
}

impl Quantize for BlockQ4_1 {
    fn from_f32(x: &[f32]) -> Self {
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0;
        let id = inverse_or_zero(d);
        let mut qs = [0u8; QK / 2];
        for j in 0..QK / 2 {
            let xi0 = (c_float_to_int((x[j] - min) * id + 0.5) as i8).min(15) as u8;
            let xi1 = (c_float_to_int((x[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
            qs[j] = xi0 | (xi1 << 4);
        }
        BlockQ4_1 {
            d: f16_bytes(d),
            m: f16_bytes(min),
            qs,
        }
    }
}

/// x = d * (q - 16), q in 0..32: low four bits in `qs` as in Q4_0, bit 4 of value j in bit j of
/// the little-endian u32 `qh`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
assert_block_size!(BlockQ5_0, 22);

/// The fifth bits of values j and j + 16, already shifted to 0x10.
fn high_bits(qh: u32, j: usize) -> (u8, u8) {
    let h0 = ((qh >> j) << 4) & 0x10;
    let h1 = (qh >> (j + 12)) & 0x10;
    (h0 as u8, h1 as u8)
}

// SAFETY: repr(C), byte arrays only.
unsafe impl Block for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const QK: usize = QK;
    fn to_f32(&self, out: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..QK / 2 {
            let (h0, h1) = high_bits(qh, j);
            let x0 = ((self.qs[j] & 0x0f) | h0) as i32 - 16;
            let x1 = ((self.qs[j] >> 4) | h1) as i32 - 16;
            out[j] = x0 as f32 * d;
            out[j + QK / 2] = x1 as f32 * d;
        }
    }
}

impl Quantize for BlockQ5_0 {
    fn from_f32(x: &[f32]) -> Self {
        let (_, max) = signed_absmax(x);
        let d = max / -16.0;
        let id = inverse_or_zero(d);
        let mut qs = [0u8; QK / 2];
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            let xi0 = (c_float_to_int(x[j] * id + 16.5) as i8).min(31) as u8;
            let xi1 = (c_float_to_int(x[j + QK / 2] * id + 16.5) as i8).min(31) as u8;
            qs[j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
            qh |= (((xi0 & 0x10) >> 4) as u32) << j;
            qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK / 2);
        }
        BlockQ5_0 {
            d: f16_bytes(d),
            qh: qh.to_le_bytes(),
            qs,
        }
    }
}

/// x = d * q + m, q in 0..32, bits laid out as in Q5_0.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
assert_block_size!(BlockQ5_1, 24);

// SAFETY: repr(C), byte arrays only.
unsafe impl Block for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const QK: usize = QK;
    fn to_f32(&self, out: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let m = f16_to_f32(self.m);
        let qh = u32::from_le_bytes(self.qh);
        for j in 0..QK / 2 {
            let (h0, h1) = high_bits(qh, j);
            let x0 = ((self.qs[j] & 0x0f) | h0) as f32;
            let x1 = ((self.qs[j] >> 4) | h1) as f32;
            out[j] = x0 * d + m;
            out[j + QK / 2] = x1 * d + m;
        }
    }
}

impl Quantize for BlockQ5_1 {
    fn from_f32(x: &[f32]) -> Self {
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0;
        let id = inverse_or_zero(d);
        let mut qs = [0u8; QK / 2];
        let mut qh = 0u32;
        for j in 0..QK / 2 {
            // ggml casts straight to uint8_t here, without clamping to 31.
            let xi0 = c_float_to_int((x[j] - min) * id + 0.5) as u8;
            let xi1 = c_float_to_int((x[j + QK / 2] - min) * id + 0.5) as u8;
            qs[j] = (xi0 & 0x0f) | ((xi1 & 0x0f) << 4);
            qh |= (((xi0 & 0x10) >> 4) as u32) << j;
            qh |= (((xi1 & 0x10) >> 4) as u32) << (j + QK / 2);
        }
        BlockQ5_1 {
            d: f16_bytes(d),
            m: f16_bytes(min),
            qh: qh.to_le_bytes(),
            qs,
        }
    }
}

/// x = d * q, q an i8.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [u8; QK],
}
assert_block_size!(BlockQ8_0, 34);

/// ggml's `amax = MAX(amax, fabsf(v))`, i.e. `amax > |v| ? amax : |v|`: a NaN replaces amax, and
/// the next value replaces the NaN.
fn absmax(x: &[f32]) -> f32 {
    x.iter().fold(
        0.0f32,
        |amax, v| if amax > v.abs() { amax } else { v.abs() },
    )
}

/// The i8 quants and scale of Q8_0 and Q8_1. Also the activation quantizer of every Q8_0 / Q8_1
/// dot product (a few per weight matrix and token), so the usual case avoids `roundf`, which
/// is a library call on baseline x86-64 (it took a third of the quantizer's time).
fn quantize_q8(x: &[f32]) -> (f32, [u8; QK]) {
    let amax = absmax(x);
    let d = amax / 127.0;
    let id = inverse_or_zero(d);
    let mut qs = [0u8; QK];
    if amax.is_finite() && id.is_finite() {
        // Every |v * id| is at most about 127 here, where `round_half_away` is exact.
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = round_half_away(v * id) as u8;
        }
    } else {
        quantize_q8_ref(x, id, &mut qs);
    }
    (d, qs)
}

/// ggml's `roundf` then cast, for any input (NaN, infinities).
fn quantize_q8_ref(x: &[f32], id: f32, qs: &mut [u8; QK]) {
    for (q, &v) in qs.iter_mut().zip(x) {
        *q = c_float_to_int((v * id).round()) as u8;
    }
}

/// `y.round() as i32` (halves away from zero) for |y| < 2^22, without a library call: the
/// truncation is exact, and so is the fraction `y - trunc(y)`. Branch-free, so loops over it
/// vectorise on any x86-64.
#[inline]
fn round_half_away(y: f32) -> i32 {
    let t = y as i32;
    let frac = y - t as f32;
    t + (frac >= 0.5) as i32 - (frac <= -0.5) as i32
}

// SAFETY: repr(C), byte arrays only.
unsafe impl Block for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const QK: usize = QK;
    fn to_f32(&self, out: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for (y, &q) in out.iter_mut().zip(&self.qs) {
            *y = (q as i8) as f32 * d;
        }
    }
}

impl Quantize for BlockQ8_0 {
    fn from_f32(x: &[f32]) -> Self {
        let (d, qs) = quantize_q8(x);
        BlockQ8_0 {
            d: f16_bytes(d),
            qs,
        }
    }
}

/// Q8_0 plus `s = d * sum(q)`, the activation type of Q4_1/Q5_1 dot products. ggml has no
/// decoder for it; this one decodes like Q8_0 and ignores `s`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BlockQ8_1 {
    pub d: [u8; 2],
    pub s: [u8; 2],
    pub qs: [u8; QK],
}
assert_block_size!(BlockQ8_1, 36);

// SAFETY: repr(C), byte arrays only.
unsafe impl Block for BlockQ8_1 {
    const TYPE: GgmlType = GgmlType::Q8_1;
    const QK: usize = QK;
    fn to_f32(&self, out: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for (y, &q) in out.iter_mut().zip(&self.qs) {
            *y = (q as i8) as f32 * d;
        }
    }
}

impl Quantize for BlockQ8_1 {
    fn from_f32(x: &[f32]) -> Self {
        let (d, qs) = quantize_q8(x);
        let sum: i32 = qs.iter().map(|&q| q as i8 as i32).sum();
        BlockQ8_1 {
            d: f16_bytes(d),
            s: f16_bytes(sum as f32 * d),
            qs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<B: Quantize>(x: &[f32]) -> Vec<f32> {
        let block = B::from_f32(x);
        let mut y = vec![0.0; B::QK];
        block.to_f32(&mut y);
        y
    }

    fn ramp() -> Vec<f32> {
        (0..32).map(|i| (i as f32 - 12.5) * 0.37).collect()
    }

    /// Largest error over the block, relative to the block's largest magnitude.
    fn max_rel_err(x: &[f32], y: &[f32]) -> f32 {
        let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
        x.iter()
            .zip(y)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max)
            / amax
    }

    #[test]
    fn round_trips_within_step() {
        let x = ramp();
        // Half a quantization step, plus the f16 rounding of the scale.
        assert!(max_rel_err(&x, &round_trip::<BlockQ4_0>(&x)) <= 1.0 / 16.0 + 1e-3);
        assert!(max_rel_err(&x, &round_trip::<BlockQ4_1>(&x)) <= 1.0 / 15.0 + 1e-3);
        assert!(max_rel_err(&x, &round_trip::<BlockQ5_0>(&x)) <= 1.0 / 32.0 + 1e-3);
        assert!(max_rel_err(&x, &round_trip::<BlockQ5_1>(&x)) <= 1.0 / 31.0 + 1e-3);
        assert!(max_rel_err(&x, &round_trip::<BlockQ8_0>(&x)) <= 1.0 / 254.0 + 1e-3);
        assert!(max_rel_err(&x, &round_trip::<BlockQ8_1>(&x)) <= 1.0 / 254.0 + 1e-3);
    }

    #[test]
    fn fast_q8_rounding_equals_roundf() {
        let mut rng = crate::rng::Rng::new(7);
        // Halves, values next to halves, and random blocks at many scales.
        let mut ys: Vec<f32> = (-300..300).map(|i| i as f32 * 0.5).collect();
        for &y in &ys.clone() {
            ys.push(f32::from_bits(y.to_bits() + 1));
            ys.push(f32::from_bits(y.to_bits().wrapping_sub(1)));
        }
        for y in ys.iter().filter(|y| y.abs() < 4194304.0) {
            assert_eq!(round_half_away(*y), y.round() as i32, "{y}");
        }
        // 1e-37: the scale is subnormal and its inverse infinite (the reference path).
        for scale in [1e-37f32, 1e-30, 1e-3, 1.0, 7.5, 1e4, 1e30] {
            for _ in 0..200 {
                let x = rng.vec(32, scale);
                let (d, qs) = quantize_q8(&x);
                let mut want = [0u8; QK];
                quantize_q8_ref(&x, inverse_or_zero(d), &mut want);
                assert_eq!(qs, want);
            }
        }
        for bad in [f32::NAN, f32::INFINITY, 1e-45] {
            let mut x = vec![0.25f32; 32];
            x[3] = bad;
            let (d, qs) = quantize_q8(&x);
            let mut want = [0u8; QK];
            quantize_q8_ref(&x, inverse_or_zero(d), &mut want);
            assert_eq!(qs, want, "{bad}");
        }
    }

    #[test]
    fn zeros_stay_zero() {
        let x = [0.0f32; 32];
        for y in [
            round_trip::<BlockQ4_0>(&x),
            round_trip::<BlockQ4_1>(&x),
            round_trip::<BlockQ5_0>(&x),
            round_trip::<BlockQ5_1>(&x),
            round_trip::<BlockQ8_0>(&x),
        ] {
            assert!(y.iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn known_q4_0_block() {
        // d = 0.5 (f16 0x3800); value j = j - 8 in the low nibbles, 7 - j in the high ones.
        let mut qs = [0u8; 16];
        for (j, q) in qs.iter_mut().enumerate() {
            *q = (j as u8) | ((15 - j as u8) << 4);
        }
        let block = BlockQ4_0 {
            d: 0x3800u16.to_le_bytes(),
            qs,
        };
        let mut y = [0f32; 32];
        block.to_f32(&mut y);
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(y[j + 16], (7.0 - j as f32) * 0.5);
        }
    }

    #[test]
    fn known_q5_1_block() {
        // d = 1, m = -2, every fifth bit set: values 16..32 - 2.
        let mut qs = [0u8; 16];
        for (j, q) in qs.iter_mut().enumerate() {
            *q = (j as u8) | ((j as u8) << 4);
        }
        let block = BlockQ5_1 {
            d: 0x3c00u16.to_le_bytes(),
            m: 0xc000u16.to_le_bytes(),
            qh: [0xff; 4],
            qs,
        };
        let mut y = [0f32; 32];
        block.to_f32(&mut y);
        for j in 0..16 {
            assert_eq!(y[j], 16.0 + j as f32 - 2.0);
            assert_eq!(y[j + 16], 16.0 + j as f32 - 2.0);
        }
    }

    #[test]
    fn q8_0_known_block() {
        let mut x = [0f32; 32];
        x[3] = -127.0;
        x[4] = 63.5;
        let block = BlockQ8_0::from_f32(&x);
        assert_eq!(u16::from_le_bytes(block.d), 0x3c00);
        assert_eq!(block.qs[3] as i8, -127);
        assert_eq!(block.qs[4] as i8, 64);
    }
}
