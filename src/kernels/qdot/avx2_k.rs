//! AVX2 kernels for the 256-value k-quants and IQ4_XS, against Q8_K activations.
//!
//! Unsigned weights (Q4_K 0..16, Q5_K 0..32, Q6_K 0..64 before its -32) go straight into
//! `maddubs` (pairs at most 2 * 63 * 127, no saturation); the i16 pairs are then multiplied by
//! the sub-block scale in `madd`, so each super-block's i32 lanes add up to exactly the plain
//! twin's `sum(scale * q * y)`. Mins and Q6_K's -32 use the activations' 16-value sums.
//!
//! Every function here needs AVX2, FMA and F16C; the dispatcher calls them only after
//! detecting those.

use std::arch::x86_64::*;

use super::avx2::{f16x1, hsum_ps, load128, load256, load_i8x32, lookup32, prefetch_ahead};
use super::plain::{iq4_xs_scales, k4_scales_mins_packed};
use super::{ActRow, DotFn, QK_K};
use crate::tensor::quants::as_blocks;
use crate::tensor::quants::iq::{BlockIq4Xs, KVALUES_IQ4NL};
use crate::tensor::quants::k_quants::{BlockQ4K, BlockQ5K, BlockQ6K};
use crate::tensor::GgmlType;

pub(super) fn kernel(ty: GgmlType) -> Option<DotFn> {
    Some(match ty {
        GgmlType::Q4K => q4_k,
        GgmlType::Q5K => q5_k,
        GgmlType::Q6K => q6_k,
        GgmlType::Iq4Xs => iq4_xs,
        _ => return None,
    })
}

/// A Q8_K super-block: 256 quants as eight runs of 32, its scale, its 16 sums.
pub(super) type Q8K<'a> = (&'a [[i8; 32]], f32, &'a [i16; 16]);

/// The Q8_K super-blocks of an activation row.
pub(super) fn q8k_blocks<'a>(a: &ActRow<'a>) -> impl Iterator<Item = Q8K<'a>> {
    a.qs.as_chunks::<QK_K>()
        .0
        .iter()
        .zip(a.d.iter().copied())
        .zip(a.bsums.as_chunks::<16>().0)
        .map(|((q, d), s)| (q.as_chunks::<32>().0, d, s))
}

/// Loads the 16 sums.
#[inline(always)]
pub(super) unsafe fn load_bsums(s: &[i16; 16]) -> __m256i {
    // SAFETY: 32 readable bytes; loadu has no alignment requirement.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// i32 lanes of `scale * sum(q * y)` over 32 values, `q` unsigned (<= 63), one scale for all.
#[inline(always)]
unsafe fn scaled_sum(q: __m256i, y: &[i8; 32], scale: __m256i) -> __m256i {
    unsafe { _mm256_madd_epi16(_mm256_maddubs_epi16(q, load_i8x32(y)), scale) }
}

/// 4-lane horizontal sum.
#[inline(always)]
unsafe fn hsum_ps4(v: __m128) -> f32 {
    unsafe {
        let s = _mm_add_ps(v, _mm_movehl_ps(v, v));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}

/// Shared by Q4_K and Q5_K: `sum_j m_j * (sums of sub-block j)` as four i32 lanes.
#[inline(always)]
unsafe fn mins_times_sums(mins: [u8; 8], bsums: &[i16; 16]) -> __m128i {
    unsafe {
        let s = load_bsums(bsums);
        let pairs = _mm_hadd_epi16(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
        let m = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(i64::from_le_bytes(mins)));
        _mm_madd_epi16(m, pairs)
    }
}

/// Q4_K and Q5_K; `HIGH` adds Q5_K's fifth bits.
#[inline(always)]
unsafe fn k4<const HIGH: bool>(
    qs: &[u8; 128],
    qh: Option<&[u8; 32]>,
    (d, dmin): (f32, f32),
    scales: &[u8; 12],
    (y, dy, bsums): Q8K<'_>,
    (acc, acc_m): (&mut __m256, &mut __m128),
) {
    unsafe {
        let (sc, m) = k4_scales_mins_packed(scales);
        let prod = mins_times_sums(m, bsums);
        *acc_m = _mm_fmadd_ps(_mm_set1_ps(-dmin * dy), _mm_cvtepi32_ps(prod), *acc_m);
        let m4 = _mm256_set1_epi8(0x0f);
        let m16 = _mm256_set1_epi8(0x10);
        let mut high = match qh {
            Some(qh) => load256(qh),
            None => _mm256_setzero_si256(),
        };
        let mut sumi = _mm256_setzero_si256();
        for (j, q) in qs.as_chunks::<32>().0.iter().enumerate() {
            let bits = load256(q);
            let mut lo = _mm256_and_si256(bits, m4);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bits), m4);
            if HIGH {
                // Bits 2j and 2j + 1 of qh (now bits 0 and 1 of `high`) to bit 4.
                lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_slli_epi16::<4>(high), m16));
                hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_slli_epi16::<3>(high), m16));
                high = _mm256_srli_epi16::<2>(high);
            }
            let pl = scaled_sum(lo, &y[2 * j], _mm256_set1_epi16(sc[2 * j] as i16));
            let ph = scaled_sum(hi, &y[2 * j + 1], _mm256_set1_epi16(sc[2 * j + 1] as i16));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * dy), _mm256_cvtepi32_ps(sumi), *acc);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q4_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    let (mut acc, mut acc_m) = (_mm256_setzero_ps(), _mm_setzero_ps());
    for (i, (b, y)) in as_blocks::<BlockQ4K>(w)
        .iter()
        .zip(q8k_blocks(a))
        .enumerate()
    {
        prefetch_ahead(w, i * size_of::<BlockQ4K>(), size_of::<BlockQ4K>());
        // SAFETY (this block and below): this function's target features are the helpers'.
        unsafe {
            let d = (f16x1(b.d), f16x1(b.dmin));
            k4::<false>(&b.qs, None, d, &b.scales, y, (&mut acc, &mut acc_m));
        }
    }
    unsafe { hsum_ps(acc) + hsum_ps4(acc_m) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    let (mut acc, mut acc_m) = (_mm256_setzero_ps(), _mm_setzero_ps());
    for (i, (b, y)) in as_blocks::<BlockQ5K>(w)
        .iter()
        .zip(q8k_blocks(a))
        .enumerate()
    {
        prefetch_ahead(w, i * size_of::<BlockQ5K>(), size_of::<BlockQ5K>());
        // SAFETY (this block and below): this function's target features are the helpers'.
        unsafe {
            let d = (f16x1(b.d), f16x1(b.dmin));
            k4::<true>(&b.qs, Some(&b.qh), d, &b.scales, y, (&mut acc, &mut acc_m));
        }
    }
    unsafe { hsum_ps(acc) + hsum_ps4(acc_m) }
}

