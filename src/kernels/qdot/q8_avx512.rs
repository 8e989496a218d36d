//! AVX-512 twins of the activation quantizers in [`super::q8`], equal to them bit for bit: the
//! same f32 operations on 16 values at a time, and the same integer tricks (`roundf` as
//! truncation plus a step where the dropped fraction is at least one half; ggml's
//! `nearest_int` through the bits of `x + 1.5 * 2^23`). Blocks holding a NaN or an infinity,
//! or whose inverse scale overflows, return `None` and go through the plain code, whose
//! results on such input depend on the order of its scalar steps.
//!
//! Before (plain only), quantizing the activations took 12-17% of gemma-3-270m's prompt time
//! once the GEMM had made the products fast (`perf record`, pp512, 1 thread, 2026-11-29).
//!
//! Every function here needs AVX-512 F/BW/VL (the dispatcher asks for the whole VNNI level).

use std::arch::x86_64::*;

use super::{QK8_0, QK_K};
use crate::tensor::quants::float::{f16_to_f32, f32_to_f16_bits};

/// |v| per lane.
#[inline(always)]
unsafe fn abs(v: __m512) -> __m512 {
    unsafe {
        _mm512_castsi512_ps(_mm512_and_si512(
            _mm512_castps_si512(v),
            _mm512_set1_epi32(0x7fff_ffff),
        ))
    }
}

/// Whether any lane is NaN or infinite.
#[inline(always)]
unsafe fn any_not_finite(v: __m512) -> bool {
    unsafe { _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(abs(v), _mm512_set1_ps(f32::INFINITY)) != 0 }
}

/// C's `roundf` (halves away from zero) of values below 2^31 in magnitude, as i32.
#[inline(always)]
unsafe fn round_away(y: __m512) -> __m512i {
    unsafe {
        // Truncation toward zero, exceptions suppressed.
        let t = _mm512_roundscale_ps::<0x0b>(y);
        let frac = abs(_mm512_sub_ps(y, t));
        let up = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, _mm512_set1_ps(0.5));
        let sign = _mm512_and_si512(_mm512_castps_si512(y), _mm512_set1_epi32(i32::MIN));
        let one = _mm512_castsi512_ps(_mm512_or_si512(
            sign,
            _mm512_castps_si512(_mm512_set1_ps(1.0)),
        ));
        _mm512_cvttps_epi32(_mm512_mask_add_ps(t, up, t, one))
    }
}

/// [`super::q8::quantize_block_q8_0`] for 32 finite values, or `None`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn quantize_block_q8_0(
    x: &[f32],
    qs: &mut [i8],
    with_s: bool,
) -> Option<(f32, i32, Option<f32>)> {
    assert!(x.len() == QK8_0 && qs.len() == QK8_0);
    // SAFETY: 32 values read and 32 bytes written, as asserted.
    unsafe {
        let lo = _mm512_loadu_ps(x.as_ptr());
        let hi = _mm512_loadu_ps(x.as_ptr().add(16));
        if any_not_finite(lo) || any_not_finite(hi) {
            return None;
        }
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(abs(lo), abs(hi)));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        if !id.is_finite() {
            return None;
        }
        let id = _mm512_set1_ps(id);
        let q_lo = round_away(_mm512_mul_ps(lo, id));
        let q_hi = round_away(_mm512_mul_ps(hi, id));
        // The plain code keeps each quant's low byte; sums are of those bytes as i8.
        let b_lo = _mm512_cvtepi32_epi8(q_lo);
        let b_hi = _mm512_cvtepi32_epi8(q_hi);
        _mm_storeu_si128(qs.as_mut_ptr().cast(), b_lo);
        _mm_storeu_si128(qs.as_mut_ptr().add(16).cast(), b_hi);
        let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(
            _mm512_cvtepi8_epi32(b_lo),
            _mm512_cvtepi8_epi32(b_hi),
        ));
        let d16 = f16_to_f32(f32_to_f16_bits(d).to_le_bytes());
        let s = with_s.then(|| f16_to_f32(f32_to_f16_bits(sum as f32 * d).to_le_bytes()));
        Some((d16, sum, s))
    }
}

