//! AArch64 Advanced SIMD (NEON) kernels, baseline instructions only (no `dotprod`, so they run
//! on every aarch64 CPU): `vmull_s8` widens 8 products to i16 (at most 128 * 127, no overflow)
//! and `vpadalq_s16` adds pairs of them into i32 lanes. Weights are unpacked to i8 in value
//! order, so each block's lanes add up to exactly the plain twin's integer sum; the float
//! accumulation order differs. F16 rows use the plain kernel.
//!
//! Every function here needs NEON; the dispatcher calls them only after detecting it.

use std::arch::aarch64::*;

use super::plain::{iq4_xs_scales, k4_scales_mins_packed};
use super::{ActRow, DotFn, QK8_0, QK_K};
use crate::tensor::quants::as_blocks;
use crate::tensor::quants::float::{f16_to_f32, BlockBf16, BlockF32};
use crate::tensor::quants::iq::{BlockIq4Nl, BlockIq4Xs, KVALUES_IQ4NL};
use crate::tensor::quants::k_quants::{BlockQ4K, BlockQ5K, BlockQ6K};
use crate::tensor::quants::legacy::{BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0};
use crate::tensor::quants::mxfp4::{e8m0_to_f32_half, BlockMxfp4, KVALUES_MXFP4};
use crate::tensor::GgmlType;

pub(super) fn kernel(ty: GgmlType) -> Option<DotFn> {
    use GgmlType::*;
    Some(match ty {
        Q4_0 => q4_0,
        Q4_1 => q4_1,
        Q5_0 => q5_0,
        Q5_1 => q5_1,
        Q8_0 => q8_0,
        Iq4Nl => iq4_nl,
        Mxfp4 => mxfp4,
        Q4K => q4_k,
        Q5K => q5_k,
        Q6K => q6_k,
        Iq4Xs => iq4_xs,
        F32 => f32_row,
        Bf16 => bf16_row,
        _ => return None,
    })
}

#[inline(always)]
unsafe fn ld_u8(p: &[u8; 16]) -> uint8x16_t {
    // SAFETY: 16 readable bytes; vld1q has no alignment requirement beyond the element's.
    unsafe { vld1q_u8(p.as_ptr()) }
}

#[inline(always)]
unsafe fn ld_s8(p: &[i8; 16]) -> int8x16_t {
    // SAFETY: as above.
    unsafe { vld1q_s8(p.as_ptr()) }
}

/// `acc` plus the 16 products `a * b`, pairwise widened into 4 i32 lanes.
#[inline(always)]
unsafe fn dot16(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    unsafe {
        let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let hi = vmull_high_s8(a, b);
        vpadalq_s16(vpadalq_s16(acc, lo), hi)
    }
}

/// Exact `sum(w * y)` over 32 values given as two halves.
#[inline(always)]
unsafe fn dot32(w: [int8x16_t; 2], y: &[i8; 32]) -> int32x4_t {
    unsafe {
        let (y0, y1) = y.split_at(16);
        let acc = dot16(vdupq_n_s32(0), w[0], ld_s8(y0.try_into().unwrap()));
        dot16(acc, w[1], ld_s8(y1.try_into().unwrap()))
    }
}