/// Sub-block scales `lo` for the low 16 values and `hi` for the high 16, as i16 lanes.
#[inline(always)]
unsafe fn two_scales(lo: i8, hi: i8) -> __m256i {
    unsafe { _mm256_set_m128i(_mm_set1_epi16(hi as i16), _mm_set1_epi16(lo as i16)) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6_k(w: &[u8], a: &ActRow<'_>) -> f32 {
    let m4 = _mm256_set1_epi8(0x0f);
    let m_hi = _mm256_set1_epi8(0x30);
    let mut acc = _mm256_setzero_ps();
    for (i, (b, (y, dy, bsums))) in as_blocks::<BlockQ6K>(w)
        .iter()
        .zip(q8k_blocks(a))
        .enumerate()
    {
        prefetch_ahead(w, i * size_of::<BlockQ6K>(), size_of::<BlockQ6K>());
        // SAFETY: this function's target features are the helpers' requirements.
        unsafe {
            let sc = b.scales.map(|s| s as i8);
            // 32 * sum_j sc_j * bsums_j: the -32 of every value.
            let sc16 = _mm256_cvtepi8_epi16(load128(&b.scales));
            let offset = _mm256_slli_epi32::<5>(_mm256_madd_epi16(load_bsums(bsums), sc16));
            let mut sumi = _mm256_setzero_si256();
            let ql = b.ql.as_chunks::<32>().0;
            let qh = b.qh.as_chunks::<32>().0;
            for h in 0..2 {
                let (l0, l1, hb) = (
                    load256(&ql[2 * h]),
                    load256(&ql[2 * h + 1]),
                    load256(&qh[h]),
                );
                // Values 32s + l of this half: nibbles of ql, bits 2s..2s+2 of qh at bits 4-5.
                let q = [
                    _mm256_or_si256(
                        _mm256_and_si256(l0, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<4>(hb), m_hi),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(l1, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(hb), m_hi),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(l0), m4),
                        _mm256_and_si256(hb, m_hi),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(l1), m4),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(hb), m_hi),
                    ),
                ];
                for (s, qv) in q.into_iter().enumerate() {
                    let is = 8 * h + 2 * s;
                    let p = scaled_sum(qv, &y[4 * h + s], two_scales(sc[is], sc[is + 1]));
                    sumi = _mm256_add_epi32(sumi, p);
                }
            }
            sumi = _mm256_sub_epi32(sumi, offset);
            acc = _mm256_fmadd_ps(
                _mm256_set1_ps(f16x1(b.d) * dy),
                _mm256_cvtepi32_ps(sumi),
                acc,
            );
        }
    }
    // SAFETY: this function's target features.
    unsafe { hsum_ps(acc) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4_xs(w: &[u8], a: &ActRow<'_>) -> f32 {
    let mut acc = _mm256_setzero_ps();
    for (i, (b, (y, dy, _))) in as_blocks::<BlockIq4Xs>(w)
        .iter()
        .zip(q8k_blocks(a))
        .enumerate()
    {
        prefetch_ahead(w, i * size_of::<BlockIq4Xs>(), size_of::<BlockIq4Xs>());
        // SAFETY: this function's target features are the helpers' requirements.
        unsafe {
            let ls = iq4_xs_scales(b);
            let mut sumi = _mm256_setzero_si256();
            for (ib, qs) in b.qs.as_chunks::<16>().0.iter().enumerate() {
                let x = lookup32(qs, &KVALUES_IQ4NL);
                let yv = load_i8x32(&y[ib]);
                let p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(yv, x));
                let p = _mm256_madd_epi16(p16, _mm256_set1_epi16(ls[ib] as i16));
                sumi = _mm256_add_epi32(sumi, p);
            }
            acc = _mm256_fmadd_ps(
                _mm256_set1_ps(f16x1(b.d) * dy),
                _mm256_cvtepi32_ps(sumi),
                acc,
            );
        }
    }
    // SAFETY: this function's target features.
    unsafe { hsum_ps(acc) }
}