/// [`super::q8::quantize_block_q8_k`] for 256 finite values, or `None`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) unsafe fn quantize_block_q8_k(
    x: &[f32],
    qs: &mut [i8],
    bsums: &mut [i16],
) -> Option<f32> {
    assert!(x.len() == QK_K && qs.len() == QK_K && bsums.len() == QK_K / 16);
    // SAFETY: 256 values read, 256 bytes written, as asserted.
    unsafe {
        let mut m = _mm512_setzero_ps();
        for c in 0..16 {
            let v = _mm512_loadu_ps(x.as_ptr().add(16 * c));
            if any_not_finite(v) {
                return None;
            }
            m = _mm512_max_ps(m, abs(v));
        }
        let amax = _mm512_reduce_max_ps(m);
        if amax == 0.0 {
            qs.fill(0);
            bsums.fill(0);
            return Some(0.0);
        }
        // The first value of that magnitude, with its sign.
        let mut max = 0.0;
        for c in 0..16 {
            let v = _mm512_loadu_ps(x.as_ptr().add(16 * c));
            let hit = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(abs(v), _mm512_set1_ps(amax));
            if hit != 0 {
                max = x[16 * c + hit.trailing_zeros() as usize];
                break;
            }
        }
        let iscale = -127.0 / max;
        let is = _mm512_set1_ps(iscale);
        let magic = _mm512_set1_ps(12582912.0);
        for (c, bsum) in bsums.iter_mut().enumerate() {
            let v = _mm512_loadu_ps(x.as_ptr().add(16 * c));
            let bits = _mm512_castps_si512(_mm512_add_ps(_mm512_mul_ps(is, v), magic));
            let n = _mm512_sub_epi32(
                _mm512_and_si512(bits, _mm512_set1_epi32(0x007f_ffff)),
                _mm512_set1_epi32(0x0040_0000),
            );
            let b = _mm512_cvtepi32_epi8(_mm512_min_epi32(n, _mm512_set1_epi32(127)));
            _mm_storeu_si128(qs.as_mut_ptr().add(16 * c).cast(), b);
            *bsum = _mm512_reduce_add_epi32(_mm512_cvtepi8_epi32(b)) as i16;
        }
        Some(1.0 / iscale)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{q8, SimdLevel};

    /// Random blocks (normal, with outliers, ties at .5 steps, zeros, tiny and huge scales,
    /// NaN and infinities) through both quantizers.
    #[test]
    fn avx512_quantizers_match_plain() {
        if !SimdLevel::Avx512Vnni.is_available() {
            return;
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut fast_blocks = 0;
        for case in 0..3000 {
            let scale = [1.0f32, 1e-3, 1e3, 1e-30, 1e-39, 3e38][case % 6];
            let mut x: Vec<f32> = (0..256)
                .map(|_| {
                    let u = (next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
                    match next() % 16 {
                        0 => 0.0,
                        1 => (next() % 255) as f32 - 127.0,
                        2 => ((next() % 255) as f32 - 127.0) + 0.5,
                        3 => u * 40.0,
                        _ => u,
                    }
                })
                .map(|v| v * scale)
                .collect();
            match case % 50 {
                7 => x[next() as usize % 256] = f32::NAN,
                8 => x[next() as usize % 256] = f32::INFINITY,
                9 => x.iter_mut().for_each(|v| *v = 0.0),
                10 => {
                    // The largest magnitude twice, with both signs.
                    let (i, j) = (next() as usize % 256, next() as usize % 256);
                    (x[i], x[j]) = (-50.0 * scale, 50.0 * scale);
                }
                _ => {}
            }
            let (mut qa, mut qb) = ([0i8; 256], [0i8; 256]);
            let (mut sa, mut sb) = ([0i16; 16], [0i16; 16]);
            let want = q8::quantize_block_q8_k(&x, &mut qa, &mut sa);
            // SAFETY: the level's features were detected above.
            if let Some(got) = unsafe { super::quantize_block_q8_k(&x, &mut qb, &mut sb) } {
                assert_eq!(got.to_bits(), want.to_bits(), "q8_K case {case}");
                assert_eq!((qa, sa), (qb, sb), "q8_K case {case}");
                fast_blocks += 1;
            }
            for (xb, with_s) in x.chunks_exact(32).zip([false, true].into_iter().cycle()) {
                let (mut qa, mut qb) = ([0i8; 32], [0i8; 32]);
                let want = q8::quantize_block_q8_0(xb, &mut qa, with_s);
                // SAFETY: as above.
                if let Some(got) = unsafe { super::quantize_block_q8_0(xb, &mut qb, with_s) } {
                    let bits =
                        |(d, s, t): (f32, i32, Option<f32>)| (d.to_bits(), s, t.map(f32::to_bits));
                    assert_eq!(bits(got), bits(want), "q8_0 case {case}");
                    assert_eq!(qa, qb, "q8_0 case {case}");
                    fast_blocks += 1;
                }
            }
        }
        assert!(
            fast_blocks > 15_000,
            "{fast_blocks} blocks took the fast path"
        );
    }
}