/// 16 bytes of nibbles as 32 values: low nibbles, then high ones.
#[inline(always)]
unsafe fn nibbles(qs: &[u8; 16]) -> [uint8x16_t; 2] {
    unsafe {
        let q = ld_u8(qs);
        [vandq_u8(q, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(q)]
    }
}

#[inline(always)]
unsafe fn signed(v: [uint8x16_t; 2]) -> [int8x16_t; 2] {
    unsafe { [vreinterpretq_s8_u8(v[0]), vreinterpretq_s8_u8(v[1])] }
}

/// 0x10 in the bytes whose bit is set in `qh` (bit j for value j), for values 0..16 and 16..32.
#[inline(always)]
unsafe fn fifth_bits(qh: [u8; 4]) -> [uint8x16_t; 2] {
    unsafe {
        let bit = vld1q_u8([1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128].as_ptr());
        let spread = |a: u8, b: u8| vcombine_u8(vdup_n_u8(a), vdup_n_u8(b));
        let h0 = vtstq_u8(spread(qh[0], qh[1]), bit);
        let h1 = vtstq_u8(spread(qh[2], qh[3]), bit);
        let m = vdupq_n_u8(0x10);
        [vandq_u8(h0, m), vandq_u8(h1, m)]
    }
}

/// Looks 32 nibbles up in a 16-entry table.
#[inline(always)]
unsafe fn lookup(qs: &[u8; 16], table: &[i8; 16]) -> [int8x16_t; 2] {
    unsafe {
        let t = ld_s8(table);
        let n = nibbles(qs);
        [vqtbl1q_s8(t, n[0]), vqtbl1q_s8(t, n[1])]
    }
}

/// `sum_b scale_b * isum_b` over 32-value blocks; `block` gives (weights as i8, weight scale).
macro_rules! dot_blocks32 {
    ($name:ident, $block:ty, |$b:ident| $weights:expr, $scale:expr) => {
        #[target_feature(enable = "neon")]
        unsafe fn $name(w: &[u8], a: &ActRow<'_>) -> f32 {
            let ys = a.qs.as_chunks::<QK8_0>().0;
            let mut acc = vdupq_n_f32(0.0);
            for (($b, y), &dy) in as_blocks::<$block>(w).iter().zip(ys).zip(a.d) {
                // SAFETY: this function's target feature is the helpers' requirement.
                unsafe {
                    let p = dot32($weights, y);
                    acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), $scale * dy);
                }
            }
            vaddvq_f32(acc)
        }
    };
}

dot_blocks32!(
    q4_0,
    BlockQ4_0,
    |b| {
        let [lo, hi] = signed(nibbles(&b.qs));
        let eight = vdupq_n_s8(8);
        [vsubq_s8(lo, eight), vsubq_s8(hi, eight)]
    },
    f16_to_f32(b.d)
);
dot_blocks32!(
    q5_0,
    BlockQ5_0,
    |b| {
        let (n, h) = (nibbles(&b.qs), fifth_bits(b.qh));
        let sixteen = vdupq_n_s8(16);
        let [lo, hi] = signed([vorrq_u8(n[0], h[0]), vorrq_u8(n[1], h[1])]);
        [vsubq_s8(lo, sixteen), vsubq_s8(hi, sixteen)]
    },
    f16_to_f32(b.d)
);
dot_blocks32!(
    q8_0,
    BlockQ8_0,
    |b| {
        let q = b.qs.as_chunks::<16>().0;
        signed([ld_u8(&q[0]), ld_u8(&q[1])])
    },
    f16_to_f32(b.d)
);
dot_blocks32!(
    iq4_nl,
    BlockIq4Nl,
    |b| lookup(&b.qs, &KVALUES_IQ4NL),
    f16_to_f32(b.d)
);
dot_blocks32!(
    mxfp4,
    BlockMxfp4,
    |b| lookup(&b.qs, &KVALUES_MXFP4),
    e8m0_to_f32_half(b.e)
);

/// Q4_1 / Q5_1: unsigned quants plus `m * s`.
macro_rules! dot_blocks32_min {
    ($name:ident, $block:ty, |$b:ident| $weights:expr) => {
        #[target_feature(enable = "neon")]
        unsafe fn $name(w: &[u8], a: &ActRow<'_>) -> f32 {
            let ys = a.qs.as_chunks::<QK8_0>().0;
            let mut acc = vdupq_n_f32(0.0);
            let mut min_sum = 0.0f32;
            for ((($b, y), &dy), &s) in as_blocks::<$block>(w).iter().zip(ys).zip(a.d).zip(a.s) {
                // SAFETY: this function's target feature is the helpers' requirement.
                unsafe {
                    let p = dot32(signed($weights), y);
                    acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), f16_to_f32($b.d) * dy);
                }
                min_sum += f16_to_f32($b.m) * s;
            }
            vaddvq_f32(acc) + min_sum
        }
    };
}

dot_blocks32_min!(q4_1, BlockQ4_1, |b| nibbles(&b.qs));
dot_blocks32_min!(q5_1, BlockQ5_1, |b| {
    let (n, h) = (nibbles(&b.qs), fifth_bits(b.qh));
    [vorrq_u8(n[0], h[0]), vorrq_u8(n[1], h[1])]
});

/// Q8_K super-blocks: 256 quants as sixteen runs of 16, scale, 16-value sums.
fn q8k_blocks<'a>(a: &ActRow<'a>) -> impl Iterator<Item = (&'a [[i8; 16]], f32, &'a [i16])> {
    a.qs.as_chunks::<QK_K>()
        .0
        .iter()
        .zip(a.d.iter().copied())
        .zip(a.bsums.chunks_exact(16))
        .map(|((q, d), s)| (q.as_chunks::<16>().0, d, s))
}

/// Q4_K and Q5_K (`qh` adds the fifth bits).
#[inline(always)]
unsafe fn k4(
    qs: &[u8; 128],
    qh: Option<&[u8; 32]>,
    scales: &[u8; 12],
    (y, bsums): (&[[i8; 16]], &[i16]),
) -> (i32, i32) {
    unsafe {
        let (sc, m) = k4_scales_mins_packed(scales);
        let summs: i32 = (0..8)
            .map(|j| m[j] as i32 * (bsums[2 * j] as i32 + bsums[2 * j + 1] as i32))
            .sum();
        let h = qh.map(|h| {
            let h = h.as_chunks::<16>().0;
            [ld_u8(&h[0]), ld_u8(&h[1])]
        });
        let mut isum = vdupq_n_s32(0);
        for (j, q) in qs.as_chunks::<16>().0.chunks_exact(2).enumerate() {
            let (b0, b1) = (ld_u8(&q[0]), ld_u8(&q[1]));
            let m4 = vdupq_n_u8(0x0f);
            let mut lo = [vandq_u8(b0, m4), vandq_u8(b1, m4)];
            let mut hi = [vshrq_n_u8::<4>(b0), vshrq_n_u8::<4>(b1)];
            if let Some(h) = h {
                let (bit_lo, bit_hi) = (vdupq_n_u8(1 << (2 * j)), vdupq_n_u8(2 << (2 * j)));
                let sixteen = vdupq_n_u8(0x10);
                for i in 0..2 {
                    lo[i] = vorrq_u8(lo[i], vandq_u8(vtstq_u8(h[i], bit_lo), sixteen));
                    hi[i] = vorrq_u8(hi[i], vandq_u8(vtstq_u8(h[i], bit_hi), sixteen));
                }
            }
            let mut p = dot16(vdupq_n_s32(0), vreinterpretq_s8_u8(lo[0]), ld_s8(&y[4 * j]));
            p = dot16(p, vreinterpretq_s8_u8(lo[1]), ld_s8(&y[4 * j + 1]));
            isum = vmlaq_n_s32(isum, p, sc[2 * j] as i32);
            let mut p = dot16(
                vdupq_n_s32(0),
                vreinterpretq_s8_u8(hi[0]),
                ld_s8(&y[4 * j + 2]),
            );
            p = dot16(p, vreinterpretq_s8_u8(hi[1]), ld_s8(&y[4 * j + 3]));
            isum = vmlaq_n_s32(isum, p, sc[2 * j + 1] as i32);
        }
        (vaddvq_s32(isum), summs)
    }
}

#[target_feature(enable = "neon")]
unsafe fn q4_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sum = 0.0f32;
    for (b, (y, dy, bsums)) in as_blocks::<BlockQ4K>(w).iter().zip(q8k_blocks(a)) {
        // SAFETY: this function's target feature is the helper's requirement.
        let (isum, summs) = unsafe { k4(&b.qs, None, &b.scales, (y, bsums)) };
        sum += (f16_to_f32(b.d) * dy) * isum as f32 - (f16_to_f32(b.dmin) * dy) * summs as f32;
    }
    sum
}

#[target_feature(enable = "neon")]
unsafe fn q5_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sum = 0.0f32;
    for (b, (y, dy, bsums)) in as_blocks::<BlockQ5K>(w).iter().zip(q8k_blocks(a)) {
        // SAFETY: this function's target feature is the helper's requirement.
        let (isum, summs) = unsafe { k4(&b.qs, Some(&b.qh), &b.scales, (y, bsums)) };
        sum += (f16_to_f32(b.d) * dy) * isum as f32 - (f16_to_f32(b.dmin) * dy) * summs as f32;
    }
    sum
}

#[target_feature(enable = "neon")]
unsafe fn q6_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sum = 0.0f32;
    for (b, (y, dy, _)) in as_blocks::<BlockQ6K>(w).iter().zip(q8k_blocks(a)) {
        // SAFETY: this function's target feature is the helpers' requirement.
        unsafe {
            let ql = b.ql.as_chunks::<16>().0;
            let qh = b.qh.as_chunks::<16>().0;
            let (m4, m3, off) = (vdupq_n_u8(0x0f), vdupq_n_u8(3), vdupq_n_s8(32));
            let mut isum = vdupq_n_s32(0);
            for h in 0..2 {
                let l = [0, 1, 2, 3].map(|i| ld_u8(&ql[4 * h + i]));
                let hb = [ld_u8(&qh[2 * h]), ld_u8(&qh[2 * h + 1])];
                // Value 128h + 32s + 16i + l: a nibble of ql (low for s < 2), bits 2s..2s+2
                // of qh; 16 values per sub-block scale.
                for s in 0..4 {
                    for i in 0..2 {
                        let byte = l[2 * (s % 2) + i];
                        let low = if s < 2 {
                            vandq_u8(byte, m4)
                        } else {
                            vshrq_n_u8::<4>(byte)
                        };
                        let high = match s {
                            0 => hb[i],
                            1 => vshrq_n_u8::<2>(hb[i]),
                            2 => vshrq_n_u8::<4>(hb[i]),
                            _ => vshrq_n_u8::<6>(hb[i]),
                        };
                        let q = vorrq_u8(low, vshlq_n_u8::<4>(vandq_u8(high, m3)));
                        let q = vsubq_s8(vreinterpretq_s8_u8(q), off);
                        let sub = 8 * h + 2 * s + i;
                        let p = dot16(vdupq_n_s32(0), q, ld_s8(&y[sub]));
                        isum = vmlaq_n_s32(isum, p, b.scales[sub] as i8 as i32);
                    }
                }
            }
            sum += (f16_to_f32(b.d) * dy) * vaddvq_s32(isum) as f32;
        }
    }
    sum
}

#[target_feature(enable = "neon")]
unsafe fn iq4_xs(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut sum = 0.0f32;
    for (b, (y, dy, _)) in as_blocks::<BlockIq4Xs>(w).iter().zip(q8k_blocks(a)) {
        let ls = iq4_xs_scales(b);
        // SAFETY: this function's target feature is the helpers' requirement.
        unsafe {
            let mut isum = vdupq_n_s32(0);
            for (ib, qs) in b.qs.as_chunks::<16>().0.iter().enumerate() {
                let [lo, hi] = lookup(qs, &KVALUES_IQ4NL);
                let p = dot16(
                    dot16(vdupq_n_s32(0), lo, ld_s8(&y[2 * ib])),
                    hi,
                    ld_s8(&y[2 * ib + 1]),
                );
                isum = vmlaq_n_s32(isum, p, ls[ib] as i32);
            }
            sum += (f16_to_f32(b.d) * dy) * vaddvq_s32(isum) as f32;
        }
    }
    sum
}

/// Float rows: four accumulators of four lanes, scalar tail.
macro_rules! float_row {
    ($name:ident, $block:ty, |$c:ident| $load4:expr, |$b:ident| $one:expr) => {
        #[target_feature(enable = "neon")]
        unsafe fn $name(w: &[u8], a: &ActRow<'_>) -> f32 {
            let w = as_blocks::<$block>(w);
            let n = w.len().min(a.f.len());
            let (w4, w_tail) = w[..n].as_chunks::<4>();
            let (x4, x_tail) = a.f[..n].as_chunks::<4>();
            let mut acc = [vdupq_n_f32(0.0); 4];
            for (i, ($c, xc)) in w4.iter().zip(x4).enumerate() {
                // SAFETY: the chunks hold 4 blocks and 4 floats, all read.
                let (wv, xv) = unsafe { ($load4, vld1q_f32(xc.as_ptr())) };
                acc[i % 4] = vfmaq_f32(acc[i % 4], wv, xv);
            }
            let acc = vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3]));
            let tail: f32 = w_tail.iter().zip(x_tail).map(|($b, x)| $one * x).sum();
            vaddvq_f32(acc) + tail
        }
    };
}

float_row!(f32_row, BlockF32, |c| vld1q_f32(c.as_ptr().cast()), |b| {
    f32::from_le_bytes(b.bits)
});
float_row!(
    bf16_row,
    BlockBf16,
    |c| vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(c.as_ptr().cast()))),
    |b| crate::tensor::quants::float::bf16_to_f32(u16::from_le_bytes(b.bits))
);
